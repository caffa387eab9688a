// Hostile guest: allocates past its memory (256 MiB guest), first with an anonymous hog
// (busybox `tail` buffering a 2 GiB "line" from /dev/zero), then with a tmpfs sized
// bigger than RAM filled by dd (page cache that no kill gives back). Commands run in a
// memory cgroup that leaves the agent a reserve (crates/agent/src/memcg.rs), so the
// cgroup's OOM killer deals with it: the hog dies with SIGKILL (137), the agent (PID 1)
// keeps serving, the kernel does not panic (without the reserve it does, once the
// tmpfs leaves the OOM killer nothing but PID 1). On the host,
// msb-runtime's memory does not follow the guest's and QEMU stays within guest memory
// plus its overhead; a neighbour made beforehand answers during and after.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Sandbox } from "../../src/index.js";
import { cleanup, useTempMsbHome } from "../e2e-helpers.js";
import { alive, expectHostUnaffected, expectNeighbourAnswers, qemuPidOf, rssKiB, sampleRss, watchHost } from "./probe-helpers.js";

useTempMsbHome();
let neighbour: Sandbox | undefined;
let sb: Sandbox | undefined;
let qemuPid = 0;
const GUEST_MIB = 256;
const MiB = 2 ** 20;

beforeAll(async () => {
  neighbour = await Sandbox.builder("mem-neighbour").create();
  await expectNeighbourAnswers(neighbour, "before");
  sb = await Sandbox.builder("mem-victim").memory(GUEST_MIB).create();
  qemuPid = qemuPidOf(sb);
});
afterAll(async () => {
  await cleanup(sb, neighbour);
});

/** Guest memory in use (MemTotal - MemAvailable), MiB, from the runtime's metrics. */
async function guestUsedMiB(): Promise<number> {
  return (await sb!.metrics()).memoryBytes / MiB;
}

/** OOM kills the guest kernel logged so far, by process name: all of them by the
 * commands' memory cgroup, none by the global OOM killer. */
async function oomKills(): Promise<string[]> {
  const log = (await sb!.exec("dmesg")).stdout();
  expect(log).not.toContain("Kernel panic");
  expect(log).not.toMatch(/^Out of memory: Killed process/m);
  return [...log.matchAll(/Memory cgroup out of memory: Killed process \d+ \((\S+)\)/g)].map((m) => m[1]!);
}

/** The victim is alive and well: answers exactly, still "running" with the same runtime. */
async function expectVictimUsable(tag: string): Promise<void> {
  const r = await sb!.exec("echo", [tag]);
  expect([r.code, r.stdout()]).toEqual([0, `${tag}\n`]);
  const h = await Sandbox.get("mem-victim");
  expect([h.status, h.runtimePid]).toEqual(["running", sb!.runtimePid]);
  expect(alive(sb!.runtimePid)).toBe(true);
  expect(alive(qemuPid)).toBe(true);
}

