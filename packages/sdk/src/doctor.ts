/**
 * `doctor()`: checks everything a host needs to run sandboxes and explains what is
 * missing (`msb doctor` prints it). Each check looks where the runtime itself looks:
 * QEMU as crates/runtime/src/vm.rs `find_qemu` (MSB_QEMU, else PATH, /usr/bin,
 * /usr/local/bin), virtiofsd as crates/runtime/src/shares.rs (MSB_VIRTIOFSD, else
 * /usr/lib/qemu/virtiofsd, /usr/libexec/virtiofsd, /usr/lib/virtiofsd), mke2fs from PATH or the sbin directories, the
 * addon's assets through its `assetPaths()` (MSB_RUNTIME, MSB_KERNEL, ...).
 */
import { execFile } from "node:child_process";
import { constants, promises as fsp } from "node:fs";
import { createRequire } from "node:module";
import { join, dirname, delimiter } from "node:path";
import { msbHome } from "./config.js";

export type DoctorStatus = "ok" | "warn" | "fail";

/** One check of {@link doctor}. */
export interface DoctorCheck {
  /** Stable name: platform, qemu, kvm, e2fsprogs, virtiofsd, qemu-img, passt, msb-home, disk-space, native-addon, msb-runtime, guest-kernel, guest-initramfs, default-image. */
  name: string;
  status: DoctorStatus;
  /** What was found, and why it matters. */
  detail: string;
  /** Where the tool or file was found (or looked for). */
  path?: string;
  /** A tool's version, as it printed it. */
  version?: string;
  /** What to do about a warn or fail (other than installing a package). */
  fix?: string;
  /** For a missing tool: the exact install command. */
  install?: { debian: string; fedora: string };
}

export interface DoctorReport {
  /** No check failed: a sandbox can start. */
  ok: boolean;
  checks: DoctorCheck[];
}

/** The assets the addon points at (`assetPaths()` of `@microsandbox/core-native`). */
export interface DoctorAssets {
  runtime: string;
  kernel: string;
  initramfs: string;
  defaultImage: string;
  floorInitramfs?: string;
}

/** Test hooks: every default is the real host's. */
export interface DoctorOptions {
  /** Environment (PATH, MSB_HOME, MSB_QEMU, MSB_VIRTIOFSD, MSB_ACCEL); default `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** Directories searched for QEMU after PATH (the runtime's: /usr/bin, /usr/local/bin). */
  qemuFallbackDirs?: string[];
  /** sbin directories where mke2fs / qemu-img may be when not on PATH. */
  sbinDirs?: string[];
  /** virtiofsd's default path (the runtime's: /usr/lib/qemu/virtiofsd). */
  virtiofsdDefault?: string;
  /** Other places virtiofsd packages install it. */
  virtiofsdOther?: string[];
  /** The KVM device (default /dev/kvm). */
  kvmDevice?: string;
  /** Load the addon and return its assets; default: require `@microsandbox/core-native`. */
  loadAssets?: () => { assets: DoctorAssets; addonPath?: string; verify?: () => void };
  /** Effective user id (virtiofs needs root). */
  uid?: number;
  platform?: string;
  arch?: string;
  /** Free space of a directory (default `fs.statfs`). */
  statfs?: (path: string) => Promise<{ bavail: number | bigint; bsize: number | bigint }>;
}

/** Oldest QEMU supported: microvm with vhost-user devices (net, virtiofs) over modern virtio-mmio; 7.2 (Debian 12) is the version tested. */
export const MIN_QEMU_VERSION = "7.2";
/** mke2fs needs `-d` (populate from a directory): e2fsprogs 1.43. */
export const MIN_E2FSPROGS_VERSION = "1.43";
/** Free space in MSB_HOME under which doctor warns. */
export const DOCTOR_WARN_FREE_BYTES = 2 * 1024 ** 3;
/** Free space in MSB_HOME under which doctor fails. */
export const DOCTOR_FAIL_FREE_BYTES = 256 * 1024 ** 2;

