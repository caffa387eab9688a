/**
 * Named volumes: `Volume.builder(name)...create()`, `Volume.get/list/remove`,
 * {@link VolumeHandle}, and {@link VolumeFs} (a volume's files from the host).
 *
 * Layout under `$MSB_HOME/volumes` (what `.volume(p, m => m.named(name))` mounts):
 *
 * ```
 * volumes/<name>/              a directory volume: the directory shared with the guest
 * volumes/<name>/disk.raw      a disk volume: its image (raw or disk.qcow2), ext4 inside
 * volumes/.meta/<name>.json    its metadata (kind, quota, capacity, format, labels, created)
 * volumes/.tmp/                disk images being made
 * ```
 *
 * Names start with a letter or digit, so `.meta` and `.tmp` are never volumes, and a
 * guest, which sees only the inside of `volumes/<name>`, reaches neither. A directory
 * made by a sandbox's first use of a name (no metadata) is a directory volume too.
 * Metadata is written to a new file and renamed into place.
 */
import "./polyfill.js";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { lstat, mkdir, open, readdir, rename, rm, unlink, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { delimiter, join } from "node:path";
import { promisify } from "node:util";
import { z } from "zod";
import { check, msbHome, sizeMiBSchema, volumeNameSchema } from "./config.js";
import { InvalidConfigError, IoError, SandboxFsOpsError, UnsupportedError, VolumeAlreadyExistsError, VolumeNotFoundError } from "./errors.js";
import { HostFd, listDir, openParent } from "./host-fs.js";
import { callNative, native } from "./native.js";
import { VolumeFs, allocatedBytes, nat, openVolumeDir, removeTree } from "./volume-fs.js";

export { VolumeFs, VolumeFsReadStream, VolumeFsWriteSink } from "./volume-fs.js";
export type { VolumeFsEntry, VolumeFsEntryKind, VolumeFsMetadata, VolumeFsReadOptions } from "./volume-fs.js";

const run = promisify(execFile);

/** `"dir"`: a host directory shared over virtiofs; `"disk"`: an ext4 disk image. */
export type VolumeKind = "dir" | "disk";
/** Image format of a disk volume. */
export type VolumeDiskFormat = "raw" | "qcow2";

/** What a {@link VolumeBuilder} describes (`build()`), as the reference's `VolumeConfig`. */
export interface VolumeConfig {
  name: string;
  kind: VolumeKind;
  /** Directory volumes: recorded quota in MiB (not enforced on the guest's writes). */
  quotaMib?: number;
  /** Disk volumes: capacity in MiB (required). */
  capacityMib?: number;
  /** Disk volumes: image format (default `"raw"`). */
  format?: VolumeDiskFormat;
  labels: Record<string, string>;
}

/** Most labels on one volume. */
export const MAX_VOLUME_LABELS = 64;
/** Largest disk volume, MiB (1 TiB; the image is sparse). */
export const MAX_DISK_VOLUME_MIB = 1024 * 1024;
/** Largest metadata file read back (a larger one is treated as missing). */
const MAX_META_BYTES = 256 * 1024;

export const labelKeySchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .max(255, { error: "must be at most 255 characters" })
  // eslint-disable-next-line no-control-regex
  .refine((k) => !/[\u0000-\u001f\u007f=]/.test(k), { error: "must not contain control characters or '='" });
export const labelValueSchema = z
  .string({ error: "must be a string" })
  .max(4096, { error: "must be at most 4096 characters" })
  .refine((v) => !v.includes("\0"), { error: "must not contain NUL" });
const quotaSchema = sizeMiBSchema;
const capacitySchema = z
  .number({ error: "must be a positive integer number of MiB" })
  .int({ error: "must be a positive integer number of MiB" })
  .min(1, { error: "must be a positive integer number of MiB" })
  .max(MAX_DISK_VOLUME_MIB, { error: `must be at most ${MAX_DISK_VOLUME_MIB} MiB` });
const formatSchema = z.enum(["raw", "qcow2"], { error: 'must be "raw" or "qcow2"' });

const metaSchema = z.object({
  version: z.literal(1),
  name: z.string(),
  kind: z.enum(["dir", "disk"]),
  quotaMib: z.number().int().positive().nullable(),
  capacityMib: z.number().int().positive().nullable(),
  diskFormat: z.enum(["raw", "qcow2"]).nullable(),
  diskFstype: z.string().max(16).nullable(),
  labels: z.array(z.tuple([z.string(), z.string()])).max(MAX_VOLUME_LABELS),
  createdAt: z.number(),
});
type VolumeMeta = z.infer<typeof metaSchema>;

/** A volume name, checked: a name with `/`, `..` or anything but letters, digits, `_`, `.`, `-` is `InvalidConfigError` (`field: "name"`). */
export function checkVolumeName(name: unknown): string {
  return check(volumeNameSchema, "name", name, "volume name");
}

function volumesDir(home: string): string {
  return join(home, "volumes");
}

function metaPath(home: string, name: string): string {
  return join(volumesDir(home), ".meta", `${name}.json`);
}

function diskFile(format: VolumeDiskFormat): string {
  return format === "qcow2" ? "disk.qcow2" : "disk.raw";
}

function notFound(name: string): VolumeNotFoundError {
  return new VolumeNotFoundError(`no volume named ${name}`);
}

/** The metadata of `name`, or `null` when it has none (or an unreadable one). */
async function readMeta(home: string, name: string): Promise<VolumeMeta | null> {
  let text: string;
  try {
    const fh = await open(metaPath(home, name), "r");
    try {
      const st = await fh.stat();
      if (!st.isFile() || st.size > MAX_META_BYTES) return null;
      text = await fh.readFile("utf8");
    } finally {
      await fh.close();
    }
  } catch {
    return null;
  }
  try {
    const m = metaSchema.safeParse(JSON.parse(text));
    return m.success && m.data.name === name ? m.data : null;
  } catch {
    return null;
  }
}

async function writeMeta(home: string, meta: VolumeMeta): Promise<void> {
  const dir = join(volumesDir(home), ".meta");
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.${meta.name}.${randomBytes(6).toString("hex")}.tmp`);
  await writeFile(tmp, JSON.stringify(meta) + "\n", { mode: 0o600, flag: "wx" });
  try {
    await rename(tmp, metaPath(home, meta.name));
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

/** The volume's directory entry, without following it: "dir", "missing", or another kind. */
function volumeEntryKind(home: string, name: string): string {
  let parent: { dir: HostFd; name: string };
  try {
    parent = openParent("volume", join(volumesDir(home), name));
  } catch (e) {
    if (e instanceof SandboxFsOpsError && e.errno === "ENOENT") return "missing";
    throw e;
  }
  try {
    return nat().hostStatAt(parent.dir.fd, name).kind;
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    if (msg.startsWith("ENOENT")) return "missing";
    throw e;
  } finally {
    void parent.dir.close();
  }
}

function rootOpener(home: string, name: string): (op: string) => Promise<HostFd> {
  return async (op) => openVolumeDir(op, join(volumesDir(home), name), () => notFound(name));
}

/** What a volume is, as its handle reports it. */
interface VolumeInfo {
  name: string;
  kind: VolumeKind;
  quotaMib: number | null;
  usedBytes: number;
  capacityBytes: number | null;
  diskFormat: string | null;
  diskFstype: string | null;
  labels: [string, string][];
  createdAt: Date | null;
}

async function info(home: string, name: string): Promise<VolumeInfo> {
  const meta = await readMeta(home, name);
  const root = openVolumeDir("volume", join(volumesDir(home), name), () => notFound(name));
  let used = 0;
  let created: number | null = meta?.createdAt ?? null;
  try {
    used = await allocatedBytes(root);
    if (created === null) {
      const st = nat().hostStatAt(root.fd, "");
      created = st.btimeMs ?? st.mtimeMs;
    }
  } finally {
    await root.close();
  }
  const kind = meta?.kind ?? "dir";
  return {
    name,
    kind,
    quotaMib: meta?.quotaMib ?? null,
    usedBytes: used,
    capacityBytes: meta?.capacityMib != null ? meta.capacityMib * 1024 * 1024 : null,
    diskFormat: kind === "disk" ? (meta?.diskFormat ?? null) : null,
    diskFstype: kind === "disk" ? (meta?.diskFstype ?? null) : null,
    labels: meta?.labels.map(([k, v]): [string, string] => [k, v]) ?? [],
    createdAt: created === null ? null : new Date(created),
  };
}

/** Sandboxes (starting, running, draining) whose configuration mounts the named volume `name`. */
async function sandboxesUsing(home: string, name: string): Promise<string[]> {
  const records = await callNative(() => native().listSandboxes(home));
  const out: string[] = [];
  for (const r of records) {
    if (r.status !== "starting" && r.status !== "running" && r.status !== "draining" && r.status !== "paused") continue;
    let cfg: unknown;
    try {
      cfg = JSON.parse(r.configJson);
    } catch {
      continue;
    }
    const vols = (cfg as { volumes?: unknown })?.volumes;
    if (!Array.isArray(vols)) continue;
    if (vols.some((v) => (v as { kind?: unknown })?.kind === "named" && (v as { source?: unknown })?.source === name)) out.push(r.name);
  }
  return out;
}

/**
 * Before a sandbox boots: each disk volume it mounts must still have its image (msb-runtime
 * attaches it as one more virtio disk, which the guest mounts by its serial), and no other
 * live sandbox may be using it (`sandbox`: the one booting, e.g. replacing itself). @internal
 */
export async function checkNamedVolumesMountable(
  volumes: readonly { kind: string; source: string | null; guestPath: string }[],
  home: string = msbHome(),
  sandbox?: string,
): Promise<void> {
  for (const v of volumes) {
    if (v.kind !== "named" || v.source === null) continue;
    const meta = await readMeta(home, v.source);
    if (meta?.kind !== "disk") continue;
    const image = join(volumesDir(home), v.source, diskFile(meta.diskFormat ?? "raw"));
    let ok = false;
    try {
      ok = (await lstat(image)).isFile();
    } catch {
      ok = false;
    }
    if (!ok) {
      throw new InvalidConfigError("volume", `volume ${v.source} (mounted at ${v.guestPath}) is a disk volume whose image ${image} is missing`);
    }
    // One ext4 image, one kernel: two VMs using it at once would corrupt it.
    const users = (await sandboxesUsing(home, v.source)).filter((u) => u !== sandbox);
    if (users.length > 0) {
      throw new InvalidConfigError("volume", `disk volume ${v.source} is in use by sandbox ${users.join(", ")}; a disk volume is mounted by one running sandbox at a time`);
    }
  }
}

/** `name` on PATH or in the sbin directories (not on a user's PATH on Debian). */
function tool(name: string, pkg: string): string {
  for (const d of [...(process.env.PATH ?? "").split(delimiter).filter(Boolean), "/usr/sbin", "/sbin", "/usr/local/sbin"]) {
    const p = join(d, name);
    if (existsSync(p)) return p;
  }
  throw new IoError(`${name} was not found: install ${pkg} (apt-get install ${pkg}); run \`msb doctor\` to check the host`);
}

