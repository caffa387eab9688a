/**
 * The image cache under `$MSB_HOME/cache`:
 *
 *   blobs/sha256/<hex>          verified blobs (layers, configs); only ever renamed into
 *                               place after their digest was checked
 *   images/<manifest-hex>/      manifest.json, config.json, rootfs.ext4, meta.json
 *                               (meta.json is written last: without it the dir is not trusted)
 *   refs/<name>-<hash>.json     normalised reference -> manifest digest, per platform
 *   tmp/                        temporary files (<label>.<pid>.<random>.tmp)
 *   staging/                    unpack directories (<hex>.<pid>.<random>)
 *   locks/                      flock files: image-<hex>.lock, refs.lock, gc.lock
 *
 * Lock order (never the other way round): image-<hex> -> gc, image-<hex> -> refs.
 */
import { createHash, randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { OciError, abortError, describeError } from "./errors.js";

export interface FileLock {
  release(): void;
}

type LockFn = (path: string) => Promise<FileLock>;
let lockImpl: LockFn | undefined;

/** The addon's flock (dropped by the kernel when the holder dies). */
function nativeLock(): LockFn {
  if (lockImpl) return lockImpl;
  const require = createRequire(import.meta.url);
  let mod: { lockFile?: LockFn };
  try {
    mod = require("@microsandbox/core-native") as { lockFile?: LockFn };
  } catch (e) {
    throw new OciError("image", `cannot load @microsandbox/core-native for the image cache lock: ${describeError(e)}`, { cause: e });
  }
  if (typeof mod.lockFile !== "function") {
    throw new OciError("image", "@microsandbox/core-native has no lockFile(): rebuild the addon (npm run setup)");
  }
  lockImpl = mod.lockFile;
  return lockImpl;
}

/** Tests can replace the lock implementation. */
export function setLockImplementation(fn: LockFn | undefined): void {
  lockImpl = fn;
}

export interface PlatformEntry {
  digest: string;
  /** Digest of the index the manifest was picked from, when there was one. */
  indexDigest?: string;
  pulledAt: string;
}

export interface RefFile {
  reference: string;
  /** "linux/amd64" -> entry */
  platforms: Record<string, PlatformEntry>;
}

export interface ImageMeta {
  references: string[];
  digest: string;
  indexDigest?: string;
  platform: string;
  /** Uncompressed size of the image's files. */
  sizeBytes: number;
  /** Size of rootfs.ext4 as allocated on the host. */
  diskBytes: number;
  layers: string[];
  pulledAt: string;
  warnings?: string[];
}

export const hexOf = (digest: string): string => digest.slice(digest.indexOf(":") + 1);

const SHA256 = /^sha256:[a-f0-9]{64}$/;
export function assertDigest(d: string, what: string): void {
  if (!SHA256.test(d)) throw new OciError("image", `${what}: "${d}" is not a sha256 digest`);
}

function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(
    () => true,
    () => false,
  );
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

export class Cache {
  readonly root: string;

  constructor(msbHome: string) {
    this.root = join(msbHome, "cache");
  }

  get blobsDir(): string {
    return join(this.root, "blobs", "sha256");
  }
  get imagesDir(): string {
    return join(this.root, "images");
  }
  get refsDir(): string {
    return join(this.root, "refs");
  }
  get tmpDir(): string {
    return join(this.root, "tmp");
  }
  get stagingDir(): string {
    return join(this.root, "staging");
  }
  get locksDir(): string {
    return join(this.root, "locks");
  }

  blobPath(digest: string): string {
    assertDigest(digest, "blob");
    return join(this.blobsDir, hexOf(digest));
  }
  imageDir(digest: string): string {
    assertDigest(digest, "image");
    return join(this.imagesDir, hexOf(digest));
  }
  rootfsPath(digest: string): string {
    return join(this.imageDir(digest), "rootfs.ext4");
  }

  async ensureDirs(): Promise<void> {
    for (const d of [this.blobsDir, this.imagesDir, this.refsDir, this.tmpDir, this.stagingDir, this.locksDir]) {
      await fsp.mkdir(d, { recursive: true });
    }
  }

  /** A fresh temporary path in tmp/ (same filesystem as everything else: rename is atomic). */
  tmpPath(label: string): string {
    return join(this.tmpDir, `${label}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  }

  /** Write a file atomically: temp file, fsync, rename. */
  async writeAtomic(path: string, data: string | Uint8Array): Promise<void> {
    const tmp = this.tmpPath("write");
    try {
      const fh = await fsp.open(tmp, "w", 0o644);
      try {
        await fh.writeFile(data);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fsp.rename(tmp, path);
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw e;
    }
  }

  /** Wait for an exclusive lock; an abort stops the wait (the lock is dropped when it comes). */
  async lock(name: string, signal?: AbortSignal): Promise<FileLock> {
    const p = nativeLock()(join(this.locksDir, `${name}.lock`));
    if (!signal) return p;
    if (signal.aborted) {
      void p.then((l) => l.release(), () => undefined);
      throw abortError(signal);
    }
    return new Promise<FileLock>((resolve, reject) => {
      const onAbort = () => {
        void p.then((l) => l.release(), () => undefined);
        reject(abortError(signal));
      };
      signal.addEventListener("abort", onAbort, { once: true });
      p.then(
        (l) => {
          signal.removeEventListener("abort", onAbort);
          if (signal.aborted) l.release();
          else resolve(l);
        },
        (e: unknown) => {
          signal.removeEventListener("abort", onAbort);
          reject(e);
        },
      );
    });
  }

  async withLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const l = await this.lock(name);
    try {
      return await fn();
    } finally {
      l.release();
    }
  }

  /** Remove temp files and staging dirs left by processes that died mid-pull. */
  async cleanStale(): Promise<void> {
    for (const dir of [this.tmpDir, this.stagingDir]) {
      let names: string[];
      try {
        names = await fsp.readdir(dir);
      } catch {
        continue;
      }
      for (const n of names) {
        const pid = Number(n.split(".")[1]);
        if (!pidAlive(pid)) await fsp.rm(join(dir, n), { recursive: true, force: true }).catch(() => undefined);
      }
    }
  }

  // ---- blobs

  async hasBlob(digest: string): Promise<boolean> {
    return exists(this.blobPath(digest));
  }

  // ---- images

  /** An image dir is complete (trusted) once rootfs.ext4 and meta.json exist. */
  async isComplete(digest: string): Promise<boolean> {
    const dir = this.imageDir(digest);
    return (await exists(join(dir, "meta.json"))) && (await exists(join(dir, "rootfs.ext4")));
  }

  async readMeta(digest: string): Promise<ImageMeta | undefined> {
    try {
      return JSON.parse(await fsp.readFile(join(this.imageDir(digest), "meta.json"), "utf8")) as ImageMeta;
    } catch {
      return undefined;
    }
  }

  async listImageDigests(): Promise<string[]> {
    try {
      return (await fsp.readdir(this.imagesDir)).filter((n) => /^[a-f0-9]{64}$/.test(n)).map((n) => `sha256:${n}`);
    } catch {
      return [];
    }
  }

  // ---- refs

  refPath(reference: string): string {
    const safe = reference.replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 100);
    const h = createHash("sha256").update(reference).digest("hex").slice(0, 16);
    return join(this.refsDir, `${safe}-${h}.json`);
  }

  async readRef(reference: string): Promise<RefFile | undefined> {
    try {
      const r = JSON.parse(await fsp.readFile(this.refPath(reference), "utf8")) as RefFile;
      return r.reference === reference && r.platforms && typeof r.platforms === "object" ? r : undefined;
    } catch {
      return undefined;
    }
  }

  async listRefs(): Promise<RefFile[]> {
    let names: string[];
    try {
      names = await fsp.readdir(this.refsDir);
    } catch {
      return [];
    }
    const out: RefFile[] = [];
    for (const n of names.filter((x) => x.endsWith(".json")).sort()) {
      try {
        const r = JSON.parse(await fsp.readFile(join(this.refsDir, n), "utf8")) as RefFile;
        if (typeof r.reference === "string" && r.platforms && typeof r.platforms === "object") out.push(r);
      } catch {
        /* skip a broken file */
      }
    }
    return out;
  }

  /** Record reference -> digest for a platform (under refs.lock). */
  async setRef(reference: string, platform: string, entry: PlatformEntry): Promise<void> {
    await this.withLock("refs", async () => {
      const cur = (await this.readRef(reference)) ?? { reference, platforms: {} };
      cur.platforms[platform] = entry;
      await this.writeAtomic(this.refPath(reference), JSON.stringify(cur, null, 2) + "\n");
    });
  }

  /** Digests every ref points at. */
  async referencedDigests(): Promise<Set<string>> {
    const s = new Set<string>();
    for (const r of await this.listRefs()) for (const e of Object.values(r.platforms)) s.add(e.digest);
    return s;
  }
}

export async function fileExists(p: string): Promise<boolean> {
  return exists(p);
}
