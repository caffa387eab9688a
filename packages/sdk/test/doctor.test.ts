// doctor(): each host check against fake tools (scripts printing versions) on a fake PATH,
// a temporary MSB_HOME and fake guest assets. No VM.
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { compareVersions, parseVersion } from "../src/doctor.js";
import { DOCTOR_INSTALL_ALL, MIN_QEMU_VERSION, doctor, doctorExitCode, type DoctorAssets, type DoctorCheck, type DoctorOptions } from "../src/index.js";

let dir: string;
let bin: string;
let sbin: string;
let home: string;
let assets: DoctorAssets;

function script(d: string, name: string, body: string): string {
  const p = join(d, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, 0o755);
  return p;
}

function file(p: string, mode = 0o644): string {
  writeFileSync(p, "x");
  chmodSync(p, mode);
  return p;
}

/** A healthy host: every tool on PATH, /dev/kvm a writable file, root, all assets. */
function options(over: Partial<DoctorOptions> = {}, env: NodeJS.ProcessEnv = {}): DoctorOptions {
  return {
    env: { PATH: bin, MSB_HOME: home, MSB_VIRTIOFSD: join(dir, "virtiofsd"), ...env },
    qemuFallbackDirs: [],
    sbinDirs: [sbin],
    virtiofsdDefault: join(dir, "nowhere", "virtiofsd"),
    virtiofsdOther: [],
    kvmDevice: join(dir, "kvm"),
    uid: 0,
    platform: "linux",
    arch: "x64",
    loadAssets: () => ({ assets, addonPath: join(dir, "addon") }),
    statfs: async () => ({ bavail: 10 * 1024 ** 2, bsize: 4096 }), // 40 GiB
    ...over,
  };
}

async function check(name: string, over: Partial<DoctorOptions> = {}, env: NodeJS.ProcessEnv = {}): Promise<DoctorCheck> {
  const r = await doctor(options(over, env));
  const c = r.checks.find((x) => x.name === name);
  if (c === undefined) throw new Error(`no check ${name}`);
  return c;
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "msb-doctor-"));
  bin = join(dir, "bin");
  sbin = join(dir, "sbin");
  home = join(dir, "home");
  for (const d of [bin, sbin, home, join(dir, "guest")]) mkdirSync(d);
  script(bin, "qemu-system-x86_64", 'echo "QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)"; echo "Copyright (c) 2003-2023 Fabrice Bellard"');
  script(bin, "mke2fs", 'echo "mke2fs 1.47.0 (5-Feb-2023)" >&2; echo "	Using EXT2FS Library version 1.47.0" >&2');
  script(bin, "debugfs", "exit 0");
  script(bin, "qemu-img", 'echo "qemu-img version 8.2.2 (Debian)"');
  file(join(dir, "virtiofsd"), 0o755);
  file(join(dir, "kvm"), 0o666);
  assets = {
    runtime: file(join(dir, "msb-runtime"), 0o755),
    kernel: file(join(dir, "guest", "vmlinux")),
    initramfs: file(join(dir, "guest", "initramfs.cpio")),
    defaultImage: file(join(dir, "guest", "rootfs.ext4")),
    floorInitramfs: file(join(dir, "guest", "floor.cpio")),
  };
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("doctor: the whole report", () => {
  it("a healthy host: every check ok, in order, exit code 0", async () => {
    const r = await doctor(options());
    expect(r.checks.map((c) => c.name)).toEqual([
      "platform",
      "qemu",
      "kvm",
      "e2fsprogs",
      "virtiofsd",
      "qemu-img",
      "passt",
      "msb-home",
      "disk-space",
      "native-addon",
      "msb-runtime",
      "guest-kernel",
      "guest-initramfs",
      "default-image",
    ]);
    expect(r.checks.filter((c) => c.status !== "ok")).toEqual([]);
    expect(r.ok).toBe(true);
    expect(doctorExitCode(r)).toBe(0);
  });

  it("warnings alone keep ok (exit 0); one fail makes it not ok (exit 1)", async () => {
    rmSync(join(bin, "qemu-img"));
    rmSync(join(dir, "kvm"));
    const warned = await doctor(options());
    expect(warned.checks.filter((c) => c.status === "warn").map((c) => c.name)).toEqual(["kvm", "qemu-img"]);
    expect(warned.ok).toBe(true);
    expect(doctorExitCode(warned)).toBe(0);
    rmSync(join(bin, "qemu-system-x86_64"));
    const failed = await doctor(options());
    expect(failed.checks.filter((c) => c.status === "fail").map((c) => c.name)).toEqual(["qemu"]);
    expect(failed.ok).toBe(false);
    expect(doctorExitCode(failed)).toBe(1);
  });

  it("the one-line install commands", () => {
    expect(DOCTOR_INSTALL_ALL).toEqual({
      debian: "sudo apt-get install -y qemu-system-x86 qemu-utils e2fsprogs virtiofsd",
      fedora: "sudo dnf install -y qemu-system-x86-core qemu-img e2fsprogs virtiofsd",
    });
  });

  it("another platform fails", async () => {
    expect(await check("platform", { platform: "darwin", arch: "arm64" })).toMatchObject({ status: "fail", detail: "darwin arm64: sandboxes run on Linux x86_64 only" });
  });
});

