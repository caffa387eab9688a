/** getImage / inspectImage / pruneImages: what the cache knows about an image, and cleaning it. */
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { Cache, fileExists, hexOf, type ImageMeta } from "./cache.js";
import { OciError } from "./errors.js";
import { parseConfig, parseManifest, type ImageConfigDoc, type ImageManifest } from "./manifest.js";
import { formatPlatform, hostPlatform, normalizePlatform } from "./platform.js";
import { collectBlobs } from "./pull.js";
import { parseReference } from "./reference.js";

export interface CachedImage {
  /** Normalised reference (or the digest, when asked by digest). */
  reference: string;
  /** Manifest digest. */
  digest: string;
  /** "linux/amd64" */
  platform: string;
  os: string | null;
  architecture: string | null;
  layerCount: number;
  /** Uncompressed size of the image's files. */
  sizeBytes: number;
  pulledAt: Date;
  /** The image config's `created`, when it has a valid one. */
  createdAt: Date | null;
}

export interface ImageConfigInfo {
  /** Digest of the config blob. */
  digest: string;
  /** "K=V" as in the image config. */
  env: string[];
  cmd: string[] | null;
  entrypoint: string[] | null;
  workingDir: string | null;
  user: string | null;
  labels: Record<string, unknown> | null;
  stopSignal: string | null;
}

export interface ImageLayerInfo {
  /** sha256 of the uncompressed layer (the config's rootfs.diff_ids). */
  diffId: string;
  /** Digest of the (compressed) blob. */
  blobDigest: string;
  mediaType: string | null;
  compressedSizeBytes: number | null;
  /** 0 for the bottom layer. */
  position: number;
}

export interface ImageInspection extends CachedImage {
  config: ImageConfigInfo;
  layers: ImageLayerInfo[];
}

interface Located {
  cache: Cache;
  reference: string;
  digest: string;
  pulledAt: string;
}

const DIGEST = /^sha256:[a-f0-9]{64}$/;

/** Find a complete cached image by reference (host platform, else the only one) or manifest digest. */
async function locate(msbHome: string, refOrDigest: string): Promise<Located> {
  const cache = new Cache(msbHome);
  const s = refOrDigest.trim();
  if (DIGEST.test(s)) {
    if (!(await cache.isComplete(s))) throw new OciError("imageNotFound", `no image with digest ${s} is in the cache (${cache.root})`, { digest: s });
    const meta = await cache.readMeta(s);
    return { cache, reference: s, digest: s, pulledAt: meta?.pulledAt ?? new Date(0).toISOString() };
  }
  const reference = parseReference(s).toString();
  const r = await cache.readRef(reference);
  const entries = r ? Object.entries(r.platforms) : [];
  const host = formatPlatform(normalizePlatform(hostPlatform()));
  const entry = (r?.platforms[host] ? r.platforms[host] : entries.length === 1 ? entries[0]![1] : undefined) ?? undefined;
  if (!entry || !(await cache.isComplete(entry.digest))) {
    throw new OciError("imageNotFound", `image ${reference} is not in the cache (${cache.root})`);
  }
  return { cache, reference, digest: entry.digest, pulledAt: entry.pulledAt };
}

async function readDocs(cache: Cache, digest: string): Promise<{ manifest: ImageManifest; config: ImageConfigDoc; meta: ImageMeta | undefined }> {
  const dir = cache.imageDir(digest);
  const manifest = parseManifest(await fsp.readFile(join(dir, "manifest.json")), `cached manifest ${digest}`, digest);
  const config = parseConfig(await fsp.readFile(join(dir, "config.json")), `cached config of ${digest}`, digest);
  return { manifest, config, meta: await cache.readMeta(digest) };
}

function summary(l: Located, config: ImageConfigDoc, meta: ImageMeta | undefined, layerCount: number): CachedImage {
  const created = typeof config.created === "string" ? new Date(config.created) : null;
  return {
    reference: l.reference,
    digest: l.digest,
    platform: meta?.platform ?? "",
    os: config.os ?? null,
    architecture: config.architecture ?? null,
    layerCount,
    sizeBytes: meta?.sizeBytes ?? 0,
    pulledAt: new Date(l.pulledAt),
    createdAt: created && !Number.isNaN(created.getTime()) ? created : null,
  };
}

/** A cached image by reference or manifest digest. Not cached -> OciError `imageNotFound`. */
export async function getImage(msbHome: string, refOrDigest: string): Promise<CachedImage> {
  const l = await locate(msbHome, refOrDigest);
  const { manifest, config, meta } = await readDocs(l.cache, l.digest);
  return summary(l, config, meta, manifest.layers.length);
}

