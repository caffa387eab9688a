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
  /** Every destination (the reference SDK's `any()`). */
  any(): this {
    this.target = { group: "any" };
    return this;
  }
}

/** The reference SDK's name of {@link TargetBuilder}. */
export const RuleDestinationBuilder = TargetBuilder;
/** The reference SDK's name of {@link TargetBuilder}. */
export type RuleDestinationBuilder = TargetBuilder;

/**
 * Rules of one direction. `tcp()`, `udp()`, `icmp()`, `port(n)`, `portRange(a, b)` set the
 * protocol and ports of the rules added after them; each `allow...`/`deny...` adds one rule.
 * Rules are ordered: the first match wins.
 */
export class RuleBuilder {
  /** @internal */
  readonly rules: Rule[] = [];
  /** @internal The direction each rule was added under (`NetworkPolicyBuilder.rule()`). */
  readonly directions: (Direction | undefined)[] = [];
  #direction: Direction | undefined;
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

  /** @internal Preset by `NetworkPolicyBuilder.egress/ingress/any`. */
  static withDirection(d: Direction): RuleBuilder {
    const r = new RuleBuilder();
    r.#direction = d;
    return r;
  }
  /** The reference SDK's direction setters (inside `NetworkPolicyBuilder.rule()`): the rules added after it are for connections the guest opens. */
  egress(): this {
    this.#direction = "egress";
    return this;
  }
  /** Rules added after it filter connections to published ports. */
  ingress(): this {
    this.#direction = "ingress";
    return this;
  }
  /** Rules added after it apply in both directions. */
  any(): this {
    this.#direction = "any";
    return this;
  }

