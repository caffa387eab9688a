// msb exec (stdin, -t, signals, options), msb cp and msb run's guest options, through the
// real SDK on the fake native addon (with its in-memory guest filesystem).
import { lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { setNativeBinding } from "../../sdk/src/native.js";
import { catSession, fakeNative, run, sleeperSession, type FakeNative } from "../../sdk/test/fake-native.js";
import { main, type MainIO } from "../src/main.js";
import { fakeTerminal } from "./fake-terminal.js";
import type { TerminalIO } from "../src/attach.js";

const dec = new TextDecoder();
let fake: FakeNative;
let host: string;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative((req) => {
    if (req.cmd === "cat") return catSession();
    if (req.cmd === "sleep") return sleeperSession();
    return run(`${[req.cmd, ...req.args].join(" ")}\n`);
  });
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-cli-unit";
  host = mkdtempSync(join(tmpdir(), "msb-cli-guest-"));
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
  rmSync(host, { recursive: true, force: true });
});

async function msb(argv: string[], opts: { terminal?: TerminalIO; signal?: AbortSignal } = {}) {
  let out = "";
  let err = "";
  const io: MainIO = {
    out: (s) => void (out += s),
    err: (s) => void (err += s),
    writeOut: async (d) => void (out += dec.decode(d)),
    writeErr: async (d) => void (err += typeof d === "string" ? d : dec.decode(d)),
    isTTY: false,
  };
  if (opts.terminal) io.terminal = opts.terminal;
  if (opts.signal) io.signal = opts.signal;
  const code = await main(argv, io);
  return { code, out, err };
}

const lastClient = () => fake.clients.at(-1)!;

describe("msb exec", () => {
  it("pipes stdin when it is not a terminal (echo hi | msb exec w -- cat)", async () => {
    await msb(["create", "--name", "w"]);
    const t = fakeTerminal({ stdinIsTTY: false, input: ["hi\n"] });
    const r = await msb(["exec", "w", "--", "cat"], { terminal: t.term });
    expect(r).toEqual({ code: 0, out: "hi\n", err: "" });
    expect(lastClient().requests[0]).toMatchObject({ cmd: "cat", stdin: true, tty: null });
    expect(lastClient().stdinLog.map(([, d]) => d)).toEqual(["hi\n", "<EOF>"]);
    expect(t.log).toEqual([]);
  });

  it("does not read a terminal stdin without -i or -t", async () => {
    await msb(["create", "--name", "w"]);
    const t = fakeTerminal({ stdinIsTTY: true, input: ["never read"] });
    const r = await msb(["exec", "w", "--", "echo", "x"], { terminal: t.term });
    expect(r).toEqual({ code: 0, out: "echo x\n", err: "" });
    expect(lastClient().requests[0]).toMatchObject({ stdin: false, tty: null });
  });

  it("passes -e, -w, -u and --timeout; a timeout exits 124", async () => {
    await msb(["create", "--name", "w"]);
    const r = await msb(["exec", "-e", "A=1", "-w", "/tmp", "-u", "1000:1000", "w", "--", "echo"]);
    expect(r.code).toBe(0);
    expect(lastClient().requests[0]).toMatchObject({ env: [["A", "1"]], cwd: "/tmp", user: "1000:1000" });
    const t = await msb(["exec", "--timeout", "20", "w", "--", "sleep", "100"]);
    expect(t.code).toBe(124);
    expect(t.err).toContain("20 ms");
    expect(lastClient().signals.map(([, n]) => n)).toEqual([9]);
    const bad = await msb(["exec", "-w", "rel", "w", "--", "echo"]);
    expect(bad.code).toBe(2);
    expect(bad.err).toContain("cwd");
  });

  it("-t on a terminal: a pty of the terminal's size, raw mode, resizes, keystrokes", async () => {
    await msb(["create", "--name", "w"]);
    const t = fakeTerminal({ stdinIsTTY: true, input: ["ls\r"], endless: true, size: { rows: 33, cols: 101 } });
    const running = msb(["exec", "-t", "w", "--", "cat"], { terminal: t.term });
    await new Promise((r) => setTimeout(r, 20));
    t.resizeTo(50, 132);
    await new Promise((r) => setTimeout(r, 20));
    const c = lastClient();
    expect(c.requests[0]).toMatchObject({ cmd: "cat", tty: { rows: 33, cols: 101 } });
    expect(c.resizes.map(([, r, k]) => [r, k])).toEqual([[50, 132]]);
    // the command ends (here: by a signal from elsewhere)
    const [[id]] = c.stdinLog as [[number, string]];
    await c.signal(id, 1);
    const r = await running;
    expect(r.code).toBe(129);
    expect(r.out).toBe("ls\r");
    expect(t.log).toEqual(["raw true", "watch resize", "unwatch resize", "raw false"]);
  });

  it("Ctrl-C (SIGINT to msb) is sent to the command, which decides the exit code", async () => {
    await msb(["create", "--name", "w"]);
    const ac = new AbortController();
    const running = msb(["exec", "w", "--", "sleep", "100"], { signal: ac.signal });
    await new Promise((r) => setTimeout(r, 20));
    ac.abort("SIGINT");
    const r = await running;
    expect(r.code).toBe(130);
    expect(lastClient().signals.map(([, n]) => n)).toEqual([2]);
  });
});

