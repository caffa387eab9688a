// Disk snapshot artifacts without a VM: what open/list/get/remove accept and refuse
// (hand-made artifacts in a temp MSB_HOME), and the builder's checks before anything
// is read. The capture and boot paths are in snapshot.e2e.test.ts.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, existsSync, truncateSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { InvalidConfigError, Snapshot, SnapshotIntegrityError, SnapshotNotFoundError, UnsupportedError } from "../src/index.js";

let home = "";
const saved = process.env.MSB_HOME;
beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), "msb-snap-"));
  process.env.MSB_HOME = home;
});
afterEach(() => {
  if (saved === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = saved;
  rmSync(home, { recursive: true, force: true });
});

const manifest = (name: string, size = 8192) => ({
  schema: 1,
  name,
  scope: "disk",
  parent: null,
  image: { ref: "127.0.0.1:5000/busybox:latest", kind: "oci", manifestDigest: `sha256:${"a".repeat(64)}` },
  state: { kind: "file", format: "raw", fstype: "ext4", upper: { file: "upper.ext4", sizeBytes: size, integrity: null } },
  createdAt: "2026-12-03T12:00:00.000Z",
  labels: [["k", "v"]],
  sourceSandbox: "box",
});

function artifact(name: string, m: unknown = manifest(name), opts: { upper?: "file" | "none" | "symlink"; size?: number } = {}): string {
  const dir = join(home, "snapshots", name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "snapshot.json"), typeof m === "string" ? m : JSON.stringify(m));
  if ((opts.upper ?? "file") === "file") {
    writeFileSync(join(dir, "upper.ext4"), "");
    truncateSync(join(dir, "upper.ext4"), opts.size ?? 8192);
  } else if (opts.upper === "symlink") {
    symlinkSync("/etc/passwd", join(dir, "upper.ext4"));
  }
  return dir;
}

describe("snapshot artifacts", () => {
  it("open reads the manifest's fields; the digest is that of its canonical form, whatever the key order on disk", async () => {
    artifact("one");
    const s = await Snapshot.open("one");
    expect([s.name, s.imageRef, s.imageManifestDigest, s.sizeBytes, s.sourceSandbox, s.scope, s.parent]).toEqual([
      "one", "127.0.0.1:5000/busybox:latest", `sha256:${"a".repeat(64)}`, 8192n, "box", "disk", null,
    ]);
    expect(s.labels).toEqual([["k", "v"]]);
    const m = manifest("two") as Record<string, unknown>;
    const reversed = Object.fromEntries(Object.entries(m).reverse());
    artifact("two", m);
    const a = (await Snapshot.open("two")).digest;
    rmSync(join(home, "snapshots", "two"), { recursive: true });
    artifact("two", reversed);
    expect((await Snapshot.open("two")).digest).toBe(a);
    expect(a).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect((await Snapshot.get(a)).name).toBe("two");
    await expect(Snapshot.get(`sha256:${"0".repeat(64)}`)).rejects.toBeInstanceOf(SnapshotNotFoundError);
  });

  it("damaged artifacts are SnapshotIntegrityError naming what is wrong, and are not listed", async () => {
    const cases: [string, () => void, RegExp][] = [
      ["garbage", () => artifact("garbage", "{not json"), /not valid JSON/],
      ["schema", () => artifact("schema", { ...manifest("schema"), schema: 2 }), /schema/],
      ["escape", () => artifact("escape", { ...manifest("escape"), state: { ...manifest("escape").state, upper: { file: "../../etc/passwd", sizeBytes: 1, integrity: null } } }), /state\.upper\.file/],
      ["linked-disk", () => artifact("linked-disk", manifest("linked-disk"), { upper: "symlink" }), /not a regular file/],
      ["no-disk", () => artifact("no-disk", manifest("no-disk"), { upper: "none" }), /missing/],
      ["truncated", () => artifact("truncated", manifest("truncated", 8192), { size: 4096 }), /4096 bytes, the manifest says 8192/],
      ["huge", () => artifact("huge", " ".repeat(70 * 1024)), /over 64 KiB/],
    ];
    for (const [name, make, why] of cases) {
      make();
      const e = await Snapshot.open(name).catch((x: unknown) => x);
      expect([name, e instanceof SnapshotIntegrityError, String((e as Error).message)]).toEqual([name, true, expect.stringMatching(why)]);
    }
    // A manifest that is a link is not followed.
    const dir = join(home, "snapshots", "linked-manifest");
    mkdirSync(dir, { recursive: true });
    symlinkSync(join(artifact("target"), "snapshot.json"), join(dir, "snapshot.json"));
    await expect(Snapshot.open("linked-manifest")).rejects.toBeInstanceOf(SnapshotNotFoundError);
    // Only the good one is listed; dot entries (temporaries) are skipped.
    mkdirSync(join(home, "snapshots", ".tmp-partial"));
    expect((await Snapshot.list()).map((h) => h.name)).toEqual(["target"]);
    expect(await Snapshot.reindex()).toBe(1);
    // Damaged ones can still be removed.
    await Snapshot.remove("truncated");
    expect(existsSync(join(home, "snapshots", "truncated"))).toBe(false);
    await expect(Snapshot.remove("truncated")).rejects.toBeInstanceOf(SnapshotNotFoundError);
    await expect(Snapshot.open("nothing-here")).rejects.toBeInstanceOf(SnapshotNotFoundError);
  });

  it("the builder checks its options before touching anything", async () => {
    for (const bad of ["../up", "a/b", ".dot", "", "x".repeat(64)]) {
      const e = await Snapshot.builder(bad).fromSandbox("box").create().catch((x: unknown) => x);
      expect([bad, e instanceof InvalidConfigError && e.field]).toEqual([bad, "name"]);
    }
    const cases: [() => Promise<unknown>, string][] = [
      [() => Snapshot.builder("s").create(), "fromSandbox"],
      [() => Snapshot.builder("s").fromSandbox("../box").create(), "fromSandbox"],
      [() => Snapshot.builder("s").fromSandbox("box").label("a=b", "v").create(), "label"],
      [() => Snapshot.builder("s").fromSandbox("box").label("k", "v\0").create(), "label.k"],
      [() => Snapshot.open("../../etc"), "pathOrName"],
    ];
    for (const [f, field] of cases) {
      const e = await f().catch((x: unknown) => x);
      expect([field, e instanceof InvalidConfigError && e.field]).toEqual([field, field]);
    }
    await expect(Snapshot.builder("s").fromSandbox("box").resumable().create()).rejects.toBeInstanceOf(UnsupportedError);
    expect(Snapshot.builder("s").fromSandbox("box").label("a", "1").force().recordIntegrity().build()).toEqual({
      name: "s", sourceSandbox: "box", destDir: null, labels: [{ key: "a", value: "1" }], force: true, recordIntegrity: true, resumable: false,
    });
    expect(existsSync(join(home, "snapshots"))).toBe(false);
  });
});
