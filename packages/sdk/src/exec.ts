import "./polyfill.js";
import { ExecFailedError, MicrosandboxError, ProtocolError, RuntimeError, fromNative } from "./errors.js";
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
}

/** One event of a running command, in the order the guest produced them. */
export type ExecEvent =
  | { kind: "started"; pid: number }
  | { kind: "stdout"; data: Uint8Array }
  | { kind: "stderr"; data: Uint8Array }
  | { kind: "exited"; code: number; signal?: number };

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
 * A running command. Read its events with `for await (const ev of handle)` or
 * {@link recv}, or wait for the end with {@link wait} / {@link collect}. Events
 * are delivered once: `collect()` after some `recv()` calls gathers only the
 * output not yet received.
 *
 * If the command cannot be started (the guest reports `failed`, e.g. the
 * program does not exist), `recv`, iteration, `wait` and `collect` reject with
 * {@link ExecFailedError}.
 */
export class ExecHandle implements AsyncIterable<ExecEvent> {
  readonly #next: () => Promise<NativeExecEvent | null>;
  #tail: Promise<unknown> = Promise.resolve();
  #done = false;
  #failure: MicrosandboxError | undefined;
  #exit: ExitStatus | undefined;
  #pid: number | undefined;

  /** @internal `next` pulls the next raw event of the session (`null` at its end). */
  constructor(next: () => Promise<NativeExecEvent | null>) {
    this.#next = next;
  }

  /** The guest pid of the command, once the `started` event has been received. */
  get pid(): number | undefined {
    return this.#pid;
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
    let raw: NativeExecEvent | null;
    try {
      raw = await this.#next();
    } catch (e) {
      throw this.#fail(fromNative(e));
    }
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
        this.#exit = { code: raw.code, success: raw.code === 0 };
        this.#done = true;
        return isInt(raw.signal) ? { kind: "exited", code: raw.code, signal: raw.signal } : { kind: "exited", code: raw.code };
      }
      case "failed":
        throw this.#fail(new ExecFailedError(typeof raw.reason === "string" && raw.reason !== "" ? raw.reason : "unknown reason"));
      default:
        throw this.#fail(new ProtocolError(`unknown exec event kind ${JSON.stringify((raw as { kind: unknown }).kind)}`));
    }
  }

  #fail(e: MicrosandboxError): MicrosandboxError {
    this.#failure = e;
    this.#done = true;
    return e;
  }

  /** Wait for the command to exit, discarding output not yet received. */
  async wait(): Promise<ExitStatus> {
    while ((await this.recv()) !== null);
    return this.#exitStatus();
  }

  /** Wait for the command to exit and gather its (remaining) output. */
  async collect(): Promise<ExecOutput> {
    const out: Uint8Array[] = [];
    const err: Uint8Array[] = [];
    for (let ev = await this.recv(); ev !== null; ev = await this.recv()) {
      if (ev.kind === "stdout") out.push(ev.data);
      else if (ev.kind === "stderr") err.push(ev.data);
    }
    return new ExecOutput(this.#exitStatus().code, concat(out), concat(err));
  }

  #exitStatus(): ExitStatus {
    if (this.#exit === undefined) throw this.#failure ?? new RuntimeError("the command has no exit status");
    return { ...this.#exit };
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ExecEvent, void, undefined> {
    for (let ev = await this.recv(); ev !== null; ev = await this.recv()) yield ev;
  }
}
