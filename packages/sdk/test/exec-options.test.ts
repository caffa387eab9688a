import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  ExecHandle,
  ExecTimeoutError,
  InvalidConfigError,
  Sandbox,
  StdinUnavailableError,
  type ExecEvent,
} from "../src/index.js";
import { ExecOptionsBuilder, RLIM_INFINITY, resolveExecOptions } from "../src/exec-options.js";
import { setNativeBinding } from "../src/native.js";
import { catSession, fakeNative, run, sleeperSession, type FakeClient, type FakeNative } from "./fake-native.js";

let fake: FakeNative;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative((req) => {
    if (req.cmd === "cat") return catSession();
    if (req.cmd === "sleep") return sleeperSession();
    if (req.cmd === "stuck") return sleeperSession({ ignore: [9, 15] });
    return run(`${[req.cmd, ...req.args].join(" ")}\n`);
  });
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-unit-home";
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

const client = (): FakeClient => fake.clients[0]!;
const opts = (f: (b: ExecOptionsBuilder) => unknown, cmd: unknown = "cmd") => {
  const b = new ExecOptionsBuilder();
  f(b);
  return resolveExecOptions(cmd, b);
};

function invalid(f: () => unknown): InvalidConfigError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidConfigError);
    return e as InvalidConfigError;
  }
  throw new Error("expected InvalidConfigError");
}

describe("exec options", () => {
  it("maps every option to the request the addon takes", () => {
    const o = opts((b) =>
      b
        .arg("a")
        .args(["b", "c"])
        .cwd("/work")
        .user("nobody:nogroup")
        .env("A", "1")
        .envs({ B: "2", A: "3" })
        .timeout(1500)
        .stdinBytes("hi")
        .tty(true, { rows: 40, cols: 100 })
        .rlimit("nofile", 256)
        .rlimit("nproc", 10)
        .rlimit("nofile", 512),
    );
    expect(o.request).toEqual({
      cmd: "cmd",
      args: ["a", "b", "c"],
      env: [
        ["A", "3"],
        ["B", "2"],
      ],
      cwd: "/work",
      user: "nobody:nogroup",
      stdin: true,
      tty: { rows: 40, cols: 100 },
      rlimits: [
        ["nofile", 512n],
        ["nproc", 10n],
      ],
    });
    expect(o.timeoutMs).toBe(1500);
    expect(o.stdin).toBe("bytes");
    expect(new TextDecoder().decode(o.stdinBytes!)).toBe("hi");
  });

  it("defaults: no args, stdin /dev/null, no tty, no limits; tty(true) is 24x80", () => {
    expect(opts(() => undefined).request).toEqual({ cmd: "cmd", args: [], env: [], cwd: null, user: null, stdin: false, tty: null, rlimits: [] });
    expect(opts((b) => b.tty()).request.tty).toEqual({ rows: 24, cols: 80 });
    expect(opts((b) => b.stdinPipe()).request.stdin).toBe(true);
    expect(opts((b) => b.stdinBytes("x").stdinNull()).request.stdin).toBe(false);
    expect(opts((b) => b.user("1000:1000")).request.user).toBe("1000:1000");
  });

  const bad: [string, (b: ExecOptionsBuilder) => unknown, unknown?][] = [
    ["cmd", () => undefined, ""],
    ["args", (b) => b.arg(7 as unknown as string)],
    ["args", (b) => b.args(["ok", "nul\0"])],
    ["cwd", (b) => b.cwd("relative")],
    ["user", (b) => b.user("a b")],
    ["user", (b) => b.user("")],
    ["env", (b) => b.env("A=B", "1")],
    ["env", (b) => b.env("", "1")],
    ["env", (b) => b.envs({ K: 1 as unknown as string })],
    ["timeout", (b) => b.timeout(0)],
    ["timeout", (b) => b.timeout(1.5)],
    ["stdin", (b) => b.stdinBytes(42 as unknown as string)],
    ["tty", (b) => b.tty("yes" as unknown as boolean)],
    ["tty", (b) => b.tty(true, { rows: 0, cols: 80 })],
    ["rlimit", (b) => b.rlimit("files" as "nofile", 1)],
    ["rlimit", (b) => b.rlimit("nofile", -1)],
    ["rlimit", (b) => b.rlimit("nofile", "infinite" as "unlimited")],
  ];
  for (const [field, f, cmd] of bad) {
    it(`rejects a bad ${field} naming it`, () => {
      const e = invalid(() => opts(f, cmd ?? "cmd"));
      expect(e.field).toBe(field);
      expect(e.message).toContain(field);
    });
  }
});

