/**
 * A sandbox's logs, read from its directory on the host (`$MSB_HOME/sandboxes/<name>`),
 * running or stopped, without talking to it: `sb.logs()`, `handle.logs()`,
 * `logStream()` and `msb logs`.
 *
 * Sources (the reference SDK's `LogSource`):
 * - `stdout` / `stderr`: the commands' output in pipe mode, `output`: a TTY command's
 *   one merged stream. msb-runtime records them in `exec.log` (crates/runtime/src/exec_log.rs:
 *   JSON lines, rotated at 16 MiB keeping `exec.log.1`).
 * - `system`: markers in `exec.log` (sandbox started/stopped, each exec's command and how
 *   it ended, entries the recorder had to drop) and the guest's serial console
 *   (`console.log`: kernel messages; its timestamps are estimated from the kernel's
 *   `[seconds]` prefix and the file's birth and modification times).
 *
 * A cursor is opaque to callers: it encodes the sandbox (name and the id of its log, so
 * a cursor of another sandbox, or of an earlier sandbox of the same name, is refused with
 * `InvalidCursorError`), the exec log file's generation and the byte offset after the
 * entry, and the console's identity and offset. A last line still being written (no
 * newline yet) is left for the next read.
 */
import { constants } from "node:fs";
import { open, stat, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { check, nameSchema } from "./config.js";
import { InvalidConfigError, InvalidCursorError, MicrosandboxError, MissedRotationError, RuntimeError, SandboxNotFoundError } from "./errors.js";

/** Where an entry came from. */
export type LogSource = "stdout" | "stderr" | "output" | "system";
/** A source filter: a source, or `"all"` for every one. */
export type LogReadSource = LogSource | "all";

export const LOG_SOURCES: readonly LogSource[] = ["stdout", "stderr", "output", "system"];
/** What `logs()` and `logStream()` read when `sources` is not given: the programs' output. */
export const DEFAULT_LOG_SOURCES: readonly LogSource[] = ["stdout", "stderr", "output"];

/** The files, in the sandbox's directory. */
export const EXEC_LOG_FILE = "exec.log";
export const EXEC_LOG_PREVIOUS_FILE = "exec.log.1";
export const CONSOLE_LOG_FILE = "console.log";

/** How often a following stream looks for new entries (ms). */
export const LOG_FOLLOW_POLL_MS = 200;
const READ_CHUNK = 1024 * 1024;
/** A longer line is skipped (msb-runtime's longest is ~6.3 MiB: a 1 MiB frame, escaped). */
const MAX_LINE_BYTES = 8 * 1024 * 1024;
const MAX_CURSOR_LENGTH = 1024;
/**
 * The console is the guest's to fill (QEMU writes it unbounded): a read that does not
 * resume from a cursor starts at most this far before its end.
 */
export const MAX_CONSOLE_READ_BYTES = 16 * 1024 * 1024;
/** A snapshot reads what was there when it began, plus at most this while it reads. */
const SNAPSHOT_SLACK_BYTES = 1024 * 1024;
const CURSOR_PREFIX = "msbl1_";

/** One captured log entry. `data` holds the bytes; `text()` decodes them (UTF-8, lossy). */
export class LogEntry {
  /** When the host captured it (console lines: estimated). */
  readonly timestamp: Date;
  readonly source: LogSource;
  /** The exec session it belongs to (1, 2, ... per sandbox run); `null` for sandbox-wide `system` entries. */
  readonly sessionId: number | null;
  readonly data: Uint8Array;
  /** Opaque: pass it as `logStream({ fromCursor })` to resume right after this entry. */
  readonly cursor: string;

  constructor(timestamp: Date, source: LogSource, sessionId: number | null, data: Uint8Array, cursor: string) {
    this.timestamp = timestamp;
    this.source = source;
    this.sessionId = sessionId;
    this.data = data;
    this.cursor = cursor;
  }

  /** `data` as text (invalid UTF-8 replaced). */
  text(): string {
    return new TextDecoder("utf-8", { fatal: false }).decode(this.data);
  }
}

/** Options of `logs()`. Defaults: every entry of `stdout`, `stderr` and `output`. */
export interface LogReadOptions {
  /** Only the last N entries (after the other filters). */
  tail?: number;
  /** Entries at or after this time. */
  since?: Date;
  /** Entries before this time. */
  until?: Date;
  /** Sources to include (default `["stdout", "stderr", "output"]`; `"all"` for every one). */
  sources?: ReadonlyArray<LogReadSource>;
}

/** Options of `logStream()`. `since` and `fromCursor` exclude each other. */
export interface LogStreamOptions {
  sources?: ReadonlyArray<LogReadSource>;
  /** Start at the first entry at or after this time. */
  since?: Date;
  /** Resume right after the entry this cursor came from. */
  fromCursor?: string;
  /** End the stream at the first entry at or after this time. */
  until?: Date;
  /** Keep the stream open at the end and yield new entries as they are written (default false). */
  follow?: boolean;
}

const sourcesSchema = z
  .array(z.enum(["stdout", "stderr", "output", "system", "all"], { error: 'must be "stdout", "stderr", "output", "system" or "all"' }), {
    error: "must be an array of sources",
  })
  .max(16, { error: "must have at most 16 elements" });
const dateSchema = z.date({ error: "must be a Date" }).refine((d) => Number.isFinite(d.getTime()), { error: "must be a valid Date" });
const tailSchema = z
  .number({ error: "must be a number" })
  .int({ error: "must be an integer" })
  .min(0, { error: "must not be negative" })
  .max(Number.MAX_SAFE_INTEGER, { error: "is too large" });
const cursorSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .max(MAX_CURSOR_LENGTH, { error: `must be at most ${MAX_CURSOR_LENGTH} characters` });
const followSchema = z.boolean({ error: "must be a boolean" });

/** Options checked at the boundary, in the engine's terms. */
export interface ResolvedLogOptions {
  sources: Set<LogSource>;
  since?: number;
  until?: number;
  tail?: number;
  fromCursor?: string;
  follow: boolean;
  /** A stream ends at the first entry at or after `until`; a snapshot only leaves such entries out. */
  untilEnds: boolean;
}

function checkKeys(opts: unknown, allowed: readonly string[]): Record<string, unknown> {
  if (opts === undefined || opts === null) return {};
  if (typeof opts !== "object" || Array.isArray(opts)) throw new InvalidConfigError("options", "invalid options: must be an object");
  for (const k of Object.keys(opts)) {
    if (!allowed.includes(k)) throw new InvalidConfigError(k, `invalid option ${JSON.stringify(k)}: not an option here (${allowed.join(", ")})`);
  }
  return opts as Record<string, unknown>;
}

function resolveSources(v: unknown): Set<LogSource> {
  if (v === undefined) return new Set(DEFAULT_LOG_SOURCES);
  const list = check(sourcesSchema, "sources", v);
  if (list.length === 0) return new Set(DEFAULT_LOG_SOURCES);
  return new Set(list.includes("all") ? LOG_SOURCES : (list as LogSource[]));
}

/** @internal Validate `logs()` options. */
export function resolveReadOptions(opts: unknown): ResolvedLogOptions {
  const o = checkKeys(opts, ["tail", "since", "until", "sources"]);
  const r: ResolvedLogOptions = { sources: resolveSources(o.sources), follow: false, untilEnds: false };
  if (o.tail !== undefined) r.tail = check(tailSchema, "tail", o.tail);
  if (o.since !== undefined) r.since = check(dateSchema, "since", o.since).getTime();
  if (o.until !== undefined) r.until = check(dateSchema, "until", o.until).getTime();
  return r;
}

/** @internal Validate `logStream()` options. */
export function resolveStreamOptions(opts: unknown): ResolvedLogOptions {
  const o = checkKeys(opts, ["sources", "since", "fromCursor", "until", "follow"]);
  const r: ResolvedLogOptions = { sources: resolveSources(o.sources), follow: false, untilEnds: true };
  if (o.since !== undefined) r.since = check(dateSchema, "since", o.since).getTime();
  if (o.until !== undefined) r.until = check(dateSchema, "until", o.until).getTime();
  if (o.follow !== undefined) r.follow = check(followSchema, "follow", o.follow);
  if (o.fromCursor !== undefined) {
    r.fromCursor = check(cursorSchema, "fromCursor", o.fromCursor);
    if (r.since !== undefined) throw new InvalidConfigError("fromCursor", "invalid fromCursor: since and fromCursor exclude each other");
  }
  return r;
}

// ---- cursors ----------------------------------------------------------------------

/** A position in a sandbox's logs: what a cursor encodes. */
export interface LogPosition {
  /** Sandbox name. */
  name: string;
  /** The sandbox's log id (exec.log headers); "" when it had no exec log yet. */
  uid: string;
  /** exec.log generation and the offset after the last entry consumed ("" / 0: none yet). */
  gen: string;
  offset: number;
  /** console.log identity ("<ino>-<birth ms>") and offset ("" / 0: none yet). */
  console: string;
  consoleOffset: number;
}

const HEX16 = /^[0-9a-f]{16}$/;
const CONSOLE_ID = /^[0-9]{1,20}-[0-9]{1,16}$/;

/** @internal */
export function encodeCursor(p: LogPosition): string {
  const body = JSON.stringify([1, p.name, p.uid, p.gen, p.offset, p.console, p.consoleOffset]);
  return CURSOR_PREFIX + Buffer.from(body, "utf8").toString("base64url");
}

/** @internal Decode a cursor; `InvalidCursorError` ("malformed") if it is not one. */
export function decodeCursor(cursor: string): LogPosition {
  const bad = (why: string) => new InvalidCursorError("malformed", `invalid fromCursor: ${why}`);
  if (!cursor.startsWith(CURSOR_PREFIX)) throw bad("not a log cursor");
  const b64 = cursor.slice(CURSOR_PREFIX.length);
  if (!/^[A-Za-z0-9_-]+$/.test(b64)) throw bad("not a log cursor");
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(b64, "base64url").toString("utf8"));
  } catch {
    throw bad("not a log cursor");
  }
  const offset = (x: unknown) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
  if (!Array.isArray(v) || v.length !== 7 || v[0] !== 1) throw bad("not a log cursor of this version");
  const [, name, uid, gen, off, con, conOff] = v as unknown[];
  if (typeof name !== "string" || !nameSchema.safeParse(name).success) throw bad("bad sandbox name");
  if (typeof uid !== "string" || (uid !== "" && !HEX16.test(uid))) throw bad("bad log id");
  if (typeof gen !== "string" || (gen !== "" && !HEX16.test(gen)) || !offset(off)) throw bad("bad exec log position");
  if (typeof con !== "string" || (con !== "" && !CONSOLE_ID.test(con)) || !offset(conOff)) throw bad("bad console position");
  return { name, uid, gen, offset: off as number, console: con, consoleOffset: conOff as number };
}

