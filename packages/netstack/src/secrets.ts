/**
 * Secrets and TLS interception: `SecretBuilder`, `ViolationActionBuilder`, `TlsBuilder`
 * (the reference SDK's names and defaults), validated with zod at every method.
 *
 * A secret's value never goes into the network configuration: `NetworkBuilder`
 * emits `NetConfig.secrets` as rules (env var, placeholder, hosts, scopes) and hands the
 * values out separately (`secretValues()`, for `RuntimeConfig.secretValues`, which only
 * ever travels on msb-runtime's stdin). No error message shows a value.
 *
 * Host names follow crates/netstack/src/secrets_config.rs (`valid_host`,
 * `valid_host_pattern`), and are stricter: lower case without a trailing dot (both
 * normalized here), an IDN converted to punycode, no IP address (the TLS SNI a secret
 * is bound to never carries one), a `*.suffix` pattern with at least two labels.
 */
import { readFileSync, openSync, fstatSync, closeSync } from "node:fs";
import { resolve } from "node:path";
import { domainToASCII } from "node:url";
import { z } from "zod";
import {
  DEFAULT_INTERCEPTED_PORTS,
  MAX_PLACEHOLDER_LEN,
  MAX_SECRET_VALUE_LEN,
  VIOLATION_KINDS,
  type SecretInjection,
  type TlsConfig,
  type ViolationAction,
  type ViolationKind,
} from "@microsandbox/contract";
import { check, checkHidden, NetworkConfigError } from "./errors.js";

export { DEFAULT_INTERCEPTED_PORTS, MAX_PLACEHOLDER_LEN, MAX_SECRET_VALUE_LEN, VIOLATION_KINDS };
export { MAX_SECRETS } from "@microsandbox/contract";
export type { SecretInjection, SecretRule, SecretValue, TlsConfig, ViolationAction, ViolationKind } from "@microsandbox/contract";

/** The env var prefix microsandbox keeps for itself (as the reference does). */
export const RESERVED_ENV_PREFIX = "MSB_";
/** Longest secret env var name, in bytes. */
export const MAX_SECRET_ENV_LEN = 256;
/** Largest upstream CA file read, in bytes. */
export const MAX_CA_FILE_BYTES = 1024 * 1024;
const PEM_CERT = "-----BEGIN CERTIFICATE-----";

/** A secret as {@link SecretBuilder.build} makes it (the reference's `SecretEntry`), with its value. */
export interface SecretEntry {
  /** The guest environment variable that holds the placeholder. */
  envVar: string;
  /** The real value: substituted on the host, never seen by the guest. */
  value: string;
  /** What the guest sees instead of the value (default `$MSB_<envVar>`). */
  placeholder: string;
  /** Exact host names that receive the value (lower case, punycode, no trailing dot). */
  allowedHosts: string[];
  /** `*.suffix` patterns (also matching `suffix`) that receive the value. */
  allowedHostPatterns: string[];
  /** Every host receives the value (`allowAnyHostDangerous(true)`). */
  allowAnyHost: boolean;
  /** Substitute only over an upstream whose certificate was verified (default true). */
  requireTlsIdentity: boolean;
  /** Where in a request the value may be substituted. */
  injection: SecretInjection;
  /** This secret's own violation action; absent: the network's (`onSecretViolation`), else block-and-log. */
  onViolation?: ViolationAction;
}

// ---------------------------------------------------------------- schemas

const utf8Bytes = (s: string) => Buffer.byteLength(s, "utf8");
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const wellFormed = (s: string) => !LONE_SURROGATE.test(s);

export const secretEnvSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .refine((s) => !s.includes("="), { error: "must not contain '='" })
  .refine((s) => !s.includes("\0"), { error: "must not contain NUL" })
  .refine(wellFormed, { error: "must be valid Unicode (no lone surrogate)" })
  .refine((s) => utf8Bytes(s) <= MAX_SECRET_ENV_LEN, { error: `must be at most ${MAX_SECRET_ENV_LEN} bytes` })
  .refine((s) => !s.startsWith(RESERVED_ENV_PREFIX), { error: `must not start with ${RESERVED_ENV_PREFIX} (reserved for microsandbox)` });

