// msb create --label / msb ls --label through the real SDK on the fake native addon.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { setNativeBinding } from "../../sdk/src/native.js";
import { fakeNative, run, type FakeNative } from "../../sdk/test/fake-native.js";
import { parseCli } from "../src/args.js";
import { main, type MainIO } from "../src/main.js";
import { Sandbox } from "@microsandbox/sdk";

let fake: FakeNative;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative((req) => run(`${[req.cmd, ...req.args].join(" ")}\n`));
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-cli-unit";
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
    writeOut: async () => undefined,
    writeErr: async (d) => void (err += typeof d === "string" ? d : new TextDecoder().decode(d)),
    isTTY: false,
  };
  const code = await main(argv, io);
  return { code, out, err };
}

describe("--label", () => {
  it("msb create --label stores labels; msb ls --label lists those with all of them", async () => {
    expect((await msb("create", "--name", "a1", "-l", "team=a", "--label", "env=ci")).code).toBe(0);
    expect((await msb("create", "--name", "a2", "--label", "team=a", "--label", "note=")).code).toBe(0);
    expect((await msb("create", "--name", "b1", "--label", "team=b")).code).toBe(0);
    expect((await Sandbox.get("a1")).config().labels).toEqual({ team: "a", env: "ci" });
    expect((await Sandbox.get("a2")).config().labels).toEqual({ team: "a", note: "" });
    const names = (r: { out: string }) => (JSON.parse(r.out) as { name: string }[]).map((s) => s.name);
    expect(names(await msb("ls", "--json", "--label", "team=a"))).toEqual(["a1", "a2"]);
    expect(names(await msb("ls", "--json", "-l", "team=a", "-l", "env=ci"))).toEqual(["a1"]);
    expect(names(await msb("ls", "--json", "-l", "team=c"))).toEqual([]);
    expect(names(await msb("ls", "--json"))).toEqual(["a1", "a2", "b1"]);
  });

  it("a bad label is a usage error or an invalidConfig error naming the field", async () => {
    const bad = parseCli(["ls", "--label", "novalue"], "0.0.0", { out: () => undefined, err: () => undefined });
    expect(bad).toMatchObject({ kind: "exit", code: 2 });
    const r = await msb("create", "--name", "x", "--json", "--label", "sandbox.id=1");
    expect(r.code).toBe(2);
    expect(JSON.parse(r.err)).toMatchObject({ error: { code: "invalidConfig", field: "label" } });
    expect(fake.configs).toHaveLength(0);
  });
});
