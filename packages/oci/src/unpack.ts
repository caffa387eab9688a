/**
 * Applying image layers (tar streams) to a staging directory.
 *
 * The staging directory only holds what an unprivileged user can create: directories,
 * regular files (content), symlinks and hardlinks, all owned by the user running the
 * pull. The image's real metadata - owner, group, mode with setuid/setgid/sticky bits,
 * device nodes and fifos, mtimes - is kept in an in-memory tree that mirrors the
 * staging directory; later layers override it and whiteouts delete from both. The ext4
 * builder then gets owners, modes and device nodes right inside the disk image with
 * debugfs (see rootfs.ts), so root is never needed.
 *
 * Safety: every entry name is split into components; `..` components are refused and
 * absolute names are taken relative to the root. Parent directories are resolved in the
 * tree, never on the host: a symlinked parent is followed inside the image (relative
 * targets only) and refused when it leads outside the root (an absolute target, or a
 * `..` above the root). Files are created with O_EXCL after removing what was there, so
 * nothing on the host is ever written through a symlink.
 */
import { chmodSync, closeSync, fchmodSync, linkSync, lutimesSync, mkdirSync, openSync, rmSync, symlinkSync, writeSync, constants as fsc } from "node:fs";
import { join } from "node:path";
import type { Readable } from "node:stream";
import tar from "tar-stream";
import { OciError } from "./errors.js";

export type NodeType = "dir" | "file" | "symlink" | "char" | "block" | "fifo";

/** Metadata of one inode (shared by the paths of a hardlink). */
export interface Inode {
  uid: number;
  gid: number;
  /** Permission bits including setuid (04000), setgid (02000) and sticky (01000). */
  perm: number;
  /** Seconds since the epoch. */
  mtime: number;
  size: number;
  devmajor: number;
  devminor: number;
  /** Mode of the staged file on the host (what mke2fs -d will copy). */
  hostPerm: number;
}

export interface TreeNode {
  type: NodeType;
  inode: Inode;
  /** Symlink target. */
  linkname?: string;
  children?: Map<string, TreeNode>;
}

const TYPE_BITS: Record<NodeType, number> = {
  dir: 0o040000,
  file: 0o100000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
};

export function modeWithType(n: TreeNode): number {
  return TYPE_BITS[n.type] | (n.inode.perm & 0o7777);
}

const MAX_SYMLINK_HOPS = 40;

let cachedUmask: number | undefined;
function umask(): number {
  if (cachedUmask === undefined) cachedUmask = process.umask();
  return cachedUmask;
}

function hostPermFor(type: NodeType, perm: number): number {
  // What we can always read back (mke2fs -d reads the files) and write into (later layers).
  return type === "dir" ? (perm & 0o777) | 0o700 : (perm & 0o777) | 0o600;
}

export interface EntryHeader {
  name: string;
  type: string | null | undefined;
  mode?: number | undefined;
  uid?: number | undefined;
  gid?: number | undefined;
  size?: number | undefined;
  mtime?: Date | undefined;
  linkname?: string | null | undefined;
  devmajor?: number | undefined;
  devminor?: number | undefined;
  pax?: Record<string, string> | null | undefined;
}

export class Unpacker {
  readonly staging: string;
  readonly root: TreeNode;
  readonly warnings: string[] = [];
  private layerNodes = new Set<TreeNode>();
  private layer = "";
  private xattrEntries = 0;

  constructor(staging: string) {
    this.staging = staging;
    const now = Math.floor(Date.now() / 1000);
    this.root = {
      type: "dir",
      inode: { uid: 0, gid: 0, perm: 0o755, mtime: now, size: 0, devmajor: 0, devminor: 0, hostPerm: 0o755 },
      children: new Map(),
    };
  }

  private fail(entry: string, why: string): OciError {
    return new OciError("image", `layer ${this.layer}: entry "${entry}" ${why}; the image was refused`, { digest: this.layer });
  }

