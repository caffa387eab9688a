// End-to-end: a sandbox's life outside a single exec, on real VMs: detached sandboxes
// that outlive their creator, stop/start with the disk kept, drain, a crashed runtime,
// two processes racing for one name, and the typed errors of bad input.
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  InvalidConfigError,
  MicrosandboxError,
  Sandbox,
  SandboxAlreadyExistsError,
  SandboxDrainingError,
  SandboxNotFoundError,
  SandboxNotRunningError,
  SandboxStillRunningError,
} from "../src/index.js";
import { cleanup, isGone, qemuProcessesMentioning, useTempMsbHome, waitFor, waitForAsync, within } from "./e2e-helpers.js";

const home = useTempMsbHome();

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

interface Child {
  proc: ChildProcessWithoutNullStreams;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

function node(script: string, args: string[]): Child {
  const proc = spawn(process.execPath, [script, ...args], { env: process.env, stdio: ["pipe", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  proc.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  proc.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.on("exit", (code) => resolve(code)));
  return { proc, stdout: () => stdout, stderr: () => stderr, exited };
}

/** Remove a sandbox once its runtime let go of it (kill first if it still runs). */
async function dispose(name: string): Promise<void> {
  try {
    const h = await Sandbox.get(name);
    if (h.status === "running" || h.status === "draining") await h.kill();
  } catch {
    return;
  }
  await waitForAsync(async () => {
    try {
      await Sandbox.remove(name);
      return true;
    } catch (e) {
      return e instanceof SandboxNotFoundError;
    }
  }, 15_000);
}

describe("detached sandboxes", () => {
  it("outlive the process that created them; Sandbox.get reaches them from here", async () => {
    const child = node(fixture("detached-child.mjs"), ["e2e-detached"]);
    try {
      const code = await within(child.exited, 100_000, "the fixture exiting");
      expect(code, `fixture stderr: ${child.stderr()}`).toBe(0);
      const m = /^READY (\d+) false written-by-child$/m.exec(child.stdout());
      expect(m, `fixture output: ${child.stdout()}\nstderr: ${child.stderr()}`).not.toBeNull();
      const runtimePid = Number(m![1]);

      // Its creator is gone; the sandbox is not.
      await new Promise((r) => setTimeout(r, 1_000));
      expect(isGone(runtimePid), "msb-runtime died with its creator").toBe(false);
      const h = await Sandbox.get("e2e-detached");
      expect(h.status).toBe("running");
      expect(h.runtimePid).toBe(runtimePid);
      expect(h.config().name).toBe("e2e-detached");
      expect((await Sandbox.list()).map((x) => x.name)).toContain("e2e-detached");

      const sb = await h.connect();
      expect(sb.ownsLifecycle).toBe(false);
      expect((await sb.exec("cat", ["/marker.txt"])).stdout()).toBe("written-by-child\n");
      expect((await sb.metrics()).memoryLimitBytes).toBe(512 * 1024 * 1024);
      // Leaving the scope of a connected handle does not stop the sandbox.
      await sb[Symbol.asyncDispose]();
      expect((await Sandbox.get("e2e-detached")).status).toBe("running");

      await h.stop();
      expect(await waitFor(() => isGone(runtimePid), 15_000)).toBe(true);
      const after = await h.refresh();
      expect(after.status).toBe("stopped");
      expect(after.exitCode).toBe(0);
    } finally {
      if (child.proc.exitCode === null) child.proc.kill("SIGKILL");
      await dispose("e2e-detached");
    }
  });

  it("detach() lets an attached sandbox keep running after its handle is disposed", async () => {
    let pid = 0;
    try {
      {
        await using sb = await Sandbox.builder("e2e-detach").create();
        pid = sb.runtimePid;
        expect(sb.ownsLifecycle).toBe(true);
        await sb.detach();
        expect(sb.ownsLifecycle).toBe(false);
      }
      await new Promise((r) => setTimeout(r, 1_000));
      expect(isGone(pid)).toBe(false);
      const sb = await (await Sandbox.get("e2e-detach")).connect();
      expect((await sb.exec("echo", ["still here"])).stdout()).toBe("still here\n");
      expect(await sb.stopAndWait()).toEqual({ code: 0, success: true });
    } finally {
      await dispose("e2e-detach");
    }
  });
});

describe("stop and start", () => {
  it("a file written before a stop is there after the start; status and exit status follow", async () => {
    try {
      const sb = await Sandbox.builder("e2e-restart").env("WHO", "first").createDetached();
      expect((await sb.shell("echo kept > /data.txt && sync && cat /data.txt")).stdout()).toBe("kept\n");
      expect(await sb.stopAndWait()).toEqual({ code: 0, success: true });
      const stopped = await Sandbox.get("e2e-restart");
      expect(stopped.status).toBe("stopped");
      expect(stopped.exitCode).toBe(0);
      expect(stopped.exitReason).toBe("stopped");

      // start of a stopped sandbox: the same config, the same disk
      const again = await Sandbox.start("e2e-restart");
      try {
        expect(again.ownsLifecycle).toBe(true);
        expect((await again.exec("cat", ["/data.txt"])).stdout()).toBe("kept\n");
        expect((await again.shell("echo $WHO")).stdout()).toBe("first\n");
        const h = await Sandbox.get("e2e-restart");
        expect(h.status).toBe("running");
        expect(h.exitCode).toBeNull();
        // starting it again while it runs is refused
        await expect(Sandbox.start("e2e-restart")).rejects.toBeInstanceOf(SandboxStillRunningError);
        await expect(Sandbox.startDetached("e2e-restart")).rejects.toBeInstanceOf(SandboxStillRunningError);
        // and so is removing it
        await expect(Sandbox.remove("e2e-restart")).rejects.toBeInstanceOf(SandboxStillRunningError);
      } finally {
        await cleanup(again);
      }
      // a third boot, detached, through the handle
      const h = await Sandbox.get("e2e-restart");
      const third = await h.startDetached();
      expect(third.ownsLifecycle).toBe(false);
      expect((await third.exec("cat", ["/data.txt"])).stdout()).toBe("kept\n");
      await third.removePersisted();
      await expect(Sandbox.get("e2e-restart")).rejects.toBeInstanceOf(SandboxNotFoundError);
    } finally {
      await dispose("e2e-restart");
    }
  });

  it("replace() stops and removes a sandbox of the same name; without it the name is taken", async () => {
    try {
      const first = await Sandbox.builder("e2e-replace").createDetached();
      await first.shell("echo old > /gen.txt");
      await expect(Sandbox.builder("e2e-replace").create()).rejects.toBeInstanceOf(SandboxAlreadyExistsError);
      const second = await Sandbox.builder("e2e-replace").replace().create();
      try {
        // a fresh sandbox: the old disk went with the old one
        expect((await second.shell("cat /gen.txt 2>/dev/null || echo none")).stdout()).toBe("none\n");
        expect(first.running).toBe(false);
      } finally {
        await cleanup(second);
      }
    } finally {
      await dispose("e2e-replace");
    }
  });
});

describe("drain", () => {
  it("lets the running command finish, refuses new ones, then stops", async () => {
    const sb = await Sandbox.builder("e2e-drain").create();
    try {
      const inFlight = await sb.execStream("sh", ["-c", "sleep 2; echo done"]);
      const first = await inFlight.recv();
      expect(first?.kind).toBe("started");
      await sb.drain();
      expect((await Sandbox.get("e2e-drain")).status).toBe("draining");

      const e = await sb.exec("echo", ["too late"]).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(SandboxDrainingError);
      expect((e as SandboxDrainingError).code).toBe("sandboxDraining");
      // through another connection too (the runtime refuses it, not just this handle)
      const other = await (await Sandbox.get("e2e-drain")).connect();
      const e2 = await other.exec("echo", ["too late"]).catch((x: unknown) => x);
      expect(e2).toBeInstanceOf(SandboxDrainingError);
      await other[Symbol.asyncDispose]();

      const out = await inFlight.collect();
      expect(out.stdout()).toBe("done\n");
      expect(out.code).toBe(0);

      expect(await within(sb.wait(), 30_000, "the drained sandbox stopping")).toEqual({ code: 0, success: true });
      const h = await Sandbox.get("e2e-drain");
      expect(h.status).toBe("stopped");
      expect(h.exitReason).toBe("drained");
      await expect(sb.exec("true")).rejects.toBeInstanceOf(SandboxNotRunningError);
    } finally {
      await cleanup(sb);
      await dispose("e2e-drain");
    }
  });
});

describe("a booting sandbox", () => {
  it("is listed starting (not running) with its runtime's pid; stop() cancels the boot; remove then works", async () => {
    try {
      const creating = Sandbox.builder("e2e-boot").memoryTemplate(false).createDetached(); // a cold boot: long enough to be seen starting
      const outcome = creating.then(
        () => "created",
        (e: unknown) => e,
      );
      let h: Awaited<ReturnType<typeof Sandbox.get>> | undefined;
      expect(
        await waitForAsync(async () => {
          h = await Sandbox.get("e2e-boot").catch(() => undefined);
          return h !== undefined;
        }, 10_000),
      ).toBe(true);
      expect(h!.status).toBe("starting");
      expect(h!.runtimePid).toBeGreaterThan(1);
      const pid = h!.runtimePid as number;
      await expect(h!.connect()).rejects.toBeInstanceOf(SandboxNotRunningError);
      await expect(Sandbox.remove("e2e-boot")).rejects.toBeInstanceOf(SandboxStillRunningError);
      await within(h!.stop(), 15_000, "stop() of a starting sandbox");
      const e = await outcome;
      expect(e).toBeInstanceOf(SandboxNotRunningError);
      expect((e as Error).message).toMatch(/stopped while it was booting/);
      expect(isGone(pid)).toBe(true);
      expect(qemuProcessesMentioning("sandboxes/e2e-boot").length).toBe(0);
      const after = await Sandbox.get("e2e-boot");
      expect([after.status, after.exitReason]).toEqual(["stopped", "stopped while booting"]);
      // It can be started afterwards (a fresh upper disk), and removed.
      const again = await Sandbox.start("e2e-boot");
      expect((await again.exec("echo", ["up"])).stdout()).toBe("up\n");
      await again.stop();
      await Sandbox.remove("e2e-boot");
      await expect(Sandbox.get("e2e-boot")).rejects.toBeInstanceOf(SandboxNotFoundError);
    } finally {
      await dispose("e2e-boot");
    }
  });
});

describe("crashes", () => {
  it("kill -9 of msb-runtime: status crashed (not running forever), QEMU gone, list/get/remove work", async () => {
    try {
      const sb = await Sandbox.builder("e2e-crash").createDetached();
      const pid = sb.runtimePid;
      const dir = sb.sandboxDir;
      expect(qemuProcessesMentioning(dir).length).toBeGreaterThan(0);
      const runDir = join(home(), "run", readFileSync(join(dir, "run-dir"), "utf8"));
      expect(readdirSync(runDir).sort()).toEqual(expect.arrayContaining(["agent.sock", "vm.sock"]));
      process.kill(pid, "SIGKILL");
      expect(await waitFor(() => isGone(pid), 10_000)).toBe(true);
      expect(await waitFor(() => qemuProcessesMentioning(dir).length === 0, 10_000), "QEMU outlived its runtime").toBe(true);

      expect(existsSync(runDir), "the killed runtime's sockets are still there").toBe(true);
      // The kernel releases a dead process's flock in deferred work, a moment after it
      // is a zombie: under load, its lock can still be held right after.
      expect(await waitForAsync(async () => (await Sandbox.get("e2e-crash")).status === "crashed", 5_000)).toBe(true);
      const h = await Sandbox.get("e2e-crash");
      expect(h.status).toBe("crashed");
      // Whoever found it crashed removed its run directory (sockets).
      expect(existsSync(runDir)).toBe(false);
      expect(h.exitCode).toBe(1);
      expect(h.exitReason).toBe("runtime died");
      expect(h.runtimePid).toBeNull();
      expect((await Sandbox.list()).find((x) => x.name === "e2e-crash")?.status).toBe("crashed");
      await expect(sb.exec("true")).rejects.toBeInstanceOf(MicrosandboxError);
      await expect(h.connect()).rejects.toBeInstanceOf(SandboxNotRunningError);
      await h.kill(); // nothing to do

      // a crashed sandbox can be started again, or removed
      const again = await h.start();
      expect((await again.exec("echo", ["back"])).stdout()).toBe("back\n");
      const runDir2 = join(home(), "run", readFileSync(join(dir, "run-dir"), "utf8"));
      expect(existsSync(join(runDir2, "agent.sock"))).toBe(true);
      await again.stop();
      expect(existsSync(runDir2)).toBe(false);
      await Sandbox.remove("e2e-crash");
      await expect(Sandbox.get("e2e-crash")).rejects.toBeInstanceOf(SandboxNotFoundError);
    } finally {
      await dispose("e2e-crash");
    }
  });
});

describe("names", () => {
  it("two processes creating the same name at once: exactly one wins", async () => {
    const a = node(fixture("create-child.mjs"), ["e2e-race"]);
    const b = node(fixture("create-child.mjs"), ["e2e-race"]);
    try {
      const ready = await waitFor(() => a.stdout().includes("WAITING") && b.stdout().includes("WAITING"), 60_000);
      expect(ready, `children did not get ready: ${a.stderr()} ${b.stderr()}`).toBe(true);
      a.proc.stdin.write("GO\n");
      b.proc.stdin.write("GO\n");
      await within(Promise.all([a.exited, b.exited]), 100_000, "both creators finishing");
      const lines = [a.stdout(), b.stdout()].map((s) => s.split("\n").find((l) => /^(CREATED|ERROR)/.test(l)) ?? s);
      const won = lines.filter((l) => l.startsWith("CREATED"));
      const lost = lines.filter((l) => l.startsWith("ERROR"));
      expect(won, lines.join(" | ")).toHaveLength(1);
      expect(lost, lines.join(" | ")).toHaveLength(1);
      expect(lost[0]).toMatch(/^ERROR sandboxAlreadyExists /);
      const winnerPid = Number(won[0]!.split(" ")[1]);
      const all = (await Sandbox.list()).filter((h) => h.name === "e2e-race");
      expect(all).toHaveLength(1);
      expect(all[0]!.status).toBe("running");
      expect(all[0]!.runtimePid).toBe(winnerPid);
    } finally {
      for (const c of [a, b]) if (c.proc.exitCode === null) c.proc.kill("SIGKILL");
      await dispose("e2e-race");
    }
  });
});

describe("bad input", () => {
  it("unknown names -> SandboxNotFoundError (get, start, startDetached, remove, kill)", async () => {
    await expect(Sandbox.get("e2e-nobody")).rejects.toBeInstanceOf(SandboxNotFoundError);
    await expect(Sandbox.start("e2e-nobody")).rejects.toBeInstanceOf(SandboxNotFoundError);
    await expect(Sandbox.startDetached("e2e-nobody")).rejects.toBeInstanceOf(SandboxNotFoundError);
    await expect(Sandbox.remove("e2e-nobody")).rejects.toBeInstanceOf(SandboxNotFoundError);
    // a handle whose sandbox was removed meanwhile
    const sb = await Sandbox.builder("e2e-vanish").create();
    await sb.stop();
    const h = await Sandbox.get("e2e-vanish");
    await Sandbox.remove("e2e-vanish");
    await expect(h.kill()).rejects.toBeInstanceOf(SandboxNotFoundError);
    await expect(h.remove()).rejects.toBeInstanceOf(SandboxNotFoundError);
    await expect(h.start()).rejects.toBeInstanceOf(SandboxNotFoundError);
  });

  it("zero or negative timeouts -> InvalidConfigError naming the field; nothing boots", async () => {
    const bad: [() => Promise<unknown>, string][] = [
      [() => Sandbox.builder("e2e-bad").idleTimeout(0).create(), "idleTimeout"],
      [() => Sandbox.builder("e2e-bad").idleTimeout(-3).create(), "idleTimeout"],
      [() => Sandbox.builder("e2e-bad").maxDuration(0).createDetached(), "maxDuration"],
      [() => Sandbox.builder("e2e-bad").maxDuration(-1).create(), "maxDuration"],
    ];
    for (const [f, field] of bad) {
      const e = await f().catch((x: unknown) => x);
      if (e instanceof Sandbox) await cleanup(e);
      expect(e, field).toBeInstanceOf(InvalidConfigError);
      expect((e as InvalidConfigError).field).toBe(field);
    }
    await expect(Sandbox.get("e2e-bad")).rejects.toBeInstanceOf(SandboxNotFoundError);

    const sb = await Sandbox.builder("e2e-bad-t").create();
    try {
      await expect(sb.stop(0)).rejects.toBeInstanceOf(InvalidConfigError);
      await expect(sb.stop(-1)).rejects.toBeInstanceOf(InvalidConfigError);
      expect(() => sb.metricsStream(0)).toThrow(InvalidConfigError);
      expect(sb.running).toBe(true);
      expect((await sb.exec("echo", ["unharmed"])).stdout()).toBe("unharmed\n");
    } finally {
      await cleanup(sb);
      await dispose("e2e-bad-t");
    }
  });
});
