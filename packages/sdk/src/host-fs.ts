/**
 * Host-side steps of `copyToHost` / `copyFromHost`, relative to directory file
 * descriptors and never through a symbolic link (the addon's `host*At` calls).
 *
 * A host path under a bind or named volume holds whatever the guest put there, and the
 * guest can change it between two of our steps; so after the caller's own parent
 * directory, every component is opened by the addon with `O_NOFOLLOW` relative to the
 * directory opened before it, and reads, writes and `fchmod` go to the opened fds.
 */
import { close as closeCb, fchmod as fchmodCb, read as readCb, write as writeCb } from "node:fs";
import { promisify } from "node:util";
import { MicrosandboxError, SandboxFsOpsError } from "./errors.js";
import { hostFsNative, type NativeHostEntry } from "./native.js";

const fdWrite = promisify(writeCb);
const fdRead = promisify(readCb);
const fdClose = promisify(closeCb);
const fdChmod = promisify(fchmodCb);

/** Most names copyFromHost lists in one host directory. */
export const MAX_HOST_DIR_ENTRIES = 1_000_000;

const ERRNO_MESSAGE = /^(E[A-Z0-9]{1,15}): ([\s\S]*)$/;

/** A host-side failure, reported like a guest one (errno and the host path). */
export function hostError(op: string, path: string, e: unknown): MicrosandboxError {
  if (e instanceof MicrosandboxError) return e;
  const err = e as NodeJS.ErrnoException;
  const message = err instanceof Error ? err.message : String(e);
  const m = ERRNO_MESSAGE.exec(message);
  const errno = m ? (m[1] as string) : typeof err?.code === "string" && /^E[A-Z0-9]+$/.test(err.code) ? err.code : "EIO";
  const text = m ? (m[2] as string) : message;
  return new SandboxFsOpsError(errno, path, `${op}: host ${path}: ${errno} (${text})`, { cause: e });
}

/** An open host directory (or file) descriptor, closed once. */
export class HostFd {
  #fd: number;
  /** Host path, for messages only (never opened by path). */
  readonly path: string;

  constructor(fd: number, path: string) {
    this.#fd = fd;
    this.path = path;
  }

  get fd(): number {
    if (this.#fd < 0) throw new SandboxFsOpsError("EBADF", this.path, `host ${this.path}: already closed`);
    return this.#fd;
  }

  async close(): Promise<void> {
    const fd = this.#fd;
    this.#fd = -1;
    if (fd >= 0) await fdClose(fd).catch(() => undefined);
  }

  async chmod(op: string, mode: number): Promise<void> {
    await fdChmod(this.fd, mode).catch((e: unknown) => Promise.reject(hostError(op, this.path, e)));
  }

  /** Write all of `data`. */
  async writeAll(op: string, data: Uint8Array): Promise<void> {
    let off = 0;
    try {
      while (off < data.byteLength) off += (await fdWrite(this.fd, data, off, data.byteLength - off, null)).bytesWritten;
    } catch (e) {
      throw hostError(op, this.path, e);
    }
  }

  /** The file's contents in chunks of up to `chunk` bytes, from the current offset. */
  async *chunks(op: string, chunk: number): AsyncGenerator<Uint8Array, void, undefined> {
    for (;;) {
      const buf = Buffer.allocUnsafe(chunk);
      let n: number;
      try {
        n = (await fdRead(this.fd, buf, 0, chunk, null)).bytesRead;
      } catch (e) {
        throw hostError(op, this.path, e);
      }
      if (n === 0) return;
      yield buf.subarray(0, n);
    }
  }
}

function call<T>(op: string, path: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw hostError(op, path, e);
  }
}

/** The parent directory of the absolute `path` (resolved as the caller gave it), and the last component. */
export function openParent(op: string, path: string): { dir: HostFd; name: string } {
  const p = call(op, path, () => hostFsNative().hostOpenParent(path));
  return { dir: new HostFd(p.fd, path), name: p.name };
}

function child(dir: HostFd, name: string): string {
  return dir.path.endsWith("/") ? `${dir.path}${name}` : `${dir.path}/${name}`;
}

/** A real directory `name` in `dir` (created 0700 if missing; a link in the way replaced), opened. */
export function mkdirAt(op: string, dir: HostFd, name: string, path = child(dir, name)): HostFd {
  return new HostFd(
    call(op, path, () => hostFsNative().hostMkdirAt(dir.fd, name)),
    path,
  );
}

/** A new empty file `name` in `dir` (whatever non-directory was there removed first), open for writing. */
export function createFileAt(op: string, dir: HostFd, name: string, path = child(dir, name)): HostFd {
  return new HostFd(
    call(op, path, () => hostFsNative().hostCreateFileAt(dir.fd, name)),
    path,
  );
}

/** A symbolic link `name` -> `target` in `dir`, replacing a non-directory in the way. */
export function symlinkAt(op: string, dir: HostFd, target: string, name: string, path = child(dir, name)): void {
  call(op, path, () => hostFsNative().hostSymlinkAt(dir.fd, target, name));
}

/** What `name` in `dir` is, opened for reading when it is a file or directory; links are not followed. */
export function openAt(
  op: string,
  dir: HostFd,
  name: string,
  path = child(dir, name),
): { kind: NativeHostEntry["kind"]; mode: number; target: string | null; fd: HostFd | null } {
  const e = call(op, path, () => hostFsNative().hostOpenAt(dir.fd, name));
  return { kind: e.kind, mode: e.mode, target: e.target ?? null, fd: e.fd >= 0 ? new HostFd(e.fd, path) : null };
}

/** The sorted names in the open directory `dir`. */
export function listDir(op: string, dir: HostFd): string[] {
  return call(op, dir.path, () => hostFsNative().hostListDir(dir.fd, MAX_HOST_DIR_ENTRIES));
}
