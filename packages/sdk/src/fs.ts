/**
 * `sb.fs()`: files inside a running sandbox, through the guest agent's filesystem
 * operations. Guest paths are absolute and resolved by the guest's own kernel inside
 * the guest's root: nothing the guest says is ever used to pick a host path, except
 * single, checked names under the host directory given to {@link SandboxFs.copyToHost}.
 *
 * Contents stream in both directions with the agent channel's flow control (a few MiB
 * in flight at most), so reading or writing a large file keeps memory bounded.
 */
import "./polyfill.js";
import { join, posix, resolve } from "node:path";
import { z } from "zod";
import { check, guestPathSchema, modeSchema, normalizeGuestPath } from "./config.js";
import { InvalidConfigError, MicrosandboxError, OutputLimitError, ProtocolError, SandboxFsOpsError, fromNative } from "./errors.js";
import type { ExecOutput } from "./exec.js";
import { checkPath } from "./input-limits.js";
import { DEFAULT_MAX_OUTPUT_BYTES, describeBytes } from "./limits.js";
import { createFileAt, hostError, listDir, mkdirAt, openAt, openParent, symlinkAt, type HostFd } from "./host-fs.js";
import type { NativeAgentClient, NativeExecEvent, NativeFsEntry, NativeFsOp } from "./native.js";

/** What a directory entry is. Symbolic links are reported as such, never followed. */
export type FsEntryKind = "file" | "dir" | "symlink" | "other";

/** A file, directory or link in the guest, from `list()` or `stat()`. */
export interface FsEntry {
  /** Its name (for `stat`, the last component of the path). */
  name: string;
  kind: FsEntryKind;
  /** Size in bytes (of the link itself for a symlink). */
  size: number;
  /** Permission bits, `mode & 0o7777` (e.g. `0o644`). */
  mode: number;
  /** `true` when the owner has no write permission (`mode & 0o200` is 0), as the reference SDK's `readonly`. */
  readonly: boolean;
  /** Its absolute guest path (the reference SDK's `path`): for `list`, the directory's path joined with `name`. */
  path: string;
  /** Last modification time. */
  modified: Date;
}

/** The reference SDK's name of what `stat()` returns. */
export type FsMetadata = FsEntry;

export interface FsWriteOptions {
  /** Permission bits of the file (default 0o644 for a new file; an existing file gets this mode when given). */
  mode?: number;
  /** Append to the file instead of replacing its contents. */
  append?: boolean;
}

export interface FsReadOptions {
  /** Most bytes to buffer (default {@link DEFAULT_MAX_OUTPUT_BYTES}, 64 MiB); a larger file rejects with `OutputLimitError`. */
  maxBytes?: number;
}

export interface FsMkdirOptions {
  /** Permission bits (default 0o755). */
  mode?: number;
  /** Create missing parents, and accept an existing directory (default `true`). */
  recursive?: boolean;
}

export interface FsRemoveDirOptions {
  /** Remove the directory's contents too (default `false`: it must be empty). */
  recursive?: boolean;
}

/** @internal What a {@link SandboxFs} needs from its sandbox. */
export interface FsContext {
  /** The agent connection, once the sandbox is known to run. */
  client(): NativeAgentClient;
  /** Run a call on the connection, mapping errors (`SandboxNotRunningError` once the sandbox stopped). */
  call<T>(f: () => Promise<T>): Promise<T>;
  /** Run a helper command in the guest as root. */
  run(cmd: string, args: string[]): Promise<ExecOutput>;
}

const KINDS: readonly string[] = ["file", "dir", "symlink", "other"];
/** How deep copyToHost descends before it calls the guest's tree hostile. */
export const MAX_COPY_DEPTH = 1024;
const HOST_CHUNK = 1 << 20;
const utf8 = new TextDecoder("utf-8");
const enc = new TextEncoder();

const boolOption = z.boolean({ error: "must be a boolean" });
const maxBytesSchema = z
  .number({ error: "must be a number" })
  .int({ error: "must be an integer" })
  .positive({ error: "must be positive" })
  .max(Number.MAX_SAFE_INTEGER, { error: "is too large" });
const symlinkTargetSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .refine((s) => !s.includes("\0"), { error: "must not contain NUL" });
const hostPathSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .refine((s) => !s.includes("\0"), { error: "must not contain NUL" });