  /** Split an entry name into components: leading "/" and "." dropped, ".." refused. */
  splitName(name: string, entry = name): string[] {
    const comps = name.split("/").filter((c) => c !== "" && c !== ".");
    if (comps.includes("..")) throw this.fail(entry, 'has a ".." path component (it would escape the image root)');
    if (comps.some((c) => c.includes("\0"))) throw this.fail(entry, "has a NUL byte in its name");
    return comps;
  }

  /**
   * Resolve a directory path inside the image. Symlinks are followed inside the tree;
   * one that leads outside the root is refused. Missing directories are created when
   * `create` (else undefined is returned), and so are non-directories in the way.
   */
  private async walkDir(
    comps: string[],
    create: boolean,
    entry: string,
  ): Promise<{ node: TreeNode; host: string; real: string[] } | undefined> {
    const queue = [...comps];
    const real: string[] = [];
    const nodes: TreeNode[] = [this.root];
    let hops = 0;
    while (queue.length) {
      const c = queue.shift()!;
      if (c === "" || c === ".") continue;
      if (c === "..") {
        if (real.length === 0) throw this.fail(entry, "goes through a symlink that leads outside the image root");
        real.pop();
        nodes.pop();
        continue;
      }
      const cur = nodes[nodes.length - 1]!;
      let child = cur.children!.get(c);
      if (child?.type === "symlink") {
        if (++hops > MAX_SYMLINK_HOPS) throw this.fail(entry, "goes through too many levels of symlinks");
        const t = child.linkname ?? "";
        if (t.startsWith("/")) {
          throw this.fail(entry, `goes through the symlink "/${[...real, c].join("/")}" -> "${t}", which leads outside the image root`);
        }
        queue.unshift(...t.split("/"));
        continue;
      }
      if (!child || child.type !== "dir") {
        if (!create) return undefined;
        const host = join(this.staging, ...real, c);
        if (child) this.removeHost(child, host);
        child = this.newNode("dir", { mode: 0o755, uid: 0, gid: 0 });
        mkdirSync(host, { mode: child.inode.hostPerm });
        this.fixHostMode(host, child);
        cur.children!.set(c, child);
      }
      this.layerNodes.add(child);
      real.push(c);
      nodes.push(child);
    }
    return { node: nodes[nodes.length - 1]!, host: join(this.staging, ...real), real };
  }

  private newNode(type: NodeType, h: Partial<EntryHeader>): TreeNode {
    const perm = type === "symlink" ? 0o777 : (h.mode ?? (type === "dir" ? 0o755 : 0o644)) & 0o7777;
    const node: TreeNode = {
      type,
      inode: {
        uid: h.uid ?? 0,
        gid: h.gid ?? 0,
        perm,
        mtime: h.mtime ? Math.floor(h.mtime.getTime() / 1000) : Math.floor(Date.now() / 1000),
        size: type === "file" ? (h.size ?? 0) : 0,
        devmajor: h.devmajor ?? 0,
        devminor: h.devminor ?? 0,
        hostPerm: type === "symlink" ? 0o777 : hostPermFor(type, perm),
      },
    };
    if (type === "dir") node.children = new Map();
    return node;
  }

  /** mkdir/open modes are filtered by the umask: set the intended host mode when it was. */
  private fixHostMode(host: string, n: TreeNode): void {
    if ((n.inode.hostPerm & ~umask()) !== n.inode.hostPerm) chmodSync(host, n.inode.hostPerm);
  }

  /** Remove a node's files from the staging dir (devices and fifos have none). */
  private removeHost(n: TreeNode, host: string): void {
    if (n.type === "dir") rmSync(host, { recursive: true, force: true });
    else if (n.type === "file" || n.type === "symlink") rmSync(host, { force: true });
  }

