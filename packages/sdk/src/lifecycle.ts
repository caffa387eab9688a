/**
 * Operations on sandboxes by name, through the state store (the addon's
 * listSandboxes / getSandbox / removeSandbox / killSandbox) and a sandbox's agent
 * socket. Shared by {@link Sandbox}, {@link SandboxHandle} and the builder.
 */
import { SANDBOX_STATUSES, type SandboxStatus } from "@microsandbox/contract";
import "./polyfill.js";
import { ProtocolError, SandboxNotFoundError, SandboxStillRunningError } from "./errors.js";
import type { ExitStatus } from "./exec.js";
import { callNative, type NativeBinding, type NativeSandboxRecord } from "./native.js";

/**
 * Where a sandbox is in its life. `"starting"`: its VM is booting (no commands yet;
 * `stop()` cancels the boot).
 */
export type { SandboxStatus };

const STATUSES: readonly string[] = SANDBOX_STATUSES;

/** How long to wait for a runtime to release a sandbox after its VM is gone, before giving up. */
export const RELEASE_TIMEOUT_MS = 10_000;

/** A sandbox's row in the state store, checked and converted. */
export interface SandboxRecord {
  name: string;
  status: SandboxStatus;
  configJson: string;
  createdAt: Date;
  updatedAt: Date;
  runtimePid: number | null;
  socketPath: string | null;
  exitCode: number | null;
  exitReason: string | null;
}

/** `true` while the sandbox's runtime and VM exist (starting, running, draining or paused). */
export function isLive(status: SandboxStatus): boolean {
  return status === "starting" || status === "running" || status === "draining" || status === "paused";
}

function intOrNull(v: unknown, what: string, name: string): number | null {
  if (v === null || v === undefined) return null;
  if (typeof v !== "number" || !Number.isInteger(v)) throw new ProtocolError(`sandbox record ${name}: ${what} is not an integer`);
  return v;
}

function stringOrNull(v: unknown, what: string, name: string): string | null {
  if (v === null || v === undefined) return null;
  if (typeof v !== "string") throw new ProtocolError(`sandbox record ${name}: ${what} is not a string`);
  return v;
}

function date(v: unknown, what: string, name: string): Date {
  if (typeof v !== "number" || !Number.isFinite(v)) throw new ProtocolError(`sandbox record ${name}: ${what} is not a timestamp`);
  return new Date(v);
}

/** Check a record from the addon. The config JSON is kept as is (it is parsed only on demand). */
export function toRecord(r: NativeSandboxRecord): SandboxRecord {
  const raw = r as unknown as Record<string, unknown>;
  const name = raw?.name;
  if (typeof name !== "string" || name === "") throw new ProtocolError("sandbox record without a name");
  const status = raw.status;
  if (typeof status !== "string" || !STATUSES.includes(status)) {
    throw new ProtocolError(`sandbox record ${name}: unknown status ${JSON.stringify(status)}`);
  }
  return {
    name,
    status: status as SandboxStatus,
    configJson: typeof raw.configJson === "string" ? raw.configJson : "",
    createdAt: date(raw.createdAt, "createdAt", name),
    updatedAt: date(raw.updatedAt, "updatedAt", name),
    runtimePid: intOrNull(raw.runtimePid, "runtimePid", name),
    socketPath: stringOrNull(raw.socketPath, "socketPath", name),
    exitCode: intOrNull(raw.exitCode, "exitCode", name),
    exitReason: stringOrNull(raw.exitReason, "exitReason", name),
  };
}

export async function readRecord(binding: NativeBinding, home: string, name: string): Promise<SandboxRecord> {
  return toRecord(await callNative(() => binding.getSandbox(home, name)));
}

