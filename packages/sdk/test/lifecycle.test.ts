// Sandbox lifecycle against the fake native: handles, persisted config, modes,
// stop/wait/drain, replace, restart.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  CorruptConfigError,
  InvalidConfigError,
  ProtocolError,
  RuntimeError,
  Sandbox,
  SandboxAlreadyExistsError,
  SandboxDrainingError,
  SandboxHandle,
  SandboxNotFoundError,
  SandboxNotRunningError,
  SandboxStillRunningError,
} from "../src/index.js";
import { setNativeBinding } from "../src/native.js";
import { FAKE_PID, fakeNative, run, type FakeNative } from "./fake-native.js";

let fake: FakeNative;
const savedHome = process.env.MSB_HOME;
const HOME = "/tmp/msb-unit-home";

beforeEach(() => {
  fake = fakeNative((req) => run(`${[req.cmd, ...req.args].join(" ")}\n`));
  setNativeBinding(fake);
  process.env.MSB_HOME = HOME;
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error("expected a rejection");
    },
    (e: unknown) => e,
  );
}

/** A stored configuration as the SDK writes it. */
function storedConfig(name: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({
    name,
    image: null,
    imageKind: null,
    cpus: 2,
    memoryMib: 256,
    env: [["K", "V"]],
    workdir: "/w",
    hostname: null,
    entrypoint: null,
    user: null,
    pullPolicy: "if-missing",
    registryAuth: null,
    insecureRegistry: false,
    registryCa: null,
    idleTimeoutSecs: null,
    maxDurationSecs: null,
    ...extra,
  });
}

describe("Sandbox.get and Sandbox.list", () => {
  it("return handles with the record's fields, dates as Date", async () => {
    fake.addRecord({ name: "a", status: "running", createdAt: 1_000, updatedAt: 2_000, configJson: storedConfig("a") });
    fake.addRecord({ name: "b", status: "stopped", exitCode: 0, exitReason: "stopped", configJson: storedConfig("b") });
    const a = await Sandbox.get("a");
    expect(a).toBeInstanceOf(SandboxHandle);
    expect(a.name).toBe("a");
    expect(a.status).toBe("running");
    expect(a.createdAt).toEqual(new Date(1_000));
    expect(a.updatedAt).toEqual(new Date(2_000));
    expect(a.runtimePid).toBe(FAKE_PID);
    expect(a.exitCode).toBeNull();
    expect(a.configJson).toBe(storedConfig("a"));
    const b = await Sandbox.get("b");
    expect(b.status).toBe("stopped");
    expect(b.exitCode).toBe(0);
    expect(b.exitReason).toBe("stopped");
    expect(b.runtimePid).toBeNull();
    const all = await Sandbox.list();
    expect(all.map((h) => [h.name, h.status])).toEqual([
      ["a", "running"],
      ["b", "stopped"],
    ]);
  });

  it("keep every status as is", async () => {
    for (const status of ["running", "stopped", "crashed", "draining"] as const) {
      fake.addRecord({ name: `s-${status}`, status });
      expect((await Sandbox.get(`s-${status}`)).status).toBe(status);
    }
    expect((await Sandbox.list()).map((h) => h.status).sort()).toEqual(["crashed", "draining", "running", "stopped"]);
  });

  it("an unknown status from the runtime is a ProtocolError, not a guess", async () => {
    fake.addRecord({ name: "odd", status: "hibernating" as never });
    await expect(Sandbox.get("odd")).rejects.toBeInstanceOf(ProtocolError);
  });

  it("unknown names -> SandboxNotFoundError; bad names -> InvalidConfigError", async () => {
    const e = await rejection(Sandbox.get("nope"));
    expect(e).toBeInstanceOf(SandboxNotFoundError);
    expect((e as SandboxNotFoundError).code).toBe("sandboxNotFound");
    const bad = await rejection(Sandbox.get("a/b"));
    expect(bad).toBeInstanceOf(InvalidConfigError);
    expect((bad as InvalidConfigError).field).toBe("name");
    expect(await Sandbox.list()).toEqual([]);
  });

  it("the status is a snapshot until refresh()", async () => {
    const sb = await Sandbox.builder("snap").create();
    const h = await Sandbox.get("snap");
    expect(h.status).toBe("running");
    await sb.stop();
    expect(h.status).toBe("running");
    expect(await h.refresh()).toBe(h);
    expect(h.status).toBe("stopped");
    expect(h.exitCode).toBe(0);
  });
});