describe("msb cp", () => {
  it("copies a host tree into a sandbox and back, into existing directories", async () => {
    await msb(["create", "--name", "w"]);
    const src = join(host, "proj");
    mkdirSync(join(src, "sub"), { recursive: true });
    writeFileSync(join(src, "a.txt"), "A");
    writeFileSync(join(src, "sub", "b.txt"), "B");
    symlinkSync("a.txt", join(src, "l"));
    // /tmp exists in the guest: the tree goes inside it
    expect(await msb(["cp", src, "w:/tmp"])).toEqual({ code: 0, out: "", err: "" });
    const g = fake.fsOf("w");
    expect(g.text("/tmp/proj/sub/b.txt")).toBe("B");
    expect(g.readlink("/tmp/proj/l")).toBe("a.txt");
    // a destination that does not exist is the new name
    expect((await msb(["cp", join(src, "a.txt"), "w:/renamed.txt"])).code).toBe(0);
    expect(g.text("/renamed.txt")).toBe("A");

    const back = join(host, "back");
    mkdirSync(back);
    expect((await msb(["cp", "w:/tmp/proj", back])).code).toBe(0);
    expect(readFileSync(join(back, "proj", "sub", "b.txt"), "utf8")).toBe("B");
    expect(lstatSync(join(back, "proj", "l")).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(back, "proj", "l"))).toBe("a.txt");
    expect((await msb(["cp", "w:/renamed.txt", join(host, "file.txt")])).code).toBe(0);
    expect(readFileSync(join(host, "file.txt"), "utf8")).toBe("A");
  });

  it("errors: a missing guest path exits 1 naming it; an unknown sandbox exits 1", async () => {
    await msb(["create", "--name", "w"]);
    const r = await msb(["cp", "w:/nope", join(host, "x")]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^msb: .*\/nope.*ENOENT/);
    const u = await msb(["cp", "ghost:/a", join(host, "x")]);
    expect(u.code).toBe(1);
    expect(u.err).toContain("ghost");
  });
});

describe("msb run guest options", () => {
  it("-v, --tmpfs and --script reach the sandbox", async () => {
    const data = join(host, "data");
    mkdirSync(data);
    const script = join(host, "greet.sh");
    writeFileSync(script, "#!/bin/sh\necho hi\n");
    const r = await msb(["run", "--name", "r1", "-v", `${data}:/data:ro`, "-v", "cache:/cache", "--tmpfs", "/t:size=8", "--script", `greet=${script}`, "--", "greet"]);
    expect(r).toEqual({ code: 0, out: "greet\n", err: "" });
    expect(fake.configs[0]!.mounts).toEqual([
      { guestPath: "/data", kind: "bind", source: data, readonly: true, sizeMiB: null },
      { guestPath: "/cache", kind: "named", source: "cache", readonly: false, sizeMiB: null },
      { guestPath: "/t", kind: "tmpfs", source: null, readonly: false, sizeMiB: 8 },
    ]);
    expect(fake.clients[0]!.fsOps).toContainEqual({ write: { path: "/.msb/scripts/greet", mode: 0o755, append: false } });
  });

  it("a missing bind source or script file exits 2 naming it, before anything boots", async () => {
    const missing = join(host, "missing");
    const v = await msb(["run", "-v", `${missing}:/x`, "--", "true"]);
    expect(v.code).toBe(2);
    expect(v.err).toContain(missing);
    const s = await msb(["run", "--script", `x=${missing}`, "--", "true"]);
    expect(s.code).toBe(2);
    expect(s.err).toContain(missing);
    expect(fake.configs).toEqual([]);
  });

  it("piped stdin reaches msb run's command too", async () => {
    const t = fakeTerminal({ stdinIsTTY: false, input: ["abc"] });
    const r = await msb(["run", "--", "cat"], { terminal: t.term });
    expect(r).toEqual({ code: 0, out: "abc", err: "" });
  });
});