/** Install commands of every tool, as one line each (what `npm run setup` would install). */
export const DOCTOR_INSTALL_ALL = {
  debian: "sudo apt-get install -y qemu-system-x86 qemu-utils e2fsprogs virtiofsd",
  fedora: "sudo dnf install -y qemu-system-x86-core qemu-img e2fsprogs virtiofsd",
} as const;

const INSTALL = {
  qemu: { debian: "sudo apt-get install -y qemu-system-x86", fedora: "sudo dnf install -y qemu-system-x86-core" },
  qemuImg: { debian: "sudo apt-get install -y qemu-utils", fedora: "sudo dnf install -y qemu-img" },
  e2fsprogs: { debian: "sudo apt-get install -y e2fsprogs", fedora: "sudo dnf install -y e2fsprogs" },
  virtiofsd: { debian: "sudo apt-get install -y virtiofsd", fedora: "sudo dnf install -y virtiofsd" },
};

const SBIN = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/** `a.b[.c]` compared numerically: negative when a < b. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** The first `N.N[.N]` in a tool's `--version` output. */
export function parseVersion(text: string): string | undefined {
  return /(?:version\s+|^\S+\s+)(\d+\.\d+(?:\.\d+)?)/m.exec(text)?.[1] ?? /(\d+\.\d+(?:\.\d+)?)/.exec(text)?.[1];
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await fsp.stat(p)).isFile();
  } catch {
    return false;
  }
}

function pathDirs(env: NodeJS.ProcessEnv): string[] {
  return (env.PATH ?? "").split(delimiter).filter(Boolean);
}

async function firstFile(dirs: string[], name: string): Promise<string | undefined> {
  for (const d of dirs) {
    const p = join(d, name);
    if (await isFile(p)) return p;
  }
  return undefined;
}

/** Run `file args`, resolve to stdout + stderr (also when it exits non-zero); undefined when it cannot run. */
function output(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile(file, args, { env, timeout: 10_000, encoding: "utf8" }, (err, stdout, stderr) => {
      const text = `${stdout ?? ""}${stderr ?? ""}`;
      if (err && text.trim() === "") resolve(undefined);
      else resolve(text);
    });
  });
}

function errCode(e: unknown): string {
  return (e as NodeJS.ErrnoException)?.code ?? String(e);
}

async function checkQemu(env: NodeJS.ProcessEnv, fallback: string[]): Promise<DoctorCheck> {
  let path: string | undefined;
  const override = env.MSB_QEMU;
  if (override !== undefined) {
    if (!(await isFile(override))) {
      return {
        name: "qemu",
        status: "fail",
        path: override,
        detail: `MSB_QEMU points at ${override}, which does not exist: sandboxes cannot start`,
        fix: "unset MSB_QEMU, or point it at qemu-system-x86_64",
        install: INSTALL.qemu,
      };
    }
    path = override;
  } else {
    path = await firstFile([...pathDirs(env), ...fallback], "qemu-system-x86_64");
  }
  if (path === undefined) {
    return {
      name: "qemu",
      status: "fail",
      detail: "qemu-system-x86_64 was not found on PATH (nor MSB_QEMU set): every sandbox is a QEMU microVM",
      fix: "install QEMU, or set MSB_QEMU to qemu-system-x86_64's path",
      install: INSTALL.qemu,
    };
  }
  const text = await output(path, ["--version"], env);
  const version = text === undefined ? undefined : /version\s+(\d+\.\d+(?:\.\d+)?)/i.exec(text)?.[1] ?? parseVersion(text);
  if (version === undefined) {
    return {
      name: "qemu",
      status: "warn",
      path,
      detail: `${path} found, but \`--version\` printed no version (${(text ?? "it did not run").trim().split("\n")[0]}); ${MIN_QEMU_VERSION} or newer is needed`,
    };
  }
  if (compareVersions(version, MIN_QEMU_VERSION) < 0) {
    return {
      name: "qemu",
      status: "fail",
      path,
      version,
      detail: `QEMU ${version} at ${path} is too old: ${MIN_QEMU_VERSION} or newer is needed (microvm machine with vhost-user devices over modern virtio-mmio)`,
      fix: "install a newer QEMU (Debian 12 / Ubuntu 24.04 or newer ship one), or set MSB_QEMU to one",
      install: INSTALL.qemu,
    };
  }
  return { name: "qemu", status: "ok", path, version, detail: `QEMU ${version} at ${path} (${MIN_QEMU_VERSION} or newer needed)` };
}

