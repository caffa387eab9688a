/**
 * Typed network configuration for microsandbox sandboxes: the egress/ingress policy
 * builders and published ports, validated with zod, producing the JSON that the native
 * network stack (`crates/netstack`, `NetConfig`) reads.
 */
import { z } from "zod";
import { GROUPS, MAX_SECRETS, type Action, type Group, type NetConfig, type Policy, type Proto, type PublishedPort, type Rule, type Same, type SecretRule, type SecretValue, type Target, type TlsConfig, type ViolationAction } from "@microsandbox/contract";
import { check, NetworkConfigError } from "./errors.js";
import {
  configureBuilder,
  copySecretEntry,
  copyTlsConfig,
  copyViolationAction,
  defaultTlsConfig,
  defaultViolationAction,
  SecretBuilder,
  TlsBuilder,
  ViolationActionBuilder,
  type SecretEntry,
} from "./secrets.js";

export { check, NetworkConfigError } from "./errors.js";
export {
  SecretBuilder,
  TlsBuilder,
  ViolationActionBuilder,
  configureBuilder,
  defaultTlsConfig,
  defaultViolationAction,
  secretEnvSchema,
  secretValueSchema,
  placeholderSchema,
  hostNameSchema,
  hostPatternSchema,
  hostOrPatternSchema,
  interceptedPortsSchema,
  DEFAULT_INTERCEPTED_PORTS,
  MAX_PLACEHOLDER_LEN,
  MAX_SECRET_VALUE_LEN,
  MAX_SECRETS,
  MAX_SECRET_ENV_LEN,
  MAX_CA_FILE_BYTES,
  RESERVED_ENV_PREFIX,
  VIOLATION_KINDS,
  type SecretEntry,
  type SecretInjection,
  type SecretRule,
  type SecretValue,
  type TlsConfig,
  type ViolationAction,
  type ViolationKind,
} from "./secrets.js";

// The shapes the native stack reads (`msb_netstack::NetConfig` and its policy types) are
// the contract's, generated from the Rust types; nothing here declares them again.
export type { Action, Group, NetConfig, Policy, PublishedPort, Rule, Target } from "@microsandbox/contract";
export { GROUPS };
/** A rule's protocol. */
export type Protocol = Proto;

export const DEFAULT_GUEST_MAC = "02:00:00:00:00:15";
export const DEFAULT_GUEST_IP = "10.0.2.15";
export const DEFAULT_GATEWAY_IP = "10.0.2.2";
export const DEFAULT_PREFIX_LEN = 24;
/**
 * The guest link's MTU. The link is virtual (every flow is terminated by the stack and
 * re-opened from host sockets), so a large MTU costs nothing outside the sandbox and
 * cuts the guest's per-packet work (like passt, which defaults to 65520).
 */
export const DEFAULT_MTU = 65520;
export const DEFAULT_MAX_CONNECTIONS = 1024;

// ---------------------------------------------------------------- schemas

const octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
const IPV4 = new RegExp(`^${octet}(\\.${octet}){3}$`);
const LABEL = /^[A-Za-z0-9_-]{1,63}$/;

export const ipSchema = z.string({ error: "must be a string" }).regex(IPV4, { error: "must be an IPv4 address such as 10.0.0.1" });
export const cidrSchema = z.string({ error: "must be a string" }).refine(
  (s) => {
    const [ip, len, ...rest] = s.split("/");
    return rest.length === 0 && ip !== undefined && IPV4.test(ip) && len !== undefined && /^(3[0-2]|[12]?[0-9])$/.test(len);
  },
  { error: "must be an IPv4 CIDR such as 10.0.0.0/8 (prefix 0 to 32)" },
);
const normName = (s: string) => s.trim().replace(/\.$/, "").toLowerCase();
const validName = (s: string) => s.length > 0 && s.length <= 253 && s.split(".").every((l) => LABEL.test(l));
export const domainSchema = z
  .string({ error: "must be a string" })
  .transform(normName)
  .refine(validName, { error: "must be a DNS name such as example.com" });
export const domainSuffixSchema = z
  .string({ error: "must be a string" })
  .transform((s) => normName(s).replace(/^\*?\./, ""))
  .refine(validName, { error: "must be a DNS name such as example.com (a leading '*.' or '.' is allowed)" });
