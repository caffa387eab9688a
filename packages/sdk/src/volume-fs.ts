/**
 * `VolumeFs`: a named volume's files, read and written from the host without a sandbox.
 *
 * A volume's directory is shaped by every sandbox that mounts it: the guest may have put
 * symbolic links there (to `/etc`, to another volume) and may swap entries while we work.
 * So nothing here opens a path: the volume's directory is opened once (`$MSB_HOME/volumes`
 * by path, it is ours; the volume's entry without following it), and every step below
 * names one component relative to an open directory fd with `O_NOFOLLOW` (the addon's
 * `host*At` calls, packages/core-native/src/host_fs.rs). A link in the path is `ELOOP`,
 * never followed; a link as the last component of `write` is replaced (the new file is
 * renamed over it), of `remove` removed itself, of `stat`/`list` described, not followed.
 */
import "./polyfill.js";
import { randomBytes } from "node:crypto";
import { read as readCb } from "node:fs";
import { promisify } from "node:util";
import type * as Addon from "@microsandbox/core-native";
import { z } from "zod";
import { check } from "./config.js";
import { InvalidConfigError, MicrosandboxError, OutputLimitError, SandboxFsOpsError } from "./errors.js";
import { HostFd, MAX_HOST_DIR_ENTRIES, createFileAt, hostError, listDir, openAt, openParent, symlinkAt } from "./host-fs.js";
import { DEFAULT_MAX_OUTPUT_BYTES, MAX_PATH_BYTES, describeBytes } from "./limits.js";
import { hostFsNative } from "./native.js";

const fdRead = promisify(readCb);

/** What a volume entry is (the reference's names: `"directory"`, not `"dir"`). Links are reported, never followed. */
export type VolumeFsEntryKind = "file" | "directory" | "symlink" | "other";

/** An entry of {@link VolumeFs.list}. */
export interface VolumeFsEntry {
  /** Volume-relative path, `/`-separated and absolute (`"/data/a.txt"`). */
  readonly path: string;
  /** The last component of `path`. */
  readonly name: string;
  readonly kind: VolumeFsEntryKind;
  /** Bytes (a link: the length of its target). */
  readonly size: number;
  /** Permission bits, `mode & 0o7777`. */
  readonly mode: number;
  readonly modified: Date | null;
}

/** What {@link VolumeFs.stat} returns. */
export interface VolumeFsMetadata {
  readonly kind: VolumeFsEntryKind;
  readonly size: number;
  /** Permission bits, `mode & 0o7777`. */
  readonly mode: number;
  /** No write permission bit is set. */
  readonly readonly: boolean;
  readonly modified: Date | null;
  /** Birth time, where the host filesystem records it. */
  readonly created: Date | null;
}

export interface VolumeFsReadOptions {
  /** Most bytes to buffer (default 64 MiB); a larger file rejects with `OutputLimitError` (`field: "maxBytes"`). Use `readStream` for more. */
  maxBytes?: number;
}

/** How deep a recursive operation (removeDir, copy, usage) descends before it calls the tree hostile. */
export const MAX_VOLUME_DEPTH = 256;
/** Most entries one recursive operation (removeDir, copy) visits. */
export const MAX_VOLUME_TREE_ENTRIES = 1_000_000;
const CHUNK = 256 * 1024;
const FILE_MODE = 0o644;
const DIR_MODE = 0o755;

type VolumeNative = Pick<typeof Addon, "hostStatAt" | "hostMakeDirAt" | "hostUnlinkAt" | "hostRenameAt">;
/** @internal The addon's calls that VolumeFs adds to host-fs.ts's. */
export function nat(): VolumeNative {
  return hostFsNative() as unknown as VolumeNative;
}

type HostStat = Addon.HostStat;

const maxBytesSchema = z
  .number({ error: "must be a number" })
  .int({ error: "must be an integer" })
  .positive({ error: "must be positive" })
  .max(Number.MAX_SAFE_INTEGER, { error: "is too large" });

/**
 * A volume-relative path as its components: `""`, `"/"` and `"."` are the volume's root;
 * a leading `/` is allowed; `..` is refused (there is nothing above the root to reach).
 */
