// End-to-end: disk snapshots on real VMs (default busybox image). A stopped sandbox's
// writable disk is captured, new sandboxes boot on copies of it, and each copy is its
// own from then on; a damaged artifact is refused before anything boots.
import { copyFileSync, existsSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { open, truncate } from "node:fs/promises";
import { tmpdir } from "node:os";
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
import { pushFixtures, startRegistry } from "../../../test-vms/registry/index.js";
import { cleanup, removeAllSandboxes, useTempMsbHome } from "./e2e-helpers.js";
import { native } from "../src/native.js";

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

  it("save/load: a default-image snapshot boots on another MSB_HOME; another default image is refused before any boot", async () => {
    const work = mkdtempSync(join(tmpdir(), "msb-snap-arc-"));
    const savedHome = process.env.MSB_HOME;
    try {
      const snap = await Snapshot.open("base");
      expect(snap.image.rootfsSha256).toMatch(/^sha256:[0-9a-f]{64}$/);
      const out = join(work, "base.tar");
      await Snapshot.save("base", out);
      // The holes of the 4 GiB disk are not written out.
      expect(statSync(out).size).toBeLessThan(256 << 20);
      process.env.MSB_HOME = join(work, "home2");
      const h = await Snapshot.load(out);
      expect([h.name, h.digest]).toEqual(["base", snap.digest]);
      expect((await (await h.open()).verify()).upper.kind).toBe("verified");
      const sb = await Sandbox.builder("snap-moved").fromSnapshot("base").create();
      try {
        expect(await read(sb, "/root/state.txt")).toBe("after the snapshot\n");
      } finally {
        await cleanup(sb);
      }
      // The same snapshot on another default image (one byte changed in its boot block).
      const other = join(work, "rootfs.ext4");
      copyFileSync(native().assetPaths().defaultImage, other);
      const fh = await open(other, "r+");
      await fh.write(Buffer.from([0x42]), 0, 1, 0);
      await fh.close();
      process.env.MSB_DEFAULT_IMAGE = other;
      const e = await Sandbox.builder("snap-other-image").fromSnapshot("base").create().catch((x: unknown) => x);
      expect(e).toBeInstanceOf(SnapshotIntegrityError);
      expect((e as Error).message).toContain("another embedded default image");
      await expect(Sandbox.get("snap-other-image")).rejects.toMatchObject({ code: "sandboxNotFound" });
    } finally {
      delete process.env.MSB_DEFAULT_IMAGE;
      if (process.env.MSB_HOME !== savedHome) await removeAllSandboxes();
      process.env.MSB_HOME = savedHome;
      rmSync(work, { recursive: true, force: true });
    }
  });

  it("save withImage: an OCI snapshot loads and boots on another MSB_HOME after its registry is gone", async () => {
    const work = mkdtempSync(join(tmpdir(), "msb-snap-oci-"));
    const savedHome = process.env.MSB_HOME;
    const reg = await startRegistry("plain");
    let regStopped = false;
    try {
      await pushFixtures(reg, ["busybox:latest"]);
      const sb = await Sandbox.builder("snap-oci").image(`${reg.host}/busybox:latest`).create();
      try {
        expect((await sb.shell("echo from-oci > /home/app/mark.txt")).code).toBe(0);
      } finally {
        await sb.stop();
      }
      const snap = await Snapshot.builder("oci-base").fromSandbox("snap-oci").recordIntegrity().create();
      expect(snap.imageManifestDigest).toMatch(/^sha256:/);
      const bare = join(work, "bare.tar");
      const full = join(work, "full.tar");
      await Snapshot.save("oci-base", bare);
      await Snapshot.save("oci-base", full, { withImage: true });
      expect(statSync(full).size).toBeGreaterThan(statSync(bare).size + 100_000); // the image's layers
      await reg.stop();
      regStopped = true;
      process.env.MSB_HOME = join(work, "home2");
      // Without its image, the new home cannot boot it (the registry is gone).
      await Snapshot.load(bare);
      const none = await Sandbox.builder("snap-oci-bare").fromSnapshot("oci-base").create().catch((x: unknown) => x);
      if (none instanceof Sandbox) await cleanup(none);
      expect(none).not.toBeInstanceOf(Sandbox);
      await Snapshot.remove("oci-base");
      await Sandbox.remove("snap-oci-bare").catch(() => undefined);
      // With it: loaded into the image cache, booted offline, the file is there.
      const h = await Snapshot.load(full);
      expect((await (await h.open()).verify()).upper.kind).toBe("verified");
      const moved = await Sandbox.builder("snap-oci-moved").fromSnapshot("oci-base").create();
      try {
        expect((await moved.exec("cat", ["/home/app/mark.txt"])).stdout()).toBe("from-oci\n");
        expect((await moved.exec("id", ["-u"])).stdout()).toBe("1000\n");
      } finally {
        await cleanup(moved);
      }
    } finally {
      if (!regStopped) await reg.stop();
      if (process.env.MSB_HOME !== savedHome) await removeAllSandboxes();
      process.env.MSB_HOME = savedHome;
      rmSync(work, { recursive: true, force: true });
      await Snapshot.remove("oci-base").catch(() => undefined);
    }
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