  /** Apply one layer (an uncompressed tar stream) on top of what is there. */
  async applyLayer(tarStream: Readable, layerDigest: string): Promise<void> {
    this.layer = layerDigest;
    this.layerNodes = new Set([this.root]);
    const extract = tar.extract();
    let feedError: unknown;
    const feeding = (async () => {
      try {
        for await (const chunk of tarStream) {
          if (!extract.write(chunk as Buffer)) {
            await new Promise<void>((resolve, reject) => {
              const done = () => {
                extract.off("drain", done);
                extract.off("close", done);
                extract.off("error", reject);
                resolve();
              };
              extract.on("drain", done);
              extract.on("close", done);
              extract.on("error", reject);
            });
          }
        }
        (extract as unknown as { end(): void }).end();
      } catch (e) {
        feedError = e;
        extract.destroy(e as Error);
      }
    })();
    try {
      for await (const entry of extract) {
        try {
          await this.applyEntry(entry.header as EntryHeader, entry as unknown as AsyncIterable<Buffer>);
        } finally {
          (entry as unknown as { resume(): void }).resume();
        }
      }
    } catch (e) {
      // `e` is the first failure: an entry that was refused, or the source's own error
      // (the feeder destroys the extractor with it)
      tarStream.destroy();
      await feeding;
      throw e;
    }
    await feeding;
    if (feedError) throw feedError;
  }

  /** Apply one tar entry. `content` yields a regular file's bytes. */
  async applyEntry(h: EntryHeader, content: AsyncIterable<Buffer> | undefined): Promise<void> {
    const entryName = h.name;
    const comps = this.splitName(entryName);
    const type = h.type ?? "file";
    if (h.pax && Object.keys(h.pax).some((k) => k.startsWith("SCHILY.xattr.") || k.startsWith("LIBARCHIVE.xattr."))) {
      if (this.xattrEntries++ === 0) {
        this.warnings.push(`layer ${this.layer}: extended attributes (e.g. file capabilities) are not preserved ("${entryName}" has some)`);
      }
    }
    if (comps.length === 0) {
      // the root itself ("./"): take its metadata
      if (type === "directory") {
        const n = this.newNode("dir", h);
        Object.assign(this.root.inode, { ...n.inode, hostPerm: this.root.inode.hostPerm });
      }
      return;
    }
    const base = comps[comps.length - 1]!;
    const parentComps = comps.slice(0, -1);

    // whiteouts
    if (base.startsWith(".wh.")) {
      if (base === ".wh..wh..opq") {
        const dir = await this.walkDir(parentComps, true, entryName);
        await this.clearLower(dir!.node, dir!.host);
        return;
      }
      if (base.startsWith(".wh..wh.")) return; // other aufs metadata: nothing to do
      const target = base.slice(4);
      if (target === "" || target === "." || target === "..") throw this.fail(entryName, "is a malformed whiteout");
      const dir = await this.walkDir(parentComps, false, entryName);
      if (!dir) return;
      const victim = dir.node.children!.get(target);
      if (victim && !this.layerNodes.has(victim)) {
        this.removeHost(victim, join(dir.host, target));
        dir.node.children!.delete(target);
      }
      return;
    }

    const dir = (await this.walkDir(parentComps, true, entryName))!;
    const host = join(dir.host, base);
    const existing = dir.node.children!.get(base);

    switch (type) {
      case "directory": {
        const n = this.newNode("dir", h);
        if (existing?.type === "dir") {
          const hostPerm = existing.inode.hostPerm;
          existing.inode = { ...n.inode };
          if (existing.inode.hostPerm !== hostPerm) chmodSync(host, existing.inode.hostPerm);
          this.layerNodes.add(existing);
          return;
        }
        if (existing) this.removeHost(existing, host);
        mkdirSync(host, { mode: n.inode.hostPerm });
        this.fixHostMode(host, n);
        dir.node.children!.set(base, n);
        this.layerNodes.add(n);
        return;
      }
      case "file":
      case "contiguous-file": {
        if (existing) this.removeHost(existing, host);
        const n = this.newNode("file", h);
        // Synchronous calls: one file costs a few syscalls, and a thread-pool round trip
        // for each of them would double the unpack time of images with many small files.
        const fd = openSync(host, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, n.inode.hostPerm);
        try {
          let size = 0;
          if (content) {
            for await (const chunk of content) {
              size += chunk.length;
              for (let off = 0; off < chunk.length; ) off += writeSync(fd, chunk, off, chunk.length - off);
            }
          }
          n.inode.size = size;
          if ((n.inode.hostPerm & ~umask()) !== n.inode.hostPerm) fchmodSync(fd, n.inode.hostPerm);
        } finally {
          closeSync(fd);
        }
        dir.node.children!.set(base, n);
        this.layerNodes.add(n);
        return;
      }
      case "symlink": {
        if (existing) this.removeHost(existing, host);
        const n = this.newNode("symlink", h);
        n.linkname = h.linkname ?? "";
        symlinkSync(n.linkname, host);
        dir.node.children!.set(base, n);
        this.layerNodes.add(n);
        return;
      }
      case "link": {
        const targetName = h.linkname ?? "";
        const tcomps = this.splitName(targetName, entryName);
        if (tcomps.length === 0) throw this.fail(entryName, `is a hardlink to the root directory`);
        const tdir = await this.walkDir(tcomps.slice(0, -1), false, entryName);
        const tbase = tcomps[tcomps.length - 1]!;
        const target = tdir?.node.children!.get(tbase);
        if (!tdir || !target) throw this.fail(entryName, `is a hardlink to "${targetName}", which does not exist in the image`);
        if (target.type === "dir") throw this.fail(entryName, `is a hardlink to the directory "${targetName}"`);
        if (target === existing) return;
        if (existing) this.removeHost(existing, host);
        const n: TreeNode = { type: target.type, inode: target.inode };
        if (target.linkname !== undefined) n.linkname = target.linkname;
        if (target.type === "file" || target.type === "symlink") linkSync(join(tdir.host, tbase), host);
        dir.node.children!.set(base, n);
        this.layerNodes.add(n);
        return;
      }
      case "character-device":
      case "block-device":
      case "fifo": {
        if (existing) this.removeHost(existing, host);
        const n = this.newNode(type === "fifo" ? "fifo" : type === "block-device" ? "block" : "char", h);
        dir.node.children!.set(base, n);
        this.layerNodes.add(n);
        return;
      }
      default:
        this.warnings.push(`layer ${this.layer}: entry "${entryName}" of tar type "${type}" skipped`);
    }
  }

