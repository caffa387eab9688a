// Snapshot archives without a VM: save/load round trips of hand-made artifacts (sparse
// disks keep their holes), and load refusing hostile archives before anything is
// written. Booting a loaded snapshot on another MSB_HOME is in snapshot.e2e.test.ts.
import { createWriteStream, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import tar from "tar-stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { InvalidConfigError, Snapshot, SnapshotAlreadyExistsError, SnapshotIntegrityError } from "../src/index.js";

let home = "";
let work = "";
const saved = process.env.MSB_HOME;
beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), "msb-snaparc-"));
  work = mkdtempSync(join(tmpdir(), "msb-snaparc-work-"));
  process.env.MSB_HOME = home;
});
afterEach(() => {
  if (saved === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = saved;
  rmSync(home, { recursive: true, force: true });
  rmSync(work, { recursive: true, force: true });
});

const MiB = 1 << 20;
const SIZE = 8 * MiB;

const manifest = (name: string, size = SIZE) => ({
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

/** An artifact whose 8 MiB disk has data at 0, 1 MiB and 5 MiB + 3, holes elsewhere. */
async function artifact(name: string): Promise<Buffer> {
  const dir = join(home, "snapshots", name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "snapshot.json"), JSON.stringify(manifest(name)));
  const disk = join(dir, "upper.ext4");
  writeFileSync(disk, "");
  truncateSync(disk, SIZE);
  const fh = await open(disk, "r+");
  for (const [at, fill] of [[0, 0x11], [MiB, 0x22], [5 * MiB + 3, 0x33]] as const) await fh.write(Buffer.alloc(64 * 1024, fill), 0, 64 * 1024, at);
  await fh.close();
  return readFileSync(disk);
}

type Entry = { name: string; body?: Buffer | string; type?: "file" | "symlink" | "directory" | "fifo"; linkname?: string; size?: number };
async function makeTar(path: string, entries: Entry[]): Promise<void> {
  const pack = tar.pack();
  const done = pipeline(pack, createWriteStream(path));
  for (const e of entries) {
    await new Promise<void>((res, rej) =>
      pack.entry({ name: e.name, type: e.type ?? "file", ...(e.linkname ? { linkname: e.linkname } : {}), ...(e.size !== undefined ? { size: e.size } : {}) }, e.body ?? "", (err) => (err ? rej(err) : res())),
    );
  }
  pack.finalize();
  await done;
}

const header = (over: Record<string, unknown> = {}, m: unknown = manifest("hostile")) =>
  JSON.stringify({ format: "msb-snapshot-archive", version: 1, manifest: m, upper: { size: SIZE, extents: [[0, 4]] }, image: null, ...over });

describe("snapshot archives", () => {
  it("save writes the disk's data without its holes; load on another home gives the same artifact, bytes and holes", async () => {
    const bytes = await artifact("base");
    const snap = await Snapshot.open("base");
    const out = join(work, "base.tar");
    await Snapshot.save("base", out);
    const size = statSync(out).size;
    // 3 × 64 KiB of data (in at most 4 extents of 4 KiB granularity) plus tar headers: far below 8 MiB.
    expect(size).toBeGreaterThan(3 * 64 * 1024);
    expect(size).toBeLessThan(512 * 1024);
    // `out` exists now: saving again is refused, the archive is untouched.
    const again = await Snapshot.save("base", out).catch((x: unknown) => x);
    expect([again instanceof InvalidConfigError && again.field, statSync(out).size]).toEqual(["out", size]);

    const other = mkdtempSync(join(tmpdir(), "msb-snaparc-other-"));
    try {
      process.env.MSB_HOME = other;
      const h = await Snapshot.load(out);
      expect([h.name, h.digest, h.path, h.imageRef, h.sizeBytes]).toEqual(["base", snap.digest, join(other, "snapshots", "base"), snap.imageRef, BigInt(SIZE)]);
      const disk = join(other, "snapshots", "base", "upper.ext4");
      expect(readFileSync(disk).equals(bytes)).toBe(true);
      expect(statSync(disk).blocks * 512).toBeLessThan(1 * MiB); // still sparse
      expect((await Snapshot.open("base")).labels).toEqual([["k", "v"]]);
      // The same archive again: the name is taken.
      await expect(Snapshot.load(out)).rejects.toBeInstanceOf(SnapshotAlreadyExistsError);
      // Into another directory (`dest`), by digest as the source.
      const dest = join(work, "elsewhere");
      process.env.MSB_HOME = home;
      const out2 = join(work, "by-digest.tar");
      await Snapshot.save(snap.digest, out2);
      const h2 = await Snapshot.load(out2, dest);
      expect([h2.path, h2.digest]).toEqual([join(dest, "base"), snap.digest]);
    } finally {
      process.env.MSB_HOME = home;
      rmSync(other, { recursive: true, force: true });
    }
  });

  it("save checks its arguments", async () => {
    await artifact("base");
    const cases: [() => Promise<unknown>, string][] = [
      [() => Snapshot.save("base", ""), "out"],
      [() => Snapshot.save("base", join(work, "no-such-dir", "x.tar")), "out"],
      [() => Snapshot.save("base", join(work, "x.tar"), { withImage: "yes" } as never), "opts"],
      [() => Snapshot.save("base", join(work, "x.tar"), { compress: true } as never), "opts"],
      [() => Snapshot.save("../base", join(work, "x.tar")), "pathOrName"],
      [() => Snapshot.load(""), "archive"],
      [() => Snapshot.load(join(work, "missing.tar")), "archive"],
    ];
    for (const [f, field] of cases) {
      const e = await f().catch((x: unknown) => x);
      expect([field, e instanceof InvalidConfigError && e.field]).toEqual([field, field]);
    }
    expect(readdirSync(work)).toEqual([]);
  });

  it("load refuses hostile archives with SnapshotIntegrityError, and writes nothing", async () => {
    const data4 = Buffer.from("abcd");
    const cases: [string, Entry[], RegExp][] = [
      ["not a tar", [], /checksum/],
      ["empty tar", [], /no msb-snapshot\.json/],
      ["path escape", [{ name: "msb-snapshot.json", body: header() }, { name: "upper.data", body: data4 }, { name: "../../escape", body: "x" }], /not part of a snapshot archive|escape|outside|\.\./],
      ["absolute path", [{ name: "msb-snapshot.json", body: header() }, { name: "upper.data", body: data4 }, { name: "/etc/cron.d/x", body: "x" }], /not part of|absolute|outside|\//],
      ["symlink", [{ name: "msb-snapshot.json", body: header() }, { name: "upper.data", type: "symlink", linkname: "/etc/shadow" }], /link/],
      ["internal link", [{ name: "msb-snapshot.json", body: header() }, { name: "x", body: data4 }, { name: "upper.data", type: "symlink", linkname: "x" }], /link|not part/],
      ["fifo", [{ name: "msb-snapshot.json", body: header() }, { name: "upper.data", type: "fifo" }], /fifo|special/],
      ["header not JSON", [{ name: "msb-snapshot.json", body: "{nope" }, { name: "upper.data", body: data4 }], /not valid JSON/],
      ["header too big", [{ name: "msb-snapshot.json", body: " ".repeat(MiB + 1) }, { name: "upper.data", body: data4 }], /over 1 MiB/],
      ["wrong format", [{ name: "msb-snapshot.json", body: header({ format: "docker" }) }, { name: "upper.data", body: data4 }], /format/],
      ["name escape", [{ name: "msb-snapshot.json", body: header({}, manifest("../../evil")) }, { name: "upper.data", body: data4 }], /manifest\.name/],
      ["dot name", [{ name: "msb-snapshot.json", body: header({}, manifest(".hidden")) }, { name: "upper.data", body: data4 }], /manifest\.name/],
      ["size mismatch", [{ name: "msb-snapshot.json", body: header({ upper: { size: SIZE * 2, extents: [[0, 4]] } }) }, { name: "upper.data", body: data4 }], /its manifest says/],
      ["extent past the end", [{ name: "msb-snapshot.json", body: header({ upper: { size: SIZE, extents: [[SIZE - 2, 4]] } }) }, { name: "upper.data", body: data4 }], /past its size/],
      ["overlapping extents", [{ name: "msb-snapshot.json", body: header({ upper: { size: SIZE, extents: [[8, 2], [9, 2]] } }) }, { name: "upper.data", body: data4 }], /overlap/],
      ["negative extent", [{ name: "msb-snapshot.json", body: header({ upper: { size: SIZE, extents: [[-4, 4]] } }) }, { name: "upper.data", body: data4 }], /upper\.extents/],
      ["data too short", [{ name: "msb-snapshot.json", body: header({ upper: { size: SIZE, extents: [[0, 8]] } }) }, { name: "upper.data", body: data4 }], /add up to 8/],
      ["no data", [{ name: "msb-snapshot.json", body: header() }], /upper\.data is missing/],
      ["image named, absent", [{ name: "msb-snapshot.json", body: header({ image: { file: "image.tar", reference: "busybox:latest" } }) }, { name: "upper.data", body: data4 }], /no image\.tar/],
      ["disk over 1 TiB", [{ name: "msb-snapshot.json", body: header({ upper: { size: 2 ** 41, extents: [] } }, manifest("hostile", 2 ** 41)) }, { name: "upper.data", body: "" }], /upper\.size/],
    ];
    for (const [what, entries, why] of cases) {
      const file = join(work, "hostile.tar");
      if (what === "not a tar") writeFileSync(file, Buffer.alloc(4096, 0x41));
      else await makeTar(file, entries);
      const e = await Snapshot.load(file).catch((x: unknown) => x);
      expect([what, e instanceof SnapshotIntegrityError, String((e as Error).message)]).toEqual([what, true, expect.stringMatching(why)]);
      rmSync(file);
    }
    // A valid archive cut short: refused too.
    await artifact("base");
    const out = join(work, "base.tar");
    await Snapshot.save("base", out);
    const cut = join(work, "cut.tar");
    writeFileSync(cut, readFileSync(out).subarray(0, Math.floor(statSync(out).size / 2)));
    rmSync(join(home, "snapshots", "base"), { recursive: true });
    expect(await Snapshot.load(cut).catch((x: unknown) => x)).toBeInstanceOf(SnapshotIntegrityError);
    // Nothing was written: no artifact, no temporary directory.
    expect(readdirSync(join(home, "snapshots"))).toEqual([]);
  });
});
