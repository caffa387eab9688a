export * from "./index";

export interface AssetPaths {
  /** msb-runtime binary (MSB_RUNTIME), from this platform's @microsandbox/core-native-* package. */
  runtime: string;
  /** Uncompressed guest kernel (MSB_KERNEL), from @microsandbox/guest-*. */
  kernel: string;
  /** Initramfs with msb-agent as /init (MSB_INITRAMFS). */
  initramfs: string;
  /** The embedded default image: busybox root disk (MSB_DEFAULT_IMAGE). */
  defaultImage: string;
  /** msb-runtime's KVM probe (and the bench's floor): an initramfs that prints a line and powers off. */
  floorInitramfs: string;
}

/**
 * Where the runtime and the guest files are. Throws (`code: "ERR_MSB_INSTALL"`) when this
 * platform's packages are missing or of another version than this one.
 */
export function assetPaths(): AssetPaths;

/**
 * Check the guest files against the guest package's manifest.json (size and sha256, once
 * per process per file). Throws (`code: "ERR_MSB_INSTALL"`, message naming the file, the
 * package and the fix) on a missing, truncated or altered file. With `cacheDir`, a file
 * whose identity (device, inode, size, mtime, ctime) an earlier process checked against
 * the same sha256 is not hashed again (`<cacheDir>/guest-verified.json`).
 */
export function verifyGuestAssets(cacheDir?: string): void;

/** This host as `<platform>-<arch>-<libc>`, e.g. `linux-x64-gnu`. */
export function platformKey(): string;

/** The platform keys that have prebuilt packages. */
export const supportedPlatforms: readonly string[];