describe("execWith / execStreamWith", () => {
  it("sends the options and collects the output", async () => {
    const sb = await Sandbox.builder("w1").create();
    const out = await sb.execWith("echo", (b) => b.args(["x", "y"]).cwd("/tmp").env("K", "V").user("nobody"));
    expect(out.stdout()).toBe("echo x y\n");
    expect(client().requests[0]).toMatchObject({ cmd: "echo", args: ["x", "y"], cwd: "/tmp", env: [["K", "V"]], user: "nobody", stdin: false });
    // the callback may return nothing
    await sb.execWith("echo", (b) => {
      b.arg("z");
    });
    expect(client().requests[1]!.args).toEqual(["z"]);
    await expect(sb.execWith("echo", (b) => b.cwd("rel"))).rejects.toMatchObject({ code: "invalidConfig", field: "cwd" });
    await sb.stop();
  });

  it("stdinBytes feeds the bytes then EOF", async () => {
    const sb = await Sandbox.builder("w1").create();
    const out = await sb.execWith("cat", (b) => b.stdinBytes(new TextEncoder().encode("hello\n")));
    expect(out.stdout()).toBe("hello\n");
    expect(out.code).toBe(0);
    expect(client().stdinLog.map(([, d]) => d)).toEqual(["hello\n", "<EOF>"]);
    await sb.stop();
  });

  it("stdinPipe: takeStdin once, writes stream in order, close is EOF", async () => {
    const sb = await Sandbox.builder("w1").create();
    const h = await sb.execStreamWith("cat", (b) => b.stdinPipe());
    const stdin = h.takeStdin()!;
    expect(h.takeStdin()).toBeNull(); // the reference SDK's shape: taken once, then null
    expect(await h.recv()).toEqual({ kind: "started", pid: 77 });
    void stdin.write("a");
    void stdin.write(new TextEncoder().encode("b"));
    await stdin.write("c");
    const got: string[] = [];
    for (let i = 0; i < 3; i++) {
      const ev = (await h.recv()) as ExecEvent & { data: Uint8Array };
      got.push(new TextDecoder().decode(ev.data));
    }
    expect(got).toEqual(["a", "b", "c"]);
    await stdin.close();
    await stdin.close(); // idempotent
    await expect(stdin.write("late")).rejects.toBeInstanceOf(StdinUnavailableError);
    expect(await h.wait()).toEqual({ code: 0, success: true });
    await sb.stop();
  });

  it("takeStdin is null without stdinPipe() or tty(true); writing after the command exited is StdinUnavailableError", async () => {
    const sb = await Sandbox.builder("w1").create();
    const plain = await sb.execStream("echo", ["x"]);
    expect(plain.takeStdin()).toBeNull();
    await plain.wait();
    const bytes = await sb.execStreamWith("cat", (b) => b.stdinBytes("x"));
    expect(bytes.takeStdin()).toBeNull();
    await bytes.wait();

    const h = await sb.execStreamWith("cat", (b) => b.stdinPipe());
    const stdin = h.takeStdin()!;
    await h.kill();
    expect(await h.wait()).toEqual({ code: 137, success: false });
    await expect(stdin.write("x")).rejects.toBeInstanceOf(StdinUnavailableError);
    await sb.stop();
  });

  it("tty: stdin can be taken, resize reaches the session; resize without tty is an error", async () => {
    const sb = await Sandbox.builder("w1").create();
    const h = await sb.execStreamWith("cat", (b) => b.tty(true));
    expect(client().requests[0]!.tty).toEqual({ rows: 24, cols: 80 });
    const stdin = h.takeStdin()!;
    await h.resize(50, 132);
    expect(client().resizes.map(([, r, c]) => [r, c])).toEqual([[50, 132]]);
    await expect(h.resize(0, 10)).rejects.toMatchObject({ field: "rows" });
    await stdin.close();
    await h.wait();
    const plain = await sb.execStream("echo");
    await expect(plain.resize(10, 10)).rejects.toMatchObject({ code: "invalidConfig", field: "tty" });
    await sb.stop();
  });

  it("signal(n) reaches the process group; kill() is 9; bad numbers are rejected", async () => {
    const sb = await Sandbox.builder("w1").create();
    const h = await sb.execStream("sleep", ["100"]);
    await expect(h.signal(0)).rejects.toMatchObject({ field: "signal" });
    await expect(h.signal(65)).rejects.toMatchObject({ field: "signal" });
    await h.signal(15);
    const evs: ExecEvent[] = [];
    for await (const ev of h) evs.push(ev);
    expect(evs.at(-1)).toEqual({ kind: "exited", code: 143, signal: 15 });
    expect(client().signals.map(([, n]) => n)).toEqual([15]);
    await h.signal(9); // after the end: nothing sent
    expect(client().signals).toHaveLength(1);
    const k = await sb.execStream("sleep", ["100"]);
    await k.kill();
    expect(await k.wait()).toEqual({ code: 137, success: false });
    await sb.stop();
  });

  it("a timeout kills the command (SIGKILL) and rejects with ExecTimeoutError", async () => {
    const sb = await Sandbox.builder("w1").create();
    const e = await sb.execWith("sleep", (b) => b.args(["100"]).timeout(50)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ExecTimeoutError);
    expect((e as ExecTimeoutError).code).toBe("execTimeout");
    expect((e as ExecTimeoutError).timeoutMs).toBe(50);
    expect(client().signals.map(([, n]) => n)).toEqual([9]);
    // a command that ends in time is not touched
    const ok = await sb.execWith("echo", (b) => b.arg("fast").timeout(1000));
    expect(ok.stdout()).toBe("echo fast\n");
    await new Promise((r) => setTimeout(r, 30));
    expect(client().signals).toHaveLength(1);
    // streaming: events first, then the timeout error
    const h = await sb.execStreamWith("sleep", (b) => b.timeout(30));
    expect(await h.recv()).toEqual({ kind: "started", pid: 78 });
    await expect(h.recv()).rejects.toBeInstanceOf(ExecTimeoutError);
    await expect(h.wait()).rejects.toBeInstanceOf(ExecTimeoutError);
    await sb.stop();
  });

  it("a command that survives the kill (a guest too busy to answer) times out at the deadline", async () => {
    // Before: the call waited for the killed command's exit, up to a 5 s grace period.
    const c = catSession();
    const signals: number[] = [];
    const h = new ExecHandle(() => c.next(), {
      controls: {
        writeStdin: async () => undefined,
        closeStdin: async () => undefined,
        signal: async (n) => void signals.push(n),
        resize: async () => undefined,
        closed: false,
      },
      timeoutMs: 50,
      killGraceMs: 10_000,
    });
    const t0 = Date.now();
    const e = await h.wait().catch((x: unknown) => x);
    const took = Date.now() - t0;
    expect(e).toBeInstanceOf(ExecTimeoutError);
    expect(took).toBeGreaterThanOrEqual(45);
    expect(took).toBeLessThan(1000);
    expect(signals).toEqual([9]);
    await expect(h.recv()).rejects.toBeInstanceOf(ExecTimeoutError);
  });

  it("the timeout does not wait for a kill the runtime never acknowledges", async () => {
    const c = sleeperSession({ ignore: [9] });
    const h = new ExecHandle(() => c.next(), {
      controls: {
        writeStdin: async () => undefined,
        closeStdin: async () => undefined,
        signal: () => new Promise<void>(() => undefined),
        resize: async () => undefined,
        closed: false,
      },
      timeoutMs: 30,
    });
    const t0 = Date.now();
    await expect(h.collect()).rejects.toBeInstanceOf(ExecTimeoutError);
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it("a timeout with no read pending rejects the next read at once; the session is drained after it", async () => {
    const sb = await Sandbox.builder("w1").create();
    const h = await sb.execStreamWith("sleep", (b) => b.timeout(20));
    await new Promise((r) => setTimeout(r, 60));
    expect(client().signals.map(([, n]) => n)).toEqual([9]);
    const t0 = Date.now();
    await expect(h.recv()).rejects.toBeInstanceOf(ExecTimeoutError);
    expect(Date.now() - t0).toBeLessThan(500);
    // the killed command's remaining events (started, exited 137) were pulled: the session is gone
    for (let i = 0; i < 100 && client().sessions.size > 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(client().sessions.size).toBe(0);
    await sb.stop();
  });

  it("shell and shellStream use the configured shell", async () => {
    const sb = await Sandbox.builder("w1").shell("/bin/bash").create();
    expect(sb.config().shell).toBe("/bin/bash");
    expect((await sb.shell("echo hi")).stdout()).toBe("/bin/bash -c echo hi\n");
    const h = await sb.shellStream("exit 0");
    await h.wait();
    expect(client().requests.map((r) => [r.cmd, ...r.args])).toEqual([
      ["/bin/bash", "-c", "echo hi"],
      ["/bin/bash", "-c", "exit 0"],
    ]);
    await sb.stop();
    const d = await Sandbox.builder("w2").create();
    await d.shell("true");
    expect(fake.clients[1]!.requests[0]!.cmd).toBe("/bin/sh");
    await d.stop();
  });

  it("runs 20 commands at once on one sandbox, each with its own output", async () => {
    const sb = await Sandbox.builder("w1").create();
    const outs = await Promise.all(Array.from({ length: 20 }, (_, i) => sb.exec("echo", [String(i)])));
    expect(outs.map((o) => o.stdout())).toEqual(Array.from({ length: 20 }, (_, i) => `echo ${i}\n`));
    await sb.stop();
  });
});

describe("execWith and stdinPipe", () => {
  it("execWith refuses stdinPipe() (nothing could write to it)", async () => {
    const sb = await Sandbox.builder("w1").create();
    await expect(sb.execWith("cat", (b) => b.stdinPipe())).rejects.toMatchObject({ code: "invalidConfig", field: "stdin" });
    expect(client().requests).toEqual([]);
    await sb.stop();
  });
});

describe("the exec request's rlimits", () => {
  it('carry "unlimited" as the exact 64-bit RLIM_INFINITY and numbers exactly, as bigints', () => {
    const { request } = opts((b) => b.args(['"rlimits":[]', "x"]).rlimit("core", "unlimited").rlimit("nofile", 64), "sh");
    expect(RLIM_INFINITY).toBe(18446744073709551615n);
    expect(request.rlimits).toEqual([
      ["core", 18446744073709551615n],
      ["nofile", 64n],
    ]);
    // the user's look-alike argument is an argument like any other
    expect(request.args).toEqual(['"rlimits":[]', "x"]);
  });
});
