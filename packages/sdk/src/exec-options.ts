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

  /** Append arguments (an array, or any iterable of strings as the reference SDK's `exec(cmd, args)` takes). */
  args(args: Iterable<string>): this {
    this.raw.args.push(...argList(args));
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

  /**
   * The reference SDK's soft/hard form of {@link rlimit}. The guest agent sets one value
   * as both limits, so `soft` and `hard` must be equal (else the call that runs the
   * command rejects with `InvalidConfigError`, field `rlimit`).
   */
  rlimitRange(resource: RlimitResource, soft: number | "unlimited", hard: number | "unlimited"): this {
    this.raw.rlimits.push([resource, soft === hard ? soft : new RlimitRangeMismatch(soft, hard)]);
    return this;
  }

  /**
   * The options recorded so far, validated, in the reference SDK's `ExecOptions` shape
   * (`{ args, cwd?, user?, env, timeoutMs?, stdin, tty, rlimits }`); throws
   * `InvalidConfigError` naming a bad field.
   */
  build(): ExecOptionsSnapshot {
    const o = resolveExecOptions("sh", this);
    const out: ExecOptionsSnapshot = {
      args: [...o.request.args],
      env: Object.fromEntries(o.request.env),
      stdin: o.stdin === "bytes" ? { kind: "bytes", data: o.stdinBytes ?? new Uint8Array() } : { kind: o.stdin },
      tty: o.request.tty !== null,
      rlimits: o.request.rlimits.map(([resource, n]) => {
        const v = n === RLIM_INFINITY ? ("unlimited" as const) : Number(n);
        return { resource: resource as RlimitResource, soft: v, hard: v };
      }),
    };
    if (o.request.cwd !== null) out.cwd = o.request.cwd;
    if (o.request.user !== null) out.user = o.request.user;
    if (o.timeoutMs !== null) out.timeoutMs = o.timeoutMs;
    return out;
  }
}

