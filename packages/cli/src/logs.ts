/**
 * `msb logs [-f] [--since T] [--until T] [--tail N] [--source S]... [--json] [-t] NAME`:
 * a sandbox's logs (running or stopped) through the SDK's `logs()` / `logStream()`.
 * The commands' stdout, TTY output and system lines go to stdout, their stderr to
 * stderr; `--json` prints one object per entry on stdout instead.
 */
import { InvalidArgumentError, type Command } from "commander";
import { Sandbox, type LogEntry, type LogReadSource } from "@microsandbox/sdk";
import { describeError, signalExitCode } from "./run.js";
import type { CommandIO } from "./sandboxes.js";

/** What `msb logs` was asked to do. */
export interface LogsCliOptions {
  name: string;
  follow: boolean;
  since?: Date;
  until?: Date;
  tail?: number;
  /** Absent: the SDK's default (stdout, stderr, output). */
  sources?: LogReadSource[];
  json: boolean;
  timestamps: boolean;
}

/** commander's raw options of `msb logs`. */
export interface RawLogsOpts {
  follow?: boolean;
  since?: Date;
  until?: Date;
  tail?: number;
  source?: LogReadSource[];
  json?: boolean;
  timestamps?: boolean;
}

const SOURCES: readonly LogReadSource[] = ["stdout", "stderr", "output", "system", "all"];
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * A time for `--since` / `--until`: a duration before `now` (`30s`, `10m`, `2h`, `1d`,
 * `500ms`), an ISO 8601 date (`2026-12-03T06:40:00Z`), or Unix seconds (`1796280000`).
 */
export function parseTime(value: string, now: number = Date.now()): Date {
  const rel = /^(\d{1,12})(ms|s|m|h|d)$/.exec(value);
  if (rel) return new Date(now - Number(rel[1]) * (UNIT_MS[rel[2] as string] as number));
  if (/^\d{1,12}(\.\d{1,3})?$/.test(value)) return new Date(Math.round(Number(value) * 1000));
  const t = /^\d{4}-\d{2}-\d{2}/.test(value) ? Date.parse(value) : Number.NaN;
  if (!Number.isFinite(t)) throw new InvalidArgumentError("expected a duration (30s, 10m, 2h, 1d), an ISO date or Unix seconds");
  return new Date(t);
}

function tailCount(value: string): number {
  if (!/^\d{1,15}$/.test(value)) throw new InvalidArgumentError("expected a number of entries (0 or more)");
  return Number(value);
}

function source(value: string, prev: LogReadSource[] | undefined): LogReadSource[] {
  const out = [...(prev ?? [])];
  for (const s of value.split(",")) {
    if (!(SOURCES as readonly string[]).includes(s)) throw new InvalidArgumentError(`expected ${SOURCES.join(", ")} (repeatable or comma-separated)`);
    out.push(s as LogReadSource);
  }
  return out;
}

/** Declare `msb logs` on `program`; `on` gets its name and raw options. */
export function addLogsCommand(program: Command, on: (name: string, opts: RawLogsOpts) => void): void {
  program
    .command("logs")
    .description("print a sandbox's logs (its commands' output; system lines with --source system)")
    .argument("<NAME>", "sandbox name")
    .option("-f, --follow", "keep printing new entries as they are written, until Ctrl-C")
    .option("--since <time>", "entries at or after this time: 30s, 10m, 2h, 1d (ago), an ISO date, or Unix seconds", (v: string) => parseTime(v))
    .option("--until <time>", "entries before this time (same forms as --since)", (v: string) => parseTime(v))
    .option("-n, --tail <N>", "only the last N entries (then new ones with -f)", tailCount)
    .option("--source <source>", "stdout, stderr, output (TTY), system, all; repeatable or comma-separated (default stdout,stderr,output)", source)
    .option("-t, --timestamps", "put each entry's time in front of it")
    .option("--json", 'one JSON object per entry: {"timestamp","source","sessionId","data","cursor"}')
    .addHelpText(
      "after",
      "\nstdout, TTY output and system lines go to stdout, stderr to stderr. The logs are read\nfrom the host: a stopped sandbox's logs are there until it is removed.\n\nExamples:\n  msb logs worker\n  msb logs -f --tail 20 worker\n  msb logs --since 10m --source all --json worker\n",
    )
    .action((name: string, opts: RawLogsOpts) => on(name, opts));
}

/** `msb logs`'s options from commander's. */
export function logsOptions(name: string, o: RawLogsOpts): LogsCliOptions {
  const r: LogsCliOptions = { name, follow: o.follow === true, json: o.json === true, timestamps: o.timestamps === true };
  if (o.since !== undefined) r.since = o.since;
  if (o.until !== undefined) r.until = o.until;
  if (o.tail !== undefined) r.tail = o.tail;
  if (o.source !== undefined) r.sources = o.source;
  return r;
}

function jsonLine(e: LogEntry): string {
  return `${JSON.stringify({ timestamp: e.timestamp.toISOString(), source: e.source, sessionId: e.sessionId, data: e.text(), cursor: e.cursor })}\n`;
}

async function print(e: LogEntry, o: LogsCliOptions, io: CommandIO): Promise<void> {
  if (o.json) {
    await io.writeOut(Buffer.from(jsonLine(e)));
    return;
  }
  const write = e.source === "stderr" ? io.writeErr : io.writeOut;
  if (o.timestamps) await write(Buffer.from(`${e.timestamp.toISOString()} `));
  await write(e.data);
}

/** `msb logs`: the entries there now (the last `--tail`), then with `-f` new ones until Ctrl-C. */
export async function logsCommand(o: LogsCliOptions, io: CommandIO): Promise<number> {
  try {
    const handle = await Sandbox.get(o.name);
    const filters = {
      ...(o.since !== undefined ? { since: o.since } : {}),
      ...(o.until !== undefined ? { until: o.until } : {}),
      ...(o.sources !== undefined ? { sources: o.sources } : {}),
    };
    // Every matching entry: the last one's cursor is where following resumes, also when
    // --tail prints fewer.
    const entries = await handle.logs(filters);
    const shown = o.tail === undefined ? entries : o.tail === 0 ? [] : entries.slice(-o.tail);
    for (const e of shown) await print(e, o, io);
    if (!o.follow || io.signal?.aborted) return io.signal?.aborted ? signalExitCode(io.signal.reason) : 0;
    const last = entries.at(-1);
    const stream = await handle.logStream({
      follow: true,
      ...(o.sources !== undefined ? { sources: o.sources } : {}),
      ...(o.until !== undefined ? { until: o.until } : {}),
      ...(last !== undefined ? { fromCursor: last.cursor } : o.since !== undefined ? { since: o.since } : {}),
    });
    const onAbort = () => void stream.close();
    io.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for (let e = await stream.recv(); e !== null; e = await stream.recv()) await print(e, o, io);
    } finally {
      io.signal?.removeEventListener("abort", onAbort);
      await stream.close();
    }
    return io.signal?.aborted ? signalExitCode(io.signal.reason) : 0;
  } catch (e) {
    const d = describeError(e, io.json);
    io.err(`${d.message}\n`);
    return d.code;
  }
}
