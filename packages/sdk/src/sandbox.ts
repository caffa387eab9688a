import "./polyfill.js";
import { SandboxBuilder } from "./builder.js";
import { check, cmdSchema, copyConfig, msbHome, nameSchema, timeoutMsSchema, type SandboxConfig } from "./config.js";
import { DEFAULT_SHELL, DEFAULT_STOP_TIMEOUT_MS } from "./defaults.js";
import { fromNative, InvalidConfigError, SandboxDrainingError, SandboxNotFoundError, SandboxNotRunningError } from "./errors.js";
import { ExecHandle, type ExecOutput, type ExitStatus, type SessionControls } from "./exec.js";
import { buildExecOptions, resolveExecOptions, withLeadingArgs, type ExecOptionsInput } from "./exec-options.js";
import { SandboxFs } from "./fs.js";
import { warmup, type WarmupOptions, type WarmupResult } from "./warmup.js";
import { forkSandbox, type ForkOptions } from "./fork.js";
import { SandboxHandle, removeByName } from "./handle.js";
import { checkScript } from "./input-limits.js";
import { provideSandbox, startExisting, type StartOptions } from "./launch.js";
import {
  closeQuietly,
  finalExit,
  pingResult,
  readRecord,
  removeWhenStopped,
  stopByName,
  toRecord,
  touchResult,
  type SandboxPingResult,
  type SandboxTouchResult,
} from "./lifecycle.js";
import { asSandboxList, listSandboxPage, type SandboxList, type SandboxListBuilder, type SandboxPage } from "./list.js";
import { MetricsStream, toSandboxMetrics, type SandboxMetrics } from "./metrics.js";
import { modifySandbox, type ModifyOptions, type SandboxModificationPlan } from "./modify.js";
import { openLogStream, readLogs, type LogEntry, type LogReadOptions, type LogStream, type LogStreamOptions } from "./logs.js";
import { callNative, native, type NativeAgentClient, type NativeRuntimeInfo } from "./native.js";

type State = "running" | "stopping" | "stopped" | "closed";

/**
 * A running sandbox: a microVM with its own kernel, reached through its guest
 * agent. Supports `await using`: leaving the scope stops the VM when this
 * handle owns its lifecycle (attached mode), and otherwise only closes this
 * handle's connection.
 */
export class Sandbox implements AsyncDisposable {
  /** The sandbox's unique name. */
  readonly name: string;
  /** @internal Process id of this sandbox's msb-runtime (tests and tooling). */
  readonly runtimePid: number;
  /** @internal Host directory of this sandbox's state (`$MSB_HOME/sandboxes/<name>`). */
  readonly sandboxDir: string;

  readonly #config: SandboxConfig;
  readonly #client: NativeAgentClient;
  readonly #home: string;
  #ownsLifecycle: boolean;
  #state: State = "running";
  #draining = false;
  /** kill() or requestKill() was called (an ephemeral sandbox's exit status, which is not kept). */
  #killed = false;
  #stopping: Promise<void> | undefined;
  #waiting: Promise<void> | undefined;

  /** @internal Use {@link Sandbox.builder}, {@link Sandbox.start} or `handle.connect()`. */
  constructor(config: SandboxConfig, info: NativeRuntimeInfo, client: NativeAgentClient, ownsLifecycle: boolean, home: string = msbHome()) {
    this.name = config.name;
    this.#ownsLifecycle = ownsLifecycle;
    this.runtimePid = info.pid;
    this.sandboxDir = info.sandboxDir;
    this.#config = config;
    this.#client = client;
    this.#home = home;
  }

  /** Start configuring a sandbox called `name` (unique; 1-63 of `[A-Za-z0-9_.-]`, starting with a letter or digit). */
  static builder(name: string): SandboxBuilder {
    return new SandboxBuilder(name);
  }