describe("doctor: QEMU", () => {
  it("found on PATH, its version parsed", async () => {
    expect(await check("qemu")).toEqual({
      name: "qemu",
      status: "ok",
      path: join(bin, "qemu-system-x86_64"),
      version: "8.2.2",
      detail: `QEMU 8.2.2 at ${join(bin, "qemu-system-x86_64")} (7.2 or newer needed)`,
    });
    expect(MIN_QEMU_VERSION).toBe("7.2");
  });

  it("too old: fail with the install commands", async () => {
    script(bin, "qemu-system-x86_64", 'echo "QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2ubuntu6)"');
    const c = await check("qemu");
    expect(c).toMatchObject({ status: "fail", version: "6.2.0", install: { debian: "sudo apt-get install -y qemu-system-x86", fedora: "sudo dnf install -y qemu-system-x86-core" } });
    expect(c.detail).toContain("QEMU 6.2.0");
    expect(c.detail).toContain("7.2 or newer is needed");
  });

  it("exactly the minimum is ok", async () => {
    script(bin, "qemu-system-x86_64", 'echo "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)"');
    expect(await check("qemu")).toMatchObject({ status: "ok", version: "7.2.22" });
  });

  it("missing: fail, the exact install commands", async () => {
    rmSync(join(bin, "qemu-system-x86_64"));
    const c = await check("qemu");
    expect(c.status).toBe("fail");
    expect(c.detail).toContain("qemu-system-x86_64 was not found on PATH");
    expect(c.install).toEqual({ debian: "sudo apt-get install -y qemu-system-x86", fedora: "sudo dnf install -y qemu-system-x86-core" });
  });

  it("the runtime's fallback directories are searched after PATH", async () => {
    const other = join(dir, "other");
    mkdirSync(other);
    script(other, "qemu-system-x86_64", 'echo "QEMU emulator version 9.0.1"');
    rmSync(join(bin, "qemu-system-x86_64"));
    expect(await check("qemu", { qemuFallbackDirs: [other] })).toMatchObject({ status: "ok", version: "9.0.1", path: join(other, "qemu-system-x86_64") });
  });

  it("MSB_QEMU overrides PATH; pointing at nothing is a fail naming it", async () => {
    const own = script(dir, "my-qemu", 'echo "QEMU emulator version 10.0.0"');
    expect(await check("qemu", {}, { MSB_QEMU: own })).toMatchObject({ status: "ok", path: own, version: "10.0.0" });
    const c = await check("qemu", {}, { MSB_QEMU: join(dir, "none") });
    expect(c.status).toBe("fail");
    expect(c.detail).toBe(`MSB_QEMU points at ${join(dir, "none")}, which does not exist: sandboxes cannot start`);
  });

  it("no version in its output: a warning", async () => {
    script(bin, "qemu-system-x86_64", 'echo "something else"');
    const c = await check("qemu");
    expect(c.status).toBe("warn");
    expect(c.detail).toContain("printed no version (something else)");
  });

  it("version helpers", () => {
    expect(compareVersions("7.2", "7.2.0")).toBe(0);
    expect(compareVersions("7.10", "7.2")).toBeGreaterThan(0);
    expect(compareVersions("6.2.0", "7.2")).toBeLessThan(0);
    expect(parseVersion("mke2fs 1.46.5 (30-Dec-2021)")).toBe("1.46.5");
    expect(parseVersion("QEMU emulator version 7.2.22 (Debian)")).toBe("7.2.22");
  });
});

