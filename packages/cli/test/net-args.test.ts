import { describe, expect, it } from "vitest";
import { Sandbox, InvalidConfigError } from "@microsandbox/sdk";
import { parseCli, parseNetRule, parsePort, type ParsedCli } from "../src/args.js";
import { applyGuestFlags, netRulesPolicy } from "../src/run.js";

function parse(...argv: string[]): { result: ParsedCli; out: string; err: string } {
  let out = "";
  let err = "";
  const result = parseCli(argv, "9.8.7", { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { result, out, err };
}

describe("-p HOST:GUEST[/udp]", () => {
  it("parses tcp and udp", () => {
    expect(parsePort("8080:80")).toEqual({ protocol: "tcp", hostPort: 8080, guestPort: 80 });
    expect(parsePort("8080:80/tcp")).toEqual({ protocol: "tcp", hostPort: 8080, guestPort: 80 });
    expect(parsePort("5353:53/udp")).toEqual({ protocol: "udp", hostPort: 5353, guestPort: 53 });
    expect(parsePort("65535:1")).toEqual({ protocol: "tcp", hostPort: 65535, guestPort: 1 });
  });
  it.each(["8080", "0:80", "8080:0", "65536:80", "a:80", "8080:80/sctp", ":80", "1:2:3", "-1:80", "8080:80/"])("rejects %s", (v) => {
    expect(() => parsePort(v)).toThrow(/port/);
  });
});

describe("--net-rule", () => {
  it("parses targets, protocols and ports", () => {
    expect(parseNetRule("allow:host:tcp:8000")).toEqual({ action: "allow", target: { kind: "group", value: "host" }, protocol: "tcp", ports: [8000, 8000] });
    expect(parseNetRule("deny:10.0.0.0/8")).toEqual({ action: "deny", target: { kind: "cidr", value: "10.0.0.0/8" } });
    expect(parseNetRule("allow:1.2.3.4:udp")).toEqual({ action: "allow", target: { kind: "ip", value: "1.2.3.4" }, protocol: "udp" });
    expect(parseNetRule("allow:example.com:443")).toEqual({ action: "allow", target: { kind: "domain", value: "example.com" }, ports: [443, 443] });
    expect(parseNetRule("deny:*.ads.example:tcp:80-90")).toEqual({ action: "deny", target: { kind: "domainSuffix", value: "ads.example" }, protocol: "tcp", ports: [80, 90] });
    expect(parseNetRule("allow:link-local:icmp")).toEqual({ action: "allow", target: { kind: "group", value: "link-local" }, protocol: "icmp" });
    expect(parseNetRule("allow:any")).toEqual({ action: "allow", target: { kind: "group", value: "any" } });
  });
  it.each([
    "permit:host",
    "allow",
    "allow:",
    "allow:host:tcp:80:90",
    "allow:host:sctp",
    "allow:host:0",
    "allow:host:65536",
    "allow:host:90-80",
    "allow:host:80:tcp",
    "allow:host:tcp:udp",
    "allow:host:icmp:80",
    "allow:bad name",
  ])("rejects %s", (v) => {
    expect(() => parseNetRule(v)).toThrow(/net rule/);
  });
});

describe("msb run / create network flags", () => {
  it("collects -p, --no-net and --net-rule for run", () => {
    const { result } = parse("run", "-p", "8080:80", "--publish", "5353:53/udp", "--net-rule", "allow:host:tcp:8000", "--net-rule", "deny:public", "--", "true");
    expect(result).toEqual({
      kind: "run",
      options: {
        env: [],
        registry: {},
        command: ["true"],
        ports: [
          { protocol: "tcp", hostPort: 8080, guestPort: 80 },
          { protocol: "udp", hostPort: 5353, guestPort: 53 },
        ],
        netRules: [
          { action: "allow", target: { kind: "group", value: "host" }, protocol: "tcp", ports: [8000, 8000] },
          { action: "deny", target: { kind: "group", value: "public" } },
        ],
      },
    });
    const off = parse("run", "--no-net", "--", "true").result;
    expect(off).toMatchObject({ kind: "run", options: { noNet: true } });
  });
  it("collects them for create", () => {
    const { result } = parse("create", "--no-net", "-p", "1:2");
    expect(result).toMatchObject({ kind: "create", options: { noNet: true, ports: [{ protocol: "tcp", hostPort: 1, guestPort: 2 }] } });
  });
  it("reports a bad flag as a usage error", () => {
    const { result, err } = parse("run", "-p", "0:80", "--", "true");
    expect(result).toMatchObject({ kind: "exit" });
    expect(err).toMatch(/port/);
  });
});

describe("applying network flags to a builder", () => {
  it("rules go first, then the default (public allowed, default deny)", () => {
    const p = netRulesPolicy([parseNetRule("allow:host:tcp:8000-8100"), parseNetRule("deny:*.bad.example")]).toJSON();
    expect(p).toEqual({
      defaultAction: "deny",
      egress: [
        { action: "allow", protocol: "tcp", ports: [8000, 8100], target: { group: "host" } },
        { action: "deny", target: { domainSuffix: "bad.example" } },
        { action: "allow", target: { group: "public" } },
      ],
      ingress: [],
    });
  });
  it("sets ports, rules and --no-net on the builder", () => {
    const b = Sandbox.builder("x");
    applyGuestFlags(b, { ports: [parsePort("8080:80"), parsePort("53:53/udp")], netRules: [parseNetRule("allow:10.1.0.0/16")] });
    const c = b.validate();
    expect(c.network?.ports).toEqual([
      { protocol: "tcp", hostPort: 8080, guestPort: 80 },
      { protocol: "udp", hostPort: 53, guestPort: 53 },
    ]);
    expect(c.network?.policy.egress[0]).toEqual({ action: "allow", target: { cidr: "10.1.0.0/16" } });
    const off = Sandbox.builder("y");
    applyGuestFlags(off, { noNet: true });
    expect(off.validate().network).toBeNull();
  });
  it("an address that only looks valid is an InvalidConfigError at validation", () => {
    const b = Sandbox.builder("x");
    applyGuestFlags(b, { netRules: [parseNetRule("allow:1.2.3.999")] });
    expect(() => b.validate()).toThrow(InvalidConfigError);
    const c = Sandbox.builder("x");
    applyGuestFlags(c, { netRules: [parseNetRule("allow:10.0.0.0/40")] });
    try {
      c.validate();
      expect.unreachable();
    } catch (e) {
      expect((e as InvalidConfigError).field).toBe("network.cidr");
    }
  });
});
