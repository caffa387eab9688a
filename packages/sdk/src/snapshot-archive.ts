/**
 * Portable snapshot archives (`Snapshot.save` / `Snapshot.load`): a plain tar with
 *
 * ```
 * msb-snapshot.json   {format, version, manifest, upper: {size, extents}, image}
 * upper.data          the writable disk's data extents, concatenated in order (the
 *                     holes of a 4 GiB sparse disk are not written out)
 * image.tar           with `withImage`: the snapshot's OCI image (saveImages' archive),
 *                     so that a host without a registry can boot it
 * ```
 *
 * Loading treats the archive as hostile: the oci package's strict tar reader indexes it
 * without writing anything (no path escapes, links leading out, special files, huge
 * headers, truncation); the header is size-limited and checked with zod; the extents must
 * be sorted, disjoint, inside the recorded size (at most 1 TiB) and add up to exactly the
 * `upper.data` entry. The disk is rebuilt with positional writes into a new file of the
 * artifact's temporary directory, the image loaded through `loadImages` (which checks
 * every digest), and the artifact renamed into place last: a failure leaves nothing.
 */
import "./polyfill.js";
import { createReadStream, createWriteStream, constants } from "node:fs";
import { lstat, mkdir, open, rename, rm, stat, unlink } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import tar from "tar-stream";
import { z } from "zod";
import { indexTar, loadImages, saveImages, TAR_LIMITS } from "@microsandbox/oci";
import { InvalidConfigError, SnapshotAlreadyExistsError, SnapshotIntegrityError, fromOci } from "./errors.js";
import { callNative, snapshotNative } from "./native.js";
import { randomBytes } from "node:crypto";

export const ARCHIVE_FORMAT = "msb-snapshot-archive";
const HEADER = "msb-snapshot.json";
const DATA = "upper.data";
const IMAGE = "image.tar";
/** Largest header read back. */
const MAX_HEADER_BYTES = 1 << 20;
/** Most extents of one disk (a 4 GiB ext4 has a few hundred). */
export const MAX_EXTENTS = 100_000;
const MAX_DISK_BYTES = 2 ** 40;

/** Bundle options for `Snapshot.save`, as the reference's `SaveOpts`. */
export interface SaveOpts {
  /** Snapshots are not chained here: accepted, nothing to add. */
  withParents?: boolean;
  /** Include the snapshot's OCI image, so that the archive boots on a host without a registry. */
  withImage?: boolean;
  /** The archive is always a plain tar here (no zstd in Node 20's zlib): accepted, no effect. */
  plainTar?: boolean;
}

/** What save needs of a snapshot (snapshot.ts passes it; no import cycle). */
export interface ArchivedSnapshot {
  manifest: unknown;
  upperPath: string;
  image: { ref: string | null; kind: "oci" | "path" | null; manifestDigest: string | null };
}

const headerSchema = (manifest: z.ZodType) =>
  z.object({
    format: z.literal(ARCHIVE_FORMAT),
    version: z.literal(1),
    manifest,
    upper: z.object({
      size: z.number().int().nonnegative().max(MAX_DISK_BYTES),
      extents: z.array(z.tuple([z.number().int().nonnegative(), z.number().int().positive()])).max(MAX_EXTENTS),
    }),
    image: z.object({ file: z.literal(IMAGE), reference: z.string().max(4096) }).nullable(),
  });

/** One tar entry of `size` bytes: the given byte ranges of the file at `path`, in order. */
async function entryFromFile(pack: tar.Pack, name: string, path: string, ranges: [number, number][], size: number): Promise<void> {
  async function* chunks(): AsyncGenerator<Buffer> {
    for (const [off, len] of ranges) {
      if (len > 0) yield* createReadStream(path, { start: off, end: off + len - 1, highWaterMark: 1 << 20 });
    }
  }
  await pipeline(Readable.from(chunks()), pack.entry({ name, size, mode: 0o644, mtime: new Date(0) }));
}

