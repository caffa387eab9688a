import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { InvalidConfigError, MAX_SECRET_VALUE_LEN, Sandbox } from "@microsandbox/sdk";
import { parseCli, parseSecret, parseSecretFile, parseTlsPort, type ParsedCli } from "../src/args.js";
import { applyGuestFlags, secretValue } from "../src/run.js";

const VALUE = "sk-cli-S3cr3t-4242";

function parse(...argv: string[]): { result: ParsedCli; out: string; err: string } {
  let out = "";
  let err = "";
  const result = parseCli(argv, "9.8.7", { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { result, out, err };
}

function invalid(f: () => unknown): InvalidConfigError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect((e as Error).message).not.toContain(VALUE);
    return e as InvalidConfigError;
  }
  throw new Error("did not throw");
}

const dir = mkdtempSync(join(tmpdir(), "msb-cli-secrets-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const CA = join(dir, "ca.pem");
writeFileSync(CA, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");

describe("--secret ENV@HOST and --secret-file ENV@HOST=PATH", () => {
  it("parse into specs without any value", () => {
    expect(parseSecret("API_KEY@api.example.com")).toEqual({ envVar: "API_KEY", host: "api.example.com" });
    expect(parseSecret("K@*.example.com")).toEqual({ envVar: "K", host: "*.example.com" });
    expect(parseSecretFile("K@api.example.com=/run/k=v@x")).toEqual({ envVar: "K", host: "api.example.com", file: "/run/k=v@x" });
    expect(parseTlsPort("8443")).toBe(8443);
  });
  it.each(["API_KEY", "@host", "API_KEY@", "API_KEY=sk-123@host"])("--secret %j is refused", (v) => {
    expect(() => parseSecret(v)).toThrow(/--secret must be ENV@HOST/);
  });
  it("a value typed on the command line is refused without being echoed", () => {
    const { result, err } = parse("run", "--secret", `API_KEY=${VALUE}@api.example.com`, "--", "true");
    expect(result).toEqual({ kind: "exit", code: 2 });
    expect(err).toMatch(/never given on the command line/);
    expect(err).not.toContain(VALUE);
  });
  it.each(["K@host", "K@host=", "=x", "K=1@host=/f"])("--secret-file %j is refused", (v) => {
    expect(() => parseSecretFile(v)).toThrow(/--secret-file must be ENV@HOST=PATH/);
  });
  it.each(["0", "65536", "x", "44.3"])("--tls-port %j is refused", (v) => {
    const { result, err } = parse("run", "--tls-port", v, "--", "true");
    expect(result).toEqual({ kind: "exit", code: 2 });
    expect(err).toMatch(/tls port/);
  });
  it("msb run and create collect them, in order, with --tls-upstream-ca and --tls-port", () => {
    const { result } = parse(
      "run",
      "--secret",
      "API_KEY@api.example.com",
      "--secret-file",
      "TOKEN@*.example.org=/tmp/token",
      "--secret",
      "B@b.example.com",
      "--tls-upstream-ca",
      CA,
      "--tls-port",
      "443",
      "--tls-port",
      "8443",
      "--",
      "true",
    );
    expect(result).toMatchObject({
      kind: "run",
      options: {
        secrets: [
          { envVar: "API_KEY", host: "api.example.com" },
          { envVar: "B", host: "b.example.com" },
          { envVar: "TOKEN", host: "*.example.org", file: "/tmp/token" },
        ],
        tlsUpstreamCas: [CA],
        tlsPorts: [443, 8443],
      },
    });
    expect(parse("create", "--secret", "K@a.example.com").result).toMatchObject({ kind: "create", options: { secrets: [{ envVar: "K", host: "a.example.com" }] } });
  });
  it("run --help documents them", () => {
    const { out } = parse("run", "--help");
    for (const flag of ["--secret <ENV@HOST>", "--secret-file <ENV@HOST=PATH>", "--tls-upstream-ca <pem>", "--tls-port <port>"]) expect(out).toContain(flag);
    expect(out).toMatch(/The value never enters the\s+guest and is never stored/);
  });
});

describe("reading secret values", () => {
  it("--secret reads msb's own environment variable", () => {
    expect(secretValue({ envVar: "API_KEY", host: "api.example.com" }, { API_KEY: VALUE })).toBe(VALUE);
  });
  it("an unset or empty variable is a clear error", () => {
    const e = invalid(() => secretValue({ envVar: "API_KEY", host: "api.example.com" }, {}));
    expect(e.field).toBe("secret");
    expect(e.message).toMatch(/environment variable API_KEY is not set/);
    expect(e.message).toMatch(/export API_KEY=/);
    expect(invalid(() => secretValue({ envVar: "API_KEY", host: "h" }, { API_KEY: "" })).message).toMatch(/is empty/);
  });
  it("defaults to process.env", () => {
    const saved = process.env.MSB_TEST_CLI_SECRET_X;
    process.env.MSB_TEST_CLI_SECRET_X = VALUE;
    try {
      expect(secretValue({ envVar: "MSB_TEST_CLI_SECRET_X", host: "h" })).toBe(VALUE);
    } finally {
      if (saved === undefined) delete process.env.MSB_TEST_CLI_SECRET_X;
      else process.env.MSB_TEST_CLI_SECRET_X = saved;
    }
    delete process.env.MSB_TEST_CLI_SECRET_UNSET;
    expect(invalid(() => secretValue({ envVar: "MSB_TEST_CLI_SECRET_UNSET", host: "h" })).message).toMatch(/not set/);
  });
  it("--secret-file reads the file, one trailing newline stripped", () => {
    const f = (name: string, content: string) => {
      const p = join(dir, name);
      writeFileSync(p, content);
      return { envVar: "K", host: "h", file: p };
    };
    expect(secretValue(f("lf", `${VALUE}\n`))).toBe(VALUE);
    expect(secretValue(f("crlf", `${VALUE}\r\n`))).toBe(VALUE);
    expect(secretValue(f("two", `${VALUE}\n\n`))).toBe(`${VALUE}\n`);
    expect(secretValue(f("none", VALUE))).toBe(VALUE);
    expect(secretValue(f("max", "v".repeat(MAX_SECRET_VALUE_LEN) + "\n"))).toHaveLength(MAX_SECRET_VALUE_LEN);
    expect(invalid(() => secretValue(f("big", "v".repeat(MAX_SECRET_VALUE_LEN + 3)))).message).toMatch(/more than/);
    expect(invalid(() => secretValue(f("empty", "\n"))).message).toMatch(/empty/);
    expect(invalid(() => secretValue({ envVar: "K", host: "h", file: join(dir, "missing") })).message).toMatch(/ENOENT/);
    expect(invalid(() => secretValue({ envVar: "K", host: "h", file: dir })).message).toMatch(/regular file|EISDIR/);
  });
});

describe("applying secret and TLS flags to a builder", () => {
  it("adds each secret (host or *.pattern) and the TLS settings; the value is in no config", () => {
    const b = Sandbox.builder("x");
    applyGuestFlags(
      b,
      {
        secrets: [
          { envVar: "API_KEY", host: "api.example.com" },
          { envVar: "TOKEN", host: "*.example.org" },
        ],
        tlsUpstreamCas: [CA],
        tlsPorts: [8443],
      },
      { API_KEY: VALUE, TOKEN: `${VALUE}-2` },
    );
    const c = b.validate();
    expect(c.network?.tls).toEqual({ bypass: [], verifyUpstream: true, interceptedPorts: [8443], blockQuic: true, upstreamCaCertPaths: [CA] });
    expect(c.network?.secrets?.map((s) => [s.envVar, s.placeholder, s.allowedHosts, s.allowedHostPatterns])).toEqual([
      ["API_KEY", "$MSB_API_KEY", ["api.example.com"], []],
      ["TOKEN", "$MSB_TOKEN", [], ["*.example.org"]],
    ]);
    expect(JSON.stringify(c)).not.toContain(VALUE);
  });
  it("a bad host or value is an InvalidConfigError at validation, naming the field", () => {
    const b = Sandbox.builder("x");
    applyGuestFlags(b, { secrets: [{ envVar: "K", host: "1.2.3.4" }] }, { K: VALUE });
    expect(invalid(() => b.validate()).field).toBe("secret.allowHost");
    const c = Sandbox.builder("y");
    applyGuestFlags(c, { secrets: [{ envVar: "K", host: "a.example.com" }] }, { K: `${VALUE}\r\nX: 1` });
    expect(invalid(() => c.validate()).field).toBe("secret.value");
  });
  it("an unset variable fails at once; --no-net with a secret or a TLS flag too", () => {
    expect(invalid(() => applyGuestFlags(Sandbox.builder("x"), { secrets: [{ envVar: "K", host: "a.example.com" }] }, {})).message).toMatch(/K is not set/);
    expect(invalid(() => applyGuestFlags(Sandbox.builder("x"), { noNet: true, secrets: [{ envVar: "K", host: "a.example.com" }] }, { K: VALUE })).field).toBe("secret");
    expect(invalid(() => applyGuestFlags(Sandbox.builder("x"), { noNet: true, tlsPorts: [443] }, {})).field).toBe("tls");
  });
  it("a CA file that is not PEM is refused", () => {
    const notPem = join(dir, "not.pem");
    writeFileSync(notPem, "nope");
    const b = Sandbox.builder("x");
    applyGuestFlags(b, { tlsUpstreamCas: [notPem] }, {});
    expect(invalid(() => b.validate()).field).toBe("tls.upstreamCaCert");
  });
});

describe("msb start --secret ENV / --secret-file ENV=PATH", () => {
  it("parse into specs naming only the env var, and read values from msb's environment or a file", () => {
    const file = join(dir, "start-key");
    writeFileSync(file, `${VALUE}\n`);
    const { result } = parse("start", "w1", "w2", "--secret", "API_KEY", "--secret-file", `OTHER=${file}`);
    expect(result).toEqual({ kind: "start", names: ["w1", "w2"], secrets: [{ envVar: "API_KEY", host: "" }, { envVar: "OTHER", host: "", file }] });
    if (result.kind !== "start") throw new Error("not start");
    expect(secretValue(result.secrets![0]!, { API_KEY: VALUE })).toBe(VALUE);
    expect(secretValue(result.secrets![1]!, {})).toBe(VALUE);
    expect(parse("start", "w1").result).toEqual({ kind: "start", names: ["w1"] });
    const missing = invalid(() => secretValue(result.secrets![0]!, {}));
    expect(missing.message).toContain("--secret API_KEY: the environment variable API_KEY is not set");
  });

  it("refuses a value or a host on the command line without echoing it", () => {
    for (const arg of [`API_KEY=${VALUE}`, `API_KEY@api.example.com`]) {
      const { result, err } = parse("start", "w1", "--secret", arg);
      expect(result.kind).toBe("exit");
      expect(err).toContain("msb start --secret must be ENV");
      expect(err).not.toContain(VALUE);
    }
  });
});