// ---- parsing ----------------------------------------------------------------------

/** The first line of each exec log file (crates/runtime/src/exec_log.rs, `Header`). */
export interface ExecLogHeader {
  sandbox: string;
  uid: string;
  gen: string;
  prev: string;
}

/** One parsed line of exec.log. */
export type ExecLogLine =
  | { kind: "header"; header: ExecLogHeader }
  | { kind: "entry"; timestamp: number; source: LogSource; sessionId: number | null; data: Buffer }
  | { kind: "skip" };

/** @internal Parse one line of exec.log (without its newline). Anything malformed is skipped. */
export function parseExecLogLine(line: Buffer | string): ExecLogLine {
  let v: unknown;
  try {
    v = JSON.parse(typeof line === "string" ? line : line.toString("utf8"));
  } catch {
    return { kind: "skip" };
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) return { kind: "skip" };
  const o = v as Record<string, unknown>;
  if (o.msb === "exec-log") {
    const { sandbox, uid, gen, prev } = o;
    if (o.v !== 1 || typeof sandbox !== "string" || typeof uid !== "string" || !HEX16.test(uid) || typeof gen !== "string" || !HEX16.test(gen)) {
      return { kind: "skip" };
    }
    return { kind: "header", header: { sandbox, uid, gen, prev: typeof prev === "string" ? prev : "" } };
  }
  const { t, s, d, id, e } = o;
  if (typeof t !== "string" || typeof d !== "string" || typeof s !== "string") return { kind: "skip" };
  if (!(LOG_SOURCES as readonly string[]).includes(s)) return { kind: "skip" };
  const timestamp = Date.parse(t);
  if (!Number.isFinite(timestamp)) return { kind: "skip" };
  const sessionId = typeof id === "number" && Number.isSafeInteger(id) && id >= 0 ? id : null;
  const data = e === "b64" ? Buffer.from(d, "base64") : Buffer.from(d, "utf8");
  return { kind: "entry", timestamp, source: s as LogSource, sessionId, data };
}

