// Buffered calls (exec, shell, execWith, shellWith, collect()) stop at maxOutputBytes:
// the command is killed, the call rejects with OutputLimitError, the session is drained.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DEFAULT_MAX_OUTPUT_BYTES, ExecHandle, InvalidConfigError, OutputLimitError, Sandbox } from "../src/index.js";
import { ExecOptionsBuilder, resolveExecOptions } from "../src/exec-options.js";
import { setNativeBinding } from "../src/native.js";
import type { NativeExecEvent } from "../src/native.js";
import { EventQueue, fakeNative, run, type FakeClient, type FakeNative, type LiveSession } from "./fake-native.js";

/**
 * `cat /dev/zero`: an endless stream of `chunk` on stdout (and on stderr with `alsoStderr`)
 * until a signal ends it (exit 128+n). `pulled` counts the chunks taken before the
 * signal, `drained` those after it.
 */
function zeroSession(chunk: Uint8Array, stats: { pulled: number; drained: number }, alsoStderr = false): LiveSession {
  let signalled: number | undefined;
  let started = false;
  let exitedSent = false;
  let n = 0;
  return {
    async next(): Promise<NativeExecEvent | null> {
      if (!started) {
        started = true;
        return { kind: "started", pid: 99 };
      }
      if (signalled !== undefined) {
        // what the pipe still held, then the exit
        if (n++ % 4 !== 3) {
          stats.drained++;
          return { kind: "stdout", data: Buffer.from(chunk) };
        }
        if (exitedSent) return null;
        exitedSent = true;
        return { kind: "exited", code: 128 + signalled, signal: signalled };
      }
      stats.pulled++;
      return { kind: alsoStderr && stats.pulled % 2 === 0 ? "stderr" : "stdout", data: Buffer.from(chunk) };
    },
    signal(s) {
      signalled ??= s;
      n = 0;
    },
  };
}

