/**
 * Validation of sandbox configuration (zod, at the SDK boundary). Each field is
 * checked on its own so that the resulting {@link InvalidConfigError} names
 * exactly one field, in both `field` and the message.
 */
import { existsSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, join, posix, resolve } from "node:path";
import { z } from "zod";
import { DEFAULT_BOOT_TIMEOUT_MS, LOG_LEVELS, MIN_MEMORY_MIB, MOUNT_KINDS, type RuntimeConfig, type Same, type SecretRule, type SecretValue } from "@microsandbox/contract";
import { defaultNetConfig, secretValueSchema, type NetConfig } from "@microsandbox/netstack";
import { CorruptConfigError, InvalidConfigError } from "./errors.js";
import { checkBootstrapSizes, checkBytes, checkPath } from "./input-limits.js";
import { MAX_ARG_BYTES } from "./limits.js";

export const DEFAULT_CPUS = 1;
export const DEFAULT_MEMORY_MIB = 512;
/**
 * Smallest guest memory accepted, in MiB (`MIN_MEMORY_MIB`), and the boot timeout
 * when none is given (`DEFAULT_BOOT_TIMEOUT_MS`): msb-runtime's own values, from the
 * contract (crates/contract).
 */
export { DEFAULT_BOOT_TIMEOUT_MS, MIN_MEMORY_MIB };
export const MAX_MEMORY_MIB = 1024 * 1024;
export const MAX_CPUS = 255;
export const MAX_NAME_LENGTH = 63;

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

export const logLevelSchema = z.enum(LOG_LEVELS, {
  error: 'must be "trace", "debug", "info", "warn" or "error"',
});
export type LogLevel = z.infer<typeof logLevelSchema>;
// The schema accepts exactly the levels msb-runtime takes (checked at compile time).
const _logLevelIsTheRuntimes: Same<LogLevel, NonNullable<RuntimeConfig["logLevel"]>> = true;

/** An absolute guest path: starts with '/', no NUL, no '..' component. */
export const guestPathSchema = z
  .string({ error: "must be a string" })
  .refine((p) => p.startsWith("/"), { error: "must be an absolute guest path (start with '/')" })
  .refine(noNul, { error: "must not contain NUL" })
  .refine((p) => !p.split("/").includes(".."), { error: "must not contain '..'" });

/** Name of a script in /.msb/scripts: one path component. */
export const scriptNameSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .max(255, { error: "must be at most 255 characters" })
  .refine((n) => !n.includes("/"), { error: "must not contain '/'" })
  .refine(noNul, { error: "must not contain NUL" })
  .refine((n) => n !== "." && n !== "..", { error: "must not be '.' or '..'" });

export const scriptContentSchema = z.string({ error: "must be a string" });

/** File permission bits, 0 to 0o7777. */
export const modeSchema = z
  .number({ error: "must be an integer from 0 to 0o7777" })
  .int({ error: "must be an integer from 0 to 0o7777" })
  .min(0, { error: "must be an integer from 0 to 0o7777" })
  .max(0o7777, { error: "must be an integer from 0 to 0o7777" });

/** A filesystem type name for `.imageWith(i => i.fstype(...))`. */
export const fstypeSchema = z
  .string({ error: "must be a string" })
  .regex(/^[a-z][a-z0-9]{0,15}$/, { error: "must be a filesystem type such as \"ext4\" (lowercase letters and digits)" });

/** Named volume: like a sandbox name. */
export const volumeNameSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .max(MAX_NAME_LENGTH, { error: `must be at most ${MAX_NAME_LENGTH} characters` })
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, {
    error: "must start with a letter or digit and contain only letters, digits, '_', '.' and '-'",
  });

const sizeRule = "must be a positive integer number of MiB";
export const sizeMiBSchema = z
  .number({ error: sizeRule })
  .int({ error: sizeRule })
  .min(1, { error: sizeRule })
  .max(MAX_MEMORY_MIB * 1024, { error: sizeRule });

/** Label key prefixes kept for the system (as the reference SDK reserves them). */
export const RESERVED_LABEL_PREFIXES = ["sandbox.", "microsandbox.", "service."] as const;
/** Longest label key and value, in UTF-8 bytes, and most labels per sandbox. */
export const MAX_LABEL_KEY_BYTES = 253;
export const MAX_LABEL_VALUE_BYTES = 4096;
export const MAX_LABELS = 64;