/** Writes `snap` to a new archive at `out` (refused if `out` exists); a temp file renamed into place. */
export async function saveArchive(home: string, snap: ArchivedSnapshot, out: string, opts: SaveOpts): Promise<void> {
  const dest = resolve(out);
  if ((await lstat(dest).catch(() => null)) !== null) throw new InvalidConfigError("out", `invalid out: ${dest} exists (remove it first)`);
  const parentDir = await stat(dirname(dest)).catch(() => null);
  if (parentDir === null || !parentDir.isDirectory()) throw new InvalidConfigError("out", `invalid out: ${dirname(dest)} is not a directory`);
  const layout = await callNative(() => snapshotNative().sparseExtents(snap.upperPath));
  const extents = layout.extents.map((e) => [e[0]!, e[1]!] as [number, number]);
  const dataSize = extents.reduce((n, [, l]) => n + l, 0);
  const tmp = `${dest}.tmp-${randomBytes(4).toString("hex")}`;
  let imageTar: string | null = null;
  let reference: string | null = null;
  try {
    if (opts.withImage === true) {
      if (snap.image.kind !== "oci" || snap.image.ref === null) {
        throw new InvalidConfigError("withImage", "invalid withImage: the snapshot's image is the embedded default or a local path, not an OCI image; save it without withImage");
      }
      reference = snap.image.ref;
      imageTar = `${tmp}.image`;
      try {
        await saveImages(home, [reference], imageTar, { format: "oci" });
      } catch (e) {
        throw fromOci(e);
      }
    }
    const header = Buffer.from(
      JSON.stringify({
        format: ARCHIVE_FORMAT,
        version: 1,
        manifest: snap.manifest,
        upper: { size: layout.size, extents },
        image: imageTar === null ? null : { file: IMAGE, reference },
      }),
    );
    const pack = tar.pack();
    const written = pipeline(pack, createWriteStream(tmp, { flags: "wx", mode: 0o600 }));
    written.catch(() => undefined); // awaited below; a failure before that is reported once
    await new Promise<void>((res, rej) => pack.entry({ name: HEADER, mode: 0o644, mtime: new Date(0) }, header, (err) => (err ? rej(err) : res())));
    await entryFromFile(pack, DATA, snap.upperPath, extents, dataSize);
    if (imageTar !== null) {
      const size = (await stat(imageTar)).size;
      await entryFromFile(pack, IMAGE, imageTar, size > 0 ? [[0, size]] : [], size);
    }
    pack.finalize();
    await written;
    await rename(tmp, dest);
  } finally {
    await rm(tmp, { force: true });
    if (imageTar !== null) await rm(imageTar, { force: true });
  }
}

function damaged(archive: string, why: string): SnapshotIntegrityError {
  return new SnapshotIntegrityError(`snapshot archive ${archive}: ${why}; nothing was loaded`);
}

/**
 * Unpacks an archive into `<parent>/<name>` (the name from its manifest). Returns the
 * artifact's directory. A snapshot of that name already there is SnapshotAlreadyExistsError.
 */
