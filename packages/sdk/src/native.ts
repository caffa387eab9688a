/**
 * The one place that loads the native addon (`@microsandbox/core-native`).
 *
 * It is loaded lazily, on first use, so that importing the SDK (and validating a
 * configuration) works even where the addon has not been built, and so that unit
 * tests can put a test double in its place with {@link setNativeBinding}.
 *
 * The types below are the addon's contract (docs/ARCHITECTURE.md, "Addon API").
 * They are declared here rather than imported from the addon's generated
 * declarations so that the SDK compiles without the addon being built.
 */
import { createRequire } from "node:module";
import { RuntimeError, fromNative } from "./errors.js";

export interface NativeRuntimeInfo {
  pid: number;
  socketPath: string;
  sandboxDir: string;
}

export interface NativeFsEntry {
  name: string;
  /** "file" | "dir" | "symlink" | "other" */
  kind: string;
  size: number;
  /** Permission bits (`mode & 0o7777`). */
  mode: number;
  modifiedMs: number;
}

/**
 * One event of a session. Exec sessions: started, stdout, stderr, exited, failed.
 * Filesystem sessions: fsData... then fsEnd (read), fsDone, fsExists, fsStat,
 * fsEntries, or fsError.
 */
export interface NativeExecEvent {
  kind:
    | "started"
    | "stdout"
    | "stderr"
    | "exited"
    | "failed"
    | "fsData"
    | "fsEnd"
    | "fsDone"
    | "fsExists"
    | "fsStat"
    | "fsEntries"
    | "fsError";
  pid?: number;
  data?: Uint8Array;
  code?: number;
  signal?: number;
  reason?: string;
  /** Symbolic errno of an fsError (ENOENT, EISDIR, ...). */
  errno?: string;
  entries?: NativeFsEntry[];
  entry?: NativeFsEntry;
  exists?: boolean;
}

export interface NativeAgentClient {
  exec(requestJson: string): Promise<number>;
  /** Start a filesystem operation (JSON of {@link NativeFsOp}); results come through `next`. */
  fs(opJson: string): Promise<number>;
  /**
   * The next event of a session (`null` after its last one). Taking an output chunk
   * returns its credit to the guest: a consumer that stops calling `next` stops the producer.
   */
  next(sessionId: number): Promise<NativeExecEvent | null>;
  /** Bytes for a session's stdin (or an fs write's file); resolves once the guest gave credit for them. */
  writeStdin(sessionId: number, data: Buffer): Promise<void>;
  /** EOF on a session's stdin (^D on a TTY), or the end of an fs write. */
  closeStdin(sessionId: number): Promise<void>;
  /** A signal to the session's process group. */
  signal(sessionId: number, signal: number): Promise<void>;
  /** New terminal size of a TTY session. */
  resize(sessionId: number, rows: number, cols: number): Promise<void>;
  /** Graceful stop; resolves when the VM is gone. */
  stop(timeoutMs: number): Promise<void>;
  kill(): Promise<void>;
  /** Resource usage, measured by msb-runtime. */
  metrics(): Promise<NativeMetricsRecord>;
  /** Resolves once the runtime accepted: status "draining", new execs fail with `sandboxDraining`. */
  drain(): Promise<void>;
  /** The runtime stops watching its creator (then call `releaseAttachment(pid)`). */
  detach(): Promise<void>;
  /** Resolves when the VM is gone (the connection closes), without stopping it. */
  wait(): Promise<void>;
  /** True once the runtime closed the connection (the sandbox stopped). */
  readonly closed: boolean;
  /** Drop the connection without stopping the sandbox. */
  close(): void | Promise<void>;
}

/** What msb-runtime measures (see SandboxMetrics for the meaning of each field). */
export interface NativeMetricsRecord {
  cpuPercent: number;
  memoryBytes: number;
  memoryLimitBytes: number;
  diskReadBytes: number;
  diskWriteBytes: number;
  netRxBytes: number;
  netTxBytes: number;
  timestampMs: number;
  uptimeMs: number;
}

/** A sandbox's row in the state store. */
export interface NativeSandboxRecord {
  name: string;
  status: string;
  /** What the SDK passed as `sdkConfig` when it created the sandbox. */
  configJson: string;
  /** Milliseconds since the epoch. */
  createdAt: number;
  updatedAt: number;
  /** Set while running or draining. */
  runtimePid: number | null;
  socketPath: string | null;
  /** Set once the VM ended: 0 graceful stop or guest power-off, 137 killed, 1 crashed. */
  exitCode: number | null;
  exitReason: string | null;
}

export interface NativeAssetPaths {
  runtime: string;
  kernel: string;
  initramfs: string;
  defaultImage: string;
  floorInitramfs: string;
}