const utf8Len = (s: string): number => Buffer.byteLength(s, "utf8");

/** A label key: non-empty, no reserved prefix, no `=` (so `KEY=VALUE` selectors stay unambiguous), no NUL. */
export const labelKeySchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .refine((k) => utf8Len(k) <= MAX_LABEL_KEY_BYTES, { error: `must be at most ${MAX_LABEL_KEY_BYTES} bytes` })
  .refine((k) => !k.includes("="), { error: "must not contain '='" })
  .refine(noNul, { error: "must not contain NUL" })
  .refine((k) => !RESERVED_LABEL_PREFIXES.some((p) => k.startsWith(p)), {
    error: `must not start with a reserved prefix (${RESERVED_LABEL_PREFIXES.join(", ")})`,
  });

/** A label value: any string (empty too) up to the limit, no NUL. */
export const labelValueSchema = z
  .string({ error: "must be a string" })
  .refine((v) => utf8Len(v) <= MAX_LABEL_VALUE_BYTES, { error: `must be at most ${MAX_LABEL_VALUE_BYTES} bytes` })
  .refine(noNul, { error: "must not contain NUL" });

/**
 * Check `[key, value]` pairs (later ones win) into a label record. Errors are
 * `InvalidConfigError` with `field` (default `"label"`) and the key in the message.
 */
export function checkLabels(pairs: readonly (readonly [unknown, unknown])[], field = "label"): Record<string, string> {
  const out = new Map<string, string>();
  for (const [k, v] of pairs) {
    const key = check(labelKeySchema, field, k, "label key");
    out.set(key, check(labelValueSchema, field, v, `label value of ${key}`));
  }
  if (out.size > MAX_LABELS) throw new InvalidConfigError(field, `invalid labels: at most ${MAX_LABELS} labels per sandbox (got ${out.size})`);
  return Object.fromEntries(out);
}

/** Transparent huge-page policy of the guest kernel (`/sys/kernel/mm/transparent_hugepage/enabled`). */
export const thpSchema = z.enum(["always", "madvise", "never"], { error: 'must be "always", "madvise" or "never"' });
export type ThpPolicy = z.infer<typeof thpSchema>;

/** `.init(cmd)`: `"auto"` or an absolute guest path. */
export const initCmdSchema = z
  .string({ error: "must be a string" })
  .refine((c) => c === "auto" || c.startsWith("/"), { error: 'must be "auto" or an absolute guest path' })
  .refine(noNul, { error: "must not contain NUL" });

/** What `.init()` / `.initWith()` recorded (see {@link SandboxConfig.init}). */
export interface InitConfig {
  /** `"auto"` or an absolute path in the guest. */
  cmd: string;
  args: string[];
  env: [string, string][];
}

const hostPathSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .refine(noNul, { error: "must not contain NUL" });

/** A volume of the sandbox, as configured (and as msb-runtime takes it). */
export interface VolumeMount {
  /** Absolute path inside the guest. */
  guestPath: string;
  kind: "bind" | "named" | "tmpfs";
  /** bind: absolute host directory; named: volume name; tmpfs: `null`. */
  source: string | null;
  readonly: boolean;
  /** tmpfs: size cap in MiB (`null`: the guest kernel's default, half its memory). */
  sizeMiB: number | null;
}

/** What a `.volume()` builder recorded. */
export interface RawVolume {
  guestPath: unknown;
  /** Every kind chosen, in order (exactly one is valid). */
  kinds: ("bind" | "named" | "tmpfs")[];
  source?: unknown;
  readonly?: unknown;
  sizeMiB?: unknown;
}

export type PatchKind = "text" | "file" | "copyFile" | "copyDir" | "symlink" | "mkdir" | "remove" | "append";

/** What a `.patch()` builder recorded for one step. */
export interface RawPatch {
  kind: PatchKind;
  path: unknown;
  content?: unknown;
  source?: unknown;
  target?: unknown;
  mode?: unknown;
}

/** A validated patch step, with its payload (applied at create, in order). */
export interface PatchOp {
  kind: PatchKind;
  /** Guest path the step writes (the link for a symlink). */
  path: string;
  /** text, file, append: the bytes to write. */
  content: Uint8Array | null;
  /** copyFile, copyDir: absolute host path. */
  source: string | null;
  /** symlink: the link's target (stored as is). */
  target: string | null;
  /** text, file, copyFile, mkdir: permission bits; `null`: default (copyFile: the host file's). */
  mode: number | null;
}

