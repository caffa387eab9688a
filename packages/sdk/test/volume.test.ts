// Volumes without a VM: the builder's validation, create/get/list/remove on a temporary
// $MSB_HOME, disk volumes, VolumeFs, and a hostile volume directory (links planted by a
// "guest" pointing outside) that VolumeFs must never follow.
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  InvalidConfigError,
  OutputLimitError,
  SandboxFsOpsError,
  UnsupportedError,
  Volume,
  VolumeAlreadyExistsError,
  VolumeBuilder,
  VolumeHandle,
  VolumeNotFoundError,
} from "../src/index.js";
import { setNativeBinding, type NativeBinding } from "../src/native.js";
import { checkNamedVolumesMountable } from "../src/volume.js";
import { volumePathComponents } from "../src/volume-fs.js";

let home: string;
let outside: string;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), "msb-vol-home-"));
  outside = mkdtempSync(join(tmpdir(), "msb-vol-outside-"));
  writeFileSync(join(outside, "secret"), "do not touch");
  process.env.MSB_HOME = home;
  // No sandboxes (remove's in-use check asks the state store).
  setNativeBinding({ listSandboxes: async () => [] } as unknown as NativeBinding);
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
  rmSync(home, { recursive: true, force: true });
  rmSync(outside, { recursive: true, force: true });
});

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error("expected a rejection");
    },
    (e: unknown) => e,
  );
}

async function fsErrno(p: Promise<unknown>): Promise<string> {
  const e = await rejection(p);
  expect(e).toBeInstanceOf(SandboxFsOpsError);
  return (e as SandboxFsOpsError).errno;
}

function outsideUntouched(): void {
  expect(readdirSync(outside)).toEqual(["secret"]);
  expect(readFileSync(join(outside, "secret"), "utf8")).toBe("do not touch");
}

describe("volume names and builder validation", () => {
  it.each(["a/b", "..", ".", "", ".meta", "../x", "x/..", "-x", "a\0b", "a b"])("name %j is InvalidConfigError (field name)", async (name) => {
    const e = await rejection(Volume.builder(name).create());
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect((e as InvalidConfigError).field).toBe("name");
    expect((e as InvalidConfigError).code).toBe("invalidConfig");
    for (const p of [Volume.get(name), Volume.remove(name)]) {
      const g = await rejection(p);
      expect(g).toBeInstanceOf(InvalidConfigError);
      expect((g as InvalidConfigError).field).toBe("name");
    }
    // Nothing was made anywhere.
    expect(existsSync(join(home, "volumes")) ? readdirSync(join(home, "volumes")) : []).toEqual([]);
  });

  it("checks kind-specific options, labels and sizes", () => {
    const field = (f: () => unknown): string => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(InvalidConfigError);
        return (e as InvalidConfigError).field;
      }
      throw new Error("expected InvalidConfigError");
    };
    expect(field(() => Volume.builder("v").size(10).build())).toBe("size");
    expect(field(() => Volume.builder("v").disk().build())).toBe("size");
    expect(field(() => Volume.builder("v").disk().size(0).build())).toBe("size");
    expect(field(() => Volume.builder("v").disk().size(1.5).build())).toBe("size");
    expect(field(() => Volume.builder("v").disk().size(16).quota(10).build())).toBe("quota");
    expect(field(() => Volume.builder("v").quota(-1).build())).toBe("quota");
    expect(field(() => Volume.builder("v").label("", "x").build())).toBe("label");
    expect(field(() => Volume.builder("v").label("a=b", "x").build())).toBe("label");
    expect(field(() => Volume.builder("v").label("k", "a\0b").build())).toBe("label");
    expect(field(() => Volume.builder("v").disk().size(8).format("vmdk" as "raw").build())).toBe("format");
    expect(Volume.builder("v").quota(100).label("team", "a").label("team", "b").build()).toEqual({
      name: "v",
      kind: "dir",
      quotaMib: 100,
      labels: { team: "b" },
    });
    expect(new VolumeBuilder("d").disk().size(8).build()).toEqual({ name: "d", kind: "disk", capacityMib: 8, format: "raw", labels: {} });
  });

  it("volume paths: .. is InvalidConfigError, the root is [] ", () => {
    expect(volumePathComponents("path", "")).toEqual([]);
    expect(volumePathComponents("path", "/")).toEqual([]);
    expect(volumePathComponents("path", "/a//./b/")).toEqual(["a", "b"]);
    for (const bad of ["..", "a/../b", "../../etc/passwd", "a\0"]) {
      expect(() => volumePathComponents("path", bad)).toThrow(InvalidConfigError);
    }
  });
});

