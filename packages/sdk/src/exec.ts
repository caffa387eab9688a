import "./polyfill.js";
import { z } from "zod";
import { check } from "./config.js";
import {
  ExecFailedError,
  ExecTimeoutError,
  InvalidConfigError,
  MicrosandboxError,
  OutputLimitError,
  ProtocolError,
  RuntimeError,
  SandboxNotRunningError,
  StdinUnavailableError,
  fromNative,
} from "./errors.js";
import { ttyDimSchema, type StdinMode } from "./exec-options.js";
import { DEFAULT_MAX_OUTPUT_BYTES } from "./limits.js";
import type { NativeExecEvent } from "./native.js";

const utf8 = new TextDecoder("utf-8");

/** The result of a finished command: exit code and everything it wrote. */
export class ExecOutput {
  readonly #code: number;
  readonly #stdout: Uint8Array;
  readonly #stderr: Uint8Array;
  #stdoutText: string | undefined;
  #stderrText: string | undefined;

  /** @internal Built by the SDK from a command's output. */
  constructor(code: number, stdout: Uint8Array, stderr: Uint8Array) {
    this.#code = code;
    this.#stdout = stdout;
    this.#stderr = stderr;
  }

  /** Exit code. A command killed by signal N reports 128 + N. */
  get code(): number {
    return this.#code;
  }

  /** `true` when the exit code is 0. */
  get success(): boolean {
    return this.#code === 0;
  }

  /** Standard output decoded as UTF-8 (invalid sequences become U+FFFD). */
  stdout(): string {
    return (this.#stdoutText ??= utf8.decode(this.#stdout));
  }

  /** Standard error decoded as UTF-8 (invalid sequences become U+FFFD). */
  stderr(): string {
    return (this.#stderrText ??= utf8.decode(this.#stderr));
  }

  /** Standard output, raw bytes. */
  stdoutBytes(): Uint8Array {
    return this.#stdout;
  }

  /** Standard error, raw bytes. */
  stderrBytes(): Uint8Array {
    return this.#stderr;
  }

  /** How the command ended: `{ code, success }` (the reference SDK's getter). */
  get status(): ExitStatus {
    return { code: this.#code, success: this.#code === 0 };
  }
}

/** One event of a running command, in the order the guest produced them. */
export type ExecEvent =
  | { kind: "started"; pid: number }
  | { kind: "stdout"; data: Uint8Array }
  | { kind: "stderr"; data: Uint8Array }
  | { kind: "exited"; code: number; signal?: number }
  /**
   * The command could not be started (the program does not exist, the cwd or user is
   * unknown, ...): the last event of its stream, as the reference SDK reports it.
   * `wait()` and `collect()` reject with {@link ExecFailedError} instead.
   */
  | { kind: "failed"; reason: string };

/** How a command ended. */
export interface ExitStatus {
  code: number;
  success: boolean;
}

function concat(chunks: Uint8Array[]): Uint8Array {
  if (chunks.length === 1) return chunks[0] as Uint8Array;
  let n = 0;
  for (const c of chunks) n += c.byteLength;
  const out = new Uint8Array(n);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.byteLength;
  }
  return out;
}

function isInt(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v);
}

/**
 * What a handle needs to act on its command's session (absent for handles built
 * from a bare event source, as in tests).
 * @internal
 */
export interface SessionControls {
  writeStdin(data: Uint8Array): Promise<void>;
  closeStdin(): Promise<void>;
  signal(n: number): Promise<void>;
  resize(rows: number, cols: number): Promise<void>;
  /** True once the sandbox's connection is gone. */
  readonly closed: boolean;
}

/** @internal How the command was started. */
export interface ExecHandleOptions {
  /** The command's id ({@link ExecHandle.id}): its session number, as a string. */
  id?: string;
  controls?: SessionControls;
  /** Where stdin comes from (default "null"). */
  stdin?: StdinMode;
  /** stdin "bytes": fed in the background, then EOF. */
  stdinBytes?: Uint8Array | null;
  tty?: boolean;
  /** Kill the command with SIGKILL after this long; the handle then rejects with ExecTimeoutError at once. */
  timeoutMs?: number | null;
  /** After a timeout or an output limit, how long to keep draining the abandoned session in the background (default KILL_GRACE_MS). */
  killGraceMs?: number;
  /**
   * `collect()` rejects with OutputLimitError (and kills the command) once stdout and
   * stderr together exceed this many bytes (default DEFAULT_MAX_OUTPUT_BYTES).
   */
  maxOutputBytes?: number;
}

/** After a timeout's (or an output limit's) SIGKILL, how long to keep draining the command's session in the background. */
export const KILL_GRACE_MS = 5_000;

/**
 * At a timeout, the call rejects once the SIGKILL was handed to the runtime (so a command
 * started next is sent after it), but never later than this after the deadline.
 */
const SIGNAL_SEND_CAP_MS = 250;

const signalSchema = z
  .number({ error: "must be an integer from 1 to 64" })
  .int({ error: "must be an integer from 1 to 64" })
  .min(1, { error: "must be an integer from 1 to 64" })
  .max(64, { error: "must be an integer from 1 to 64" });

const enc = new TextEncoder();

/**
 * A command's stdin, from {@link ExecHandle.takeStdin} (the reference SDK calls it `ExecSink`). Writes are sent in order and each
 * resolves once the guest has taken the bytes (flow control: a command that does not
 * read its stdin makes writes wait). Do not change a chunk until its write resolved.
 */
export class ExecStdin {
  readonly #controls: SessionControls;
  #tail: Promise<void> = Promise.resolve();
  #closed = false;