export const secretValueSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .refine((s) => !s.includes("\r") && !s.includes("\n"), { error: "must not contain CR or LF (it would end an HTTP header line)" })
  .refine((s) => !s.includes("\0"), { error: "must not contain NUL" })
  .refine(wellFormed, { error: "must be valid Unicode (no lone surrogate)" })
  .refine((s) => utf8Bytes(s) <= MAX_SECRET_VALUE_LEN, { error: `must be at most ${MAX_SECRET_VALUE_LEN} bytes` });

export const placeholderSchema = z
  .string({ error: "must be a string" })
  .min(1, { error: "must not be empty" })
  .refine((s) => utf8Bytes(s) <= MAX_PLACEHOLDER_LEN, { error: `must be at most ${MAX_PLACEHOLDER_LEN} bytes` })
  .refine((s) => !s.includes("\r") && !s.includes("\n"), { error: "must not contain CR or LF" })
  .refine((s) => !s.includes("\0"), { error: "must not contain NUL" })
  .refine(wellFormed, { error: "must be valid Unicode (no lone surrogate)" });

const booleanSchema = z.boolean({ error: "must be a boolean (true or false)" });

const HOST_LABEL = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/;
const IP_MESSAGE = "is an IP address: a secret is bound to the TLS server name (SNI), which is never an IP address; give the host name";

/**
 * A host name as the config holds it: lower case, no trailing dot, an IDN in punycode.
 * Returns the name, or why it is not one.
 */
function normalizeHost(given: string): { host: string } | { why: string } {
  if (given === "") return { why: "must not be empty" };
  if (given.includes("*")) return { why: "must be one host name (a *.suffix pattern goes to allowHostPattern)" };
  if (given.includes("://") || given.includes("/")) return { why: "must be a bare host name, without scheme or path (e.g. api.example.com)" };
  if (given.startsWith("[") || (given.match(/:/g)?.length ?? 0) >= 2) return { why: IP_MESSAGE };
  if (given.includes(":")) return { why: "must be a bare host name, without a port (the ports intercepted are tls.interceptedPorts)" };
  if (/\s|[\0-\x1f\x7f@]/.test(given)) return { why: "must be a host name (letters, digits, '-', '_' and dots)" };
  const noDot = given.endsWith(".") ? given.slice(0, -1) : given;
  if (isIpLike(noDot.toLowerCase())) return { why: IP_MESSAGE };
  const ascii = domainToASCII(noDot);
  if (ascii === "") return { why: "is not a valid host name" };
  if (isIpLike(ascii)) return { why: IP_MESSAGE };
  if (ascii.length > 253) return { why: "must be at most 253 characters" };
  if (!ascii.split(".").every((l) => HOST_LABEL.test(l))) {
    return { why: "must be dot-separated labels of 1 to 63 letters, digits, '-' or '_' (no empty label, no '-' at either end)" };
  }
  return { host: ascii };
}

/** The last label is numeric (or hex): IPv4 in one of its spellings (`1.2.3.4`, `10`, `0x7f.1`). */
function isIpLike(name: string): boolean {
  const last = name.split(".").pop() ?? "";
  return /^[0-9]+$/.test(last) || /^0x[0-9a-f]*$/i.test(last);
}