describe("Volume lifecycle", () => {
  it("create, get, list, remove a directory volume", async () => {
    const before = Date.now();
    const v = await Volume.builder("data").quota(256).label("team", "infra").create();
    expect(v.name).toBe("data");
    expect(v.path).toBe(join(home, "volumes", "data"));
    expect(statSync(v.path).isDirectory()).toBe(true);
    expect(existsSync(join(home, "volumes", ".meta", "data.json"))).toBe(true);

    const again = await rejection(Volume.builder("data").create());
    expect(again).toBeInstanceOf(VolumeAlreadyExistsError);
    expect((again as VolumeAlreadyExistsError).code).toBe("volumeAlreadyExists");

    await v.fs().write("a.txt", "x".repeat(10_000));
    const h = await Volume.get("data");
    expect(h).toBeInstanceOf(VolumeHandle);
    expect(h.name).toBe("data");
    expect(h.kind).toBe("dir");
    expect(h.isDefault).toBe(false);
    expect(h.quotaMib).toBe(256);
    expect(h.capacityBytes).toBeNull();
    expect(h.diskFormat).toBeNull();
    expect(h.labels).toEqual([["team", "infra"]]);
    expect(h.createdAt!.getTime()).toBeGreaterThanOrEqual(before - 1000);
    expect(h.usedBytes).toBeGreaterThanOrEqual(10_000);

    await Volume.builder("other").create();
    // A directory a sandbox made on first use of a name (no metadata) is a volume too.
    mkdirSync(join(home, "volumes", "implicit"));
    const names = (await Volume.list()).map((x) => x.name).sort();
    expect(names).toEqual(["data", "implicit", "other"]);
    expect((await Volume.get("implicit")).labels).toEqual([]);

    await h.remove();
    expect(existsSync(join(home, "volumes", "data"))).toBe(false);
    expect(existsSync(join(home, "volumes", ".meta", "data.json"))).toBe(false);
    const gone = await rejection(Volume.get("data"));
    expect(gone).toBeInstanceOf(VolumeNotFoundError);
    expect((gone as VolumeNotFoundError).code).toBe("volumeNotFound");
    expect(await rejection(Volume.remove("data"))).toBeInstanceOf(VolumeNotFoundError);
    expect(await rejection(v.fs().read("a.txt"))).toBeInstanceOf(VolumeNotFoundError);
    // The name is free again.
    await Volume.builder("data").create();
    const def = await rejection(Volume.getDefault());
    expect(def).toBeInstanceOf(UnsupportedError);
    expect((def as UnsupportedError).code).toBe("unsupported");
  });

  it("disk volumes: a raw or qcow2 image with ext4 inside, metadata; mounting needs the image", async () => {
    const raw = await Volume.builder("disk1").disk().size(16).label("k", "v").create();
    const img = join(home, "volumes", "disk1", "disk.raw");
    expect(raw.kind).toBe("disk");
    expect(raw.diskPath).toBe(img);
    expect(statSync(img).size).toBe(16 * 1024 * 1024);
    const sb = readFileSync(img).subarray(1024 + 56, 1024 + 58);
    expect(sb.readUInt16LE(0)).toBe(0xef53); // the ext4 superblock's magic
    const h = await Volume.get("disk1");
    expect([h.kind, h.capacityBytes, h.diskFormat, h.diskFstype, h.quotaMib]).toEqual(["disk", 16 * 1024 * 1024, "raw", "ext4", null]);
    expect(h.labels).toEqual([["k", "v"]]);
    // Sparse: far less than its capacity on the host disk.
    expect(h.usedBytes).toBeLessThan(16 * 1024 * 1024);

    const q = await Volume.builder("disk2").disk().size(8).format("qcow2").create();
    expect(readFileSync(q.diskPath!).subarray(0, 4)).toEqual(Buffer.from([0x51, 0x46, 0x49, 0xfb])); // "QFI\xfb"
    expect((await Volume.get("disk2")).diskFormat).toBe("qcow2");
    expect(readdirSync(join(home, "volumes", "disk2"))).toEqual(["disk.qcow2"]);

    expect(await rejection(Volume.builder("disk1").disk().size(8).create())).toBeInstanceOf(VolumeAlreadyExistsError);
    expect(await rejection(Volume.builder("disk1").create())).toBeInstanceOf(VolumeAlreadyExistsError);

    await Volume.builder("dirvol").create();
    await checkNamedVolumesMountable([
      { kind: "named", source: "disk1", guestPath: "/d" },
      { kind: "named", source: "dirvol", guestPath: "/a" },
      { kind: "named", source: "not-made-yet", guestPath: "/b" },
    ]);
    // A disk volume whose image is gone (or was swapped for a link) is refused before boot.
    rmSync(img);
    symlinkSync(join(outside, "secret"), img);
    const mount = await rejection(checkNamedVolumesMountable([{ kind: "named", source: "disk1", guestPath: "/data" }]));
    expect(mount).toBeInstanceOf(InvalidConfigError);
    expect((mount as InvalidConfigError).field).toBe("volume");
    expect((mount as Error).message).toMatch(/disk volume whose image .* is missing/);

    await Volume.remove("disk1");
    await Volume.remove("disk2");
    expect(existsSync(join(home, "volumes", "disk1"))).toBe(false);
    expect(readdirSync(join(home, "volumes", ".tmp"))).toEqual([]);
  });

  it("of two creates of one name at once, exactly one wins", async () => {
    for (const disk of [false, true]) {
      const name = disk ? "race-disk" : "race-dir";
      const make = () => (disk ? Volume.builder(name).disk().size(8) : Volume.builder(name)).create();
      const results = await Promise.allSettled([make(), make(), make()]);
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      for (const r of results) if (r.status === "rejected") expect(r.reason).toBeInstanceOf(VolumeAlreadyExistsError);
      expect((await Volume.get(name)).kind).toBe(disk ? "disk" : "dir");
    }
    expect(readdirSync(join(home, "volumes", ".tmp"))).toEqual([]);
  });

  it("a remove sweeps stale leftovers of a crashed remove or create from volumes/.tmp (links inside not followed)", async () => {
    const tmp = join(home, "volumes", ".tmp");
    const stale = `${Date.now() - 2 * 60 * 60 * 1000}.abc.old.removed`;
    const fresh = `${Date.now() - 60_000}.def.scratch`;
    mkdirSync(join(tmp, stale, "sub"), { recursive: true });
    symlinkSync(outside, join(tmp, stale, "sub", "out"));
    mkdirSync(join(tmp, fresh));
    mkdirSync(join(tmp, "not-ours"));
    await Volume.builder("v1").create();
    await Volume.remove("v1");
    expect(readdirSync(tmp).sort()).toEqual([fresh, "not-ours"]); // recent: maybe a create at work
    outsideUntouched();
  });

  it("refuses to remove a volume a live sandbox mounts", async () => {
    await Volume.builder("busy").create();
    const record = (name: string, status: string) => ({
      name,
      status,
      configJson: JSON.stringify({ volumes: [{ guestPath: "/d", kind: "named", source: "busy", readonly: false, sizeMiB: null }] }),
      createdAt: 0,
      updatedAt: 0,
    });
    setNativeBinding({ listSandboxes: async () => [record("sb1", "running"), record("old", "stopped")] } as unknown as NativeBinding);
    const e = await rejection(Volume.remove("busy"));
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect((e as Error).message).toMatch(/mounted by sandbox sb1/);
    expect(existsSync(join(home, "volumes", "busy"))).toBe(true);
    // A disk volume is mounted by one live sandbox at a time (the booting one itself excepted).
    await Volume.builder("busy-disk").disk().size(8).create();
    const diskRecord = { ...record("sb2", "running"), configJson: JSON.stringify({ volumes: [{ guestPath: "/d", kind: "named", source: "busy-disk" }] }) };
    setNativeBinding({ listSandboxes: async () => [diskRecord] } as unknown as NativeBinding);
    const inUse = await rejection(checkNamedVolumesMountable([{ kind: "named", source: "busy-disk", guestPath: "/x" }], home, "sb3"));
    expect(inUse).toBeInstanceOf(InvalidConfigError);
    expect((inUse as Error).message).toMatch(/in use by sandbox sb2/);
    await checkNamedVolumesMountable([{ kind: "named", source: "busy-disk", guestPath: "/x" }], home, "sb2");
    setNativeBinding({ listSandboxes: async () => [record("old", "stopped")] } as unknown as NativeBinding);
    await Volume.remove("busy");
    expect(existsSync(join(home, "volumes", "busy"))).toBe(false);
  });
});