const KERNEL_TIME = /^\[\s*(\d{1,9})\.(\d{1,9})\]/;
// CSI and OSC sequences, then any other control character but tab.
// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]/g;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;

/**
 * @internal One console line (guest-written: escape sequences and control characters are
 * removed) and its estimated time: `bootMs` plus the kernel's `[seconds]` prefix, else
 * `lastMs` (the line before it), never later than `mtimeMs`.
 */
export function parseConsoleLine(line: Buffer, bootMs: number, lastMs: number, mtimeMs: number): { timestamp: number; data: Buffer } {
  let text = line.toString("utf8");
  if (text.endsWith("\r")) text = text.slice(0, -1);
  text = text.replace(ANSI, "").replace(CONTROL, "");
  const m = KERNEL_TIME.exec(text);
  let ts = lastMs;
  if (m) ts = bootMs + Number(m[1]) * 1000 + Math.floor(Number(`0.${m[2]}`) * 1000);
  ts = Math.min(ts, mtimeMs);
  return { timestamp: ts, data: Buffer.from(`${text}\n`, "utf8") };
}

/** Reads complete lines of a file from an offset; a last line without its newline waits. */
export class LineReader {
  readonly #fh: FileHandle;
  /** Offset of the first byte not consumed. */
  offset: number;
  #skipping = false;

