/** pullImage / listImages / removeImage: the package's entry points. */
import { createHash, randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import type { RegistryAuth } from "./auth.js";
import { Cache, fileExists, hexOf, type ImageMeta } from "./cache.js";
import { OciError, abortError, describeError, throwIfAborted } from "./errors.js";
import { downloadBlob, openLayer, type BlobDescriptor } from "./layer.js";
import {
  imageConfigOf,
  isImageManifest,
  isIndex,
  parseConfig,
  parseIndex,
  parseManifest,
  type ImageConfig,
  type ImageConfigDoc,
  type ImageManifest,
} from "./manifest.js";
import {
  describePlatforms,
  formatPlatform,
  hostPlatform,
  normalizePlatform,
  selectPlatform,
  type Platform,
} from "./platform.js";
import { parseReference, registryHostname, type Reference } from "./reference.js";
import { MEDIA, RegistryClient } from "./registry.js";
import { buildExt4 } from "./rootfs.js";
import { Unpacker } from "./unpack.js";

export type PullPolicy = "always" | "if-missing" | "never";

export type PullProgress =
  | { phase: "resolving"; reference: string }
  /** The manifest is known (from the registry or the cache): its digest and layer count. */
  | { phase: "resolved"; reference: string; digest: string; layerCount: number; totalBytes: number | null }
  | { phase: "layer"; digest: string; index: number; count: number; doneBytes: number; totalBytes: number; cached: boolean }
  | { phase: "unpacking"; digest: string; diffId: string; index: number; count: number }
  | { phase: "building"; reference: string }
  | { phase: "complete"; reference: string; digest: string };

export interface PullOptions {
  msbHome: string;
  /** Default "if-missing". */
  policy?: PullPolicy;
  auth?: RegistryAuth;
  /** Allow plain HTTP (and unverified TLS) for this registry. */
  insecure?: boolean;
  /** Extra CA certificate(s) (PEM) on top of the system's. */
  caFile?: string;
  /** Default: linux + the host's architecture. */
  platform?: Platform;
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
}

export interface PulledImage {
  /** Normalised reference, e.g. docker.io/library/alpine:latest. */
  reference: string;
  /** Digest of the image manifest (the platform's, when the reference names an index). */
  digest: string;
  /** Path of the read-only root disk. */
  rootfs: string;
  fstype: "ext4";
  config: ImageConfig;
  /** Uncompressed size of the image's files. */
  sizeBytes: number;
}

export interface ImageInfo {
  reference: string;
  digest: string;
  sizeBytes: number;
  pulledAt: Date;
  /** "linux/amd64" */
  platform: string;
  layerCount: number;
}

const POLICIES: readonly PullPolicy[] = ["always", "if-missing", "never"];
const PARALLEL_DOWNLOADS = 3;
const PROGRESS_STEP = 256 << 10;

interface Resolved {
  manifest: ImageManifest;
  manifestBody: Buffer;
  digest: string;
  indexDigest?: string;
}

function validateOptions(opts: PullOptions): void {
  if (!opts || typeof opts.msbHome !== "string" || opts.msbHome === "") {
    throw new OciError("invalidConfig", "msbHome must be a non-empty path", { field: "msbHome" });
  }
  if (opts.policy !== undefined && !POLICIES.includes(opts.policy)) {
    throw new OciError("invalidConfig", `pull policy must be one of ${POLICIES.join(", ")}, not "${String(opts.policy)}"`, {
      field: "pullPolicy",
    });
  }
  if (opts.auth !== undefined) {
    const a = opts.auth as Partial<RegistryAuth>;
    if (a.kind !== "basic" || typeof a.username !== "string" || typeof a.password !== "string" || a.username === "") {
      throw new OciError("invalidConfig", 'registry auth must be { kind: "basic", username, password } with a username', {
        field: "registryAuth",
      });
    }
  }
  if (opts.platform !== undefined) {
    const p = opts.platform as Partial<Platform>;
    if (typeof p.os !== "string" || !p.os || typeof p.architecture !== "string" || !p.architecture) {
      throw new OciError("invalidConfig", "platform must have os and architecture (e.g. { os: \"linux\", architecture: \"arm64\" })", {
        field: "platform",
      });
    }
  }
}

/** `$MSB_HOME/config.json` {"insecureRegistries": ["host:port", "host", ...]}. */
async function configuredInsecure(msbHome: string, registry: string): Promise<boolean> {
  let raw: string;
  try {
    raw = await fsp.readFile(join(msbHome, "config.json"), "utf8");
  } catch {
    return false;
  }
  let list: unknown;
  try {
    list = (JSON.parse(raw) as { insecureRegistries?: unknown }).insecureRegistries;
  } catch (e) {
    throw new OciError("invalidConfig", `${join(msbHome, "config.json")} is not valid JSON: ${describeError(e)}`, {
      field: "insecureRegistries",
    });
  }
  if (!Array.isArray(list)) return false;
  const host = registryHostname(registry);
  return list.some((x) => typeof x === "string" && (x === registry || x === host));
}

async function loadCached(cache: Cache, reference: string, digest: string): Promise<PulledImage | undefined> {
  if (!(await cache.isComplete(digest))) return undefined;
  const dir = cache.imageDir(digest);
  let doc: ImageConfigDoc;
  let meta: ImageMeta | undefined;
  try {
    doc = parseConfig(await fsp.readFile(join(dir, "config.json")), `cached config of ${digest}`);
    meta = await cache.readMeta(digest);
  } catch {
    return undefined;
  }
  return {
    reference,
    digest,
    rootfs: join(dir, "rootfs.ext4"),
    fstype: "ext4",
    config: imageConfigOf(doc),
    sizeBytes: meta?.sizeBytes ?? 0,
  };
}

/** What the cache has for this reference and platform, without any network access. */
async function findCached(cache: Cache, ref: Reference, platformKey: string): Promise<PulledImage | undefined> {
  const reference = ref.toString();
  const r = await cache.readRef(reference);
  const entry = r?.platforms[platformKey];
  if (entry) {
    const hit = await loadCached(cache, reference, entry.digest);
    if (hit) return hit;
  }
  // a digest reference may name the platform manifest itself
  if (ref.digest) {
    const hit = await loadCached(cache, reference, ref.digest);
    if (hit) await cache.setRef(reference, platformKey, { digest: ref.digest, pulledAt: new Date().toISOString() });
    return hit;
  }
  return undefined;
}

async function resolve(client: RegistryClient, ref: Reference, want: Platform): Promise<Resolved> {
  const target = ref.digest ?? ref.tag ?? "latest";
  const top = await client.getManifest(target);
  if (ref.digest && top.digest !== ref.digest) {
    throw new OciError(
      "image",
      `registry ${ref.registry} sent a manifest for ${ref.toString()} whose digest is ${top.digest}; refusing it`,
      { digest: ref.digest },
    );
  }
  if (isIndex(top.mediaType)) {
    const index = parseIndex(top.body, `index ${ref.toString()}`, top.digest);
    const pick = selectPlatform(
      index.manifests.map((m) => ({ platform: m.platform, item: m })),
      want,
    );
    if (!pick) {
      throw new OciError(
        "imageNotFound",
        `image ${ref.toString()} has no ${formatPlatform(want)} variant (it has: ${describePlatforms(index.manifests.map((m) => m.platform))})`,
        { digest: top.digest },
      );
    }
    const m = await client.getManifest(pick.digest);
    if (m.digest !== pick.digest) {
      throw new OciError("image", `registry ${ref.registry} sent manifest ${m.digest} when asked for ${pick.digest} (${ref.toString()})`, {
        digest: pick.digest,
      });
    }
    if (!isImageManifest(m.mediaType)) {
      throw new OciError("image", `${ref.toString()}: the ${formatPlatform(want)} entry of the index is a ${m.mediaType || "unknown document"}, not an image manifest`, {
        digest: m.digest,
      });
    }
    return { manifest: parseManifest(m.body, `manifest ${m.digest}`, m.digest), manifestBody: m.body, digest: m.digest, indexDigest: top.digest };
  }
  if (top.mediaType === MEDIA.dockerV1 || top.mediaType === MEDIA.dockerV1Signed) {
    throw new OciError("image", `${ref.toString()} uses the Docker v1 manifest format, which is not supported (push it again with a current client)`, {
      digest: top.digest,
    });
  }
  if (!isImageManifest(top.mediaType)) {
    throw new OciError("image", `${ref.toString()} is a ${top.mediaType || "document of unknown type"}, not an image`, { digest: top.digest });
  }
  return { manifest: parseManifest(top.body, `manifest ${ref.toString()}`, top.digest), manifestBody: top.body, digest: top.digest };
}

export class Progress {
  constructor(private readonly cb: ((p: PullProgress) => void) | undefined) {}
  emit(p: PullProgress): void {
    if (!this.cb) return;
    try {
      this.cb(p);
    } catch {
      /* a throwing listener must not break the pull */
    }
  }
}

/** Fetch a small blob (the config) through the cache. */
async function configBlob(client: RegistryClient | null, cache: Cache, desc: BlobDescriptor, signal?: AbortSignal): Promise<Buffer> {
  if (desc.size > 16 << 20) throw new OciError("image", `the image config ${desc.digest} is implausibly large (${desc.size} bytes)`, { digest: desc.digest });
  const p = cache.blobPath(desc.digest);
  if (!(await fileExists(p))) {
    if (!client) throw new OciError("image", `the image config ${desc.digest} is not in the cache`, { digest: desc.digest });
    await downloadBlob(client, cache, desc, () => undefined, signal);
  }
  const body = await fsp.readFile(p);
  if (`sha256:${createHash("sha256").update(body).digest("hex")}` !== desc.digest) {
    await fsp.rm(p, { force: true });
    throw new OciError("image", `cached config blob ${desc.digest} was corrupt and has been removed; pull again`, { digest: desc.digest });
  }
  return body;
}

async function runLimited<T>(items: T[], limit: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const worker = async () => {
    while (failed === undefined && next < items.length) {
      const i = next++;
      try {
        await fn(items[i]!, i);
      } catch (e) {
        if (failed === undefined) failed = e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failed !== undefined) throw failed;
}

export interface BuildContext {
  cache: Cache;
  /** null: every blob must be in the cache already (an image loaded from an archive). */
  client: RegistryClient | null;
  reference: string;
  resolved: Resolved;
  platformKey: string;
  want: Platform;
  explicitPlatform: boolean;
  progress: Progress;
  signal: AbortSignal | undefined;
}

export class CorruptCachedBlob extends Error {}

/** Download what is missing, unpack, build rootfs.ext4, write meta.json (last). */
export async function buildImage(ctx: BuildContext): Promise<ImageMeta> {
  const { cache, client, resolved, progress, signal } = ctx;
  const dir = cache.imageDir(resolved.digest);
  await fsp.mkdir(dir, { recursive: true });
  // Register the manifest before looking at blobs: blob garbage collection (under the
  // same lock) keeps every blob a manifest in images/ names.
  await cache.withLock("gc", () => cache.writeAtomic(join(dir, "manifest.json"), resolved.manifestBody));

  const m = resolved.manifest;
  const configBody = await configBlob(client, cache, m.config, signal);
  const doc = parseConfig(configBody, `image config ${m.config.digest}`, m.config.digest);
  if (doc.rootfs.diff_ids.length !== m.layers.length) {
    throw new OciError(
      "image",
      `${ctx.reference}: the manifest has ${m.layers.length} layers but the config lists ${doc.rootfs.diff_ids.length} diff_ids`,
      { digest: resolved.digest },
    );
  }
  if (doc.os && doc.os.toLowerCase() !== "linux") {
    throw new OciError("imageNotFound", `image ${ctx.reference} is a ${doc.os} image; only linux images can run in a sandbox`, {
      digest: resolved.digest,
    });
  }
  if (ctx.explicitPlatform && doc.os && doc.architecture && !resolved.indexDigest) {
    const have = normalizePlatform({ os: doc.os, architecture: doc.architecture, ...(doc.variant ? { variant: doc.variant } : {}) });
    if (have.os !== ctx.want.os || have.architecture !== ctx.want.architecture) {
      throw new OciError("imageNotFound", `image ${ctx.reference} is ${formatPlatform(have)} only, not ${formatPlatform(ctx.want)}`, {
        digest: resolved.digest,
      });
    }
  }
  await cache.writeAtomic(join(dir, "config.json"), configBody);

  // layers: download the missing ones (verified as they stream)
  const count = m.layers.length;
  const fresh = new Set<string>();
  await runLimited(m.layers, PARALLEL_DOWNLOADS, async (layer, index) => {
    throwIfAborted(signal);
    const cached = await cache.hasBlob(layer.digest);
    const base = { phase: "layer" as const, digest: layer.digest, index, count, totalBytes: layer.size, cached };
    if (cached) {
      progress.emit({ ...base, doneBytes: layer.size });
      return;
    }
    if (!client) throw new OciError("image", `layer ${layer.digest} of ${ctx.reference} is not in the cache`, { digest: layer.digest });
    progress.emit({ ...base, doneBytes: 0 });
    let last = 0;
    await downloadBlob(
      client,
      cache,
      layer,
      (done) => {
        if (done - last >= PROGRESS_STEP && done < layer.size) {
          last = done;
          progress.emit({ ...base, doneBytes: done });
        }
      },
      signal,
    );
    fresh.add(layer.digest);
    progress.emit({ ...base, doneBytes: layer.size });
  });

  // unpack into a private staging dir, then build the disk
  const staging = join(cache.stagingDir, `${hexOf(resolved.digest).slice(0, 16)}.${process.pid}.${randomBytes(4).toString("hex")}`);
  const rootfsTmp = cache.tmpPath("rootfs");
  const scriptTmp = cache.tmpPath("debugfs");
  await fsp.mkdir(staging, { mode: 0o700 });
  try {
    const unpacker = new Unpacker(staging);
    for (let i = 0; i < count; i++) {
      throwIfAborted(signal);
      const layer = m.layers[i]!;
      progress.emit({ phase: "unpacking", digest: layer.digest, diffId: doc.rootfs.diff_ids[i]!, index: i, count });
      const ls = await openLayer(cache.blobPath(layer.digest), layer, doc.rootfs.diff_ids[i]!, { checkBlob: !fresh.has(layer.digest) });
      try {
        await unpacker.applyLayer(ls.stream, layer.digest);
      } catch (e) {
        if (await ls.blobCorrupt()) {
          await fsp.rm(cache.blobPath(layer.digest), { force: true });
          throw new CorruptCachedBlob(layer.digest);
        }
        if (e instanceof OciError) throw e;
        throw new OciError("image", `layer ${layer.digest} of ${ctx.reference} could not be unpacked: ${describeError(e)}`, {
          digest: layer.digest,
          cause: e,
        });
      }
      if (await ls.blobCorrupt()) {
        await fsp.rm(cache.blobPath(layer.digest), { force: true });
        throw new CorruptCachedBlob(layer.digest);
      }
      ls.verify();
    }
    await unpacker.applyTimes();
    throwIfAborted(signal);
    progress.emit({ phase: "building", reference: ctx.reference });
    const built = await buildExt4(unpacker, rootfsTmp, scriptTmp, signal);
    const fh = await fsp.open(rootfsTmp, "r+");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    const st = await fsp.stat(rootfsTmp);
    await fsp.rename(rootfsTmp, join(dir, "rootfs.ext4"));
    const prev = await cache.readMeta(resolved.digest);
    const meta: ImageMeta = {
      references: [...new Set([...(prev?.references ?? []), ctx.reference])],
      digest: resolved.digest,
      ...(resolved.indexDigest ? { indexDigest: resolved.indexDigest } : {}),
      platform: ctx.platformKey,
      sizeBytes: unpacker.stats().contentBytes,
      diskBytes: st.blocks * 512,
      layers: m.layers.map((l) => l.digest),
      pulledAt: new Date().toISOString(),
      ...(unpacker.warnings.length || built.warnings.length ? { warnings: [...unpacker.warnings, ...built.warnings] } : {}),
    };
    await cache.writeAtomic(join(dir, "meta.json"), JSON.stringify(meta, null, 2) + "\n");
    if (meta.warnings) {
      process.emitWarning(`image ${ctx.reference}: ${meta.warnings.join("; ")}`, { type: "MicrosandboxImageWarning" });
    }
    return meta;
  } finally {
    await fsp.rm(staging, { recursive: true, force: true });
    await fsp.rm(rootfsTmp, { force: true });
    await fsp.rm(scriptTmp, { force: true });
  }
}

/**
 * Pull an image (or find it in the cache) and return its read-only root disk.
 * Errors are OciError: `imageNotFound` (unknown repository/tag/platform, or not cached
 * with policy "never"), `registryAuth`, `image` (network, digest, unpack), `invalidConfig`.
 */
export async function pullImage(refStr: string, opts: PullOptions): Promise<PulledImage> {
  validateOptions(opts);
  const ref = parseReference(refStr);
  const reference = ref.toString();
  const explicitPlatform = opts.platform !== undefined;
  const want = normalizePlatform(opts.platform ?? hostPlatform());
  const platformKey = formatPlatform(want);
  const cache = new Cache(opts.msbHome);
  const policy = opts.policy ?? "if-missing";
  const progress = new Progress(opts.onProgress);
  const signal = opts.signal;
  throwIfAborted(signal);
  progress.emit({ phase: "resolving", reference });

  if (policy !== "always") {
    const hit = await findCached(cache, ref, platformKey);
    if (hit) {
      const meta = await cache.readMeta(hit.digest);
      progress.emit({ phase: "resolved", reference, digest: hit.digest, layerCount: meta?.layers.length ?? 0, totalBytes: null });
      progress.emit({ phase: "complete", reference, digest: hit.digest });
      return hit;
    }
    if (policy === "never") {
      throw new OciError(
        "imageNotFound",
        `image ${reference} (${platformKey}) is not in the cache (${cache.root}) and the pull policy is "never"; pull it first or use the policy "if-missing"`,
      );
    }
  }

  await cache.ensureDirs();
  await cache.cleanStale();
  const insecure = opts.insecure === true || (await configuredInsecure(opts.msbHome, ref.registry));
  const client = new RegistryClient(ref, { auth: opts.auth, insecure, caFile: opts.caFile, signal });
  try {
    const resolved = await resolve(client, ref, want);
    progress.emit({
      phase: "resolved",
      reference,
      digest: resolved.digest,
      layerCount: resolved.manifest.layers.length,
      totalBytes: resolved.manifest.layers.reduce((n, l) => n + l.size, 0),
    });
    const lock = await cache.lock(`image-${hexOf(resolved.digest)}`, signal);
    try {
      throwIfAborted(signal);
      if (!(await cache.isComplete(resolved.digest))) {
        const ctx: BuildContext = { cache, client, reference, resolved, platformKey, want, explicitPlatform, progress, signal };
        try {
          await buildImage(ctx);
        } catch (e) {
          if (!(e instanceof CorruptCachedBlob)) throw e;
          // a cached blob had gone bad on disk: it was removed; download it again, once
          await buildImage(ctx);
        }
      } else {
        // count the layers as cached for the progress display
        const count = resolved.manifest.layers.length;
        resolved.manifest.layers.forEach((l, index) =>
          progress.emit({ phase: "layer", digest: l.digest, index, count, doneBytes: l.size, totalBytes: l.size, cached: true }),
        );
        const meta = await cache.readMeta(resolved.digest);
        if (meta && !meta.references.includes(reference)) {
          meta.references.push(reference);
          await cache.writeAtomic(join(cache.imageDir(resolved.digest), "meta.json"), JSON.stringify(meta, null, 2) + "\n");
        }
      }
      await cache.setRef(reference, platformKey, {
        digest: resolved.digest,
        ...(resolved.indexDigest ? { indexDigest: resolved.indexDigest } : {}),
        pulledAt: new Date().toISOString(),
      });
    } finally {
      lock.release();
    }
    const img = await loadCached(cache, reference, resolved.digest);
    if (!img) throw new OciError("image", `image ${reference} was built but its cache entry is incomplete`, { digest: resolved.digest });
    progress.emit({ phase: "complete", reference, digest: resolved.digest });
    return img;
  } catch (e) {
    if (signal?.aborted && !(e instanceof OciError)) throw abortError(signal);
    throw e;
  } finally {
    await client.close();
  }
}

/** The cached images: one entry per reference and platform. */
export async function listImages(msbHome: string): Promise<ImageInfo[]> {
  const cache = new Cache(msbHome);
  const out: ImageInfo[] = [];
  for (const r of await cache.listRefs()) {
    for (const e of Object.values(r.platforms)) {
      if (!(await cache.isComplete(e.digest))) continue;
      const meta = await cache.readMeta(e.digest);
      out.push({
        reference: r.reference,
        digest: e.digest,
        sizeBytes: meta?.sizeBytes ?? 0,
        pulledAt: new Date(e.pulledAt),
        platform: meta?.platform ?? "",
        layerCount: meta?.layers.length ?? 0,
      });
    }
  }
  return out.sort((a, b) => a.reference.localeCompare(b.reference) || a.digest.localeCompare(b.digest));
}

export interface RemoveOptions {
  /**
   * Called (under the refs lock) with the manifest digests the removal would drop: the
   * names of the sandboxes that use any of them; non-empty refuses the removal with
   * OciError `imageInUse`.
   */
  inUse?: (digests: ReadonlySet<string>) => Promise<string[]> | string[];
}

async function refuseInUse(what: string, digests: ReadonlySet<string>, inUse: NonNullable<RemoveOptions["inUse"]>): Promise<void> {
  const users = await inUse(digests);
  if (users.length > 0) {
    throw new OciError("imageInUse", `image ${what} is used by sandbox(es) ${users.join(", ")}; remove them first, or remove with force`, {
      sandboxes: users,
    });
  }
}

/**
 * Remove a reference (all its platforms) from the cache; `ref` may also be a manifest
 * digest (`sha256:...`), which removes every reference to it. An image directory is
 * deleted when no reference points at it any more, and then blobs that no manifest in
 * images/ names are garbage-collected. Unknown -> OciError `imageNotFound`.
 */
export async function removeImage(msbHome: string, ref: string, opts: RemoveOptions = {}): Promise<void> {
  const cache = new Cache(msbHome);
  const byDigest = /^sha256:[a-f0-9]{64}$/.test(ref.trim()) ? ref.trim() : undefined;
  const reference = byDigest ? undefined : parseReference(ref).toString();
  const candidates = new Set<string>();
  await cache.ensureDirs();
  await cache.withLock("refs", async () => {
    if (reference) {
      const r = await cache.readRef(reference);
      if (!r) throw new OciError("imageNotFound", `image ${reference} is not in the cache (${cache.root})`);
      for (const e of Object.values(r.platforms)) candidates.add(e.digest);
      if (opts.inUse) await refuseInUse(reference, candidates, opts.inUse);
      await fsp.rm(cache.refPath(reference), { force: true });
      return;
    }
    let found = await fileExists(cache.imageDir(byDigest!));
    if (opts.inUse) {
      const digests = new Set<string>([byDigest!]);
      for (const r of await cache.listRefs()) for (const e of Object.values(r.platforms)) if (e.indexDigest === byDigest) digests.add(e.digest);
      await refuseInUse(byDigest!, digests, opts.inUse);
    }
    for (const r of await cache.listRefs()) {
      let changed = false;
      for (const [k, e] of Object.entries(r.platforms)) {
        if (e.digest === byDigest || e.indexDigest === byDigest) {
          candidates.add(e.digest);
          delete r.platforms[k];
          changed = true;
        }
      }
      if (changed) {
        found = true;
        if (Object.keys(r.platforms).length === 0) await fsp.rm(cache.refPath(r.reference), { force: true });
        else await cache.writeAtomic(cache.refPath(r.reference), JSON.stringify(r, null, 2) + "\n");
      }
    }
    if (!found) throw new OciError("imageNotFound", `no image with digest ${byDigest} is in the cache (${cache.root})`, { digest: byDigest! });
    candidates.add(byDigest!);
  });

  let removedAny = false;
  for (const digest of candidates) {
    await cache.withLock(`image-${hexOf(digest)}`, async () => {
      const still = await cache.withLock("refs", () => cache.referencedDigests());
      if (still.has(digest)) return;
      const dir = cache.imageDir(digest);
      if (!(await fileExists(dir))) return;
      // meta.json first: from then on the directory is not trusted, even half-deleted
      await fsp.rm(join(dir, "meta.json"), { force: true });
      const trash = cache.tmpPath(`img-${hexOf(digest).slice(0, 16)}`);
      await fsp.rename(dir, trash);
      await fsp.rm(trash, { recursive: true, force: true });
      removedAny = true;
    });
  }
  if (removedAny) await collectBlobs(cache);
}

/** Delete blobs no manifest in images/ refers to (config or layer). */
export async function collectBlobs(cache: Cache): Promise<{ removed: number; bytes: number }> {
  let removed = 0;
  let bytes = 0;
  await cache.withLock("gc", async () => {
    const keep = new Set<string>();
    for (const d of await cache.listImageDigests()) {
      try {
        const m = parseManifest(await fsp.readFile(join(cache.imageDir(d), "manifest.json")), `manifest ${d}`);
        keep.add(hexOf(m.config.digest));
        for (const l of m.layers) keep.add(hexOf(l.digest));
      } catch {
        /* no manifest (yet): it names nothing */
      }
    }
    let names: string[] = [];
    try {
      names = await fsp.readdir(cache.blobsDir);
    } catch {
      return;
    }
    for (const n of names) {
      if (keep.has(n)) continue;
      const st = await fsp.lstat(join(cache.blobsDir, n)).catch(() => undefined);
      await fsp.rm(join(cache.blobsDir, n), { force: true });
      removed++;
      bytes += st ? st.blocks * 512 : 0;
    }
  });
  return { removed, bytes };
}
