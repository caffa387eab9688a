/**
 * `msb run`: boot a sandbox, run one command with its output streamed through,
 * then stop and remove the sandbox whatever happened (error, SIGINT, SIGTERM).
 *
 * The sandbox operations come in through {@link RunDeps} so that the exit-code
 * and clean-up logic is unit-testable without a VM.
 */
import { randomBytes } from "node:crypto";
import { constants } from "node:os";
import {
  ExecFailedError,
  InvalidConfigError,
  MicrosandboxError,
  Sandbox,
  SandboxAlreadyExistsError,
  SandboxStillRunningError,
  type ExecEvent,
  type PullPolicy,
  type PullProgress,
  type SandboxBuilder,
} from "@microsandbox/sdk";
import { EXIT_USAGE, type RegistryFlags, type RunOptions } from "./args.js";

/** Exit code when the command could not be started (as a shell does for "command not found"). */
export const EXIT_EXEC_FAILED = 127;
/** Exit code for any other failure of msb itself. */
export const EXIT_FAILURE = 1;

/** The part of a Sandbox that `msb run` uses. */
export interface RunSandbox {
  /** The image's entrypoint and default command (OCI images), after builder overrides. */
  config(): { entrypoint: string[] | null; cmd?: string[] | null };
  execStream(cmd: string, args: readonly string[]): Promise<AsyncIterable<ExecEvent>>;
  stop(): Promise<void>;
  kill(): Promise<void>;
}

export interface RunDeps {
  create(options: RunOptions & { name: string }): Promise<RunSandbox>;
  remove(name: string): Promise<void>;
  /** Write a chunk to stdout / stderr; resolves when it may be followed by more (back-pressure). */
  writeOut(data: Uint8Array): Promise<void>;
  writeErr(data: Uint8Array | string): Promise<void>;
  /** Aborted (with the signal name as reason, e.g. "SIGINT") to end the run early. */
  signal?: AbortSignal;
  /** How long to retry removing a sandbox whose runtime is still exiting (ms). Default 10 s. */
  removeTimeoutMs?: number;
}

/** The real dependencies: the SDK. */
export function sdkDeps(io: Pick<RunDeps, "writeOut" | "writeErr" | "signal"> & { onPullProgress?: (p: PullProgress) => void }): RunDeps {
  return {
    ...io,
    async create(o) {
      const b = Sandbox.builder(o.name);
      if (o.image !== undefined) b.image(o.image);
      if (o.cpus !== undefined) b.cpus(o.cpus);
      if (o.memory !== undefined) b.memory(o.memory);
      for (const [k, v] of o.env) b.env(k, v);
      if (o.workdir !== undefined) b.workdir(o.workdir);
      if (o.pullPolicy !== undefined) b.pullPolicy(o.pullPolicy as PullPolicy);
      applyRegistryFlags(b, o.registry);
      if (io.onPullProgress) b.onPullProgress(io.onPullProgress);
      return b.create();
    },
    remove: (name) => Sandbox.remove(name),
  };
}

/** Registry flags onto a builder (or image pull options). */
export function applyRegistryFlags(b: SandboxBuilder, r: RegistryFlags): void {
  if (r.username !== undefined) b.registryAuth({ kind: "basic", username: r.username, password: r.password ?? "" });
  if (r.insecure) b.insecureRegistry(true);
  if (r.caFile !== undefined) b.registryCa(r.caFile);
}

/**
 * What to run: an OCI image's entrypoint in front of the given command, or of the image's
 * default command when none is given (as `docker run` does).
 */
export function commandLine(given: readonly string[], config: { entrypoint: string[] | null; cmd?: string[] | null }): string[] {
  const entry = config.entrypoint ?? [];
  const rest = given.length > 0 ? given : (config.cmd ?? []);
  return [...entry, ...rest];
}

