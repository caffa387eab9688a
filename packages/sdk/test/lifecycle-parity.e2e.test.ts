// End-to-end, on real VMs (default busybox image): lifecycle parity with the reference SDK
// (issue 14). Labels filter lists; touch defers an idle drain (ping does not); ephemeral
// sandboxes are gone after they stop, however they stop; requestStop returns before the
// VM ends, which then ends stopped; modify plans and applies to a stopped sandbox, and the
// next start boots with it; thp, init, allSandboxMetrics.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { allSandboxMetrics, InvalidConfigError, Sandbox, SandboxNotFoundError, SandboxStillRunningError, type SandboxHandle } from "../src/index.js";
import { useTempMsbHome, waitForAsync } from "./e2e-helpers.js";

const home = useTempMsbHome();

const gone = async (name: string): Promise<boolean> => {
  try {
    await Sandbox.get(name);
    return false;
  } catch (e) {
    return e instanceof SandboxNotFoundError;
  }
};

const names = (hs: SandboxHandle[]) => hs.map((h) => h.name).sort();

describe("labels, ping, touch, modify, thp, init", () => {
  let a: Sandbox | undefined;
  let b: Sandbox | undefined;
  afterAll(async () => {
    await a?.kill().catch(() => undefined);
    await b?.kill().catch(() => undefined);
  });

  it("labels filter lists (AND), and a bad key is refused before anything boots", async () => {
    const bad = await Sandbox.builder("lp-bad").label("microsandbox.owner", "me").create().catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(InvalidConfigError);
    expect(bad).toMatchObject({ field: "label" });
    expect(await gone("lp-bad")).toBe(true);

    a = await Sandbox.builder("lp-a").label("team", "a").label("env", "ci").thp("never").maxCpus(2).createDetached();
    b = await Sandbox.builder("lp-b")
      .label("team", "a")
      .initWith("/bin/sh", (i) => i.args(["-c", "echo $INIT_MARK > /tmp/init-ran; exec sleep 1000"]).env("INIT_MARK", "from-init"))
      .createDetached();
    expect(names((await Sandbox.listWith((l) => l.label("team", "a"))).sandboxes)).toEqual(["lp-a", "lp-b"]);
    expect(names((await Sandbox.listWith((l) => l.label("team", "a").label("env", "ci"))).sandboxes)).toEqual(["lp-a"]);
    expect(names((await Sandbox.listWith((l) => l.label("team", "b"))).sandboxes)).toEqual([]);
    const first = await Sandbox.listWith((l) => l.label("team", "a").limit(1));
    expect(first.sandboxes).toHaveLength(1);
    const cursor = first.nextCursor as string;
    expect(typeof cursor).toBe("string");
    const second = await Sandbox.listWith((l) => l.label("team", "a").limit(1).cursor(cursor));
    expect(names([...first.sandboxes, ...second.sandboxes])).toEqual(["lp-a", "lp-b"]);
    expect(second.nextCursor).toBeUndefined();
    expect((await Sandbox.get("lp-a")).config().labels).toEqual({ team: "a", env: "ci" });
    expect(a.config().labels).toEqual({ team: "a", env: "ci" });
  });

  it("ping reaches the agent, touch returns the activity sequence; all metrics by name", async () => {
    const sb = a as Sandbox;
    const p = await sb.ping();
    expect(p.name).toBe("lp-a");
    expect(p.latencyMs).toBeGreaterThan(0);
    expect(p.latencyMs).toBeLessThan(5000);
    const t1 = await sb.touch();
    await sb.exec("true");
    const t2 = await (await Sandbox.get("lp-a")).touch();
    expect(t1.name).toBe("lp-a");
    expect(t2.activitySeq).toBeGreaterThanOrEqual(t1.activitySeq + 3); // the exec started and ended
    const all = await allSandboxMetrics();
    expect(Object.keys(all).sort()).toEqual(["lp-a", "lp-b"]);
    expect(all["lp-a"]?.memoryLimitBytes).toBe(512 * 1024 * 1024);
  });

  it("thp is set in the guest kernel; init is started at boot with its args and env", async () => {
    expect((await (a as Sandbox).shell("cat /sys/kernel/mm/transparent_hugepage/enabled")).stdout()).toMatch(/\[never\]/);
    const ran = await waitForAsync(async () => (await (b as Sandbox).shell("cat /tmp/init-ran 2>/dev/null")).stdout() === "from-init\n", 10_000);
    expect(ran).toBe(true);
    // The init runs in the background: the sandbox is idle, not busy with it.
    expect((await (b as Sandbox).shell("ps 2>/dev/null | grep -c '[s]leep 1000' || true")).stdout().trim()).not.toBe("0");
  });

  it("modify: refused while running, planned and applied when stopped, and the next start boots with it", async () => {
    const sb = a as Sandbox;
    const refused = await sb.modify({ env: { NEW: "1" } }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(SandboxStillRunningError);
    await sb.stop();
    const h = await Sandbox.get("lp-a");
    const dry = await h.modify({ cpus: 2, env: { NEW: "yes" }, labels: { tier: "gold" }, labelsRemove: ["env"], dryRun: true });
    expect(dry).toMatchObject({ sandbox: "lp-a", status: "stopped", applied: false, policy: "no_restart", conflicts: [] });
    expect(dry.changes).toEqual([
      { kind: "config", field: "cpus", change: "updated", before: "1", after: "2", disposition: "next start" },
      { kind: "config", field: "env", change: "added", after: "NEW=yes", disposition: "next start" },
      { kind: "config", field: "label", change: "added", after: "tier=gold", disposition: "next start" },
      { kind: "config", field: "label", change: "removed", before: "env=ci", disposition: "next start" },
    ]);
    expect((await Sandbox.get("lp-a")).config().cpus).toBe(1);
    const over = await h.modify({ cpus: 3 }).catch((e: unknown) => e);
    expect(over).toMatchObject({ code: "invalidConfig", field: "cpus" });

    const applied = await h.modify({ cpus: 2, env: { NEW: "yes" }, labels: { tier: "gold" }, labelsRemove: ["env"] });
    expect(applied.applied).toBe(true);
    expect(h.config()).toMatchObject({ cpus: 2, labels: { team: "a", tier: "gold" } });
    expect(JSON.parse(h.configJson).env).toContainEqual(["NEW", "yes"]);
    expect(names((await Sandbox.listWith((l) => l.label("tier", "gold"))).sandboxes)).toEqual(["lp-a"]);
    a = await Sandbox.startDetached("lp-a");
    expect((await a.shell("echo $NEW; nproc")).stdout()).toBe("yes\n2\n");
    expect(a.config().labels).toEqual({ team: "a", tier: "gold" });
  });
});

describe("requestStop, requestKill, ephemeral", () => {
  it("requestStop returns before the VM ends, and the sandbox then ends stopped", async () => {
    const sb = await Sandbox.builder("lp-req").createDetached();
    // A process that ignores SIGTERM: the guest's shutdown waits 3 s for it.
    await sb.shell("(trap '' TERM; exec sleep 1000) >/dev/null 2>&1 &");
    const t0 = Date.now();
    await sb.requestStop();
    const took = Date.now() - t0;
    const right_after = await Sandbox.get("lp-req");
    expect(took).toBeLessThan(1000);
    expect(["running", "draining"]).toContain(right_after.status);
    const end = await sb.wait();
    expect(Date.now() - t0).toBeGreaterThan(took);
    expect(end).toEqual({ code: 0, success: true });
    const h = await Sandbox.get("lp-req");
    expect(h).toMatchObject({ status: "stopped", exitCode: 0, exitReason: "stopped" });
    await h.remove();
  });

  it("an ephemeral sandbox is gone after stop(); a detached one after requestKill()", async () => {
    const e1 = await Sandbox.builder("lp-eph").ephemeral().create();
    expect(e1.config().ephemeral).toBe(true);
    expect(await e1.stopAndWait()).toEqual({ code: 0, success: true });
    expect(await gone("lp-eph")).toBe(true);
    expect(existsSync(join(home(), "sandboxes", "lp-eph"))).toBe(false);

    await Sandbox.builder("lp-eph2").ephemeral().createDetached();
    const h = await Sandbox.get("lp-eph2");
    await h.requestKill();
    expect(await waitForAsync(() => gone("lp-eph2"), 15_000)).toBe(true);
    expect(existsSync(join(home(), "sandboxes", "lp-eph2"))).toBe(false);
  });

  it("touch defers an idle drain; ping does not", async () => {
    const sb = await Sandbox.builder("lp-idle").idleTimeout(3).createDetached();
    const t0 = Date.now();
    // Touch every second for 6 s: twice the idle timeout, and still running.
    while (Date.now() - t0 < 6000) {
      await sb.touch();
      await new Promise((r) => setTimeout(r, 1000));
    }
    expect((await Sandbox.get("lp-idle")).status).toBe("running");
    // Pings alone do not keep it: it drains about 3 s after the last touch.
    const last = Date.now();
    let pings = 0;
    for (;;) {
      const ok = await sb.ping().then(
        () => true,
        () => false,
      );
      if (!ok) break;
      pings++;
      if (Date.now() - last > 15_000) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    const end = await sb.wait();
    expect(end.code).toBe(0);
    expect(pings).toBeGreaterThan(0);
    expect(Date.now() - last).toBeLessThan(12_000);
    const h = await Sandbox.get("lp-idle");
    expect(h.exitReason).toBe("idle timeout");
    await h.remove();
  });
});
