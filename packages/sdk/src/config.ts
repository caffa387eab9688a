/**
 * Validation of sandbox configuration (zod, at the SDK boundary). Each field is
 * checked on its own so that the resulting {@link InvalidConfigError} names
 * exactly one field, in both `field` and the message.
 */
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { z } from "zod";
import { CorruptConfigError, InvalidConfigError } from "./errors.js";

export const DEFAULT_CPUS = 1;
export const DEFAULT_MEMORY_MIB = 512;
export const MIN_MEMORY_MIB = 64;
export const MAX_MEMORY_MIB = 1024 * 1024;
export const MAX_CPUS = 255;
export const MAX_NAME_LENGTH = 63;
export const DEFAULT_BOOT_TIMEOUT_MS = 60_000;

const noNul = (s: string) => !s.includes("\0");

export const nameSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .max(MAX_NAME_LENGTH, { error: `must be at most ${MAX_NAME_LENGTH} characters` })
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, {
    error: "must start with a letter or digit and contain only letters, digits, '_', '.' and '-'",
  });

export const imageSchema = z
  .string({ error: "must be a path (string)" })
  .min(1, { error: "must not be empty" })
  .refine(noNul, { error: "must not contain NUL" });

export const cpusSchema = z
  .number({ error: `must be an integer from 1 to ${MAX_CPUS}` })
  .int({ error: `must be an integer from 1 to ${MAX_CPUS}` })
  .min(1, { error: `must be an integer from 1 to ${MAX_CPUS}` })
  .max(MAX_CPUS, { error: `must be an integer from 1 to ${MAX_CPUS}` });

const memoryRule = `must be an integer number of MiB from ${MIN_MEMORY_MIB} to ${MAX_MEMORY_MIB}`;
export const memorySchema = z
  .number({ error: memoryRule })
  .int({ error: memoryRule })
  .min(MIN_MEMORY_MIB, { error: memoryRule })
  .max(MAX_MEMORY_MIB, { error: memoryRule });

export const envKeySchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .refine((k) => !k.includes("="), { error: "must not contain '='" })
  .refine(noNul, { error: "must not contain NUL" });

export const envValueSchema = z
  .string({ error: "must be a string" })
  .refine(noNul, { error: "must not contain NUL" });

export const workdirSchema = z
  .string({ error: "must be a string" })
  .refine((p) => p.startsWith("/"), { error: "must be an absolute path (start with '/')" })
  .refine(noNul, { error: "must not contain NUL" });

const LABEL = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
export const hostnameSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .max(253, { error: "must be at most 253 characters" })
  .refine((h) => h.split(".").every((l) => LABEL.test(l)), {
    error: "must be dot-separated labels of letters, digits and '-' (1 to 63 characters, no leading or trailing '-')",
  });

export const cmdSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .refine(noNul, { error: "must not contain NUL" });

export const argsSchema = z.array(
  z.string({ error: "must be strings" }).refine(noNul, { error: "must not contain NUL" }),
  { error: "must be an array of strings" },
);

/** Largest millisecond timeout the native side takes (u32). */
export const MAX_TIMEOUT_MS = 0xffff_ffff;
const timeoutRule = `must be a positive integer number of milliseconds (at most ${MAX_TIMEOUT_MS})`;
/** Stop timeouts and sampling intervals: positive whole milliseconds. */
export const timeoutMsSchema = z
  .number({ error: timeoutRule })
  .int({ error: timeoutRule })
  .min(1, { error: timeoutRule })
  .max(MAX_TIMEOUT_MS, { error: timeoutRule });

const secsRule = "must be a positive integer number of seconds";
/** `idleTimeout` and `maxDuration`: positive whole seconds. */
export const secondsSchema = z
  .number({ error: secsRule })
  .int({ error: secsRule })
  .min(1, { error: secsRule })
  .max(Number.MAX_SAFE_INTEGER, { error: secsRule });

export const entrypointSchema = z
  .array(z.string({ error: "must be strings" }).refine(noNul, { error: "must not contain NUL" }), {
    error: "must be an array of strings",
  })
  .min(1, { error: "must not be empty" })
  .refine((a) => (a[0] ?? "").length > 0, { error: "must start with a non-empty program" });

/** A user name, a uid, or uid:gid / name:group. */
export const userSchema = z
  .string({ error: "must be a string" })
  .regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$/, {
    error: "must be a user name or uid, optionally followed by :group or :gid",
  });

export const pullPolicySchema = z.enum(["always", "if-missing", "never"], {
  error: 'must be "always", "if-missing" or "never"',
});
export type PullPolicy = z.infer<typeof pullPolicySchema>;

export const registryAuthSchema = z.object(
  {
    kind: z.literal("basic", { error: 'kind must be "basic"' }),
    username: z.string({ error: "username must be a string" }).min(1, { error: "username must not be empty" }),
    password: z.string({ error: "password must be a string" }),
  },
  { error: 'must be { kind: "basic", username, password }' },
);
export type RegistryAuth = z.infer<typeof registryAuthSchema>;

