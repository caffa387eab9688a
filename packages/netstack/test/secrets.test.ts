import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  MAX_PLACEHOLDER_LEN,
  MAX_SECRET_VALUE_LEN,
  MAX_SECRETS,
  NetworkBuilder,
  NetworkConfigError,
  SecretBuilder,
  TlsBuilder,
  ViolationActionBuilder,
  type SecretBuilder as SecretBuilderType,
} from "../src/index.js";

const VALUE = "S3cr3t-value-0123456789";

function err(f: () => unknown): NetworkConfigError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(NetworkConfigError);
    const n = e as NetworkConfigError;
    expect(n.code).toBe("invalidConfig");
    // The message names the field it is about.
    expect(n.message).toContain(n.field);
    return n;
  }
  throw new Error("did not throw");
}

/** A secret that is valid except for what `f` changes. */
function secret(f: (s: SecretBuilderType) => SecretBuilderType = (s) => s) {
  return f(new SecretBuilder().env("API_KEY").value(VALUE).allowHost("api.example.com")).build();
}

const dir = mkdtempSync(join(tmpdir(), "msb-netstack-secrets-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
const caFile = join(dir, "ca.pem");
writeFileSync(caFile, PEM);

describe("SecretBuilder: defaults and shape", () => {
  it("builds the reference's SecretEntry with the documented defaults", () => {
    expect(secret()).toEqual({
      envVar: "API_KEY",
      value: VALUE,
      placeholder: "$MSB_API_KEY",
      allowedHosts: ["api.example.com"],
      allowedHostPatterns: [],
      allowAnyHost: false,
      requireTlsIdentity: true,
      injection: { headers: true, basicAuth: true, queryParams: false, body: false },
    });
  });
  it("takes every option", () => {
    const e = new SecretBuilder()
      .env("TOKEN")
      .value(VALUE)
      .placeholder("{{TOKEN}}")
      .allowHost("a.example.com")
      .allowHost("A.Example.com.")
      .allowHostPattern("*.openai.com")
      .requireTlsIdentity(false)
      .injectHeaders(false)
      .injectBasicAuth(false)
      .injectQuery(true)
      .injectBody(true)
      .onViolation((v) => v.blockAndTerminate().passthroughHost("echo.example.com").passthroughHostPattern("*.logs.example.com"))
      .build();
    expect(e).toEqual({
      envVar: "TOKEN",
      value: VALUE,
      placeholder: "{{TOKEN}}",
      // the second one normalizes to the first: kept once
      allowedHosts: ["a.example.com"],
      allowedHostPatterns: ["*.openai.com"],
      allowAnyHost: false,
      requireTlsIdentity: false,
      injection: { headers: false, basicAuth: false, queryParams: true, body: true },
      onViolation: {
        action: "block-and-terminate",
        passthroughHosts: ["echo.example.com"],
        passthroughHostPatterns: ["*.logs.example.com"],
        passthroughAllHosts: false,
      },
    });
  });
  it("allowAnyHostDangerous(true) is a host rule of its own", () => {
    const e = new SecretBuilder().env("K").value(VALUE).allowAnyHostDangerous(true).build();
    expect(e.allowAnyHost).toBe(true);
    expect(e.allowedHosts).toEqual([]);
  });
  it("normalizes hosts: lower case, no trailing dot, IDN to punycode", () => {
    expect(secret((s) => s.allowHost("API.EXAMPLE.COM.")).allowedHosts).toEqual(["api.example.com"]);
    expect(secret((s) => s.allowHost("bücher.de")).allowedHosts).toEqual(["api.example.com", "xn--bcher-kva.de"]);
    expect(secret((s) => s.allowHostPattern("*.Bücher.DE.")).allowedHostPatterns).toEqual(["*.xn--bcher-kva.de"]);
    expect(secret((s) => s.allowHost("host.microsandbox.internal")).allowedHosts).toContain("host.microsandbox.internal");
    expect(secret((s) => s.allowHost("localhost")).allowedHosts).toContain("localhost");
  });
});

describe("SecretBuilder: bad input names its field", () => {
  it.each([
    ["", /must not be empty/],
    ["A=B", /'='/],
    ["A\0", /NUL/],
    ["MSB_X", /MSB_/],
    ["x".repeat(257), /at most 256 bytes/],
  ])("env %j", (v, why) => {
    const e = err(() => new SecretBuilder().env(v));
    expect(e.field).toBe("secret.env");
    expect(e.message).toMatch(why);
  });
  it.each([
    ["", /must not be empty/],
    ["a\r\nX-Injected: 1", /CR or LF/],
    ["a\nb", /CR or LF/],
    ["a\rb", /CR or LF/],
    ["a\0b", /NUL/],
    ["x".repeat(MAX_SECRET_VALUE_LEN + 1), new RegExp(`at most ${MAX_SECRET_VALUE_LEN} bytes`)],
    ["é".repeat(MAX_SECRET_VALUE_LEN / 2 + 1), /at most/],
  ])("value %#, never shown in the message", (v, why) => {
    const e = err(() => new SecretBuilder().env("K").value(v));
    expect(e.field).toBe("secret.value");
    expect(e.message).toMatch(why);
    expect(e.message).toContain("of secret K");
    if (v.length > 2) expect(e.message).not.toContain(v.slice(0, 3));
    expect(e.cause).toBeUndefined();
  });
  it("a value of the maximum length is accepted", () => {
    expect(secret((s) => s.value("v".repeat(MAX_SECRET_VALUE_LEN))).value).toHaveLength(MAX_SECRET_VALUE_LEN);
  });
  it("a bad value is reported without it, also when not a string", () => {
    const e = err(() => new SecretBuilder().value(42 as unknown as string));
    expect(e.field).toBe("secret.value");
    expect(e.message).toMatch(/must be a string/);
  });
  it.each([
    ["", /must not be empty/],
    ["p".repeat(MAX_PLACEHOLDER_LEN + 1), /at most 1024 bytes/],
    ["a\rb", /CR or LF/],
    ["a\nb", /CR or LF/],
    ["a\0b", /NUL/],
  ])("placeholder %#", (v, why) => {
    const e = err(() => new SecretBuilder().placeholder(v));
    expect(e.field).toBe("secret.placeholder");
    expect(e.message).toMatch(why);
  });
  it("a placeholder of 1024 bytes is fine; one equal to the value is not", () => {
    expect(secret((s) => s.placeholder("p".repeat(MAX_PLACEHOLDER_LEN))).placeholder).toHaveLength(1024);
    const e = err(() => secret((s) => s.placeholder(VALUE)));
    expect(e.field).toBe("secret.placeholder");
    expect(e.message).not.toContain(VALUE);
    // the default placeholder too
    const d = err(() => new SecretBuilder().env("K").value("$MSB_K").allowHost("a.example.com").build());
    expect(d.field).toBe("secret.placeholder");
  });
  it.each([
    ["", "secret.allowHost", /must not be empty/],
    ["https://x", "secret.allowHost", /scheme/],
    ["x:443", "secret.allowHost", /port/],
    ["*", "secret.allowHost", /allowAnyHostDangerous/],
    ["*.example.com", "secret.allowHost", /allowHostPattern/],
    ["1.2.3.4", "secret.allowHost", /IP address.*SNI/],
    ["10.0.2.254", "secret.allowHost", /IP address/],
    ["0x7f.1", "secret.allowHost", /IP address/],
    ["::1", "secret.allowHost", /IP address/],
    ["[::1]", "secret.allowHost", /IP address/],
    ["a..b", "secret.allowHost", /labels/],
    ["-a.example.com", "secret.allowHost", /labels/],
    ["exa mple.com", "secret.allowHost", /host name/],
    ["user@example.com", "secret.allowHost", /host name/],
    ["*", "secret.allowHostPattern", /pattern/],
    ["*.com", "secret.allowHostPattern", /too broad/],
    ["*.com.", "secret.allowHostPattern", /too broad/],
    ["example.com", "secret.allowHostPattern", /\*\.suffix/],
    ["*.1.2.3.4", "secret.allowHostPattern", /IP address/],
    ["*.*.example.com", "secret.allowHostPattern", /one host name/],
  ])("host %j for %s", (v, field, why) => {
    const e = err(() => (field === "secret.allowHost" ? new SecretBuilder().allowHost(v) : new SecretBuilder().allowHostPattern(v)));
    expect(e.field).toBe(field);
    expect(e.message).toMatch(why);
  });
  it("booleans are booleans", () => {
    for (const m of ["allowAnyHostDangerous", "requireTlsIdentity", "injectHeaders", "injectBasicAuth", "injectQuery", "injectBody"] as const) {
      const e = err(() => new SecretBuilder()[m]("yes" as unknown as boolean));
      expect(e.field).toBe(`secret.${m}`);
      expect(e.message).toMatch(/boolean/);
    }
  });
  it("build() names a missing env, value or host", () => {
    expect(err(() => new SecretBuilder().value(VALUE).allowHost("a.example.com").build()).field).toBe("secret.env");
    const v = err(() => new SecretBuilder().env("K").allowHost("a.example.com").build());
    expect(v.field).toBe("secret.value");
    expect(v.message).toMatch(/secret K needs its value/);
    const h = err(() => new SecretBuilder().env("K").value(VALUE).build());
    expect(h.field).toBe("secret.allowHost");
    expect(h.message).toMatch(/at least one host/);
    // false is no host at all
    expect(err(() => new SecretBuilder().env("K").value(VALUE).allowAnyHostDangerous(false).build()).field).toBe("secret.allowHost");
  });
});

describe("ViolationActionBuilder", () => {
  it("defaults to block-and-log; each action replaces the last", () => {
    expect(new ViolationActionBuilder().build()).toEqual({ action: "block-and-log", passthroughHosts: [], passthroughHostPatterns: [], passthroughAllHosts: false });
    expect(new ViolationActionBuilder().blockAndTerminate().block().build().action).toBe("block");
    expect(new ViolationActionBuilder().block().blockAndLog().build().action).toBe("block-and-log");
    expect(new ViolationActionBuilder().passthroughAllHosts(true).build().passthroughAllHosts).toBe(true);
  });
  it("checks its hosts like a secret's", () => {
    expect(err(() => new ViolationActionBuilder().passthroughHost("1.2.3.4")).field).toBe("onViolation.passthroughHost");
    expect(err(() => new ViolationActionBuilder().passthroughHostPattern("*.com")).field).toBe("onViolation.passthroughHostPattern");
    expect(err(() => new ViolationActionBuilder().passthroughAllHosts(1 as unknown as boolean)).field).toBe("onViolation.passthroughAllHosts");
    const inSecret = err(() => new SecretBuilder().onViolation((v) => v.passthroughHost("x:1")));
    expect(inSecret.field).toBe("secret.onViolation.passthroughHost");
  });
});

describe("TlsBuilder", () => {
  it("defaults", () => {
    expect(new TlsBuilder().build()).toEqual({ bypass: [], verifyUpstream: true, interceptedPorts: [443], blockQuic: true, upstreamCaCertPaths: [] });
  });
  it("takes every option; the CA path is stored absolute", () => {
    // relative to wherever the tests run from (CI clones at any depth)
    const rel = relative(process.cwd(), caFile);
    const t = new TlsBuilder()
      .bypass("pinned.example.com")
      .bypass("*.Apple.com")
      .verifyUpstream(false)
      .interceptedPorts([443, 8443, 443])
      .blockQuic(false)
      .upstreamCaCert(caFile)
      .build();
    expect(t).toEqual({
      bypass: ["pinned.example.com", "*.apple.com"],
      verifyUpstream: false,
      interceptedPorts: [443, 8443],
      blockQuic: false,
      upstreamCaCertPaths: [caFile],
    });
    expect(new TlsBuilder().upstreamCaCert(rel).build().upstreamCaCertPaths).toEqual([resolve(rel)]);
  });
  it.each([[[]], [[0]], [[65536]], [[443.5]], [[-1]], [["443"]], ["443"]])("refuses ports %j", (ports) => {
    const e = err(() => new TlsBuilder().interceptedPorts(ports as unknown as number[]));
    expect(e.field).toBe("tls.interceptedPorts");
  });
  it("refuses a CA file that is missing, a directory, empty or not PEM", () => {
    const notPem = join(dir, "not.pem");
    writeFileSync(notPem, "hello\n");
    const sub = join(dir, "sub");
    mkdirSync(sub, { recursive: true });
    for (const [p, why] of [
      [join(dir, "missing.pem"), /ENOENT/],
      [sub, /regular file|EISDIR/],
      [notPem, /BEGIN CERTIFICATE/],
      ["", /must not be empty/],
    ] as const) {
      const e = err(() => new TlsBuilder().upstreamCaCert(p));
      expect(e.field).toBe("tls.upstreamCaCert");
      expect(e.message).toMatch(why);
    }
  });
  it("refuses bad bypass entries and non-boolean flags", () => {
    for (const b of ["", "*", "*.com", "1.2.3.4", "x:443", "https://x"]) expect(err(() => new TlsBuilder().bypass(b)).field).toBe("tls.bypass");
    expect(err(() => new TlsBuilder().verifyUpstream("no" as unknown as boolean)).field).toBe("tls.verifyUpstream");
    expect(err(() => new TlsBuilder().blockQuic(0 as unknown as boolean)).field).toBe("tls.blockQuic");
  });
});

describe("NetworkBuilder: secrets, tls and the native JSON", () => {
  it("has no tls and no secrets unless asked", () => {
    const c = new NetworkBuilder().toNativeConfig();
    expect("tls" in c).toBe(false);
    expect("secrets" in c).toBe(false);
    expect(new NetworkBuilder().secretValues()).toEqual([]);
  });
  it("a secret turns tls on with the defaults; the rules carry no value; values come apart", () => {
    const n = new NetworkBuilder().secret((s) => s.env("API_KEY").value(VALUE).allowHost("api.example.com"));
    const c = n.toNativeConfig();
    expect(c.tls).toEqual({ bypass: [], verifyUpstream: true, interceptedPorts: [443], blockQuic: true, upstreamCaCertPaths: [] });
    expect(c.secrets).toEqual([
      {
        envVar: "API_KEY",
        placeholder: "$MSB_API_KEY",
        allowedHosts: ["api.example.com"],
        allowedHostPatterns: [],
        allowAnyHost: false,
        requireTlsIdentity: true,
        injection: { headers: true, basicAuth: true, queryParams: false, body: false },
        onViolation: { action: "block-and-log", passthroughHosts: [], passthroughHostPatterns: [], passthroughAllHosts: false },
      },
    ]);
    expect(JSON.stringify(c)).not.toContain(VALUE);
    expect(n.secretValues()).toEqual([{ envVar: "API_KEY", value: VALUE }]);
  });
  it("tls() alone turns interception on; later calls start from the earlier settings", () => {
    const n = new NetworkBuilder().tls((t) => t.interceptedPorts([8443])).tls((t) => t.upstreamCaCert(caFile));
    expect(n.toNativeConfig().tls).toEqual({ bypass: [], verifyUpstream: true, interceptedPorts: [8443], blockQuic: true, upstreamCaCertPaths: [caFile] });
    expect(n.toNativeConfig().secrets).toBeUndefined();
  });
  it("onSecretViolation is the default of secrets without their own, whenever it is called", () => {
    const c = new NetworkBuilder()
      .secret((s) => s.env("A").value(VALUE).allowHost("a.example.com"))
      .secret((s) => s.env("B").value("other-value").allowHost("b.example.com").onViolation((v) => v.block()))
      .onSecretViolation((v) => v.blockAndTerminate().passthroughHost("echo.example.com"))
      .toNativeConfig();
    expect(c.secrets?.map((s) => s.onViolation)).toEqual([
      { action: "block-and-terminate", passthroughHosts: ["echo.example.com"], passthroughHostPatterns: [], passthroughAllHosts: false },
      { action: "block", passthroughHosts: [], passthroughHostPatterns: [], passthroughAllHosts: false },
    ]);
    expect(err(() => new NetworkBuilder().onSecretViolation((v) => v.passthroughHost(""))).field).toBe("network.onSecretViolation.passthroughHost");
  });
  it("secretEnv (4 arguments) and secretEnvSimple equal the long forms", () => {
    const long = new NetworkBuilder().secret((s) => s.env("K").value(VALUE).placeholder("<K>").allowHost("a.example.com"));
    const short = new NetworkBuilder().secretEnv("K", VALUE, "<K>", "a.example.com");
    expect(short.toNativeConfig()).toEqual(long.toNativeConfig());
    expect(short.secretValues()).toEqual(long.secretValues());
    const simple = new NetworkBuilder().secretEnvSimple("K", VALUE, "a.example.com");
    expect(simple.toNativeConfig()).toEqual(new NetworkBuilder().secret((s) => s.env("K").value(VALUE).allowHost("a.example.com")).toNativeConfig());
    expect(simple.toNativeConfig().secrets?.[0]?.placeholder).toBe("$MSB_K");
  });
  it("a placeholder that is a prefix of another is allowed ($MSB_API and $MSB_API_KEY)", () => {
    const n = new NetworkBuilder().secretEnvSimple("API", "value-one", "a.example.com").secretEnvSimple("API_KEY", "value-two", "a.example.com");
    expect(n.toNativeConfig().secrets?.map((s) => s.placeholder)).toEqual(["$MSB_API", "$MSB_API_KEY"]);
  });
  it("refuses a duplicate env var or placeholder, and more than MAX_SECRETS", () => {
    const n = new NetworkBuilder().secretEnvSimple("K", VALUE, "a.example.com");
    expect(err(() => n.secretEnvSimple("K", "v2", "b.example.com")).field).toBe("secret.env");
    const p = err(() => n.secretEnv("L", "v2", "$MSB_K", "b.example.com"));
    expect(p.field).toBe("secret.placeholder");
    expect(p.message).toMatch(/duplicate.*secret K/);
    // a placeholder equal to another secret's value
    expect(err(() => n.secretEnv("M", "v3", VALUE, "b.example.com")).field).toBe("secret.placeholder");
    // the failed calls added nothing
    expect(n.secretValues()).toEqual([{ envVar: "K", value: VALUE }]);
    const many = new NetworkBuilder();
    for (let i = 0; i < MAX_SECRETS; i++) many.secretEnvSimple(`K${i}`, `value-${i}`, "a.example.com");
    const e = err(() => many.secretEnvSimple("ONE_MORE", "v", "a.example.com"));
    expect(e.field).toBe("secret");
    expect(e.message).toMatch(/at most 64/);
  });
  it("callbacks return their builder or nothing; anything else is an error naming the field", () => {
    expect(() => new NetworkBuilder().secret((s) => void s.env("K").value(VALUE).allowHost("a.example.com"))).not.toThrow();
    const other = new SecretBuilder().env("K").value(VALUE).allowHost("a.example.com");
    expect(err(() => new NetworkBuilder().secret(() => other)).field).toBe("secret");
    expect(err(() => new NetworkBuilder().tls(() => new TlsBuilder())).field).toBe("tls");
    expect(err(() => new NetworkBuilder().tls(() => 1 as unknown as TlsBuilder)).field).toBe("tls");
    expect(err(() => new NetworkBuilder().onSecretViolation(() => new ViolationActionBuilder())).field).toBe("network.onSecretViolation");
    expect(err(() => new SecretBuilder().onViolation(() => null as unknown as ViolationActionBuilder)).field).toBe("secret.onViolation");
    expect(err(() => new NetworkBuilder().secret("nope" as unknown as () => SecretBuilder)).field).toBe("secret");
  });
  it("an error inside the secret callback surfaces with its own field", () => {
    expect(err(() => new NetworkBuilder().secret((s) => s.env("K").value(VALUE).allowHost("1.2.3.4"))).field).toBe("secret.allowHost");
    expect(err(() => new NetworkBuilder().secret((s) => s.value(VALUE).allowHost("a.example.com"))).field).toBe("secret.env");
  });
});