async function checkKvm(env: NodeJS.ProcessEnv, device: string, floor: string | undefined): Promise<DoctorCheck> {
  const forced = env.MSB_ACCEL;
  let openError: string | undefined;
  try {
    const fh = await fsp.open(device, constants.O_RDWR);
    await fh.close();
  } catch (e) {
    openError = errCode(e);
  }
  if (forced === "tcg") {
    return { name: "kvm", status: "ok", path: device, detail: "MSB_ACCEL=tcg: sandboxes run under QEMU's TCG software emulation (a boot takes ~1.5-2 s)" };
  }
  if (openError !== undefined) {
    const detail = `${device} is not usable (${openError}): sandboxes run under QEMU's TCG software emulation, which works anywhere but is slower (a boot takes ~1.5-2 s)`;
    if (forced === "kvm") {
      return { name: "kvm", status: "fail", path: device, detail: `MSB_ACCEL=kvm, but ${detail.replace(/: sandboxes run.*/, "")}: QEMU cannot start`, fix: "unset MSB_ACCEL (TCG is used then), or make /dev/kvm usable" };
    }
    const fix =
      openError === "EACCES" || openError === "EPERM"
        ? "for KVM: add yourself to the kvm group (`sudo usermod -aG kvm $USER`, then log in again)"
        : "for KVM: enable hardware virtualization (or nested virtualization in a VM) and load kvm_intel or kvm_amd";
    return { name: "kvm", status: "warn", path: device, detail, fix };
  }
  if (forced !== "kvm" && floor !== undefined && !(await isFile(floor))) {
    return {
      name: "kvm",
      status: "warn",
      path: device,
      detail: `${device} is usable, but the KVM probe's initramfs ${floor} is missing: sandboxes run under TCG`,
      fix: "reinstall @microsandbox/core-native (or run `npm run setup` in the repository)",
    };
  }
  return {
    name: "kvm",
    status: "ok",
    path: device,
    detail: `${device} is usable: sandboxes use KVM${forced === "kvm" ? " (MSB_ACCEL=kvm)" : " (the first sandbox after a host boot checks that a VM boots with it, else TCG is used)"}`,
  };
}

async function checkE2fsprogs(env: NodeJS.ProcessEnv, sbin: string[]): Promise<DoctorCheck> {
  const onPath = await firstFile(pathDirs(env), "mke2fs");
  const anywhere = onPath ?? (await firstFile(sbin, "mke2fs"));
  if (anywhere === undefined) {
    return {
      name: "e2fsprogs",
      status: "fail",
      detail: "mke2fs was not found: every sandbox's writable disk is formatted with it (and images are built with it)",
      install: INSTALL.e2fsprogs,
    };
  }
  const text = await output(anywhere, ["-V"], env);
  const version = text === undefined ? undefined : /mke2fs\s+(\d+\.\d+(?:\.\d+)?)/.exec(text)?.[1] ?? parseVersion(text);
  const v = version !== undefined ? { version } : {};
  // msb-runtime and the SDK look on PATH, then in the sbin directories.
  const where = onPath === undefined ? ` (not on PATH; found in ${dirname(anywhere)})` : "";
  if (version !== undefined && compareVersions(version, MIN_E2FSPROGS_VERSION) < 0) {
    return { name: "e2fsprogs", status: "fail", path: anywhere, version, detail: `mke2fs ${version} is too old: ${MIN_E2FSPROGS_VERSION} or newer is needed (mke2fs -d)`, install: INSTALL.e2fsprogs };
  }
  if ((await firstFile([...pathDirs(env), ...sbin], "debugfs")) === undefined) {
    return { name: "e2fsprogs", status: "warn", path: anywhere, ...v, detail: `mke2fs ${version ?? "(version unknown)"} at ${anywhere}${where}, but debugfs was not found: OCI images cannot be built`, install: INSTALL.e2fsprogs };
  }
  return { name: "e2fsprogs", status: "ok", path: anywhere, ...v, detail: `mke2fs ${version ?? "(version unknown)"} at ${anywhere}${where}` };
}