describe("stored configuration", () => {
  it("is the sandbox's configuration without the registry password", async () => {
    const sb = await Sandbox.builder("cfg")
      .cpus(2)
      .memory(256)
      .env("A", "1")
      .workdir("/srv")
      .idleTimeout(30)
      .maxDuration(600)
      .registryAuth({ kind: "basic", username: "me", password: "s3cret" })
      .create();
    const sent = fake.configs[0]!;
    expect(JSON.stringify(sent.sdkConfig)).not.toContain("s3cret");
    expect((sent.sdkConfig as { registryAuth: unknown }).registryAuth).toEqual({ kind: "basic", username: "me" });
    expect(sent.idleTimeoutSecs).toBe(30);
    expect(sent.maxDurationSecs).toBe(600);
    // the live sandbox keeps the password; the stored copy never has one
    expect(sb.config().registryAuth?.password).toBe("s3cret");
    const h = await Sandbox.get("cfg");
    expect(h.configJson).not.toContain("s3cret");
    const { registryAuth, ...rest } = h.config();
    const { registryAuth: liveAuth, ...liveRest } = sb.config();
    expect(rest).toEqual(liveRest);
    expect(registryAuth).toEqual({ kind: "basic", username: "me" });
    expect(liveAuth?.username).toBe("me");
    expect(h.config().idleTimeoutSecs).toBe(30);
    expect(h.config().maxDurationSecs).toBe(600);
  });

  it("a corrupt config fails config() of that sandbox only; list, get and remove keep working", async () => {
    fake.addRecord({ name: "good", configJson: storedConfig("good") });
    fake.addRecord({ name: "garbage", configJson: "{not json" });
    fake.addRecord({ name: "wrongtype", configJson: storedConfig("wrongtype", { cpus: "many" }) });
    fake.addRecord({ name: "empty", configJson: "" });
    fake.addRecord({ name: "other", configJson: storedConfig("someone-else") });
    fake.addRecord({ name: "notobject", configJson: "42" });

    const all = await Sandbox.list();
    expect(all.map((h) => h.name)).toEqual(["good", "garbage", "wrongtype", "empty", "other", "notobject"]);
    for (const h of all) {
      if (h.name === "good") {
        expect(h.config().cpus).toBe(2);
        expect(h.config().env).toEqual([["K", "V"]]);
        continue;
      }
      let err: unknown;
      try {
        h.config();
      } catch (e) {
        err = e;
      }
      expect(err, h.name).toBeInstanceOf(CorruptConfigError);
      expect((err as CorruptConfigError).code).toBe("corruptConfig");
      expect((err as CorruptConfigError).sandbox).toBe(h.name);
      expect((err as Error).message).toContain(h.name);
    }
    const wrong = all.find((h) => h.name === "wrongtype")!;
    expect(() => wrong.config()).toThrow(/cpus/);
    // starting it needs the config: typed error, nothing booted
    await expect(Sandbox.start("garbage")).rejects.toBeInstanceOf(CorruptConfigError);
    expect(fake.configs).toHaveLength(0);
    // and it can still be removed
    await (await Sandbox.get("garbage")).remove();
    expect((await Sandbox.list()).map((h) => h.name)).not.toContain("garbage");
  });

  it("fills keys missing from an older stored config with defaults", async () => {
    fake.addRecord({ name: "old", configJson: JSON.stringify({ name: "old", cpus: 1, memoryMib: 128 }) });
    const c = (await Sandbox.get("old")).config();
    expect(c).toMatchObject({ name: "old", cpus: 1, memoryMib: 128, env: [], image: null, idleTimeoutSecs: null, registryAuth: null });
  });
});