export const groupSchema = z.enum(GROUPS, { error: `must be one of ${GROUPS.join(", ")}` });
// The schema accepts exactly the native stack's groups (checked at compile time).
const _groupIsTheStacks: Same<z.infer<typeof groupSchema>, Group> = true;
const portRule = "must be an integer from 1 to 65535";
export const portSchema = z.number({ error: portRule }).int({ error: portRule }).min(1, { error: portRule }).max(65535, { error: portRule });
const mtuRule = "must be an integer from 576 to 65521";
export const mtuSchema = z.number({ error: mtuRule }).int({ error: mtuRule }).min(576, { error: mtuRule }).max(65521, { error: mtuRule });
const maxConnRule = "must be an integer from 1 to 1000000";
export const maxConnectionsSchema = z
  .number({ error: maxConnRule })
  .int({ error: maxConnRule })
  .min(1, { error: maxConnRule })
  .max(1_000_000, { error: maxConnRule });

// ---------------------------------------------------------------- builders

/** Chooses a rule's target: `d => d.ip("1.2.3.4")`, `d.cidr(..)`, `d.domain(..)`, `d.domainSuffix(..)`, `d.group(..)`. */
export class TargetBuilder {
  /** @internal */
  target: Target | undefined;

  ip(ip: string): this {
    this.target = { ip: check(ipSchema, "network.ip", ip) };
    return this;
  }
  cidr(cidr: string): this {
    this.target = { cidr: check(cidrSchema, "network.cidr", cidr) };
    return this;
  }
  domain(name: string): this {
    this.target = { domain: check(domainSchema, "network.domain", name) };
    return this;
  }
  domainSuffix(suffix: string): this {
    this.target = { domainSuffix: check(domainSuffixSchema, "network.domainSuffix", suffix) };
    return this;
  }
  group(group: Group): this {
    this.target = { group: check(groupSchema, "network.group", group) };
    return this;
  }
}

/**
 * Rules of one direction. `tcp()`, `udp()`, `icmp()`, `port(n)`, `portRange(a, b)` set the
 * protocol and ports of the rules added after them; each `allow...`/`deny...` adds one rule.
 * Rules are ordered: the first match wins.
 */
export class RuleBuilder {
  /** @internal */
  readonly rules: Rule[] = [];
  #protocol: Protocol | undefined;
  #ports: [number, number] | undefined;

  tcp(): this {
    this.#protocol = "tcp";
    return this;
  }
  udp(): this {
    this.#protocol = "udp";
    return this;
  }
  icmp(): this {
    this.#protocol = "icmp";
    return this;
  }
  /** Any protocol (the default). */
  anyProtocol(): this {
    this.#protocol = undefined;
    return this;
  }
  port(port: number): this {
    const p = check(portSchema, "network.port", port);
    this.#ports = [p, p];
    return this;
  }
  portRange(from: number, to: number): this {
    const a = check(portSchema, "network.port", from);
    const b = check(portSchema, "network.port", to);
    if (a > b) throw new NetworkConfigError("network.port", `invalid network.port range ${a}-${b}: the first port must not be above the last`);
    this.#ports = [a, b];
    return this;
  }
  /** Any port (the default). */
  anyPort(): this {
    this.#ports = undefined;
    return this;
  }

  #add(action: Action, target: Target): this {
    const rule: Rule = { action, target };
    if (this.#protocol !== undefined) rule.protocol = this.#protocol;
    if (this.#ports !== undefined) rule.ports = [this.#ports[0], this.#ports[1]];
    this.rules.push(rule);
    return this;
  }
  #target(configure: (d: TargetBuilder) => TargetBuilder | void): Target {
    const d = new TargetBuilder();
    if (typeof configure === "function") configure(d);
    if (d.target === undefined) throw new NetworkConfigError("network.target", "invalid network.target: a rule needs a target (ip, cidr, domain, domainSuffix or group)");
    return d.target;
  }

