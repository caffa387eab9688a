/**
 * saveImages / loadImages: cached images to and from a tar archive, for hosts without a
 * registry.
 *
 * `saveImages` writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/*`:
 * the image's own manifest, config and layer blobs as pulled, so the manifest digest is
 * the same on the host that loads it) and, in the default "docker" format, a `docker
 * save` style `manifest.json` next to it (Config/RepoTags/Layers naming the same blobs),
 * as `docker save` of Docker 25+ does: `docker load` reads it, and so does `loadImages`.
 * The archive is written to a temp file next to the destination and linked into place
 * (renamed with `overwrite`), so a reader never sees half an archive and an existing
 * file is never clobbered by accident.
 *
 * `loadImages` treats the archive as hostile: tar-reader.ts indexes it without writing
 * anything (path escapes, links leading out, special files, huge headers, truncation are
 * refused); manifests, configs and layers are checked against their digests and sizes
 * while they are copied into a private staging directory of the cache; only then are
 * blobs renamed into the cache, and the root disk is built as for a pull (unpack with the
 * layer's diff_id checked, ext4). A failure removes what the load added: no partial
 * image stays in the cache.
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream, promises as fsp } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { dirname, basename, join } from "node:path";
import { pipeline } from "node:stream/promises";
import tar from "tar-stream";
import { z } from "zod";
import { Cache, fileExists, hexOf } from "./cache.js";
import { OciError, describeError } from "./errors.js";
import { isImageManifest, isIndex, parseConfig, parseIndex, parseManifest, type ImageManifest } from "./manifest.js";
import { formatPlatform, hostPlatform, normalizePlatform, selectPlatform, type Platform } from "./platform.js";
import { CorruptCachedBlob, Progress, buildImage, collectBlobs, type PullProgress } from "./pull.js";
import { parseReference } from "./reference.js";
import { MEDIA } from "./registry.js";
import { indexTar, TAR_LIMITS, type TarFileEntry, type TarIndex, type TarLimits } from "./tar-reader.js";

export type ArchiveFormat = "docker" | "oci";

export interface SaveOptions {
  /** "docker" (default): OCI layout plus a docker-save manifest.json; "oci": the OCI layout only. */
  format?: ArchiveFormat;
  /** Replace an existing file at the destination. Default false: an existing file is an error. */
  overwrite?: boolean;
  /** Default: linux + the host's architecture (or the only platform cached). */
  platform?: Platform;
}

export interface LoadOptions {
  /** An extra reference for the first image of the archive. */
  tag?: string;
  /** Which image of a multi-platform index to load. Default: the host's. */
  platform?: Platform;
  onProgress?: (p: PullProgress) => void;
  /** Tests: tighter limits. */
  limits?: Partial<TarLimits>;
}

export interface LoadedImage {
  reference: string;
  digest: string;
  platform: string;
  layerCount: number;
  sizeBytes: number;
}

const OCI_LAYOUT = '{"imageLayoutVersion":"1.0.0"}';
const REF_NAME = "org.opencontainers.image.ref.name";
const IMAGE_NAME = "io.containerd.image.name";
const META_MAX = 16 << 20;
const MAX_IMAGES = 64;
const MAX_LAYERS = 256;
const MAX_INDEX_DEPTH = 4;
const DIGEST = /^sha256:[a-f0-9]{64}$/;

// ---------------------------------------------------------------- save

interface SaveItem {
  reference: string;
  digest: string;
  manifest: ImageManifest;
  manifestBody: Buffer;
  platform: string;
}

async function locateForSave(cache: Cache, refOrDigest: string, platformKey: string | undefined): Promise<SaveItem> {
  const s = refOrDigest.trim();
  let digest: string;
  let reference: string;
  let platform = "";
  if (DIGEST.test(s)) {
    digest = s;
    reference = s;
  } else {
    reference = parseReference(s).toString();
    const r = await cache.readRef(reference);
    const entries = r ? Object.entries(r.platforms) : [];
    const key = platformKey ?? formatPlatform(normalizePlatform(hostPlatform()));
    const hit = r?.platforms[key] ? ([key, r.platforms[key]] as const) : platformKey === undefined && entries.length === 1 ? entries[0] : undefined;
    if (!hit) throw new OciError("imageNotFound", `image ${reference} (${key}) is not in the cache (${cache.root})`);
    digest = hit[1].digest;
    platform = hit[0];
  }
  if (!(await cache.isComplete(digest))) throw new OciError("imageNotFound", `image ${reference} is not in the cache (${cache.root})`, { digest });
  const body = await fsp.readFile(join(cache.imageDir(digest), "manifest.json"));
  if (`sha256:${createHash("sha256").update(body).digest("hex")}` !== digest) {
    throw new OciError("image", `the cached manifest of ${reference} does not match its digest ${digest}; pull the image again`, { digest });
  }
  const meta = await cache.readMeta(digest);
  return { reference, digest, manifest: parseManifest(body, `manifest ${digest}`, digest), manifestBody: body, platform: platform || meta?.platform || "" };
}