/** A cached image with its config and layers. */
export async function inspectImage(msbHome: string, refOrDigest: string): Promise<ImageInspection> {
  const l = await locate(msbHome, refOrDigest);
  const { manifest, config, meta } = await readDocs(l.cache, l.digest);
  const c = config.config ?? {};
  const labels = c.Labels && typeof c.Labels === "object" && !Array.isArray(c.Labels) ? (c.Labels as Record<string, unknown>) : null;
  return {
    ...summary(l, config, meta, manifest.layers.length),
    config: {
      digest: manifest.config.digest,
      env: [...(c.Env ?? [])],
      cmd: c.Cmd && c.Cmd.length ? [...c.Cmd] : null,
      entrypoint: c.Entrypoint && c.Entrypoint.length ? [...c.Entrypoint] : null,
      workingDir: c.WorkingDir ? c.WorkingDir : null,
      user: c.User ? c.User : null,
      labels,
      stopSignal: typeof c.StopSignal === "string" && c.StopSignal ? c.StopSignal : null,
    },
    layers: manifest.layers.map((layer, position) => ({
      diffId: config.rootfs.diff_ids[position] ?? "",
      blobDigest: layer.digest,
      mediaType: layer.mediaType ?? null,
      compressedSizeBytes: layer.size,
      position,
    })),
  };
}

export interface PruneReport {
  /** References (per platform) dropped because no sandbox uses their image. */
  imageRefsRemoved: number;
  /** Image directories (manifest, config, root disk) deleted. */
  manifestsRemoved: number;
  /** Blobs (layers and configs) no remaining manifest names. */
  layersRemoved: number;
  /** Root disks (rootfs.ext4) deleted. */
  rootDisksRemoved: number;
  bytesReclaimed: number;
}

async function duBytes(path: string): Promise<number> {
  let total = 0;
  const walk = async (p: string): Promise<void> => {
    const st = await fsp.lstat(p).catch(() => undefined);
    if (!st) return;
    total += st.blocks * 512;
    if (st.isDirectory()) for (const n of await fsp.readdir(p).catch(() => [] as string[])) await walk(join(p, n));
  };
  await walk(path);
  return total;
}

/**
 * Remove every cached image no sandbox uses (`keep`: manifest digests in use), the
 * incomplete image directories nobody is building, stale temp files, and the blobs that
 * no remaining manifest names.
 */
export async function pruneImages(msbHome: string, keep: ReadonlySet<string>): Promise<PruneReport> {
  const cache = new Cache(msbHome);
  const report: PruneReport = { imageRefsRemoved: 0, manifestsRemoved: 0, layersRemoved: 0, rootDisksRemoved: 0, bytesReclaimed: 0 };
  if (!(await fileExists(cache.root))) return report;
  await cache.ensureDirs();
  await cache.cleanStale();
  await cache.withLock("refs", async () => {
    for (const r of await cache.listRefs()) {
      let changed = false;
      for (const [k, e] of Object.entries(r.platforms)) {
        if (keep.has(e.digest)) continue;
        delete r.platforms[k];
        changed = true;
        report.imageRefsRemoved++;
      }
      if (!changed) continue;
      if (Object.keys(r.platforms).length === 0) await fsp.rm(cache.refPath(r.reference), { force: true });
      else await cache.writeAtomic(cache.refPath(r.reference), JSON.stringify(r, null, 2) + "\n");
    }
  });
  for (const digest of await cache.listImageDigests()) {
    if (keep.has(digest)) continue;
    await cache.withLock(`image-${hexOf(digest)}`, async () => {
      const still = await cache.withLock("refs", () => cache.referencedDigests());
      if (still.has(digest)) return;
      const dir = cache.imageDir(digest);
      if (!(await fileExists(dir))) return;
      const hadDisk = await fileExists(join(dir, "rootfs.ext4"));
      report.bytesReclaimed += await duBytes(dir);
      await fsp.rm(join(dir, "meta.json"), { force: true });
      const trash = cache.tmpPath(`img-${hexOf(digest).slice(0, 16)}`);
      await fsp.rename(dir, trash);
      await fsp.rm(trash, { recursive: true, force: true });
      report.manifestsRemoved++;
      if (hadDisk) report.rootDisksRemoved++;
    });
  }
  const gc = await collectBlobs(cache);
  report.layersRemoved = gc.removed;
  report.bytesReclaimed += gc.bytes;
  return report;
}