function notRoot(path: string): DoctorCheck {
  return {
    name: "virtiofsd",
    status: "warn",
    path,
    detail: `virtiofsd at ${path}, but virtiofs needs root here: host-directory volumes are not available (directory images are copied into a disk instead)`,
    fix: "run as root for host-directory volumes, or use disk volumes / tmpfs",
  };
}

async function checkVirtiofsd(env: NodeJS.ProcessEnv, def: string, other: string[], uid: number): Promise<DoctorCheck> {
  const override = env.MSB_VIRTIOFSD;
  const path = override !== undefined && override !== "" ? override : def;
  const why = "needed only for host-directory volumes and directory images";
  if (!(await isFile(path))) {
    const found = (await Promise.all(other.map(async (o) => ((await isFile(o)) ? o : undefined)))).find((x) => x !== undefined);
    // Without MSB_VIRTIOFSD, msb-runtime looks in these places too (shares.rs VIRTIOFSD_PATHS).
    if (found !== undefined && (override === undefined || override === "")) {
      return uid !== 0 ? notRoot(found) : { name: "virtiofsd", status: "ok", path: found, detail: `virtiofsd at ${found} (${why})` };
    }
    return {
      name: "virtiofsd",
      status: "warn",
      path,
      detail: `virtiofsd was not found at ${path}${override ? " (MSB_VIRTIOFSD)" : ""}: ${why}; everything else works`,
      fix: override ? "point MSB_VIRTIOFSD at virtiofsd" : `install it (on Debian 12 it is ${def}, from qemu-system-common), or set MSB_VIRTIOFSD to its path`,
      install: INSTALL.virtiofsd,
    };
  }
  if (uid !== 0) return notRoot(path);
  return { name: "virtiofsd", status: "ok", path, detail: `virtiofsd at ${path} (${why})` };
}

async function checkQemuImg(env: NodeJS.ProcessEnv, sbin: string[]): Promise<DoctorCheck> {
  const path = await firstFile([...pathDirs(env), ...sbin], "qemu-img");
  if (path === undefined) {
    return { name: "qemu-img", status: "warn", detail: "qemu-img was not found: needed only for disk volumes in qcow2 format (raw disk volumes work)", install: INSTALL.qemuImg };
  }
  const text = await output(path, ["--version"], env);
  const version = text === undefined ? undefined : /version\s+(\d+\.\d+(?:\.\d+)?)/i.exec(text)?.[1];
  return { name: "qemu-img", status: "ok", path, ...(version !== undefined ? { version } : {}), detail: `qemu-img ${version ?? "(version unknown)"} at ${path} (for qcow2 disk volumes)` };
}

/** The deepest existing path at or above `p` (a directory, unless something else is in the way). */
async function existingAncestor(p: string): Promise<{ path: string; isDir: boolean }> {
  let d = p;
  for (;;) {
    try {
      return { path: d, isDir: (await fsp.stat(d)).isDirectory() };
    } catch {
      /* go up */
    }
    const up = dirname(d);
    if (up === d) return { path: d, isDir: true };
    d = up;
  }
}