describe("doctor: KVM", () => {
  it("a device that opens read-write: ok", async () => {
    const c = await check("kvm");
    expect(c.status).toBe("ok");
    expect(c.detail).toContain("is usable: sandboxes use KVM");
  });

  it("no device: a warning (TCG), not a failure", async () => {
    rmSync(join(dir, "kvm"));
    const c = await check("kvm");
    expect(c.status).toBe("warn");
    expect(c.detail).toContain("is not usable (ENOENT): sandboxes run under QEMU's TCG software emulation");
    expect(c.fix).toContain("enable hardware virtualization");
  });

  it("MSB_ACCEL=kvm without a device fails; MSB_ACCEL=tcg is ok", async () => {
    rmSync(join(dir, "kvm"));
    expect(await check("kvm", {}, { MSB_ACCEL: "kvm" })).toMatchObject({ status: "fail" });
    expect(await check("kvm", {}, { MSB_ACCEL: "tcg" })).toMatchObject({ status: "ok", detail: expect.stringContaining("MSB_ACCEL=tcg") });
  });

  it("usable, but the probe initramfs is missing: a warning (TCG)", async () => {
    rmSync(join(dir, "guest", "floor.cpio"));
    expect(await check("kvm")).toMatchObject({ status: "warn", detail: expect.stringContaining("floor.cpio is missing") });
  });
});

describe("doctor: e2fsprogs", () => {
  it("mke2fs on PATH with its version (printed on stderr)", async () => {
    expect(await check("e2fsprogs")).toEqual({
      name: "e2fsprogs",
      status: "ok",
      path: join(bin, "mke2fs"),
      version: "1.47.0",
      detail: `mke2fs 1.47.0 at ${join(bin, "mke2fs")}`,
    });
  });

  it("only in an sbin directory, not on PATH: ok (msb-runtime and the SDK look there too), and says so", async () => {
    rmSync(join(bin, "mke2fs"));
    script(sbin, "mke2fs", 'echo "mke2fs 1.46.5 (30-Dec-2021)" >&2');
    const c = await check("e2fsprogs");
    expect(c).toMatchObject({ status: "ok", path: join(sbin, "mke2fs"), version: "1.46.5" });
    expect(c.detail).toBe(`mke2fs 1.46.5 at ${join(sbin, "mke2fs")} (not on PATH; found in ${sbin})`);
  });

  it("missing: fail with the install commands; too old: fail", async () => {
    rmSync(join(bin, "mke2fs"));
    expect(await check("e2fsprogs")).toMatchObject({ status: "fail", install: { debian: "sudo apt-get install -y e2fsprogs", fedora: "sudo dnf install -y e2fsprogs" } });
    script(bin, "mke2fs", 'echo "mke2fs 1.42.9 (28-Dec-2013)" >&2');
    expect(await check("e2fsprogs")).toMatchObject({ status: "fail", version: "1.42.9" });
  });

  it("no debugfs: a warning (OCI images)", async () => {
    rmSync(join(bin, "debugfs"));
    expect(await check("e2fsprogs")).toMatchObject({ status: "warn", detail: expect.stringContaining("debugfs was not found") });
  });
});