describe("timeouts", () => {
  const bad: [string, (b: ReturnType<typeof Sandbox.builder>) => unknown, string][] = [
    ["idleTimeout(0)", (b) => b.idleTimeout(0), "idleTimeout"],
    ["idleTimeout(-5)", (b) => b.idleTimeout(-5), "idleTimeout"],
    ["idleTimeout(1.5)", (b) => b.idleTimeout(1.5), "idleTimeout"],
    ["idleTimeout('3')", (b) => b.idleTimeout("3" as unknown as number), "idleTimeout"],
    ["maxDuration(0)", (b) => b.maxDuration(0), "maxDuration"],
    ["maxDuration(-1)", (b) => b.maxDuration(-1), "maxDuration"],
    ["maxDuration(NaN)", (b) => b.maxDuration(Number.NaN), "maxDuration"],
  ];
  for (const [what, set, field] of bad) {
    it(`${what} -> InvalidConfigError naming ${field}, nothing started`, async () => {
      const b = Sandbox.builder("t");
      set(b);
      const e = await rejection(b.create());
      expect(e).toBeInstanceOf(InvalidConfigError);
      expect((e as InvalidConfigError).field).toBe(field);
      expect((e as Error).message).toContain(field);
      expect(fake.configs).toHaveLength(0);
    });
  }

  it("zero or negative stop timeouts and stream intervals -> InvalidConfigError", async () => {
    const sb = await Sandbox.builder("t").create();
    for (const t of [0, -1, 1.5, 2 ** 32]) {
      const e = await rejection(sb.stop(t));
      expect(e, String(t)).toBeInstanceOf(InvalidConfigError);
      expect((e as InvalidConfigError).field).toBe("timeoutMs");
      await expect(sb.stopAndWait(t)).rejects.toBeInstanceOf(InvalidConfigError);
      expect(() => sb.metricsStream(t)).toThrow(InvalidConfigError);
    }
    const h = await Sandbox.get("t");
    await expect(h.stop(0)).rejects.toBeInstanceOf(InvalidConfigError);
    expect(fake.clients[0]!.calls).toEqual([]);
    expect(sb.running).toBe(true);
    await sb.stop(1);
  });
});

describe("modes: attached, detached, detach()", () => {
  it("create() is attached and owns its lifecycle; createDetached() is not", async () => {
    const a = await Sandbox.builder("att").create();
    const d = await Sandbox.builder("det").createDetached();
    expect(fake.configs.map((c) => [c.name, c.mode, c.attached])).toEqual([
      ["att", "create", true],
      ["det", "create", false],
    ]);
    expect(a.ownsLifecycle).toBe(true);
    expect(d.ownsLifecycle).toBe(false);
    await a[Symbol.asyncDispose]();
    await d[Symbol.asyncDispose]();
    // disposal stops the attached one, and only closes the detached one's connection
    expect(fake.clients[0]!.calls).toEqual(["stop:10000", "close"]);
    expect(fake.clients[1]!.calls).toEqual(["close"]);
    expect((await Sandbox.get("det")).status).toBe("running");
    // a closed handle says so
    await expect(d.exec("true")).rejects.toThrow(/closed/);
    await expect(d.stop()).rejects.toBeInstanceOf(SandboxNotRunningError);
  });

  it("detach() releases an attached sandbox: no stop on dispose", async () => {
    const sb = await Sandbox.builder("w").create();
    await sb.detach();
    expect(sb.ownsLifecycle).toBe(false);
    expect(fake.clients[0]!.calls).toEqual(["detach"]);
    expect(fake.released).toEqual([FAKE_PID]);
    // still usable
    expect((await sb.exec("echo", ["hi"])).stdout()).toBe("echo hi\n");
    await sb.detach(); // nothing more to do
    expect(fake.released).toEqual([FAKE_PID]);
    await sb[Symbol.asyncDispose]();
    expect(fake.clients[0]!.calls).toEqual(["detach", "exec", "close"]);
    expect((await Sandbox.get("w")).status).toBe("running");
  });

  it("detach() of a stopped sandbox -> SandboxNotRunningError", async () => {
    const sb = await Sandbox.builder("w").create();
    await sb.stop();
    await expect(sb.detach()).rejects.toBeInstanceOf(SandboxNotRunningError);
    expect(fake.released).toEqual([]);
  });
});

