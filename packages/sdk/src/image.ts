/**
 * `Image` and `ImageHandle`: the cached OCI images, with the reference SDK's names and
 * shapes (get, list, inspect, remove with `ImageInUseError`, prune, save and load of tar
 * archives). The work is done by `@microsandbox/oci`; this validates arguments (zod) and
 * knows, from the state store, which images sandboxes use.
 */
import {
  getImage,
  inspectImage,
  listImages,
  loadImages,
  pruneImages,
  removeImage,
  saveImages,
  type CachedImage,
  type ImageInfo,
  type LoadedImage,
} from "@microsandbox/oci";
import { z } from "zod";
import { check, imageSchema, msbHome } from "./config.js";
import { fromOci } from "./errors.js";
import { toRecord } from "./lifecycle.js";
import { callNative, native } from "./native.js";

export interface ImageConfigDetail {
  /** Digest of the image config blob. */
  readonly digest: string;
  /** "KEY=value", as in the image config. */
  readonly env: readonly string[];
  readonly cmd: readonly string[] | null;
  readonly entrypoint: readonly string[] | null;
  readonly workingDir: string | null;
  readonly user: string | null;
  readonly labels: Record<string, unknown> | null;
  readonly stopSignal: string | null;
}

export interface ImageLayerDetail {
  /** sha256 of the uncompressed layer. */
  readonly diffId: string;
  /** Digest of the layer blob as pulled. */
  readonly blobDigest: string;
  readonly mediaType: string | null;
  readonly compressedSizeBytes: number | null;
  /** Always null here: layers are not kept as EROFS images (the image has one ext4 root disk). */
  readonly erofsSizeBytes: number | null;
  /** 0 for the bottom layer. */
  readonly position: number;
}

export interface ImageDetail {
  readonly handle: ImageHandle;
  readonly config: ImageConfigDetail | null;
  readonly layers: readonly ImageLayerDetail[];
}

export interface ImagePruneReport {
  /** References (per platform) removed. */
  readonly imageRefsRemoved: number;
  /** Images (manifest, config, root disk) removed. */
  readonly manifestsRemoved: number;
  /** Blobs (layers, configs) no remaining image uses. */
  readonly layersRemoved: number;
  /** Root disks (`rootfs.ext4`) removed: this SDK's counterpart of the reference's fsmeta images. */
  readonly fsmetaRemoved: number;
  /** Always 0 (no VMDK files here). */
  readonly vmdkRemoved: number;
  readonly bytesReclaimed: number | null;
}

export interface ImageRemoveOptions {
  /** Remove even when sandboxes use the image (they will not start again without it). Default false. */
  force?: boolean;
}

export interface ImageSaveOptions {
  /** Where to write the archive. */
  outputPath: string;
  /** `"docker"` (default: `docker load` reads it) or `"oci"` (OCI image layout only). */
  format?: "docker" | "oci";
  /** Replace an existing file. Default false: an existing file is an `InvalidConfigError` (field "outputPath"). */
  overwrite?: boolean;
}

export interface ImageLoadOptions {
  /** An extra reference for the first image of the archive. */
  tag?: string;
}

export class ImageHandle {
  /** Normalised reference (`docker.io/library/alpine:latest`), or the digest when looked up by digest. */
  readonly reference: string;
  /** Uncompressed size of the image's files. */
  readonly sizeBytes: number | null;
  readonly manifestDigest: string | null;
  readonly architecture: string | null;
  readonly os: string | null;
  readonly layerCount: number;
  /** When a sandbox made from this image last changed state (created, started, stopped); null when none exists. */
  readonly lastUsedAt: Date | null;
  /** The image config's `created`. */
  readonly createdAt: Date | null;
  /** When this reference was pulled or loaded (this SDK's addition). */
  readonly pulledAt: Date | null;
  /** "linux/amd64" (this SDK's addition). */
  readonly platform: string | null;

  /** @internal */
  constructor(raw: {
    reference: string;
    digest: string;
    sizeBytes: number;
    layerCount: number;
    platform?: string;
    os?: string | null;
    architecture?: string | null;
    createdAt?: Date | null;
    pulledAt?: Date | null;
    lastUsedAt?: Date | null;
  }) {
    this.reference = raw.reference;
    this.sizeBytes = raw.sizeBytes;
    this.manifestDigest = raw.digest;
    const [os, arch] = (raw.platform ?? "").split("/");
    this.os = raw.os ?? (os || null);
    this.architecture = raw.architecture ?? (arch || null);
    this.layerCount = raw.layerCount;
    this.lastUsedAt = raw.lastUsedAt ?? null;
    this.createdAt = raw.createdAt ?? null;
    this.pulledAt = raw.pulledAt ?? null;
    this.platform = raw.platform || null;
  }

