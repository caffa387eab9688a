// Hostile guest: a fork bomb, as an unprivileged user (bounded by the guest's
// RLIMIT_NPROC, 1832 for 512 MiB) and as root (bounded only by the guest kernel). The
// host-side exec timeout fires on time whatever the guest does, stop() and kill() still
// end the VM, and a neighbour sandbox made beforehand answers during and after.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExecTimeoutError, RuntimeError, Sandbox } from "../../src/index.js";
import { cleanup, useTempMsbHome, waitFor, within } from "../e2e-helpers.js";
import { alive, expectHostUnaffected, expectNeighbourAnswers, qemuPidOf, rssKiB, watchHost } from "./probe-helpers.js";

useTempMsbHome();
let neighbour: Sandbox | undefined;
const victims: Sandbox[] = [];

beforeAll(async () => {
  neighbour = await Sandbox.builder("bomb-neighbour").create();
  await expectNeighbourAnswers(neighbour, "before");
});
afterAll(async () => {
  await cleanup(...victims, neighbour);
});

const BOMB = "b() { b | b & }; b; sleep 1000";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function victim(name: string): Promise<Sandbox> {
  const sb = await Sandbox.builder(name).create();
  victims.push(sb);
  return sb;
}

/**
 * The bomb's processes left in the guest (`sh` processes, from `ps -o user,comm` run
 * without a shell), or undefined when the guest did not answer in time.
 */
async function bombProcesses(sb: Sandbox): Promise<number | undefined> {
  try {
    const r = await sb.execWith("ps", (b) => b.args(["-o", "user,comm"]).user("0").timeout(10_000));
    return r.stdout().split("\n").filter((l) => /^\S+\s+sh$/.test(l.trim())).length;
  } catch {
    return undefined;
  }
}

describe.each([
  { who: "nobody" },
  { who: "root" },
])("a fork bomb as $who", ({ who }) => {
  it("the host-side timeout fires on time; the bomb dies with its process group; the sandbox is usable again", async () => {
    const name = `bomb-timeout-${who}`;
    const sb = await victim(name);
    const runtimePid = sb.runtimePid;
    const host = watchHost();
    const t0 = Date.now();
    const bomb = sb.execWith("sh", (b) => b.args(["-c", BOMB]).user(who).timeout(5000)).then(
      () => ({ ms: Date.now() - t0, err: undefined as unknown }),
      (err: unknown) => ({ ms: Date.now() - t0, err }),
    );
    // The neighbour answers while the bomb rages.
    await sleep(1500);
    await expectNeighbourAnswers(neighbour!, `during-${name}`);
    const { ms, err } = await bomb;
    expect(err).toBeInstanceOf(ExecTimeoutError);
    expect(err).toMatchObject({ code: "execTimeout", timeoutMs: 5000, message: "command did not finish within 5000 ms" });
    expect(ms).toBeGreaterThanOrEqual(5000);
    expect(ms).toBeLessThan(5000 + 2000);

    // SIGKILL went to the session's process group, which every bomb process is in (no
    // job control in sh -c): the guest comes back, with none of them left.
    const t1 = Date.now();
    let back = false;
    while (!back && Date.now() - t1 < 60_000) {
      back = await sb.execWith("echo", (b) => b.args(["alive"]).timeout(10_000)).then(
        (o) => o.stdout() === "alive\n",
        () => false,
      );
    }
    expect(back).toBe(true);
    const recovered = Date.now() - t1;
    let left: number | undefined;
    for (let i = 0; i < 20; i++) {
      left = await bombProcesses(sb);
      if (left === 0) break;
      await sleep(1000);
    }
    expect(left).toBe(0);
    console.log(`fork bomb as ${who}: ExecTimeoutError after ${ms} ms; guest answered again ${recovered} ms later; ${left} bomb processes left`);

    const h = await Sandbox.get(name);
    expect([h.status, h.runtimePid]).toEqual(["running", runtimePid]);
    expect(alive(runtimePid)).toBe(true);
    expect(rssKiB(runtimePid)).toBeLessThan(64 * 1024);
    await expectNeighbourAnswers(neighbour!, `after-${name}`);
    expectHostUnaffected(host.stop());
  });
});