  allow(configure: (d: TargetBuilder) => TargetBuilder | void): this {
    return this.#add("allow", this.#target(configure));
  }
  deny(configure: (d: TargetBuilder) => TargetBuilder | void): this {
    return this.#add("deny", this.#target(configure));
  }
  allowPublic(): this {
    return this.#add("allow", { group: "public" });
  }
  allowPrivate(): this {
    return this.#add("allow", { group: "private" });
  }
  allowLoopback(): this {
    return this.#add("allow", { group: "loopback" });
  }
  /** The host's loopback, reached from the guest as `host.microsandbox.internal`. */
  allowHost(): this {
    return this.#add("allow", { group: "host" });
  }
  allowDomain(name: string): this {
    return this.#add("allow", { domain: check(domainSchema, "network.domain", name) });
  }
  allowDomainSuffix(suffix: string): this {
    return this.#add("allow", { domainSuffix: check(domainSuffixSchema, "network.domainSuffix", suffix) });
  }
  denyPublic(): this {
    return this.#add("deny", { group: "public" });
  }
  denyPrivate(): this {
    return this.#add("deny", { group: "private" });
  }
  denyLoopback(): this {
    return this.#add("deny", { group: "loopback" });
  }
  denyHost(): this {
    return this.#add("deny", { group: "host" });
  }
  denyDomain(name: string): this {
    return this.#add("deny", { domain: check(domainSchema, "network.domain", name) });
  }
  denyDomainSuffix(suffix: string): this {
    return this.#add("deny", { domainSuffix: check(domainSuffixSchema, "network.domainSuffix", suffix) });
  }
}

/** A network policy. Build one with {@link NetworkPolicy.builder} or the presets. */
export class NetworkPolicy {
  readonly defaultAction: Action;
  readonly egress: readonly Rule[];
  readonly ingress: readonly Rule[];

  /** @internal */
  constructor(p: Policy) {
    this.defaultAction = p.defaultAction;
    this.egress = p.egress.map(copyRule);
    this.ingress = p.ingress.map(copyRule);
  }

  /** Nothing allowed (the gateway's DNS is still served; every lookup is denied by policy). */
  static none(): NetworkPolicy {
    return new NetworkPolicy({ defaultAction: "deny", egress: [], ingress: [] });
  }
  /** Everything allowed, including the host and private networks. */
  static allowAll(): NetworkPolicy {
    return new NetworkPolicy({ defaultAction: "allow", egress: [], ingress: [] });
  }
  /** The default: public addresses allowed, everything else denied. */
  static default(): NetworkPolicy {
    return new NetworkPolicy({ defaultAction: "deny", egress: [{ action: "allow", target: { group: "public" } }], ingress: [] });
  }
  /** Deny by default, allow each named group (`"public"`, `"private"`, `"host"`, ...). */
  static fromProfiles(profiles: readonly Group[]): NetworkPolicy {
    if (!Array.isArray(profiles)) throw new NetworkConfigError("network.profiles", "invalid network.profiles: must be an array of group names");
    const egress: Rule[] = profiles.map((p) => ({ action: "allow", target: { group: check(groupSchema, "network.group", p) } }));
    return new NetworkPolicy({ defaultAction: "deny", egress, ingress: [] });
  }
  static builder(): NetworkPolicyBuilder {
    return new NetworkPolicyBuilder();
  }

  toJSON(): Policy {
    return { defaultAction: this.defaultAction, egress: this.egress.map(copyRule), ingress: this.ingress.map(copyRule) };
  }
}

function copyRule(r: Rule): Rule {
  const out: Rule = { action: r.action, target: { ...r.target } as Target };
  if (r.protocol !== undefined) out.protocol = r.protocol;
  if (r.ports !== undefined) out.ports = [r.ports[0], r.ports[1]];
  return out;
}

/** `NetworkPolicy.builder().defaultDeny().egress(r => r.tcp().port(443).allowPublic()).build()`. Default action: deny. */
export class NetworkPolicyBuilder {
  #defaultAction: Action = "deny";
  readonly #egress: Rule[] = [];
  readonly #ingress: Rule[] = [];

