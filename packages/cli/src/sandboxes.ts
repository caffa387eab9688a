/**
 * Commands on named sandboxes: `msb create`, `start`, `stop`, `kill`, `rm`, `ls` / `ps`,
 * `inspect`, `exec`, `metrics`. Sandboxes made here are detached (they outlive msb);
 * every command reaches them by name through the SDK.
 */
import { lstat } from "node:fs/promises";
import { basename, join, posix } from "node:path";
import { constants } from "node:os";
import {
  MAX_SANDBOX_LIST_LIMIT,
  Sandbox,
  SandboxFsOpsError,
  SandboxNotRunningError,
  type PullPolicy,
  type ImagePullProgress as PullProgress,
  type SandboxConfig,
  type SandboxHandle,
  type SandboxMetrics,
} from "@microsandbox/sdk";
import type { CpEndpoint, CreateOptions, ExecCliOptions, MetricsOptions, SecretSpec } from "./args.js";
import { attach, attachPlan, type TerminalIO } from "./attach.js";
import { ago, table } from "./images.js";
import { formatBytes } from "./progress.js";
import { applyGuestFlags, applyRegistryFlags, defaultName, describeError, secretValue, signalExitCode } from "./run.js";

/** Where the commands write. */
export interface CommandIO {
  out(text: string): void;
  err(text: string): void;
  /** A chunk of a command's output; resolves when more may follow (back-pressure). */
  writeOut(data: Uint8Array): Promise<void>;
  writeErr(data: Uint8Array | string): Promise<void>;
  /** stdout is a terminal (`msb metrics --watch` then redraws one line). */
  isTTY: boolean;
  columns?: number;
  /** Aborted on SIGINT / SIGTERM. */
  signal?: AbortSignal;
  onPullProgress?: (p: PullProgress) => void;
  /** msb's terminal (stdin, raw mode, size); without it nothing is forwarded. */
  terminal?: TerminalIO;
  /** Report errors as JSON objects (`--json`). */
  json?: boolean;
}

function fail(io: CommandIO, e: unknown): number {
  const d = describeError(e, io.json);
  io.err(`${d.message}\n`);
  return d.code;
}

/** Run `f` for each name; report failures and go on. Resolves to 0, or the code of the last failure. */
async function eachName(io: CommandIO, names: readonly string[], f: (name: string) => Promise<void>): Promise<number> {
  let code = 0;
  for (const name of names) {
    try {
      await f(name);
      io.out(`${name}\n`);
    } catch (e) {
      code = fail(io, e);
    }
  }
  return code;
}

/** Every sandbox carrying all of `labels`, page by page. */
async function listLabelled(labels: [string, string][]): Promise<SandboxHandle[]> {
  const out: SandboxHandle[] = [];
  let cursor: string | undefined;
  do {
    const c = cursor;
    const page = await Sandbox.listWith((l) => {
      for (const [k, v] of labels) l.label(k, v);
      l.limit(MAX_SANDBOX_LIST_LIMIT);
      if (c !== undefined) l.cursor(c);
    });
    out.push(...page.sandboxes);
    cursor = page.nextCursor;
  } while (cursor !== undefined);
  return out;
}

/** `msb create`: a detached sandbox; prints its name. */
export async function createCommand(o: CreateOptions, io: CommandIO): Promise<number> {
  const name = o.name ?? defaultName("sb");
  try {
    const b = Sandbox.builder(name);
    if (o.image !== undefined) b.image(o.image);
    if (o.cpus !== undefined) b.cpus(o.cpus);
    if (o.memory !== undefined) b.memory(o.memory);
    for (const [k, v] of o.env) b.env(k, v);
    if (o.workdir !== undefined) b.workdir(o.workdir);
    if (o.pullPolicy !== undefined) b.pullPolicy(o.pullPolicy as PullPolicy);
    if (o.snapshot !== undefined) b.fromSnapshot(o.snapshot);
    if (o.idleTimeoutSecs !== undefined) b.idleTimeout(o.idleTimeoutSecs);
    if (o.maxDurationSecs !== undefined) b.maxDuration(o.maxDurationSecs);
    if (o.replace) b.replace();
    for (const [k, v] of o.labels ?? []) b.label(k, v);
    applyGuestFlags(b, o);
    applyRegistryFlags(b, o.registry);
    if (io.onPullProgress) b.onPullProgress(io.onPullProgress);
    const sb = await b.createDetached();
    // Only our connection goes; the sandbox keeps running.
    await sb[Symbol.asyncDispose]();
    io.out(`${name}\n`);
    return 0;
  } catch (e) {
    return fail(io, e);
  }
}