  constructor(fh: FileHandle, offset: number) {
    this.#fh = fh;
    this.offset = offset;
  }

  /** The next complete lines (at least one, unless at the end), each with the offset after it. */
  async readLines(): Promise<{ line: Buffer; end: number }[]> {
    const out: { line: Buffer; end: number }[] = [];
    let buf = Buffer.alloc(0);
    for (;;) {
      const chunk = Buffer.allocUnsafe(READ_CHUNK);
      const { bytesRead } = await this.#fh.read(chunk, 0, READ_CHUNK, this.offset + buf.length);
      if (bytesRead === 0) return out;
      buf = buf.length > 0 ? Buffer.concat([buf, chunk.subarray(0, bytesRead)]) : chunk.subarray(0, bytesRead);
      let pos = 0;
      for (;;) {
        const nl = buf.indexOf(10, pos);
        if (nl < 0) break;
        if (!this.#skipping && nl > pos) out.push({ line: buf.subarray(pos, nl), end: this.offset + nl + 1 });
        this.#skipping = false;
        pos = nl + 1;
      }
      this.offset += pos;
      buf = buf.subarray(pos);
      if (out.length > 0) return out;
      if (buf.length > MAX_LINE_BYTES) {
        // Not a line of ours: dropped up to its end.
        this.#skipping = true;
        this.offset += buf.length;
        buf = Buffer.alloc(0);
      }
    }
  }
}

// ---- the engine -------------------------------------------------------------------

interface OpenFile {
  fh: FileHandle;
  ino: number;
}

interface ExecFile extends OpenFile {
  header: ExecLogHeader;
  reader: LineReader;
}

interface ConsoleFile extends OpenFile {
  id: string;
  reader: LineReader;
  bootMs: number;
  lastMs: number;
  mtimeMs: number;
}

/** An entry before its cursor is made, with the positions after it. */
interface Raw {
  timestamp: number;
  source: LogSource;
  sessionId: number | null;
  data: Buffer;
  pos: LogPosition;
  /** Which file it came from, and its order of consumption there (for snapshot cursors). */
  from: "exec" | "console";
  seq: number;
}

async function openNoFollow(path: string): Promise<OpenFile | null> {
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    // Absent, or a link in its place (not ours: never followed).
    if (code === "ENOENT" || code === "ELOOP") return null;
    throw e;
  }
  const st = await fh.stat();
  if (!st.isFile()) {
    await fh.close();
    return null;
  }
  return { fh, ino: st.ino };
}

async function inoOf(path: string): Promise<number | null> {
  try {
    const st = await stat(path);
    return st.isFile() ? st.ino : null;
  } catch {
    return null;
  }
}

/** Open an exec log file and read its header (null: absent, or not an exec log). */
async function openExecFile(path: string): Promise<ExecFile | null> {
  const f = await openNoFollow(path);
  if (f === null) return null;
  const reader = new LineReader(f.fh, 0);
  const first = await reader.readLines();
  const l = first[0];
  const parsed = l === undefined ? null : parseExecLogLine(l.line);
  if (l === undefined || parsed?.kind !== "header") {
    await f.fh.close();
    return null;
  }
  reader.offset = l.end;
  return { ...f, header: parsed.header, reader };
}