/** Make a disk image of `mib` MiB with an empty ext4 inside, at `path`. */
async function makeDisk(path: string, mib: number, format: VolumeDiskFormat, scratch: string): Promise<void> {
  const raw = format === "raw" ? path : join(scratch, "disk.raw.tmp");
  const fh = await open(raw, "wx", 0o600);
  try {
    await fh.truncate(mib * 1024 * 1024);
  } finally {
    await fh.close();
  }
  try {
    await run(tool("mke2fs", "e2fsprogs"), ["-q", "-F", "-t", "ext4", "-L", "msbvol", raw], { timeout: 120_000 });
  } catch (e) {
    throw new IoError(`creating the disk volume's ext4 filesystem failed (mke2fs): ${(e as Error).message}`, { cause: e });
  }
  if (format === "qcow2") {
    try {
      await run(tool("qemu-img", "qemu-utils"), ["convert", "-q", "-f", "raw", "-O", "qcow2", raw, path], { timeout: 300_000 });
    } catch (e) {
      throw new IoError(`converting the disk volume to qcow2 failed (qemu-img): ${(e as Error).message}`, { cause: e });
    }
    await unlink(raw).catch(() => undefined);
  }
}

/**
 * Fluent builder of a named volume (`Volume.builder(name)`): `.directory()` (default) or
 * `.disk().size(mib)`, `.quota(mib)`, `.label(k, v)`; `build()` checks and returns the
 * configuration, `create()` makes the volume.
 */