/** `msb start NAME... [--secret ENV] [--secret-file ENV=PATH]`: boot stopped sandboxes again, detached. */
export function startCommand(names: readonly string[], io: CommandIO, secretSpecs: readonly SecretSpec[] = []): Promise<number> {
  return eachName(io, names, async (name) => {
    const secrets: Record<string, string> = {};
    for (const s of secretSpecs) secrets[s.envVar] = secretValue(s);
    const sb = await (secretSpecs.length > 0 ? Sandbox.startDetached(name, { secrets }) : Sandbox.startDetached(name));
    await sb[Symbol.asyncDispose]();
  });
}

/** `msb stop NAME... [--timeout MS]`. */
export function stopCommand(names: readonly string[], timeoutMs: number | undefined, io: CommandIO): Promise<number> {
  return eachName(io, names, async (name) => {
    const h = await Sandbox.get(name);
    await (timeoutMs === undefined ? h.stop() : h.stop(timeoutMs));
  });
}

/** `msb kill NAME...`. */
export function killCommand(names: readonly string[], io: CommandIO): Promise<number> {
  return eachName(io, names, async (name) => {
    await (await Sandbox.get(name)).kill();
  });
}

/** `msb warmup [IMAGE] [--cpus N] [--memory MIB] [--no-net] [--json]`. */
export async function warmupCommand(o: { image?: string; cpus?: number; memory?: number; network: boolean; json: boolean }, io: CommandIO): Promise<number> {
  try {
    const r = await Sandbox.warmup({
      ...(o.image !== undefined ? { image: o.image } : {}),
      ...(o.cpus !== undefined ? { cpus: o.cpus } : {}),
      ...(o.memory !== undefined ? { memory: o.memory } : {}),
      network: o.network,
    });
    if (o.json) io.out(`${JSON.stringify(r)}\n`);
    else if (r.template === null) io.out(`no template: ${r.reason}\n`);
    else io.out(`${r.made ? "made" : "already there:"} template ${r.template} (${r.ms} ms)\n`);
    return r.template === null ? 1 : 0;
  } catch (e) {
    const d = describeError(e, o.json);
    io.err(`${d.message}\n`);
    return d.code;
  }
}

/** `msb fork SOURCE NAME [--json]`: the fork is detached (it outlives this command). */
export async function forkCommand(o: { source: string; name: string; json: boolean }, io: CommandIO): Promise<number> {
  try {
    const t0 = performance.now();
    const parent = await (await Sandbox.get(o.source)).connect();
    try {
      const child = await parent.fork(o.name, { detached: true });
      const ms = Math.round(performance.now() - t0);
      // Detached: closing this handle leaves the fork running.
      await child[Symbol.asyncDispose]();
      if (o.json) io.out(`${JSON.stringify({ name: child.name, parent: o.source, ms })}\n`);
      else io.out(`forked ${o.source} into ${child.name} (${ms} ms)\n`);
      return 0;
    } finally {
      await parent[Symbol.asyncDispose]();
    }
  } catch (e) {
    const d = describeError(e, o.json);
    io.err(`${d.message}\n`);
    return d.code;
  }
}

/** `msb pause NAME...` / `msb resume NAME...`. */
export function pauseCommand(names: readonly string[], resume: boolean, io: CommandIO): Promise<number> {
  return eachName(io, names, async (name) => {
    const h = await Sandbox.get(name);
    await (resume ? h.resume() : h.pause());
  });
}

/** `msb rm [-f] NAME...`. */
export function rmCommand(names: readonly string[], force: boolean, io: CommandIO): Promise<number> {
  return eachName(io, names, async (name) => {
    if (force) await (await Sandbox.get(name)).kill();
    await Sandbox.remove(name);
  });
}

/** The image column: the reference or path given, or "(default)". */
function imageOf(h: Pick<SandboxHandle, "config">): { image: string | null; text: string } {
  let config: SandboxConfig;
  try {
    config = h.config();
  } catch {
    return { image: null, text: "?" };
  }
  return { image: config.image, text: config.image ?? "(default)" };
}