describe("a fork bomb as root, still raging", () => {
  it("stop() ends the VM within its grace period, recorded as it happened", async () => {
    const name = "bomb-stop";
    const sb = await victim(name);
    const qemuPid = qemuPidOf(sb);
    const host = watchHost();
    const bomb = await sb.shellStream(BOMB);
    const bombEnd = bomb.wait().then(
      (ok) => ({ ok }),
      (err: unknown) => ({ err }),
    );
    await sleep(3000);
    await expectNeighbourAnswers(neighbour!, `during-${name}`);
    const t0 = Date.now();
    await within(sb.stop(5000), 20_000, "stop() during a fork bomb");
    const ms = Date.now() - t0;
    const h = await Sandbox.get(name);
    console.log(`fork bomb as root: stop(5000) returned after ${ms} ms: ${h.status} ${h.exitCode} ${h.exitReason}`);
    expect(h.status).toBe("stopped");
    // The guest agent shuts down (SIGTERM to all, up to 3 s, SIGKILL, sync, power off)
    // while competing with the bomb for its one vCPU: either it made it within the grace
    // period (the bomb's shell then ended by SIGTERM: 143), or the runtime killed QEMU at
    // the end of it (the command's session then ends with the VM). The record says which.
    const end = await within(bombEnd, 10_000, "the bomb's exec end");
    console.log(`fork bomb as root: the bomb's exec ended with ${JSON.stringify("ok" in end ? end.ok : String(end.err))}`);
    if (h.exitCode === 0) {
      expect(h.exitReason).toBe("stopped");
      expect(ms).toBeLessThan(5000 + 1000);
      expect(end).toEqual({ ok: { code: 143, success: false } });
    } else {
      expect([h.exitCode, h.exitReason]).toEqual([137, "stopped (killed after the grace period)"]);
      expect(ms).toBeGreaterThanOrEqual(5000);
      expect(ms).toBeLessThan(5000 + 3000);
      expect("err" in end && end.err).toBeInstanceOf(RuntimeError);
      expect("err" in end && end.err).toMatchObject({ code: "runtime", message: "the sandbox stopped while the command was running (the sandbox stopped)" });
    }
    expect(await waitFor(() => !alive(sb.runtimePid) && !alive(qemuPid), 10_000)).toBe(true);
    await expectNeighbourAnswers(neighbour!, `after-${name}`);
    expectHostUnaffected(host.stop());
  });

  it("kill() ends the VM at once", async () => {
    const name = "bomb-kill";
    const sb = await victim(name);
    const qemuPid = qemuPidOf(sb);
    const host = watchHost();
    const bomb = await sb.shellStream(BOMB);
    const bombEnd = bomb.wait().then(
      () => undefined,
      (e: unknown) => e,
    );
    await sleep(3000);
    const t0 = Date.now();
    await within(sb.kill(), 10_000, "kill() during a fork bomb");
    const ms = Date.now() - t0;
    console.log(`fork bomb as root: kill() returned after ${ms} ms`);
    expect(ms).toBeLessThan(3000);
    const h = await Sandbox.get(name);
    expect([h.status, h.exitCode, h.exitReason]).toEqual(["stopped", 137, "killed"]);
    expect(await waitFor(() => !alive(sb.runtimePid) && !alive(qemuPid), 10_000)).toBe(true);
    expect(await within(bombEnd, 10_000, "the bomb's exec end")).toBeInstanceOf(RuntimeError);
    await expectNeighbourAnswers(neighbour!, `after-${name}`);
    expectHostUnaffected(host.stop());
  });
});