describe("VolumeFs", () => {
  it("write, read, list, stat, exists, mkdir, copy, rename, remove, removeDir", async () => {
    const fs = (await Volume.builder("files").create()).fs();
    await fs.write("/dir/sub/a.txt", "héllo");
    await fs.write("b.bin", new Uint8Array([0, 1, 2, 255]));
    expect(await fs.readToString("dir/sub/a.txt")).toBe("héllo");
    expect([...(await fs.read("b.bin"))]).toEqual([0, 1, 2, 255]);
    const host = join(home, "volumes", "files");
    expect(readFileSync(join(host, "dir/sub/a.txt"), "utf8")).toBe("héllo");
    expect(statSync(join(host, "dir/sub/a.txt")).mode & 0o777).toBe(0o644);

    const root = await fs.list("");
    expect(root.map((e) => [e.path, e.name, e.kind])).toEqual([
      ["/b.bin", "b.bin", "file"],
      ["/dir", "dir", "directory"],
    ]);
    expect(root[0]!.size).toBe(4);
    const st = await fs.stat("dir/sub/a.txt");
    expect([st.kind, st.size, st.mode, st.readonly]).toEqual(["file", 6, 0o644, false]);
    expect(st.modified).toBeInstanceOf(Date);
    expect((await fs.stat("")).kind).toBe("directory");
    expect(await fs.exists("dir/sub")).toBe(true);
    expect(await fs.exists("nope")).toBe(false);
    expect(await fs.exists("b.bin/x")).toBe(false);
    expect(await fsErrno(fs.read("nope"))).toBe("ENOENT");
    expect(await fsErrno(fs.read("dir"))).toBe("EISDIR");
    expect(await fsErrno(fs.list("b.bin"))).toBe("ENOTDIR");

    await fs.mkdir("m/n/o");
    await fs.mkdir("m/n/o"); // exists: fine
    expect(statSync(join(host, "m/n/o")).isDirectory()).toBe(true);

    await fs.copy("dir", "copy/dir2");
    expect(await fs.readToString("copy/dir2/sub/a.txt")).toBe("héllo");
    await fs.copy("b.bin", "b2.bin");
    expect([...(await fs.read("b2.bin"))]).toEqual([0, 1, 2, 255]);
    expect(await fsErrno(fs.copy("dir", "dir/inside"))).toBe("EINVAL");

    await fs.rename("b2.bin", "moved/b3.bin");
    expect(await fs.exists("b2.bin")).toBe(false);
    expect([...(await fs.read("moved/b3.bin"))]).toEqual([0, 1, 2, 255]);

    await fs.write("b.bin", "replaced");
    expect(await fs.readToString("b.bin")).toBe("replaced");

    expect(await fsErrno(fs.remove("dir"))).toBe("EISDIR");
    await fs.remove("b.bin");
    expect(await fs.exists("b.bin")).toBe(false);
    expect(await fsErrno(fs.removeDir("moved/b3.bin"))).toBe("ENOTDIR");
    await fs.removeDir("copy");
    expect(existsSync(join(host, "copy"))).toBe(false);
    expect(await fsErrno(fs.removeDir(""))).toBe("EINVAL");
    // No temporary files left behind.
    expect(readdirSync(host).filter((n) => n.startsWith(".msb-tmp"))).toEqual([]);
  });

  it("streams, and read's maxBytes", async () => {
    const fs = (await Volume.builder("big").create()).fs();
    const sink = await fs.writeStream("s/big.bin");
    const chunk = Buffer.alloc(100_000, 7);
    for (let i = 0; i < 20; i++) await sink.write(chunk);
    // Not in place before close.
    expect(await fs.exists("s/big.bin")).toBe(false);
    await sink.close();
    await sink.close();
    expect((await fs.stat("s/big.bin")).size).toBe(2_000_000);

    const rs = await fs.readStream("s/big.bin");
    let total = 0;
    for await (const c of rs) {
      expect(c.every((b) => b === 7)).toBe(true);
      total += c.byteLength;
    }
    expect(total).toBe(2_000_000);
    expect((await (await fs.readStream("s/big.bin")).collect()).byteLength).toBe(2_000_000);
    const r = await fs.readStream("s/big.bin");
    expect((await r.recv())!.byteLength).toBeGreaterThan(0);
    await r[Symbol.asyncDispose]();
    expect(await r.recv()).toBeNull();

    const e = await rejection(fs.read("s/big.bin", { maxBytes: 1000 }));
    expect(e).toBeInstanceOf(OutputLimitError);
    expect((e as OutputLimitError).field).toBe("maxBytes");
    expect((await fs.read("s/big.bin", { maxBytes: 2_000_000 })).byteLength).toBe(2_000_000);
    expect(await rejection(fs.read("s/big.bin", { maxBytes: 0 }))).toBeInstanceOf(InvalidConfigError);
  });
});