type StatFs = (path: string) => Promise<{ bavail: number | bigint; bsize: number | bigint }>;

async function checkHome(home: string, statfs: StatFs): Promise<DoctorCheck[]> {
  const found = await existingAncestor(home);
  const base = found.path;
  const exists = base === home;
  const checks: DoctorCheck[] = [];
  try {
    if (!found.isDir) throw Object.assign(new Error("not a directory"), { code: "ENOTDIR" });
    await fsp.access(base, constants.W_OK | constants.X_OK);
    if (exists) {
      // A real write: access() can pass where a write fails (some network filesystems).
      const probe = await fsp.mkdtemp(join(home, ".doctor-"));
      await fsp.rmdir(probe);
    }
    checks.push({ name: "msb-home", status: "ok", path: home, detail: exists ? `MSB_HOME ${home} is writable` : `MSB_HOME ${home} does not exist yet; it is created in ${base}, which is writable` });
  } catch (e) {
    checks.push({
      name: "msb-home",
      status: "fail",
      path: home,
      detail: `MSB_HOME ${home} is not writable (${base}: ${errCode(e)}): sandboxes and images are stored there`,
      fix: "set MSB_HOME to a writable directory (default ~/.microsandbox)",
    });
  }
  try {
    const s = await statfs(found.isDir ? base : dirname(base));
    const free = Number(s.bavail) * Number(s.bsize);
    const mib = (free / 1024 ** 2).toFixed(0);
    const status: DoctorStatus = free < DOCTOR_FAIL_FREE_BYTES ? "fail" : free < DOCTOR_WARN_FREE_BYTES ? "warn" : "ok";
    const detail =
      status === "ok"
        ? `${mib} MiB free in ${base}`
        : status === "warn"
          ? `only ${mib} MiB free in ${base} (under 2 GiB): images and sandbox disks may not fit`
          : `only ${mib} MiB free in ${base} (under 256 MiB): a sandbox cannot start`;
    checks.push({ name: "disk-space", status, path: base, detail, ...(status === "ok" ? {} : { fix: "free space there, or set MSB_HOME to a filesystem with room" }) });
  } catch (e) {
    checks.push({ name: "disk-space", status: "warn", path: base, detail: `cannot read the free space of ${base} (${errCode(e)})` });
  }
  return checks;
}

/** A message of @microsandbox/core-native's loader is "<code>: <text>": the text alone. */
const loaderText = (e: unknown) => (e instanceof Error ? e.message : String(e)).split("\n")[0]!.replace(/^[a-zA-Z]+: /, "");

function realAssets(): { assets: DoctorAssets; addonPath?: string; verify?: () => void } {
  const req = createRequire(import.meta.url);
  const addon = req("@microsandbox/core-native") as { assetPaths(): DoctorAssets; verifyGuestAssets(): void; startSandbox: unknown };
  // The loader loads this platform's addon on first use: touch it, so that a missing or
  // mismatched platform package is this check's failure.
  void addon.startSandbox;
  let addonPath: string | undefined;
  try {
    addonPath = dirname(req.resolve("@microsandbox/core-native"));
  } catch {
    /* loaded anyway */
  }
  return { assets: addon.assetPaths(), ...(addonPath !== undefined ? { addonPath } : {}), verify: () => addon.verifyGuestAssets() };
}

const REINSTALL = "reinstall @microsandbox/sdk (npm install), or run `npm run setup` in the microsandbox repository";

async function checkAsset(name: string, what: string, path: string, status: DoctorStatus, env: string, exec = false): Promise<DoctorCheck> {
  try {
    const st = await fsp.stat(path);
    if (!st.isFile() || st.size === 0) throw Object.assign(new Error("empty"), { code: st.isFile() ? "empty" : "not a file" });
    if (exec) await fsp.access(path, constants.X_OK);
    return { name, status: "ok", path, detail: `${what} at ${path}` };
  } catch (e) {
    return { name, status, path, detail: `${what} is missing or unusable at ${path} (${errCode(e)})`, fix: `${REINSTALL}, or set ${env}` };
  }
}