/** @internal An `rlimitRange` whose soft and hard limits differ (reported when resolved). */
class RlimitRangeMismatch {
  constructor(
    readonly soft: unknown,
    readonly hard: unknown,
  ) {}
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
    if (n instanceof RlimitRangeMismatch) {
      throw new InvalidConfigError(
        "rlimit",
        `invalid rlimit ${name}: soft (${String(n.soft)}) and hard (${String(n.hard)}) limits must be equal: the guest sets one value as both`,
      );
    }
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

/**
 * Run a configure callback on a fresh builder (it may return the builder or nothing), or
 * fill one from an options object ({@link ExecCallOptions}).
 */
export function buildExecOptions(configure: ExecOptionsInput | undefined): ExecOptionsBuilder {
  const b = new ExecOptionsBuilder();
  if (configure === undefined) return b;
  if (configure instanceof ExecOptionsBuilder) return configure;
  if (configure !== null && typeof configure === "object") return fromCallOptions(configure);
  if (typeof configure !== "function") {
    throw new InvalidConfigError("options", "invalid exec options: expected an options object { cwd, env, timeoutMs, ... } or a function b => b.args([...])...");
  }
  const r = configure(b);
  return r instanceof ExecOptionsBuilder ? r : b;
}

/** setrlimit's RLIM_INFINITY: all ones in 64 bits (a bigint: no JavaScript number holds it). */
export const RLIM_INFINITY = 2n ** 64n - 1n;

// ---- per-call options as an object: the reference SDK's `ExecOptions` shape ----

/** Where stdin comes from, in the reference SDK's shape (see {@link Stdin}). */
export type StdinSpec = { kind: "null" } | { kind: "pipe" } | { kind: "bytes"; data: Uint8Array };

/** The reference SDK's `Stdin` factory: `Stdin.null()`, `Stdin.pipe()`, `Stdin.bytes("input")`. */
export const Stdin = {
  /** stdin is /dev/null (the default). */
  null: (): StdinSpec => ({ kind: "null" }),
  /** A pipe you write to with `handle.takeStdin()` (streaming calls only). */
  pipe: (): StdinSpec => ({ kind: "pipe" }),
  /** These bytes (a string as UTF-8), then EOF. */
  bytes: (data: Uint8Array | string): StdinSpec => ({ kind: "bytes", data: typeof data === "string" ? enc.encode(data) : data }),
};

/** A resource limit in the reference SDK's shape. `soft` and `hard` must be equal here (the guest sets one value). */
export interface Rlimit {
  resource: RlimitResource;
  soft: number | "unlimited";
  hard: number | "unlimited";
}

/**
 * Options of one command as an object, the reference SDK's `ExecOptions` fields (all
 * optional): `sb.shell("make", { cwd: "/src", env: { CC: "clang" }, timeoutMs: 60_000 })`.
 * `maxOutputBytes` is ours (see {@link ExecOptionsBuilder.maxOutputBytes}).
 */
export interface ExecCallOptions {
  /** Arguments (after the positional ones of `exec(cmd, args)`; after the script for `shell`: `$0`, `$1`, ...). */
  args?: readonly string[];
  cwd?: string;
  user?: string;
  env?: Record<string, string>;
  /** Kill the command after this many milliseconds; the call rejects with `ExecTimeoutError`. */
  timeoutMs?: number;
  /** A {@link Stdin} value, `"null"` / `"pipe"`, or the bytes (a string as UTF-8) to send. */
  stdin?: StdinSpec | "null" | "pipe" | Uint8Array | string;
  tty?: boolean;
  rlimits?: readonly Rlimit[];
  maxOutputBytes?: number;
}

/** What per-call options may be given as: an options object, or a configure callback. */
export type ExecOptionsInput = ExecCallOptions | ((b: ExecOptionsBuilder) => ExecOptionsBuilder | void);

/** `ExecOptionsBuilder.build()`'s result: the reference SDK's `ExecOptions`. */
export interface ExecOptionsSnapshot {
  args: string[];
  cwd?: string;
  user?: string;
  env: Record<string, string>;
  timeoutMs?: number;
  stdin: StdinSpec;
  tty: boolean;
  rlimits: Rlimit[];
}

const CALL_OPTION_KEYS = ["args", "cwd", "user", "env", "timeoutMs", "stdin", "tty", "rlimits", "maxOutputBytes"] as const;
const envObjectSchema = z.record(z.string(), z.unknown(), { error: "must be an object of strings" });
const rlimitObjectSchema = z.object(
  { resource: z.unknown(), soft: z.unknown(), hard: z.unknown() },
  { error: "must be an array of { resource, soft, hard }" },
);
const rlimitsSchema = z.array(rlimitObjectSchema, { error: "must be an array of { resource, soft, hard }" });
const stdinSpecSchema = z.union(
  [
    z.literal("null"),
    z.literal("pipe"),
    z.string(),
    z.instanceof(Uint8Array),
    z.strictObject({ kind: z.literal("null") }),
    z.strictObject({ kind: z.literal("pipe") }),
    z.strictObject({ kind: z.literal("bytes"), data: z.union([z.instanceof(Uint8Array), z.string()]) }),
  ],
  { error: 'must be Stdin.null(), Stdin.pipe(), Stdin.bytes(data), "null", "pipe", or the bytes to send' },
);

/** Fill a builder from an options object; unknown keys and wrong types throw {@link InvalidConfigError} naming the field. */
function fromCallOptions(o: object): ExecOptionsBuilder {
  const b = new ExecOptionsBuilder();
  const opts = o as Record<string, unknown>;
  for (const k of Object.keys(opts)) {
    if (!(CALL_OPTION_KEYS as readonly string[]).includes(k)) {
      throw new InvalidConfigError(k, `invalid exec option ${JSON.stringify(k)}: not one of ${CALL_OPTION_KEYS.join(", ")}`);
    }
  }
  const r = b.raw;
  if (opts.args !== undefined) {
    if (!Array.isArray(opts.args)) throw new InvalidConfigError("args", "invalid args: must be an array of strings");
    r.args.push(...(opts.args as unknown[]));
  }
  if (opts.cwd !== undefined) r.cwd = opts.cwd;
  if (opts.user !== undefined) r.user = opts.user;
  if (opts.env !== undefined) {
    const env = check(envObjectSchema, "env", opts.env);
    for (const [k, v] of Object.entries(env)) r.env.push([k, v]);
  }
  if (opts.timeoutMs !== undefined) r.timeout = check(timeoutMsSchema, "timeoutMs", opts.timeoutMs);
  if (opts.stdin !== undefined) {
    const st = check(stdinSpecSchema, "stdin", opts.stdin);
    if (st === "null" || (typeof st === "object" && "kind" in st && st.kind === "null")) b.stdinNull();
    else if (st === "pipe" || (typeof st === "object" && "kind" in st && st.kind === "pipe")) b.stdinPipe();
    else if (typeof st === "string" || st instanceof Uint8Array) b.stdinBytes(st);
    else if ("data" in st) b.stdinBytes(st.data);
  }
  if (opts.tty !== undefined) r.tty = opts.tty;
  if (opts.rlimits !== undefined) {
    for (const l of check(rlimitsSchema, "rlimits", opts.rlimits)) {
      r.rlimits.push([l.resource, l.soft === l.hard ? l.soft : new RlimitRangeMismatch(l.soft, l.hard)]);
    }
  }
  if (opts.maxOutputBytes !== undefined) r.maxOutputBytes = opts.maxOutputBytes;
  return b;
}

/** Options for `exec(cmd, args, options)`: the positional `args` first, then the options' own. */
export function withLeadingArgs(args: unknown, options: ExecOptionsInput | undefined): ExecOptionsBuilder {
  const b = buildExecOptions(options);
  if (args === undefined) return b;
  b.raw.args.unshift(...argList(args));
  return b;
}

/** Most arguments taken from a non-array iterable (an endless generator is refused, not drained). */
export const MAX_ITERABLE_ARGS = 100_000;

/**
 * Arguments as given: an array as is, another iterable (a Set, a generator) read up to
 * {@link MAX_ITERABLE_ARGS} items; anything else (a bare string too) is `InvalidConfigError`
 * (`field: "args"`). The items themselves are checked by the schema.
 */
function argList(args: unknown): unknown[] {
  if (Array.isArray(args)) return args;
  if (args !== null && typeof args === "object" && typeof (args as Iterable<unknown>)[Symbol.iterator] === "function") {
    const out: unknown[] = [];
    for (const a of args as Iterable<unknown>) {
      if (out.length >= MAX_ITERABLE_ARGS) throw new InvalidConfigError("args", `invalid args: more than ${MAX_ITERABLE_ARGS} arguments`);
      out.push(a);
    }
    return out;
  }
  throw new InvalidConfigError("args", "invalid args: must be an array (or an iterable) of strings");
}