describe("a hostile volume directory: links planted by a guest are never followed", () => {
  async function planted() {
    const v = await Volume.builder("evil").create();
    const dir = v.path;
    symlinkSync(outside, join(dir, "out")); // a directory link out
    symlinkSync(join(outside, "secret"), join(dir, "secret-link")); // a file link out
    symlinkSync("/nonexistent", join(dir, "dangling"));
    mkdirSync(join(dir, "d"));
    symlinkSync(outside, join(dir, "d", "up"));
    return v;
  }

  it("no operation goes through a link", async () => {
    const fs = (await planted()).fs();
    expect(await fsErrno(fs.read("out/secret"))).toBe("ELOOP");
    expect(await fsErrno(fs.readStream("out/secret"))).toBe("ELOOP");
    expect(await fsErrno(fs.read("secret-link"))).toBe("ELOOP");
    expect(await fsErrno(fs.list("out"))).toBe("ELOOP");
    expect(await fsErrno(fs.write("out/new", "x"))).toBe("ELOOP");
    expect(await fsErrno(fs.writeStream("out/new"))).toBe("ELOOP");
    expect(await fsErrno(fs.mkdir("out/sub"))).toBe("ELOOP");
    expect(await fsErrno(fs.stat("out/secret"))).toBe("ELOOP");
    expect(await fsErrno(fs.copy("out/secret", "stolen"))).toBe("ELOOP");
    expect(await fsErrno(fs.copy("d", "out/copied"))).toBe("ELOOP");
    expect(await fsErrno(fs.rename("out/secret", "stolen"))).toBe("ELOOP");
    expect(await fsErrno(fs.remove("out/secret"))).toBe("ELOOP");
    expect(await fsErrno(fs.removeDir("out"))).toBe("ENOTDIR");
    expect(await fs.exists("out/secret")).toBe(false);
    expect(await fs.exists("dangling")).toBe(true);
    expect((await fs.stat("out")).kind).toBe("symlink");
    expect((await fs.list("")).find((e) => e.name === "out")?.kind).toBe("symlink");
    outsideUntouched();
  });

  it("write replaces a link instead of writing through it; remove takes the link itself", async () => {
    const v = await planted();
    const fs = v.fs();
    await fs.write("secret-link", "mine");
    expect(lstatSync(join(v.path, "secret-link")).isFile()).toBe(true);
    expect(await fs.readToString("secret-link")).toBe("mine");
    const sink = await fs.writeStream("dangling");
    await sink.write("streamed");
    await sink.close();
    expect(lstatSync(join(v.path, "dangling")).isFile()).toBe(true);
    expect(existsSync("/nonexistent")).toBe(false);
    await fs.copy("d", "d2"); // d/up is copied as a link, not as the outside tree
    expect(readlinkSync(join(v.path, "d2", "up"))).toBe(outside);
    await fs.remove("out");
    expect(existsSync(join(v.path, "out"))).toBe(false);
    await fs.removeDir("d");
    await fs.removeDir("d2");
    outsideUntouched();
  });

  it("Volume.remove deletes the links, not what they point to", async () => {
    await planted();
    await Volume.remove("evil");
    expect(existsSync(join(home, "volumes", "evil"))).toBe(false);
    outsideUntouched();
  });

  it("a volume entry that is itself a link is not a volume", async () => {
    mkdirSync(join(home, "volumes"), { recursive: true });
    symlinkSync(outside, join(home, "volumes", "linked"));
    expect(await rejection(Volume.get("linked"))).toBeInstanceOf(VolumeNotFoundError);
    expect((await Volume.list()).map((h) => h.name)).toEqual([]);
    expect(await rejection(Volume.remove("linked"))).toBeInstanceOf(VolumeNotFoundError);
    expect(lstatSync(join(home, "volumes", "linked")).isSymbolicLink()).toBe(true);
    outsideUntouched();
  });
});
