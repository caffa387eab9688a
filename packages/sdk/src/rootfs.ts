/**
 * The root filesystem a sandbox boots: an OCI image pulled (or found in the cache) with
 * the image's defaults merged under the builder's options, or a local path as given.
 */
import { parseReference, pullImage, type ImageConfig, type PulledImage, type PullProgress } from "@microsandbox/oci";
import type { PullPolicy, SandboxConfig } from "./config.js";
import { fromOci } from "./errors.js";

/**
 * The root filesystem to boot. For a new sandbox from an OCI image: pull it (with the
 * configured policy) and merge the image's defaults under the builder's options. For
 * a restart: the same image again, from the cache when it is there (pull policy
 * "if-missing"), pinned to the digest it was created from, with the stored
 * configuration as is (it already has the image's defaults merged in).
 */
export async function resolveRootfs(
  config: SandboxConfig,
  home: string,
  defaultImage: string,
  mode: "create" | "start",
  onProgress?: (p: PullProgress) => void,
): Promise<{ rootfs: string; config: SandboxConfig }> {
  if (config.imageKind !== "oci" || config.image === null) return { rootfs: config.image ?? defaultImage, config };
  if (mode === "create") {
    const pulled = await pull(config.image, config, home, config.pullPolicy, onProgress);
    return { rootfs: pulled.rootfs, config: { ...applyImageConfig(config, pulled.config), imageDigest: pulled.digest } };
  }
  const digest = config.imageDigest ?? null;
  let byTag: PulledImage | undefined;
  let tagError: unknown;
  try {
    byTag = await pull(config.image, config, home, "if-missing", onProgress);
  } catch (e) {
    tagError = e;
  }
  if (byTag !== undefined && (digest === null || byTag.digest === digest)) return { rootfs: byTag.rootfs, config };
  if (digest === null) throw tagError;
  // The tag now names another image (or cannot be resolved): use the one the sandbox's disk was made on.
  try {
    const pinned = await pull(pinnedReference(config.image, digest), config, home, "if-missing", onProgress);
    return { rootfs: pinned.rootfs, config };
  } catch (e) {
    throw tagError ?? e;
  }
}

/** `registry/repository@digest` for an image reference. */
function pinnedReference(image: string, digest: string): string {
  try {
    const r = parseReference(image);
    return `${r.registry}/${r.repository}@${digest}`;
  } catch (e) {
    throw fromOci(e);
  }
}

/** Pull (or find in the cache) an OCI image. */
async function pull(
  image: string,
  config: SandboxConfig,
  home: string,
  policy: PullPolicy,
  onProgress?: (p: PullProgress) => void,
): Promise<PulledImage> {
  const auth = config.registryAuth;
  try {
    return await pullImage(image, {
      msbHome: home,
      policy,
      // A configuration read back from the store has no password: pull anonymously.
      ...(auth && auth.password !== undefined ? { auth: { kind: auth.kind, username: auth.username, password: auth.password } } : {}),
      insecure: config.insecureRegistry,
      ...(config.registryCa ? { caFile: config.registryCa } : {}),
      ...(onProgress ? { onProgress } : {}),
    });
  } catch (e) {
    throw fromOci(e);
  }
}

/**
 * The image's defaults under the builder's options: image env first (builder values for
 * the same key win), workdir, user and entrypoint from the image unless set.
 */
export function applyImageConfig(config: SandboxConfig, image: ImageConfig): SandboxConfig {
  const env = new Map<string, string>(image.env);
  for (const [k, v] of config.env) env.set(k, v);
  return {
    ...config,
    env: [...env],
    workdir: config.workdir ?? image.workingDir ?? null,
    user: config.user ?? (image.user ? image.user : null),
    entrypoint: config.entrypoint ?? image.entrypoint ?? null,
    cmd: image.cmd ?? null,
  };
}
