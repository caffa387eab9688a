/**
 * OCI images outside of a sandbox: pull ahead of time, list and remove what is cached.
 * The work is done by `@microsandbox/oci`; this adds validation and typed errors.
 */
import { listImages, pullImage, type ImageInfo, type PulledImage, type PullProgress } from "@microsandbox/oci";
import { z } from "zod";
import { check, imageSchema, msbHome, pullPolicySchema, registryAuthSchema, type PullPolicy, type RegistryAuth } from "./config.js";
import { fromOci } from "./errors.js";
import { Image, removeCached, type ImageDetail, type ImageHandle, type ImageLoadOptions, type ImagePruneReport, type ImageRemoveOptions, type ImageSaveOptions } from "./image.js";

export type { ImageInfo, PulledImage };
/** The puller's progress events (`phase`), as `onPullProgress` and `Images.pull` report them. */
export type ImagePullProgress = PullProgress;

export interface ImagePullOptions {
  pullPolicy?: PullPolicy;
  registryAuth?: RegistryAuth;
  insecureRegistry?: boolean;
  registryCa?: string;
  onProgress?: (p: ImagePullProgress) => void;
  signal?: AbortSignal;
}

export class Images {
  /** Pull `reference` into the cache (default policy "always": re-resolve the tag). */
  static async pull(reference: string, options: ImagePullOptions = {}): Promise<PulledImage> {
    const ref = check(imageSchema, "image", reference);
    const policy = check(pullPolicySchema, "pullPolicy", options.pullPolicy ?? "always");
    const auth = options.registryAuth === undefined ? undefined : check(registryAuthSchema, "registryAuth", options.registryAuth);
    const insecure = check(z.boolean({ error: "must be a boolean" }), "insecureRegistry", options.insecureRegistry ?? false);
    try {
      return await pullImage(ref, {
        msbHome: msbHome(),
        policy,
        insecure,
        ...(auth ? { auth } : {}),
        ...(options.registryCa ? { caFile: options.registryCa } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
      });
    } catch (e) {
      throw fromOci(e);
    }
  }

  /** Every cached image, newest first. */
  static async list(): Promise<ImageInfo[]> {
    try {
      const all = await listImages(msbHome());
      return all.sort((a, b) => b.pulledAt.getTime() - a.pulledAt.getTime());
    } catch (e) {
      throw fromOci(e);
    }
  }

  /**
   * Remove a cached image by reference. Unknown -> ImageNotFoundError; used by a
   * sandbox (running or stopped) -> ImageInUseError unless `force`.
   */
  static async remove(reference: string, options: ImageRemoveOptions = {}): Promise<void> {
    check(imageSchema, "image", reference);
    return removeCached(reference, options);
  }

  /** {@link Image.inspect}. */
  static inspect(reference: string): Promise<ImageDetail> {
    return Image.inspect(reference);
  }

  /** {@link Image.prune}. */
  static prune(): Promise<ImagePruneReport> {
    return Image.prune();
  }

  /** {@link Image.save}. */
  static save(reference: string | readonly string[], options: ImageSaveOptions): Promise<void> {
    return Image.save(reference, options);
  }

  /** {@link Image.load}. */
  static load(inputPath: string, options: ImageLoadOptions = {}): Promise<ImageHandle[]> {
    return Image.load(inputPath, options);
  }
}
