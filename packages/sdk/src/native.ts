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

export interface NativeExecEvent {
  kind: "started" | "stdout" | "stderr" | "exited" | "failed";
  pid?: number;
  data?: Uint8Array;
  code?: number;
  signal?: number;
  reason?: string;
}

export interface NativeAgentClient {
  exec(requestJson: string): Promise<number>;
  next(sessionId: number): Promise<NativeExecEvent | null>;
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
  bootTimeoutMs: number;
  idleTimeoutSecs: number | null;
  maxDurationSecs: number | null;
  /** The SDK's configuration, stored verbatim in the state store (no registry password). */
  sdkConfig: unknown;
}

/** The JSON the addon's `AgentClient.exec` takes (every key present). */
export interface NativeExecRequest {
  cmd: string;
  args: string[];
  env: [string, string][];
  cwd: string | null;
  user: string | null;
}

const ADDON = "@microsandbox/core-native";

let binding: NativeBinding | undefined;

/** The addon, loaded on first call. Throws a {@link RuntimeError} saying how to build it when it cannot be loaded. */
export function native(): NativeBinding {
  if (binding === undefined) {
    try {
      binding = createRequire(import.meta.url)(ADDON) as NativeBinding;
    } catch (e) {
      const detail = (e instanceof Error ? e.message : String(e)).split("\n")[0];
      throw new RuntimeError(
        `cannot load the native addon ${ADDON} (${detail}); build it with "npm run setup" at the repository root`,
        { cause: e },
      );
    }
  }
  return binding;
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
