// Hostile guest, as root: garbage on its own agent port, a fork bomb, filling its memory
// and its disk. Each attack must hurt only the attacker: the test process and a
// neighbour sandbox carry on, and the victim ends up exactly as described.
import { statfsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExecTimeoutError, Sandbox } from "../../src/index.js";
import { cleanup, isGone, useTempMsbHome, waitFor, within } from "../e2e-helpers.js";
import { expectNeighbourFine, rssKiB } from "./hostile-helpers.js";

const home = useTempMsbHome();
let neighbour: Sandbox | undefined;
const victims: Sandbox[] = [];
let hostRssStart = 0;

beforeAll(async () => {
  neighbour = await Sandbox.builder("hostile-neighbour").create();
  hostRssStart = process.memoryUsage().rss;
});
afterAll(async () => {
  await cleanup(...victims, neighbour);
});

async function victim(name: string, b = Sandbox.builder(name)): Promise<Sandbox> {
  const sb = await b.create();
  victims.push(sb);
  return sb;
}

/** The test process itself did not balloon (every attack is bounded on the host). */
function expectHostFine(): void {
  expect(process.memoryUsage().rss - hostRssStart).toBeLessThan(256 << 20);
}

describe("a hostile guest hurts only itself", () => {
  it("garbage on its agent port after rebinding virtio_console: the victim is crashed (protocol error), nothing else", async () => {
    const sb = await victim("hostile-port");
    const runtimePid = sb.runtimePid;
    // In the background (its own exec session dies with the channel): unbind and rebind
    // the console driver, then write a frame header claiming 4 GiB onto the port.
    const D = "/sys/bus/virtio/drivers/virtio_console";
    await sb.shell(
      `(sleep 0.5; echo virtio0 > ${D}/unbind; echo virtio0 > ${D}/bind; sleep 1; for p in /dev/vport*; do printf '\\377\\377\\377\\377garbage' > $p; done) > /dev/null 2>&1 &`,
    );
    const end = await within(sb.wait(), 30_000, "the victim's end");
    expect(end).toEqual({ code: 1, success: false });
    const h = await Sandbox.get("hostile-port");
    expect(h.status).toBe("crashed");
    expect(h.exitReason).toBe("protocol error: bad frame from guest: frame length 4294967295 exceeds the maximum of 1048581");
    expect(await waitFor(() => isGone(runtimePid), 10_000)).toBe(true);
    await expectNeighbourFine(neighbour!);
    expectHostFine();
  });

  it("a fork bomb: the host-side exec timeout fires, kill() ends the VM, the neighbour never notices", async () => {
    const sb = await victim("hostile-fork");
    const started = Date.now();
    const e = await sb
      .execWith("sh", (b) => b.args(["-c", "b() { b | b & }; b; sleep 1000"]).timeout(5000))
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ExecTimeoutError);
    expect(Date.now() - started).toBeLessThan(5000 + 3000);
    await expectNeighbourFine(neighbour!);
    await within(sb.kill(), 30_000, "kill() of a fork-bombed guest");
    const h = await Sandbox.get("hostile-fork");
    expect([h.status, h.exitCode, h.exitReason]).toEqual(["stopped", 137, "killed"]);
    await expectNeighbourFine(neighbour!);
    expectHostFine();
  });

  it("filling its memory: the guest's OOM killer ends the hog (137), the sandbox stays usable, host memory bounded", async () => {
    const sb = await victim("hostile-mem", Sandbox.builder("hostile-mem").memory(256));
    // tail keeps the whole last "line": /dev/zero has no newline, so it grows until killed.
    const out = await within(sb.shell("head -c 1000000000 /dev/zero | tail -n 1 >/dev/null; echo exit=$?"), 90_000, "the memory hog");
    expect(out.stdout()).toBe("exit=137\n");
    expect((await sb.exec("echo", ["alive"])).stdout()).toBe("alive\n");
    expect((await sb.exec("dmesg")).stdout()).toMatch(/Out of memory: Killed process \d+ \(tail\)/);
    // msb-runtime's own memory does not follow the guest's.
    expect(rssKiB(sb.runtimePid)).toBeLessThan(64 * 1024);
    await expectNeighbourFine(neighbour!);
    expectHostFine();
  });

  it("filling its disk: ENOSPC inside the guest at the upper disk's size, host space bounded by it, still usable", async () => {
    const sb = await victim("hostile-disk");
    const freeBefore = statfsSync(home()).bavail * statfsSync(home()).bsize;
    const out = await within(sb.shell("dd if=/dev/zero of=/fill bs=1M 2>&1; sync; df -k / | tail -1"), 110_000, "the disk fill");
    expect(out.stdout()).toMatch(/No space left on device/);
    // The overlay's upper disk is 4 GiB (sparse on the host).
    const dfLine = out.stdout().trim().split("\n").pop() as string;
    const used = Number(dfLine.split(/\s+/)[2]);
    expect(used * 1024).toBeGreaterThan(3.5 * 2 ** 30);
    expect(used * 1024).toBeLessThanOrEqual(4 * 2 ** 30);
    const freeAfter = statfsSync(home()).bavail * statfsSync(home()).bsize;
    expect(freeBefore - freeAfter).toBeLessThan(4.2 * 2 ** 30);
    expect((await sb.shell("rm /fill && echo removed")).stdout()).toBe("removed\n");
    expect((await sb.exec("echo", ["alive"])).stdout()).toBe("alive\n");
    await expectNeighbourFine(neighbour!);
    expectHostFine();
  });
});