export function volumePathComponents(field: string, p: unknown): string[] {
  if (typeof p !== "string") throw new InvalidConfigError(field, `invalid ${field}: must be a string`);
  if (p.includes("\0")) throw new InvalidConfigError(field, `invalid ${field}: must not contain NUL`);
  if (Buffer.byteLength(p) > MAX_PATH_BYTES) throw new InvalidConfigError(field, `invalid ${field}: longer than ${MAX_PATH_BYTES} bytes`);
  const parts = p.split("/").filter((c) => c !== "" && c !== ".");
  if (parts.includes("..")) throw new InvalidConfigError(field, `invalid ${field} ${JSON.stringify(p)}: ".." is not allowed in a volume path`);
  for (const c of parts) {
    if (Buffer.byteLength(c) > 255) throw new InvalidConfigError(field, `invalid ${field}: a component is longer than 255 bytes`);
  }
  return parts;
}

function display(parts: readonly string[]): string {
  return `/${parts.join("/")}`;
}

function kindOf(k: string): VolumeFsEntryKind {
  return k === "dir" ? "directory" : k === "file" || k === "symlink" ? k : "other";
}

function fsErr(errno: string, path: string, message: string): SandboxFsOpsError {
  return new SandboxFsOpsError(errno, path, `${path}: ${errno} (${message})`);
}

function ncall<T>(op: string, path: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw hostError(op, path, e);
  }
}

function statAt(op: string, dir: HostFd, name: string, path: string): HostStat {
  return ncall(op, path, () => nat().hostStatAt(dir.fd, name));
}

function tmpName(): string {
  return `.msb-tmp-${randomBytes(8).toString("hex")}`;
}

async function closeAll(fds: readonly (HostFd | null | undefined)[]): Promise<void> {
  for (const f of fds) if (f) await f.close();
}

/**
 * How a {@link VolumeFs} opens its volume's root directory (fresh for every operation,
 * so a volume removed and made again is the new one). @internal
 */
export type OpenVolumeRoot = (op: string) => Promise<HostFd>;

/** @internal The root of the volume directory `dir` (absolute host path), opened without following it. */
export function openVolumeDir(op: string, dir: string, missing: () => MicrosandboxError): HostFd {
  let parent: { dir: HostFd; name: string };
  try {
    parent = openParent(op, dir);
  } catch (e) {
    if (e instanceof SandboxFsOpsError && e.errno === "ENOENT") throw missing();
    throw e;
  }
  try {
    const e = openAt(op, parent.dir, parent.name);
    if (e.kind !== "dir" || e.fd === null) {
      if (e.fd) void e.fd.close();
      throw missing();
    }
    return e.fd;
  } catch (e) {
    if (e instanceof SandboxFsOpsError && e.errno === "ENOENT") throw missing();
    throw e;
  } finally {
    void parent.dir.close();
  }
}

/** Open the directory `parts` below `root` (root itself for `[]`), without following links. */
function walk(op: string, root: HostFd, parts: readonly string[]): HostFd {
  let cur = root;
  const opened: HostFd[] = [];
  try {
    for (let i = 0; i < parts.length; i++) {
      const name = parts[i] as string;
      const path = display(parts.slice(0, i + 1));
      const e = openAt(op, cur, name, path);
      if (e.kind === "dir" && e.fd) {
        cur = e.fd;
        opened.push(e.fd);
        continue;
      }
      if (e.fd) void e.fd.close();
      if (e.kind === "symlink") throw fsErr("ELOOP", path, `${op}: ${path} is a symbolic link, which VolumeFs never follows`);
      throw fsErr("ENOTDIR", path, `${op}: ${path} is not a directory`);
    }
  } catch (e) {
    void closeAll(opened);
    throw e;
  }
  // Every directory but the one returned is closed.
  void closeAll(opened.slice(0, -1));
  return cur;
}

/** As {@link walk}, creating missing directories (mode 0755); a link or file in the way is an error. */
function walkCreate(op: string, root: HostFd, parts: readonly string[]): HostFd {
  let cur = root;
  const opened: HostFd[] = [];
  try {
    for (let i = 0; i < parts.length; i++) {
      const name = parts[i] as string;
      const path = display(parts.slice(0, i + 1));
      const fd = ncall(op, path, () => nat().hostMakeDirAt(cur.fd, name, DIR_MODE));
      cur = new HostFd(fd, path);
      opened.push(cur);
    }
  } catch (e) {
    void closeAll(opened);
    if (e instanceof SandboxFsOpsError && e.errno === "ELOOP") {
      throw fsErr("ELOOP", e.path, `${op}: ${e.path} is a symbolic link, which VolumeFs never follows`);
    }
    throw e;
  }
  void closeAll(opened.slice(0, -1));
  return cur;
}