function hostSchemaWith(kind: "host" | "pattern" | "either") {
  return z.string({ error: "must be a string" }).transform((given, ctx) => {
    let wildcard = false;
    let name = given;
    if (kind !== "host" && given.startsWith("*.")) {
      wildcard = true;
      name = given.slice(2);
    } else if (kind === "pattern") {
      ctx.addIssue({ code: "custom", message: "must be a pattern *.suffix such as *.example.com (one host name goes to allowHost)" });
      return z.NEVER;
    }
    if (given === "*") {
      ctx.addIssue({ code: "custom", message: "must not be '*' (every host): use allowAnyHostDangerous(true) if you mean it" });
      return z.NEVER;
    }
    const r = normalizeHost(name);
    if ("why" in r) {
      ctx.addIssue({ code: "custom", message: r.why });
      return z.NEVER;
    }
    if (wildcard && !r.host.includes(".")) {
      ctx.addIssue({ code: "custom", message: "is too broad: the suffix of *.suffix needs at least two labels (*.example.com, not *.com)" });
      return z.NEVER;
    }
    return wildcard ? `*.${r.host}` : r.host;
  });
}

/** One exact host name (normalized: lower case, punycode, no trailing dot). */
export const hostNameSchema = hostSchemaWith("host");
/** A `*.suffix` pattern (matches `suffix` and every name below it). */
export const hostPatternSchema = hostSchemaWith("pattern");
/** A host name or a `*.suffix` pattern (`tls.bypass`). */
export const hostOrPatternSchema = hostSchemaWith("either");

const portRule = "must be an integer from 1 to 65535";
const tlsPortSchema = z.number({ error: portRule }).int({ error: portRule }).min(1, { error: portRule }).max(65535, { error: portRule });
export const interceptedPortsSchema = z
  .array(tlsPortSchema, { error: "must be an array of ports" })
  .min(1, { error: "must not be empty (at least one port)" })
  .transform((ports) => [...new Set(ports)]);

const pemPathSchema = z
  .string({ error: "must be a path (string)" })
  .min(1, { error: "must not be empty" })
  .refine((s) => !s.includes("\0"), { error: "must not contain NUL" });

// ---------------------------------------------------------------- helpers

/**
 * Run a builder callback: it may return the builder it was given or nothing; anything
 * else (another builder, a value) is a mistake and raises an error naming `field`.
 */
export function configureBuilder<B>(builder: B, configure: unknown, field: string): B {
  if (typeof configure !== "function") throw new NetworkConfigError(field, `invalid ${field}: must be a function (b => b...)`);
  const r: unknown = (configure as (b: B) => unknown)(builder);
  if (r !== undefined && r !== builder) {
    throw new NetworkConfigError(field, `invalid ${field}: the callback must return the builder it was given (or nothing), not ${r === null ? "null" : typeof r === "object" ? "another object" : typeof r}`);
  }
  return builder;
}

function pushUnique(list: string[], item: string): void {
  if (!list.includes(item)) list.push(item);
}

/** The violation action of a secret that sets none and a network that sets none. */
export function defaultViolationAction(): ViolationAction {
  return { action: "block-and-log", passthroughHosts: [], passthroughHostPatterns: [], passthroughAllHosts: false };
}

/** TLS interception with every default: port 443, upstream verified, QUIC blocked. */
export function defaultTlsConfig(): TlsConfig {
  return { bypass: [], verifyUpstream: true, interceptedPorts: [...DEFAULT_INTERCEPTED_PORTS], blockQuic: true, upstreamCaCertPaths: [] };
}

export function copyViolationAction(v: ViolationAction): ViolationAction {
  return {
    action: v.action,
    passthroughHosts: [...v.passthroughHosts],
    passthroughHostPatterns: [...v.passthroughHostPatterns],
    passthroughAllHosts: v.passthroughAllHosts,
  };
}

export function copyTlsConfig(t: TlsConfig): TlsConfig {
  return {
    bypass: [...t.bypass],
    verifyUpstream: t.verifyUpstream,
    interceptedPorts: [...t.interceptedPorts],
    blockQuic: t.blockQuic,
    upstreamCaCertPaths: [...t.upstreamCaCertPaths],
  };
}