  /** @internal */
  constructor(controls: SessionControls) {
    this.#controls = controls;
  }

  /** Send bytes (a string is sent as UTF-8). Rejects with `StdinUnavailableError` after `close()` or once the command has exited. */
  write(data: string | Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(new StdinUnavailableError("stdin was closed"));
    let bytes: Uint8Array;
    if (typeof data === "string") bytes = enc.encode(data);
    else if (data instanceof Uint8Array) bytes = data;
    else return Promise.reject(new InvalidConfigError("data", "invalid data: stdin takes a string or a Uint8Array"));
    const p = this.#tail.then(() => (bytes.byteLength === 0 ? undefined : this.#send(bytes)));
    this.#tail = p.catch(() => undefined);
    return p;
  }

  /** End of input: the command reads EOF (on a TTY: a ^D). Waits for earlier writes. Calling it again does nothing. */
  close(): Promise<void> {
    if (this.#closed) return this.#tail;
    this.#closed = true;
    const p = this.#tail.then(() => this.#controls.closeStdin().catch((e: unknown) => this.#mapError(e)));
    this.#tail = p.catch(() => undefined);
    return p;
  }

  /** `await using stdin = handle.takeStdin()`: closed (EOF) when the scope ends. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close().catch(() => undefined);
  }

  async #send(bytes: Uint8Array): Promise<void> {
    try {
      await this.#controls.writeStdin(bytes);
    } catch (e) {
      this.#mapError(e);
    }
  }

  #mapError(e: unknown): never {
    const err = fromNative(e);
    if (err instanceof SandboxNotRunningError && !this.#controls.closed) {
      throw new StdinUnavailableError("the command has exited: its stdin is closed", { cause: err });
    }
    throw err;
  }
}

/**
 * A running command. Read its events with `for await (const ev of handle)` or
 * {@link recv}, or wait for the end with {@link wait} / {@link collect}. Events
 * are delivered once: `collect()` after some `recv()` calls gathers only the
 * output not yet received.
 *
 * Output is pulled: the guest sends more only as events are taken here, so a command
 * whose handle is not read blocks once its window (a few MiB) is full, and memory
 * stays bounded whatever it prints. Many commands may run at once on one sandbox.
 *
 * If the command cannot be started (the guest reports `failed`, e.g. the
 * program does not exist), `recv` and iteration deliver a last `{ kind: "failed",
 * reason }` event (as the reference SDK does), and `wait` and `collect` reject with
 * {@link ExecFailedError}. With a timeout, they reject with {@link ExecTimeoutError}
 * at the deadline, whatever the guest does: the command is sent SIGKILL and what it
 * still sends is drained in the background.
 */
export class ExecHandle implements AsyncIterable<ExecEvent>, AsyncDisposable {
  readonly #id: string;
  readonly #next: () => Promise<NativeExecEvent | null>;
  readonly #controls: SessionControls | undefined;
  readonly #stdinMode: StdinMode;
  readonly #tty: boolean;
  readonly #timeoutMs: number | null;
  readonly #maxOutputBytes: number;
  readonly #killGraceMs: number;
  /** The raw event being pulled, if any (an abandoned session's drain takes it over). */
  #inflight: Promise<NativeExecEvent | null> | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timedOut = false;
  /** Settles at the timeout, once the kill is on its way (the guest's answer is not awaited). */
  #deadline: Promise<"deadline"> | undefined;
  #stdinTaken = false;
  #tail: Promise<unknown> = Promise.resolve();
  #done = false;
  #failure: MicrosandboxError | undefined;
  /** The command could not be started: reported as a `failed` event, thrown by wait/collect. */
  #spawnFailure: ExecFailedError | undefined;
  #exit: ExitStatus | undefined;
  #pid: number | undefined;

  /** @internal `next` pulls the next raw event of the session (`null` at its end). */
  constructor(next: () => Promise<NativeExecEvent | null>, options: ExecHandleOptions = {}) {
    this.#id = options.id ?? `exec-${++anonymousIds}`;
    this.#next = next;
    this.#controls = options.controls;
    this.#stdinMode = options.stdin ?? "null";
    this.#tty = options.tty ?? false;
    this.#timeoutMs = options.timeoutMs ?? null;
    this.#maxOutputBytes = options.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
    this.#killGraceMs = options.killGraceMs ?? KILL_GRACE_MS;
    const controls = this.#controls;
    if (this.#timeoutMs !== null && controls) {
      let expire: (v: "deadline") => void = () => undefined;
      this.#deadline = new Promise<"deadline">((resolve) => (expire = resolve));
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        if (this.#done) return;
        this.#timedOut = true;
        // Only the host's side of the kill is waited for (the frame written to the
        // runtime), and not long: a guest busy with a fork bomb answers late or never.
        const sent = controls.signal(9).catch(() => undefined);
        let capTimer: ReturnType<typeof setTimeout> | undefined;
        const cap = new Promise<void>((resolve) => (capTimer = setTimeout(resolve, SIGNAL_SEND_CAP_MS)));
        void Promise.race([sent, cap]).then(() => {
          clearTimeout(capTimer);
          expire("deadline");
        });
      }, this.#timeoutMs);
    }
    const bytes = options.stdinBytes;
    if (this.#stdinMode === "bytes" && controls) {
      // Fed while the caller reads the output (a command may need its output read
      // before it takes more input). Failures mean the command stopped reading: its
      // exit status tells the rest.
      this.#stdinTaken = true;
      void (async () => {
        try {
          if (bytes && bytes.byteLength > 0) await controls.writeStdin(bytes);
        } finally {
          await controls.closeStdin();
        }
      })().catch(() => undefined);
    }
  }

  /**
   * This command's id: its session's number on the sandbox's connection (unique among the
   * commands and file transfers of that connection), as a string. Known at once (the
   * reference SDK's native getter is a promise: `await handle.id` works on both).
   */
  get id(): string {
    return this.#id;
  }

  /** The guest pid of the command, once the `started` event has been received. */
  get pid(): number | undefined {
    return this.#pid;
  }

  /**
   * The command's stdin, for a command started with `stdinPipe()` or `tty(true)`. It can
   * be taken once: as in the reference SDK, this returns `null` when the command has no
   * stdin pipe (stdin from /dev/null or `stdinBytes()`) and on every call after the first.
   * (`await handle.takeStdin()` works as with the reference's promise.)
   */
  takeStdin(): ExecStdin | null {
    if (!this.#controls || !(this.#stdinMode === "pipe" || this.#tty)) return null;
    if (this.#stdinTaken) return null;
    this.#stdinTaken = true;
    return new ExecStdin(this.#controls);
  }

  /** Send signal `n` (1-64, e.g. 15 for SIGTERM) to the command's process group. Does nothing once it has exited. */
  async signal(n: number): Promise<void> {
    const sig = check(signalSchema, "signal", n);
    const c = this.#requireControls("signal");
    if (this.#done) return;
    await c.signal(sig).catch((e: unknown) => {
      throw fromNative(e);
    });
  }

  /** SIGKILL to the command's process group. */
  kill(): Promise<void> {
    return this.signal(9);
  }

  /** New terminal size of a command started with `tty(true)`. */
  async resize(rows: number, cols: number): Promise<void> {
    const r = check(ttyDimSchema, "rows", rows);
    const c2 = check(ttyDimSchema, "cols", cols);
    const c = this.#requireControls("resize");
    if (!this.#tty) throw new InvalidConfigError("tty", "resize() needs a command started with tty(true)");
    if (this.#done) return;
    await c.resize(r, c2).catch((e: unknown) => {
      throw fromNative(e);
    });
  }

  #requireControls(what: string): SessionControls {
    if (!this.#controls) throw new RuntimeError(`${what}() is not available on this handle`);
    return this.#controls;
  }

  /** The next event, or `null` once the command has exited and every event was delivered. */
  recv(): Promise<ExecEvent | null> {
    // Calls are serialized: concurrent callers get consecutive events.
    const p = this.#tail.then(() => this.#recvOne());
    this.#tail = p.catch(() => undefined);
    return p;
  }

  async #recvOne(): Promise<ExecEvent | null> {
    if (this.#failure) throw this.#failure;
    if (this.#done) return null;
    if (this.#timedOut) throw await this.#timeout();
    let raw: NativeExecEvent | null | "deadline";
    try {
      const pulled = this.#pull();
      raw = this.#deadline ? await Promise.race([pulled, this.#deadline]) : await pulled;
    } catch (e) {
      if (this.#timedOut) throw await this.#timeout();
      throw this.#fail(fromNative(e));
    }
    // Past the deadline only an exit status still counts (a SIGKILL's is the timeout's).
    if (raw === "deadline" || (this.#timedOut && raw?.kind !== "exited")) throw await this.#timeout();
    if (raw === null || raw === undefined) {
      throw this.#fail(new RuntimeError("the command's session ended without an exit status (was the sandbox stopped?)"));
    }
    switch (raw.kind) {
      case "started":
        if (!isInt(raw.pid)) throw this.#fail(new ProtocolError("started event without a pid"));
        this.#pid = raw.pid;
        return { kind: "started", pid: raw.pid };
      case "stdout":
      case "stderr": {
        const d = raw.data;
        if (!(d instanceof Uint8Array)) throw this.#fail(new ProtocolError(`${raw.kind} event without data`));
        // A plain Uint8Array view of the same bytes (the addon hands out Buffers).
        const data = Object.getPrototypeOf(d) === Uint8Array.prototype ? d : new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
        return { kind: raw.kind, data };
      }
      case "exited": {
        if (!isInt(raw.code)) throw this.#fail(new ProtocolError("exited event without an exit code"));
        this.#clearTimer();
        if (this.#timedOut && (raw.signal === 9 || raw.code === 137)) {
          throw this.#fail(new ExecTimeoutError(this.#timeoutMs as number));
        }
        this.#exit = { code: raw.code, success: raw.code === 0 };
        this.#done = true;
        return isInt(raw.signal) ? { kind: "exited", code: raw.code, signal: raw.signal } : { kind: "exited", code: raw.code };
      }
      case "failed": {
        // The last event of the session: delivered (the reference SDK's shape), then the
        // stream ends; wait() and collect() throw the typed error.
        const reason = typeof raw.reason === "string" && raw.reason !== "" ? raw.reason : "unknown reason";
        this.#clearTimer();
        this.#spawnFailure = new ExecFailedError(reason);
        this.#done = true;
        return { kind: "failed", reason };
      }
      default:
        throw this.#fail(new ProtocolError(`unknown exec event kind ${JSON.stringify((raw as { kind: unknown }).kind)}`));
    }
  }

  /** The next raw event, remembered while it is on its way. */
  #pull(): Promise<NativeExecEvent | null> {
    const p = this.#next();
    this.#inflight = p;
    const done = () => {
      if (this.#inflight === p) this.#inflight = undefined;
    };
    p.then(done, done);
    return p;
  }

  /**
   * Give up on the session (the handle has already failed): pull and drop what the
   * guest still sends, so the session ends and its flow-control credit returns, for
   * up to the kill grace period, in the background.
   */
  #drainInBackground(): void {
    const until = Date.now() + this.#killGraceMs;
    const first = this.#inflight ?? this.#next();
    void (async () => {
      for (let p = first; ; p = this.#next()) {
        const ev = await p;
        if (ev === null || ev === undefined || ev.kind === "exited" || ev.kind === "failed") return;
        if (Date.now() >= until) return;
      }
    })().catch(() => undefined);
  }

  /** The timeout fired: reject (once the kill is on its way) and drop the rest of the session. */
  async #timeout(): Promise<MicrosandboxError> {
    await this.#deadline;
    if (this.#failure) return this.#failure;
    const err = this.#fail(new ExecTimeoutError(this.#timeoutMs as number));
    this.#drainInBackground();
    return err;
  }

  /** `collect()` went past its limit: kill the command, reject, drop the rest of its output. */
  #overLimit(): MicrosandboxError {
    const err = this.#fail(new OutputLimitError(this.#maxOutputBytes));
    this.#controls?.signal(9).catch(() => undefined);
    this.#drainInBackground();
    return err;
  }

  #clearTimer(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  #fail(e: MicrosandboxError): MicrosandboxError {
    this.#clearTimer();
    this.#failure = e;
    this.#done = true;
    return e;
  }

  /** Wait for the command to exit, discarding output not yet received. */
  async wait(): Promise<ExitStatus> {
    while ((await this.recv()) !== null);
    return this.#exitStatus();
  }

  /**
   * Wait for the command to exit and gather its (remaining) output. Once stdout and
   * stderr together exceed the handle's `maxOutputBytes` (default 64 MiB,
   * {@link DEFAULT_MAX_OUTPUT_BYTES}), the command is killed (SIGKILL) and this rejects
   * with {@link OutputLimitError}; iterate the handle instead to read unbounded output.
   */
  async collect(): Promise<ExecOutput> {
    const out: Uint8Array[] = [];
    const err: Uint8Array[] = [];
    let total = 0;
    for (let ev = await this.recv(); ev !== null; ev = await this.recv()) {
      if (ev.kind !== "stdout" && ev.kind !== "stderr") continue;
      total += ev.data.byteLength;
      if (total > this.#maxOutputBytes) throw this.#overLimit();
      (ev.kind === "stdout" ? out : err).push(ev.data);
    }
    return new ExecOutput(this.#exitStatus().code, concat(out), concat(err));
  }

  #exitStatus(): ExitStatus {
    if (this.#exit === undefined) throw this.#failure ?? this.#spawnFailure ?? new RuntimeError("the command has no exit status");
    return { ...this.#exit };
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ExecEvent, void, undefined> {
    for (let ev = await this.recv(); ev !== null; ev = await this.recv()) yield ev;
  }

  /** `await using h = await sb.execStream(...)`: a command still running when the scope ends is killed (SIGKILL). */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#done || !this.#controls) return;
    await this.signal(9).catch(() => undefined);
  }
}

/** The reference SDK's name of {@link ExecStdin}. */
export const ExecSink = ExecStdin;
/** The reference SDK's name of {@link ExecStdin}. */
export type ExecSink = ExecStdin;

let anonymousIds = 0;