export interface NativeBinding {
  startSandbox(configJson: string): Promise<NativeRuntimeInfo>;
  removeSandbox(msbHome: string, name: string): Promise<void>;
  listSandboxes(msbHome: string): Promise<NativeSandboxRecord[]>;
  getSandbox(msbHome: string, name: string): Promise<NativeSandboxRecord>;
  /** Ends the VM at once even if its runtime does not answer; a no-op when it is stopped. */
  killSandbox(msbHome: string, name: string): Promise<void>;
  /** SIGTERM to the sandbox's runtime (a starting one cancels its boot); resolves once it is gone. */
  terminateSandbox(msbHome: string, name: string): Promise<void>;
  /** Let an attached runtime outlive this process. */
  releaseAttachment(runtimePid: number): boolean;
  AgentClient: { connect(socketPath: string): Promise<NativeAgentClient> };
  assetPaths(): NativeAssetPaths;
}

/** The JSON the addon's `startSandbox` takes (every key present). */
export interface NativeSandboxConfig {
  name: string;
  msbHome: string;
  runtimePath: string;
  kernel: string;
  initramfs: string;
  image: string;
  cpus: number;
  memoryMib: number;
  env: [string, string][];
  workdir: string | null;
  hostname: string | null;
  user: string | null;
  /** "create": the name must be free; "start": boot an existing, stopped sandbox (its disk is kept). */
  mode: "create" | "start";
  /** false: detached (msb-runtime calls setsid and outlives this process). */
  attached: boolean;
  /** Attached only: msb-runtime removes the sandbox when its creator exits without stopping it. */
  ephemeral: boolean;
  bootTimeoutMs: number;
  idleTimeoutSecs: number | null;
  maxDurationSecs: number | null;
  /** Volumes (virtiofs for bind and named ones, tmpfs in the guest). */
  mounts: NativeMount[];
  /** Filesystem of a disk image when detection cannot tell; null: detect. */
  imageFstype: string | null;
  /** Verbosity of msb-runtime's log; null: its default (info). */
  logLevel: "trace" | "debug" | "info" | "warn" | "error" | null;
  /** The SDK's configuration, stored verbatim in the state store (no registry password). */
  sdkConfig: unknown;
  /** The network (the native stack's NetConfig); `null`: no NIC at all. */
  network: unknown;
}

/** A volume as msb-runtime takes it (every key present). */
export interface NativeMount {
  /** Absolute path inside the guest. */
  guestPath: string;
  kind: "bind" | "named" | "tmpfs";
  /** bind: absolute host directory; named: volume name; tmpfs: null. */
  source: string | null;
  readonly: boolean;
  /** tmpfs only: size cap in MiB (null: the guest's default). */
  sizeMiB: number | null;
}

/** The JSON the addon's `AgentClient.exec` takes (every key present). */
export interface NativeExecRequest {
  cmd: string;
  args: string[];
  env: [string, string][];
  cwd: string | null;
  user: string | null;
  /** true: stdin is a pipe fed by `writeStdin`; false: /dev/null. */
  stdin: boolean;
  /** Run on a pseudo-terminal of this size (stdout then carries the terminal's output). */
  tty: { rows: number; cols: number } | null;
  /** Resource limits, soft and hard: [name, value]. */
  /** "unlimited" is RLIM_INFINITY; see execRequestJson. */
  rlimits: [string, number | "unlimited"][];
}

/** The JSON the addon's `AgentClient.fs` takes (serde, externally tagged). Guest paths are absolute. */
export type NativeFsOp =
  | { read: { path: string } }
  | { write: { path: string; mode: number | null; append: boolean } }
  | { list: { path: string } }
  | { stat: { path: string } }
  | { exists: { path: string } }
  | { mkdir: { path: string; mode: number | null; recursive: boolean } }
  | { remove: { path: string } }
  | { remove_dir: { path: string; recursive: boolean } }
  | { copy: { src: string; dst: string } }
  | { rename: { src: string; dst: string } }
  | { symlink: { target: string; link: string } };

/** What the addon's `hostOpenAt` found (fd -1 when nothing was opened). */
export interface NativeHostEntry {
  kind: "file" | "dir" | "symlink" | "other";
  fd: number;
  mode: number;
  target?: string | null;
}

/**
 * The addon's host-side file calls for copyToHost / copyFromHost: one component at a
 * time relative to a directory fd, never following a link (packages/core-native/src/host_fs.rs).
 * Errors are `"<ERRNO>: <text>"`.
 */
export interface NativeHostFs {
  hostOpenParent(path: string): { fd: number; name: string };
  hostMkdirAt(dirfd: number, name: string): number;
  hostCreateFileAt(dirfd: number, name: string): number;
  hostSymlinkAt(dirfd: number, target: string, name: string): void;
  hostOpenAt(dirfd: number, name: string): NativeHostEntry;
  hostListDir(dirfd: number, max: number): string[];
}

const ADDON = "@microsandbox/core-native";

let binding: NativeBinding | undefined;
let hostFs: NativeHostFs | undefined;

/** Load the real addon. Throws a {@link RuntimeError} saying how to build it when it cannot be loaded. */
function loadAddon(): unknown {
  try {
    return createRequire(import.meta.url)(ADDON);
  } catch (e) {
    const detail = (e instanceof Error ? e.message : String(e)).split("\n")[0];
    throw new RuntimeError(
      `cannot load the native addon ${ADDON} (${detail}); build it with "npm run setup" at the repository root`,
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