describe("doctor: virtiofsd, qemu-img, passt", () => {
  it("virtiofsd through MSB_VIRTIOFSD, as root: ok; not root: a warning (virtiofs needs root)", async () => {
    expect(await check("virtiofsd")).toMatchObject({ status: "ok", path: join(dir, "virtiofsd") });
    expect(await check("virtiofsd", { uid: 1000 })).toMatchObject({ status: "warn", detail: expect.stringContaining("needs root") });
  });

  it("virtiofsd missing: a warning with the install commands, the report stays ok", async () => {
    const r = await doctor(options({}, { MSB_VIRTIOFSD: "" }));
    const c = r.checks.find((x) => x.name === "virtiofsd");
    expect(c).toMatchObject({ status: "warn", path: join(dir, "nowhere", "virtiofsd"), install: { debian: "sudo apt-get install -y virtiofsd", fedora: "sudo dnf install -y virtiofsd" } });
    expect(c?.detail).toContain("needed only for host-directory volumes and directory images");
    expect(r.ok).toBe(true);
  });

  it("virtiofsd in another place msb-runtime also looks (e.g. /usr/libexec): ok; as non-root the root warning", async () => {
    const libexec = file(join(dir, "libexec-virtiofsd"), 0o755);
    expect(await check("virtiofsd", { virtiofsdOther: [libexec] }, { MSB_VIRTIOFSD: "" })).toMatchObject({ status: "ok", path: libexec });
    expect(await check("virtiofsd", { virtiofsdOther: [libexec], uid: 1000 }, { MSB_VIRTIOFSD: "" })).toMatchObject({ status: "warn", path: libexec, detail: expect.stringContaining("needs root") });
  });

  it("qemu-img: version; missing is a warning with the install commands", async () => {
    expect(await check("qemu-img")).toMatchObject({ status: "ok", version: "8.2.2" });
    rmSync(join(bin, "qemu-img"));
    expect(await check("qemu-img")).toMatchObject({
      status: "warn",
      detail: expect.stringContaining("qcow2"),
      install: { debian: "sudo apt-get install -y qemu-utils", fedora: "sudo dnf install -y qemu-img" },
    });
  });

  it("passt is not needed", async () => {
    expect(await check("passt")).toEqual({ name: "passt", status: "ok", detail: "not needed: msb has its own network stack (vhost-user)" });
  });
});

describe("doctor: MSB_HOME", () => {
  it("writable; one that does not exist yet is created in a writable parent", async () => {
    expect(await check("msb-home")).toEqual({ name: "msb-home", status: "ok", path: home, detail: `MSB_HOME ${home} is writable` });
    const later = join(home, "a", "b");
    expect(await check("msb-home", {}, { MSB_HOME: later })).toMatchObject({ status: "ok", detail: `MSB_HOME ${later} does not exist yet; it is created in ${home}, which is writable` });
  });

  it("a file in the way: fail", async () => {
    const f = file(join(dir, "plain"));
    const c = await check("msb-home", {}, { MSB_HOME: join(f, "home") });
    expect(c.status).toBe("fail");
    expect(c.detail).toContain(`(${f}: ENOTDIR)`);
  });

  it("free space: ok from 2 GiB, a warning under it, a failure under 256 MiB", async () => {
    const free = (bytes: number) => ({ statfs: async () => ({ bavail: BigInt(bytes / 4096), bsize: BigInt(4096) }) });
    expect(await check("disk-space", free(4 * 1024 ** 3))).toMatchObject({ status: "ok", detail: `4096 MiB free in ${home}` });
    expect(await check("disk-space", free(1024 ** 3))).toMatchObject({ status: "warn", detail: expect.stringContaining("only 1024 MiB free") });
    const low = await doctor(options(free(100 * 1024 ** 2)));
    expect(low.checks.find((c) => c.name === "disk-space")).toMatchObject({ status: "fail", detail: expect.stringContaining("only 100 MiB free") });
    expect(low.ok).toBe(false);
  });

  it("the real statfs of a temporary directory", async () => {
    const c = await check("disk-space", { statfs: undefined as never });
    expect(c.detail).toMatch(/^(only )?[0-9]+ MiB free in /);
  });
});