/** A patch step as the configuration records it (without its payload). */
export interface PatchRecord {
  kind: PatchKind;
  path: string;
  source: string | null;
  target: string | null;
  mode: number | null;
  /** text, file, append: how many bytes it writes. */
  bytes: number | null;
}

const utf8 = new TextEncoder();

/** A guest path in normal form: `.` and duplicate slashes gone, no trailing slash. */
export function normalizeGuestPath(p: string): string {
  const n = posix.normalize(p);
  return n.length > 1 && n.endsWith("/") ? n.slice(0, -1) : n;
}

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
  /** `.imageWith(i => i.disk(p))`: the image is a disk image path, whatever it looks like. */
  imageIsDisk?: boolean;
  imageFstype?: unknown;
  shell?: unknown;
  scripts?: [unknown, unknown][];
  patches?: RawPatch[];
  volumes?: RawVolume[];
  logLevel?: unknown;
  /** The network as `.network()`, `.port()`, `.portUdp()` built it (absent: the default network). */
  network?: NetConfig;
  /** `.disableNetwork()`: no NIC at all. */
  networkDisabled?: boolean;
  /** The first error a network setter raised (thrown at validation). */
  networkError?: { field: string; message: string; cause: unknown };
  /** The values of `network.secrets` (`.secret()`, `.secretEnv()`), by env var. */
  secretValues?: SecretValue[];
  /** `.label(k, v)` / `.labels({...})`, in order (later ones win). */
  labels?: [unknown, unknown][];
  maxCpus?: unknown;
  maxMemory?: unknown;
  thp?: unknown;
  init?: { cmd: unknown; args: unknown; env: [unknown, unknown][] };
  ephemeral?: unknown;
  memoryTemplate?: unknown;
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
  /** Filesystem of a disk image given with `.imageWith(i => i.disk(p).fstype(t))`; `null`: detected. */
  imageFstype: string | null;
  /** Shell of `sb.shell()` and `sb.shellStream()`; `null`: /bin/sh. */
  shell: string | null;
  /** Scripts placed in /.msb/scripts (on every command's PATH): [name, content]. */
  scripts: [string, string][];
  /** Patches applied to the writable layer at create (recorded without their contents). */
  patches: PatchRecord[];
  /** Volumes: bind-mounted host directories, named volumes, tmpfs. */
  volumes: VolumeMount[];
  /** Verbosity of the sandbox's runtime log (`runtime.log`); `null`: info. */
  logLevel: LogLevel | null;
  /**
   * The network (policy, published ports, TLS interception, secrets without their
   * values) as the native stack reads it; `null`: no network (no NIC).
   */
  network: NetConfig | null;
  /**
   * The values of `network.secrets`, by env var: handed to msb-runtime on its stdin
   * (`RuntimeConfig.secretValues`) and nowhere else. Never stored
   * ({@link persistableConfig}), never copied ({@link copyConfig}, so never in
   * `sb.config()`); absent from every configuration read back.
   */
  secretValues?: SecretValue[];
  /** User labels (`.label(k, v)`): filter `Sandbox.listWith(l => l.label(k, v))`. `{}` when none. */
  labels: Record<string, string>;
  /** Upper bound for `modify({ cpus })` (`.maxCpus(n)`); `null`: none set (up to 255). */
  maxCpus: number | null;
  /** Upper bound for `modify({ memory })`, in MiB (`.maxMemory(mib)`); `null`: none set. */
  maxMemoryMib: number | null;
  /** Transparent huge pages of the guest kernel, set at every boot; `null`: the kernel's default. */
  thp: ThpPolicy | null;
  /**
   * `.init(cmd, args)`: the agent stays PID 1 (it reaps orphans and stops every process
   * at shutdown, as an init does). `"auto"` needs nothing more; a path is started at every
   * boot as a background service of the agent, with its args and env. `null`: none.
   */
  init: InitConfig | null;
  /** Removed when its VM ends, however it ends (`.ephemeral()`). */
  ephemeral: boolean;
  /** Start from a memory template when one matches (`.memoryTemplate(false)`: always boot cold). */
  memoryTemplate: boolean;
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
  return validateAll(raw, cwd).config;
}