export function copySecretEntry(e: SecretEntry): SecretEntry {
  const out: SecretEntry = {
    envVar: e.envVar,
    value: e.value,
    placeholder: e.placeholder,
    allowedHosts: [...e.allowedHosts],
    allowedHostPatterns: [...e.allowedHostPatterns],
    allowAnyHost: e.allowAnyHost,
    requireTlsIdentity: e.requireTlsIdentity,
    injection: { ...e.injection },
  };
  if (e.onViolation) out.onViolation = copyViolationAction(e.onViolation);
  return out;
}

// ---------------------------------------------------------------- builders

/**
 * What happens when a placeholder is headed to a host that may not receive its value:
 * `v => v.blockAndLog()` (the default), `v.block()`, `v.blockAndTerminate()`; and the
 * hosts that may receive the placeholder as is, unsubstituted, without it being a
 * violation: `v.passthroughHost(h)`, `v.passthroughHostPattern("*.x.com")`,
 * `v.passthroughAllHosts(true)`.
 */
export class ViolationActionBuilder {
  #action: ViolationKind = "block-and-log";
  readonly #hosts: string[] = [];
  readonly #patterns: string[] = [];
  #all = false;
  readonly #field: string;

  /** `field`: the prefix error fields get (`secret.onViolation`, `network.onSecretViolation`). */
  constructor(field = "onViolation") {
    this.#field = field;
  }