describe("doctor: the addon and its assets", () => {
  it("an addon that cannot be loaded: fail, no asset checks", async () => {
    const r = await doctor(
      options({
        loadAssets: () => {
          throw new Error("Cannot find module '@microsandbox/core-native'\nRequire stack: ...");
        },
      }),
    );
    expect(r.checks.find((c) => c.name === "native-addon")).toMatchObject({ status: "fail", detail: "cannot load the native addon: Cannot find module '@microsandbox/core-native'" });
    expect(r.checks.some((c) => c.name === "guest-kernel")).toBe(false);
    expect(r.ok).toBe(false);
  });

  it("the loader's install error (a platform package skipped by npm): its text, without the code prefix", async () => {
    const text = "@microsandbox/core-native-linux-x64-gnu is not installed (it is an optional dependency ...). Fix: npm install @microsandbox/core-native-linux-x64-gnu@0.1.0";
    const r = await doctor(
      options({
        loadAssets: () => {
          throw Object.assign(new Error(`runtime: ${text}`), { code: "ERR_MSB_INSTALL" });
        },
      }),
    );
    expect(r.checks.find((c) => c.name === "native-addon")).toMatchObject({ status: "fail", detail: `cannot load the native addon: ${text}` });
    expect(r.ok).toBe(false);
  });

  it("guest files that do not match their manifest: fail with the loader's text; matching: ok", async () => {
    const bad = await doctor(
      options({
        loadAssets: () => ({
          assets,
          verify: () => {
            throw new Error("kernelNotFound: @microsandbox/guest-linux-x64: vmlinux is 3 bytes, its manifest says 12 (truncated or replaced). Fix: ...");
          },
        }),
      }),
    );
    expect(bad.checks.find((c) => c.name === "guest-manifest")).toMatchObject({ status: "fail", detail: "@microsandbox/guest-linux-x64: vmlinux is 3 bytes, its manifest says 12 (truncated or replaced). Fix: ..." });
    expect(bad.ok).toBe(false);
    const good = await doctor(options({ loadAssets: () => ({ assets, verify: () => {} }) }));
    expect(good.checks.find((c) => c.name === "guest-manifest")?.status).toBe("ok");
  });

  it("a missing kernel or initramfs, or a runtime that is not executable: fail; a missing default image: warning", async () => {
    rmSync(assets.kernel);
    writeFileSync(assets.initramfs, "");
    chmodSync(assets.runtime, 0o644);
    rmSync(assets.defaultImage);
    const r = await doctor(options());
    const by = (n: string) => r.checks.find((c) => c.name === n);
    expect(by("guest-kernel")).toMatchObject({ status: "fail", detail: expect.stringContaining("(ENOENT)"), fix: expect.stringContaining("MSB_KERNEL") });
    expect(by("guest-initramfs")).toMatchObject({ status: "fail", detail: expect.stringContaining("(empty)") });
    expect(by("msb-runtime")).toMatchObject({ status: "fail", detail: expect.stringContaining("(EACCES)") });
    expect(by("default-image")).toMatchObject({ status: "warn" });
    expect(by("native-addon")).toMatchObject({ status: "ok", path: join(dir, "addon") });
    expect(r.ok).toBe(false);
  });

  // Built by `npm run setup` (which `npm test` runs first); a bare unit run without it skips.
  const built = existsSync(fileURLToPath(new URL("../../core-native-linux-x64-gnu/core-native.linux-x64-gnu.node", import.meta.url)));
  it.skipIf(!built)("the real addon's assets (this checkout, after npm run setup): addon, runtime and guest files ok", async () => {
    const env: NodeJS.ProcessEnv = { ...process.env, MSB_HOME: home };
    for (const v of ["MSB_RUNTIME", "MSB_GUEST_DIR", "MSB_KERNEL", "MSB_INITRAMFS", "MSB_DEFAULT_IMAGE"]) delete env[v];
    const r = await doctor({ env });
    const by = (n: string) => r.checks.find((c) => c.name === n);
    expect(by("native-addon")?.status).toBe("ok");
    expect(by("msb-runtime")).toMatchObject({ status: "ok", path: expect.stringMatching(/core-native-linux-x64-gnu\/bin\/msb-runtime$/) });
    expect(by("guest-kernel")).toMatchObject({ status: "ok", path: expect.stringMatching(/guest-linux-x64\/vmlinux$/) });
    expect(by("guest-manifest")?.status).toBe("ok");
  });
});