/** Check the host: QEMU, KVM, e2fsprogs, virtiofsd, qemu-img, MSB_HOME, the native addon and guest assets. */
export async function doctor(options: DoctorOptions = {}): Promise<DoctorReport> {
  const env = options.env ?? process.env;
  const sbin = options.sbinDirs ?? SBIN;
  const platform = options.platform ?? process.platform;
  const arch = options.arch ?? process.arch;
  const checks: DoctorCheck[] = [];
  checks.push(
    platform === "linux" && arch === "x64"
      ? { name: "platform", status: "ok", detail: "Linux x86_64" }
      : { name: "platform", status: "fail", detail: `${platform} ${arch}: sandboxes run on Linux x86_64 only` },
  );

  let loaded: { assets: DoctorAssets; addonPath?: string; verify?: () => void } | undefined;
  let addonError: string | undefined;
  try {
    loaded = (options.loadAssets ?? realAssets)();
  } catch (e) {
    addonError = loaderText(e);
  }

  checks.push(await checkQemu(env, options.qemuFallbackDirs ?? ["/usr/bin", "/usr/local/bin"]));
  checks.push(await checkKvm(env, options.kvmDevice ?? "/dev/kvm", loaded?.assets.floorInitramfs));
  checks.push(await checkE2fsprogs(env, sbin));
  checks.push(await checkVirtiofsd(env, options.virtiofsdDefault ?? "/usr/lib/qemu/virtiofsd", options.virtiofsdOther ?? ["/usr/libexec/virtiofsd", "/usr/lib/virtiofsd"], options.uid ?? process.geteuid?.() ?? 0));
  checks.push(await checkQemuImg(env, sbin));
  checks.push({ name: "passt", status: "ok", detail: "not needed: msb has its own network stack (vhost-user)" });
  checks.push(...(await checkHome(msbHome(env), options.statfs ?? ((p) => fsp.statfs(p)))));

  if (loaded === undefined) {
    checks.push({ name: "native-addon", status: "fail", detail: `cannot load the native addon: ${addonError}`, fix: REINSTALL });
  } else {
    const a = loaded.assets;
    checks.push({ name: "native-addon", status: "ok", ...(loaded.addonPath ? { path: loaded.addonPath } : {}), detail: `@microsandbox/core-native loaded${loaded.addonPath ? ` from ${loaded.addonPath}` : ""}` });
    checks.push(await checkAsset("msb-runtime", "msb-runtime", a.runtime, "fail", "MSB_RUNTIME", true));
    checks.push(await checkAsset("guest-kernel", "the guest kernel", a.kernel, "fail", "MSB_KERNEL"));
    checks.push(await checkAsset("guest-initramfs", "the guest initramfs", a.initramfs, "fail", "MSB_INITRAMFS"));
    // Only sandboxes without an image boot the embedded default image.
    checks.push(await checkAsset("default-image", "the default image (sandboxes without an image)", a.defaultImage, "warn", "MSB_DEFAULT_IMAGE"));
    if (loaded.verify) {
      try {
        loaded.verify();
        checks.push({ name: "guest-manifest", status: "ok", detail: "the guest files match the sizes and sha256s of their package's manifest.json" });
      } catch (e) {
        checks.push({ name: "guest-manifest", status: "fail", detail: loaderText(e), fix: REINSTALL });
      }
    }
  }
  return { ok: checks.every((c) => c.status !== "fail"), checks };
}

/** `msb doctor`'s exit code: 0 when a sandbox can start, else 1. */
export function doctorExitCode(report: DoctorReport): number {
  return report.ok ? 0 : 1;
}
