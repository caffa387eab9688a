import "./polyfill.js";
import { join } from "node:path";
import { check, msbHome, nameSchema, parseStoredConfig, timeoutMsSchema, type SandboxConfig } from "./config.js";
import { DEFAULT_STOP_TIMEOUT_MS } from "./defaults.js";
import { SandboxNotRunningError } from "./errors.js";
import { connectRecord, startExisting, type StartOptions } from "./launch.js";
import {
  closeQuietly,
  isLive,
  pingResult,
  readRecord,
  stopByName,
  touchResult,
  type SandboxPingResult,
  type SandboxRecord,
  type SandboxStatus,
  type SandboxTouchResult,
} from "./lifecycle.js";
import { modifySandbox, type ModifyOptions, type SandboxModificationPlan } from "./modify.js";
import { toSandboxMetrics, type SandboxMetrics } from "./metrics.js";
import { openLogStream, readLogs, type LogEntry, type LogReadOptions, type LogStream, type LogStreamOptions } from "./logs.js";
import { callNative, native, type NativeAgentClient } from "./native.js";
import { Snapshot } from "./snapshot.js";
// Type only (erased): sandbox.ts imports this module for Sandbox.get() and Sandbox.list().
import type { Sandbox } from "./sandbox.js";

/**
 * A lightweight handle to an existing sandbox, running or not, from
 * `Sandbox.get(name)` or `Sandbox.list()`: its status and configuration, and
 * lifecycle control, without a connection to its guest. To run commands, upgrade
 * it with {@link connect} (a running sandbox) or {@link start} (a stopped one).
 *
 * The properties are a snapshot taken when the handle was made: `status` does not
 * change by itself. {@link refresh} reads the sandbox's current state; the methods
 * always act on the current state, and update the snapshot when they read it.
 */
export class SandboxHandle {
  #rec: SandboxRecord;
  readonly #home: string;

  /** @internal Use `Sandbox.get(name)` or `Sandbox.list()`. */
  constructor(record: SandboxRecord, home: string) {
    this.#rec = record;
    this.#home = home;
  }

  /** The sandbox's name. */
  get name(): string {
    return this.#rec.name;
  }

  /** `"starting"` (booting), `"running"`, `"draining"` (finishing its commands, taking no new ones), `"paused"` (`pause()`: its vCPUs stopped), `"stopped"` or `"crashed"`, as of the snapshot. */
  get status(): SandboxStatus {
    return this.#rec.status;
  }

  /** The stored configuration, raw JSON (what {@link config} parses). */
  get configJson(): string {
    return this.#rec.configJson;
  }