/** "docker.io/library/alpine:latest" -> "alpine:latest", as `docker save` writes RepoTags. */
function dockerTag(reference: string): string | undefined {
  let r;
  try {
    r = parseReference(reference);
  } catch {
    return undefined;
  }
  if (r.digest || !r.tag) return undefined;
  let repo = `${r.registry}/${r.repository}`;
  if (r.registry === "docker.io") repo = r.repository.startsWith("library/") ? r.repository.slice(8) : r.repository;
  return `${repo}:${r.tag}`;
}

function platformOf(key: string): Record<string, string> | undefined {
  const [os, architecture, variant] = key.split("/");
  if (!os || !architecture) return undefined;
  return { os, architecture, ...(variant ? { variant } : {}) };
}

/**
 * Write the images (references or manifest digests) to a tar archive at `outputPath`.
 * Not cached -> `imageNotFound`; an existing destination without `overwrite` ->
 * `invalidConfig` (field "outputPath"); nothing is left behind on failure.
 */
export async function saveImages(msbHome: string, refs: readonly string[], outputPath: string, opts: SaveOptions = {}): Promise<void> {
  const format = opts.format ?? "docker";
  if (format !== "docker" && format !== "oci") {
    throw new OciError("invalidConfig", `format must be "docker" or "oci", not "${String(format)}"`, { field: "format" });
  }
  if (refs.length === 0) throw new OciError("invalidConfig", "name at least one image to save", { field: "reference" });
  if (typeof outputPath !== "string" || outputPath === "") throw new OciError("invalidConfig", "outputPath must be a file path", { field: "outputPath" });
  const overwrite = opts.overwrite === true;
  const existing = await fsp.lstat(outputPath).catch(() => undefined);
  if (existing && !overwrite) {
    throw new OciError("invalidConfig", `${outputPath} already exists; pass overwrite to replace it`, { field: "outputPath" });
  }
  if (existing?.isDirectory()) throw new OciError("invalidConfig", `${outputPath} is a directory`, { field: "outputPath" });
  const cache = new Cache(msbHome);
  const platformKey = opts.platform ? formatPlatform(normalizePlatform(opts.platform)) : undefined;
  const items: SaveItem[] = [];
  for (const r of refs) items.push(await locateForSave(cache, r, platformKey));

  const blobs = new Map<string, number>(); // digest -> size
  for (const it of items) {
    blobs.set(it.digest, it.manifestBody.length);
    blobs.set(it.manifest.config.digest, it.manifest.config.size);
    for (const l of it.manifest.layers) blobs.set(l.digest, l.size);
  }
  for (const [d, size] of blobs) {
    if (d === undefined) continue;
    if (items.some((i) => i.digest === d)) continue;
    const st = await fsp.stat(cache.blobPath(d)).catch(() => undefined);
    if (!st || st.size !== size) {
      throw new OciError("image", `blob ${d} is missing from the cache or has the wrong size; pull the image again`, { digest: d });
    }
  }

  const index = {
    schemaVersion: 2,
    mediaType: MEDIA.ociIndex,
    manifests: items.map((it) => {
      const tag = dockerTag(it.reference);
      const p = platformOf(it.platform);
      return {
        mediaType: it.manifest.mediaType ?? MEDIA.ociManifest,
        digest: it.digest,
        size: it.manifestBody.length,
        ...(it.reference !== it.digest ? { annotations: { [IMAGE_NAME]: it.reference, ...(tag ? { [REF_NAME]: tag.slice(tag.lastIndexOf(":") + 1) } : {}) } } : {}),
        ...(p ? { platform: p } : {}),
      };
    }),
  };
  const dockerManifest: { Config: string; RepoTags: string[]; Layers: string[] }[] = [];
  for (const it of items) {
    let e = dockerManifest.find((x) => x.Config === `blobs/sha256/${hexOf(it.manifest.config.digest)}`);
    if (!e) {
      e = { Config: `blobs/sha256/${hexOf(it.manifest.config.digest)}`, RepoTags: [], Layers: it.manifest.layers.map((l) => `blobs/sha256/${hexOf(l.digest)}`) };
      dockerManifest.push(e);
    }
    const tag = dockerTag(it.reference);
    if (tag && !e.RepoTags.includes(tag)) e.RepoTags.push(tag);
  }

  const tmp = join(dirname(outputPath), `.${basename(outputPath)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  let out: FileHandle;
  try {
    out = await fsp.open(tmp, "wx", 0o644);
  } catch (e) {
    throw new OciError("invalidConfig", `cannot write next to ${outputPath}: ${describeError(e)}`, { field: "outputPath", cause: e });
  }
  try {
    const pack = tar.pack();
    const ws = createWriteStream("", { fd: out.fd, autoClose: false });
    const written = pipeline(pack, ws);
    written.catch(() => undefined); // awaited below; a failure before that is reported once
    const entry = (name: string, body: Buffer | string) =>
      new Promise<void>((resolve, reject) => pack.entry({ name, mode: 0o644, mtime: new Date(0) }, body, (err) => (err ? reject(err) : resolve())));
    const fileEntry = async (name: string, path: string, size: number): Promise<void> => {
      const sink = pack.entry({ name, size, mode: 0o644, mtime: new Date(0) });
      await pipeline(createReadStream(path, { highWaterMark: 1 << 20 }), sink);
    };
    await entry("oci-layout", OCI_LAYOUT);
    for (const [d, size] of blobs) {
      const own = items.find((i) => i.digest === d);
      if (own) await entry(`blobs/sha256/${hexOf(d)}`, own.manifestBody);
      else await fileEntry(`blobs/sha256/${hexOf(d)}`, cache.blobPath(d), size);
    }
    await entry("index.json", JSON.stringify(index));
    if (format === "docker") await entry("manifest.json", JSON.stringify(dockerManifest));
    pack.finalize();
    await written;
    await out.sync();
    await out.close();
    if (overwrite) {
      await fsp.rename(tmp, outputPath);
    } else {
      try {
        await fsp.link(tmp, outputPath);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "EEXIST") {
          throw new OciError("invalidConfig", `${outputPath} already exists; pass overwrite to replace it`, { field: "outputPath" });
        }
        throw e;
      }
      await fsp.rm(tmp, { force: true });
    }
  } catch (e) {
    await out.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    if (e instanceof OciError) throw e;
    throw new OciError("image", `saving to ${outputPath} failed: ${describeError(e)}`, { cause: e });
  }
}

// ---------------------------------------------------------------- load

const dockerManifestSchema = z
  .array(
    z.object({
      Config: z.string(),
      RepoTags: z.array(z.string()).nullish(),
      Layers: z.array(z.string()),
    }),
  )
  .max(MAX_IMAGES);

interface Candidate {
  manifest: ImageManifest;
  manifestBody: Buffer;
  digest: string;
  indexDigest?: string;
  names: string[];
}

class Loader {
  readonly staged = new Map<string, string>(); // digest -> staged file
  private n = 0;

  constructor(
    readonly fh: FileHandle,
    readonly archive: string,
    readonly idx: TarIndex,
    readonly staging: string,
  ) {}

  fail(why: string, digest?: string): OciError {
    return new OciError("image", `image archive ${this.archive}: ${why}; nothing was loaded`, digest ? { digest } : undefined);
  }

  entry(path: string, what: string): TarFileEntry {
    const e = this.idx.resolve(path);
    if (!e) throw this.fail(`${what} "${path}" is missing from the archive`);
    return e;
  }

  async bytes(e: TarFileEntry, what: string): Promise<Buffer> {
    if (e.size > META_MAX) throw this.fail(`${what} "${e.path}" is ${e.size} bytes, more than the limit of ${META_MAX}`);
    const b = Buffer.alloc(e.size);
    let done = 0;
    while (done < e.size) {
      const { bytesRead } = await this.fh.read(b, done, e.size - done, e.offset + done);
      if (bytesRead === 0) throw this.fail(`it is truncated ("${e.path}")`);
      done += bytesRead;
    }
    return b;
  }

  /** A blob named by digest: read (small) and checked against digest and size. */
  async blob(digest: string, size: number | undefined, what: string): Promise<Buffer> {
    if (!DIGEST.test(digest)) throw this.fail(`${what} has an invalid digest "${digest}"`);
    const b = await this.bytes(this.entry(`blobs/sha256/${hexOf(digest)}`, what), what);
    this.check(b, digest, size, what);
    return b;
  }

  check(b: Buffer, digest: string, size: number | undefined, what: string): void {
    const got = `sha256:${createHash("sha256").update(b).digest("hex")}`;
    if (got !== digest || (size !== undefined && size !== b.length)) {
      throw this.fail(`${what} does not match its digest ${digest} (got ${got}, ${b.length} bytes)`, digest);
    }
  }

  /** Copy an entry into the staging directory, hashing it; returns its digest. */
  async stage(e: TarFileEntry, want?: { digest: string; size: number }): Promise<string> {
    if (want) {
      const have = this.staged.get(want.digest);
      if (have) return want.digest;
      if (want.size !== e.size) throw this.fail(`blob ${want.digest} is ${e.size} bytes, not the ${want.size} its manifest says`, want.digest);
    }
    const path = join(this.staging, `blob-${this.n++}`);
    const h = createHash("sha256");
    const out = await fsp.open(path, "wx", 0o600);
    try {
      const buf = Buffer.alloc(1 << 20);
      let done = 0;
      while (done < e.size) {
        const { bytesRead } = await this.fh.read(buf, 0, Math.min(buf.length, e.size - done), e.offset + done);
        if (bytesRead === 0) throw this.fail(`it is truncated ("${e.path}")`);
        h.update(buf.subarray(0, bytesRead));
        await out.write(buf, 0, bytesRead);
        done += bytesRead;
      }
      await out.sync();
    } finally {
      await out.close();
    }
    const digest = `sha256:${h.digest("hex")}`;
    if (want && digest !== want.digest) {
      await fsp.rm(path, { force: true });
      throw this.fail(`blob "${e.path}" does not match its digest ${want.digest} (got ${digest})`, want.digest);
    }
    if (this.staged.has(digest)) await fsp.rm(path, { force: true });
    else this.staged.set(digest, path);
    return digest;
  }
}

function namesFrom(annotations: Record<string, string> | undefined): string[] {
  const out: string[] = [];
  const full = annotations?.[IMAGE_NAME];
  const refName = annotations?.[REF_NAME];
  for (const n of [full, refName]) {
    // a bare tag ("latest") names no repository: only a full name counts
    if (!n || (!n.includes("/") && !n.includes(":"))) continue;
    try {
      const r = parseReference(n).toString();
      if (!out.includes(r)) out.push(r);
    } catch {
      /* not a reference: ignore */
    }
  }
  return out;
}

async function ociCandidates(l: Loader, want: Platform): Promise<Candidate[]> {
  const layout = await l.bytes(l.entry("oci-layout", "file"), "oci-layout");
  let ver: unknown;
  try {
    ver = (JSON.parse(layout.toString("utf8")) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
  } catch {
    ver = undefined;
  }
  if (typeof ver !== "string") throw l.fail("oci-layout is not valid");
  const top = parseIndex(await l.bytes(l.entry("index.json", "file"), "index.json"), `image archive ${l.archive}: index.json`);
  if (top.manifests.length > MAX_IMAGES) throw l.fail(`index.json lists more than ${MAX_IMAGES} images`);
  const out: Candidate[] = [];
  for (const d of top.manifests) {
    const names = namesFrom(d.annotations);
    let desc = d;
    let indexDigest: string | undefined;
    for (let depth = 0; desc.mediaType && isIndex(desc.mediaType); depth++) {
      if (depth >= MAX_INDEX_DEPTH) throw l.fail(`indexes are nested more than ${MAX_INDEX_DEPTH} deep`);
      const body = await l.blob(desc.digest, desc.size, `index ${desc.digest}`);
      const nested = parseIndex(body, `image archive ${l.archive}: index ${desc.digest}`, desc.digest);
      // only entries whose manifest is in the archive (a partial save of a multi-arch index)
      const present = nested.manifests.filter((m) => l.idx.resolve(`blobs/sha256/${hexOf(m.digest)}`) !== undefined);
      const pick = selectPlatform(present.map((m) => ({ platform: m.platform, item: m })), want);
      if (!pick) throw new OciError("imageNotFound", `image archive ${l.archive}: index ${desc.digest} has no ${formatPlatform(want)} image`);
      indexDigest ??= desc.digest;
      desc = pick;
    }
    if (desc.mediaType && !isImageManifest(desc.mediaType)) continue; // attestations and the like
    const body = await l.blob(desc.digest, desc.size, `manifest ${desc.digest}`);
    const m = parseManifest(body, `image archive ${l.archive}: manifest ${desc.digest}`, desc.digest);
    if (m.mediaType && !isImageManifest(m.mediaType)) throw l.fail(`${desc.digest} is a ${m.mediaType}, not an image manifest`);
    const prev = out.find((c) => c.digest === desc.digest);
    if (prev) {
      for (const n of names) if (!prev.names.includes(n)) prev.names.push(n);
      continue;
    }
    out.push({ manifest: m, manifestBody: body, digest: desc.digest, ...(indexDigest ? { indexDigest } : {}), names });
  }
  return out;
}

/** A `docker save` archive: the OCI manifest is made here (layers as they are in the archive). */
async function dockerCandidates(l: Loader): Promise<Candidate[]> {
  const raw = await l.bytes(l.entry("manifest.json", "file"), "manifest.json");
  let list;
  try {
    list = dockerManifestSchema.parse(JSON.parse(raw.toString("utf8")));
  } catch (e) {
    throw l.fail(`manifest.json is not a docker save manifest: ${describeError(e).slice(0, 200)}`);
  }
  const out: Candidate[] = [];
  for (const item of list) {
    const configBody = await l.bytes(l.entry(item.Config, "config"), "config");
    const configDigest = `sha256:${createHash("sha256").update(configBody).digest("hex")}`;
    const doc = parseConfig(configBody, `image archive ${l.archive}: config ${item.Config}`, configDigest);
    if (item.Layers.length > MAX_LAYERS) throw l.fail(`an image has more than ${MAX_LAYERS} layers`);
    if (doc.rootfs.diff_ids.length !== item.Layers.length) {
      throw l.fail(`config ${item.Config} lists ${doc.rootfs.diff_ids.length} diff_ids for ${item.Layers.length} layers`);
    }
    const layers = [];
    for (const p of item.Layers) {
      const e = l.entry(p, "layer");
      const digest = await l.stage(e);
      const head = Buffer.alloc(4);
      await l.fh.read(head, 0, Math.min(4, e.size), e.offset);
      const mediaType =
        head[0] === 0x1f && head[1] === 0x8b
          ? "application/vnd.oci.image.layer.v1.tar+gzip"
          : head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd
            ? "application/vnd.oci.image.layer.v1.tar+zstd"
            : "application/vnd.oci.image.layer.v1.tar";
      layers.push({ mediaType, digest, size: e.size });
    }
    const manifestBody = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA.ociManifest,
        config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: configDigest, size: configBody.length },
        layers,
      }),
    );
    const digest = `sha256:${createHash("sha256").update(manifestBody).digest("hex")}`;
    const names: string[] = [];
    for (const t of item.RepoTags ?? []) {
      try {
        names.push(parseReference(t).toString());
      } catch {
        throw l.fail(`manifest.json has an invalid RepoTag "${t.slice(0, 200)}"`);
      }
    }
    // the config is a blob of its own in the cache
    const cfgPath = join(l.staging, `config-${hexOf(configDigest).slice(0, 16)}`);
    if (!l.staged.has(configDigest)) {
      await fsp.writeFile(cfgPath, configBody, { flag: "wx", mode: 0o600 });
      l.staged.set(configDigest, cfgPath);
    }
    out.push({ manifest: parseManifest(manifestBody, "manifest", digest), manifestBody, digest, names });
  }
  return out;
}

/** Stage config and layer blobs of an OCI candidate (checked against the manifest). */
async function stageOci(l: Loader, c: Candidate): Promise<void> {
  const cfg = c.manifest.config;
  const configBody = await l.blob(cfg.digest, cfg.size, `config ${cfg.digest}`);
  if (!l.staged.has(cfg.digest)) {
    const p = join(l.staging, `config-${hexOf(cfg.digest).slice(0, 16)}`);
    await fsp.writeFile(p, configBody, { flag: "wx", mode: 0o600 });
    l.staged.set(cfg.digest, p);
  }
  const doc = parseConfig(configBody, `image archive ${l.archive}: config ${cfg.digest}`, cfg.digest);
  if (c.manifest.layers.length > MAX_LAYERS) throw l.fail(`an image has more than ${MAX_LAYERS} layers`);
  if (doc.rootfs.diff_ids.length !== c.manifest.layers.length) {
    throw l.fail(`the config of ${c.digest} lists ${doc.rootfs.diff_ids.length} diff_ids for ${c.manifest.layers.length} layers`, c.digest);
  }
  for (const layer of c.manifest.layers) {
    if (!DIGEST.test(layer.digest)) throw l.fail(`a layer has an invalid digest "${layer.digest}"`);
    await l.stage(l.entry(`blobs/sha256/${hexOf(layer.digest)}`, `layer ${layer.digest}`), { digest: layer.digest, size: layer.size });
  }
}

/**
 * Load every image of a tar archive (`docker save` output, or an OCI image layout) into
 * the cache and register its references. Returns one entry per reference loaded.
 */
export async function loadImages(msbHome: string, inputPath: string, opts: LoadOptions = {}): Promise<LoadedImage[]> {
  if (typeof inputPath !== "string" || inputPath === "") throw new OciError("invalidConfig", "inputPath must be a file path", { field: "inputPath" });
  const tag = opts.tag === undefined ? undefined : parseReference(opts.tag).toString();
  const want = normalizePlatform(opts.platform ?? hostPlatform());
  const limits: TarLimits = { ...TAR_LIMITS, ...opts.limits };
  let fh: FileHandle;
  try {
    fh = await fsp.open(inputPath, "r");
  } catch (e) {
    throw new OciError("invalidConfig", `cannot open the image archive ${inputPath}: ${describeError(e)}`, { field: "inputPath", cause: e });
  }
  const cache = new Cache(msbHome);
  await cache.ensureDirs();
  await cache.cleanStale();
  const staging = join(cache.stagingDir, `load.${process.pid}.${randomBytes(4).toString("hex")}`);
  await fsp.mkdir(staging, { mode: 0o700 });
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new OciError("invalidConfig", `${inputPath} is not a regular file`, { field: "inputPath" });
    const idx = await indexTar(fh, st.size, inputPath, limits);
    const l = new Loader(fh, inputPath, idx, staging);
    const hasOci = idx.resolve("oci-layout") !== undefined && idx.resolve("index.json") !== undefined;
    const hasDocker = idx.resolve("manifest.json") !== undefined;
    if (!hasOci && !hasDocker) throw l.fail("it has neither an OCI layout (oci-layout, index.json) nor a docker save manifest.json");
    // The OCI layout keeps the manifest as the registry served it (same digest everywhere).
    const candidates = hasOci ? await ociCandidates(l, want) : await dockerCandidates(l);
    if (candidates.length === 0) throw new OciError("imageNotFound", `image archive ${inputPath} has no image for ${formatPlatform(want)}`);
    if (hasOci && hasDocker) {
      // docker's RepoTags name images the OCI index may leave unnamed
      try {
        const list = dockerManifestSchema.parse(JSON.parse((await l.bytes(l.entry("manifest.json", "file"), "manifest.json")).toString("utf8")));
        for (const item of list) {
          const cfg = idx.resolve(item.Config);
          const c = candidates.find((x) => idx.resolve(`blobs/sha256/${hexOf(x.manifest.config.digest)}`) === cfg);
          for (const t of item.RepoTags ?? []) {
            const r = parseReference(t).toString();
            if (c && !c.names.includes(r)) c.names.push(r);
          }
        }
      } catch {
        /* the OCI index is authoritative */
      }
    }
    if (tag && !candidates[0]!.names.includes(tag)) candidates[0]!.names.push(tag);
    for (const c of candidates) {
      if (c.names.length === 0) {
        throw new OciError("invalidConfig", `image ${c.digest} of ${inputPath} has no name; pass tag to name it`, { field: "tag" });
      }
    }
    if (hasOci) for (const c of candidates) await stageOci(l, c);

    const loaded: LoadedImage[] = [];
    for (const c of candidates) loaded.push(...(await install(cache, l, c, opts.onProgress)));
    return loaded;
  } finally {
    await fh.close().catch(() => undefined);
    await fsp.rm(staging, { recursive: true, force: true });
  }
}

/** Move one image's verified blobs into the cache, build its root disk, register its names. */
async function install(cache: Cache, l: Loader, c: Candidate, onProgress?: (p: PullProgress) => void): Promise<LoadedImage[]> {
  const progress = new Progress(onProgress);
  const configBody = await fsp.readFile(l.staged.get(c.manifest.config.digest)!);
  const doc = parseConfig(configBody, `config ${c.manifest.config.digest}`, c.manifest.config.digest);
  const platform = normalizePlatform({
    os: doc.os || "linux",
    architecture: doc.architecture || "amd64",
    ...(doc.variant ? { variant: doc.variant } : {}),
  });
  const platformKey = formatPlatform(platform);
  const reference = c.names[0]!;
  progress.emit({ phase: "resolving", reference });
  progress.emit({ phase: "resolved", reference, digest: c.digest, layerCount: c.manifest.layers.length, totalBytes: null });
  const lock = await cache.lock(`image-${hexOf(c.digest)}`);
  try {
    const dir = cache.imageDir(c.digest);
    const wasComplete = await cache.isComplete(c.digest);
    if (!wasComplete) {
      const dirExisted = await fileExists(dir);
      try {
        // Register the manifest and move the blobs in under gc.lock: a collection running
        // meanwhile keeps every blob a manifest in images/ names.
        await cache.withLock("gc", async () => {
          await fsp.mkdir(dir, { recursive: true });
          await cache.writeAtomic(join(dir, "manifest.json"), c.manifestBody);
          for (const d of [c.manifest.config.digest, ...c.manifest.layers.map((x) => x.digest)]) {
            if (await cache.hasBlob(d)) continue;
            const src = l.staged.get(d);
            if (!src) throw l.fail(`blob ${d} was not staged`, d);
            await fsp.rename(src, cache.blobPath(d));
            l.staged.delete(d);
          }
        });
        for (;;) {
          try {
            await buildImage({
              cache,
              client: null,
              reference,
              resolved: { manifest: c.manifest, manifestBody: c.manifestBody, digest: c.digest, ...(c.indexDigest ? { indexDigest: c.indexDigest } : {}) },
              platformKey,
              want: platform,
              explicitPlatform: false,
              progress,
              signal: undefined,
            });
            break;
          } catch (e) {
            // a blob already in the cache was corrupt (and removed): take ours
            if (!(e instanceof CorruptCachedBlob)) throw e;
            const d = e.message;
            const src = l.staged.get(d);
            if (!src) throw new OciError("image", `cached blob ${d} was corrupt; load the archive again`, { digest: d });
            await cache.withLock("gc", () => fsp.rename(src, cache.blobPath(d)));
            l.staged.delete(d);
          }
        }
      } catch (e) {
        // nothing partial stays: the image dir goes (unless it was there before), then unnamed blobs
        if (!dirExisted) {
          await fsp.rm(join(dir, "meta.json"), { force: true });
          await fsp.rm(dir, { recursive: true, force: true });
        }
        await collectBlobs(cache).catch(() => undefined);
        if (e instanceof OciError) {
          if (e.message.startsWith(`image archive ${l.archive}`)) throw e;
          throw new OciError(e.code, `image archive ${l.archive}: ${e.message}`, { cause: e, ...(e.digest ? { digest: e.digest } : {}) });
        }
        throw new OciError("image", `image archive ${l.archive}: ${describeError(e)}`, { cause: e });
      }
    }
    const meta = await cache.readMeta(c.digest);
    if (meta) {
      const refs = [...new Set([...meta.references, ...c.names])];
      if (refs.length !== meta.references.length) {
        meta.references = refs;
        await cache.writeAtomic(join(dir, "meta.json"), JSON.stringify(meta, null, 2) + "\n");
      }
    }
    const pulledAt = new Date().toISOString();
    for (const n of c.names) await cache.setRef(n, platformKey, { digest: c.digest, ...(c.indexDigest ? { indexDigest: c.indexDigest } : {}), pulledAt });
    progress.emit({ phase: "complete", reference, digest: c.digest });
    return c.names.map((n) => ({ reference: n, digest: c.digest, platform: platformKey, layerCount: c.manifest.layers.length, sizeBytes: meta?.sizeBytes ?? 0 }));
  } finally {
    lock.release();
  }
}