  #add(action: Action, target: Target): this {
    const rule: Rule = { action, target };
    this.directions.push(this.#direction);
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

  /** A rule to a target: `allow(d => d.cidr("10.0.0.0/8"))`, or a bare string: `allow("1.1.1.1")`, a CIDR, a domain, `"*.example.com"`. */
  allow(configure: ((d: TargetBuilder) => TargetBuilder | void) | string): this {
    return this.#add("allow", typeof configure === "string" ? targetOf(configure) : this.#target(configure));
  }
  deny(configure: ((d: TargetBuilder) => TargetBuilder | void) | string): this {
    return this.#add("deny", typeof configure === "string" ? targetOf(configure) : this.#target(configure));
  }
  /** The reference SDK's `icmpv4()`: this stack is IPv4-only, so the same as {@link icmp}. */
  icmpv4(): this {
    return this.icmp();
  }
  /** The cloud metadata address 169.254.169.254 (the reference SDK's name). */
  allowMeta(): this {
    return this.#add("allow", { group: "metadata" });
  }
  denyMeta(): this {
    return this.#add("deny", { group: "metadata" });
  }
  allowLinkLocal(): this {
    return this.#add("allow", { group: "link-local" });
  }
  denyLinkLocal(): this {
    return this.#add("deny", { group: "link-local" });
  }
  /** Loopback, link-local and the host (not the metadata address), as in the reference SDK. */
  allowLocal(): this {
    return this.allowLoopback().allowLinkLocal().allowHost();
  }
  denyLocal(): this {
    return this.denyLoopback().denyLinkLocal().denyHost();
  }
  allowDomains(names: readonly string[]): this {
    for (const n of listOf(names, "network.domain")) this.allowDomain(n);
    return this;
  }
  denyDomains(names: readonly string[]): this {
    for (const n of listOf(names, "network.domain")) this.denyDomain(n);
    return this;
  }
  allowDomainSuffixes(suffixes: readonly string[]): this {
    for (const n of listOf(suffixes, "network.domainSuffix")) this.allowDomainSuffix(n);
    return this;
  }
  denyDomainSuffixes(suffixes: readonly string[]): this {
    for (const n of listOf(suffixes, "network.domainSuffix")) this.denyDomainSuffix(n);
    return this;
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
  #defaultIngress: Action = "allow";
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
  /** The reference SDK's per-direction default: the egress default action (the same as defaultAllow/defaultDeny). */
  defaultEgress(action: Action): this {
    this.#defaultAction = check(z.enum(["allow", "deny"], { error: 'must be "allow" or "deny"' }), "network.defaultEgress", action);
    return this;
  }
  /** The ingress default (default "allow"): "deny" adds a last ingress rule denying every connection to a published port. */
  defaultIngress(action: Action): this {
    this.#defaultIngress = check(z.enum(["allow", "deny"], { error: 'must be "allow" or "deny"' }), "network.defaultIngress", action);
    return this;
  }
  /** Rules for connections the guest opens (ordered, first match wins). Repeatable. */
  egress(configure: (r: RuleBuilder) => RuleBuilder | void): this {
    return this.#collect("egress", configure);
  }
  /** Rules filtering connections to published ports (no match: allowed). Repeatable. */
  ingress(configure: (r: RuleBuilder) => RuleBuilder | void): this {
    return this.#collect("ingress", configure);
  }
  /** Rules for both directions (the reference SDK's `any`). */
  any(configure: (r: RuleBuilder) => RuleBuilder | void): this {
    return this.#collect("any", configure);
  }
  /**
   * The reference SDK's `rule()`: the direction is set inside, before the rules it applies
   * to: `rule(r => r.egress().tcp().port(443).allowPublic().ingress().denyPrivate())`.
   */
  rule(configure: (r: RuleBuilder) => RuleBuilder | void): this {
    return this.#collect(undefined, configure);
  }
  #collect(preset: Direction | undefined, configure: (r: RuleBuilder) => RuleBuilder | void): this {
    const r = preset === undefined ? new RuleBuilder() : RuleBuilder.withDirection(preset);
    if (typeof configure === "function") configure(r);
    r.rules.forEach((rule, i) => {
      const d = r.directions[i];
      if (d === undefined) {
        throw new NetworkConfigError("network.direction", "invalid network.direction: in rule(), call r.egress(), r.ingress() or r.any() before adding a rule");
      }
      if (d !== "ingress") this.#egress.push(rule);
      if (d !== "egress") this.#ingress.push(copyRule(rule));
    });
    return this;
  }
  build(): NetworkPolicy {
    const ingress = this.#defaultIngress === "deny" ? [...this.#ingress, { action: "deny" as const, target: { group: "any" as const } }] : this.#ingress;
    return new NetworkPolicy({ defaultAction: this.#defaultAction, egress: this.#egress, ingress });
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

  /** A policy, its builder (or a callback), or a reference-SDK-shaped `{ defaultEgress, defaultIngress, rules }` (see {@link policyFromSpec}). */
  policy(policy: NetworkPolicy | NetworkPolicyBuilder | PolicySpec | ((b: NetworkPolicyBuilder) => NetworkPolicyBuilder | void)): this {
    if (policy instanceof NetworkPolicy) this.#policy = policy;
    else if (policy instanceof NetworkPolicyBuilder) this.#policy = policy.build();
    else if (isPolicySpec(policy)) this.#policy = policyFromSpec(policy);
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

// ---------------------------------------------------------------- reference-shaped policies
// The reference SDK's (npm `microsandbox` 0.6, src/policy) plain-object policies and their
// factories `Destination`, `PortRange`, `Rule` (exported here as `PolicyRules`; the SDK
// exports it as `Rule`). A destination may also be a bare string: an IPv4 address
// ("1.1.1.1"), a CIDR ("10.0.0.0/8"), a domain ("example.com") or a suffix ("*.example.com").

/** A rule's destination in the reference SDK's shape (plus `ip`, ours). */
export type Destination =
  | { kind: "any" }
  | { kind: "ip"; ip: string }
  | { kind: "cidr"; cidr: string }
  | { kind: "domain"; domain: string }
  | { kind: "domainSuffix"; suffix: string }
  | { kind: "group"; group: Group };
/** A destination object, or a bare string: IPv4 address, CIDR, domain or `*.suffix`. */
export type DestinationInput = Destination | string;
/** Which connections a rule applies to. */
export type Direction = "egress" | "ingress" | "any";
/** The reference SDK's protocol names: `icmpv4` is this stack's `icmp`; `icmpv6` is refused (IPv4 only). */
export type PolicyProtocol = "tcp" | "udp" | "icmpv4" | "icmpv6" | "icmp";
/** An inclusive port range. */
export interface PortRange {
  readonly start: number;
  readonly end: number;
}
/** One rule of a {@link PolicySpec} (the reference SDK's `Rule`). Empty `protocols` / `ports`: any. */
export interface PolicyRule {
  readonly direction: Direction;
  readonly destination: DestinationInput;
  readonly protocols: readonly PolicyProtocol[];
  readonly ports: readonly PortRange[];
  readonly action: Action;
}
/** The reference SDK's `NetworkPolicy` object: per-direction defaults and ordered rules (first match wins). */
export interface PolicySpec {
  readonly defaultEgress: Action;
  readonly defaultIngress: Action;
  readonly rules: readonly PolicyRule[];
}

/** The reference SDK's `Destination` factory. */
export const Destination = {
  any: (): Destination => ({ kind: "any" }),
  ip: (ip: string): Destination => ({ kind: "ip", ip }),
  cidr: (cidr: string): Destination => ({ kind: "cidr", cidr }),
  domain: (domain: string): Destination => ({ kind: "domain", domain }),
  domainSuffix: (suffix: string): Destination => ({ kind: "domainSuffix", suffix }),
  group: (group: Group): Destination => ({ kind: "group", group }),
};

/** The reference SDK's `PortRange` factory. */
export const PortRange = {
  single: (port: number): PortRange => ({ start: port, end: port }),
  range: (start: number, end: number): PortRange => ({ start, end }),
};

const noneOf = Object.freeze([]) as readonly never[];
const ruleOf = (direction: Direction, action: Action) => (destination: DestinationInput): PolicyRule => ({
  direction,
  destination,
  protocols: noneOf,
  ports: noneOf,
  action,
});
const dnsRule = (action: Action): PolicyRule => ({
  direction: "egress",
  destination: { kind: "group", group: "host" },
  protocols: ["udp", "tcp"],
  ports: [{ start: 53, end: 53 }],
  action,
});

/**
 * The reference SDK's `Rule` factory (`Rule.allowEgress("1.1.1.1")`, ...). `allowDns()`
 * is accepted for its code's sake: this stack answers DNS at the gateway whatever the
 * policy (lookups are filtered by the domain rules), so it adds nothing.
 */
export const PolicyRules = {
  allowEgress: ruleOf("egress", "allow"),
  denyEgress: ruleOf("egress", "deny"),
  allowIngress: ruleOf("ingress", "allow"),
  denyIngress: ruleOf("ingress", "deny"),
  allowAny: ruleOf("any", "allow"),
  denyAny: ruleOf("any", "deny"),
  allowDns: (): PolicyRule => dnsRule("allow"),
  denyDns: (): PolicyRule => dnsRule("deny"),
};

function listOf(v: unknown, field: string): string[] {
  if (!Array.isArray(v)) throw new NetworkConfigError(field, `invalid ${field}: must be an array of names`);
  return v as string[];
}

/** A bare-string destination: IPv4 address, CIDR, `*.suffix` / `.suffix`, or a domain. */
export function targetOf(dest: string): Target {
  if (typeof dest !== "string") throw new NetworkConfigError("network.destination", "invalid network.destination: must be a string or a Destination");
  const d = dest.trim();
  if (IPV4.test(d)) return { ip: d };
  if (d.includes("/")) return { cidr: check(cidrSchema, "network.destination", d) };
  if (d.startsWith("*.") || d.startsWith(".")) return { domainSuffix: check(domainSuffixSchema, "network.destination", d) };
  if (/^[0-9.]+$/.test(d)) throw new NetworkConfigError("network.destination", `invalid network.destination ${JSON.stringify(d).slice(0, 48)}: not an IPv4 address such as 10.0.0.1`);
  return { domain: check(domainSchema, "network.destination", d) };
}

function destinationTarget(d: unknown): Target {
  if (typeof d === "string") return targetOf(d);
  const o = d as Record<string, unknown> | null;
  switch (o?.kind) {
    case "any":
      return { group: "any" };
    case "ip":
      return { ip: check(ipSchema, "network.ip", o.ip) };
    case "cidr":
      return { cidr: check(cidrSchema, "network.cidr", o.cidr) };
    case "domain":
      return { domain: check(domainSchema, "network.domain", o.domain) };
    case "domainSuffix":
      return { domainSuffix: check(domainSuffixSchema, "network.domainSuffix", o.suffix) };
    case "group":
      return { group: check(groupSchema, "network.group", o.group) };
    default:
      throw new NetworkConfigError("network.destination", "invalid network.destination: must be a string (IP, CIDR, domain) or a Destination");
  }
}

const actionSchema = z.enum(["allow", "deny"], { error: 'must be "allow" or "deny"' });
const directionSchema = z.enum(["egress", "ingress", "any"], { error: 'must be "egress", "ingress" or "any"' });
const policyProtocolSchema = z.enum(["tcp", "udp", "icmpv4", "icmp"], { error: 'must be "tcp", "udp" or "icmpv4" (this network is IPv4 only)' });
/** At most this many rules in one policy, and in what they expand to (one rule per protocol and port range). */
export const MAX_POLICY_RULES = 4096;

function isPolicySpec(v: unknown): v is PolicySpec {
  return v !== null && typeof v === "object" && !(v instanceof NetworkPolicy) && ("rules" in v || "defaultEgress" in v || "defaultIngress" in v);
}

/**
 * Our {@link NetworkPolicy} from a reference-SDK-shaped `{ defaultEgress, defaultIngress,
 * rules }`: a rule of direction `any` goes to both directions, one with several protocols
 * or port ranges becomes one rule per pair (order kept); `defaultIngress: "deny"` adds a
 * last ingress rule denying everything.
 */
export function policyFromSpec(spec: PolicySpec): NetworkPolicy {
  if (spec === null || typeof spec !== "object") throw new NetworkConfigError("network.policy", "invalid network.policy: must be a policy object");
  const defaultAction = check(actionSchema, "network.defaultEgress", spec.defaultEgress ?? "deny");
  const defaultIngress = check(actionSchema, "network.defaultIngress", spec.defaultIngress ?? "allow");
  const rules = spec.rules ?? [];
  if (!Array.isArray(rules)) throw new NetworkConfigError("network.rules", "invalid network.rules: must be an array of rules");
  if (rules.length > MAX_POLICY_RULES) throw new NetworkConfigError("network.rules", `invalid network.rules: at most ${MAX_POLICY_RULES} rules`);
  const egress: Rule[] = [];
  const ingress: Rule[] = [];
  for (const r of rules as PolicyRule[]) {
    if (r === null || typeof r !== "object") throw new NetworkConfigError("network.rules", "invalid network.rules: each rule must be an object");
    const direction = check(directionSchema, "network.direction", r.direction);
    const action = check(actionSchema, "network.action", r.action);
    const target = destinationTarget(r.destination);
    const protos = r.protocols ?? [];
    const ports = r.ports ?? [];
    if (!Array.isArray(protos)) throw new NetworkConfigError("network.protocols", "invalid network.protocols: must be an array");
    if (!Array.isArray(ports)) throw new NetworkConfigError("network.ports", "invalid network.ports: must be an array of { start, end }");
    if (protos.length > 4 || ports.length > MAX_POLICY_RULES) {
      throw new NetworkConfigError("network.ports", `invalid network.ports: a rule expands to more than ${MAX_POLICY_RULES} rules`);
    }
    const protocols = protos.map((p) => (check(policyProtocolSchema, "network.protocols", p) === "udp" ? "udp" : p === "tcp" ? "tcp" : "icmp") as Protocol);
    const ranges = ports.map((pr: PortRange) => {
      const a = check(portSchema, "network.port", pr?.start);
      const b = check(portSchema, "network.port", pr?.end);
      if (a > b) throw new NetworkConfigError("network.port", `invalid network.port range ${a}-${b}: the first port must not be above the last`);
      return [a, b] as [number, number];
    });
    // DNS at the gateway is always answered here: the reference's allowDns() rule adds nothing.
    const isDns = "group" in target && target.group === "host" && ranges.length === 1 && ranges[0]![0] === 53 && ranges[0]![1] === 53;
    if (isDns && action === "allow" && direction === "egress") continue;
    const out: Rule[] = [];
    for (const protocol of protocols.length > 0 ? protocols : [undefined]) {
      for (const range of ranges.length > 0 ? ranges : [undefined]) {
        const rule: Rule = { action, target: { ...target } as Target };
        if (protocol !== undefined) rule.protocol = protocol;
        if (range !== undefined) rule.ports = [range[0], range[1]];
        out.push(rule);
      }
    }
    if (direction !== "ingress") egress.push(...out);
    if (direction !== "egress") ingress.push(...out.map(copyRule));
    if (egress.length + ingress.length > MAX_POLICY_RULES) {
      throw new NetworkConfigError("network.rules", `invalid network.rules: they expand to more than ${MAX_POLICY_RULES} rules (one per direction, protocol and port range)`);
    }
  }
  if (defaultIngress === "deny") ingress.push({ action: "deny", target: { group: "any" } });
  return new NetworkPolicy({ defaultAction, egress, ingress });
}
