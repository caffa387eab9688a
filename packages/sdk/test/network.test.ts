import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { defaultNetConfig } from "@microsandbox/netstack";
import { InvalidConfigError, NetworkPolicy, Sandbox } from "../src/index.js";
import { parseStoredConfig, persistableConfig } from "../src/config.js";
import { setNativeBinding } from "../src/native.js";
import { fakeNative, run, type FakeNative } from "./fake-native.js";

let fake: FakeNative;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative(() => run("", ""));
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-unit-home";
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

const sent = (i = 0) => fake.configs[i] as unknown as { network: unknown; sdkConfig: { network: unknown } };

describe("SandboxBuilder network", () => {
  it("sends the default network when none is configured", async () => {
    const sb = await Sandbox.builder("n1").create();
    expect(sent().network).toEqual(defaultNetConfig());
    expect(sent().network).toMatchObject({
      guestIp: "10.0.2.15",
      gatewayIp: "10.0.2.2",
      policy: { defaultAction: "deny", egress: [{ action: "allow", target: { group: "public" } }] },
    });
    expect(sb.config().network).toEqual(defaultNetConfig());
    expect(sent().sdkConfig.network).toEqual(defaultNetConfig());
    await sb.kill();
  });

  it("sends network null with disableNetwork()", async () => {
    const sb = await Sandbox.builder("n2").port(8080, 80).disableNetwork().create();
    expect(sent().network).toBeNull();
    expect(sb.config().network).toBeNull();
    expect(sent().sdkConfig.network).toBeNull();
    await sb.kill();
  });

  it("sends the policy and published ports", async () => {
    const policy = NetworkPolicy.builder()
      .egress((r) => r.tcp().port(8000).allowHost())
      .egress((r) => r.allowPublic().denyDomain("bad.example"))
      .build();
    const sb = await Sandbox.builder("n3")
      .network((n) => n.policy(policy).maxConnections(99).mtu(1400))
      .port(8080, 80)
      .portUdp(5353, 53)
      .create();
    const n = sent().network as ReturnType<typeof defaultNetConfig>;
    expect(n.policy).toEqual({
      defaultAction: "deny",
      egress: [
        { action: "allow", protocol: "tcp", ports: [8000, 8000], target: { group: "host" } },
        { action: "allow", target: { group: "public" } },
        { action: "deny", target: { domain: "bad.example" } },
      ],
      ingress: [],
    });
    expect(n.ports).toEqual([
      { protocol: "tcp", hostPort: 8080, guestPort: 80 },
      { protocol: "udp", hostPort: 5353, guestPort: 53 },
    ]);
    expect(n.maxConnections).toBe(99);
    expect(n.mtu).toBe(1400);
    expect(sb.config().network).toEqual(n);
    await sb.kill();
  });

  it("network() after disableNetwork() turns the network back on, and calls compose", () => {
    const c = Sandbox.builder("n4")
      .disableNetwork()
      .network((n) => n.port(1000, 10))
      .network((n) => n.port(1001, 11))
      .validate();
    expect(c.network?.ports.map((p) => p.hostPort)).toEqual([1000, 1001]);
  });

  it.each([
    ["network.hostPort", () => Sandbox.builder("x").port(0, 80)],
    ["network.hostPort", () => Sandbox.builder("x").port(65536, 80)],
    ["network.guestPort", () => Sandbox.builder("x").portUdp(53, 0)],
    ["network.ip", () => Sandbox.builder("x").network((n) => n.policy((p) => p.egress((r) => r.allow((d) => d.ip("1.2.3.999")))))],
    ["network.cidr", () => Sandbox.builder("x").network((n) => n.policy((p) => p.egress((r) => r.deny((d) => d.cidr("10.0.0.0/40")))))],
    ["network.group", () => Sandbox.builder("x").network((n) => n.policy((p) => p.egress((r) => r.allow((d) => d.group("web" as never)))))],
    ["network.port", () => Sandbox.builder("x").network((n) => n.policy((p) => p.egress((r) => r.port(0).allowHost())))],
  ])("bad %s rejects create() with InvalidConfigError", async (field, make) => {
    const b = make();
    const e = await b.create().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect((e as InvalidConfigError).field).toBe(field);
    expect((e as InvalidConfigError).code).toBe("invalidConfig");
    expect(() => b.validate()).toThrow(InvalidConfigError);
    expect(fake.configs).toHaveLength(0);
  });

  it("the network is persisted and read back", () => {
    const c = Sandbox.builder("n5").port(8080, 80).validate();
    const back = parseStoredConfig(JSON.stringify(persistableConfig(c)), "n5");
    expect(back.network).toEqual(c.network);
    const off = Sandbox.builder("n5").disableNetwork().validate();
    expect(parseStoredConfig(JSON.stringify(persistableConfig(off)), "n5").network).toBeNull();
    // stored before networking existed: no NIC
    expect(parseStoredConfig(JSON.stringify({ name: "old", cpus: 1, memoryMib: 512 }), "old").network).toBeNull();
  });
});