function show(value: unknown): string {
  let s: string;
  if (typeof value === "string") s = JSON.stringify(value);
  else if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") s = String(value);
  else if (value === null || value === undefined) s = String(value);
  else s = `(${typeof value})`;
  return s.length > 48 ? `${s.slice(0, 45)}...` : s;
}

/**
 * Parse `value` with `schema`; on failure throw an InvalidConfigError whose
 * `field` is `field` and whose message names it (as `label`, default `field`).
 */
export function check<T>(schema: z.ZodType<T>, field: string, value: unknown, label: string = field): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const why = issue?.message ?? "is invalid";
  throw new InvalidConfigError(field, `invalid ${label} ${show(value)}: ${label} ${why}`, { cause: r.error });
}

/** What the builder's setters recorded (unvalidated: JavaScript callers can pass anything). */
export interface RawSandboxConfig {
  name: unknown;
  image?: unknown;
  cpus?: unknown;
  memory?: unknown;
  env: [unknown, unknown][];
  workdir?: unknown;
  hostname?: unknown;
  entrypoint?: unknown;
  user?: unknown;
  pullPolicy?: unknown;
  registryAuth?: unknown;
  insecureRegistry?: unknown;
  registryCa?: unknown;
  idleTimeout?: unknown;
  maxDuration?: unknown;
}

/**
 * Registry credentials as a configuration holds them. `password` is absent from a
 * configuration read back from the state store: it is never written to disk.
 */
export interface ConfigRegistryAuth {
  kind: "basic";
  username: string;
  password?: string;
}

/** A validated sandbox configuration. */
export interface SandboxConfig {
  name: string;
  /**
   * Root filesystem as given: an absolute host path (directory or disk image), an OCI
   * reference (see `imageKind`), or `null` for the embedded default image.
   */
  image: string | null;
  imageKind: "path" | "oci" | null;
  cpus: number;
  memoryMib: number;
  env: [string, string][];
  workdir: string | null;
  hostname: string | null;
  /** Overrides the image's entrypoint (used by `msb run`; `exec` runs what it is given). */
  entrypoint: string[] | null;
  /** The image's default command (OCI images only; `msb run` uses it when given none). */
  cmd?: string[] | null;
  /** Default user of every command; `null`: the image's user, else root. */
  user: string | null;
  pullPolicy: PullPolicy;
  /** Present only when set; never printed, and its password is never stored. */
  registryAuth: ConfigRegistryAuth | null;
  insecureRegistry: boolean;
  /** Extra CA certificate (PEM file) for the registry's TLS. */
  registryCa: string | null;
  /** Drain the sandbox after this many seconds without an exec session (`null`: never). */
  idleTimeoutSecs: number | null;
  /** Drain and stop the sandbox at this age, in seconds (`null`: no limit). */
  maxDurationSecs: number | null;
  /** Manifest digest of the OCI image the sandbox was created from (OCI images only). */
  imageDigest?: string | null;
}

/**
 * Tell a host path from an OCI reference: anything that starts like a path (`/`, `./`,
 * `../`, `~`) or exists on the host is a path; everything else is an image reference.
 */
export function imageKindOf(image: string, cwd: string): "path" | "oci" {
  if (/^(\/|\.\.?(\/|$)|~)/.test(image)) return "path";
  return existsSync(resolve(cwd, image)) ? "path" : "oci";
}

