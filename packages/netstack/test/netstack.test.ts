import { describe, expect, it } from "vitest";
import { NetworkBuilder, NetworkConfigError, NetworkPolicy, defaultNetConfig } from "../src/index.js";

function err(f: () => unknown): NetworkConfigError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(NetworkConfigError);
    return e as NetworkConfigError;
  }
  throw new Error("did not throw");
}

describe("NetworkPolicy presets", () => {
  it("none denies everything", () => {
    expect(NetworkPolicy.none().toJSON()).toEqual({ defaultAction: "deny", egress: [], ingress: [] });
  });
  it("allowAll allows everything", () => {
    expect(NetworkPolicy.allowAll().toJSON()).toEqual({ defaultAction: "allow", egress: [], ingress: [] });
  });
  it("default allows public only", () => {
    expect(NetworkPolicy.default().toJSON()).toEqual({ defaultAction: "deny", egress: [{ action: "allow", target: { group: "public" } }], ingress: [] });
  });
  it("fromProfiles allows each group", () => {
    expect(NetworkPolicy.fromProfiles(["public", "host"]).toJSON().egress).toEqual([
      { action: "allow", target: { group: "public" } },
      { action: "allow", target: { group: "host" } },
    ]);
    const e = err(() => NetworkPolicy.fromProfiles(["bogus" as never]));
    expect(e.code).toBe("invalidConfig");
    expect(e.field).toBe("network.group");
  });
});

describe("NetworkPolicyBuilder / RuleBuilder", () => {
  it("builds ordered rules with protocol and ports", () => {
    const p = NetworkPolicy.builder()
      .defaultAllow()
      .egress((r) => r.tcp().port(443).allowPublic().udp().portRange(5000, 5010).denyPrivate())
      .egress((r) =>
        r
          .allowLoopback()
          .allowHost()
          .allowDomain("Example.COM.")
          .allowDomainSuffix("*.example.org")
          .denyPublic()
          .denyLoopback()
          .denyHost()
          .denyDomain("bad.example")
          .denyDomainSuffix(".ads.example"),
      )
      .egress((r) => r.icmp().allow((d) => d.ip("1.2.3.4")).anyProtocol().deny((d) => d.cidr("10.0.0.0/8")).allow((d) => d.group("link-local")).allow((d) => d.domain("a.b")).allow((d) => d.domainSuffix("c.d")))
      .ingress((r) => r.tcp().port(80).deny((d) => d.ip("127.0.0.1")))
      .build();
    const j = p.toJSON();
    expect(j.defaultAction).toBe("allow");
    expect(j.egress).toEqual([
      { action: "allow", protocol: "tcp", ports: [443, 443], target: { group: "public" } },
      { action: "deny", protocol: "udp", ports: [5000, 5010], target: { group: "private" } },
      { action: "allow", target: { group: "loopback" } },
      { action: "allow", target: { group: "host" } },
      { action: "allow", target: { domain: "example.com" } },
      { action: "allow", target: { domainSuffix: "example.org" } },
      { action: "deny", target: { group: "public" } },
      { action: "deny", target: { group: "loopback" } },
      { action: "deny", target: { group: "host" } },
      { action: "deny", target: { domain: "bad.example" } },
      { action: "deny", target: { domainSuffix: "ads.example" } },
      { action: "allow", protocol: "icmp", target: { ip: "1.2.3.4" } },
      { action: "deny", target: { cidr: "10.0.0.0/8" } },
      { action: "allow", target: { group: "link-local" } },
      { action: "allow", target: { domain: "a.b" } },
      { action: "allow", target: { domainSuffix: "c.d" } },
    ]);
    expect(j.ingress).toEqual([{ action: "deny", protocol: "tcp", ports: [80, 80], target: { ip: "127.0.0.1" } }]);
    expect(NetworkPolicy.builder().defaultAllow().defaultDeny().build().defaultAction).toBe("deny");
  });

  it.each([
    ["network.ip", () => NetworkPolicy.builder().egress((r) => r.allow((d) => d.ip("256.1.1.1")))],
    ["network.ip", () => NetworkPolicy.builder().egress((r) => r.allow((d) => d.ip("1.2.3")))],
    ["network.cidr", () => NetworkPolicy.builder().egress((r) => r.allow((d) => d.cidr("10.0.0.0/33")))],
    ["network.cidr", () => NetworkPolicy.builder().egress((r) => r.allow((d) => d.cidr("10.0.0.0")))],
    ["network.cidr", () => NetworkPolicy.builder().egress((r) => r.deny((d) => d.cidr("nope/8")))],
    ["network.group", () => NetworkPolicy.builder().egress((r) => r.allow((d) => d.group("internet" as never)))],
    ["network.domain", () => NetworkPolicy.builder().egress((r) => r.allowDomain("bad name"))],
    ["network.domain", () => NetworkPolicy.builder().egress((r) => r.denyDomain(""))],
    ["network.domainSuffix", () => NetworkPolicy.builder().egress((r) => r.allowDomainSuffix("*."))],
    ["network.port", () => NetworkPolicy.builder().egress((r) => r.port(0))],
    ["network.port", () => NetworkPolicy.builder().egress((r) => r.port(65536))],
    ["network.port", () => NetworkPolicy.builder().egress((r) => r.port(1.5))],
    ["network.port", () => NetworkPolicy.builder().egress((r) => r.portRange(10, 5))],
    ["network.port", () => NetworkPolicy.builder().egress((r) => r.portRange(1, 70000))],
    ["network.target", () => NetworkPolicy.builder().egress((r) => r.allow(() => {}))],
    ["network.hostPort", () => new NetworkBuilder().port(0, 80)],
    ["network.hostPort", () => new NetworkBuilder().port(70000, 80)],
    ["network.guestPort", () => new NetworkBuilder().portUdp(53, 0)],
    ["network.hostPort", () => new NetworkBuilder().port(8080, 80).port(8080, 81)],
    ["network.mtu", () => new NetworkBuilder().mtu(100)],
    ["network.maxConnections", () => new NetworkBuilder().maxConnections(0)],
    ["network.policy", () => new NetworkBuilder().policy("open" as never)],
  ])("rejects bad %s", (field, f) => {
    const e = err(f);
    expect(e.code).toBe("invalidConfig");
    expect(e.field).toBe(field);
    expect(e.message).toContain(field);
  });
});