describe("replace()", () => {
  it("without it, a name in use -> SandboxAlreadyExistsError and the other sandbox is untouched", async () => {
    await Sandbox.builder("dup").create();
    const e = await rejection(Sandbox.builder("dup").create());
    expect(e).toBeInstanceOf(SandboxAlreadyExistsError);
    expect((await Sandbox.get("dup")).status).toBe("running");
    expect(fake.removed).toEqual([]);
    // a stopped sandbox holds its name too
    fake.addRecord({ name: "old" });
    await expect(Sandbox.builder("old").create()).rejects.toBeInstanceOf(SandboxAlreadyExistsError);
  });

  it("stops and removes a running sandbox of that name, then creates the new one", async () => {
    const first = await Sandbox.builder("r").env("GEN", "1").create();
    const second = await Sandbox.builder("r").env("GEN", "2").replace().create();
    // the old one was stopped through its own connection, then removed
    expect(fake.clients[1]!.calls).toEqual(["stop:10000", "close"]);
    expect(fake.removed).toEqual([[HOME, "r"]]);
    expect(first.running).toBe(false);
    expect(second.running).toBe(true);
    expect((await Sandbox.get("r")).config().env).toEqual([["GEN", "2"]]);
  });

  it("kills a sandbox that does not stop, and removes a stopped one without stopping it", async () => {
    await Sandbox.builder("stuck").create();
    fake.connectError = new Error("runtime: connection refused");
    const replaced = Sandbox.builder("stuck").replace().create();
    // connect fails for the new one too: let it through once the old one is gone
    const origKill = fake.killSandbox;
    fake.killSandbox = async (h, n) => {
      await origKill(h, n);
      fake.connectError = undefined;
    };
    await replaced;
    expect(fake.killed).toEqual(["stuck"]);

    fake.addRecord({ name: "cold", status: "crashed", exitCode: 1 });
    await Sandbox.builder("cold").replace().create();
    expect(fake.removed.map(([, n]) => n)).toEqual(["stuck", "cold"]);
  });

  it("with nothing to replace, just creates", async () => {
    await Sandbox.builder("fresh").replace().create();
    expect(fake.removed).toEqual([]);
    expect(fake.configs.map((c) => c.name)).toEqual(["fresh"]);
  });
});