/** {@link validateConfig}, also returning the patch steps with their payloads. */
export function validateAll(raw: RawSandboxConfig, cwd: string = process.cwd()): { config: SandboxConfig; patches: PatchOp[] } {
  const name = check(nameSchema, "name", raw.name);
  let image: string | null = null;
  let imageKind: "path" | "oci" | null = null;
  if (raw.image !== undefined) {
    const given = check(imageSchema, "image", raw.image);
    imageKind = raw.imageIsDisk ? "path" : imageKindOf(given, cwd);
    image = imageKind === "path" ? resolve(cwd, given.replace(/^~(?=\/|$)/, homedir())) : given;
  } else if (raw.imageIsDisk) {
    throw new InvalidConfigError("image", "invalid image: imageWith() needs a disk image path: i.disk(path)");
  }
  let imageFstype: string | null = null;
  if (raw.imageFstype !== undefined) {
    imageFstype = check(fstypeSchema, "imageFstype", raw.imageFstype, "image fstype");
    if (!raw.imageIsDisk) {
      throw new InvalidConfigError("imageFstype", "invalid image fstype: a filesystem type needs a disk image: imageWith(i => i.disk(path).fstype(type))");
    }
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
  const shell = raw.shell === undefined ? null : check(cmdSchema, "shell", raw.shell);
  const scriptMap = new Map<string, string>();
  for (const [n, c] of raw.scripts ?? []) {
    const sname = check(scriptNameSchema, "script", n, "script name");
    scriptMap.set(sname, check(scriptContentSchema, "script", c, `script content of ${sname}`));
  }
  const labels = checkLabels(raw.labels ?? []);
  const maxCpus = raw.maxCpus === undefined ? null : check(cpusSchema, "maxCpus", raw.maxCpus);
  if (maxCpus !== null && maxCpus < cpus) throw new InvalidConfigError("maxCpus", `invalid maxCpus ${maxCpus}: maxCpus must be at least cpus (${cpus})`);
  const maxMemoryMib = raw.maxMemory === undefined ? null : check(memorySchema, "maxMemory", raw.maxMemory);
  if (maxMemoryMib !== null && maxMemoryMib < memoryMib) {
    throw new InvalidConfigError("maxMemory", `invalid maxMemory ${maxMemoryMib}: maxMemory must be at least memory (${memoryMib} MiB)`);
  }
  const thp = raw.thp === undefined ? null : check(thpSchema, "thp", raw.thp);
  let init: InitConfig | null = null;
  if (raw.init !== undefined) {
    const cmd = check(initCmdSchema, "init", raw.init.cmd, "init command");
    const args = check(argsSchema, "init", raw.init.args, "init args");
    const initEnv = new Map<string, string>();
    for (const [k, v] of raw.init.env) {
      const key = check(envKeySchema, "init", k, "init env key");
      initEnv.set(key, check(envValueSchema, "init", v, `init env value of ${key}`));
    }
    if (cmd === "auto" && (args.length > 0 || initEnv.size > 0)) {
      throw new InvalidConfigError("init", 'invalid init: "auto" takes no args or env (the agent itself is the init)');
    }
    checkBytes("init", "the init command", cmd, MAX_ARG_BYTES, "an argument may have (Linux's MAX_ARG_STRLEN)");
    args.forEach((a) => checkBytes("init", "an init argument", a, MAX_ARG_BYTES, "an argument may have (Linux's MAX_ARG_STRLEN)"));
    init = { cmd, args, env: [...initEnv] };
  }
  const ephemeral = raw.ephemeral === undefined ? false : check(z.boolean({ error: "must be a boolean" }), "ephemeral", raw.ephemeral);
  const memoryTemplate = raw.memoryTemplate === undefined ? true : check(z.boolean({ error: "must be a boolean" }), "memoryTemplate", raw.memoryTemplate);
  const patches = validatePatches(raw.patches ?? [], cwd);
  const volumes = validateVolumes(raw.volumes ?? [], cwd);
  const logLevel = raw.logLevel === undefined ? null : check(logLevelSchema, "logLevel", raw.logLevel);
  if (raw.networkError) throw new InvalidConfigError(raw.networkError.field, raw.networkError.message, { cause: raw.networkError.cause });
  const network = raw.networkDisabled ? null : structuredClone(raw.network ?? defaultNetConfig());
  const secrets = raw.network?.secrets ?? [];
  if (raw.networkDisabled && secrets.length > 0) {
    throw new InvalidConfigError(
      "secret",
      `invalid secret ${secrets[0]?.envVar ?? ""}: secrets need the network (they are substituted in the sandbox's TLS traffic), but disableNetwork() removed it`,
    );
  }
  for (const r of secrets) {
    if (env.has(r.envVar)) {
      throw new InvalidConfigError(
        "secret.env",
        `invalid secret.env ${JSON.stringify(r.envVar)}: env(${JSON.stringify(r.envVar)}) sets the same variable, which holds the secret's placeholder in the guest; drop one of them`,
      );
    }
  }
  entrypoint?.forEach((a, i) => checkBytes(`entrypoint[${i}]`, "the argument", a, MAX_ARG_BYTES, "an argument may have (Linux's MAX_ARG_STRLEN)"));
  // What the guest gets in its bootstrap frame (msb-runtime adds each secret's
  // placeholder to the environment): checked now, before anything boots.
  checkBootstrapSizes({ name, env: [...env, ...placeholderEnv(network)], workdir, user, hostname, volumes });
  const config: SandboxConfig = {
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
    imageFstype,
    shell,
    scripts: [...scriptMap],
    patches: patches.map(patchRecord),
    volumes,
    logLevel,
    network,
    labels,
    maxCpus,
    maxMemoryMib,
    thp,
    init,
    ephemeral,
    memoryTemplate,
  };
  const values = network === null ? [] : (raw.secretValues ?? []);
  if (values.length > 0) config.secretValues = values.map((v) => ({ envVar: v.envVar, value: v.value }));
  return { config, patches };
}

function patchRecord(p: PatchOp): PatchRecord {
  return { kind: p.kind, path: p.path, source: p.source, target: p.target, mode: p.mode, bytes: p.content === null ? null : p.content.byteLength };
}

function contentBytes(v: unknown, what: string): Uint8Array {
  if (typeof v === "string") return utf8.encode(v);
  if (v instanceof Uint8Array) return v;
  throw new InvalidConfigError("patch", `invalid patch: the content of ${what} must be a string or a Uint8Array`);
}

/** What kind of thing is at a host path (following symlinks), or undefined when nothing is. */
function hostKind(p: string): "file" | "dir" | "other" | undefined {
  try {
    const st = statSync(p);
    return st.isFile() ? "file" : st.isDirectory() ? "dir" : "other";
  } catch {
    return undefined;
  }
}

/**
 * Check the patch steps: absolute guest paths, modes, and host sources that exist
 * (copyFile: a file, copyDir: a directory). Host paths are resolved against `cwd`.
 */
export function validatePatches(raw: readonly RawPatch[], cwd: string = process.cwd()): PatchOp[] {
  return raw.map((r, i) => {
    const label = `patch ${r.kind} path`;
    const path = normalizeGuestPath(check(guestPathSchema, "patch", r.path, label));
    checkPath("patch", path);
    const mode = r.mode === undefined || r.mode === null ? null : check(modeSchema, "patch", r.mode, `patch ${r.kind} mode`);
    const op: PatchOp = { kind: r.kind, path, content: null, source: null, target: null, mode };
    switch (r.kind) {
      case "text":
      case "file":
      case "append":
        op.content = contentBytes(r.content, `${r.kind}(${path})`);
        break;
      case "copyFile":
      case "copyDir": {
        const src = resolve(cwd, check(hostPathSchema, "patch", r.source, `patch ${r.kind} source`));
        const kind = hostKind(src);
        const want = r.kind === "copyFile" ? "file" : "dir";
        if (kind === undefined) throw new InvalidConfigError("patch", `invalid patch: ${r.kind} source ${src} does not exist on the host`);
        if (kind !== want) {
          throw new InvalidConfigError("patch", `invalid patch: ${r.kind} source ${src} is not a ${want === "file" ? "regular file" : "directory"}`);
        }
        op.source = src;
        break;
      }
      case "symlink":
        op.target = check(
          z.string({ error: "must be a string" }).min(1, { error: "must not be empty" }).refine(noNul, { error: "must not contain NUL" }),
          "patch",
          r.target,
          "patch symlink target",
        );
        checkPath("patch", op.target);
        break;
      case "mkdir":
      case "remove":
        break;
      default:
        throw new InvalidConfigError("patch", `invalid patch: unknown step ${JSON.stringify((r as { kind: unknown }).kind)} (#${i + 1})`);
    }
    return op;
  });
}

/** Check `.volume()` mounts: absolute unique guest paths, one kind each, bind sources that are host directories. */
export function validateVolumes(raw: readonly RawVolume[], cwd: string = process.cwd()): VolumeMount[] {
  const seen = new Set<string>();
  return raw.map((r) => {
    const guestPath = normalizeGuestPath(check(guestPathSchema, "volume", r.guestPath, "volume guest path"));
    if (guestPath === "/") throw new InvalidConfigError("volume", "invalid volume guest path \"/\": a volume cannot replace the root filesystem");
    if (seen.has(guestPath)) throw new InvalidConfigError("volume", `invalid volume guest path ${JSON.stringify(guestPath)}: mounted twice`);
    seen.add(guestPath);
    const kinds = [...new Set(r.kinds)];
    if (kinds.length !== 1) {
      throw new InvalidConfigError(
        "volume",
        `invalid volume ${guestPath}: choose exactly one of bind(hostDir), named(name), tmpfs()${kinds.length > 1 ? ` (got ${kinds.join(", ")})` : ""}`,
      );
    }
    const kind = kinds[0] as VolumeMount["kind"];
    const readonly = r.readonly === undefined ? false : check(z.boolean({ error: "must be a boolean" }), "volume", r.readonly, `volume ${guestPath} readonly`);
    let source: string | null = null;
    let sizeMiB: number | null = null;
    if (kind === "bind") {
      source = resolve(cwd, check(hostPathSchema, "volume", r.source, `volume ${guestPath} bind source`).replace(/^~(?=\/|$)/, homedir()));
      checkBindSource(source, guestPath);
    } else if (kind === "named") {
      source = check(volumeNameSchema, "volume", r.source, `volume ${guestPath} name`);
    } else if (r.sizeMiB !== undefined && r.sizeMiB !== null) {
      sizeMiB = check(sizeMiBSchema, "volume", r.sizeMiB, `volume ${guestPath} sizeMiB`);
    }
    return { guestPath, kind, source, readonly, sizeMiB };
  });
}

/** A bind source must be an existing host directory. */
export function checkBindSource(source: string, guestPath: string): void {
  const kind = hostKind(source);
  if (kind === undefined) throw new InvalidConfigError("volume", `invalid volume ${guestPath}: bind source ${source} does not exist on the host`);
  if (kind !== "dir") throw new InvalidConfigError("volume", `invalid volume ${guestPath}: bind source ${source} is not a directory`);
}

/**
 * The configuration as it is stored with the sandbox (JSON-safe): everything but the
 * registry password and the secret values.
 */
export function persistableConfig(config: SandboxConfig): SandboxConfig {
  const out: SandboxConfig = copyConfig(config);
  if (config.registryAuth) out.registryAuth = { kind: config.registryAuth.kind, username: config.registryAuth.username };
  return out;
}

/** The `[envVar, placeholder]` pairs msb-runtime adds to the guest's environment. */
export function placeholderEnv(network: NetConfig | null): [string, string][] {
  return (network?.secrets ?? []).map((r): [string, string] => [r.envVar, r.placeholder]);
}

/**
 * The values `Sandbox.start(name, { secrets })` gives for a stored sandbox's secrets,
 * checked as `.secret()` checks them: each key one of the sandbox's secrets, each value
 * a valid secret value different from its placeholder. No message shows a value.
 */
export function startSecretValues(config: SandboxConfig, options: unknown): SecretValue[] {
  if (options === undefined) return [];
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new InvalidConfigError("options", "invalid options: must be an object such as { secrets: { API_KEY: value } }");
  }
  const unknown = Object.keys(options).filter((k) => k !== "secrets");
  if (unknown.length > 0) throw new InvalidConfigError("options", `invalid options: unknown option ${JSON.stringify(unknown[0])} (the only one is secrets)`);
  const given = (options as { secrets?: unknown }).secrets;
  if (given === undefined) return [];
  if (given === null || typeof given !== "object" || Array.isArray(given)) {
    throw new InvalidConfigError("secrets", "invalid secrets: must be an object of env var -> value, such as { API_KEY: value }");
  }
  const rules: SecretRule[] = Array.isArray(config.network?.secrets) ? config.network.secrets : [];
  const out: SecretValue[] = [];
  for (const [envVar, value] of Object.entries(given as Record<string, unknown>)) {
    const rule = rules.find((r) => r.envVar === envVar);
    if (rule === undefined) {
      const have = rules.length === 0 ? "it has none" : `its secrets: ${rules.map((r) => r.envVar).join(", ")}`;
      throw new InvalidConfigError("secrets", `invalid secrets: sandbox ${config.name} has no secret ${JSON.stringify(envVar)} (${have})`);
    }
    const r = secretValueSchema.safeParse(value);
    if (!r.success) {
      throw new InvalidConfigError("secrets", `invalid secrets: the value of ${envVar} ${r.error.issues[0]?.message ?? "is invalid"} (the value is not shown)`);
    }
    if (r.data === rule.placeholder) throw new InvalidConfigError("secrets", `invalid secrets: the value of ${envVar} must differ from its placeholder`);
    out.push({ envVar, value: r.data });
  }
  return out;
}

