/** Blob downloads (verified while they stream) and layer streams (decompressed, verified). */
import { createHash, type Hash } from "node:crypto";
import { createReadStream, promises as fsp } from "node:fs";
import { PassThrough, Transform, pipeline, type Readable, type TransformCallback } from "node:stream";
import { createGunzip } from "node:zlib";
import { Decompress } from "fzstd";
import type { Cache } from "./cache.js";
import { OciError, abortError, describeError } from "./errors.js";
import type { RegistryClient } from "./registry.js";

export interface BlobDescriptor {
  digest: string;
  size: number;
  mediaType?: string | undefined;
}

/**
 * Download a blob into the cache: bytes are hashed as they arrive and written to a temp
 * file, which is renamed to blobs/sha256/<hex> only when size and digest match. On any
 * failure the temp file is removed, so nothing unverified ever has a blob's name.
 */
export async function downloadBlob(
  client: RegistryClient,
  cache: Cache,
  desc: BlobDescriptor,
  onBytes: (done: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  const final = cache.blobPath(desc.digest);
  const tmp = cache.tmpPath(desc.digest.slice(7, 23));
  let done = 0;
  let body: Readable | undefined;
  try {
    ({ body } = await client.getBlob(desc.digest));
    const hash = createHash("sha256");
    const fh = await fsp.open(tmp, "wx", 0o644);
    try {
      for await (const c of body) {
        const chunk = c as Buffer;
        done += chunk.length;
        if (done > desc.size) {
          throw new OciError(
            "image",
            `blob ${desc.digest} from registry ${client.registry} is larger than the ${desc.size} bytes its manifest says; nothing was cached`,
            { digest: desc.digest },
          );
        }
        hash.update(chunk);
        await fh.write(chunk);
        onBytes(done);
      }
    } finally {
      await fh.close();
    }
    const got = `sha256:${hash.digest("hex")}`;
    if (done !== desc.size || got !== desc.digest) {
      throw new OciError(
        "image",
        `blob ${desc.digest} from registry ${client.registry} (${client.repository}) does not match its digest ` +
          `(got ${got}, ${done} of ${desc.size} bytes); it was discarded and nothing was cached`,
        { digest: desc.digest },
      );
    }
    await fsp.rename(tmp, final);
  } catch (e) {
    body?.destroy();
    await fsp.rm(tmp, { force: true });
    if (e instanceof OciError) throw e;
    if (signal?.aborted) throw abortError(signal);
    throw new OciError(
      "image",
      `download of blob ${desc.digest} from registry ${client.registry} failed after ${done} of ${desc.size} bytes: ${describeError(e)}`,
      { digest: desc.digest, cause: e },
    );
  }
}

/** sha256 of a file. */
export async function hashFile(path: string): Promise<string> {
  const h = createHash("sha256");
  for await (const c of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(c as Buffer);
  return `sha256:${h.digest("hex")}`;
}

/** A pass-through that hashes and counts what flows through it. */
export class HashTap extends Transform {
  private readonly hash: Hash = createHash("sha256");
  bytes = 0;
  private result: string | undefined;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    this.result = `sha256:${this.hash.digest("hex")}`;
    cb();
  }

  /** The digest, once everything went through (undefined before). */
  get digest(): string | undefined {
    return this.result;
  }
}

/** zstd decompression as a Node Transform over fzstd's streaming decoder (pure JS). */
export class ZstdDecompress extends Transform {
  private readonly d: Decompress;

  constructor() {
    super();
    this.d = new Decompress((data) => {
      if (data.length) this.push(Buffer.from(data.buffer, data.byteOffset, data.length));
    });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.d.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length));
      cb();
    } catch (e) {
      cb(new Error(`zstd: ${(e as Error).message}`));
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.d.push(new Uint8Array(0), true);
      cb();
    } catch (e) {
      cb(new Error(`zstd: ${(e as Error).message}`));
    }
  }
}

export type Compression = "gzip" | "zstd" | "none";

/** Recognise the compression from the first bytes (media types are sometimes wrong). */
export function sniffCompression(head: Uint8Array): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return "gzip";
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return "zstd";
  return "none";
}

export function decompressor(c: Compression): Transform {
  if (c === "gzip") return createGunzip({ chunkSize: 1 << 16 });
  if (c === "zstd") return new ZstdDecompress();
  return new PassThrough();
}

export interface LayerStream {
  /** The uncompressed tar stream. */
  stream: Readable;
  compression: Compression;
  /** After the stream was consumed: throws OciError when a digest does not match. */
  verify(): void;
  /** Whether the cached blob itself does not match its digest (checked blobs only). */
  blobCorrupt(): Promise<boolean>;
}

/**
 * Open a cached layer blob as an uncompressed tar stream, hashing the compressed bytes
 * (blob digest) and the uncompressed ones (the config's diff_id) on the way.
 */
export async function openLayer(
  blobPath: string,
  desc: BlobDescriptor,
  diffId: string,
  opts: { checkBlob?: boolean } = {},
): Promise<LayerStream> {
  // A blob downloaded (and verified) by this very pull need not be hashed again.
  const checkBlob = opts.checkBlob ?? true;
  const fh = await fsp.open(blobPath, "r");
  const head = Buffer.alloc(4);
  try {
    await fh.read(head, 0, 4, 0);
  } finally {
    await fh.close();
  }
  const compression = sniffCompression(head);
  const src = createReadStream(blobPath, { highWaterMark: 1 << 20 });
  const outer = new HashTap();
  const inner = new HashTap();
  const stream = checkBlob
    ? pipeline(src, outer, decompressor(compression), inner, () => undefined)
    : pipeline(src, decompressor(compression), inner, () => undefined);
  return {
    stream,
    compression,
    async blobCorrupt() {
      if (!checkBlob) return false;
      // the stream may have failed before the hash saw everything: hash the file itself
      const d = outer.digest ?? (await hashFile(blobPath).catch(() => undefined));
      return d !== desc.digest;
    },
    verify() {
      if (checkBlob && outer.digest !== desc.digest) {
        throw new OciError(
          "image",
          `cached blob ${desc.digest} does not match its digest (got ${outer.digest ?? "an incomplete read"})`,
          { digest: desc.digest },
        );
      }
      if (inner.digest !== diffId) {
        throw new OciError(
          "image",
          `layer ${desc.digest}: its uncompressed content (${inner.digest ?? "incomplete"}) does not match the image config's diff_id ${diffId}`,
          { digest: desc.digest },
        );
      }
    },
  };
}