function release(root: HostFd, dir: HostFd): Promise<void> {
  return dir === root ? Promise.resolve() : dir.close();
}

/** Read all of `fd`, at most `max` bytes. */
async function readAll(fd: HostFd, path: string, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const want = Math.min(CHUNK, max + 1 - total);
    const buf = Buffer.allocUnsafe(Math.max(want, 1));
    let n: number;
    try {
      n = (await fdRead(fd.fd, buf, 0, buf.length, null)).bytesRead;
    } catch (e) {
      throw hostError("read", path, e);
    }
    if (n === 0) break;
    total += n;
    if (total > max) {
      throw new OutputLimitError(max, `read ${path}: the file is larger than maxBytes (${describeBytes(max)}); raise maxBytes or use readStream`, {
        field: "maxBytes",
      });
    }
    chunks.push(buf.subarray(0, n));
  }
  return Buffer.concat(chunks, total);
}

function toBuffer(data: unknown, field: string): Buffer {
  if (typeof data === "string") return Buffer.from(data, "utf8");
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  throw new InvalidConfigError(field, `invalid ${field}: must be a Uint8Array or a string`);
}

/**
 * A file of a volume being read: `recv()` the next chunk (`null` at the end), `collect()`
 * the rest, or `for await` over it. The file was opened when the stream was made; its fd
 * closes at the end, on `[Symbol.asyncDispose]()`, or when iteration stops early.
 */
export class VolumeFsReadStream implements AsyncIterable<Uint8Array>, AsyncDisposable {
  readonly #fd: HostFd;
  #done = false;
  /** Volume-relative path of the file. */
  readonly path: string;

  /** @internal */
  constructor(fd: HostFd, path: string) {
    this.#fd = fd;
    this.path = path;
  }

