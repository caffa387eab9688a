// End-to-end: disk snapshots on real VMs (default busybox image). A stopped sandbox's
// writable disk is captured, new sandboxes boot on copies of it, and each copy is its
// own from then on; a damaged artifact is refused before anything boots.
import { existsSync } from "node:fs";
import { open, truncate } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  InvalidConfigError,
  Sandbox,
  SandboxStillRunningError,
  Snapshot,
  SnapshotAlreadyExistsError,
  SnapshotIntegrityError,
  SnapshotNotFoundError,
} from "../src/index.js";
import { cleanup, useTempMsbHome } from "./e2e-helpers.js";

const home = useTempMsbHome();
let source: Sandbox | undefined;

const read = async (sb: Sandbox, path: string): Promise<string> => (await sb.shell(`cat ${path} 2>/dev/null || echo missing`)).stdout();

beforeAll(async () => {
  source = await Sandbox.builder("snap-source").create();
  await source.fs().write("/root/state.txt", "before the snapshot\n");
});
afterAll(async () => {
  await cleanup(source);
});

describe("disk snapshots", () => {
  it("a running sandbox is refused; a stopped one is captured with the reference's fields", async () => {
    const running = await Sandbox.get("snap-source");
    const e = await running.snapshot("early").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SandboxStillRunningError);
    expect((e as Error).message).toContain("stop it first");
    await expect(Snapshot.open("early")).rejects.toBeInstanceOf(SnapshotNotFoundError);

    await source!.stop();
    const t0 = Date.now();
    const snap = await (await Sandbox.get("snap-source")).snapshot("base");
    const ms = Date.now() - t0;
    console.log(`snapshot of a stopped sandbox (4 GiB sparse writable disk): ${ms} ms`);
    expect(snap.name).toBe("base");
    expect(snap.path).toBe(join(home(), "snapshots", "base"));
    expect(snap.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect([snap.scope, snap.format, snap.fstype, snap.parent, snap.sourceSandbox]).toEqual(["disk", "raw", "ext4", null, "snap-source"]);
    expect(snap.sizeBytes).toBe(4n << 30n);
    expect(snap.imageRef).toBe(""); // the embedded default image
    expect(snap.state.upper.integrity).toBeNull();
    expect(Math.abs(Date.parse(snap.createdAt) - Date.now())).toBeLessThan(60_000);
    expect(await snap.verify()).toEqual({ digest: snap.digest, path: snap.path, upper: { kind: "notRecorded" } });

    const listed = await Snapshot.list();
    expect(listed.map((h) => [h.name, h.digest, h.stateKind, h.availability])).toEqual([["base", snap.digest, "file", "available"]]);
    expect((await Snapshot.get(snap.digest)).name).toBe("base");
    expect((await Snapshot.get("base")).digest).toBe(snap.digest);
  });

  it("fromSnapshot boots on a copy: it sees the captured files, and neither side sees the other's later writes", async () => {
    const child = await Sandbox.builder("snap-child").fromSnapshot("base").create();
    try {
      expect(await read(child, "/root/state.txt")).toBe("before the snapshot\n");
      await child.fs().write("/root/child.txt", "only in the child\n");
      // The source, started again, goes on from its own disk.
      const src = await Sandbox.start("snap-source");
      try {
        expect(await read(src, "/root/child.txt")).toBe("missing\n");
        await src.fs().write("/root/state.txt", "after the snapshot\n");
      } finally {
        await src.stop();
      }
      expect(await read(child, "/root/state.txt")).toBe("before the snapshot\n");
    } finally {
      await child.stop();
    }
    // A second copy from the same snapshot sees neither the child's nor the source's later writes.
    const again = await Sandbox.builder("snap-child2").fromSnapshot("base").create();
    try {
      expect([await read(again, "/root/state.txt"), await read(again, "/root/child.txt")]).toEqual(["before the snapshot\n", "missing\n"]);
    } finally {
      await again.stop();
    }
    // And the child keeps its own disk across a restart.
    const back = await Sandbox.start("snap-child");
    try {
      expect(await read(back, "/root/child.txt")).toBe("only in the child\n");
    } finally {
      await back.stop();
    }
  });

  it("names, conflicts, force(), labels and integrity", async () => {
    await expect(Snapshot.builder("base").fromSandbox("snap-source").create()).rejects.toBeInstanceOf(SnapshotAlreadyExistsError);
    const old = await Snapshot.open("base");
    const snap = await Snapshot.builder("base").fromSandbox("snap-source").force().recordIntegrity().label("stage", "two").label("a", "1").create();
    expect(snap.digest).not.toBe(old.digest);
    expect(snap.labels).toEqual([["a", "1"], ["stage", "two"]]);
    const report = await snap.verify();
    expect(report.upper).toEqual({ kind: "verified", algorithm: "msb-sparse-sha256-v1", digest: snap.state.upper.integrity!.digest });
    // The forced snapshot is of the source as it is now.
    const c = await Sandbox.builder("snap-child3").fromSnapshot("base").create();
    try {
      expect(await read(c, "/root/state.txt")).toBe("after the snapshot\n");
    } finally {
      await c.stop();
    }

    for (const bad of ["../x", "a/b", ".hidden", ""]) {
      const e = await Snapshot.builder(bad).fromSandbox("snap-source").create().catch((x: unknown) => x);
      expect([bad, e instanceof InvalidConfigError, (e as InvalidConfigError).field]).toEqual([bad, true, "name"]);
    }
    const noSource = await Snapshot.builder("nosrc").create().catch((x: unknown) => x);
    expect([noSource instanceof InvalidConfigError, (noSource as InvalidConfigError).field]).toEqual([true, "fromSandbox"]);
    const both = await Sandbox.builder("both").image("/nonexistent").fromSnapshot("base").create().catch((x: unknown) => x);
    expect([both instanceof InvalidConfigError, (both as InvalidConfigError).field]).toEqual([true, "fromSnapshot"]);
    await expect(Sandbox.builder("nosnap").fromSnapshot("no-such-snapshot").create()).rejects.toBeInstanceOf(SnapshotNotFoundError);
  });

  it("a damaged artifact: a changed byte fails verify(); a truncated disk is refused by open() and fromSnapshot before any boot", async () => {
    const snap = await Snapshot.open("base");
    // Byte 0 is in ext4's unused boot block: the filesystem stays valid, the content changes.
    const fh = await open(snap.upperPath, "r+");
    await fh.write(Buffer.from([0x42]), 0, 1, 0);
    await fh.close();
    await expect(snap.verify()).rejects.toBeInstanceOf(SnapshotIntegrityError);

    await truncate(snap.upperPath, 1 << 20);
    await expect(Snapshot.open("base")).rejects.toBeInstanceOf(SnapshotIntegrityError);
    const e = await Sandbox.builder("from-damaged").fromSnapshot("base").create().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SnapshotIntegrityError);
    expect((e as Error).message).toContain("truncated or replaced");
    await expect(Sandbox.get("from-damaged")).rejects.toMatchObject({ code: "sandboxNotFound" });
    // A damaged artifact is not listed, and can still be removed.
    expect(await Snapshot.list()).toEqual([]);
    await Snapshot.remove("base");
    expect(existsSync(snap.path)).toBe(false);
    await expect(Snapshot.remove("base")).rejects.toBeInstanceOf(SnapshotNotFoundError);
  });
});
