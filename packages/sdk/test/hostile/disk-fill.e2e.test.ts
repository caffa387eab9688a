// Hostile guest: fills its root filesystem with `dd if=/dev/zero of=/fill bs=1M` until
// ENOSPC. The overlay's writable layer is the sandbox's upper disk, a sparse 4 GiB file
// (UPPER_SIZE in crates/runtime/src/disks.rs): the write fails inside the guest at that
// size, the host loses at most that much space, and the sandbox (and a neighbour made
// beforehand) keep working.
import { statfsSync, statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Sandbox, SandboxFsOpsError } from "../../src/index.js";
import { cleanup, useTempMsbHome, within } from "../e2e-helpers.js";
import { alive, expectHostUnaffected, expectNeighbourAnswers, rssKiB, watchHost } from "./probe-helpers.js";

const home = useTempMsbHome();
let neighbour: Sandbox | undefined;
let sb: Sandbox | undefined;

/** crates/runtime/src/disks.rs: `const UPPER_SIZE: u64 = 4 << 30;` */
const UPPER_SIZE = 4 * 2 ** 30;
const MiB = 2 ** 20;

beforeAll(async () => {
  neighbour = await Sandbox.builder("disk-neighbour").create();
  await expectNeighbourAnswers(neighbour, "before");
  sb = await Sandbox.builder("disk-victim").create();
});
afterAll(async () => {
  await cleanup(sb, neighbour);
});

const hostFree = () => {
  const s = statfsSync(home());
  return s.bavail * s.bsize;
};

describe("a guest filling its disk", () => {
  it("gets ENOSPC at the upper disk's size; the host loses at most that much; everyone keeps working", async () => {
    const upper = join(sb!.sandboxDir, "upper.ext4");
    const before = statSync(upper);
    expect(before.size).toBe(UPPER_SIZE); // apparent size: the cap
    expect(before.blocks * 512).toBeLessThan(64 * MiB); // sparse: almost nothing allocated yet
    const freeBefore = hostFree();
    const host = watchHost();

    const t0 = Date.now();
    const fill = sb!.execWith("dd", (b) => b.args(["if=/dev/zero", "of=/fill", "bs=1M"]).timeout(110_000));
    // The neighbour answers while the victim writes as fast as it can.
    await new Promise((r) => setTimeout(r, 5000));
    await expectNeighbourAnswers(neighbour!, "during");
    const dd = await fill;
    const fillMs = Date.now() - t0;
    expect(dd.code).toBe(1);
    expect(dd.stdout()).toBe("");
    const m = /^dd: error writing '\/fill': No space left on device\n(\d+)\+0 records in\n(\d+)\+0 records out\n$/.exec(dd.stderr());
    expect(m, dd.stderr()).not.toBeNull();
    const recordsOut = Number(m![2]);
    // Everything the 4 GiB ext4 holds after its metadata and the image's few files.
    expect(recordsOut * MiB).toBeGreaterThan(3.5 * 2 ** 30);
    expect(recordsOut * MiB).toBeLessThan(UPPER_SIZE);
    const sized = await sb!.shell("sync && stat -c %s /fill && df -k / | tail -1");
    const [fileSize, dfLine] = sized.stdout().trim().split("\n");
    expect(Number(fileSize)).toBeGreaterThanOrEqual(recordsOut * MiB);
    expect(Number(fileSize)).toBeLessThan((recordsOut + 1) * MiB);
    expect(dfLine!.split(/\s+/)[3]).toBe("0"); // available

    // Full, a file write through the SDK fails with the guest's errno.
    const e = await sb!.fs().write("/more", "x".repeat(1 << 20)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SandboxFsOpsError);
    expect(e).toMatchObject({ code: "sandboxFsOps", errno: "ENOSPC" });

    // The host: the upper disk grew to at most its cap; the file system lost about that.
    const after = statSync(upper);
    const freeAfter = hostFree();
    expect(after.size).toBe(UPPER_SIZE);
    expect(after.blocks * 512).toBeGreaterThan(recordsOut * MiB);
    expect(after.blocks * 512).toBeLessThanOrEqual(UPPER_SIZE);
    // Other processes share this file system, so its free space moves by itself as well:
    // allow 512 MiB of their noise over the cap.
    expect(freeBefore - freeAfter).toBeLessThan(UPPER_SIZE + 512 * MiB);
    console.log(
      `disk fill: dd wrote ${recordsOut} MiB in ${fillMs} ms, then ENOSPC; upper.ext4 allocated ${((before.blocks * 512) / MiB).toFixed(1)} -> ${((after.blocks * 512) / MiB).toFixed(1)} MiB (cap ${UPPER_SIZE / MiB}); host free space dropped ${((freeBefore - freeAfter) / MiB).toFixed(0)} MiB`,
    );

    // Still usable: it answers, and once the file is gone it can write again.
    expect((await sb!.exec("echo", ["alive"])).stdout()).toBe("alive\n");
    expect((await sb!.shell("rm /fill && echo removed")).stdout()).toBe("removed\n");
    await sb!.fs().write("/more", "after the fill");
    expect(await sb!.fs().readToString("/more")).toBe("after the fill");
    const h = await Sandbox.get("disk-victim");
    expect([h.status, h.runtimePid]).toEqual(["running", sb!.runtimePid]);
    expect(alive(sb!.runtimePid)).toBe(true);
    expect(rssKiB(sb!.runtimePid)).toBeLessThan(64 * 1024);
    await expectNeighbourAnswers(neighbour!, "after");
    expectHostUnaffected(host.stop());

    // It stops cleanly after all that.
    await within(sb!.stop(), 30_000, "stop() after the fill");
    const end = await Sandbox.get("disk-victim");
    expect([end.status, end.exitCode, end.exitReason]).toEqual(["stopped", 0, "stopped"]);
  }, 170_000);
});
