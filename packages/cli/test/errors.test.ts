// msb reports every error in one format: `msb: <message>` on stderr (commander's usage
// errors included: they used to start with "error:"), or with --json one JSON object
// `{"error":{"code","message"[,"field"]}}` carrying the error's code.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ExecFailedError, InvalidConfigError, SandboxNotFoundError } from "@microsandbox/sdk";
import { setNativeBinding } from "../../sdk/src/native.js";
import { fakeNative, run, type FakeNative } from "../../sdk/test/fake-native.js";
import { parseCli } from "../src/args.js";
import { cliError, formatError, usageError, wantsJson } from "../src/errors.js";
import { main, type MainIO } from "../src/main.js";
import { describeError, runCommand, type RunDeps } from "../src/run.js";

const dec = new TextDecoder();
let fake: FakeNative;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative((req) => {
    if (req.cmd === "missing") return [{ kind: "failed", reason: "command not found: missing" }];
    return run(`${[req.cmd, ...req.args].join(" ")}\n`);
  });
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-cli-unit-errors";
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

async function msb(...argv: string[]) {
  let out = "";
  let err = "";
  const io: MainIO = {
    out: (s) => void (out += s),
    err: (s) => void (err += s),
    writeOut: async (d) => void (out += dec.decode(d)),
    writeErr: async (d) => void (err += typeof d === "string" ? d : dec.decode(d)),
    isTTY: false,
  };
  const code = await main(argv, io);
  return { code, out, err };
}

function parseErr(...argv: string[]): { code: number; err: string } {
  let err = "";
  const r = parseCli(argv, "1.0.0", { out: () => undefined, err: (s) => void (err += s) });
  expect(r.kind).toBe("exit");
  return { code: (r as { code: number }).code, err };
}

describe("formatError / cliError", () => {
  it("text: msb: <message>; json: one object with code and message (and field)", () => {
    expect(formatError({ code: "sandboxNotFound", message: "no sandbox named 'w1'" }, false)).toBe("msb: no sandbox named 'w1'\n");
    expect(formatError({ code: "sandboxNotFound", message: "no sandbox named 'w1'" }, true)).toBe(
      '{"error":{"code":"sandboxNotFound","message":"no sandbox named \'w1\'"}}\n',
    );
    const cfg = cliError(new InvalidConfigError("cpus", "invalid cpus 0"));
    expect(cfg).toEqual({ code: "invalidConfig", message: "invalid cpus 0", field: "cpus" });
    expect(JSON.parse(formatError(cfg, true))).toEqual({ error: { code: "invalidConfig", message: "invalid cpus 0", field: "cpus" } });
    expect(cliError(new ExecFailedError("command not found: x"))).toEqual({ code: "execFailed", message: "command not found: x" });
    expect(cliError(new Error("boom"))).toEqual({ code: "internal", message: "boom" });
    expect(cliError("odd")).toEqual({ code: "internal", message: "odd" });
  });

  it("commander's text loses its 'error: ' and keeps one line", () => {
    expect(usageError("error: unknown option '--x'\n")).toEqual({ code: "usage", message: "unknown option '--x'" });
    expect(usageError("error: unknown command 'lss'\n(Did you mean ls?)\n").message).toBe("unknown command 'lss' (Did you mean ls?)");
  });

  it("--json counts only among msb's own arguments", () => {
    expect(wantsJson(["ls", "--json"])).toBe(true);
    expect(wantsJson(["stop", "--json", "w1"])).toBe(true);
    expect(wantsJson(["exec", "w1", "--", "jq", "--json"])).toBe(false);
    expect(wantsJson(["ls"])).toBe(false);
  });

  it("describeError: exit code and the formatted line", () => {
    expect(describeError(new SandboxNotFoundError("no sandbox named 'x'"))).toEqual({ code: 1, message: "msb: no sandbox named 'x'" });
    expect(describeError(new InvalidConfigError("memory", "invalid memory 1"), true)).toEqual({
      code: 2,
      message: '{"error":{"code":"invalidConfig","message":"invalid memory 1","field":"memory"}}',
    });
  });
});