describe("stop, wait, kill, drain", () => {
  it("stopAndWait resolves to the recorded exit status", async () => {
    const sb = await Sandbox.builder("w").create();
    expect(await sb.stopAndWait()).toEqual({ code: 0, success: true });
    expect(sb.running).toBe(false);
    // again: the same answer, nothing sent
    expect(await sb.stopAndWait()).toEqual({ code: 0, success: true });
    expect(fake.clients[0]!.calls).toEqual(["stop:10000", "close"]);
  });

  it("wait() resolves when the VM ends on its own, with its exit status", async () => {
    const sb = await Sandbox.builder("w").create();
    let done = false;
    const waited = sb.wait().then((s) => {
      done = true;
      return s;
    });
    await new Promise((r) => setTimeout(r, 10));
    expect(done).toBe(false);
    fake.endVm("w", { code: 0, reason: "idle timeout" });
    expect(await waited).toEqual({ code: 0, success: true });
    expect(sb.running).toBe(false);
    expect(fake.clients[0]!.calls).not.toContain("stop:10000");
    await expect(sb.exec("true")).rejects.toBeInstanceOf(SandboxNotRunningError);
  });

  it("wait() reports a kill from elsewhere (137) and a crash (1)", async () => {
    const a = await Sandbox.builder("a").create();
    const wa = a.wait();
    await (await Sandbox.get("a")).kill();
    expect(await wa).toEqual({ code: 137, success: false });

    const b = await Sandbox.builder("b").create();
    const wb = b.wait();
    fake.endVm("b", { code: 1, reason: "kernel panic", status: "crashed" });
    expect(await wb).toEqual({ code: 1, success: false });
    const h = await Sandbox.get("b");
    expect(h.status).toBe("crashed");
    expect(h.exitReason).toBe("kernel panic");
  });

  it("kill() falls back to killSandbox when the runtime does not answer", async () => {
    const sb = await Sandbox.builder("k").create();
    fake.clients[0]!.killError = new Error("runtime: no answer");
    await sb.kill();
    expect(fake.killed).toEqual(["k"]);
    expect(sb.running).toBe(false);
    expect((await Sandbox.get("k")).exitCode).toBe(137);
  });

  it("drain(): new execs -> SandboxDrainingError; the end of the drain stops the sandbox", async () => {
    const sb = await Sandbox.builder("d").create();
    const inFlight = await sb.execStream("sh", ["-c", "sleep 2; echo done"]);
    await sb.drain();
    expect((await Sandbox.get("d")).status).toBe("draining");
    const e = await rejection(sb.exec("echo", ["late"]));
    expect(e).toBeInstanceOf(SandboxDrainingError);
    expect((e as SandboxDrainingError).code).toBe("sandboxDraining");
    // the command that was running still completes
    expect((await inFlight.collect()).stdout()).toBe("sh -c sleep 2; echo done\n");
    fake.endVm("d", { code: 0, reason: "drained" });
    expect(await sb.wait()).toEqual({ code: 0, success: true });
    expect((await Sandbox.get("d")).status).toBe("stopped");
    await expect(sb.exec("echo")).rejects.toBeInstanceOf(SandboxNotRunningError);
  });

  it("an exec refused by a runtime drained from elsewhere -> SandboxDrainingError", async () => {
    const sb = await Sandbox.builder("d2").create();
    fake.setStatus("d2", "draining");
    await expect(sb.exec("echo")).rejects.toBeInstanceOf(SandboxDrainingError);
  });

  it("an exec after the VM went away on its own -> SandboxNotRunningError", async () => {
    const sb = await Sandbox.builder("gone").create();
    fake.endVm("gone", { code: 1, reason: "runtime died", status: "crashed" });
    expect(sb.running).toBe(false);
    await expect(sb.exec("echo")).rejects.toBeInstanceOf(SandboxNotRunningError);
    // stop and kill of a sandbox already gone do nothing
    await sb.stop();
    await sb.kill();
  });

  it("removePersisted() stops a running sandbox and removes it", async () => {
    const sb = await Sandbox.builder("rp").create();
    await sb.removePersisted();
    expect(fake.clients[0]!.calls).toEqual(["stop:10000", "close"]);
    expect(fake.removed).toEqual([[HOME, "rp"]]);
    await expect(Sandbox.get("rp")).rejects.toBeInstanceOf(SandboxNotFoundError);

    const stopped = await Sandbox.builder("rp2").create();
    await stopped.stop();
    await stopped.removePersisted();
    expect(fake.removed.map(([, n]) => n)).toEqual(["rp", "rp2"]);
  });
});