/** A fresh default sandbox name: `run-` (or `prefix-`) and 8 hex digits. */
export function defaultName(prefix = "run"): string {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

/** Exit code for an error, and the line to print for it. */
export function describeError(e: unknown): { code: number; message: string } {
  if (e instanceof InvalidConfigError) return { code: EXIT_USAGE, message: `msb: ${e.message}` };
  if (e instanceof ExecFailedError) return { code: EXIT_EXEC_FAILED, message: `msb: ${e.reason}` };
  if (e instanceof MicrosandboxError) return { code: EXIT_FAILURE, message: `msb: ${e.message}` };
  const text = e instanceof Error ? e.message : String(e);
  return { code: EXIT_FAILURE, message: `msb: ${text}` };
}

/** 128 + signal number, as shells report a death by signal. */
export function signalExitCode(reason: unknown): number {
  const n = typeof reason === "string" ? (constants.signals as Record<string, number>)[reason] : undefined;
  return 128 + (n ?? constants.signals.SIGTERM);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function removeWithRetry(deps: RunDeps, name: string): Promise<void> {
  // The runtime releases the sandbox's lock a moment after the VM is gone.
  const deadline = Date.now() + (deps.removeTimeoutMs ?? 10_000);
  for (;;) {
    try {
      await deps.remove(name);
      return;
    } catch (e) {
      if (!(e instanceof SandboxStillRunningError) || Date.now() >= deadline) throw e;
      await sleep(100);
    }
  }
}

/** Run the command; resolves to the process exit code. Never rejects. */
export async function runCommand(options: RunOptions, deps: RunDeps): Promise<number> {
  const name = options.name ?? defaultName();
  const signal = deps.signal;
  let sandbox: RunSandbox | undefined;
  let teardown: Promise<void> | undefined;
  let code: number;

  const shutdown = (mode: "stop" | "kill"): Promise<void> => {
    const sb = sandbox;
    if (sb === undefined) return Promise.resolve();
    teardown ??= (mode === "kill" ? sb.kill() : sb.stop().catch(() => sb.kill())).catch(() => undefined);
    return teardown;
  };
  const onAbort = () => void shutdown("kill");
  signal?.addEventListener("abort", onAbort, { once: true });

  let createError: unknown;
  try {
    try {
      sandbox = await deps.create({ ...options, name });
    } catch (e) {
      createError = e;
      throw e;
    }
    if (signal?.aborted) throw signal.reason;
    const [cmd, ...args] = commandLine(options.command, sandbox.config());
    if (cmd === undefined || cmd === "") {
      throw new InvalidConfigError("command", "no command given and the image defines no entrypoint or default command");
    }
    const handle = await sandbox.execStream(cmd, args);
    let exit: number | undefined;
    for await (const ev of handle) {
      if (ev.kind === "stdout") await deps.writeOut(ev.data);
      else if (ev.kind === "stderr") await deps.writeErr(ev.data);
      else if (ev.kind === "exited") exit = ev.code;
    }
    if (exit === undefined) throw new Error("the command ended without an exit code");
    code = exit;
  } catch (e) {
    if (signal?.aborted) {
      code = signalExitCode(signal.reason);
    } else {
      const d = describeError(e);
      await deps.writeErr(`${d.message}\n`).catch(() => undefined);
      code = d.code;
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }

  // Clean up. A sandbox that was never created is removed too (a failed boot can
  // leave its directory), except when the name belongs to someone else's sandbox
  // or the configuration was rejected before anything was made.
  const ownsName =
    sandbox !== undefined ||
    !(createError instanceof SandboxAlreadyExistsError || createError instanceof InvalidConfigError);
  try {
    await shutdown(signal?.aborted ? "kill" : "stop");
    if (ownsName) await removeWithRetry(deps, name);
  } catch (e) {
    if (sandbox !== undefined) {
      await deps.writeErr(`msb: could not remove sandbox ${name}: ${describeError(e).message.replace(/^msb: /, "")}\n`).catch(() => undefined);
      if (code === 0) code = EXIT_FAILURE;
    }
  }
  return code;
}