function guestPath(field: string, p: unknown): string {
  const path = normalizeGuestPath(check(guestPathSchema, field, p));
  checkPath(field, path);
  return path;
}

/** A guest-supplied text, made safe to put in a message. */
function sanitize(s: unknown): string {
  const t = typeof s === "string" ? s : "";
  // eslint-disable-next-line no-control-regex
  const clean = t.replace(/[\u0000-\u001f\u007f]/g, " ");
  return clean.length > 300 ? `${clean.slice(0, 297)}...` : clean;
}

type EventOf<K extends NativeExecEvent["kind"]> = Extract<NativeExecEvent, { kind: K }>;

function fsError(op: string, path: string, ev: EventOf<"fsError">): SandboxFsOpsError {
  const errno = typeof ev.errno === "string" && /^E[A-Z0-9]{1,15}$/.test(ev.errno) ? ev.errno : "EIO";
  const reason = sanitize(ev.message);
  return new SandboxFsOpsError(errno, path, `${op} ${path}: ${errno}${reason ? ` (${reason})` : ""}`);
}

function toEntry(e: NativeFsEntry | undefined, path: string | undefined = undefined): FsEntry {
  const r = e as unknown as Record<string, unknown> | undefined;
  if (
    !r ||
    typeof r.name !== "string" ||
    typeof r.kind !== "string" ||
    !KINDS.includes(r.kind) ||
    typeof r.size !== "number" ||
    !(r.size >= 0) ||
    typeof r.mode !== "number" ||
    !Number.isInteger(r.mode) ||
    typeof r.modifiedMs !== "number" ||
    !Number.isFinite(r.modifiedMs)
  ) {
    throw new ProtocolError("malformed file entry from the guest");
  }
  const mode = r.mode & 0o7777;
  return {
    name: r.name,
    kind: r.kind as FsEntryKind,
    size: r.size,
    mode,
    readonly: (mode & 0o200) === 0,
    path: path ?? r.name,
    modified: new Date(r.modifiedMs),
  };
}

/**
 * A name from a guest directory listing, checked before it becomes part of a host path:
 * one non-empty component, not `.` or `..`, without `/` or NUL.
 */
export function checkEntryName(name: unknown): string {
  if (typeof name !== "string" || name === "" || name === "." || name === ".." || name.includes("/") || name.includes("\0")) {
    throw new ProtocolError(`the guest listed an unsafe file name ${JSON.stringify(String(name)).slice(0, 80)}`);
  }
  return name;
}

function toBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function plain(d: Uint8Array): Uint8Array {
  return Object.getPrototypeOf(d) === Uint8Array.prototype ? d : new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

/**
 * A file being read from the guest: an async iterable of `Uint8Array` chunks (up to
 * 64 KiB each), from `sb.fs().readStream(path)`. Chunks are pulled as you iterate, so
 * at most the agent channel's window is in flight. For a Node stream:
 * `Readable.from(stream)`.
 *
 * Leaving a `for await` loop early (or {@link cancel}) drains the rest of the file
 * in the background, discarding it, so the guest's side of the transfer ends.
 */
export class FsReadStream implements AsyncIterable<Uint8Array>, AsyncDisposable {
  readonly path: string;
  readonly #next: () => Promise<NativeExecEvent | null>;
  readonly #abort: () => Promise<void>;
  #first: NativeExecEvent | undefined;
  #tail: Promise<unknown> = Promise.resolve();
  #done = false;
  #failure: MicrosandboxError | undefined;
  #draining: Promise<void> | undefined;

  /** @internal */
  constructor(path: string, next: () => Promise<NativeExecEvent | null>, first: NativeExecEvent, abort: () => Promise<void>) {
    this.path = path;
    this.#next = next;
    this.#first = first;
    this.#abort = abort;
  }

  /** The next chunk, or `null` at the end of the file. A guest error mid-way rejects with `SandboxFsOpsError`. */
  recv(): Promise<Uint8Array | null> {
    const p = this.#tail.then(() => this.#recvOne());
    this.#tail = p.catch(() => undefined);
    return p;
  }

  async #recvOne(): Promise<Uint8Array | null> {
    if (this.#failure) throw this.#failure;
    if (this.#done) return null;
    let ev: NativeExecEvent | null;
    if (this.#first !== undefined) {
      ev = this.#first;
      this.#first = undefined;
    } else {
      try {
        ev = await this.#next();
      } catch (e) {
        throw this.#fail(fromNative(e));
      }
    }
    switch (ev?.kind) {
      case "fsData":
        if (!(ev.data instanceof Uint8Array)) throw this.#fail(new ProtocolError("fsData event without data"));
        return plain(ev.data);
      case "fsEnd":
        this.#done = true;
        return null;
      case "fsError":
        throw this.#fail(fsError("read", this.path, ev));
      default:
        throw this.#fail(new ProtocolError(`unexpected event ${JSON.stringify(ev?.kind ?? null)} while reading ${this.path}`));
    }
  }

  #fail(e: MicrosandboxError): MicrosandboxError {
    this.#failure = e;
    this.#done = true;
    return e;
  }

  /**
   * Stop reading: the guest is told to stop (it ends the transfer after what is already
   * in flight, at most the channel's window), which is drained and discarded. Resolves
   * once the transfer is over. Works for endless files such as `/dev/zero` too.
   */
  cancel(): Promise<void> {
    this.#draining ??= (async () => {
      if (!this.#done) await this.#abort().catch(() => undefined);
      try {
        while ((await this.recv()) !== null);
      } catch {
        // the transfer is over either way (ECANCELED from the guest, most likely)
      }
    })();
    return this.#draining;
  }

  /**
   * The rest of the file in one buffer (the reference SDK's `collect()`). At most
   * `maxBytes` (default {@link DEFAULT_MAX_OUTPUT_BYTES}, 64 MiB): past it the transfer is
   * cancelled and this rejects with {@link OutputLimitError} (`field: "maxBytes"`).
   */
  async collect(options: FsReadOptions = {}): Promise<Uint8Array> {
    const max = options.maxBytes === undefined ? DEFAULT_MAX_OUTPUT_BYTES : check(maxBytesSchema, "maxBytes", options.maxBytes);
    const chunks: Uint8Array[] = [];
    let n = 0;
    for (let c = await this.recv(); c !== null; c = await this.recv()) {
      n += c.byteLength;
      if (n > max) {
        await this.cancel();
        throw new OutputLimitError(max, `read ${this.path}: the file is larger than maxBytes (${describeBytes(max)}); raise maxBytes or iterate the stream`, { field: "maxBytes" });
      }
      chunks.push(c);
    }
    if (chunks.length === 1) return chunks[0] as Uint8Array;
    const out = new Uint8Array(n);
    let off = 0;
    for (const c of chunks) {
      out.set(c, off);
      off += c.byteLength;
    }
    return out;
  }

  /** `await using s = await sb.fs().readStream(p)`: an unfinished transfer is cancelled when the scope ends. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#done) await this.cancel();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array, void, undefined> {
    let finished = false;
    try {
      for (let c = await this.recv(); c !== null; c = await this.recv()) yield c;
      finished = true;
    } finally {
      if (!finished && !this.#done) void this.cancel();
    }
  }
}

type Settled = { ev: NativeExecEvent | null } | { err: MicrosandboxError };

/**
 * A file being written in the guest, from `sb.fs().writeStream(path)`. Each `write`
 * resolves once the guest has taken the bytes (flow control: memory stays bounded
 * however much is written); `close()` resolves once the file is complete. Do not
 * change a chunk until its write resolved.
 */
export class FsWriteStream implements AsyncDisposable {
  readonly path: string;
  readonly #client: NativeAgentClient;
  readonly #id: number;
  readonly #settled: Promise<Settled>;
  readonly #op: string;
  #tail: Promise<void> = Promise.resolve();
  #closed = false;
  #result: Settled | undefined;

  /** @internal */
  constructor(path: string, client: NativeAgentClient, id: number, op = "write") {
    this.path = path;
    this.#client = client;
    this.#id = id;
    this.#op = op;
    // The guest answers only at the end (fsDone), or at once when it cannot open the file.
    this.#settled = client.next(id).then(
      (ev): Settled => (this.#result = { ev }),
      (e: unknown): Settled => (this.#result = { err: fromNative(e) }),
    );
  }

  /** Write bytes (a string as UTF-8). */
  write(data: string | Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(new InvalidConfigError("data", `${this.#op} ${this.path}: the stream was closed`));
    let bytes: Uint8Array;
    if (typeof data === "string") bytes = enc.encode(data);
    else if (data instanceof Uint8Array) bytes = data;
    else return Promise.reject(new InvalidConfigError("data", "invalid data: a file takes a string or a Uint8Array"));
    const p = this.#tail.then(() => (bytes.byteLength === 0 ? this.#check() : this.#send(bytes)));
    this.#tail = p.catch(() => undefined);
    return p;
  }

  /** Finish the file; resolves once the guest has written all of it (or rejects with its error). Idempotent. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      const p = this.#tail.then(async () => {
        if (this.#result === undefined) {
          await this.#client.closeStdin(this.#id).catch(() => undefined);
        }
        this.#outcome(await this.#settled, true);
      });
      this.#tail = p.catch(() => undefined);
      return p;
    }
    return this.#tail.then(() => this.#outcome(this.#result ?? { ev: null }, true));
  }

  /** `await using ws = await sb.fs().writeStream(p)`: closed (the file finished) when the scope ends; errors are dropped (call `close()` to see them). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close().catch(() => undefined);
  }

  async #check(): Promise<void> {
    if (this.#result !== undefined) this.#outcome(this.#result, false);
  }

  async #send(bytes: Uint8Array): Promise<void> {
    await this.#check();
    const sent = this.#client.writeStdin(this.#id, toBuffer(bytes)).then(
      () => "sent" as const,
      (e: unknown) => ({ writeError: e }),
    );
    const r = await Promise.race([sent, this.#settled]);
    if (r === "sent") return;
    if ("writeError" in r) {
      // The session probably ended (its window is closed then): say why, if the guest did.
      const why = await Promise.race([this.#settled, new Promise<undefined>((res) => setTimeout(res, 1000, undefined))]);
      if (why !== undefined) this.#outcome(why, false);
      throw fromNative(r.writeError);
    }
    this.#outcome(r, false);
  }

  /** What the session's final event means; returns only for fsDone at the end. */
  #outcome(s: Settled, atEnd: boolean): void {
    if ("err" in s) throw s.err;
    const ev = s.ev;
    if (ev?.kind === "fsError") throw fsError(this.#op, this.path, ev);
    if (ev?.kind === "fsDone" && atEnd) return;
    throw new ProtocolError(`unexpected event ${JSON.stringify(ev?.kind ?? null)} while writing ${this.path}`);
  }
}

/**
 * Files in a running sandbox: `sb.fs()`. Every guest path is absolute. Failures in the
 * guest reject with {@link SandboxFsOpsError} (`code: "sandboxFsOps"`), whose `errno`
 * names the error (`ENOENT`, `EACCES`, `EISDIR`, `ENOTDIR`, `EEXIST`, `ENOTEMPTY`,
 * `EROFS`, `ENOSPC`, ...) and `path` the path in question.
 */
export class SandboxFs {
  readonly #ctx: FsContext;

  /** @internal Use `sb.fs()`. */
  constructor(ctx: FsContext) {
    this.#ctx = ctx;
  }

  /** Start an operation; its events come through `next(id)`. */
  async #open(op: NativeFsOp): Promise<{ client: NativeAgentClient; id: number }> {
    const client = this.#ctx.client();
    const id = await this.#ctx.call(() => client.fs(op));
    return { client, id };
  }

  /** An operation answered by one event of kind `want`. */
  async #single<K extends NativeExecEvent["kind"]>(op: NativeFsOp, name: string, path: string, want: K): Promise<EventOf<K>> {
    const { client, id } = await this.#open(op);
    const ev = await this.#ctx.call(() => client.next(id));
    if (ev?.kind === "fsError") throw fsError(name, path, ev);
    if (ev?.kind !== want) throw new ProtocolError(`unexpected answer ${JSON.stringify(ev?.kind ?? null)} to ${name} ${path}`);
    return ev as EventOf<K>;
  }

  /**
   * The whole file. A directory -> `EISDIR`. At most `maxBytes` (default
   * {@link DEFAULT_MAX_OUTPUT_BYTES}, 64 MiB): past it the guest is told to stop and the
   * call rejects with {@link OutputLimitError} (`field: "maxBytes"`); for large or
   * endless files use {@link readStream}, which has no limit.
   */
  async read(path: string, options: FsReadOptions = {}): Promise<Uint8Array> {
    const max = options.maxBytes === undefined ? DEFAULT_MAX_OUTPUT_BYTES : check(maxBytesSchema, "maxBytes", options.maxBytes);
    const stream = await this.readStream(path);
    const chunks: Uint8Array[] = [];
    let n = 0;
    for (let c = await stream.recv(); c !== null; c = await stream.recv()) {
      n += c.byteLength;
      if (n > max) {
        await stream.cancel();
        throw new OutputLimitError(max, `read ${stream.path}: the file is larger than maxBytes (${describeBytes(max)}); raise maxBytes or use readStream`, { field: "maxBytes" });
      }
      chunks.push(c);
    }
    if (chunks.length === 1) return chunks[0] as Uint8Array;
    const out = new Uint8Array(n);
    let off = 0;
    for (const c of chunks) {
      out.set(c, off);
      off += c.byteLength;
    }
    return out;
  }

  /** The whole file decoded as UTF-8 (the same `maxBytes` limit as {@link read}). */
  async readToString(path: string, options: FsReadOptions = {}): Promise<string> {
    return utf8.decode(await this.read(path, options));
  }

  /** Create or replace a file with these contents (a string as UTF-8). Missing parent directory -> `ENOENT`. */
  async write(path: string, data: string | Uint8Array, options: FsWriteOptions = {}): Promise<void> {
    if (typeof data !== "string" && !(data instanceof Uint8Array)) {
      throw new InvalidConfigError("data", "invalid data: a file takes a string or a Uint8Array");
    }
    const ws = await this.writeStream(path, options);
    if ((typeof data === "string" ? data.length : data.byteLength) > 0) await ws.write(data);
    await ws.close();
  }

  /** The entries of a directory (without `.` and `..`), sorted by name. */
  async list(path: string): Promise<FsEntry[]> {
    const p = guestPath("path", path);
    const ev = await this.#single({ list: { path: p } }, "list", p, "fsEntries");
    if (!Array.isArray(ev.entries)) throw new ProtocolError(`malformed listing of ${p}`);
    return ev.entries.map((e) => toEntry(e, typeof e?.name === "string" ? posix.join(p, e.name) : undefined));
  }

  /** Create a directory; by default with its missing parents, and an existing directory is fine. */
  async mkdir(path: string, options: FsMkdirOptions = {}): Promise<void> {
    const p = guestPath("path", path);
    const mode = options.mode === undefined ? null : check(modeSchema, "mode", options.mode);
    const recursive = options.recursive === undefined ? true : check(boolOption, "recursive", options.recursive);
    await this.#single({ mkdir: { path: p, mode, recursive } }, "mkdir", p, "fsDone");
    if (mode !== null) await this.#fixDirMode(p, mode);
  }

  /**
   * The guest creates directories under its umask (022): bits it masked off (group and
   * other write, setgid, sticky) are set afterwards, only on a directory that has exactly
   * the masked mode (so an existing directory with another mode is left alone).
   */
  async #fixDirMode(p: string, mode: number): Promise<void> {
    if ((mode & 0o7022) === 0) return;
    const st = await this.stat(p);
    if (st.mode === mode || st.mode !== (mode & 0o1755)) return;
    const out = await this.#ctx.run("chmod", [mode.toString(8), p]).catch((e: unknown) => e);
    if (out instanceof Error || !(out as ExecOutput).success) {
      const why = out instanceof Error ? out.message : sanitize((out as ExecOutput).stderr());
      throw new SandboxFsOpsError("EPERM", p, `mkdir ${p}: cannot set mode ${mode.toString(8)} (${why})`);
    }
  }

  /** Remove a directory: it must be empty unless `recursive`. A file -> `ENOTDIR`. */
  async removeDir(path: string, options: FsRemoveDirOptions = {}): Promise<void> {
    const p = guestPath("path", path);
    const recursive = options.recursive === undefined ? false : check(boolOption, "recursive", options.recursive);
    await this.#single({ remove_dir: { path: p, recursive } }, "removeDir", p, "fsDone");
  }

  /** Remove a file or symbolic link. A directory -> `EISDIR` (use {@link removeDir}). */
  async remove(path: string): Promise<void> {
    const p = guestPath("path", path);
    await this.#single({ remove: { path: p } }, "remove", p, "fsDone");
  }

  /** Copy a file, symlink or directory tree inside the guest (modes kept). */
  async copy(src: string, dst: string): Promise<void> {
    const s = guestPath("src", src);
    const d = guestPath("dst", dst);
    await this.#single({ copy: { src: s, dst: d } }, "copy", s, "fsDone");
  }

  /** Rename or move inside the guest. */
  async rename(src: string, dst: string): Promise<void> {
    const s = guestPath("src", src);
    const d = guestPath("dst", dst);
    await this.#single({ rename: { src: s, dst: d } }, "rename", s, "fsDone");
  }

  /** Create a symbolic link `link` pointing to `target` (stored as given; it need not exist). */
  async symlink(target: string, link: string): Promise<void> {
    const t = check(symlinkTargetSchema, "target", target);
    checkPath("target", t);
    const l = guestPath("link", link);
    await this.#single({ symlink: { target: t, link: l } }, "symlink", l, "fsDone");
  }

  /** What is at `path` (a symbolic link is reported as a link, not followed). */
  async stat(path: string): Promise<FsEntry> {
    const p = guestPath("path", path);
    const ev = await this.#single({ stat: { path: p } }, "stat", p, "fsStat");
    return toEntry(ev.entry, p);
  }

  /** Whether anything (a file, directory or link, even a dangling one) is at `path`. */
  async exists(path: string): Promise<boolean> {
    const p = guestPath("path", path);
    const ev = await this.#single({ exists: { path: p } }, "exists", p, "fsExists");
    if (typeof ev.exists !== "boolean") throw new ProtocolError(`malformed answer to exists ${p}`);
    return ev.exists;
  }

  /**
   * Read a file as a stream of chunks: resolves once the guest has opened it (so a
   * missing file rejects here), to an {@link FsReadStream} (`for await`, `recv()`).
   */
  async readStream(path: string): Promise<FsReadStream> {
    const p = guestPath("path", path);
    const { client, id } = await this.#open({ read: { path: p } });
    const next = () => client.next(id);
    const first = await this.#ctx.call(next);
    if (first === null) throw new ProtocolError(`the read of ${p} ended without an answer`);
    if (first.kind === "fsError") throw fsError("read", p, first);
    // Any signal on a read session tells the agent to stop reading.
    return new FsReadStream(p, next, first, () => client.signal(id, 9));
  }

  /**
   * Write a file as a stream: `await ws.write(chunk)` as often as needed, then
   * `await ws.close()`. An error opening the file (e.g. `ENOENT` for a missing parent)
   * rejects the first `write` or the `close`.
   */
  async writeStream(path: string, options: FsWriteOptions = {}): Promise<FsWriteStream> {
    const p = guestPath("path", path);
    const mode = options.mode === undefined ? null : check(modeSchema, "mode", options.mode);
    const append = options.append === undefined ? false : check(boolOption, "append", options.append);
    const { client, id } = await this.#open({ write: { path: p, mode, append } });
    return new FsWriteStream(p, client, id);
  }

  /** Target of a guest symbolic link (read with the guest's `readlink`). */
  async #readlink(p: string): Promise<string> {
    const out = await this.#ctx.run("readlink", [p]).catch((e: unknown) => e);
    if (out instanceof Error || !(out as ExecOutput).success) {
      const why = out instanceof Error ? out.message : sanitize((out as ExecOutput).stderr());
      throw new SandboxFsOpsError("EIO", p, `readlink ${p}: cannot read the link (${why})`);
    }
    const target = (out as ExecOutput).stdout().replace(/\n$/, "");
    if (target === "" || target.includes("\0")) throw new ProtocolError(`the guest gave an invalid link target for ${p}`);
    return target;
  }

  /**
   * Copy a host file or directory tree to `guestPath` (which it becomes: a directory's
   * contents go under `guestPath`). Modes are kept, symbolic links are copied as links,
   * sockets, FIFOs and devices are skipped. Existing guest files are replaced. Below the
   * parent of `hostPath`, host files are opened one component at a time without
   * following links, so a link swapped in (by a guest writing the same volume) is copied
   * as a link, never read through.
   */
  async copyFromHost(hostPath: string, guestPathArg: string): Promise<void> {
    const src = resolve(check(hostPathSchema, "hostPath", hostPath));
    const dst = guestPath("guestPath", guestPathArg);
    const { dir, name } = openParent("copyFromHost", src);
    try {
      await this.#fromHost(dir, name, src, dst, 0);
    } finally {
      await dir.close();
    }
  }

  async #fromHost(parent: HostFd, name: string, src: string, dst: string, depth: number): Promise<void> {
    if (depth > MAX_COPY_DEPTH) throw hostError("copyFromHost", src, new Error(`ELOOP: deeper than ${MAX_COPY_DEPTH} levels`));
    const e = openAt("copyFromHost", parent, name, src);
    try {
      if (e.kind === "symlink") {
        const target = e.target as string;
        try {
          await this.symlink(target, dst);
        } catch (err) {
          if (!(err instanceof SandboxFsOpsError && err.errno === "EEXIST")) throw err;
          await this.remove(dst);
          await this.symlink(target, dst);
        }
      } else if (e.kind === "file" && e.fd) {
        const ws = await this.writeStream(dst, { mode: e.mode });
        try {
          for await (const chunk of e.fd.chunks("copyFromHost", HOST_CHUNK)) await ws.write(chunk);
        } catch (err) {
          await ws.close().catch(() => undefined);
          throw err;
        }
        await ws.close();
      } else if (e.kind === "dir" && e.fd) {
        await this.mkdir(dst, { mode: e.mode, recursive: true });
        for (const n of listDir("copyFromHost", e.fd)) await this.#fromHost(e.fd, n, join(src, n), posix.join(dst, n), depth + 1);
      }
      // sockets, FIFOs, devices: skipped
    } finally {
      await e.fd?.close();
    }
  }

  /**
   * Copy a guest file or directory tree to `hostPath` (which it becomes). Modes are
   * kept (without setuid/setgid on the host), symbolic links are recreated as links,
   * special files are skipped. Nothing is ever written outside `hostPath`: every name the
   * guest lists is checked (one path component, not `.` or `..`), and below the parent of
   * `hostPath` each host step is taken relative to an open directory without following
   * a link. A link in the way (`hostPath` itself included) is replaced, never written
   * through; an existing directory at `hostPath` is merged into.
   */
  async copyToHost(guestPathArg: string, hostPath: string): Promise<void> {
    const src = guestPath("guestPath", guestPathArg);
    const dst = resolve(check(hostPathSchema, "hostPath", hostPath));
    const root = await this.stat(src);
    const { dir, name } = openParent("copyToHost", dst);
    try {
      await this.#toHost(src, dir, name, dst, root, 0);
    } finally {
      await dir.close();
    }
  }

  async #toHost(src: string, parent: HostFd, name: string, dst: string, entry: FsEntry, depth: number): Promise<void> {
    if (depth > MAX_COPY_DEPTH) throw new ProtocolError(`the guest tree under ${src} is deeper than ${MAX_COPY_DEPTH} levels`);
    switch (entry.kind) {
      case "symlink": {
        const target = await this.#readlink(src);
        symlinkAt("copyToHost", parent, target, name, dst);
        return;
      }
      case "file": {
        const stream = await this.readStream(src);
        let file: HostFd;
        try {
          file = createFileAt("copyToHost", parent, name, dst);
        } catch (e) {
          void stream.cancel();
          throw e;
        }
        try {
          for (let c = await stream.recv(); c !== null; c = await stream.recv()) await file.writeAll("copyToHost", c);
          await file.chmod("copyToHost", entry.mode & 0o777);
        } catch (e) {
          void stream.cancel();
          throw e;
        } finally {
          await file.close();
        }
        return;
      }
      case "dir": {
        const dir = mkdirAt("copyToHost", parent, name, dst);
        try {
          const entries = await this.list(src);
          const seen = new Set<string>();
          for (const c of entries) {
            const n = checkEntryName(c.name);
            if (seen.has(n)) throw new ProtocolError(`the guest listed ${JSON.stringify(n)} twice in ${src}`);
            seen.add(n);
            await this.#toHost(posix.join(src, n), dir, n, join(dst, n), c, depth + 1);
          }
          // Last, so a read-only directory could still be filled.
          await dir.chmod("copyToHost", entry.mode & 0o1777);
        } finally {
          await dir.close();
        }
        return;
      }
      default:
        return; // sockets, FIFOs, devices: skipped
    }
  }
}

/** The reference SDK's name of {@link FsWriteStream}. */
export const FsWriteSink = FsWriteStream;
/** The reference SDK's name of {@link FsWriteStream}. */
export type FsWriteSink = FsWriteStream;
/** The reference SDK's name of {@link SandboxFs} (`sb.fs()`). */
export const SandboxFsOps = SandboxFs;
/** The reference SDK's name of {@link SandboxFs} (`sb.fs()`). */
export type SandboxFsOps = SandboxFs;