describe("Sandbox.start / startDetached (restart from the stored config)", () => {
  it("boots a stopped sandbox with mode start and its stored configuration", async () => {
    const sb = await Sandbox.builder("again").cpus(2).env("K", "V").workdir("/w").idleTimeout(9).createDetached();
    await sb.stop();
    const again = await Sandbox.start("again");
    const cfg = fake.configs[1]!;
    expect(cfg).toMatchObject({
      name: "again",
      mode: "start",
      attached: true,
      cpus: 2,
      env: [["K", "V"]],
      workdir: "/w",
      image: "/assets/rootfs.ext4",
      idleTimeoutSecs: 9,
    });
    expect(cfg.sdkConfig).toEqual(fake.configs[0]!.sdkConfig);
    expect(again.ownsLifecycle).toBe(true);
    expect(again.config()).toEqual(sb.config());
    await again.stop();
    const det = await Sandbox.startDetached("again");
    expect(fake.configs[2]).toMatchObject({ mode: "start", attached: false });
    expect(det.ownsLifecycle).toBe(false);
  });

  it("a crashed sandbox can be started again; a running one -> SandboxStillRunningError", async () => {
    fake.addRecord({ name: "c", status: "crashed", exitCode: 1, configJson: storedConfig("c") });
    const sb = await Sandbox.start("c");
    expect(sb.config().memoryMib).toBe(256);
    const e = await rejection(Sandbox.start("c"));
    expect(e).toBeInstanceOf(SandboxStillRunningError);
    expect(fake.configs).toHaveLength(1);
    await expect(Sandbox.startDetached("nope")).rejects.toBeInstanceOf(SandboxNotFoundError);
  });

  it("stores back exactly the stored configuration, keys it does not know included", async () => {
    const json = storedConfig("future", { addedLater: { x: 1 } });
    fake.addRecord({ name: "future", configJson: json });
    await Sandbox.start("future");
    expect(fake.configs[0]!.sdkConfig).toEqual(JSON.parse(json));
    expect((await Sandbox.get("future")).configJson).toBe(JSON.stringify(JSON.parse(json)));
  });

  it("handle.start() and startDetached() do the same and refresh the handle", async () => {
    fake.addRecord({ name: "h", configJson: storedConfig("h") });
    const h = await Sandbox.get("h");
    const sb = await h.startDetached();
    expect(h.status).toBe("running");
    expect(sb.ownsLifecycle).toBe(false);
    await h.stop();
    expect(h.status).toBe("stopped");
    const sb2 = await h.start();
    expect(sb2.ownsLifecycle).toBe(true);
  });
});