describe("NetworkBuilder", () => {
  it("default config", () => {
    expect(defaultNetConfig()).toEqual({
      guestMac: "02:00:00:00:00:15",
      guestIp: "10.0.2.15",
      gatewayIp: "10.0.2.2",
      prefixLen: 24,
      mtu: 65520,
      dns: true,
      maxConnections: 1024,
      policy: { defaultAction: "deny", egress: [{ action: "allow", target: { group: "public" } }], ingress: [] },
      ports: [],
    });
  });
  it("policy, ports, limits", () => {
    const c = new NetworkBuilder()
      .policy(NetworkPolicy.allowAll())
      .port(8080, 80)
      .portUdp(5353, 53)
      .port(8081, 81)
      .maxConnections(64)
      .mtu(9000)
      .toNativeConfig();
    expect(c.policy.defaultAction).toBe("allow");
    expect(c.ports).toEqual([
      { protocol: "tcp", hostPort: 8080, guestPort: 80 },
      { protocol: "udp", hostPort: 5353, guestPort: 53 },
      { protocol: "tcp", hostPort: 8081, guestPort: 81 },
    ]);
    expect(c.maxConnections).toBe(64);
    expect(c.mtu).toBe(9000);
    // the same host port may carry tcp and udp
    expect(new NetworkBuilder().port(9000, 1).portUdp(9000, 1).toNativeConfig().ports).toHaveLength(2);
  });
  it("policy from a builder callback", () => {
    const c = new NetworkBuilder().policy((p) => p.egress((r) => r.tcp().port(8000).allowHost())).toNativeConfig();
    expect(c.policy).toEqual({ defaultAction: "deny", egress: [{ action: "allow", protocol: "tcp", ports: [8000, 8000], target: { group: "host" } }], ingress: [] });
  });
});

describe("NetworkBuilder.policy accepts every form", () => {
  it("takes a built policy, a builder, or a callback, with the same result", () => {
    const rules = (b: ReturnType<typeof NetworkPolicy.builder>) =>
      b.defaultDeny().egress((r) => r.tcp().port(443).allowDomainSuffix(".example.com").allowHost());
    const built = new NetworkBuilder().policy(rules(NetworkPolicy.builder()).build()).toNativeConfig();
    const builder = new NetworkBuilder().policy(rules(NetworkPolicy.builder())).toNativeConfig();
    const callback = new NetworkBuilder().policy((b) => rules(b)).toNativeConfig();
    expect(builder).toEqual(built);
    expect(callback).toEqual(built);
    expect(built.policy.egress).toEqual([
      { action: "allow", target: { domainSuffix: "example.com" }, protocol: "tcp", ports: [443, 443] },
      { action: "allow", target: { group: "host" }, protocol: "tcp", ports: [443, 443] },
    ]);
  });
});