/** The record of a sandbox as `ls --json` and `inspect` print it. */
export function sandboxJson(h: SandboxHandle, withConfig: boolean): Record<string, unknown> {
  const j: Record<string, unknown> = {
    name: h.name,
    status: h.status,
    image: imageOf(h).image,
    createdAt: h.createdAt.toISOString(),
    updatedAt: h.updatedAt.toISOString(),
    runtimePid: h.runtimePid,
    exitCode: h.exitCode,
    exitReason: h.exitReason,
  };
  if (withConfig) {
    try {
      j.config = h.config();
    } catch (e) {
      j.config = null;
      j.configError = e instanceof Error ? e.message : String(e);
    }
  }
  return j;
}

/** `msb ls` output: a table (NAME STATUS IMAGE CREATED) or JSON. */
export function formatSandboxes(handles: readonly SandboxHandle[], json: boolean, now = new Date()): string {
  if (json) return JSON.stringify(handles.map((h) => sandboxJson(h, false)), null, 2) + "\n";
  return table(
    ["NAME", "STATUS", "IMAGE", "CREATED"],
    handles.map((h) => [h.name, h.status, imageOf(h).text, ago(h.createdAt, now)]),
  );
}

export async function lsCommand(json: boolean, io: CommandIO, labels?: [string, string][]): Promise<number> {
  try {
    const all = labels === undefined ? await Sandbox.list() : await listLabelled(labels);
    all.sort((a, b) => a.name.localeCompare(b.name));
    io.out(formatSandboxes(all, json));
    return 0;
  } catch (e) {
    return fail(io, e);
  }
}

export async function inspectCommand(name: string, io: CommandIO): Promise<number> {
  try {
    io.out(JSON.stringify(sandboxJson(await Sandbox.get(name), true), null, 2) + "\n");
    return 0;
  } catch (e) {
    return fail(io, e);
  }
}

/**
 * `msb exec [-t] [-i] [-e K=V] [-w DIR] [-u USER] [--timeout MS] NAME -- CMD...`: stream
 * the output, forward stdin (see {@link attachPlan}), exit with the command's exit code.
 * SIGINT / SIGTERM / SIGHUP to msb are passed on to the command (a second one ends msb).
 */
export async function execCommand(name: string, command: readonly string[], io: CommandIO, options: ExecCliOptions = { env: [] }): Promise<number> {
  const [cmd, ...args] = command;
  if (cmd === undefined) return fail(io, new Error("missing command"));
  const plan = attachPlan(options, io.terminal);
  let sb: Sandbox | undefined;
  let onAbort: (() => void) | undefined;
  try {
    sb = await (await Sandbox.get(name)).connect();
    const handle = await sb.execStreamWith(cmd, (b) => {
      b.args(args);
      for (const [k, v] of options.env) b.env(k, v);
      if (options.workdir !== undefined) b.cwd(options.workdir);
      if (options.user !== undefined) b.user(options.user);
      if (options.timeoutMs !== undefined) b.timeout(options.timeoutMs);
      if (plan.tty) b.tty(true, io.terminal?.size());
      if (plan.forwardStdin) b.stdinPipe();
    });
    const signal = io.signal;
    if (signal) {
      onAbort = () => {
        const n = (constants.signals as Record<string, number>)[String(signal.reason)] ?? constants.signals.SIGINT;
        handle.signal(n).catch(() => undefined);
      };
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    }
    return await attach(handle, plan, io.terminal, io);
  } catch (e) {
    return fail(io, e);
  } finally {
    if (onAbort) io.signal?.removeEventListener("abort", onAbort);
    await sb?.[Symbol.asyncDispose]();
  }
}

/**
 * `msb cp SRC DST`, one side `NAME:/guest/path`: files and directory trees, either way.
 * A destination that is an existing directory receives SRC inside it.
 */