  /** A handle to an existing sandbox, running or not. Unknown name -> `SandboxNotFoundError`. */
  static async get(name: string): Promise<SandboxHandle> {
    const n = check(nameSchema, "name", name);
    const home = msbHome();
    const binding = await callNative(() => native());
    return new SandboxHandle(await readRecord(binding, home, n), home);
  }

  /**
   * Every sandbox in `$MSB_HOME`: running, draining, stopped and crashed ones, by name.
   * An array that is also a {@link SandboxPage} (`.sandboxes`, the only page: no
   * `nextCursor`), so both this SDK's and the reference SDK's callers read it.
   */
  static async list(): Promise<SandboxList> {
    const home = msbHome();
    const binding = await callNative(() => native());
    const records = await callNative(() => binding.listSandboxes(home));
    return asSandboxList(records.map((r) => new SandboxHandle(toRecord(r), home)));
  }

  /**
   * One page of sandboxes, newest first, filtered by labels (all must match):
   * `Sandbox.listWith(l => l.label("team", "a").limit(10))`. Continue with
   * `l.cursor(page.nextCursor)`; the last page has no `nextCursor`.
   */
  static async listWith(configure: (l: SandboxListBuilder) => SandboxListBuilder | void): Promise<SandboxPage> {
    return listSandboxPage(configure);
  }

  /**
   * Delete a stopped sandbox and all its state (configuration, disk, logs). Rejects with
   * `SandboxStillRunningError` while it runs and `SandboxNotFoundError` for an unknown name.
   */
  static async remove(name: string): Promise<void> {
    return removeByName(name);
  }

  /**
   * Boot a stopped (or crashed) sandbox again from its stored configuration, with the
   * files it wrote kept, in attached mode (it stops when this process exits).
   * Unknown name -> `SandboxNotFoundError`; a running one -> `SandboxStillRunningError`.
   * Secret values are never stored: give them again, `{ secrets: { API_KEY: key } }`
   * (a secret left out has its placeholder blocked; an env var that is not one of the
   * sandbox's secrets -> `InvalidConfigError`).
   */
  /**
   * Make sure a memory template exists for sandboxes of this shape (image, cpus, memory,
   * network on/off), so that their `create()` restores a booted guest instead of booting
   * a kernel: a throwaway sandbox of that shape is booted (cold, saving the template) and
   * removed. Resolves to the template's key and whether this call made it.
   */
  static async warmup(options?: WarmupOptions): Promise<WarmupResult> {
    return warmup((n) => Sandbox.builder(n), options);
  }

  static async start(name: string, options?: StartOptions): Promise<Sandbox> {
    return startExisting(name, true, options);
  }

  /** As {@link Sandbox.start}, in detached mode: the sandbox outlives this process. */
  static async startDetached(name: string, options?: StartOptions): Promise<Sandbox> {
    return startExisting(name, false, options);
  }

  /**
   * `true` when this handle owns the VM's lifecycle (attached mode: the VM stops
   * when this process exits, and `await using` stops it); `false` for detached
   * sandboxes, after {@link detach}, and for handles from `connect()`.
   */
  get ownsLifecycle(): boolean {
    return this.#ownsLifecycle;
  }