/** Validate everything the builder recorded. Throws {@link InvalidConfigError} on the first bad field. */
export function validateConfig(raw: RawSandboxConfig, cwd: string = process.cwd()): SandboxConfig {
  const name = check(nameSchema, "name", raw.name);
  let image: string | null = null;
  let imageKind: "path" | "oci" | null = null;
  if (raw.image !== undefined) {
    const given = check(imageSchema, "image", raw.image);
    imageKind = imageKindOf(given, cwd);
    image = imageKind === "path" ? resolve(cwd, given.replace(/^~(?=\/|$)/, homedir())) : given;
  }
  const cpus = raw.cpus === undefined ? DEFAULT_CPUS : check(cpusSchema, "cpus", raw.cpus);
  const memoryMib = raw.memory === undefined ? DEFAULT_MEMORY_MIB : check(memorySchema, "memory", raw.memory);
  // Later .env() calls for the same key replace earlier ones; order of first appearance is kept.
  const env = new Map<string, string>();
  for (const [k, v] of raw.env) {
    const key = check(envKeySchema, "env", k, "env key");
    env.set(key, check(envValueSchema, "env", v, `env value of ${key}`));
  }
  const workdir = raw.workdir === undefined ? null : check(workdirSchema, "workdir", raw.workdir);
  const hostname = raw.hostname === undefined ? null : check(hostnameSchema, "hostname", raw.hostname);
  const entrypoint = raw.entrypoint === undefined ? null : check(entrypointSchema, "entrypoint", raw.entrypoint);
  const user = raw.user === undefined ? null : check(userSchema, "user", raw.user);
  const pullPolicy = raw.pullPolicy === undefined ? "if-missing" : check(pullPolicySchema, "pullPolicy", raw.pullPolicy);
  const registryAuth = raw.registryAuth === undefined ? null : check(registryAuthSchema, "registryAuth", raw.registryAuth);
  const insecureRegistry =
    raw.insecureRegistry === undefined ? false : check(z.boolean({ error: "must be a boolean" }), "insecureRegistry", raw.insecureRegistry);
  const registryCa = raw.registryCa === undefined ? null : resolve(cwd, check(imageSchema, "registryCa", raw.registryCa));
  const idleTimeoutSecs = raw.idleTimeout === undefined ? null : check(secondsSchema, "idleTimeout", raw.idleTimeout);
  const maxDurationSecs = raw.maxDuration === undefined ? null : check(secondsSchema, "maxDuration", raw.maxDuration);
  return {
    name,
    image,
    imageKind,
    cpus,
    memoryMib,
    env: [...env],
    workdir,
    hostname,
    entrypoint,
    user,
    pullPolicy,
    registryAuth,
    insecureRegistry,
    registryCa,
    idleTimeoutSecs,
    maxDurationSecs,
  };
}

/**
 * The configuration as it is stored with the sandbox (JSON-safe): everything but the
 * registry password.
 */
export function persistableConfig(config: SandboxConfig): SandboxConfig {
  const out: SandboxConfig = { ...config, env: config.env.map(([k, v]): [string, string] => [k, v]) };
  if (config.registryAuth) out.registryAuth = { kind: config.registryAuth.kind, username: config.registryAuth.username };
  return out;
}

const stringArray = z.array(z.string());
const storedConfigSchema = z.object({
  name: nameSchema,
  image: z.string().nullable().default(null),
  imageKind: z.enum(["path", "oci"]).nullable().default(null),
  cpus: cpusSchema,
  memoryMib: memorySchema,
  env: z.array(z.tuple([z.string(), z.string()])).default([]),
  workdir: z.string().nullable().default(null),
  hostname: z.string().nullable().default(null),
  entrypoint: stringArray.nullable().default(null),
  cmd: stringArray.nullable().optional(),
  user: z.string().nullable().default(null),
  pullPolicy: pullPolicySchema.default("if-missing"),
  registryAuth: z
    .object({ kind: z.literal("basic"), username: z.string() })
    .nullable()
    .default(null),
  insecureRegistry: z.boolean().default(false),
  registryCa: z.string().nullable().default(null),
  idleTimeoutSecs: secondsSchema.nullable().default(null),
  maxDurationSecs: secondsSchema.nullable().default(null),
  imageDigest: z.string().nullable().optional(),
});

/**
 * Read back a configuration stored by {@link persistableConfig}. Throws
 * {@link CorruptConfigError} (naming the sandbox and the bad field) when it is not
 * JSON or not a configuration.
 */
export function parseStoredConfig(configJson: string, sandbox: string): SandboxConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(configJson);
  } catch (e) {
    throw new CorruptConfigError(sandbox, `the stored configuration of sandbox ${sandbox} is not valid JSON`, { cause: e });
  }
  const r = storedConfigSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    const where = issue && issue.path.length > 0 ? issue.path.join(".") : "configuration";
    throw new CorruptConfigError(sandbox, `the stored configuration of sandbox ${sandbox} is invalid: ${where}: ${issue?.message ?? "invalid"}`, {
      cause: r.error,
    });
  }
  const d = r.data;
  if (d.name !== sandbox) {
    throw new CorruptConfigError(sandbox, `the stored configuration of sandbox ${sandbox} names another sandbox (${JSON.stringify(d.name)})`);
  }
  const config: SandboxConfig = { ...d, env: d.env.map(([k, v]): [string, string] => [k, v]) };
  if (d.cmd === undefined) delete config.cmd;
  if (d.imageDigest === undefined) delete config.imageDigest;
  return config;
}

/** `$MSB_HOME`, or `~/.microsandbox`, as an absolute path. Read at call time. */
export function msbHome(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.MSB_HOME;
  if (fromEnv !== undefined && fromEnv !== "") return isAbsolute(fromEnv) ? fromEnv : resolve(fromEnv);
  return join(homedir(), ".microsandbox");
}

/** Boot timeout: `$MSB_BOOT_TIMEOUT_MS` when set to a positive integer, else 60 s. */
export function bootTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = env.MSB_BOOT_TIMEOUT_MS;
  if (v !== undefined && /^[1-9][0-9]*$/.test(v)) return Number(v);
  return DEFAULT_BOOT_TIMEOUT_MS;
}
