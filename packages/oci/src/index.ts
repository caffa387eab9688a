/**
 * @microsandbox/oci - pull OCI / Docker images from registries into a local cache and
 * turn each into a read-only ext4 root disk for microsandbox VMs.
 */
export { OciError, type OciErrorCode } from "./errors.js";
export { parseReference, looksLikeImageReference, isLoopbackRegistry, type Reference } from "./reference.js";
export { hostPlatform, parsePlatform, formatPlatform, type Platform } from "./platform.js";
export type { RegistryAuth } from "./auth.js";
export type { ImageConfig } from "./manifest.js";
export {
  pullImage,
  listImages,
  removeImage,
  type PullPolicy,
  type PullProgress,
  type PullOptions,
  type PulledImage,
  type ImageInfo,
} from "./pull.js";
export { type RemoveOptions } from "./pull.js";
export { getImage, inspectImage, pruneImages, type CachedImage, type ImageInspection, type ImageConfigInfo, type ImageLayerInfo, type PruneReport } from "./inspect.js";
export { indexTar, TAR_LIMITS, type TarIndex, type TarLimits, type TarFileEntry } from "./tar-reader.js";
export { saveImages, loadImages, type ArchiveFormat, type SaveOptions, type LoadOptions, type LoadedImage } from "./archive.js";