async function closeFile(f: OpenFile | null): Promise<void> {
  if (f !== null) await f.fh.close().catch(() => undefined);
}

/** @internal Reads one sandbox's log files; the engine of `logs()` and `logStream()`. */
export class LogReader {
  readonly #dir: string;
  readonly #name: string;
  readonly #opts: ResolvedLogOptions;
  #exec: ExecFile | null = null;
  #console: ConsoleFile | null = null;
  #pos: LogPosition;
  #execSeq = 0;
  #consoleSeq = 0;
  #queue: Raw[] = [];
  #ended = false;
  #closed = false;
  #wake: (() => void) | undefined;
  /** Where the console starts: the cursor's console offset if it is still that file. */
  #consoleStart: { id: string; offset: number } | undefined;
  /** Not following: bytes left to read (what was there at the start), so that a log
   * written faster than it is read cannot keep a snapshot going. */
  #budget: number | undefined;

  private constructor(dir: string, name: string, opts: ResolvedLogOptions) {
    this.#dir = dir;
    this.#name = name;
    this.#opts = opts;
    this.#pos = { name, uid: "", gen: "", offset: 0, console: "", consoleOffset: 0 };
  }

  /** Open the logs of sandbox `name` (its directory: `dir`), at the cursor if one was given. */
  static async open(dir: string, name: string, opts: ResolvedLogOptions): Promise<LogReader> {
    try {
      const st = await stat(dir);
      if (!st.isDirectory()) throw new Error("not a directory");
    } catch {
      throw new SandboxNotFoundError(`no sandbox named '${name}' (no logs in ${dir})`);
    }
    const r = new LogReader(dir, name, opts);
    try {
      await r.#init();
    } catch (e) {
      await r.close();
      throw e;
    }
    return r;
  }

