import { existsSync, lstatSync, mkdirSync, mkdtempSync, writeFileSync, readFileSync, readlinkSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { OciError } from "../src/index.js";
import { Unpacker, type TreeNode } from "../src/unpack.js";
import { tarOf, type TarEntry } from "./helpers/images.js";

let work: string;
let staging: string;
let outside: string;

beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), "oci-unpack-"));
  staging = join(work, "staging");
  outside = join(work, "outside");
  for (const d of [staging, outside]) mkdirSync(d);
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

async function apply(u: Unpacker, entries: TarEntry[], label = "sha256:layer"): Promise<void> {
  await u.applyLayer(Readable.from([await tarOf(entries)]), label);
}

function node(u: Unpacker, path: string): TreeNode | undefined {
  let n: TreeNode | undefined = u.root;
  for (const c of path.split("/").filter(Boolean)) n = n?.children?.get(c);
  return n;
}

async function rejects(p: Promise<unknown>, re: RegExp): Promise<OciError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(OciError);
  expect((err as OciError).code).toBe("image");
  expect((err as OciError).message).toMatch(re);
  return err as OciError;
}

describe("Unpacker", () => {
  it("writes files, dirs, symlinks and hardlinks, and keeps metadata in the tree", async () => {
    const u = new Unpacker(staging);
    await apply(u, [
      { name: "./", type: "directory", mode: 0o755 },
      { name: "./bin/", type: "directory" },
      { name: "./bin/busybox", content: "BB", mode: 0o4755, uid: 0, gid: 0 },
      { name: "bin/sh", type: "symlink", linkname: "/bin/busybox" },
      { name: "bin/ls", type: "link", linkname: "./bin/busybox" },
      { name: "/etc/shadow", content: "s", mode: 0o640, uid: 0, gid: 42 },
      { name: "dev/console", type: "character-device", devmajor: 5, devminor: 1, mode: 0o600 },
      { name: "dev/sda", type: "block-device", devmajor: 8, devminor: 0, mode: 0o660, gid: 6 },
      { name: "run/fifo", type: "fifo", mode: 0o644 },
      { name: "home/user/", type: "directory", uid: 1000, gid: 1000, mode: 0o700 },
      { name: "a file with spaces", content: "x" },
    ]);
    expect(readFileSync(join(staging, "bin/busybox"), "utf8")).toBe("BB");
    expect(readlinkSync(join(staging, "bin/sh"))).toBe("/bin/busybox");
    expect(statSync(join(staging, "bin/ls")).ino).toBe(statSync(join(staging, "bin/busybox")).ino);
    expect(node(u, "bin/ls")!.inode).toBe(node(u, "bin/busybox")!.inode);
    expect(node(u, "bin/busybox")!.inode.perm).toBe(0o4755);
    expect(node(u, "etc/shadow")!.inode).toMatchObject({ uid: 0, gid: 42, perm: 0o640 });
    expect(node(u, "dev/console")).toMatchObject({ type: "char", inode: { devmajor: 5, devminor: 1, perm: 0o600 } });
    expect(node(u, "dev/sda")).toMatchObject({ type: "block", inode: { devmajor: 8, devminor: 0, gid: 6 } });
    expect(node(u, "run/fifo")!.type).toBe("fifo");
    // devices and fifos only exist in the tree; the disk builder creates them
    expect(existsSync(join(staging, "dev/console"))).toBe(false);
    expect(node(u, "home/user")!.inode).toMatchObject({ uid: 1000, gid: 1000, perm: 0o700 });
    // the staged dir stays usable by us whatever the image says
    expect(statSync(join(staging, "home/user")).mode & 0o700).toBe(0o700);
    expect(existsSync(join(staging, "a file with spaces"))).toBe(true);
    // implicit parents were created
    expect(node(u, "etc")!.type).toBe("dir");
  });

  it("applies whiteouts from a later layer", async () => {
    const u = new Unpacker(staging);
    await apply(u, [
      { name: "etc/keep", content: "k" },
      { name: "etc/gone", content: "g" },
      { name: "etc/gonedir/sub/file", content: "f" },
    ]);
    await apply(u, [{ name: "etc/.wh.gone" }, { name: "etc/.wh.gonedir" }, { name: "etc/.wh.never-existed" }, { name: "nodir/.wh.x" }]);
    expect(readdirSync(join(staging, "etc"))).toEqual(["keep"]);
    expect([...node(u, "etc")!.children!.keys()]).toEqual(["keep"]);
    expect(existsSync(join(staging, "nodir"))).toBe(false);
  });

  it("a whiteout does not hide a file of its own layer", async () => {
    const u = new Unpacker(staging);
    await apply(u, [{ name: "a", content: "1" }]);
    await apply(u, [{ name: "b", content: "2" }, { name: ".wh.b" }]);
    expect(readFileSync(join(staging, "b"), "utf8")).toBe("2");
  });

  it("handles opaque directories, whatever the entry order", async () => {
    const u = new Unpacker(staging);
    await apply(u, [
      { name: "data/", type: "directory", uid: 7 },
      { name: "data/old1", content: "o" },
      { name: "data/olddir/x", content: "o" },
      { name: "data/sub/old", content: "o" },
      { name: "other/stays", content: "s" },
    ]);
    // new content before the marker, and a nested dir of the lower layer re-used
    await apply(u, [
      { name: "data/new1", content: "n" },
      { name: "data/sub/new", content: "n" },
      { name: "data/.wh..wh..opq" },
      { name: "data/new2", content: "n" },
    ]);
    expect(readdirSync(join(staging, "data")).sort()).toEqual(["new1", "new2", "sub"]);
    expect(readdirSync(join(staging, "data/sub"))).toEqual(["new"]);
    expect([...node(u, "data")!.children!.keys()].sort()).toEqual(["new1", "new2", "sub"]);
    expect(readFileSync(join(staging, "other/stays"), "utf8")).toBe("s");
  });

  it("replaces across types and never writes through an existing symlink or hardlink", async () => {
    const u = new Unpacker(staging);
    const victim = join(outside, "victim");
    writeFileSync(victim, "original");
    await apply(u, [
      { name: "link", type: "symlink", linkname: victim },
      { name: "orig", content: "shared" },
      { name: "hl", type: "link", linkname: "orig" },
      { name: "was-dir/inner", content: "i" },
    ]);
    await apply(u, [
      { name: "link", content: "replaced" }, // a file replaces the symlink itself
      { name: "hl", content: "new" }, // breaks the hardlink, orig unchanged
      { name: "was-dir", content: "now a file" },
    ]);
    expect(readFileSync(victim, "utf8")).toBe("original");
    expect(lstatSync(join(staging, "link")).isFile()).toBe(true);
    expect(readFileSync(join(staging, "orig"), "utf8")).toBe("shared");
    expect(readFileSync(join(staging, "hl"), "utf8")).toBe("new");
    expect(readFileSync(join(staging, "was-dir"), "utf8")).toBe("now a file");
  });

  it("refuses .. components", async () => {
    const u = new Unpacker(staging);
    const e = await rejects(apply(u, [{ name: "../escape", content: "x" }], "sha256:evil"), /"\.\.\/escape".*"\.\." path component/);
    expect(e.digest).toBe("sha256:evil");
    expect(e.message).toContain("sha256:evil");
    await rejects(apply(new Unpacker(staging), [{ name: "a/../../escape", content: "x" }]), /"\.\."/);
    expect(readdirSync(outside)).toEqual([]);
    expect(existsSync(join(work, "escape"))).toBe(false);
  });

  it("takes absolute names relative to the root", async () => {
    const u = new Unpacker(staging);
    await apply(u, [{ name: `/${outside.slice(1)}/abs`, content: "x" }]);
    expect(readdirSync(outside)).toEqual([]);
    expect(readFileSync(join(staging, outside, "abs"), "utf8")).toBe("x");
  });

  it("refuses to write through a symlink that leads outside (absolute or relative)", async () => {
    await rejects(
      apply(new Unpacker(staging), [
        { name: "esc", type: "symlink", linkname: outside },
        { name: "esc/pwned", content: "x" },
      ]),
      /"esc\/pwned".*symlink "\/esc" -> .*outside the image root/,
    );
    rmSync(staging, { recursive: true });
    mkdirSync(staging);
    await rejects(
      apply(new Unpacker(staging), [
        { name: "d/", type: "directory" },
        { name: "d/up", type: "symlink", linkname: "../../outside" },
        { name: "d/up/pwned", content: "x" },
      ]),
      /outside the image root/,
    );
    expect(readdirSync(outside)).toEqual([]);
  });

  it("refuses symlinks in a later layer that lead outside, and hardlinks to outside", async () => {
    const u = new Unpacker(staging);
    await apply(u, [{ name: "etc/x", content: "x" }]);
    await rejects(
      apply(u, [
        { name: "etc", type: "symlink", linkname: "/" },
        { name: "etc/passwd", content: "x" },
      ]),
      /outside the image root/,
    );
    await rejects(apply(new Unpacker(staging), [{ name: "h", type: "link", linkname: "../outside/f" }]), /"\.\."/);
    await rejects(apply(new Unpacker(staging), [{ name: "h", type: "link", linkname: "/nonexistent" }]), /does not exist in the image/);
    expect(readdirSync(outside)).toEqual([]);
  });

  it("follows a relative symlinked parent that stays inside", async () => {
    const u = new Unpacker(staging);
    await apply(u, [
      { name: "usr/lib/", type: "directory" },
      { name: "lib", type: "symlink", linkname: "usr/lib" },
      { name: "lib/libc.so", content: "c" },
    ]);
    expect(readFileSync(join(staging, "usr/lib/libc.so"), "utf8")).toBe("c");
    expect(node(u, "usr/lib/libc.so")!.type).toBe("file");
    expect(lstatSync(join(staging, "lib")).isSymbolicLink()).toBe(true);
  });

  it("reports extended attributes it cannot keep", async () => {
    const u = new Unpacker(staging);
    await apply(u, [{ name: "bin/ping", content: "p", pax: { "SCHILY.xattr.security.capability": "x" } }]);
    expect(u.warnings.join("\n")).toMatch(/extended attributes/);
  });

  it("fails on a truncated tar", async () => {
    const t = await tarOf([{ name: "big", content: Buffer.alloc(100_000, 1) }]);
    const u = new Unpacker(staging);
    let err: unknown;
    try {
      await u.applyLayer(Readable.from([t.subarray(0, 50_000)]), "sha256:t");
    } catch (e) {
      err = e;
    }
    expect(String(err)).toMatch(/Unexpected end of data/);
  });
});
