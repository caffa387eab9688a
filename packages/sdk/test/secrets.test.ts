// Secrets at the SDK: the builder's secret()/secretEnv(), their checks, and that the
// value goes to msb-runtime (RuntimeConfig.secretValues) and nowhere else.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  InvalidConfigError,
  MAX_SECRET_VALUE_LEN,
  NetworkBuilder,
  Sandbox,
  SecretBuilder,
  TlsBuilder,
  ViolationActionBuilder,
  VIOLATION_KINDS,
  type SecretRule,
} from "../src/index.js";
import { copyConfig, parseStoredConfig, persistableConfig, validateConfig } from "../src/config.js";
import { setNativeBinding } from "../src/native.js";
import { fakeNative, run, type FakeNative } from "./fake-native.js";

const VALUE = "sk-S3cr3t-9f8e7d6c5b4a";
const OTHER = "ghp_other-S3cr3t-0001";

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

function invalid(f: () => unknown): InvalidConfigError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidConfigError);
    const err = e as InvalidConfigError;
    expect(err.code).toBe("invalidConfig");
    expect(err.message).not.toContain(VALUE);
    return err;
  }
  throw new Error("did not throw");
}

async function rejected(p: Promise<unknown>): Promise<InvalidConfigError> {
  const e = await p.then(
    () => {
      throw new Error("expected a rejection");
    },
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(InvalidConfigError);
  expect((e as Error).message).not.toContain(VALUE);
  return e as InvalidConfigError;
}

const RULE: SecretRule = {
  envVar: "API_KEY",
  placeholder: "$MSB_API_KEY",
  allowedHosts: ["api.example.com"],
  allowedHostPatterns: [],
  allowAnyHost: false,
  requireTlsIdentity: true,
  injection: { headers: true, basicAuth: true, queryParams: false, body: false },
  onViolation: { action: "block-and-log", passthroughHosts: [], passthroughHostPatterns: [], passthroughAllHosts: false },
};
const TLS_DEFAULTS = { bypass: [], verifyUpstream: true, interceptedPorts: [443], blockQuic: true, upstreamCaCertPaths: [] };

describe("SandboxBuilder.secret / secretEnv", () => {
  it("exports the builders and constants", () => {
    expect(new SecretBuilder()).toBeInstanceOf(SecretBuilder);
    expect(new TlsBuilder().build().interceptedPorts).toEqual([443]);
    expect(new ViolationActionBuilder().build().action).toBe("block-and-log");
    expect(VIOLATION_KINDS).toEqual(["block", "block-and-log", "block-and-terminate"]);
    expect(MAX_SECRET_VALUE_LEN).toBe(65536);
  });

  it("turns TLS interception on and puts the rule, without its value, in the network", () => {
    const c = Sandbox.builder("s1").secret((s) => s.env("API_KEY").value(VALUE).allowHost("API.example.com.")).validate();
    expect(c.network?.tls).toEqual(TLS_DEFAULTS);
    expect(c.network?.secrets).toEqual([RULE]);
    expect(JSON.stringify(c)).not.toContain(VALUE);
    expect(c.secretValues).toBeUndefined();
    // The guest env var is msb-runtime's to add: not in the configured env.
    expect(c.env).toEqual([]);
  });

  it("secretEnv(env, value, host) is secret(s => s.env(env).value(value).allowHost(host))", () => {
    const short = Sandbox.builder("s2").secretEnv("API_KEY", VALUE, "api.example.com");
    const long = Sandbox.builder("s2").secret((s) => s.env("API_KEY").value(VALUE).allowHost("api.example.com"));
    expect(short.validate()).toEqual(long.validate());
    expect(short.validate().network?.secrets).toEqual([RULE]);
  });

  it("keeps the values in a field of their own, which neither a copy nor the stored form has", () => {
    const b = Sandbox.builder("s3").secretEnv("API_KEY", VALUE, "api.example.com").secretEnv("TOKEN", OTHER, "example.org");
    // What create() validates: the builder's record, values included.
    const n = new NetworkBuilder().secretEnvSimple("API_KEY", VALUE, "api.example.com").secretEnvSimple("TOKEN", OTHER, "example.org");
    const full = validateConfig({ name: "s3", env: [], network: n.toNativeConfig(), secretValues: n.secretValues() });
    expect(full.secretValues).toEqual([
      { envVar: "API_KEY", value: VALUE },
      { envVar: "TOKEN", value: OTHER },
    ]);
    for (const c of [persistableConfig(full), copyConfig(full), b.validate()]) {
      const json = JSON.stringify(c);
      expect(json).not.toContain(VALUE);
      expect(json).not.toContain(OTHER);
      expect("secretValues" in c).toBe(false);
      expect(c.network?.secrets?.map((s) => s.envVar)).toEqual(["API_KEY", "TOKEN"]);
    }
    // The stored form reads back with its rules and without values.
    const back = parseStoredConfig(JSON.stringify(persistableConfig(full)), "s3");
    expect(back.network?.secrets?.[0]).toEqual(RULE);
    expect(back.secretValues).toBeUndefined();
    // A stored config that somehow had values loses them when read.
    const tampered = parseStoredConfig(JSON.stringify({ ...persistableConfig(full), secretValues: full.secretValues }), "s3");
    expect(JSON.stringify(tampered)).not.toContain(VALUE);
  });

  it("network(n => n.secret(...)) and network(n => n.tls(...)) configure the same network", () => {
    const c = Sandbox.builder("s4")
      .network((n) => n.tls((t) => t.interceptedPorts([8443]).verifyUpstream(false)).onSecretViolation((v) => v.blockAndTerminate()))
      .secretEnv("API_KEY", VALUE, "api.example.com")
      .validate();
    expect(c.network?.tls).toEqual({ ...TLS_DEFAULTS, interceptedPorts: [8443], verifyUpstream: false });
    expect(c.network?.secrets?.[0]?.onViolation.action).toBe("block-and-terminate");
  });

  it.each([
    ["env empty", (s: SecretBuilder) => s.env("").value(VALUE).allowHost("a.example.com"), "secret.env"],
    ["env with =", (s: SecretBuilder) => s.env("A=B").value(VALUE).allowHost("a.example.com"), "secret.env"],
    ["env MSB_", (s: SecretBuilder) => s.env("MSB_TOKEN").value(VALUE).allowHost("a.example.com"), "secret.env"],
    ["value with CRLF", (s: SecretBuilder) => s.env("K").value(`${VALUE}\r\nX: y`).allowHost("a.example.com"), "secret.value"],
    ["value empty", (s: SecretBuilder) => s.env("K").value("").allowHost("a.example.com"), "secret.value"],
    ["placeholder = value", (s: SecretBuilder) => s.env("K").value(VALUE).placeholder(VALUE).allowHost("a.example.com"), "secret.placeholder"],
    ["no host", (s: SecretBuilder) => s.env("K").value(VALUE), "secret.allowHost"],
    ["an IP", (s: SecretBuilder) => s.env("K").value(VALUE).allowHost("10.0.2.254"), "secret.allowHost"],
    ["no env", (s: SecretBuilder) => s.value(VALUE).allowHost("a.example.com"), "secret.env"],
    ["no value", (s: SecretBuilder) => s.env("K").allowHost("a.example.com"), "secret.value"],
    ["another builder returned", () => new SecretBuilder(), "secret"],
  ])("%s -> InvalidConfigError naming %s, at validate() and create()", async (_, f, field) => {
    const b = Sandbox.builder("bad").secret(f);
    expect(invalid(() => b.validate()).field).toBe(field);
    expect((await rejected(b.create())).field).toBe(field);
    expect(fake.configs).toHaveLength(0);
  });

  it("secrets need the network: disableNetwork() in either order is an error", () => {
    const e = invalid(() => Sandbox.builder("d1").disableNetwork().secretEnv("API_KEY", VALUE, "api.example.com").validate());
    expect(e.field).toBe("secret");
    expect(e.message).toMatch(/network/);
    expect(invalid(() => Sandbox.builder("d2").secretEnv("API_KEY", VALUE, "api.example.com").disableNetwork().validate()).field).toBe("secret");
    // a later network() turns the network back on
    expect(Sandbox.builder("d3").disableNetwork().network((n) => n.secretEnvSimple("API_KEY", VALUE, "api.example.com")).validate().network?.secrets).toHaveLength(1);
  });

  it("an env() of a secret's name is an error, in either order", () => {
    const a = invalid(() => Sandbox.builder("e1").env("API_KEY", "x").secretEnv("API_KEY", VALUE, "api.example.com").validate());
    expect(a.field).toBe("secret.env");
    expect(a.message).toContain("API_KEY");
    expect(invalid(() => Sandbox.builder("e2").secretEnv("API_KEY", VALUE, "api.example.com").env("API_KEY", "x").validate()).field).toBe("secret.env");
    // another name is fine
    expect(Sandbox.builder("e3").env("OTHER", "x").secretEnv("API_KEY", VALUE, "api.example.com").validate().env).toEqual([["OTHER", "x"]]);
  });

  it("a duplicate secret is an error; prefixes of each other are not", () => {
    expect(invalid(() => Sandbox.builder("p1").secretEnv("K", VALUE, "a.example.com").secretEnv("K", OTHER, "b.example.com").validate()).field).toBe("secret.env");
    const c = Sandbox.builder("p2").secretEnv("API", VALUE, "a.example.com").secretEnv("API_KEY", OTHER, "a.example.com").validate();
    expect(c.network?.secrets?.map((s) => s.placeholder)).toEqual(["$MSB_API", "$MSB_API_KEY"]);
  });
});

describe("the value reaches msb-runtime and nothing else", () => {
  it("create() sends secretValues in the runtime config, never in sdkConfig, config() or the record", async () => {
    const sb = await Sandbox.builder("v1").env("PLAIN", "1").secretEnv("API_KEY", VALUE, "api.example.com").create();
    const sent = fake.configs[0]!;
    expect(sent.secretValues).toEqual([{ envVar: "API_KEY", value: VALUE }]);
    expect(sent.network?.secrets).toEqual([RULE]);
    expect(sent.network?.tls).toEqual(TLS_DEFAULTS);
    // The placeholder variable is msb-runtime's to add.
    expect(sent.env).toEqual([["PLAIN", "1"]]);
    const { secretValues: _values, ...rest } = sent;
    expect(JSON.stringify(rest)).not.toContain(VALUE);
    expect(JSON.stringify(sb.config())).not.toContain(VALUE);
    expect("secretValues" in sb.config()).toBe(false);
    const h = await Sandbox.get("v1");
    expect(h.configJson).not.toContain(VALUE);
    expect(h.configJson).toContain("$MSB_API_KEY");
    expect(JSON.stringify(h.config())).not.toContain(VALUE);
    for (const c of await Sandbox.list()) expect(c.configJson).not.toContain(VALUE);
    await sb.kill();
  });

  it("a sandbox without secrets sends no secretValues and no tls", async () => {
    const sb = await Sandbox.builder("v2").create();
    expect(fake.configs[0]!.secretValues).toBeUndefined();
    expect(fake.configs[0]!.network?.tls).toBeUndefined();
    await sb.kill();
  });
});

describe("Sandbox.start(name, { secrets }) and the handle's start", () => {
  async function stopped(name: string): Promise<void> {
    const sb = await Sandbox.builder(name).secretEnv("API_KEY", VALUE, "api.example.com").secretEnv("TOKEN", OTHER, "b.example.com").createDetached();
    await sb.stop();
  }

  it("without secrets: starts, sending no value (msb-runtime blocks the placeholders)", async () => {
    await stopped("r1");
    const sb = await Sandbox.start("r1");
    const sent = fake.configs[1]!;
    expect(sent.mode).toBe("start");
    expect(sent.secretValues).toBeUndefined();
    expect(sent.network?.secrets?.map((s) => s.envVar)).toEqual(["API_KEY", "TOKEN"]);
    await sb.stop();
  });

  it("with secrets: sends them, stores them nowhere", async () => {
    await stopped("r2");
    const sb = await Sandbox.start("r2", { secrets: { API_KEY: VALUE } });
    expect(fake.configs[1]!.secretValues).toEqual([{ envVar: "API_KEY", value: VALUE }]);
    expect(JSON.stringify(fake.configs[1]!.sdkConfig)).not.toContain(VALUE);
    expect((await Sandbox.get("r2")).configJson).not.toContain(VALUE);
    expect(JSON.stringify(sb.config())).not.toContain(VALUE);
    await sb.stop();
    const det = await Sandbox.startDetached("r2", { secrets: { API_KEY: VALUE, TOKEN: OTHER } });
    expect(fake.configs[2]!.secretValues).toEqual([
      { envVar: "API_KEY", value: VALUE },
      { envVar: "TOKEN", value: OTHER },
    ]);
    expect(fake.configs[2]!.attached).toBe(false);
    await det.stop();
  });

  it("the handle's start() and startDetached() take them too", async () => {
    await stopped("r3");
    const h = await Sandbox.get("r3");
    const sb = await h.start({ secrets: { TOKEN: OTHER } });
    expect(fake.configs[1]!.secretValues).toEqual([{ envVar: "TOKEN", value: OTHER }]);
    await sb.stop();
    const sb2 = await h.startDetached({ secrets: { API_KEY: VALUE } });
    expect(fake.configs[2]!.secretValues).toEqual([{ envVar: "API_KEY", value: VALUE }]);
    await sb2.stop();
  });

  it("refuses an env var that is not one of the sandbox's secrets, bad values and bad options, before booting", async () => {
    await stopped("r4");
    const unknown = await rejected(Sandbox.start("r4", { secrets: { NOPE: VALUE } }));
    expect(unknown.field).toBe("secrets");
    expect(unknown.message).toMatch(/no secret "NOPE".*API_KEY, TOKEN/);
    const crlf = await rejected(Sandbox.start("r4", { secrets: { API_KEY: `${VALUE}\r\n` } }));
    expect(crlf.field).toBe("secrets");
    expect(crlf.message).toMatch(/API_KEY.*CR or LF/);
    expect((await rejected(Sandbox.start("r4", { secrets: { API_KEY: "" } }))).message).toMatch(/empty/);
    expect((await rejected(Sandbox.start("r4", { secrets: { API_KEY: "$MSB_API_KEY" } }))).message).toMatch(/placeholder/);
    expect((await rejected(Sandbox.start("r4", { secrets: { API_KEY: 7 as unknown as string } }))).message).toMatch(/string/);
    expect((await rejected(Sandbox.start("r4", { secrets: "x" as unknown as Record<string, string> }))).field).toBe("secrets");
    expect((await rejected(Sandbox.start("r4", { secret: {} } as unknown as { secrets: Record<string, string> }))).field).toBe("options");
    expect((await rejected((await Sandbox.get("r4")).start({ secrets: { NOPE: "v" } }))).field).toBe("secrets");
    expect(fake.configs).toHaveLength(1);
  });

  it("a sandbox without secrets takes none", async () => {
    const sb = await Sandbox.builder("r5").createDetached();
    await sb.stop();
    const e = await rejected(Sandbox.start("r5", { secrets: { API_KEY: VALUE } }));
    expect(e.message).toMatch(/has none/);
    const ok = await Sandbox.start("r5", { secrets: {} });
    await ok.stop();
  });
});