  /** The validated configuration the sandbox runs with (an OCI image's defaults merged in). */
  config(): SandboxConfig {
    return copyConfig(this.#config);
  }

  /** `true` until the sandbox was seen to stop (or this handle was stopped, killed or disposed). */
  get running(): boolean {
    if (this.#state === "running" && this.#client.closed) this.#finish();
    return this.#state === "running";
  }

  /**
   * Run `cmd` with `args` and wait for it to finish. Options may follow, as an object
   * (`{ cwd, user, env, timeoutMs, stdin, tty, rlimits, maxOutputBytes }`) or a callback
   * (see {@link execWith}).
   */
  async exec(cmd: string, args: Iterable<string> = [], options?: ExecOptionsInput): Promise<ExecOutput> {
    if (options === undefined) return (await this.execStream(cmd, args)).collect();
    return this.execWith(cmd, () => withLeadingArgs(args, options));
  }

  /**
   * Run `cmd` with options and wait for it to finish:
   * `sb.execWith("ls", b => b.args(["-l"]).cwd("/tmp").env("K", "V").timeout(5000))`.
   * With a timeout, a command still running is killed and the call rejects with
   * `ExecTimeoutError`. `stdinPipe()` makes no sense here (use {@link execStreamWith}).
   */
  async execWith(cmd: string, configure: ExecOptionsInput): Promise<ExecOutput> {
    const b = buildExecOptions(configure);
    if (b.raw.stdin === "pipe") {
      throw new InvalidConfigError("stdin", "invalid stdin: stdinPipe() needs a handle to write to: use execStreamWith() and takeStdin(), or stdinBytes()");
    }
    return (await this.execStreamWith(cmd, () => b)).collect();
  }

  /**
   * Run `script` with the sandbox's shell (`/bin/sh -c script` unless `.shell()` chose
   * another) and wait for it to finish. Per-call options may follow, as an object
   * (`sb.shell("make", { cwd: "/src", env: { CC: "cc" }, timeoutMs: 60_000 })`) or a
   * callback (as {@link shellWith}).
   */
  async shell(script: string, options?: ExecOptionsInput): Promise<ExecOutput> {
    if (options !== undefined) return this.shellWith(script, options);
    return (await this.shellStream(script)).collect();
  }

  /**
   * {@link shell} with options (see {@link execWith}):
   * `sb.shellWith("make", b => b.cwd("/src").timeout(60_000).maxOutputBytes(1 << 20))`.
   * Arguments given with `b.args()` follow the script (`$0`, `$1`, ...).
   */
  async shellWith(script: string, configure: ExecOptionsInput): Promise<ExecOutput> {
    const s = check(cmdSchema, "script", script);
    checkScript(s);
    const b = buildExecOptions(configure);
    b.raw.args.unshift("-c", s);
    return this.execWith(this.#config.shell ?? DEFAULT_SHELL, () => b);
  }

  /**
   * Start `cmd` with `args` and return a handle that streams its events as they come.
   * Rejects with `SandboxDrainingError` while the sandbox drains and
   * `SandboxNotRunningError` once it stopped.
   */
  async execStream(cmd: string, args: Iterable<string> = [], options?: ExecOptionsInput): Promise<ExecHandle> {
    if (options !== undefined) return this.execStreamWith(cmd, () => withLeadingArgs(args, options));
    return this.execStreamWith(cmd, (b) => b.args(args));
  }

  /**
   * Start `cmd` with options (see {@link execWith}) and return its {@link ExecHandle}:
   * events, `takeStdin()` (with `stdinPipe()` or `tty(true)`), `signal(n)`, `kill()`,
   * `resize(rows, cols)` (TTY), `wait()`, `collect()`.
   */
  async execStreamWith(cmd: string, configure?: ExecOptionsInput): Promise<ExecHandle> {
    const o = resolveExecOptions(cmd, buildExecOptions(configure));
    this.#ensureRunning();
    if (this.#draining) throw new SandboxDrainingError(`sandbox ${this.name} is draining: it takes no new commands`);
    const client = this.#client;
    const session = await this.#call(() => client.exec(o.request));
    const controls: SessionControls = {
      writeStdin: (data) => client.writeStdin(session, Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength)),
      closeStdin: () => client.closeStdin(session),
      signal: (n) => client.signal(session, n),
      resize: (rows, cols) => client.resize(session, rows, cols),
      get closed() {
        return client.closed;
      },
    };
    return new ExecHandle(() => client.next(session), {
      id: String(session),
      controls,
      stdin: o.stdin,
      stdinBytes: o.stdinBytes,
      tty: o.request.tty !== null,
      timeoutMs: o.timeoutMs,
      maxOutputBytes: o.maxOutputBytes,
    });
  }

  /** Start `script` with the sandbox's shell and return its {@link ExecHandle}; options as for {@link shell}. */
  async shellStream(script: string, options?: ExecOptionsInput): Promise<ExecHandle> {
    if (options !== undefined) return this.shellStreamWith(script, options);
    const s = check(cmdSchema, "script", script);
    checkScript(s);
    return this.execStream(this.#config.shell ?? DEFAULT_SHELL, ["-c", s]);
  }

  /** {@link shellStream} with options (see {@link execStreamWith}); arguments given with `b.args()` follow the script. */
  async shellStreamWith(script: string, configure?: ExecOptionsInput): Promise<ExecHandle> {
    const s = check(cmdSchema, "script", script);
    checkScript(s);
    const b = buildExecOptions(configure);
    b.raw.args.unshift("-c", s);
    return this.execStreamWith(this.#config.shell ?? DEFAULT_SHELL, () => b);
  }

  /**
   * Files in the sandbox: read, write, list, stat, copy to and from the host...
   * See {@link SandboxFs}.
   */
  fs(): SandboxFs {
    return new SandboxFs({
      client: () => {
        this.#ensureRunning();
        return this.#client;
      },
      call: (f) => this.#call(f),
      run: (cmd, args) => this.#runAsRoot(cmd, args),
    });
  }

  /** A helper command as root, whatever the sandbox's default user (fs fallbacks). */
  async #runAsRoot(cmd: string, args: string[]): Promise<ExecOutput> {
    this.#ensureRunning();
    const client = this.#client;
    const o = resolveExecOptions(cmd, buildExecOptions((b) => b.args(args).user("0")));
    const session = await this.#call(() => client.exec(o.request));
    return new ExecHandle(() => client.next(session)).collect();
  }

  /**
   * Shut the VM down gracefully (guest processes get SIGTERM, disks are synced, the VM
   * powers off) and resolve once it is gone. After `timeoutMs` (a positive integer,
   * default 10 s) the VM is killed. Calling it again, or after {@link kill}, does nothing.
   */
  async stop(timeoutMs: number = DEFAULT_STOP_TIMEOUT_MS): Promise<void> {
    const t = check(timeoutMsSchema, "timeoutMs", timeoutMs);
    if (this.#state === "stopped") return;
    if (this.#state === "closed") this.#ensureRunning();
    if (this.#stopping === undefined) {
      this.#state = "stopping";
      const client = this.#client;
      this.#stopping = callNative(() => client.stop(t)).then(
        () => this.#finish(),
        (e: unknown) => {
          if (client.closed) {
            // The VM went away on its own meanwhile: stopped is stopped.
            this.#finish();
            return;
          }
          // The VM may still be reachable: the handle stays usable (for kill()).
          if (this.#state === "stopping") this.#state = "running";
          this.#stopping = undefined;
          throw e;
        },
      );
    }
    return this.#stopping;
  }

  /** {@link stop}, then how the VM ended: `code` 0 for a graceful stop (137 when it had to be killed). */
  async stopAndWait(timeoutMs: number = DEFAULT_STOP_TIMEOUT_MS): Promise<ExitStatus> {
    await this.stop(timeoutMs);
    return this.#exitStatus();
  }

  /**
   * Wait until the VM ends on its own (the guest powers off, a drain, the idle timeout or
   * max duration, `kill` from elsewhere, a crash), without stopping it, and resolve to how
   * it ended: `code` 0 for a graceful end, 137 killed, 1 crashed.
   */
  async wait(): Promise<ExitStatus> {
    if (this.#state === "closed") this.#ensureRunning();
    if (this.#state === "running" || this.#state === "stopping") {
      if (this.#waiting === undefined) {
        const client = this.#client;
        this.#waiting = (async () => {
          try {
            await callNative(() => client.wait());
          } catch (e) {
            if (!client.closed) throw e;
          }
          this.#finish();
        })();
        this.#waiting.catch(() => (this.#waiting = undefined));
      }
      await this.#waiting;
    }
    return this.#exitStatus();
  }

  /**
   * Ask for a graceful stop (killed after `timeoutMs`, default 10 s) and resolve at once,
   * without waiting for the VM to end ({@link wait} waits). Does nothing once stopped.
   */
  async requestStop(timeoutMs: number = DEFAULT_STOP_TIMEOUT_MS): Promise<void> {
    const t = check(timeoutMsSchema, "timeoutMs", timeoutMs);
    if (this.#state === "stopped") return;
    if (this.#state === "closed") this.#ensureRunning();
    const client = this.#client;
    if (client.closed) return this.#finish();
    await this.#call(() => client.requestStop(t)).catch((e: unknown) => {
      if (!client.closed) throw e;
    });
    if (this.#state === "running") this.#state = "stopping";
  }

  /** {@link stop} with an explicit timeout in milliseconds (the reference's name). */
  async stopWithTimeout(timeoutMs: number): Promise<void> {
    return this.stop(timeoutMs);
  }

  /** Ask for the VM to be killed and resolve at once, without waiting for it to end. */
  async requestKill(): Promise<void> {
    if (this.#state === "stopped") return;
    if (this.#state === "closed") this.#ensureRunning();
    const client = this.#client;
    if (client.closed) return this.#finish();
    this.#killed = true;
    await this.#call(() => client.requestKill()).catch((e: unknown) => {
      if (!client.closed) throw e;
    });
    if (this.#state === "running") this.#state = "stopping";
  }

  /**
   * Is the guest agent answering? One round trip to it through the sandbox's runtime;
   * `latencyMs` is the round trip as measured here. Does not count as activity for the
   * idle timeout (see {@link touch}).
   */
  async ping(): Promise<SandboxPingResult> {
    this.#ensureRunning();
    const client = this.#client;
    const t0 = performance.now();
    await this.#call(() => client.ping());
    return pingResult(this.name, performance.now() - t0);
  }

  /**
   * Count as activity for the idle timeout: its clock starts again now, as when a command
   * ends. `activitySeq` counts the activity the runtime recorded since boot (commands
   * starting and ending, touches), this touch included.
   */
  async touch(): Promise<SandboxTouchResult> {
    this.#ensureRunning();
    const client = this.#client;
    return touchResult(this.name, await this.#call(() => client.touch()));
  }

  /**
   * Pause the VM: its vCPUs stop (it uses no CPU time), its memory, disks, network
   * connections and running commands stay as they are, and the record's status is
   * `"paused"`. While paused, new commands, file operations, `ping()` and `metrics()` are
   * refused at once with {@link SandboxPausedError} (they do not wait); `stop()` and
   * `kill()` still work (a stop resumes the guest so that it shuts down cleanly), and the
   * idle timeout does not run. Pausing a paused sandbox does nothing.
   */
  async pause(): Promise<void> {
    this.#ensureRunning();
    const client = this.#client;
    await this.#call(() => client.pause());
  }

  /** Let a paused VM run again (status back to `"running"`); its clock, which stood still, is set to the host's. Resuming a running sandbox does nothing. */
  async resume(): Promise<void> {
    this.#ensureRunning();
    const client = this.#client;
    await this.#call(() => client.resume());
  }

  /**
   * Fork this running sandbox: a new sandbox named `name` with this one's memory (its
   * processes, as they are) and disk at this moment, independent from then on: its own
   * copy of the writable disk, its own network stack, its hostname its name, its RNG
   * reseeded and its clock set before any command of it runs. This sandbox's vCPUs stop
   * for the time of the copy (tens to hundreds of milliseconds) and it then runs on.
   * Commands of this sandbox in flight at the fork go on here; in the fork, their
   * processes exist but nobody reads their output. Attached unless `{ detached: true }`.
   *
   * Refused with `UnsupportedError` for a sandbox with volumes, published ports or
   * secrets; `SandboxAlreadyExistsError` when the name is taken.
   */
  async fork(name: string, options?: ForkOptions): Promise<Sandbox> {
    this.#ensureRunning();
    const client = this.#client;
    return forkSandbox(this.#config, (f) => this.#call(() => f(client)), name, options);
  }

  /**
   * Plan a change to the sandbox's stored configuration and apply it (`dryRun: true`:
   * only plan). See {@link ModifyOptions}: cpus / memory (within `maxCpus` / `maxMemory`),
   * env, labels, workdir, idle timeout. Nothing changes in a running VM: a change to a
   * running sandbox "requires restart" and is refused with `SandboxStillRunningError`
   * unless `policy` is `"next_start"` (stored for the next start; {@link config} keeps
   * showing what this VM booted with) or `"restart"` (stopped, stored, started again
   * detached). Conflicts (a bound exceeded, a field both set and removed) reject with
   * `InvalidConfigError` naming the option.
   */
  async modify(options?: ModifyOptions): Promise<SandboxModificationPlan> {
    return modifySandbox(this.name, options);
  }

  /** Terminate the VM at once, without a graceful shutdown. Does nothing once the sandbox is stopped. */
  async kill(): Promise<void> {
    if (this.#state === "stopped") return;
    if (this.#state === "closed") this.#ensureRunning();
    this.#killed = true;
    const client = this.#client;
    try {
      await callNative(() => client.kill());
    } catch (e) {
      // The runtime does not answer: end the VM without it.
      const binding = await callNative(() => native());
      await callNative(() => binding.killSandbox(this.#home, this.name)).catch(() => {
        throw e;
      });
    }
    this.#finish();
  }

  /**
   * Graceful drain: commands already running finish, new ones are rejected with
   * `SandboxDrainingError`, and the sandbox stops once the last one ended (its status is
   * "draining" meanwhile). Resolves when the drain has begun; {@link wait} waits for the end.
   */
  async drain(): Promise<void> {
    this.#ensureRunning();
    const client = this.#client;
    await this.#call(() => client.drain());
    this.#draining = true;
  }

  /**
   * Let the sandbox outlive this process: this handle no longer owns its lifecycle, so
   * neither the end of this process nor `await using` stops it. Reconnect from
   * anywhere with `Sandbox.get(name)`. Does nothing for a sandbox this handle does not own.
   */
  async detach(): Promise<void> {
    if (!this.#ownsLifecycle) return;
    this.#ensureRunning();
    const client = this.#client;
    await this.#call(() => client.detach());
    const binding = await callNative(() => native());
    await callNative(() => binding.releaseAttachment(this.runtimePid));
    this.#ownsLifecycle = false;
  }

  /** {@link drain} (the reference's name: it resolves once the drain has begun). */
  async requestDrain(): Promise<void> {
    return this.drain();
  }

  /** Stop the sandbox if it runs, then delete it and all its state from disk. */
  async removePersisted(): Promise<void> {
    if (this.#state !== "stopped") {
      if (this.#state === "closed") {
        const binding = await callNative(() => native());
        await stopByName(binding, this.#home, this.name, DEFAULT_STOP_TIMEOUT_MS);
      } else {
        try {
          await this.stop();
        } catch {
          await this.kill();
        }
      }
    }
    const binding = await callNative(() => native());
    // An ephemeral sandbox is gone already: its runtime removed it.
    await removeWhenStopped(binding, this.#home, this.name, { missingOk: this.#config.ephemeral === true });
  }

  /** A snapshot of the sandbox's resource use (see {@link SandboxMetrics} for each field). */
  async metrics(): Promise<SandboxMetrics> {
    this.#ensureRunning();
    const client = this.#client;
    return toSandboxMetrics(await this.#call(() => client.metrics()));
  }

  /**
   * Metrics every `intervalMs` milliseconds (a positive integer): an RxJS Observable,
   * also usable with `for await`. Sampling starts on subscribe (first sample at once),
   * stops on unsubscribe (or when the `for await` loop ends), and the stream errors
   * with `SandboxNotRunningError` when the sandbox stops.
   */
  metricsStream(intervalMs: number): MetricsStream {
    const t = check(timeoutMsSchema, "intervalMs", intervalMs);
    return new MetricsStream(() => this.metrics(), t);
  }

  /**
   * Leaving an `await using` scope: stops the sandbox when this handle owns its
   * lifecycle; otherwise only closes this handle's connection (the sandbox keeps
   * running). Never rejects.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#state === "stopped" || this.#state === "closed") return;
    if (!this.#ownsLifecycle) {
      this.#state = "closed";
      closeQuietly(this.#client);
      return;
    }
    try {
      await this.stop();
    } catch {
      try {
        await this.kill();
      } catch {
        // Neither path reaches the VM: its runtime is gone already (and an
        // attached runtime ends the VM when this process exits in any case).
        this.#finish();
      }
    }
  }

  /** Run a call on the agent connection; an error after the VM went away says so. */
  async #call<T>(f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      const err = fromNative(e);
      if (this.#client.closed && !(err instanceof SandboxDrainingError)) {
        this.#finish();
        if (!(err instanceof SandboxNotRunningError)) {
          throw new SandboxNotRunningError(`sandbox ${this.name} has stopped`, { cause: err });
        }
      }
      throw err;
    }
  }

  async #exitStatus(): Promise<ExitStatus> {
    const binding = await callNative(() => native());
    try {
      return await finalExit(binding, this.#home, this.name);
    } catch (e) {
      // An ephemeral sandbox's runtime removed it, exit code and all: what this handle
      // did is all that is known (137 after a kill, else a graceful end).
      if (e instanceof SandboxNotFoundError && this.#config.ephemeral === true) {
        const code = this.#killed ? 137 : 0;
        return { code, success: code === 0 };
      }
      throw e;
    }
  }

  #finish(): void {
    if (this.#state === "stopped") return;
    this.#state = "stopped";
    this.#stopping = undefined;
    closeQuietly(this.#client);
  }

  #ensureRunning(): void {
    if (this.#state === "running" && this.#client.closed) this.#finish();
    switch (this.#state) {
      case "running":
        return;
      case "closed":
        throw new SandboxNotRunningError(
          `this handle to sandbox ${this.name} was closed (the sandbox may still run: Sandbox.get("${this.name}") reconnects)`,
        );
      default:
        throw new SandboxNotRunningError(`sandbox ${this.name} is ${this.#state === "stopping" ? "stopping" : "stopped"}`);
    }
  }

  /**
   * The sandbox's logs (read from its directory on the host, no guest traffic): the
   * commands' output (`stdout`, `stderr`, `output` for a TTY) and, with `sources`
   * naming `"system"` (or `"all"`), markers and the guest's console. Time order;
   * `{ tail, since, until, sources }` filter. See {@link LogEntry}.
   */
  async logs(options?: LogReadOptions): Promise<LogEntry[]> {
    return readLogs(this.sandboxDir, this.name, options);
  }

  /**
   * The logs as a stream: `{ follow: true }` keeps it open for new entries; `fromCursor`
   * (an entry's `cursor`) resumes right after that entry (`InvalidCursorError` for a
   * cursor of another sandbox). See {@link LogStream}.
   */
  async logStream(options?: LogStreamOptions): Promise<LogStream> {
    return openLogStream(this.sandboxDir, this.name, options);
  }
}

// launch.ts makes every Sandbox (see provideSandbox there for why it is handed the class).
provideSandbox(Sandbox);