/**
 * A deep copy (the arrays and their entries are the caller's to change), without the
 * secret values: a copy is what callers see and what is stored.
 */
export function copyConfig(config: SandboxConfig): SandboxConfig {
  const out: SandboxConfig = {
    ...config,
    env: config.env.map(([k, v]): [string, string] => [k, v]),
    scripts: config.scripts.map(([k, v]): [string, string] => [k, v]),
    patches: config.patches.map((p) => ({ ...p })),
    volumes: config.volumes.map((v) => ({ ...v })),
    network: config.network === null ? null : structuredClone(config.network),
    labels: { ...config.labels },
    init: config.init === null ? null : { cmd: config.init.cmd, args: [...config.init.args], env: config.init.env.map(([k, v]): [string, string] => [k, v]) },
    ...(config.entrypoint ? { entrypoint: [...config.entrypoint] } : {}),
    ...(config.cmd ? { cmd: [...config.cmd] } : {}),
  };
  delete out.secretValues;
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
  imageFstype: z.string().nullable().default(null),
  shell: z.string().nullable().default(null),
  scripts: z.array(z.tuple([z.string(), z.string()])).default([]),
  patches: z
    .array(
      z.object({
        kind: z.enum(["text", "file", "copyFile", "copyDir", "symlink", "mkdir", "remove", "append"]),
        path: z.string(),
        source: z.string().nullable().default(null),
        target: z.string().nullable().default(null),
        mode: z.number().int().nullable().default(null),
        bytes: z.number().int().nullable().default(null),
      }),
    )
    .default([]),
  volumes: z
    .array(
      z.object({
        guestPath: z.string(),
        kind: z.enum(MOUNT_KINDS),
        source: z.string().nullable(),
        readonly: z.boolean().default(false),
        sizeMiB: z.number().int().nullable().default(null),
      }),
    )
    .default([]),
  logLevel: logLevelSchema.nullable().default(null),
  // Sandboxes stored before networking existed had no NIC.
  network: z.record(z.string(), z.unknown()).nullable().default(null),
  // Sandboxes stored before labels, bounds, thp, init and ephemeral existed had none.
  labels: z.record(z.string(), z.string()).default({}),
  maxCpus: cpusSchema.nullable().default(null),
  maxMemoryMib: memorySchema.nullable().default(null),
  thp: thpSchema.nullable().default(null),
  init: z
    .object({ cmd: z.string(), args: z.array(z.string()).default([]), env: z.array(z.tuple([z.string(), z.string()])).default([]) })
    .nullable()
    .default(null),
  ephemeral: z.boolean().default(false),
  memoryTemplate: z.boolean().default(true),
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
  const config: SandboxConfig = {
    ...d,
    network: d.network as NetConfig | null,
    env: d.env.map(([k, v]): [string, string] => [k, v]),
    scripts: d.scripts.map(([k, v]): [string, string] => [k, v]),
    init: d.init === null ? null : { cmd: d.init.cmd, args: d.init.args, env: d.init.env.map(([k, v]): [string, string] => [k, v]) },
  };
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