let fake: FakeNative;
const stats = { pulled: 0, drained: 0 };
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  stats.pulled = 0;
  stats.drained = 0;
  fake = fakeNative((req) => {
    if (req.cmd === "zero") return zeroSession(Buffer.alloc(Number(req.args[0] ?? 65536)), stats);
    if (req.cmd === "zero2") return zeroSession(Buffer.alloc(Number(req.args[0] ?? 65536)), stats, true);
    if (req.cmd === "print") return run("x".repeat(Number(req.args[0])), "y".repeat(Number(req.args[1] ?? 0)));
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

async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error("condition not reached");
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe("maxOutputBytes", () => {
  it("execWith: past the limit the command is killed (9) and the call rejects with OutputLimitError", async () => {
    const sb = await Sandbox.builder("w1").create();
    const e = await sb.execWith("zero", (b) => b.arg("1000").maxOutputBytes(10_000)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OutputLimitError);
    expect(e).toMatchObject({ code: "outputLimit", limit: 10_000, field: "maxOutputBytes" });
    expect((e as Error).message).toContain("10000 bytes");
    expect((e as Error).message).toContain("maxOutputBytes");
    // rejected at the 11th chunk: nothing more was read before the kill
    expect(stats.pulled).toBe(11);
    expect(client().signals.map(([, n]) => n)).toEqual([9]);
    // the rest of the session is drained in the background: it ends (the fake forgets it at its exit)
    await until(() => client().sessions.size === 0);
    expect(stats.drained).toBe(3);
    // and the sandbox is still usable
    expect((await sb.exec("echo", ["after"])).stdout()).toBe("echo after\n");
    await sb.stop();
  });

  it("exactly the limit passes; one byte more fails; stdout and stderr count together", async () => {
    const sb = await Sandbox.builder("w1").create();
    const ok = await sb.execWith("print", (b) => b.args(["60", "40"]).maxOutputBytes(100));
    expect(ok.stdout()).toBe("x".repeat(60));
    expect(ok.stderr()).toBe("y".repeat(40));
    await expect(sb.execWith("print", (b) => b.args(["60", "41"]).maxOutputBytes(100))).rejects.toBeInstanceOf(OutputLimitError);
    await expect(sb.execWith("print", (b) => b.args(["101"]).maxOutputBytes(100))).rejects.toBeInstanceOf(OutputLimitError);
    // stderr alone, and a limit of 0 means no output at all
    await expect(sb.execWith("print", (b) => b.args(["0", "1"]).maxOutputBytes(0))).rejects.toMatchObject({ limit: 0 });
    expect((await sb.execWith("print", (b) => b.args(["0"]).maxOutputBytes(0))).code).toBe(0);
    // a stream of both, interleaved
    const e = await sb.execWith("zero2", (b) => b.arg("100").maxOutputBytes(1000)).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: "outputLimit", limit: 1000 });
    expect(stats.pulled).toBe(11);
    await sb.stop();
  });

  it(`the default (${DEFAULT_MAX_OUTPUT_BYTES} bytes) applies to exec, shell and execWith`, async () => {
    const sb = await Sandbox.builder("w1").create();
    const mib = String(1 << 20);
    const a = await sb.exec("zero", [mib]).catch((x: unknown) => x);
    expect(a).toBeInstanceOf(OutputLimitError);
    expect((a as OutputLimitError).limit).toBe(64 * 1024 * 1024);
    expect(stats.pulled).toBe(65);
    stats.pulled = 0;
    const b = await sb.execWith("zero", (o) => o.arg(mib)).catch((x: unknown) => x);
    expect(b).toMatchObject({ code: "outputLimit", limit: DEFAULT_MAX_OUTPUT_BYTES });
    expect(stats.pulled).toBe(65);
    await until(() => client().sessions.size === 0);
    await sb.stop();
  });

  it("shellWith runs the sandbox's shell with the options; shell() is bounded by the default", async () => {
    const sb = await Sandbox.builder("w1").shell("/bin/bash").create();
    const out = await sb.shellWith("echo $0 $1", (b) => b.args(["a", "b"]).cwd("/tmp").maxOutputBytes(1000));
    expect(out.stdout()).toBe("/bin/bash -c echo $0 $1 a b\n");
    expect(client().requests[0]).toMatchObject({ cmd: "/bin/bash", args: ["-c", "echo $0 $1", "a", "b"], cwd: "/tmp" });
    await expect(sb.shellWith("x", (b) => b.maxOutputBytes(5))).rejects.toMatchObject({ code: "outputLimit", limit: 5 });
    await expect(sb.shellWith("", (b) => b)).rejects.toMatchObject({ code: "invalidConfig", field: "script" });
    const h = await sb.shellStreamWith("echo hi", (b) => b.env("K", "V"));
    expect((await h.collect()).stdout()).toBe("/bin/bash -c echo hi\n");
    expect(client().requests.at(-1)).toMatchObject({ args: ["-c", "echo hi"], env: [["K", "V"]] });
    await sb.stop();
  });

  it("collect() on a stream handle is bounded; iterating one is not", async () => {
    const sb = await Sandbox.builder("w1").create();
    const h = await sb.execStreamWith("zero", (b) => b.arg("100").maxOutputBytes(250));
    await expect(h.collect()).rejects.toBeInstanceOf(OutputLimitError);
    // later calls see the same failure
    await expect(h.recv()).rejects.toBeInstanceOf(OutputLimitError);
    expect(client().signals.map(([, n]) => n)).toEqual([9]);

    stats.pulled = 0;
    const s = await sb.execStreamWith("zero", (b) => b.arg("100").maxOutputBytes(250));
    let bytes = 0;
    for await (const ev of s) {
      if (ev.kind === "stdout") bytes += ev.data.byteLength;
      if (bytes >= 10_000) break;
    }
    expect(bytes).toBe(10_000);
    expect(client().signals.map(([, n]) => n)).toEqual([9]);
    await sb.stop();
  });

  it("a handle built without session controls still stops at the limit", async () => {
    const q = new EventQueue();
    q.push({ kind: "started", pid: 1 });
    for (let i = 0; i < 5; i++) q.push({ kind: "stdout", data: Buffer.alloc(10) });
    q.push({ kind: "exited", code: 0, signal: null });
    const h = new ExecHandle(() => q.next(), { maxOutputBytes: 35 });
    await expect(h.collect()).rejects.toMatchObject({ code: "outputLimit", limit: 35 });
  });

  const bad: unknown[] = [-1, 1.5, "10", Number.NaN, Number.POSITIVE_INFINITY];
  for (const v of bad) {
    it(`rejects maxOutputBytes(${String(v)}) naming the field`, () => {
      const b = new ExecOptionsBuilder().maxOutputBytes(v as number);
      let err: unknown;
      try {
        resolveExecOptions("cmd", b);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InvalidConfigError);
      expect(err).toMatchObject({ field: "maxOutputBytes" });
    });
  }

  it("resolves to the default when not set", () => {
    expect(resolveExecOptions("cmd", new ExecOptionsBuilder()).maxOutputBytes).toBe(DEFAULT_MAX_OUTPUT_BYTES);
    expect(resolveExecOptions("cmd", new ExecOptionsBuilder().maxOutputBytes(7)).maxOutputBytes).toBe(7);
  });
});