describe("a guest filling its memory", () => {
  it("an anonymous hog: the guest OOM killer kills it (137), the sandbox stays usable, host memory bounded", async () => {
    const host = watchHost();
    const runtime0 = rssKiB(sb!.runtimePid);
    const qemu0 = rssKiB(qemuPid);
    const runtimePeak = sampleRss(sb!.runtimePid);
    const qemuPeak = sampleRss(qemuPid);
    const t0 = Date.now();
    // busybox tail keeps the whole last "line": /dev/zero has no newline, so it grows until killed.
    const hog = sb!.execWith("sh", (b) => b.args(["-c", "head -c 2147483648 /dev/zero | tail"]).timeout(100_000));
    await new Promise((r) => setTimeout(r, 3000));
    await expectNeighbourAnswers(neighbour!, "during-hog");
    const out = await hog;
    const ms = Date.now() - t0;
    const rPeak = runtimePeak.stop();
    const qPeak = qemuPeak.stop();
    // The shell reports its killed child, as busybox ash does.
    expect([out.code, out.stdout(), out.stderr()]).toEqual([137, "", "Killed\n"]);
    expect(await oomKills()).toEqual(["tail"]);
    await expectVictimUsable("after-hog");
    const used = await guestUsedMiB();
    console.log(
      `memory fill (anonymous): tail OOM-killed after ${ms} ms, exit ${out.code}, stderr ${JSON.stringify(out.stderr())}; msb-runtime RSS ${runtime0} -> peak ${rPeak} KiB; QEMU RSS ${qemu0} -> peak ${qPeak} KiB; guest uses ${used.toFixed(0)} MiB after`,
    );
    expect(used).toBeLessThan(100); // given back to the guest
    expect(rPeak).toBeLessThan(64 * 1024);
    expect(qPeak).toBeLessThan((GUEST_MIB + 256) * 1024);
    await expectNeighbourAnswers(neighbour!, "after-hog");
    expectHostUnaffected(host.stop());
  });

  it("a tmpfs bigger than RAM filled with dd: the writer is OOM-killed, the agent still serves, umount gives the memory back", async () => {
    const host = watchHost();
    const runtimePeak = sampleRss(sb!.runtimePid);
    const qemuPeak = sampleRss(qemuPid);
    const mount = await sb!.shell("mkdir -p /mnt/big && mount -t tmpfs -o size=1g big /mnt/big && echo mounted");
    expect(mount.stdout()).toBe("mounted\n");
    const t0 = Date.now();
    const fill = await sb!.execWith("sh", (b) => b.args(["-c", "dd if=/dev/zero of=/mnt/big/fill bs=1M; echo dd=$?"]).timeout(100_000));
    const ms = Date.now() - t0;
    // The writer goes first. Its memory given back lets the shell waiting for it print
    // dd's status; when the shell's next page does not fit either, it goes too.
    const kills = await oomKills();
    expect(kills.slice(0, 1)).toEqual(["tail"]); // from the first test
    if (kills.length === 2) {
      expect([fill.code, fill.stdout(), kills[1]]).toEqual([0, "dd=137\n", "dd"]);
    } else {
      expect([fill.code, fill.stdout(), kills.slice(1)]).toEqual([137, "", ["dd", "sh"]]);
    }
    // The memory is still held by the tmpfs, and the guest still answers.
    const held = Number((await sb!.exec("stat", ["-c", "%s", "/mnt/big/fill"])).stdout());
    expect(held).toBeGreaterThan(100 * MiB);
    expect(held).toBeLessThan(GUEST_MIB * MiB);
    const usedFull = await guestUsedMiB();
    expect(usedFull).toBeGreaterThan(GUEST_MIB * 0.6);
    await expectVictimUsable("while-full");
    await expectNeighbourAnswers(neighbour!, "during-tmpfs");

    expect((await sb!.shell("umount /mnt/big && echo unmounted")).stdout()).toBe("unmounted\n");
    const usedAfter = await guestUsedMiB();
    const rPeak = runtimePeak.stop();
    const qPeak = qemuPeak.stop();
    console.log(
      `memory fill (tmpfs): OOM kills ${JSON.stringify(kills.slice(1))} after ${ms} ms, exit ${fill.code}; the tmpfs held ${(held / MiB).toFixed(0)} MiB; guest used ${usedFull.toFixed(0)} MiB full, ${usedAfter.toFixed(0)} MiB after umount; msb-runtime RSS peak ${rPeak} KiB; QEMU RSS peak ${qPeak} KiB`,
    );
    expect(usedAfter).toBeLessThan(100);
    expect(rPeak).toBeLessThan(64 * 1024);
    expect(qPeak).toBeLessThan((GUEST_MIB + 256) * 1024);
    await expectVictimUsable("after-tmpfs");
    await expectNeighbourAnswers(neighbour!, "after-tmpfs");
    expectHostUnaffected(host.stop());
  });
});
