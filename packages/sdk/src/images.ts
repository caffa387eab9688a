/**
 * OCI images outside of a sandbox: pull ahead of time, list and remove what is cached.
 * The work is done by `@microsandbox/oci`; this adds validation and typed errors.
 */
import { listImages, pullImage, removeImage, type ImageInfo, type PulledImage, type PullProgress } from "@microsandbox/oci";
import { z } from "zod";
import { check, imageSchema, msbHome, pullPolicySchema, registryAuthSchema, type PullPolicy, type RegistryAuth } from "./config.js";
import { fromOci } from "./errors.js";

export type { ImageInfo, PulledImage, PullProgress };

export interface ImagePullOptions {
  pullPolicy?: PullPolicy;
  registryAuth?: RegistryAuth;
  insecureRegistry?: boolean;
  registryCa?: string;
  onProgress?: (p: PullProgress) => void;
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

  /** Remove a cached image by reference. Unknown -> ImageNotFoundError. */
  static async remove(reference: string): Promise<void> {
    const ref = check(imageSchema, "image", reference);
    try {
      await removeImage(msbHome(), ref);
    } catch (e) {
      throw fromOci(e);
    }
  }
}