export async function loadArchive(home: string, archive: string, parent: string, manifestSchema: z.ZodType<{ name: string; state: { upper: { sizeBytes: number } } }>): Promise<string> {
  const path = resolve(archive);
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch((e: unknown) => {
    throw new InvalidConfigError("archive", `invalid archive: cannot open ${path} (${(e as Error).message})`);
  });
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new InvalidConfigError("archive", `invalid archive: ${path} is not a regular file`);
    let index;
    try {
      index = await indexTar(fh, st.size, path, { ...TAR_LIMITS, maxEntries: 16, maxEntryBytes: MAX_DISK_BYTES });
    } catch (e) {
      // The tar reader speaks of image archives: keep only its reason.
      const why = (e as Error).message.replace(/^image archive .*?: /, "").replace(/; nothing was loaded$/, "").replace("an image archive", "a snapshot archive");
      throw damaged(path, why);
    }
    // Exactly the three names, each a plain file: no links (not even inside), nothing else.
    if (index.links.size > 0) throw damaged(path, "it holds links (a snapshot archive has none)");
    for (const f of index.files.keys()) {
      if (f !== HEADER && f !== DATA && f !== IMAGE) throw damaged(path, `it holds ${JSON.stringify(f)}, which is not part of a snapshot archive`);
    }
    const h = index.files.get(HEADER);
    if (h === undefined) throw damaged(path, `no ${HEADER} (not a snapshot archive)`);
    if (h.size > MAX_HEADER_BYTES) throw damaged(path, `${HEADER} is over 1 MiB`);
    const buf = Buffer.alloc(h.size);
    await fh.read(buf, 0, h.size, h.offset);
    let parsed;
    try {
      parsed = headerSchema(manifestSchema).safeParse(JSON.parse(buf.toString("utf8")));
    } catch {
      throw damaged(path, `${HEADER} is not valid JSON`);
    }
    if (!parsed.success) {
      const i = parsed.error.issues[0];
      throw damaged(path, `${HEADER} is not a snapshot archive header (${i?.path.join(".") ?? "?"}: ${i?.message ?? "invalid"})`);
    }
    const hdr = parsed.data as z.infer<ReturnType<typeof headerSchema>> & { manifest: { name: string; state: { upper: { sizeBytes: number } } } };
    const { size, extents } = hdr.upper;
    if (size !== hdr.manifest.state.upper.sizeBytes) throw damaged(path, `the disk is ${size} bytes, its manifest says ${hdr.manifest.state.upper.sizeBytes}`);
    let end = 0;
    let total = 0;
    for (const [off, len] of extents) {
      if (off < end || off + len > size) throw damaged(path, "the disk's extents overlap, are out of order or reach past its size");
      end = off + len;
      total += len;
    }
    const data = index.files.get(DATA);
    if (data === undefined || data.size !== total) throw damaged(path, `${DATA} is ${data === undefined ? "missing" : `${data.size} bytes`}, its extents add up to ${total} bytes`);
    const img = hdr.image === null ? undefined : index.files.get(IMAGE);
    if (hdr.image !== null && img === undefined) throw damaged(path, `no ${IMAGE}, which its header names`);

    const name = hdr.manifest.name;
    const final = join(parent, name);
    if ((await lstat(final).catch(() => null)) !== null) throw new SnapshotAlreadyExistsError(`a snapshot named ${name} exists at ${final}; remove it first`);
    await mkdir(parent, { recursive: true, mode: 0o700 });
    const tmp = join(parent, `.${name}.tmp-${randomBytes(4).toString("hex")}`);
    await mkdir(tmp, { mode: 0o700 });
    try {
      const disk = await open(join(tmp, "upper.ext4"), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
      try {
        await disk.truncate(size);
        const chunk = Buffer.alloc(1 << 20);
        let src = data!.offset;
        for (const [off, len] of extents) {
          for (let done = 0; done < len; ) {
            const n = Math.min(chunk.length, len - done);
            const { bytesRead } = await fh.read(chunk, 0, n, src);
            if (bytesRead !== n) throw damaged(path, `${DATA} ends early`);
            await disk.write(chunk, 0, n, off + done);
            src += n;
            done += n;
          }
        }
        await disk.sync();
      } finally {
        await disk.close();
      }
      if (img !== undefined) {
        // loadImages reads a file: the image's bytes are copied out of the archive first.
        const imagePath = join(tmp, IMAGE);
        const out = await open(imagePath, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
        try {
          const chunk = Buffer.alloc(1 << 20);
          for (let done = 0; done < img.size; ) {
            const n = Math.min(chunk.length, img.size - done);
            const { bytesRead } = await fh.read(chunk, 0, n, img.offset + done);
            if (bytesRead !== n) throw damaged(path, `${IMAGE} ends early`);
            await out.write(chunk, 0, n);
            done += n;
          }
        } finally {
          await out.close();
        }
        try {
          await loadImages(home, imagePath, { tag: hdr.image!.reference });
        } catch (e) {
          throw fromOci(e);
        }
        await unlink(imagePath);
      }
      const manifestText = `${JSON.stringify(hdr.manifest, null, 2)}\n`;
      const mf = await open(join(tmp, "snapshot.json"), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
      try {
        await mf.write(manifestText);
      } finally {
        await mf.close();
      }
      await rename(tmp, final);
      return final;
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
  } finally {
    await fh.close();
  }
}
