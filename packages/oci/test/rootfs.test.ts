import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { buildExt4, debugfsQuote, debugfsScript, diskSizeMiB } from "../src/rootfs.js";
import { Unpacker, type TreeNode } from "../src/unpack.js";
import { catInImage, fsck, inodeOf, lsInImage, statInImage } from "./helpers/ext4.js";
import { tarOf, type TarEntry } from "./helpers/images.js";

let work: string;
beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), "oci-rootfs-"));
  mkdirSync(join(work, "staging"));
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

async function unpacked(layers: TarEntry[][]): Promise<Unpacker> {
  const u = new Unpacker(join(work, "staging"));
  for (const [i, l] of layers.entries()) await u.applyLayer(Readable.from([await tarOf(l)]), `sha256:l${i}`);
  await u.applyTimes();
  return u;
}

describe("debugfs script", () => {
  it("quotes paths the way debugfs parses them", () => {
    expect(debugfsQuote("/a b")).toBe('"/a b"');
    expect(debugfsQuote('/q"x')).toBe('"/q""x"');
    expect(debugfsQuote("/tab\tx")).toBe('"/tab\tx"');
  });

  it("sets only what differs from the staged files, and creates devices via cd + mknod", async () => {
    const u = await unpacked([
      [
        { name: "bin/busybox", content: "b", mode: 0o755 },
        { name: "bin/su", type: "link", linkname: "bin/busybox" },
        { name: "usr/bin/passwd", content: "p", mode: 0o4755 },
        { name: "home/u/", type: "directory", uid: 1000, gid: 1000, mode: 0o700 },
        { name: "dev/null", type: "character-device", devmajor: 1, devminor: 3, mode: 0o666 },
        { name: "dev/fifo", type: "fifo", mode: 0o600 },
        { name: "a b/c\"d", content: "x", uid: 5 },
      ],
    ]);
    const { script, warnings } = debugfsScript(u.root, { hostUid: 0, hostGid: 0 });
    const lines = script.trim().split("\n");
    expect(warnings).toEqual([]);
    expect(lines).toContain("rmdir /lost+found");
    expect(lines).toContain('sif "/usr/bin/passwd" mode 0104755');
    expect(lines).toContain('sif "/home/u" uid 1000');
    expect(lines).toContain('sif "/home/u" gid 1000');
    expect(lines).not.toContain('sif "/home/u" mode 040700'); // staged as 0700 already
    expect(lines).toContain('sif "/a b/c""d" uid 5');
    expect(script).toContain('cd "/dev"\nmknod "null" c 1 3\ncd /\nsif "/dev/null" uid 0\nsif "/dev/null" gid 0\nsif "/dev/null" mode 020666\n');
    expect(script).toContain('mknod "fifo" p');
    expect(lines).toContain('sif "/dev/fifo" mode 010600');
    // nothing for files that already match (root-owned, 0644/0755)
    expect(script).not.toContain("/bin/busybox");
    // a non-root builder: everything gets its owner
    const asUser = debugfsScript(u.root, { hostUid: 1234, hostGid: 1234 }).script;
    expect(asUser).toContain('sif "/bin/busybox" uid 0');
    expect(asUser).not.toContain('sif "/bin/su" uid 0'); // one inode, one fix
  });

  it("skips names debugfs cannot express, with a warning", () => {
    const mk = (type: TreeNode["type"]): TreeNode => ({
      type,
      inode: { uid: 0, gid: 0, perm: 0o755, mtime: 0, size: 0, devmajor: 0, devminor: 0, hostPerm: 0o700 },
      ...(type === "dir" ? { children: new Map() } : {}),
    });
    const root = mk("dir");
    root.inode.hostPerm = 0o755;
    root.children!.set("bad\nname", mk("dir"));
    root.children!.set("ok", mk("dir"));
    const { script, warnings } = debugfsScript(root, { hostUid: 0, hostGid: 0, keepLostFound: true });
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain("bad\\nname");
    expect(script).toBe('sif "/ok" mode 040755\n');
  });

  it("sizes the disk as content * 1.25 + 64 MiB", () => {
    expect(diskSizeMiB(0)).toBe(64);
    expect(diskSizeMiB(100 << 20)).toBe(125 + 64);
  });
});