  async #init(): Promise<void> {
    const prev = await openExecFile(join(this.#dir, EXEC_LOG_PREVIOUS_FILE));
    const cur = await openExecFile(join(this.#dir, EXEC_LOG_FILE));
    let start: ExecFile | null = null;
    try {
      start = await this.#place(prev, cur);
    } finally {
      // Only the file the stream starts in stays open.
      for (const f of [prev, cur]) if (f !== start) await closeFile(f);
    }
    this.#exec = start;
    if (!this.#opts.follow) {
      const size = async (name: string) => {
        try {
          return (await stat(join(this.#dir, name))).size;
        } catch {
          return 0;
        }
      };
      const consoleBytes = this.#opts.sources.has("system") ? Math.min(await size(CONSOLE_LOG_FILE), MAX_CONSOLE_READ_BYTES) : 0;
      this.#budget = (await size(EXEC_LOG_PREVIOUS_FILE)) + (await size(EXEC_LOG_FILE)) + consoleBytes + SNAPSHOT_SLACK_BYTES;
    }
  }

  /** Where the exec log is read from: the cursor's file and offset, else the oldest file's start. */
  async #place(prev: ExecFile | null, cur: ExecFile | null): Promise<ExecFile | null> {
    const files = [prev, cur].filter((f): f is ExecFile => f !== null && f.header.sandbox === this.#name);
    const uid = cur?.header.uid ?? prev?.header.uid ?? "";
    this.#pos.uid = uid;
    let start: ExecFile | null = files[0] ?? null;
    const c = this.#opts.fromCursor === undefined ? undefined : decodeCursor(this.#opts.fromCursor);
    if (c !== undefined) {
      if (c.name !== this.#name) {
        throw new InvalidCursorError("otherSandbox", `invalid fromCursor: it is a cursor of sandbox '${c.name}', not of '${this.#name}'`);
      }
      if (c.uid !== "" && uid !== "" && c.uid !== uid) {
        throw new InvalidCursorError("otherSandbox", `invalid fromCursor: it is a cursor of an earlier sandbox named '${this.#name}'`);
      }
      if (c.console !== "") this.#consoleStart = { id: c.console, offset: c.consoleOffset };
      this.#pos.console = c.console;
      this.#pos.consoleOffset = c.consoleOffset;
      if (c.gen !== "") {
        const at = files.find((f) => f.header.gen === c.gen);
        if (at === undefined) {
          throw new MissedRotationError(`sandbox ${this.#name}: the log rotated past this cursor's position (its file is gone); read again without a cursor`);
        }
        const size = (await at.fh.stat()).size;
        if (c.offset < at.reader.offset || c.offset > size || !(await endsLine(at.fh, c.offset))) {
          throw new InvalidCursorError("malformed", "invalid fromCursor: it points where no log entry ends");
        }
        at.reader.offset = c.offset;
        start = at;
      }
    }
    if (start !== null) {
      this.#pos.gen = start.header.gen;
      this.#pos.offset = start.reader.offset;
    }
    return start;
  }

  /** The next entry matching the filters, or null at the end (never, when following, until closed or `until`). */
  async next(): Promise<Raw | null> {
    for (;;) {
      const r = this.#queue.shift();
      if (r !== undefined) return r;
      if (this.#ended || this.#closed) return null;
      const got = await this.#poll();
      if (this.#budget !== undefined && this.#budget < 0) this.#ended = true;
      if (got > 0 || this.#ended) continue;
      if (!this.#opts.follow) {
        this.#ended = true;
        continue;
      }
      if (!(await isDir(this.#dir))) {
        // The sandbox was removed: nothing more will come.
        this.#ended = true;
        continue;
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, LOG_FOLLOW_POLL_MS);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#wake = undefined;
    }
  }

  /** Read what is there now; the number of entries queued. */
  async #poll(): Promise<number> {
    let n = 0;
    for (const raw of await this.#pollExec()) n += this.#offer(raw);
    if (this.#opts.sources.has("system")) for (const raw of await this.#pollConsole()) n += this.#offer(raw);
    return n;
  }

  #offer(raw: Raw): number {
    if (this.#ended) return 0;
    if (!this.#opts.sources.has(raw.source)) return 0;
    if (this.#opts.since !== undefined && raw.timestamp < this.#opts.since) return 0;
    if (this.#opts.until !== undefined && raw.timestamp >= this.#opts.until) {
      if (this.#opts.untilEnds) this.#ended = true;
      return 0;
    }
    this.#queue.push(raw);
    return 1;
  }

  async #pollExec(): Promise<Raw[]> {
    for (;;) {
      if (this.#exec === null) {
        const f = await openExecFile(join(this.#dir, EXEC_LOG_FILE));
        if (f === null || f.header.sandbox !== this.#name || (this.#pos.uid !== "" && f.header.uid !== this.#pos.uid)) {
          await closeFile(f);
          return [];
        }
        this.#exec = f;
        this.#pos.uid = f.header.uid;
        this.#pos.gen = f.header.gen;
        this.#pos.offset = f.reader.offset;
      }
      const out = await this.#readExec(this.#exec);
      if (out.length > 0) return out;
      // At the end of this file: is it still the current one?
      const ex = this.#exec;
      if ((await inoOf(join(this.#dir, EXEC_LOG_FILE))) === ex.ino) return [];
      // Rotated (or we read the previous file): what was written before the rename is there now.
      const rest = await this.#readExec(ex);
      if (rest.length > 0) return rest;
      const next = await this.#successor(ex.header.gen);
      if (next === null) {
        if ((await inoOf(join(this.#dir, EXEC_LOG_FILE))) === null) return [];
        throw new MissedRotationError(`sandbox ${this.#name}: the log rotated twice while this stream read it; entries were lost (resume without a cursor)`);
      }
      await closeFile(ex);
      this.#exec = next;
      this.#pos.gen = next.header.gen;
      this.#pos.offset = next.reader.offset;
    }
  }

  /** The file after generation `gen` (its header names `gen` as the one before). */
  async #successor(gen: string): Promise<ExecFile | null> {
    let found: ExecFile | null = null;
    for (const name of [EXEC_LOG_PREVIOUS_FILE, EXEC_LOG_FILE]) {
      const f = await openExecFile(join(this.#dir, name));
      if (found === null && f !== null && f.header.prev === gen && f.header.uid === this.#pos.uid) found = f;
      else await closeFile(f);
    }
    return found;
  }

  async #readExec(f: ExecFile): Promise<Raw[]> {
    const out: Raw[] = [];
    for (const { line, end } of await f.reader.readLines()) {
      if (this.#budget !== undefined) this.#budget -= line.length + 1;
      this.#pos.offset = end;
      this.#execSeq++;
      const p = parseExecLogLine(line);
      if (p.kind !== "entry") continue;
      out.push({ ...p, pos: { ...this.#pos }, from: "exec", seq: this.#execSeq });
    }
    return out;
  }

  async #pollConsole(): Promise<Raw[]> {
    for (;;) {
      if (this.#console === null) {
        const f = await openConsole(join(this.#dir, CONSOLE_LOG_FILE));
        if (f === null) return [];
        const start = this.#consoleStart;
        this.#consoleStart = undefined;
        const size = (await f.fh.stat()).size;
        if (start !== undefined && start.id === f.id && start.offset <= size && (await endsLine(f.fh, start.offset))) {
          f.reader.offset = start.offset;
        } else if (size > MAX_CONSOLE_READ_BYTES) {
          f.reader.offset = await nextLineStart(f.fh, size - MAX_CONSOLE_READ_BYTES, size);
        }
        this.#console = f;
        this.#pos.console = f.id;
        this.#pos.consoleOffset = f.reader.offset;
      }
      const c = this.#console;
      const out = await this.#readConsole(c);
      if (out.length > 0) return out;
      const now = await openConsoleId(join(this.#dir, CONSOLE_LOG_FILE));
      if (now === c.id) return [];
      // A new boot made a new console log: the rest of the old one, then the new one.
      const rest = await this.#readConsole(c);
      if (rest.length > 0) return rest;
      await closeFile(c);
      this.#console = null;
      if (now === null) return [];
    }
  }

  async #readConsole(c: ConsoleFile): Promise<Raw[]> {
    const lines = await c.reader.readLines();
    if (lines.length === 0) return [];
    c.mtimeMs = Math.max(c.mtimeMs, (await c.fh.stat()).mtimeMs);
    const out: Raw[] = [];
    for (const { line, end } of lines) {
      if (this.#budget !== undefined) this.#budget -= line.length + 1;
      this.#pos.consoleOffset = end;
      this.#consoleSeq++;
      const { timestamp, data } = parseConsoleLine(line, c.bootMs, c.lastMs, c.mtimeMs);
      c.lastMs = timestamp;
      if (data.length <= 1) continue;
      out.push({ timestamp, source: "system", sessionId: null, data, pos: { ...this.#pos }, from: "console", seq: this.#consoleSeq });
    }
    return out;
  }

  /** Where the next read starts (before any entry: the cursor's position, or the start). */
  position(): LogPosition {
    return { ...this.#pos };
  }

  /** Stop reading: a pending `next()` of a following stream returns null. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#wake?.();
    const e = this.#exec;
    const c = this.#console;
    this.#exec = null;
    this.#console = null;
    await closeFile(e);
    await closeFile(c);
  }
}

async function isDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

/** Offset 0, or the byte before it is a newline. */
async function endsLine(fh: FileHandle, offset: number): Promise<boolean> {
  if (offset === 0) return true;
  const b = Buffer.alloc(1);
  const { bytesRead } = await fh.read(b, 0, 1, offset - 1);
  return bytesRead === 1 && b[0] === 10;
}

/** The offset after the first newline at or after `from` (`size` when there is none). */
async function nextLineStart(fh: FileHandle, from: number, size: number): Promise<number> {
  const buf = Buffer.allocUnsafe(64 * 1024);
  for (let at = from; at < size && at - from <= MAX_LINE_BYTES; ) {
    const { bytesRead } = await fh.read(buf, 0, buf.length, at);
    if (bytesRead === 0) break;
    const nl = buf.subarray(0, bytesRead).indexOf(10);
    if (nl >= 0) return at + nl + 1;
    at += bytesRead;
  }
  return size;
}

function consoleId(ino: number, birthtimeMs: number): string {
  return `${ino}-${Math.max(0, Math.floor(birthtimeMs))}`;
}

async function openConsole(path: string): Promise<ConsoleFile | null> {
  const f = await openNoFollow(path);
  if (f === null) return null;
  const st = await f.fh.stat();
  const bootMs = st.birthtimeMs > 0 ? st.birthtimeMs : st.mtimeMs;
  return { ...f, id: consoleId(st.ino, st.birthtimeMs), reader: new LineReader(f.fh, 0), bootMs, lastMs: bootMs, mtimeMs: st.mtimeMs };
}

async function openConsoleId(path: string): Promise<string | null> {
  try {
    const st = await stat(path);
    return st.isFile() ? consoleId(st.ino, st.birthtimeMs) : null;
  } catch {
    return null;
  }
}

function toEntry(r: Raw, cursor: string): LogEntry {
  return new LogEntry(new Date(r.timestamp), r.source, r.sessionId, new Uint8Array(r.data.buffer, r.data.byteOffset, r.data.byteLength), cursor);
}

/** Host file errors as typed errors. */
async function mapped<T>(name: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof MicrosandboxError) throw e;
    throw new RuntimeError(`reading the logs of sandbox ${name}: ${(e as Error).message}`, { cause: e });
  }
}

/** @internal `logs()`: every matching entry in time order, `tail` applied last. */
export async function readLogs(sandboxDir: string, name: string, options: unknown): Promise<LogEntry[]> {
  const opts = resolveReadOptions(options);
  return mapped(name, () => snapshot(sandboxDir, name, opts));
}

async function snapshot(sandboxDir: string, name: string, opts: ResolvedLogOptions): Promise<LogEntry[]> {
  const reader = await LogReader.open(sandboxDir, name, opts);
  const start = reader.position();
  const raws: Raw[] = [];
  try {
    for (let r = await reader.next(); r !== null; r = await reader.next()) raws.push(r);
  } finally {
    await reader.close();
  }
  // Stable: entries of one file keep their order.
  raws.sort((a, b) => a.timestamp - b.timestamp);
  // Each entry's cursor covers every entry before it in this order, of both files: per
  // file, the furthest entry of that file so far (none yet: where reading started).
  let execAt: LogPosition = start;
  let execSeq = 0;
  let consoleAt: LogPosition = start;
  let consoleSeq = 0;
  const cursors = raws.map((r) => {
    if (r.from === "exec" && r.seq > execSeq) [execAt, execSeq] = [r.pos, r.seq];
    if (r.from === "console" && r.seq > consoleSeq) [consoleAt, consoleSeq] = [r.pos, r.seq];
    return encodeCursor({
      ...r.pos,
      gen: execAt.gen,
      offset: execAt.offset,
      console: consoleAt.console,
      consoleOffset: consoleAt.consoleOffset,
    });
  });
  let entries = raws.map((r, i) => toEntry(r, cursors[i] as string));
  if (opts.tail !== undefined) entries = opts.tail === 0 ? [] : entries.slice(-opts.tail);
  return entries;
}

/** @internal `logStream()`. */
export async function openLogStream(sandboxDir: string, name: string, options: unknown): Promise<LogStream> {
  const opts = resolveStreamOptions(options);
  return new LogStream(await mapped(name, () => LogReader.open(sandboxDir, name, opts)));
}

/**
 * Log entries as they are read (`follow: true`: as they are written). Use `for await`,
 * or `recv()` (null at the end). Close it when done (`close()`, `await using`, or
 * leaving a `for await` loop early), which releases its files. Within a file entries
 * come in order; with `system`, console lines are interleaved as they are read. Ends
 * with `MissedRotationError` if it falls two rotations behind.
 */
export class LogStream implements AsyncIterable<LogEntry>, AsyncDisposable {
  readonly #reader: LogReader;
  #chain: Promise<unknown> = Promise.resolve();
  #done = false;

  /** @internal Use `sb.logStream()`. */
  constructor(reader: LogReader) {
    this.#reader = reader;
  }

  /** The next entry, or null once the stream ended (or was closed). */
  recv(): Promise<LogEntry | null> {
    const p = this.#chain.then(() => this.#next());
    this.#chain = p.catch(() => undefined);
    return p;
  }

  async #next(): Promise<LogEntry | null> {
    if (this.#done) return null;
    let r: Raw | null;
    try {
      r = await this.#reader.next();
    } catch (e) {
      // Closed meanwhile (its files went away under the read): just the end.
      if (this.#done) return null;
      await this.close();
      throw e instanceof MicrosandboxError ? e : new RuntimeError(`reading the logs failed: ${(e as Error).message}`, { cause: e });
    }
    if (r === null) {
      await this.close();
      return null;
    }
    return toEntry(r, encodeCursor(r.pos));
  }

  /** End the stream and release its files (a pending `recv()` of a follower resolves to null). */
  async close(): Promise<void> {
    this.#done = true;
    await this.#reader.close();
  }

  [Symbol.asyncIterator](): AsyncIterator<LogEntry> {
    return {
      next: async () => {
        const e = await this.recv();
        return e === null ? { done: true, value: undefined } : { done: false, value: e };
      },
      return: async () => {
        await this.close();
        return { done: true, value: undefined };
      },
    };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