/** The record, or `undefined` when there is no such sandbox. */
export async function findRecord(binding: NativeBinding, home: string, name: string): Promise<SandboxRecord | undefined> {
  try {
    return await readRecord(binding, home, name);
  } catch (e) {
    if (e instanceof SandboxNotFoundError) return undefined;
    throw e;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Stop a sandbox by name: graceful stop through its agent socket (SIGTERM to the
 * guest's processes, sync, power off; killed after `timeoutMs`), or, when its runtime
 * cannot be reached, `killSandbox`. Resolves once the VM is gone; does nothing for a
 * sandbox that is not running.
 */
export async function stopByName(binding: NativeBinding, home: string, name: string, timeoutMs: number): Promise<void> {
  const rec = await readRecord(binding, home, name);
  if (!isLive(rec.status)) return;
  if (rec.status === "starting" || rec.socketPath === null) {
    // Still booting, no socket yet: its runtime cancels the boot on SIGTERM.
    await callNative(() => binding.terminateSandbox(home, name));
    return;
  }
  try {
    const socketPath = rec.socketPath;
    const client = await callNative(() => binding.AgentClient.connect(socketPath));
    try {
      await callNative(() => client.stop(timeoutMs));
    } finally {
      closeQuietly(client);
    }
  } catch (e) {
    // It may have stopped meanwhile; otherwise end it without its runtime's help.
    const now = await findRecord(binding, home, name);
    if (now === undefined || !isLive(now.status)) return;
    try {
      await callNative(() => binding.killSandbox(home, name));
    } catch {
      throw e;
    }
  }
}

/**
 * Remove a sandbox's state, retrying for up to `timeoutMs` while its runtime is still
 * letting go of it (the record turns "stopped" a moment after the VM is gone).
 * A sandbox that is already gone is fine when `missingOk`.
 */
export async function removeWhenStopped(
  binding: NativeBinding,
  home: string,
  name: string,
  opts: { timeoutMs?: number; missingOk?: boolean } = {},
): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? RELEASE_TIMEOUT_MS);
  for (;;) {
    try {
      await callNative(() => binding.removeSandbox(home, name));
      return;
    } catch (e) {
      if (e instanceof SandboxNotFoundError && opts.missingOk) return;
      if (!(e instanceof SandboxStillRunningError) || Date.now() >= deadline) throw e;
      await sleep(100);
    }
  }
}

/**
 * How the sandbox's VM ended, read from its record once the VM is gone: `exitCode`
 * (0 graceful stop or guest power-off, 137 killed, 1 crashed). Waits up to
 * `timeoutMs` for the runtime to record it; without a recorded code, a stopped
 * sandbox counts as 0 and a crashed one as 1.
 */
export async function finalExit(binding: NativeBinding, home: string, name: string, timeoutMs = RELEASE_TIMEOUT_MS): Promise<ExitStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const rec = await readRecord(binding, home, name);
    if (!isLive(rec.status)) {
      if (rec.exitCode !== null || Date.now() >= deadline) {
        const code = rec.exitCode ?? (rec.status === "crashed" ? 1 : 0);
        return { code, success: code === 0 };
      }
    } else if (Date.now() >= deadline) {
      throw new ProtocolError(`the VM of sandbox ${name} is gone but its record still says ${rec.status}`);
    }
    await sleep(100);
  }
}

/** What `ping()` resolves to (the reference's shape). */
export interface SandboxPingResult {
  readonly name: string;
  /** The round trip to the guest agent, in milliseconds, as measured by the caller. */
  readonly latencyMs: number;
}

/** What `touch()` resolves to (the reference's shape). */
export interface SandboxTouchResult {
  readonly name: string;
  /** Activity the sandbox's runtime recorded since boot (commands starting and ending, touches), this touch included. */
  readonly activitySeq: number;
}

export function pingResult(name: string, latencyMs: number): SandboxPingResult {
  return { name, latencyMs: Math.max(0, Math.round(latencyMs * 1000) / 1000) };
}

export function touchResult(name: string, activitySeq: unknown): SandboxTouchResult {
  if (typeof activitySeq !== "number" || !Number.isSafeInteger(activitySeq) || activitySeq < 1) {
    throw new ProtocolError(`touch: the runtime answered a bad activity sequence ${JSON.stringify(activitySeq)}`);
  }
  return { name, activitySeq };
}

/** Close a native client, ignoring errors (also asynchronous ones). */
export function closeQuietly(client: { close(): void | Promise<void> }): void {
  try {
    const r = client.close();
    if (r && typeof (r as Promise<void>).then === "function") (r as Promise<void>).then(undefined, () => undefined);
  } catch {
    // already closed
  }
}