describe("buildExt4", () => {
  it("builds an image with owners, modes, setuid, devices, hardlinks and symlinks", async () => {
    const mtime = new Date(1_600_000_000_000);
    const u = await unpacked([
      [
        { name: "bin/busybox", content: "#!bb", mode: 0o755, mtime },
        { name: "bin/sh", type: "symlink", linkname: "busybox" },
        { name: "bin/su", type: "link", linkname: "bin/busybox" },
        { name: "usr/bin/passwd", content: "p", mode: 0o4755 },
        { name: "usr/bin/wall", content: "w", mode: 0o2755, gid: 5 },
        { name: "tmp/", type: "directory", mode: 0o1777 },
        { name: "opt/data/", type: "directory", uid: 1000, gid: 1000, mode: 0o750 },
        { name: "opt/data/f", content: "f", uid: 1000, gid: 1000, mode: 0o400 },
        { name: "dev/null", type: "character-device", devmajor: 1, devminor: 3, mode: 0o666 },
        { name: "dev/sda", type: "block-device", devmajor: 8, devminor: 1, mode: 0o660, gid: 6 },
        { name: "dev/initctl", type: "fifo", mode: 0o600 },
        { name: "with space/q\"uote", content: "s", uid: 3 },
      ],
      [{ name: "opt/data/g", content: "g", uid: 1000, gid: 1000 }],
    ]);
    const img = join(work, "rootfs.ext4");
    const r = await buildExt4(u, img, join(work, "script"));
    expect(r.warnings).toEqual([]);
    expect(statInImage(img, "/bin/busybox")).toMatchObject({ type: "regular", perm: 0o755, uid: 0, gid: 0, links: 2, mtime: 1_600_000_000 });
    expect(inodeOf(img, "/bin/su")).toBe(inodeOf(img, "/bin/busybox"));
    expect(statInImage(img, "/bin/sh")).toMatchObject({ type: "symlink" });
    expect(statInImage(img, "/usr/bin/passwd")).toMatchObject({ perm: 0o4755, uid: 0 });
    expect(statInImage(img, "/usr/bin/wall")).toMatchObject({ perm: 0o2755, gid: 5 });
    expect(statInImage(img, "/tmp")).toMatchObject({ type: "directory", perm: 0o1777 });
    expect(statInImage(img, "/opt/data")).toMatchObject({ perm: 0o750, uid: 1000, gid: 1000 });
    expect(statInImage(img, "/opt/data/f")).toMatchObject({ perm: 0o400, uid: 1000 });
    expect(statInImage(img, "/dev/null")).toMatchObject({ type: "character special", perm: 0o666, major: 1, minor: 3, uid: 0 });
    expect(statInImage(img, "/dev/sda")).toMatchObject({ type: "block special", perm: 0o660, major: 8, minor: 1, gid: 6 });
    expect(statInImage(img, "/dev/initctl")).toMatchObject({ type: "FIFO", perm: 0o600 });
    expect(statInImage(img, '/with space/q"uote')).toMatchObject({ uid: 3 });
    expect(statInImage(img, "/")).toMatchObject({ perm: 0o755, uid: 0, gid: 0 });
    expect(catInImage(img, "/bin/busybox").toString()).toBe("#!bb");
    expect(lsInImage(img, "/")).toEqual(["bin", "dev", "opt", "tmp", "usr", "with space"]); // no lost+found
    expect(lsInImage(img, "/opt/data")).toEqual(["f", "g"]);
    const check = fsck(img);
    expect(check.code, check.out).toBe(0);
  });

  it("keeps an image's own lost+found", async () => {
    const u = await unpacked([[{ name: "lost+found/", type: "directory", mode: 0o700 }, { name: "x", content: "x" }]]);
    const img = join(work, "rootfs.ext4");
    await buildExt4(u, img, join(work, "script"));
    expect(lsInImage(img, "/")).toEqual(["lost+found", "x"]);
  });
});