describe("usage errors", () => {
  const bad: string[][] = [
    ["frobnicate"],
    ["ls", "--bogus"],
    ["create", "--cpus", "x"],
    ["stop"],
    ["exec", "w1"],
    ["run", "--", ""],
    ["create", "--", "true"],
    ["cp", "a", "b"],
    ["cp", "a", "w:/b", "--", "x"],
    ["run", "-e", "NOEQUALS", "--", "true"],
    ["run", "-v", "nocolon", "--", "true"],
  ];
  for (const argv of bad) {
    it(`msb ${argv.join(" ")}: exit 2, one "msb: " line, no "error:"`, () => {
      const { code, err } = parseErr(...argv);
      expect(code).toBe(2);
      expect(err).toMatch(/^msb: [^\n]+\n$/);
      expect(err).not.toContain("error:");
    });
    it(`msb ${argv.join(" ")} --json: exit 2, one JSON object with code usage`, () => {
      const sep = argv.indexOf("--");
      const withJson = sep === -1 ? [...argv, "--json"] : [...argv.slice(0, sep), "--json", ...argv.slice(sep)];
      const { code, err } = parseErr(...withJson);
      expect(code).toBe(2);
      expect(err.endsWith("\n")).toBe(true);
      expect(err.trimEnd().split("\n")).toHaveLength(1);
      const j = JSON.parse(err) as { error: { code: string; message: string } };
      expect(j.error.code).toBe("usage");
      expect(j.error.message.length).toBeGreaterThan(0);
      expect(j.error.message).not.toMatch(/^error:/);
    });
  }

  it("the messages themselves", () => {
    expect(parseErr("ls", "--bogus").err).toBe("msb: unknown option '--bogus'\n");
    expect(parseErr("create", "--cpus", "x").err).toBe(`msb: option '--cpus <n>' argument 'x' is invalid. cpus must be a whole number (got "x").\n`);
    expect(parseErr("exec", "w1").err).toBe("msb: missing command: msb exec [options] NAME -- CMD [ARGS...]\n");
    expect(parseErr("stop", "--json").err).toBe(`{"error":{"code":"usage","message":"missing required argument 'NAME'"}}\n`);
  });
});

describe("errors of commands", () => {
  it("an SDK error: msb: <message>, or its code with --json; every command takes --json", async () => {
    expect(await msb("stop", "nope")).toEqual({ code: 1, out: "", err: "msb: no sandbox named nope\n" });
    for (const argv of [
      ["stop", "--json", "nope"],
      ["start", "--json", "nope"],
      ["kill", "--json", "nope"],
      ["rm", "--json", "nope"],
      ["inspect", "--json", "nope"],
      ["metrics", "--json", "nope"],
      ["exec", "--json", "nope", "--", "true"],
      ["cp", "--json", "./x", "nope:/x"],
    ]) {
      const r = await msb(...argv);
      expect(r.code, argv.join(" ")).toBe(1);
      expect(JSON.parse(r.err), argv.join(" ")).toEqual({ error: { code: "sandboxNotFound", message: "no sandbox named nope" } });
    }
  });

  it("an invalid option from the SDK has its field; a command that cannot start its code", async () => {
    const c = await msb("create", "--json", "--name", "bad name");
    expect(c.code).toBe(2);
    expect(JSON.parse(c.err)).toMatchObject({ error: { code: "invalidConfig", field: "name" } });
    expect(await msb("create", "--name", "w1")).toMatchObject({ code: 0 });
    expect(await msb("exec", "w1", "--", "missing")).toEqual({ code: 127, out: "", err: "msb: command not found: missing\n" });
    const j = await msb("exec", "--json", "w1", "--", "missing");
    expect(j.code).toBe(127);
    expect(JSON.parse(j.err)).toEqual({ error: { code: "execFailed", message: "command not found: missing" } });
    await msb("rm", "-f", "w1");
  });

  it("msb run --json: its errors and the removal failure are JSON too", async () => {
    let err = "";
    const deps: RunDeps = {
      create: async () => {
        throw new InvalidConfigError("memory", "invalid memory 1");
      },
      remove: async () => undefined,
      writeOut: async () => undefined,
      writeErr: async (d) => void (err += typeof d === "string" ? d : dec.decode(d)),
      json: true,
    };
    expect(await runCommand({ env: [], command: ["true"], registry: {} } as never, deps)).toBe(2);
    expect(JSON.parse(err)).toEqual({ error: { code: "invalidConfig", message: "invalid memory 1", field: "memory" } });
  });
});