  /** The next chunk (up to 256 KiB), or `null` once the file is exhausted. */
  async recv(): Promise<Uint8Array | null> {
    if (this.#done) return null;
    const buf = Buffer.allocUnsafe(CHUNK);
    let n: number;
    try {
      n = (await fdRead(this.#fd.fd, buf, 0, CHUNK, null)).bytesRead;
    } catch (e) {
      await this.#finish();
      throw hostError("readStream", this.path, e);
    }
    if (n === 0) {
      await this.#finish();
      return null;
    }
    return new Uint8Array(buf.buffer, buf.byteOffset, n);
  }

  /** The rest of the file in one array (mind its size: this buffers it all). */
  async collect(): Promise<Uint8Array> {
    const chunks: Uint8Array[] = [];
    let total = 0;
    for (let c = await this.recv(); c !== null; c = await this.recv()) {
      chunks.push(c);
      total += c.byteLength;
    }
    const out = new Uint8Array(total);
    let off = 0;
    for (const c of chunks) {
      out.set(c, off);
      off += c.byteLength;
    }
    return out;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    try {
      for (let c = await this.recv(); c !== null; c = await this.recv()) yield c;
    } finally {
      await this.#finish();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#finish();
  }

  async #finish(): Promise<void> {
    this.#done = true;
    await this.#fd.close();
  }
}

/**
 * A file of a volume being written: `write()` chunks, then `close()`. The data goes to a
 * new file next to the destination, which `close()` renames into place, so a sandbox
 * reading the volume sees the old file or the whole new one. Not closed (the process
 * died), the hidden `.msb-tmp-*` file stays behind.
 */
export class VolumeFsWriteSink implements AsyncDisposable {
  #fd: HostFd | null;
  readonly #dir: HostFd;
  readonly #tmp: string;
  readonly #name: string;
  readonly #release: () => Promise<void>;
  /** Volume-relative path of the file. */
  readonly path: string;

  /** @internal */
  constructor(fd: HostFd, dir: HostFd, tmp: string, name: string, path: string, releaseDir: () => Promise<void>) {
    this.#fd = fd;
    this.#dir = dir;
    this.#tmp = tmp;
    this.#name = name;
    this.path = path;
    this.#release = releaseDir;
  }

  /** Append a chunk (bytes, or a string as UTF-8). */
  async write(data: Uint8Array | string): Promise<void> {
    if (this.#fd === null) throw fsErr("EBADF", this.path, "write: the sink is closed");
    await this.#fd.writeAll("writeStream", toBuffer(data, "data"));
  }

  /** Put the file in place (idempotent). */
  async close(): Promise<void> {
    const fd = this.#fd;
    if (fd === null) return;
    this.#fd = null;
    try {
      await fd.close();
      renameInto("writeStream", this.#dir, this.#tmp, this.#name, this.path);
    } finally {
      await this.#release();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Rename the new file `tmp` over `name` in `dir` (a link or file there is replaced, never followed); on failure remove `tmp`. */
function renameInto(op: string, dir: HostFd, tmp: string, name: string, path: string): void {
  try {
    ncall(op, path, () => nat().hostRenameAt(dir.fd, tmp, dir.fd, name, false));
  } catch (e) {
    try {
      nat().hostUnlinkAt(dir.fd, tmp, false);
    } catch {
      // already gone
    }
    throw e;
  }
}

/** A new file `tmp` in `dir`, mode 0644, open for writing. */
async function createTmp(op: string, dir: HostFd, path: string): Promise<{ fd: HostFd; tmp: string }> {
  const tmp = tmpName();
  const fd = createFileAt(op, dir, tmp, path);
  try {
    await fd.chmod(op, FILE_MODE);
  } catch (e) {
    await fd.close();
    throw e;
  }
  return { fd, tmp };
}

interface Budget {
  entries: number;
}

function spend(op: string, path: string, b: Budget): void {
  if (++b.entries > MAX_VOLUME_TREE_ENTRIES) throw fsErr("E2BIG", path, `${op}: more than ${MAX_VOLUME_TREE_ENTRIES} entries`);
}

/** @internal Remove `name` (a directory: with everything in it) from `dir`, never following a link. */
export async function removeTree(op: string, dir: HostFd, name: string, path: string, depth: number, b: Budget): Promise<void> {
  spend(op, path, b);
  const st = statAt(op, dir, name, path);
  if (st.kind !== "dir") {
    ncall(op, path, () => nat().hostUnlinkAt(dir.fd, name, false));
    return;
  }
  if (depth > MAX_VOLUME_DEPTH) throw fsErr("ELOOP", path, `${op}: deeper than ${MAX_VOLUME_DEPTH} directories`);
  const e = openAt(op, dir, name, path);
  if (e.kind !== "dir" || !e.fd) {
    // Swapped for something else since the stat: remove that instead.
    if (e.fd) await e.fd.close();
    ncall(op, path, () => nat().hostUnlinkAt(dir.fd, name, false));
    return;
  }
  try {
    for (const child of listDir(op, e.fd)) await removeTree(op, e.fd, child, `${path}/${child}`, depth + 1, b);
  } finally {
    await e.fd.close();
  }
  ncall(op, path, () => nat().hostUnlinkAt(dir.fd, name, true));
}

/** Copy `name` of `src` to `dstName` of `dst`: files (with their mode) and directories recursively, links as links. */
async function copyTree(
  op: string,
  src: HostFd,
  name: string,
  dst: HostFd,
  dstName: string,
  path: string,
  depth: number,
  b: Budget,
): Promise<void> {
  spend(op, path, b);
  const e = openAt(op, src, name, path);
  try {
    if (e.kind === "symlink") {
      symlinkAt(op, dst, e.target ?? "", dstName, path);
    } else if (e.kind === "file" && e.fd) {
      const { fd, tmp } = await createTmp(op, dst, path);
      try {
        for await (const c of e.fd.chunks(op, CHUNK)) await fd.writeAll(op, c);
        await fd.chmod(op, e.mode);
      } catch (err) {
        await fd.close();
        try {
          nat().hostUnlinkAt(dst.fd, tmp, false);
        } catch {
          // already gone
        }
        throw err;
      }
      await fd.close();
      renameInto(op, dst, tmp, dstName, path);
    } else if (e.kind === "dir" && e.fd) {
      if (depth > MAX_VOLUME_DEPTH) throw fsErr("ELOOP", path, `${op}: deeper than ${MAX_VOLUME_DEPTH} directories`);
      const sub = new HostFd(ncall(op, path, () => nat().hostMakeDirAt(dst.fd, dstName, DIR_MODE)), path);
      try {
        for (const child of listDir(op, e.fd)) await copyTree(op, e.fd, child, sub, child, `${path}/${child}`, depth + 1, b);
        await sub.chmod(op, e.mode);
      } finally {
        await sub.close();
      }
    } else {
      throw fsErr("EINVAL", path, `${op}: ${path} is not a file, directory or link`);
    }
  } finally {
    if (e.fd) await e.fd.close();
  }
}

/** Bytes allocated by everything under `dir` (as `du` counts them), at most `MAX_VOLUME_TREE_ENTRIES` entries deep-first. @internal */
export async function allocatedBytes(dir: HostFd, depth = 0, b: Budget = { entries: 0 }): Promise<number> {
  let total = 0;
  for (const name of listDir("usage", dir)) {
    if (++b.entries > MAX_VOLUME_TREE_ENTRIES) return total;
    let st: HostStat;
    try {
      st = nat().hostStatAt(dir.fd, name);
    } catch {
      continue; // gone meanwhile
    }
    total += st.allocated;
    if (st.kind === "dir" && depth < MAX_VOLUME_DEPTH) {
      let e: ReturnType<typeof openAt> | undefined;
      try {
        e = openAt("usage", dir, name);
      } catch {
        continue;
      }
      if (e.kind === "dir" && e.fd) {
        try {
          total += await allocatedBytes(e.fd, depth + 1, b);
        } catch {
          // unreadable: counted as far as it went
        } finally {
          await e.fd.close();
        }
      } else if (e.fd) await e.fd.close();
    }
  }
  return total;
}

function metadata(st: HostStat): VolumeFsMetadata {
  return {
    kind: kindOf(st.kind),
    size: st.size,
    mode: st.mode,
    readonly: (st.mode & 0o222) === 0,
    modified: new Date(st.mtimeMs),
    created: typeof st.btimeMs === "number" ? new Date(st.btimeMs) : null,
  };
}

/**
 * A volume's files from the host, without a sandbox (`volume.fs()`, `handle.fs()`).
 * Paths are relative to the volume's root (a leading `/` is allowed; `""` is the root;
 * `..` is refused). Failures are `SandboxFsOpsError`s with the errno (`ENOENT`,
 * `ELOOP` for a link in the path, ...) and the volume-relative path.
 */
export class VolumeFs {
  readonly #open: OpenVolumeRoot;

  /** @internal */
  constructor(open: OpenVolumeRoot) {
    this.#open = open;
  }

  async #with<T>(op: string, f: (root: HostFd) => Promise<T>): Promise<T> {
    const root = await this.#open(op);
    try {
      return await f(root);
    } finally {
      await root.close();
    }
  }

  /** The parent directory of `parts` opened (created when `create`), and the last name. */
  #parent(op: string, root: HostFd, parts: string[], create: boolean): { dir: HostFd; name: string } {
    if (parts.length === 0) throw fsErr("EISDIR", "/", `${op}: the volume's root is a directory`);
    const dir = (create ? walkCreate : walk)(op, root, parts.slice(0, -1));
    return { dir, name: parts[parts.length - 1] as string };
  }

  /** The whole file (at most `maxBytes`, default 64 MiB). */
  async read(path: string, options: VolumeFsReadOptions = {}): Promise<Uint8Array> {
    const parts = volumePathComponents("path", path);
    const max = options.maxBytes === undefined ? DEFAULT_MAX_OUTPUT_BYTES : check(maxBytesSchema, "maxBytes", options.maxBytes);
    const p = display(parts);
    return this.#with("read", async (root) => {
      const { dir, name } = this.#parent("read", root, parts, false);
      try {
        const fd = openFile("read", dir, name, p);
        try {
          const buf = await readAll(fd, p, max);
          return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
        } finally {
          await fd.close();
        }
      } finally {
        await release(root, dir);
      }
    });
  }

  /** The whole file decoded as UTF-8 (the same `maxBytes` limit as {@link read}). */
  async readToString(path: string, options: VolumeFsReadOptions = {}): Promise<string> {
    return new TextDecoder("utf-8").decode(await this.read(path, options));
  }

  /** The file as a stream of chunks (for files of any size). */
  async readStream(path: string): Promise<VolumeFsReadStream> {
    const parts = volumePathComponents("path", path);
    const p = display(parts);
    return this.#with("readStream", async (root) => {
      const { dir, name } = this.#parent("readStream", root, parts, false);
      try {
        return new VolumeFsReadStream(openFile("readStream", dir, name, p), p);
      } finally {
        await release(root, dir);
      }
    });
  }

  /**
   * Replace the file's contents (mode 0644 for the new file), creating missing parent
   * directories. The new file is written next to it and renamed into place; a link at
   * `path` is replaced, never written through.
   */
  async write(path: string, data: Uint8Array | string): Promise<void> {
    const parts = volumePathComponents("path", path);
    const buf = toBuffer(data, "data");
    const p = display(parts);
    await this.#with("write", async (root) => {
      const { dir, name } = this.#parent("write", root, parts, true);
      try {
        const { fd, tmp } = await createTmp("write", dir, p);
        try {
          await fd.writeAll("write", buf);
        } catch (e) {
          await fd.close();
          try {
            nat().hostUnlinkAt(dir.fd, tmp, false);
          } catch {
            // already gone
          }
          throw e;
        }
        await fd.close();
        renameInto("write", dir, tmp, name, p);
      } finally {
        await release(root, dir);
      }
    });
  }

