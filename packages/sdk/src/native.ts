/**
 * The one place that loads the native addon (`@microsandbox/core-native`).
 *
 * It is loaded lazily, on first use, so that importing the SDK (and validating a
 * configuration) works even where the addon has not been built, and so that unit
 * tests can put a test double in its place with {@link setNativeBinding}.
 *
 * Nothing here declares a shape by hand: the addon's functions and objects are napi-rs's
 * generated declarations (packages/core-native/index.d.ts, committed), and every value
 * they carry is a type of the contract (`@microsandbox/contract`, generated from the Rust
 * types by crates/contract). The names below are aliases the SDK uses.
 */
import { createRequire } from "node:module";
import type * as Addon from "@microsandbox/core-native";
import type { ExecRequest, FsEntry, FsOp, MetricsReport, MountConfig, RuntimeConfig, SessionEvent } from "@microsandbox/contract";
import { RuntimeError, fromNative } from "./errors.js";

export type NativeRuntimeInfo = Addon.RuntimeInfo;
export type NativeFsEntry = FsEntry;
/** One event of a session (a tagged union on `kind`). */
export type NativeExecEvent = SessionEvent;
/** The addon's client of one msb-runtime (an instance of its `AgentClient` class). */
export type NativeAgentClient = Omit<Addon.AgentClient, "close"> & { close(): void | Promise<void> };
export type NativeMetricsRecord = MetricsReport;
export type NativeSandboxRecord = Addon.SandboxRecord;
export type NativeAssetPaths = Addon.AssetPaths;
/** The config the addon's `startSandbox` takes, as JSON (every key present). */
export type NativeSandboxConfig = RuntimeConfig;
export type NativeMount = MountConfig;
export type NativeFsOp = FsOp;
export type NativeExecRequest = ExecRequest;
export type NativeHostEntry = Omit<Addon.HostEntry, "kind"> & { kind: "file" | "dir" | "symlink" | "other" };

/** The addon calls the SDK makes for sandboxes (a test double may stand in for them). */
export type NativeBinding = Pick<
  typeof Addon,
  "startSandbox" | "removeSandbox" | "listSandboxes" | "getSandbox" | "killSandbox" | "terminateSandbox" | "releaseAttachment" | "assetPaths" | "verifyGuestAssets"
  // modify() of a stored configuration (lifecycle parity)
  | "updateSandboxConfig"
> & { AgentClient: { connect(socketPath: string): Promise<NativeAgentClient> } };

/** The addon's host-side file calls for copyToHost / copyFromHost (packages/core-native/src/host_fs.rs); errors are `"<ERRNO>: <text>"`. */
export type NativeHostFs = Pick<typeof Addon, "hostOpenParent" | "hostMkdirAt" | "hostCreateFileAt" | "hostSymlinkAt" | "hostListDir"> & {
  hostOpenAt(dirfd: number, name: string): NativeHostEntry;
};

/** The addon's sparse-file calls for disk snapshots (packages/core-native/src/sparse.rs). */
export type NativeSnapshots = Pick<typeof Addon, "copySandboxUpper" | "copySparse" | "sparseSha256" | "sparseExtents">;

const ADDON = "@microsandbox/core-native";

let binding: NativeBinding | undefined;
let hostFs: NativeHostFs | undefined;

/**
 * Load the real addon. Its loader names what is wrong with an installation (this
 * platform's package missing or of another version, an unsupported platform) in an error
 * of code `ERR_MSB_INSTALL`, mapped to a typed error as is; anything else is a
 * {@link RuntimeError} saying how to build it.
 */
function loadAddon(): unknown {
  try {
    const addon = createRequire(import.meta.url)(ADDON) as { startSandbox: unknown };
    void addon.startSandbox; // the loader loads the platform's addon on first use
    return addon;
  } catch (e) {
    if ((e as { code?: unknown })?.code === "ERR_MSB_INSTALL") throw fromNative(e);
    const detail = (e instanceof Error ? e.message : String(e)).split("\n")[0];
    throw new RuntimeError(
      `cannot load the native addon ${ADDON} (${detail}); reinstall @microsandbox/sdk, or build it with "npm run setup" at the repository root`,
      { cause: e },
    );
  }
}

/** The addon, loaded on first call. Throws a {@link RuntimeError} saying how to build it when it cannot be loaded. */
export function native(): NativeBinding {
  binding ??= loadAddon() as NativeBinding;
  return binding;
}

/**
 * The addon's host file calls. Always the real addon, also while a test double stands in
 * for the sandbox calls: these touch only the host's own files.
 */
export function hostFsNative(): NativeHostFs {
  hostFs ??= loadAddon() as NativeHostFs;
  return hostFs;
}

/** The addon's snapshot calls: always the real addon (they touch only the host's files). */
export function snapshotNative(): NativeSnapshots {
  return loadAddon() as NativeSnapshots;
}

/**
 * Replace the addon (tests only). `undefined` restores lazy loading of the real one.
 * @internal
 */
export function setNativeBinding(b: NativeBinding | undefined): void {
  binding = b;
}

/** Await a native call, mapping whatever it throws to a typed error. */
export async function callNative<T>(f: () => Promise<T> | T): Promise<T> {
  try {
    return await f();
  } catch (e) {
    throw fromNative(e);
  }
}