  /** When the sandbox was created. */
  get createdAt(): Date {
    return new Date(this.#rec.createdAt.getTime());
  }

  /** When its record last changed (started, stopped, crashed, ...). */
  get updatedAt(): Date {
    return new Date(this.#rec.updatedAt.getTime());
  }

  /** Process id of its msb-runtime while it starts, runs or drains, else `null`. */
  get runtimePid(): number | null {
    return this.#rec.runtimePid;
  }

  /** How the VM last ended (`null` while it runs or before it ever ended): 0 graceful stop or power-off, 137 killed, 1 crashed. */
  get exitCode(): number | null {
    return this.#rec.exitCode;
  }

  /** Why the VM last ended, e.g. `"stopped"`, `"killed"`, `"idle timeout"`, `"max duration"`, `"kernel panic"`, `"runtime died"`. */
  get exitReason(): string | null {
    return this.#rec.exitReason;
  }

  /**
   * The stored configuration, parsed. Rejects with `CorruptConfigError` when it cannot
   * be read back (only this sandbox is affected: listing still works). The registry
   * password is never stored, so `registryAuth` has none.
   */
  config(): SandboxConfig {
    return parseStoredConfig(this.#rec.configJson, this.#rec.name);
  }

  /** Read the sandbox's current state into this handle. `SandboxNotFoundError` once it was removed. */
  async refresh(): Promise<this> {
    const binding = await callNative(() => native());
    this.#rec = await readRecord(binding, this.#home, this.#rec.name);
    return this;
  }

  /**
   * A full {@link Sandbox} for a running (or draining) sandbox: exec, metrics, stop...
   * It does not own the sandbox's lifecycle: `await using` only closes the connection.
   * A stopped or crashed sandbox -> `SandboxNotRunningError` (use {@link start}).
   */
  async connect(): Promise<Sandbox> {
    const binding = await callNative(() => native());
    const rec = await this.#live();
    const config = this.config();
    return connectRecord(binding, this.#home, rec.name, config, rec.runtimePid as number, rec.socketPath as string);
  }

  /** Boot the stopped sandbox again (files kept), attached to this process; `{ secrets }` as for `Sandbox.start`. */
  async start(options?: StartOptions): Promise<Sandbox> {
    const sb = await startExisting(this.name, true, options);
    await this.refresh().catch(() => undefined);
    return sb;
  }

  /** Boot the stopped sandbox again (files kept), detached; `{ secrets }` as for `Sandbox.start`. */
  async startDetached(options?: StartOptions): Promise<Sandbox> {
    const sb = await startExisting(this.name, false, options);
    await this.refresh().catch(() => undefined);
    return sb;
  }

  /**
   * Stop the sandbox gracefully (killed after `timeoutMs`, default 10 s) and resolve
   * once its VM is gone. Does nothing when it is not running.
   */
  async stop(timeoutMs: number = DEFAULT_STOP_TIMEOUT_MS): Promise<void> {
    const t = check(timeoutMsSchema, "timeoutMs", timeoutMs);
    const binding = await callNative(() => native());
    await stopByName(binding, this.#home, this.name, t);
    await this.refresh().catch(() => undefined);
  }

  /** End the VM at once, even when its runtime does not answer. Does nothing when it is not running. */
  async kill(): Promise<void> {
    const binding = await callNative(() => native());
    await callNative(() => binding.killSandbox(this.#home, this.name));
    await this.refresh().catch(() => undefined);
  }

  /**
   * Snapshot this stopped sandbox's writable disk as `name` under `$MSB_HOME/snapshots`
   * (`Snapshot.builder(name).fromSandbox(this.name).create()`). A running sandbox is
   * `SandboxStillRunningError`; stop it first.
   */
  async snapshot(name: string): Promise<Snapshot> {
    return Snapshot.builder(name).fromSandbox(this.name).create();
  }

  /** Delete the stopped sandbox and all its state. `SandboxStillRunningError` while it runs. */
  async remove(): Promise<void> {
    await removeByName(this.name);
  }

  /** A snapshot of the running sandbox's resource use, from its runtime. Stopped -> `SandboxNotRunningError`. */
  async metrics(): Promise<SandboxMetrics> {
    const binding = await callNative(() => native());
    const rec = await this.#live();
    const socketPath = rec.socketPath as string;
    const client = await callNative(() => binding.AgentClient.connect(socketPath));
    try {
      return toSandboxMetrics(await callNative(() => client.metrics()));
    } finally {
      closeQuietly(client);
    }
  }

  /**
   * Ask for a graceful stop (killed after `timeoutMs`, default 10 s) and resolve at once,
   * without waiting for the VM to end. Does nothing when it is not running.
   */
  async requestStop(timeoutMs: number = DEFAULT_STOP_TIMEOUT_MS): Promise<void> {
    const t = check(timeoutMsSchema, "timeoutMs", timeoutMs);
    const binding = await callNative(() => native());
    await this.refresh();
    const rec = this.#rec;
    if (!isLive(rec.status)) return;
    if (rec.status === "starting" || rec.socketPath === null) {
      // Still booting: its runtime cancels the boot on SIGTERM (not waited for).
      void callNative(() => binding.terminateSandbox(this.#home, rec.name)).catch(() => undefined);
      return;
    }
    await this.#control((c) => c.requestStop(t));
  }

  /** {@link stop} with an explicit timeout in milliseconds (the reference's name). */
  async stopWithTimeout(timeoutMs: number): Promise<void> {
    return this.stop(timeoutMs);
  }

  /** Ask for the VM to be killed and resolve at once, without waiting for it to end. Does nothing when it is not running. */
  async requestKill(): Promise<void> {
    const binding = await callNative(() => native());
    await this.refresh();
    const rec = this.#rec;
    if (!isLive(rec.status)) return;
    if (rec.status === "starting" || rec.socketPath === null) {
      void callNative(() => binding.killSandbox(this.#home, rec.name)).catch(() => undefined);
      return;
    }
    await this.#control((c) => c.requestKill());
  }

  /** Is the running sandbox's guest agent answering? (See `Sandbox.ping`; not activity.) Stopped -> `SandboxNotRunningError`. */
  async ping(): Promise<SandboxPingResult> {
    const t0 = performance.now();
    await this.#control((c) => c.ping(), true);
    return pingResult(this.name, performance.now() - t0);
  }

  /** Count as activity for the running sandbox's idle timeout (see `Sandbox.touch`). Stopped -> `SandboxNotRunningError`. */
  async touch(): Promise<SandboxTouchResult> {
    return touchResult(this.name, await this.#control((c) => c.touch(), true));
  }

  /** Pause the running sandbox's VM (see `Sandbox.pause`); the handle is refreshed afterwards. */
  async pause(): Promise<void> {
    await this.#control((c) => c.pause(), true);
    await this.refresh().catch(() => undefined);
  }

  /** Resume the paused sandbox's VM (see `Sandbox.resume`); the handle is refreshed afterwards. */
  async resume(): Promise<void> {
    await this.#control((c) => c.resume(), true);
    await this.refresh().catch(() => undefined);
  }

  /** Plan and apply a change to the sandbox's stored configuration (see `Sandbox.modify`); the handle is refreshed afterwards. */
  async modify(options?: ModifyOptions): Promise<SandboxModificationPlan> {
    const plan = await modifySandbox(this.name, options);
    await this.refresh().catch(() => undefined);
    return plan;
  }

  /** One request on a fresh connection to the running sandbox's runtime. */
  async #control<T>(f: (c: NativeAgentClient) => Promise<T>, mustRun = false): Promise<T | undefined> {
    const binding = await callNative(() => native());
    const rec = mustRun ? await this.#live() : this.#rec;
    const socketPath = rec.socketPath as string;
    let client: NativeAgentClient;
    try {
      client = await callNative(() => binding.AgentClient.connect(socketPath));
    } catch (e) {
      if (mustRun) throw e;
      return undefined; // it went away meanwhile: nothing to stop
    }
    try {
      return await callNative(() => f(client));
    } finally {
      closeQuietly(client);
    }
  }

  /** The current record, which must be of a running or draining sandbox. */
  async #live(): Promise<SandboxRecord> {
    await this.refresh();
    const rec = this.#rec;
    if (!isLive(rec.status) || rec.socketPath === null || rec.runtimePid === null) {
      throw new SandboxNotRunningError(`sandbox ${rec.name} is ${rec.status}`);
    }
    return rec;
  }

  /** The sandbox's logs, running or stopped (as `Sandbox.logs`). */
  async logs(options?: LogReadOptions): Promise<LogEntry[]> {
    return readLogs(join(this.#home, "sandboxes", this.name), this.name, options);
  }

  /** The sandbox's logs as a stream, running or stopped (as `Sandbox.logStream`). */
  async logStream(options?: LogStreamOptions): Promise<LogStream> {
    return openLogStream(join(this.#home, "sandboxes", this.name), this.name, options);
  }
}

/** @internal `Sandbox.remove` and `handle.remove()`: delete a stopped sandbox and all its state. */
export async function removeByName(name: string): Promise<void> {
  const n = check(nameSchema, "name", name);
  const home = msbHome();
  const binding = await callNative(() => native());
  await callNative(() => binding.removeSandbox(home, n));
}