  defaultAllow(): this {
    this.#defaultAction = "allow";
    return this;
  }
  defaultDeny(): this {
    this.#defaultAction = "deny";
    return this;
  }
  /** Rules for connections the guest opens (ordered, first match wins). Repeatable. */
  egress(configure: (r: RuleBuilder) => RuleBuilder | void): this {
    const r = new RuleBuilder();
    if (typeof configure === "function") configure(r);
    this.#egress.push(...r.rules);
    return this;
  }
  /** Rules filtering connections to published ports (no match: allowed). Repeatable. */
  ingress(configure: (r: RuleBuilder) => RuleBuilder | void): this {
    const r = new RuleBuilder();
    if (typeof configure === "function") configure(r);
    this.#ingress.push(...r.rules);
    return this;
  }
  build(): NetworkPolicy {
    return new NetworkPolicy({ defaultAction: this.#defaultAction, egress: this.#egress, ingress: this.#ingress });
  }
}

/**
 * A sandbox's network: `n => n.policy(p).port(8080, 80).maxConnections(256)`, and its
 * secrets: `n.secret(s => s.env("API_KEY").value(key).allowHost("api.openai.com"))`.
 */
export class NetworkBuilder {
  #policy: NetworkPolicy = NetworkPolicy.default();
  readonly #ports: PublishedPort[] = [];
  #mtu = DEFAULT_MTU;
  #maxConnections = DEFAULT_MAX_CONNECTIONS;
  readonly #secrets: SecretEntry[] = [];
  #tls: TlsConfig | undefined;
  #violation: ViolationAction | undefined;

  policy(policy: NetworkPolicy | NetworkPolicyBuilder | ((b: NetworkPolicyBuilder) => NetworkPolicyBuilder | void)): this {
    if (policy instanceof NetworkPolicy) this.#policy = policy;
    else if (policy instanceof NetworkPolicyBuilder) this.#policy = policy.build();
    else if (typeof policy === "function") {
      const b = new NetworkPolicyBuilder();
      policy(b);
      this.#policy = b.build();
    } else throw new NetworkConfigError("network.policy", "invalid network.policy: must be a NetworkPolicy");
    return this;
  }
  /** Publish guest TCP `guestPort` on the host's 127.0.0.1:`hostPort`. */
  port(hostPort: number, guestPort: number): this {
    return this.#publish("tcp", hostPort, guestPort);
  }
  /** Publish guest UDP `guestPort` on the host's 127.0.0.1:`hostPort`. */
  portUdp(hostPort: number, guestPort: number): this {
    return this.#publish("udp", hostPort, guestPort);
  }
  #publish(protocol: "tcp" | "udp", hostPort: number, guestPort: number): this {
    const h = check(portSchema, "network.hostPort", hostPort);
    const g = check(portSchema, "network.guestPort", guestPort);
    if (this.#ports.some((p) => p.protocol === protocol && p.hostPort === h)) {
      throw new NetworkConfigError("network.hostPort", `invalid network.hostPort ${h}: ${protocol} port published twice`);
    }
    this.#ports.push({ protocol, hostPort: h, guestPort: g });
    return this;
  }
  maxConnections(n: number): this {
    this.#maxConnections = check(maxConnectionsSchema, "network.maxConnections", n);
    return this;
  }
  /** The guest link's MTU, 576..65521 (default 65520). */
  mtu(n: number): this {
    this.#mtu = check(mtuSchema, "network.mtu", n);
    return this;
  }
  /**
   * Add a secret (and turn TLS interception on):
   * `n.secret(s => s.env("API_KEY").value(key).allowHost("api.openai.com"))`. The guest's
   * `$API_KEY` holds the placeholder; the value is substituted on the host. Repeatable
   * (at most {@link MAX_SECRETS}; env vars and placeholders unique).
   */
  secret(configure: (s: SecretBuilder) => SecretBuilder | void): this {
    const entry = configureBuilder(new SecretBuilder(), configure, "secret").build();
    if (this.#secrets.length >= MAX_SECRETS) throw new NetworkConfigError("secret", `invalid secret ${entry.envVar}: at most ${MAX_SECRETS} secrets per sandbox`);
    if (this.#secrets.some((e) => e.envVar === entry.envVar)) {
      throw new NetworkConfigError("secret.env", `invalid secret.env ${JSON.stringify(entry.envVar)}: secret.env is a duplicate (one secret per env var)`);
    }
    const same = this.#secrets.find((e) => e.placeholder === entry.placeholder);
    if (same !== undefined) {
      throw new NetworkConfigError("secret.placeholder", `invalid secret.placeholder of secret ${entry.envVar}: secret.placeholder is a duplicate (secret ${same.envVar} has it)`);
    }
    if (this.#secrets.some((e) => e.value === entry.placeholder || e.placeholder === entry.value)) {
      throw new NetworkConfigError("secret.placeholder", `invalid secret.placeholder of secret ${entry.envVar}: secret.placeholder must differ from every secret's value`);
    }
    this.#secrets.push(entry);
    return this;
  }
  /** `secret(s => s.env(envVar).value(value).placeholder(placeholder).allowHost(allowedHost))`. */
  secretEnv(envVar: string, value: string, placeholder: string, allowedHost: string): this {
    return this.secret((s) => s.env(envVar).value(value).placeholder(placeholder).allowHost(allowedHost));
  }
  /** `secret(s => s.env(envVar).value(value).allowHost(allowedHost))`: the placeholder is `$MSB_<envVar>`. */
  secretEnvSimple(envVar: string, value: string, allowedHost: string): this {
    return this.secret((s) => s.env(envVar).value(value).allowHost(allowedHost));
  }
  /** The violation action of every secret that sets none of its own (default block-and-log). */
  onSecretViolation(configure: (v: ViolationActionBuilder) => ViolationActionBuilder | void): this {
    this.#violation = configureBuilder(new ViolationActionBuilder("network.onSecretViolation"), configure, "network.onSecretViolation").build();
    return this;
  }
  /**
   * TLS interception settings: `n.tls(t => t.interceptedPorts([443, 8443]).upstreamCaCert(pem))`.
   * Turns interception on even without a secret. Repeatable: a later call starts from
   * the earlier settings.
   */
  tls(configure: (t: TlsBuilder) => TlsBuilder | void): this {
    this.#tls = configureBuilder(TlsBuilder.from(this.#tls ?? defaultTlsConfig()), configure, "tls").build();
    return this;
  }
  /** The secrets added so far, values included (copies). */
  secrets(): SecretEntry[] {
    return this.#secrets.map(copySecretEntry);
  }
  /**
   * The secrets' values, by env var (`RuntimeConfig.secretValues`): they never go into
   * {@link toNativeConfig}.
   */
  secretValues(): SecretValue[] {
    return this.#secrets.map((e) => ({ envVar: e.envVar, value: e.value }));
  }
  /**
   * The JSON the native stack reads. `tls` is present when a secret was added or
   * `tls()` called; `secrets` holds the rules without their values (see {@link secretValues}).
   */
  toNativeConfig(): NetConfig {
    const config: NetConfig = {
      guestMac: DEFAULT_GUEST_MAC,
      guestIp: DEFAULT_GUEST_IP,
      gatewayIp: DEFAULT_GATEWAY_IP,
      prefixLen: DEFAULT_PREFIX_LEN,
      mtu: this.#mtu,
      dns: true,
      maxConnections: this.#maxConnections,
      policy: this.#policy.toJSON(),
      ports: this.#ports.map((p) => ({ ...p })),
    };
    if (this.#tls !== undefined || this.#secrets.length > 0) config.tls = copyTlsConfig(this.#tls ?? defaultTlsConfig());
    if (this.#secrets.length > 0) config.secrets = this.#secrets.map((e) => this.#rule(e));
    return config;
  }
  #rule(e: SecretEntry): SecretRule {
    return {
      envVar: e.envVar,
      placeholder: e.placeholder,
      allowedHosts: [...e.allowedHosts],
      allowedHostPatterns: [...e.allowedHostPatterns],
      allowAnyHost: e.allowAnyHost,
      requireTlsIdentity: e.requireTlsIdentity,
      injection: { ...e.injection },
      onViolation: copyViolationAction(e.onViolation ?? this.#violation ?? defaultViolationAction()),
    };
  }
}

/** The network a sandbox gets when none is configured: the default policy, no published ports. */
export function defaultNetConfig(): NetConfig {
  return new NetworkBuilder().toNativeConfig();
}
