/**
 * Options of one command: `sb.execWith(cmd, b => b.args([...]).cwd("/").timeout(5000))`.
 * The builder records; {@link resolveExecOptions} validates (zod) and names the bad field.
 */
import { z } from "zod";
import { argsSchema, check, cmdSchema, envKeySchema, envValueSchema, timeoutMsSchema, userSchema, workdirSchema } from "./config.js";
import { InvalidConfigError } from "./errors.js";
import { DEFAULT_MAX_OUTPUT_BYTES } from "./limits.js";
import { checkExecSizes } from "./input-limits.js";
import { RLIMIT_RESOURCES, type ExecRequest } from "@microsandbox/contract";

/** Resource limits `rlimit()` takes (setrlimit's RLIMIT_*, lowercase): the agent's list, from the contract. */
export { RLIMIT_RESOURCES };
export type RlimitResource = (typeof RLIMIT_RESOURCES)[number];

/** Terminal size of a TTY command when none is given. */
export const DEFAULT_TTY_SIZE = { rows: 24, cols: 80 } as const;

/** Where a command's stdin comes from. */
export type StdinMode = "null" | "bytes" | "pipe";

const rlimitResourceSchema = z.enum(RLIMIT_RESOURCES, { error: `must be one of ${RLIMIT_RESOURCES.join(", ")}` });
const rlimitRule = 'must be a non-negative integer or "unlimited"';
const rlimitValueSchema = z.union(
  [
    z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    z.literal("unlimited"),
  ],
  { error: rlimitRule },
);
const dimRule = "must be an integer from 1 to 65535";
export const ttyDimSchema = z.number({ error: dimRule }).int({ error: dimRule }).min(1, { error: dimRule }).max(65535, { error: dimRule });
const boolSchema = z.boolean({ error: "must be a boolean" });
const maxOutputRule = "must be a non-negative integer number of bytes";
const maxOutputBytesSchema = z
  .number({ error: maxOutputRule })
  .int({ error: maxOutputRule })
  .min(0, { error: maxOutputRule })
  .max(Number.MAX_SAFE_INTEGER, { error: maxOutputRule });

/** Options for one command. Setters record; the call that runs the command validates. */
export class ExecOptionsBuilder {
  /** @internal */
  readonly raw: {
    args: unknown[];
    cwd?: unknown;
    user?: unknown;
    env: [unknown, unknown][];
    timeout?: unknown;
    stdin: StdinMode;
    stdinBytes?: unknown;
    tty?: unknown;
    ttySize?: { rows: unknown; cols: unknown };
    rlimits: [unknown, unknown][];
    maxOutputBytes?: unknown;
  } = { args: [], env: [], stdin: "null", rlimits: [] };

  /** Append one argument. */
  arg(arg: string): this {
    this.raw.args.push(arg);
    return this;
  }

  /** Append arguments. */
  args(args: readonly string[]): this {
    if (Array.isArray(args)) this.raw.args.push(...args);
    else this.raw.args.push(args as unknown);
    return this;
  }

  /** Working directory (absolute guest path; default: the sandbox's workdir). */
  cwd(path: string): this {
    this.raw.cwd = path;
    return this;
  }

  /** Run as this user: a name from the guest's /etc/passwd, a uid, or uid:gid / name:group. */
  user(user: string): this {
    this.raw.user = user;
    return this;
  }

  /** An environment variable, merged over the sandbox's. Repeatable; a later value wins. */
  env(key: string, value: string): this {
    this.raw.env.push([key, value]);
    return this;
  }

  /** Several environment variables at once. */
  envs(vars: Record<string, string>): this {
    if (vars === null || typeof vars !== "object") this.raw.env.push([vars as unknown, ""]);
    else for (const [k, v] of Object.entries(vars)) this.raw.env.push([k, v]);
    return this;
  }

  /**
   * Kill the command (SIGKILL to its process group) when it has not finished after `ms`
   * milliseconds; the call then rejects with `ExecTimeoutError`.
   */
  timeout(ms: number): this {
    this.raw.timeout = ms;
    return this;
  }

  /** stdin is /dev/null (the default). */
  stdinNull(): this {
    this.raw.stdin = "null";
    this.raw.stdinBytes = undefined;
    return this;
  }

  /** stdin delivers these bytes (a string is sent as UTF-8), then EOF. */
  stdinBytes(data: Uint8Array | string): this {
    this.raw.stdin = "bytes";
    this.raw.stdinBytes = data;
    return this;
  }

  /** stdin is a pipe you write to: `handle.takeStdin()` (streaming calls only). */
  stdinPipe(): this {
    this.raw.stdin = "pipe";
    this.raw.stdinBytes = undefined;
    return this;
  }

  /**
   * Run on a pseudo-terminal (default 24 rows, 80 columns): stdout carries everything
   * the terminal shows, stderr stays empty, and `takeStdin()` writes keystrokes.
   */
  tty(enabled = true, size?: { rows: number; cols: number }): this {
    this.raw.tty = enabled;
    if (size !== undefined) this.raw.ttySize = { rows: size?.rows, cols: size?.cols };
    return this;
  }