export class VolumeBuilder {
  readonly #name: unknown;
  #kind: VolumeKind = "dir";
  #quota: unknown;
  #size: unknown;
  #format: unknown;
  readonly #labels: [unknown, unknown][] = [];

  constructor(name: string) {
    this.#name = name;
  }

  /** A directory volume (the default): a host directory shared with the guest over virtiofs. */
  directory(): this {
    this.#kind = "dir";
    return this;
  }

  /** A disk volume: an ext4 disk image of `.size(mib)` (required), attached to a sandbox that mounts it as a virtio disk. */
  disk(): this {
    this.#kind = "disk";
    return this;
  }

  /** Directory volumes: a storage quota in MiB, recorded in the metadata (guest writes are not limited by it). */
  quota(mib: number): this {
    this.#quota = mib;
    return this;
  }

  /** Disk volumes: the capacity in MiB. */
  size(mib: number): this {
    this.#size = mib;
    return this;
  }

  /** Disk volumes: the image format, `"raw"` (default) or `"qcow2"`. */
  format(format: VolumeDiskFormat): this {
    this.#format = format;
    return this;
  }

  /** A label (a later one of the same key replaces it). */
  label(key: string, value: string): this {
    this.#labels.push([key, value]);
    return this;
  }

  /** The configuration, checked (`InvalidConfigError` naming the field). */
  build(): VolumeConfig {
    const name = checkVolumeName(this.#name);
    const labels: Record<string, string> = {};
    for (const [k, v] of this.#labels) {
      const key = check(labelKeySchema, "label", k, "label key");
      labels[key] = check(labelValueSchema, "label", v, `label ${key} value`);
    }
    if (Object.keys(labels).length > MAX_VOLUME_LABELS) throw new InvalidConfigError("label", `a volume has at most ${MAX_VOLUME_LABELS} labels`);
    const config: VolumeConfig = { name, kind: this.#kind, labels };
    if (this.#kind === "dir") {
      if (this.#size !== undefined) throw new InvalidConfigError("size", "directory volumes do not take .size(...); use .disk().size(mib)");
      if (this.#format !== undefined) throw new InvalidConfigError("format", "directory volumes do not take .format(...)");
      if (this.#quota !== undefined) config.quotaMib = check(quotaSchema, "quota", this.#quota, "volume quota");
    } else {
      if (this.#quota !== undefined) throw new InvalidConfigError("quota", "disk volumes do not take .quota(...); their .size(...) is their limit");
      if (this.#size === undefined) throw new InvalidConfigError("size", "disk volumes need .size(mib)");
      config.capacityMib = check(capacitySchema, "size", this.#size, "disk volume size");
      config.format = this.#format === undefined ? "raw" : check(formatSchema, "format", this.#format, "disk volume format");
    }
    return config;
  }

  /** Make the volume. A name in use is `VolumeAlreadyExistsError`. */
  async create(): Promise<Volume> {
    const config = this.build();
    const home = msbHome();
    const vols = volumesDir(home);
    await mkdir(vols, { recursive: true, mode: 0o755 });
    const dir = join(vols, config.name);
    const meta: VolumeMeta = {
      version: 1,
      name: config.name,
      kind: config.kind,
      quotaMib: config.quotaMib ?? null,
      capacityMib: config.capacityMib ?? null,
      diskFormat: config.kind === "disk" ? (config.format ?? "raw") : null,
      diskFstype: config.kind === "disk" ? "ext4" : null,
      labels: Object.entries(config.labels),
      createdAt: Date.now(),
    };
    const exists = () => new VolumeAlreadyExistsError(`a volume named ${config.name} exists already`);
    if (config.kind === "dir") {
      try {
        await mkdir(dir, { mode: 0o755 });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "EEXIST") throw exists();
        throw e;
      }
      try {
        await writeMeta(home, meta);
      } catch (e) {
        await rm(dir, { recursive: false, force: true }).catch(() => undefined);
        throw e;
      }
      return new Volume(home, config.name, "dir");
    }
    // A disk: made in a scratch directory, then moved into the volume's new directory.
    if (volumeEntryKind(home, config.name) !== "missing") throw exists();
    const scratch = join(vols, ".tmp", `${Date.now()}.${randomBytes(6).toString("hex")}.scratch`);
    await mkdir(scratch, { recursive: true, mode: 0o700 });
    try {
      const file = diskFile(config.format ?? "raw");
      await makeDisk(join(scratch, file), config.capacityMib as number, config.format ?? "raw", scratch);
      try {
        await mkdir(dir, { mode: 0o755 });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "EEXIST") throw exists();
        throw e;
      }
      try {
        await rename(join(scratch, file), join(dir, file));
        await writeMeta(home, meta);
      } catch (e) {
        await rm(dir, { recursive: true, force: true }).catch(() => undefined);
        throw e;
      }
    } finally {
      await rm(scratch, { recursive: true, force: true }).catch(() => undefined);
    }
    return new Volume(home, config.name, "disk", meta);
  }
}

/**
 * A named volume. `Volume.builder(name)...create()` makes one; `Volume.get(name)` and
 * `Volume.list()` return {@link VolumeHandle}s; `Volume.remove(name)` deletes one.
 */
export class Volume {
  readonly #home: string;
  readonly #name: string;
  readonly #kind: VolumeKind;
  readonly #meta: VolumeMeta | null;

  /** @internal */
  constructor(home: string, name: string, kind: VolumeKind, meta: VolumeMeta | null = null) {
    this.#home = home;
    this.#name = name;
    this.#kind = kind;
    this.#meta = meta;
  }

  /** A builder for a new volume. */
  static builder(name: string): VolumeBuilder {
    return new VolumeBuilder(name);
  }

  /** The volume `name` (`VolumeNotFoundError` if there is none). */
  static async get(name: string): Promise<VolumeHandle> {
    const n = checkVolumeName(name);
    const home = msbHome();
    return new VolumeHandle(home, await info(home, n));
  }

  /** The cloud's default volume: not available with a local backend (rejects, code `"unsupported"`). */
  static async getDefault(): Promise<VolumeHandle> {
    throw new UnsupportedError("Volume.getDefault() needs the cloud backend; there is no default volume locally");
  }

  /** Every volume, newest first. */
  static async list(): Promise<VolumeHandle[]> {
    const home = msbHome();
    // $MSB_HOME/volumes is ours (no guest writes it): listed by path; each entry is
    // then opened without following it.
    let names: string[];
    try {
      names = (await readdir(volumesDir(home))).filter((n) => volumeNameSchema.safeParse(n).success).sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw e;
    }
    const out: VolumeHandle[] = [];
    for (const n of names) {
      try {
        out.push(new VolumeHandle(home, await info(home, n)));
      } catch (e) {
        if (e instanceof VolumeNotFoundError) continue; // not a directory, or removed meanwhile
        throw e;
      }
    }
    out.sort((a, b) => (b.createdAt?.getTime() ?? 0) - (a.createdAt?.getTime() ?? 0) || a.name.localeCompare(b.name));
    return out;
  }

  /**
   * Delete the volume `name` and its files. A volume mounted by a sandbox that is
   * starting, running or draining is `InvalidConfigError` (stop the sandbox first).
   */
  static async remove(name: string): Promise<void> {
    const n = checkVolumeName(name);
    await removeVolume(msbHome(), n);
  }

  get name(): string {
    return this.#name;
  }

  /** The volume's host directory, `$MSB_HOME/volumes/<name>`. */
  get path(): string {
    return join(volumesDir(this.#home), this.#name);
  }

  /** `"dir"` or `"disk"`. */
  get kind(): VolumeKind {
    return this.#kind;
  }

  /** A disk volume's image file, else `null`. */
  get diskPath(): string | null {
    return this.#kind === "disk" ? join(this.path, diskFile(this.#meta?.diskFormat ?? "raw")) : null;
  }

  /** The volume's files from the host (no sandbox needed). */
  fs(): VolumeFs {
    return new VolumeFs(rootOpener(this.#home, this.#name));
  }
}

async function removeVolume(home: string, name: string): Promise<void> {
  const users = await sandboxesUsing(home, name);
  if (users.length > 0) {
    throw new InvalidConfigError("name", `volume ${name} is mounted by ${users.length === 1 ? "sandbox" : "sandboxes"} ${users.join(", ")}; stop ${users.length === 1 ? "it" : "them"} first`);
  }
  const vols = volumesDir(home);
  const kind = volumeEntryKind(home, name);
  const hadMeta = (await readMeta(home, name)) !== null;
  if (kind === "missing" && !hadMeta) throw notFound(name);
  if (kind !== "missing" && kind !== "dir") throw notFound(name);
  if (kind === "dir") {
    // Unpublish the name at once (a rename), then delete the tree through directory fds.
    const trash = join(vols, ".tmp");
    await mkdir(trash, { recursive: true, mode: 0o700 });
    const gone = `${Date.now()}.${randomBytes(6).toString("hex")}.${name}.removed`;
    await rename(join(vols, name), join(trash, gone));
    await unlink(metaPath(home, name)).catch(() => undefined);
    const parent = openVolumeDir("remove volume", trash, () => notFound(name));
    try {
      await removeTree("remove volume", parent, gone, `volumes/${name}`, 0, { entries: 0 });
      await sweepTrash(parent);
    } finally {
      await parent.close();
    }
    return;
  }
  await unlink(metaPath(home, name)).catch(() => undefined);
}

/** Leftovers in `volumes/.tmp` older than this are swept by the next remove (a crash mid-remove or mid-create). */
export const STALE_TMP_MS = 60 * 60 * 1000;

/** Remove what a crashed remove or create left in `volumes/.tmp` (the open `trash`), never following a link. */
async function sweepTrash(trash: HostFd): Promise<void> {
  const now = Date.now();
  for (const entry of listDir("sweep volumes/.tmp", trash)) {
    // Entries are named "<ms since the epoch>.<random>.<...>" when they are made.
    const made = /^([0-9]{13})\./.exec(entry);
    if (!made || now - Number(made[1]) < STALE_TMP_MS) continue;
    try {
      await removeTree("sweep volumes/.tmp", trash, entry, `volumes/.tmp/${entry}`, 0, { entries: 0 });
    } catch {
      // gone meanwhile, or unremovable: left for the next sweep
    }
  }
}

/**
 * A volume's metadata, from `Volume.get` / `Volume.list`: a snapshot (`usedBytes` is
 * measured when it was made), with `remove()` and `fs()`.
 */
export class VolumeHandle {
  readonly #home: string;
  readonly name: string;
  /** Always `false` locally (the cloud's default volume). */
  readonly isDefault: boolean = false;
  readonly kind: VolumeKind;
  readonly quotaMib: number | null;
  /** Bytes the volume takes on the host disk (as `du` counts them). */
  readonly usedBytes: number;
  readonly capacityBytes: number | null;
  readonly diskFormat: string | null;
  readonly diskFstype: string | null;
  readonly labels: ReadonlyArray<readonly [string, string]>;
  readonly createdAt: Date | null;

  /** @internal */
  constructor(home: string, i: VolumeInfo) {
    this.#home = home;
    this.name = i.name;
    this.kind = i.kind;
    this.quotaMib = i.quotaMib;
    this.usedBytes = i.usedBytes;
    this.capacityBytes = i.capacityBytes;
    this.diskFormat = i.diskFormat;
    this.diskFstype = i.diskFstype;
    this.labels = i.labels;
    this.createdAt = i.createdAt;
  }

  /** The volume's host directory. */
  get path(): string {
    return join(volumesDir(this.#home), this.name);
  }

  /** Delete this volume (as `Volume.remove(name)`). */
  async remove(): Promise<void> {
    await removeVolume(this.#home, this.name);
  }

  /** The volume's files from the host (no sandbox needed). */
  fs(): VolumeFs {
    return new VolumeFs(rootOpener(this.#home, this.name));
  }
}