  /** A sink for a large file: `write()` chunks, then `close()` puts the file in place. */
  async writeStream(path: string): Promise<VolumeFsWriteSink> {
    const parts = volumePathComponents("path", path);
    const p = display(parts);
    const root = await this.#open("writeStream");
    try {
      const { dir, name } = this.#parent("writeStream", root, parts, true);
      const done = async () => {
        await release(root, dir);
        await root.close();
      };
      try {
        const { fd, tmp } = await createTmp("writeStream", dir, p);
        return new VolumeFsWriteSink(fd, dir, tmp, name, p, done);
      } catch (e) {
        await done();
        throw e;
      }
    } catch (e) {
      await root.close();
      throw e;
    }
  }

  /** The entries of a directory (`""` for the root), sorted by name; links are listed, not followed. */
  async list(path: string = ""): Promise<VolumeFsEntry[]> {
    const parts = volumePathComponents("path", path);
    const base = parts.length === 0 ? "" : display(parts);
    return this.#with("list", async (root) => {
      const dir = walk("list", root, parts);
      try {
        const out: VolumeFsEntry[] = [];
        for (const name of listDir("list", dir)) {
          let st: HostStat;
          try {
            st = nat().hostStatAt(dir.fd, name);
          } catch {
            continue; // removed meanwhile
          }
          out.push({ path: `${base}/${name}`, name, kind: kindOf(st.kind), size: st.size, mode: st.mode, modified: new Date(st.mtimeMs) });
        }
        return out;
      } finally {
        await release(root, dir);
      }
    });
  }

  /** Create a directory and any missing parents (mode 0755); an existing directory is fine. */
  async mkdir(path: string): Promise<void> {
    const parts = volumePathComponents("path", path);
    await this.#with("mkdir", async (root) => {
      await release(root, walkCreate("mkdir", root, parts));
    });
  }

  /** Remove a directory and everything in it (links inside are removed, never followed). Not the root. */
  async removeDir(path: string): Promise<void> {
    const parts = volumePathComponents("path", path);
    if (parts.length === 0) throw fsErr("EINVAL", "/", "removeDir: cannot remove the volume's root (use Volume.remove)");
    const p = display(parts);
    await this.#with("removeDir", async (root) => {
      const { dir, name } = this.#parent("removeDir", root, parts, false);
      try {
        const st = statAt("removeDir", dir, name, p);
        if (st.kind !== "dir") throw fsErr("ENOTDIR", p, `removeDir: ${p} is not a directory`);
        await removeTree("removeDir", dir, name, p, 0, { entries: 0 });
      } finally {
        await release(root, dir);
      }
    });
  }

  /** Remove a file or a link (the link itself). A directory is `EISDIR` (use {@link removeDir}). */
  async remove(path: string): Promise<void> {
    const parts = volumePathComponents("path", path);
    const p = display(parts);
    await this.#with("remove", async (root) => {
      const { dir, name } = this.#parent("remove", root, parts, false);
      try {
        const st = statAt("remove", dir, name, p);
        if (st.kind === "dir") throw fsErr("EISDIR", p, `remove: ${p} is a directory (use removeDir)`);
        ncall("remove", p, () => nat().hostUnlinkAt(dir.fd, name, false));
      } finally {
        await release(root, dir);
      }
    });
  }

  /** Copy a file (with its mode), a directory (recursively) or a link (as a link) to `to`, creating `to`'s parents. */
  async copy(from: string, to: string): Promise<void> {
    const src = volumePathComponents("from", from);
    const dst = volumePathComponents("to", to);
    if (src.length === 0) throw fsErr("EINVAL", "/", "copy: cannot copy the volume's root");
    if (dst.length >= src.length && src.every((c, i) => dst[i] === c)) {
      throw fsErr("EINVAL", display(dst), `copy: ${display(dst)} is inside ${display(src)}`);
    }
    await this.#with("copy", async (root) => {
      const s = this.#parent("copy", root, src, false);
      try {
        const d = this.#parent("copy", root, dst, true);
        try {
          await copyTree("copy", s.dir, s.name, d.dir, d.name, display(src), 0, { entries: 0 });
        } finally {
          await release(root, d.dir);
        }
      } finally {
        await release(root, s.dir);
      }
    });
  }

  /** Move a file, directory or link to `to` (replacing a file there), creating `to`'s parents. */
  async rename(from: string, to: string): Promise<void> {
    const src = volumePathComponents("from", from);
    const dst = volumePathComponents("to", to);
    if (src.length === 0 || dst.length === 0) throw fsErr("EINVAL", "/", "rename: cannot move the volume's root");
    await this.#with("rename", async (root) => {
      const s = this.#parent("rename", root, src, false);
      try {
        const d = this.#parent("rename", root, dst, true);
        try {
          ncall("rename", display(src), () => nat().hostRenameAt(s.dir.fd, s.name, d.dir.fd, d.name, false));
        } finally {
          await release(root, d.dir);
        }
      } finally {
        await release(root, s.dir);
      }
    });
  }

  /** What `path` is (a link is described, not followed). */
  async stat(path: string): Promise<VolumeFsMetadata> {
    const parts = volumePathComponents("path", path);
    const p = display(parts);
    return this.#with("stat", async (root) => {
      if (parts.length === 0) return metadata(statAt("stat", root, "", "/"));
      const { dir, name } = this.#parent("stat", root, parts, false);
      try {
        return metadata(statAt("stat", dir, name, p));
      } finally {
        await release(root, dir);
      }
    });
  }

  /**
   * Whether `path` exists (a link counts, dangling or not). A path that goes through a
   * link, or through a file, does not exist for VolumeFs.
   */
  async exists(path: string): Promise<boolean> {
    const parts = volumePathComponents("path", path);
    const p = display(parts);
    return this.#with("exists", async (root) => {
      if (parts.length === 0) return true;
      let dir: HostFd;
      try {
        dir = walk("exists", root, parts.slice(0, -1));
      } catch (e) {
        if (e instanceof SandboxFsOpsError && ["ENOENT", "ENOTDIR", "ELOOP"].includes(e.errno)) return false;
        throw e;
      }
      try {
        statAt("exists", dir, parts[parts.length - 1] as string, p);
        return true;
      } catch (e) {
        if (e instanceof SandboxFsOpsError && e.errno === "ENOENT") return false;
        throw e;
      } finally {
        await release(root, dir);
      }
    });
  }
}

/** `name` in `dir` opened for reading; only a regular file. */
function openFile(op: string, dir: HostFd, name: string, path: string): HostFd {
  const e = openAt(op, dir, name, path);
  if (e.kind === "file" && e.fd) return e.fd;
  if (e.fd) void e.fd.close();
  if (e.kind === "dir") throw fsErr("EISDIR", path, `${op}: ${path} is a directory`);
  if (e.kind === "symlink") throw fsErr("ELOOP", path, `${op}: ${path} is a symbolic link, which VolumeFs never follows`);
  throw fsErr("EINVAL", path, `${op}: ${path} is not a regular file`);
}