  /**
   * Largest output a buffered call (`execWith`, `shellWith`, the handle's `collect()`)
   * gathers: stdout and stderr together, in bytes. Default 64 MiB
   * ({@link DEFAULT_MAX_OUTPUT_BYTES}). Past it the command is killed (SIGKILL) and the
   * call rejects with `OutputLimitError`. Iterating a handle is never limited.
   */
  maxOutputBytes(bytes: number): this {
    this.raw.maxOutputBytes = bytes;
    return this;
  }

  /** A resource limit (soft and hard), e.g. `rlimit("nofile", 256)` or `rlimit("core", "unlimited")`. */
  rlimit(resource: RlimitResource, limit: number | "unlimited"): this {
    this.raw.rlimits.push([resource, limit]);
    return this;
  }
}

/** Validated options of one command. */
export interface ExecOptions {
  request: ExecRequest;
  stdin: StdinMode;
  stdinBytes: Uint8Array | null;
  timeoutMs: number | null;
  /** Limit of what `collect()` gathers (stdout + stderr bytes). */
  maxOutputBytes: number;
}

const enc = new TextEncoder();

/** Validate a command and its options into the request the addon takes. Throws {@link InvalidConfigError}. */
export function resolveExecOptions(cmd: unknown, b: ExecOptionsBuilder): ExecOptions {
  const r = b.raw;
  const command = check(cmdSchema, "cmd", cmd);
  const args = check(argsSchema, "args", r.args);
  const cwd = r.cwd === undefined ? null : check(workdirSchema, "cwd", r.cwd);
  const user = r.user === undefined ? null : check(userSchema, "user", r.user);
  const env = new Map<string, string>();
  for (const [k, v] of r.env) {
    const key = check(envKeySchema, "env", k, "env key");
    env.set(key, check(envValueSchema, "env", v, `env value of ${key}`));
  }
  const timeoutMs = r.timeout === undefined ? null : check(timeoutMsSchema, "timeout", r.timeout);
  let stdinBytes: Uint8Array | null = null;
  if (r.stdin === "bytes") {
    const d = r.stdinBytes;
    if (typeof d === "string") stdinBytes = enc.encode(d);
    else if (d instanceof Uint8Array) stdinBytes = d;
    else throw new InvalidConfigError("stdin", "invalid stdin: stdinBytes() takes a Uint8Array or a string");
  }
  const maxOutputBytes =
    r.maxOutputBytes === undefined ? DEFAULT_MAX_OUTPUT_BYTES : check(maxOutputBytesSchema, "maxOutputBytes", r.maxOutputBytes);
  const ttyOn = r.tty === undefined ? false : check(boolSchema, "tty", r.tty);
  let tty: ExecRequest["tty"] = null;
  if (ttyOn) {
    tty = r.ttySize
      ? { rows: check(ttyDimSchema, "tty", r.ttySize.rows, "tty rows"), cols: check(ttyDimSchema, "tty", r.ttySize.cols, "tty cols") }
      : { ...DEFAULT_TTY_SIZE };
  }
  const limits = new Map<string, number | "unlimited">();
  for (const [res, n] of r.rlimits) {
    const name = check(rlimitResourceSchema, "rlimit", res, "rlimit resource");
    limits.set(name, check(rlimitValueSchema, "rlimit", n, `rlimit ${name}`));
  }
  // What the guest gets in one frame: sizes checked here, before anything is sent.
  checkExecSizes({ cmd: command, args, env: [...env], cwd, user, rlimits: limits.size });
  return {
    request: {
      cmd: command,
      args,
      env: [...env],
      cwd,
      user,
      // On a TTY stdin is the terminal whatever this says; a pipe is what writes reach.
      stdin: r.stdin !== "null" || ttyOn,
      tty,
      rlimits: [...limits].map(([name, n]): [string, bigint] => [name, n === "unlimited" ? RLIM_INFINITY : BigInt(n)]),
    },
    stdin: r.stdin,
    stdinBytes,
    timeoutMs,
    maxOutputBytes,
  };
}

/** Run a configure callback on a fresh builder (it may return the builder or nothing). */
export function buildExecOptions(configure: ((b: ExecOptionsBuilder) => ExecOptionsBuilder | void) | undefined): ExecOptionsBuilder {
  const b = new ExecOptionsBuilder();
  if (configure === undefined) return b;
  if (typeof configure !== "function") throw new InvalidConfigError("options", "invalid exec options: expected a function b => b.args([...])...");
  const r = configure(b);
  return r instanceof ExecOptionsBuilder ? r : b;
}

/** setrlimit's RLIM_INFINITY: all ones in 64 bits (a bigint: no JavaScript number holds it). */
export const RLIM_INFINITY = 2n ** 64n - 1n;