  /** {@link Image.inspect} of this image. */
  inspect(): Promise<ImageDetail> {
    return Image.inspect(this.manifestDigest && this.reference === this.manifestDigest ? this.manifestDigest : this.reference);
  }

  /** {@link Image.remove} of this reference. */
  remove(opts: ImageRemoveOptions = {}): Promise<void> {
    return Image.remove(this.reference, opts);
  }
}

const referenceSchema = imageSchema;
const removeOptionsSchema = z.object({ force: z.boolean({ error: "must be a boolean" }).optional() }, { error: "must be an object" });
const saveOptionsSchema = z.object(
  {
    outputPath: z.string({ error: "must be a file path (string)" }).min(1, { error: "must not be empty" }),
    format: z.enum(["docker", "oci"], { error: 'must be "docker" or "oci"' }).optional(),
    overwrite: z.boolean({ error: "must be a boolean" }).optional(),
  },
  { error: "must be an object with outputPath" },
);
const loadOptionsSchema = z.object({ tag: referenceSchema.optional() }, { error: "must be an object" });

function checkOptions<T extends object>(schema: z.ZodType<T>, value: unknown, fields: readonly string[]): T {
  // name the field that is wrong, not just "options"
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const path = r.error.issues[0]?.path[0];
  const field = typeof path === "string" && fields.includes(path) ? path : "options";
  const v = field === "options" ? value : (value as Record<string, unknown>)[field];
  return check(field === "options" ? schema : (schema as unknown as z.ZodObject).shape[field] as z.ZodType<T>, field, v) as T;
}

function handleOf(i: CachedImage | ImageInfo | LoadedImage, lastUse?: ReadonlyMap<string, Date>): ImageHandle {
  return new ImageHandle({
    lastUsedAt: lastUse?.get(i.digest) ?? null,
    reference: i.reference,
    digest: i.digest,
    sizeBytes: i.sizeBytes,
    layerCount: i.layerCount,
    platform: i.platform,
    ...("os" in i ? { os: i.os, architecture: i.architecture, createdAt: i.createdAt } : {}),
    ...("pulledAt" in i ? { pulledAt: i.pulledAt } : {}),
  });
}

/**
 * Names of the sandboxes (any status) whose image is one of `digests`, from their
 * stored configuration (`imageDigest`, recorded when the sandbox was created).
 */
export async function sandboxesUsing(home: string, digests: ReadonlySet<string> | null, lastUse?: Map<string, Date>): Promise<Map<string, string[]>> {
  const binding = await callNative(() => native());
  const records = await callNative(() => binding.listSandboxes(home));
  const out = new Map<string, string[]>();
  for (const raw of records) {
    const r = toRecord(raw);
    let digest: unknown;
    try {
      const c = JSON.parse(r.configJson) as { imageKind?: unknown; imageDigest?: unknown };
      digest = c.imageKind === "oci" ? c.imageDigest : undefined;
    } catch {
      continue; // a corrupt configuration names no image
    }
    if (typeof digest !== "string" || (digests && !digests.has(digest))) continue;
    out.set(digest, [...(out.get(digest) ?? []), r.name]);
    const prev = lastUse?.get(digest);
    if (lastUse && (!prev || prev < r.updatedAt)) lastUse.set(digest, r.updatedAt);
  }
  return out;
}

/** Digest -> when a sandbox of it last changed state (best effort: empty when the store cannot be read). */
async function lastUses(home: string): Promise<Map<string, Date>> {
  const m = new Map<string, Date>();
  await sandboxesUsing(home, null, m).catch(() => undefined);
  return m;
}

async function inUse(home: string, digests: ReadonlySet<string>): Promise<string[]> {
  return [...(await sandboxesUsing(home, digests)).values()].flat().sort();
}