describe("SandboxHandle", () => {
  it("connect() gives a full Sandbox for a running sandbox, not owning its lifecycle", async () => {
    await Sandbox.builder("c").env("X", "1").createDetached();
    const sb = await (await Sandbox.get("c")).connect();
    expect(sb.ownsLifecycle).toBe(false);
    expect(sb.name).toBe("c");
    expect(sb.runtimePid).toBe(FAKE_PID);
    expect(sb.sandboxDir).toBe(`${HOME}/sandboxes/c`);
    expect(sb.config().env).toEqual([["X", "1"]]);
    expect((await sb.exec("echo", ["hi"])).stdout()).toBe("echo hi\n");
    expect((await sb.metrics()).cpuPercent).toBe(12.5);
    {
      await using _ = sb;
    }
    expect(fake.clients[1]!.calls).toEqual(["exec", "metrics", "close"]);
    expect((await Sandbox.get("c")).status).toBe("running");
  });

  it("connect() of a stopped or crashed sandbox -> SandboxNotRunningError", async () => {
    fake.addRecord({ name: "s", status: "stopped" });
    fake.addRecord({ name: "x", status: "crashed" });
    for (const n of ["s", "x"]) {
      const e = await rejection((await Sandbox.get(n)).connect());
      expect(e).toBeInstanceOf(SandboxNotRunningError);
      expect((e as Error).message).toContain(n);
    }
  });

  it("a starting sandbox (booting, no socket yet): stop() cancels the boot through its runtime, then remove works", async () => {
    fake.addRecord({ name: "boot", status: "starting", runtimePid: 4242, socketPath: undefined });
    const h = await Sandbox.get("boot");
    expect(h.status).toBe("starting");
    expect(h.runtimePid).toBe(4242);
    await expect(h.connect()).rejects.toBeInstanceOf(SandboxNotRunningError);
    await expect(Sandbox.remove("boot")).rejects.toBeInstanceOf(SandboxStillRunningError);
    await h.stop();
    expect(fake.terminated).toEqual(["boot"]);
    expect(h.status).toBe("stopped");
    expect(h.exitReason).toBe("stopped while booting");
    await Sandbox.remove("boot");
    await expect(Sandbox.get("boot")).rejects.toBeInstanceOf(SandboxNotFoundError);
  });

  it("connect() uses the current state, not the snapshot", async () => {
    const sb = await Sandbox.builder("moving").create();
    const h = await Sandbox.get("moving");
    await sb.stop();
    await expect(h.connect()).rejects.toBeInstanceOf(SandboxNotRunningError);
    expect(h.status).toBe("stopped");
  });

  it("stop(), kill(), remove(), metrics()", async () => {
    await Sandbox.builder("h1").createDetached();
    const h = await Sandbox.get("h1");
    const m = await h.metrics();
    expect(m.memoryLimitBytes).toBe(512 << 20);
    await h.stop(2500);
    expect(fake.clients[1]!.calls).toEqual(["metrics", "close"]);
    expect(fake.clients[2]!.calls).toEqual(["stop:2500", "close"]);
    expect(h.status).toBe("stopped");
    await h.stop(); // not running: nothing to do
    await h.kill();
    expect(fake.clients).toHaveLength(3);
    await expect(h.metrics()).rejects.toBeInstanceOf(SandboxNotRunningError);
    await h.remove();
    await expect(h.refresh()).rejects.toBeInstanceOf(SandboxNotFoundError);

    await Sandbox.builder("h2").createDetached();
    const h2 = await Sandbox.get("h2");
    await h2.kill();
    expect(fake.killed).toEqual(["h1", "h2"]);
    expect(h2.status).toBe("stopped");
    expect(h2.exitCode).toBe(137);
  });

  it("remove() of a running sandbox -> SandboxStillRunningError", async () => {
    await Sandbox.builder("busy").createDetached();
    await expect((await Sandbox.get("busy")).remove()).rejects.toBeInstanceOf(SandboxStillRunningError);
    await expect(Sandbox.remove("busy")).rejects.toBeInstanceOf(SandboxStillRunningError);
  });

  it("stop() kills a sandbox whose runtime cannot be reached", async () => {
    await Sandbox.builder("mute").createDetached();
    fake.connectError = new Error("runtime: connection refused");
    await (await Sandbox.get("mute")).stop();
    expect(fake.killed).toEqual(["mute"]);
  });

  it("unknown names: kill and remove -> SandboxNotFoundError", async () => {
    fake.addRecord({ name: "tmp" });
    const h = await Sandbox.get("tmp");
    await h.remove();
    await expect(h.kill()).rejects.toBeInstanceOf(SandboxNotFoundError);
    await expect(h.remove()).rejects.toBeInstanceOf(SandboxNotFoundError);
    await expect(h.start()).rejects.toBeInstanceOf(SandboxNotFoundError);
  });
});

describe("failed creates", () => {
  it("a name that belongs to another sandbox is never removed", async () => {
    fake.addRecord({ name: "theirs", status: "stopped" });
    await expect(Sandbox.builder("theirs").create()).rejects.toBeInstanceOf(SandboxAlreadyExistsError);
    expect(fake.records.has("theirs")).toBe(true);
  });

  it("a VM that boots but cannot be reached is killed", async () => {
    fake.connectError = new Error("runtime: connection refused");
    await expect(Sandbox.builder("unreachable").create()).rejects.toBeInstanceOf(RuntimeError);
    expect(fake.killed).toEqual(["unreachable"]);
  });
});