  /** Opaque directory: drop everything below `dir` that this layer did not put there. */
  private async clearLower(dir: TreeNode, host: string): Promise<void> {
    for (const [name, child] of [...dir.children!]) {
      const p = join(host, name);
      if (this.layerNodes.has(child)) {
        if (child.type === "dir") await this.clearLower(child, p);
        continue;
      }
      this.removeHost(child, p);
      dir.children!.delete(name);
    }
  }

  /** Set host mtimes from the tree (deepest first, so directories keep theirs). */
  async applyTimes(): Promise<void> {
    const visit = async (n: TreeNode, host: string): Promise<void> => {
      if (n.children) for (const [name, c] of n.children) await visit(c, join(host, name));
      if (n.type === "dir" || n.type === "file" || n.type === "symlink") {
        const t = n.inode.mtime;
        try {
          lutimesSync(host, t, t);
        } catch {
          /* best effort */
        }
      }
    };
    await visit(this.root, this.staging);
  }

  /** Totals for sizing the disk: content bytes (unique inodes), node count. */
  stats(): { contentBytes: number; diskEstimate: number; nodes: number } {
    const seen = new Set<Inode>();
    let contentBytes = 0;
    let diskEstimate = 0;
    let nodes = 0;
    const visit = (n: TreeNode): void => {
      nodes++;
      if (!seen.has(n.inode)) {
        seen.add(n.inode);
        if (n.type === "file") {
          contentBytes += n.inode.size;
          diskEstimate += Math.ceil(n.inode.size / 4096) * 4096;
        } else if (n.type === "dir") diskEstimate += 4096 * Math.max(1, Math.ceil((n.children?.size ?? 0) / 100));
        else if (n.type === "symlink" && (n.linkname?.length ?? 0) >= 60) diskEstimate += 4096;
      }
      if (n.children) for (const c of n.children.values()) visit(c);
    };
    visit(this.root);
    return { contentBytes, diskEstimate, nodes };
  }
}