/** Remove a reference (or digest) from the cache, refusing while sandboxes use it unless forced. */
export async function removeCached(reference: string, opts: ImageRemoveOptions): Promise<void> {
  const ref = check(referenceSchema, "reference", reference);
  const o = checkOptions(removeOptionsSchema, opts, ["force"]);
  const home = msbHome();
  try {
    await removeImage(home, ref, o.force ? {} : { inUse: (d) => inUse(home, d) });
  } catch (e) {
    throw fromOci(e);
  }
}

export class Image {
  /** A cached image by reference (or manifest digest). Not cached -> `ImageNotFoundError`. */
  static async get(reference: string): Promise<ImageHandle> {
    const ref = check(referenceSchema, "reference", reference);
    try {
      const home = msbHome();
      return handleOf(await getImage(home, ref), await lastUses(home));
    } catch (e) {
      throw fromOci(e);
    }
  }

  /** Every cached image: one handle per reference and platform, newest first. */
  static async list(): Promise<ImageHandle[]> {
    try {
      const home = msbHome();
      const all = await listImages(home);
      const uses = await lastUses(home);
      return all.sort((a, b) => b.pulledAt.getTime() - a.pulledAt.getTime()).map((i) => handleOf(i, uses));
    } catch (e) {
      throw fromOci(e);
    }
  }

  /** The image with its config and layers. */
  static async inspect(reference: string): Promise<ImageDetail> {
    const ref = check(referenceSchema, "reference", reference);
    try {
      const home = msbHome();
      const d = await inspectImage(home, ref);
      return {
        handle: handleOf(d, await lastUses(home)),
        config: { ...d.config },
        layers: d.layers.map((l) => ({ ...l, erofsSizeBytes: null })),
      };
    } catch (e) {
      throw fromOci(e);
    }
  }

  /**
   * Remove a cached image. While any sandbox (running or stopped) was made from it,
   * rejects with `ImageInUseError` (naming them) unless `force: true`.
   */
  static async remove(reference: string, opts: ImageRemoveOptions = {}): Promise<void> {
    return removeCached(reference, opts);
  }

  /** Remove every cached image no sandbox uses, and the blobs nothing names any more. */
  static async prune(): Promise<ImagePruneReport> {
    const home = msbHome();
    try {
      const keep = new Set((await sandboxesUsing(home, null)).keys());
      const r = await pruneImages(home, keep);
      return {
        imageRefsRemoved: r.imageRefsRemoved,
        manifestsRemoved: r.manifestsRemoved,
        layersRemoved: r.layersRemoved,
        fsmetaRemoved: r.rootDisksRemoved,
        vmdkRemoved: 0,
        bytesReclaimed: r.bytesReclaimed,
      };
    } catch (e) {
      throw fromOci(e);
    }
  }

  /**
   * Import the images of a tar archive (`docker save` output or an OCI image layout) into
   * the cache. The archive is checked entry by entry and blob by blob; a bad one rejects
   * with `ImageError` and leaves nothing in the cache. `tag` adds a reference to the
   * first image. Returns a handle for every reference imported.
   */
  static async load(inputPath: string, opts: ImageLoadOptions = {}): Promise<ImageHandle[]> {
    const path = check(z.string({ error: "must be a file path (string)" }).min(1, { error: "must not be empty" }), "inputPath", inputPath);
    const o = checkOptions(loadOptionsSchema, opts, ["tag"]);
    try {
      return (await loadImages(msbHome(), path, o.tag !== undefined ? { tag: o.tag } : {})).map((i) => handleOf(i));
    } catch (e) {
      throw fromOci(e);
    }
  }

  /**
   * Write cached images to a tar archive: `format` `"docker"` (default; an OCI image
   * layout plus docker's manifest.json, as `docker save` writes) or `"oci"`. An existing
   * file is replaced only with `overwrite: true`.
   */
  static async save(reference: string | readonly string[], opts: ImageSaveOptions): Promise<void> {
    const refs = typeof reference === "string" ? [reference] : reference;
    const list = check(z.array(referenceSchema, { error: "must be a reference or a list of them" }).min(1, { error: "must name an image" }), "reference", refs);
    const o = checkOptions(saveOptionsSchema, opts, ["outputPath", "format", "overwrite"]);
    try {
      await saveImages(msbHome(), list, o.outputPath, { format: o.format ?? "docker", overwrite: o.overwrite ?? false });
    } catch (e) {
      throw fromOci(e);
    }
  }
}