  /** Answer 403 and close the stream, silently. */
  block(): this {
    this.#action = "block";
    return this;
  }
  /** Block and write a line to runtime.log naming the env var, never the value (the default). */
  blockAndLog(): this {
    this.#action = "block-and-log";
    return this;
  }
  /** Block, log, and stop the sandbox. */
  blockAndTerminate(): this {
    this.#action = "block-and-terminate";
    return this;
  }
  /** An exact host that may receive the placeholder unchanged. Repeatable. */
  passthroughHost(host: string): this {
    pushUnique(this.#hosts, check(hostNameSchema, `${this.#field}.passthroughHost`, host));
    return this;
  }
  /** `*.suffix` hosts that may receive the placeholder unchanged. Repeatable. */
  passthroughHostPattern(pattern: string): this {
    pushUnique(this.#patterns, check(hostPatternSchema, `${this.#field}.passthroughHostPattern`, pattern));
    return this;
  }
  /** Every host may receive the placeholder unchanged (it is then never a violation). */
  passthroughAllHosts(iUnderstand: boolean): this {
    this.#all = check(booleanSchema, `${this.#field}.passthroughAllHosts`, iUnderstand);
    return this;
  }
  /** The action as `SecretRule.onViolation` holds it. */
  build(): ViolationAction {
    return { action: this.#action, passthroughHosts: [...this.#hosts], passthroughHostPatterns: [...this.#patterns], passthroughAllHosts: this.#all };
  }
}

/**
 * One secret: `s => s.env("API_KEY").value(key).allowHost("api.openai.com")`. The guest
 * sees the placeholder (default `$MSB_<env>`) in `$API_KEY`; the host substitutes the
 * value in requests to an allowed host over intercepted TLS. `env`, `value` and at least
 * one host are required.
 */
export class SecretBuilder {
  #env: string | undefined;
  #value: string | undefined;
  #placeholder: string | undefined;
  readonly #hosts: string[] = [];
  readonly #patterns: string[] = [];
  #anyHost = false;
  #requireTlsIdentity = true;
  readonly #injection: SecretInjection = { headers: true, basicAuth: true, queryParams: false, body: false };
  #onViolation: ViolationAction | undefined;

  /** The guest environment variable that holds the placeholder (required; not `MSB_...`). */
  env(varName: string): this {
    this.#env = check(secretEnvSchema, "secret.env", varName);
    return this;
  }
  /** The secret's value (required): at most 64 KiB, no CR, LF or NUL. Never shown in an error. */
  value(value: string): this {
    this.#value = checkHidden(secretValueSchema, "secret.value", value, this.#env === undefined ? "" : `of secret ${this.#env}`);
    return this;
  }
  /** What the guest sees instead of the value (default `$MSB_<env>`): 1 to 1024 bytes, no CR, LF or NUL. */
  placeholder(placeholder: string): this {
    this.#placeholder = check(placeholderSchema, "secret.placeholder", placeholder);
    return this;
  }
  /** An exact host name that receives the value (lower-cased; an IDN is converted to punycode). Repeatable. */
  allowHost(host: string): this {
    pushUnique(this.#hosts, check(hostNameSchema, "secret.allowHost", host));
    return this;
  }
  /** A `*.suffix` pattern (matching `suffix` and every name below it) that receives the value. Repeatable. */
  allowHostPattern(pattern: string): this {
    pushUnique(this.#patterns, check(hostPatternSchema, "secret.allowHostPattern", pattern));
    return this;
  }
  /** Every host receives the value. **Dangerous**: any server the guest reaches can collect it. Pass `true`. */
  allowAnyHostDangerous(iUnderstand: boolean): this {
    this.#anyHost = check(booleanSchema, "secret.allowAnyHostDangerous", iUnderstand);
    return this;
  }
  /** Substitute only over an upstream whose certificate was verified (default true). */
  requireTlsIdentity(enabled: boolean): this {
    this.#requireTlsIdentity = check(booleanSchema, "secret.requireTlsIdentity", enabled);
    return this;
  }
  /** Substitute in header values (default true). */
  injectHeaders(enabled: boolean): this {
    this.#injection.headers = check(booleanSchema, "secret.injectHeaders", enabled);
    return this;
  }
  /** Substitute inside `Authorization: Basic` credentials (default true). */
  injectBasicAuth(enabled: boolean): this {
    this.#injection.basicAuth = check(booleanSchema, "secret.injectBasicAuth", enabled);
    return this;
  }
  /** Substitute in the query part of the request target (default false). */
  injectQuery(enabled: boolean): this {
    this.#injection.queryParams = check(booleanSchema, "secret.injectQuery", enabled);
    return this;
  }
  /** Substitute in identity-encoded request bodies (default false). */
  injectBody(enabled: boolean): this {
    this.#injection.body = check(booleanSchema, "secret.injectBody", enabled);
    return this;
  }
  /** This secret's violation action (default: the network's `onSecretViolation`, else block-and-log). */
  onViolation(configure: (v: ViolationActionBuilder) => ViolationActionBuilder | void): this {
    const v = configureBuilder(new ViolationActionBuilder("secret.onViolation"), configure, "secret.onViolation");
    this.#onViolation = v.build();
    return this;
  }

  /** The secret, checked as a whole: env, value and a host given; the placeholder differs from the value. */
  build(): SecretEntry {
    const envVar = this.#env;
    if (envVar === undefined) throw new NetworkConfigError("secret.env", "invalid secret.env: a secret needs its env var: s.env(NAME)");
    const value = this.#value;
    if (value === undefined) throw new NetworkConfigError("secret.value", `invalid secret.value: secret ${envVar} needs its value: s.value(v)`);
    const placeholder = this.#placeholder ?? check(placeholderSchema, "secret.placeholder", `$${RESERVED_ENV_PREFIX}${envVar}`);
    if (placeholder === value) {
      throw new NetworkConfigError("secret.placeholder", `invalid secret.placeholder of secret ${envVar}: secret.placeholder must differ from the value (the guest would see the value)`);
    }
    if (this.#hosts.length === 0 && this.#patterns.length === 0 && !this.#anyHost) {
      throw new NetworkConfigError(
        "secret.allowHost",
        `invalid secret.allowHost of secret ${envVar}: a secret needs at least one host that may receive it: allowHost(host), allowHostPattern("*.suffix") or allowAnyHostDangerous(true)`,
      );
    }
    const entry: SecretEntry = {
      envVar,
      value,
      placeholder,
      allowedHosts: [...this.#hosts],
      allowedHostPatterns: [...this.#patterns],
      allowAnyHost: this.#anyHost,
      requireTlsIdentity: this.#requireTlsIdentity,
      injection: { ...this.#injection },
    };
    if (this.#onViolation) entry.onViolation = copyViolationAction(this.#onViolation);
    return entry;
  }
}

/**
 * TLS interception: `t => t.interceptedPorts([443, 8443]).upstreamCaCert("./ca.pem")`.
 * Defaults: port 443 intercepted, the upstream's certificate verified (host roots plus
 * `upstreamCaCert` files), QUIC to intercepted ports blocked, nothing bypassed.
 */
export class TlsBuilder {
  #c: TlsConfig = defaultTlsConfig();

  /** @internal A builder that starts from `config` (a later `tls()` call adds to the earlier). */
  static from(config: TlsConfig): TlsBuilder {
    const b = new TlsBuilder();
    b.#c = copyTlsConfig(config);
    return b;
  }

  /** A host name or `*.suffix` whose TLS is never terminated, spliced through untouched (certificate pinning). Repeatable. */
  bypass(pattern: string): this {
    pushUnique(this.#c.bypass, check(hostOrPatternSchema, "tls.bypass", pattern));
    return this;
  }
  /** Verify the upstream's certificate (default true). */
  verifyUpstream(verify: boolean): this {
    this.#c.verifyUpstream = check(booleanSchema, "tls.verifyUpstream", verify);
    return this;
  }
  /** The destination ports whose TLS is intercepted (default `[443]`); replaces the list. */
  interceptedPorts(ports: number[]): this {
    this.#c.interceptedPorts = check(interceptedPortsSchema, "tls.interceptedPorts", ports);
    return this;
  }
  /** Drop UDP to intercepted ports (QUIC), so that clients fall back to TCP (default true). */
  blockQuic(block: boolean): this {
    this.#c.blockQuic = check(booleanSchema, "tls.blockQuic", block);
    return this;
  }
  /** An extra trust anchor for upstream verification: a PEM certificate file on the host (stored as an absolute path). Repeatable. */
  upstreamCaCert(pemPath: string): this {
    pushUnique(this.#c.upstreamCaCertPaths, checkPemFile("tls.upstreamCaCert", check(pemPathSchema, "tls.upstreamCaCert", pemPath)));
    return this;
  }
  /** The configuration as `NetConfig.tls` holds it. */
  build(): TlsConfig {
    return copyTlsConfig(this.#c);
  }
}

/** `path` (resolved against the working directory) is a readable file holding a PEM certificate; returns it absolute. */
function checkPemFile(field: string, path: string): string {
  const abs = resolve(path);
  let text: string;
  let fd: number | undefined;
  try {
    fd = openSync(abs, "r");
    const st = fstatSync(fd);
    if (!st.isFile()) throw new NetworkConfigError(field, `invalid ${field} ${JSON.stringify(abs)}: ${field} must be a PEM certificate file (this is not a regular file)`);
    if (st.size > MAX_CA_FILE_BYTES) throw new NetworkConfigError(field, `invalid ${field} ${JSON.stringify(abs)}: ${field} is ${st.size} bytes, more than ${MAX_CA_FILE_BYTES}`);
    text = readFileSync(fd, "latin1");
  } catch (e) {
    if (e instanceof NetworkConfigError) throw e;
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw new NetworkConfigError(field, `invalid ${field} ${JSON.stringify(abs)}: ${field} cannot be read (${code})`, { cause: e });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  if (!text.includes(PEM_CERT)) {
    throw new NetworkConfigError(field, `invalid ${field} ${JSON.stringify(abs)}: ${field} must be a PEM certificate file (no "${PEM_CERT}" line)`);
  }
  return abs;
}
