// msb logs: parsing, and the command through the real SDK (fake native addon for the
// sandbox record; the log files are real files in a temporary MSB_HOME).
import { appendFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { setNativeBinding } from "../../sdk/src/native.js";
import { fakeNative } from "../../sdk/test/fake-native.js";
import { parseCli } from "../src/args.js";
import { parseTime } from "../src/logs.js";
import { main, type MainIO } from "../src/main.js";

const dec = new TextDecoder();
const savedHome = process.env.MSB_HOME;
let home: string;
const T0 = Date.parse("2026-12-03T06:00:00.000Z");

function header(name: string): string {
  return `${JSON.stringify({ msb: "exec-log", v: 1, sandbox: name, uid: "0123456789abcdef", gen: "fedcba9876543210", prev: "", t: "2026-12-03T06:00:00.000Z" })}\n`;
}
function line(ms: number, s: string, d: string, id?: number): string {
  return `${JSON.stringify({ t: new Date(ms).toISOString(), s, ...(id === undefined ? {} : { id }), d })}\n`;
}

beforeEach(async () => {
  home = mkdtempSync(join(tmpdir(), "msb-cli-logs-"));
  process.env.MSB_HOME = home;
  setNativeBinding(fakeNative());
  // A sandbox "w1" in the fake's store, with logs on disk.
  expect((await msb("create", "--name", "w1")).code).toBe(0);
  const dir = join(home, "sandboxes", "w1");
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "exec.log"),
    header("w1") +
      line(T0, "system", "--- sandbox started ---\n") +
      line(T0 + 1, "stdout", "one\n", 1) +
      line(T0 + 2, "stderr", "warn\n", 1) +
      line(T0 + 3, "stdout", "two\n", 2),
  );
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
  rmSync(home, { recursive: true, force: true });
});

function io(signal?: AbortSignal) {
  let out = "";
  let err = "";
  const t: MainIO = {
    out: (s) => void (out += s),
    err: (s) => void (err += s),
    writeOut: async (d) => void (out += dec.decode(d)),
    writeErr: async (d) => void (err += typeof d === "string" ? d : dec.decode(d)),
    isTTY: false,
  };
  if (signal) t.signal = signal;
  return { io: t, out: () => out, err: () => err };
}

async function msb(...argv: string[]) {
  const t = io();
  const code = await main(argv, t.io);
  return { code, out: t.out(), err: t.err() };
}

describe("msb logs: arguments", () => {
  it("parses follow, times, tail, sources and output flags", () => {
    const r = parseCli(["logs", "-f", "--since", "2026-12-03T06:00:00Z", "--until", "1796280000", "-n", "5", "--source", "stdout,system", "--source", "stderr", "-t", "--json", "w1"], "0", { out() {}, err() {} });
    expect(r).toEqual({
      kind: "logs",
      options: {
        name: "w1",
        follow: true,
        since: new Date(T0),
        until: new Date(1796280000 * 1000),
        tail: 5,
        sources: ["stdout", "system", "stderr"],
        json: true,
        timestamps: true,
      },
    });
    const now = Date.parse("2026-12-03T07:00:00Z");
    expect(parseTime("10m", now)).toEqual(new Date(now - 600_000));
    expect(parseTime("2h", now)).toEqual(new Date(now - 7_200_000));
    expect(parseTime("1d", now)).toEqual(new Date(now - 86_400_000));
    expect(parseTime("1.5")).toEqual(new Date(1500));
    expect(() => parseTime("yesterday")).toThrow(/duration/);
  });

  it("refuses bad values as usage errors (exit 2)", () => {
    for (const argv of [["logs"], ["logs", "--tail", "-1", "w1"], ["logs", "--tail", "x", "w1"], ["logs", "--source", "stdin", "w1"], ["logs", "--since", "soon", "w1"], ["logs", "w1", "--", "x"]]) {
      let err = "";
      const r = parseCli(argv, "0", { out() {}, err: (s) => void (err += s) });
      expect(r, argv.join(" ")).toEqual({ kind: "exit", code: 2 });
      expect(err).toMatch(/^msb: /);
    }
  });
});

describe("msb logs", () => {
  it("prints stdout to stdout and stderr to stderr, in order", async () => {
    expect(await msb("logs", "w1")).toEqual({ code: 0, out: "one\ntwo\n", err: "warn\n" });
    expect(await msb("logs", "--source", "system", "w1")).toEqual({ code: 0, out: "--- sandbox started ---\n", err: "" });
    expect((await msb("logs", "--tail", "1", "w1")).out).toBe("two\n");
    expect((await msb("logs", "-t", "--source", "stdout", "w1")).out).toBe("2026-12-03T06:00:00.001Z one\n2026-12-03T06:00:00.003Z two\n");
  });

  it("--json prints one object per entry", async () => {
    const r = await msb("logs", "--json", "--source", "all", "w1");
    expect(r.code).toBe(0);
    const objs = r.out
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(objs.map((o) => [o.source, o.sessionId, o.data])).toEqual([
      ["system", null, "--- sandbox started ---\n"],
      ["stdout", 1, "one\n"],
      ["stderr", 1, "warn\n"],
      ["stdout", 2, "two\n"],
    ]);
    expect(objs[0]).toMatchObject({ timestamp: "2026-12-03T06:00:00.000Z", cursor: expect.stringMatching(/^msbl1_/) });
  });

  it("an unknown sandbox is an error", async () => {
    const r = await msb("logs", "--json", "nope");
    expect(r.code).not.toBe(0);
    expect(JSON.parse(r.err)).toMatchObject({ error: { code: "sandboxNotFound" } });
  });

  it("-f prints what is there, then new entries, until Ctrl-C", async () => {
    const ac = new AbortController();
    const t = io(ac.signal);
    const done = main(["logs", "-f", "--tail", "1", "w1"], t.io);
    const until = async (f: () => boolean) => {
      for (let i = 0; i < 100 && !f(); i++) await new Promise((r) => setTimeout(r, 50));
    };
    await until(() => t.out() === "two\n");
    expect(t.out()).toBe("two\n");
    appendFileSync(join(home, "sandboxes", "w1", "exec.log"), line(T0 + 10, "stdout", "three\n", 3));
    await until(() => t.out().includes("three"));
    expect(t.out()).toBe("two\nthree\n");
    ac.abort("SIGINT");
    expect(await done).toBe(130);
  });
});
