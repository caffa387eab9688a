export * from "./index";

export interface AssetPaths {
  /** msb-runtime binary (MSB_RUNTIME). */
  runtime: string;
  /** Uncompressed guest kernel (MSB_KERNEL). */
  kernel: string;
  /** Initramfs with msb-agent as /init (MSB_INITRAMFS). */
  initramfs: string;
  /** The embedded default image: busybox root disk (MSB_DEFAULT_IMAGE). */
  defaultImage: string;
  /** Bench only: initramfs whose init prints one line and powers off. */
  floorInitramfs: string;
}

export function assetPaths(): AssetPaths;