export async function cpCommand(src: CpEndpoint, dst: CpEndpoint, io: CommandIO): Promise<number> {
  const name = src.kind === "sandbox" ? src.name : dst.kind === "sandbox" ? dst.name : undefined;
  if (name === undefined) return fail(io, new Error("one of SRC and DST must be NAME:/guest/path"));
  let sb: Sandbox | undefined;
  try {
    sb = await (await Sandbox.get(name)).connect();
    const fs = sb.fs();
    if (src.kind === "host" && dst.kind === "sandbox") {
      let target = dst.path;
      const into = await fs.stat(target).catch((e: unknown) => {
        if (e instanceof SandboxFsOpsError && e.errno === "ENOENT") return undefined;
        throw e;
      });
      if (into?.kind === "dir") target = posix.join(target, basename(src.path.replace(/\/+$/, "")) || ".");
      await fs.copyFromHost(src.path, target);
    } else if (src.kind === "sandbox" && dst.kind === "host") {
      let target = dst.path;
      const st = await lstat(target).catch(() => undefined);
      const base = posix.basename(src.path);
      if (st?.isDirectory() && base !== "") target = join(target, base);
      await fs.copyToHost(src.path, target);
    }
    return 0;
  } catch (e) {
    return fail(io, e);
  } finally {
    await sb?.[Symbol.asyncDispose]();
  }
}

/** 1h02m03s, 4m05s, 6.7s. */
export function formatDuration(ms: number): string {
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m${sec}s` : `${m}m${sec}s`;
}

/** One metrics sample as one line of text. */
export function formatMetricsLine(name: string, m: SandboxMetrics): string {
  const memPct = m.memoryLimitBytes > 0 ? ` (${((100 * m.memoryBytes) / m.memoryLimitBytes).toFixed(1)}%)` : "";
  return [
    name,
    `cpu ${m.cpuPercent.toFixed(1)}%`,
    `mem ${formatBytes(m.memoryBytes)} / ${formatBytes(m.memoryLimitBytes)}${memPct}`,
    `disk r ${formatBytes(m.diskReadBytes)} w ${formatBytes(m.diskWriteBytes)}`,
    `net rx ${formatBytes(m.netRxBytes)} tx ${formatBytes(m.netTxBytes)}`,
    `up ${formatDuration(m.uptime)}`,
  ].join("  ");
}

/** One metrics sample as a JSON line. */
export function formatMetricsJson(name: string, m: SandboxMetrics): string {
  return JSON.stringify({ name, ...m, timestamp: m.timestamp.toISOString() });
}

/**
 * `msb metrics NAME [--watch] [--interval MS] [--json]`. Without --watch, one sample. With
 * it: on a terminal one line redrawn in place, otherwise a line per sample, until Ctrl-C
 * (exit 130) or the sandbox stops (exit 0).
 */
export async function metricsCommand(o: MetricsOptions, io: CommandIO): Promise<number> {
  const format = (m: SandboxMetrics) => (o.json ? formatMetricsJson(o.name, m) : formatMetricsLine(o.name, m));
  if (!o.watch) {
    try {
      io.out(`${format(await (await Sandbox.get(o.name)).metrics())}\n`);
      return 0;
    } catch (e) {
      return fail(io, e);
    }
  }
  const live = io.isTTY && !o.json;
  let drawn = false;
  let sb: Sandbox | undefined;
  try {
    sb = await (await Sandbox.get(o.name)).connect();
    const stream = sb.metricsStream(o.intervalMs);
    const code = await new Promise<number>((resolve, reject) => {
      const sub = stream.subscribe({
        next(m) {
          const line = format(m);
          if (live) {
            const width = io.columns ?? 0;
            io.out(`\r\x1b[2K${width > 1 && line.length >= width ? line.slice(0, width - 1) : line}`);
            drawn = true;
          } else {
            io.out(`${line}\n`);
          }
        },
        error(e: unknown) {
          if (e instanceof SandboxNotRunningError) {
            if (drawn) io.out("\n");
            drawn = false;
            io.err(`msb: sandbox ${o.name} stopped\n`);
            resolve(0);
          } else {
            reject(e);
          }
        },
      });
      const onAbort = () => {
        sub.unsubscribe();
        resolve(signalExitCode(io.signal?.reason));
      };
      if (io.signal?.aborted) onAbort();
      else io.signal?.addEventListener("abort", onAbort, { once: true });
    });
    if (drawn) io.out("\n");
    return code;
  } catch (e) {
    if (drawn) io.out("\n");
    return fail(io, e);
  } finally {
    await sb?.[Symbol.asyncDispose]();
  }
}
