// Reading an ext4 image with debugfs (no mount, no root).
import { execFileSync } from "node:child_process";
import { debugfsQuote, findTool } from "../../src/rootfs.js";

export interface Ext4Stat {
  type: string;
  /** Permission bits incl. setuid/setgid/sticky. */
  perm: number;
  uid: number;
  gid: number;
  links: number;
  size: number;
  mtime: number;
  major?: number;
  minor?: number;
}

function debugfs(image: string, cmd: string): { out: Buffer; err: string } {
  const out = execFileSync(findTool("debugfs"), ["-R", cmd, image], { stdio: ["ignore", "pipe", "pipe"], maxBuffer: 1 << 30 });
  return { out, err: "" };
}

export function statInImage(image: string, path: string): Ext4Stat | undefined {
  const s = debugfs(image, `stat ${debugfsQuote(path)}`).out.toString("utf8");
  const m = /Type: (.+?)\s+Mode:\s+(\d+)/.exec(s);
  if (!m) return undefined;
  const ug = /User:\s+(\d+)\s+Group:\s+(\d+).*Size: (\d+)/.exec(s)!;
  const links = /Links: (\d+)/.exec(s)!;
  const mtime = /mtime: 0x([0-9a-f]+)/.exec(s)!;
  const dev = /Device major\/minor number: (\d+):(\d+)/.exec(s);
  return {
    type: m[1]!,
    perm: parseInt(m[2]!, 8),
    uid: Number(ug[1]),
    gid: Number(ug[2]),
    size: Number(ug[3]),
    links: Number(links[1]),
    mtime: parseInt(mtime[1]!, 16),
    ...(dev ? { major: Number(dev[1]), minor: Number(dev[2]) } : {}),
  };
}

export function catInImage(image: string, path: string): Buffer {
  return debugfs(image, `cat ${debugfsQuote(path)}`).out;
}

export function lsInImage(image: string, dir: string): string[] {
  const s = debugfs(image, `ls -p ${debugfsQuote(dir)}`).out.toString("utf8");
  const names: string[] = [];
  for (const line of s.split("\n")) {
    const f = line.split("/");
    if (f.length >= 7 && f[5] !== "." && f[5] !== "..") names.push(f[5]!);
  }
  return names.sort();
}

export function inodeOf(image: string, path: string): number | undefined {
  const s = debugfs(image, `stat ${debugfsQuote(path)}`).out.toString("utf8");
  const m = /Inode: (\d+)/.exec(s);
  return m ? Number(m[1]) : undefined;
}

/** The ELF e_machine of a file in the image (62 = x86-64, 183 = aarch64). */
export function elfMachine(image: string, path: string): number | undefined {
  const b = catInImage(image, path);
  if (b.length < 20 || b.readUInt32BE(0) !== 0x7f454c46) return undefined;
  return b.readUInt16LE(18);
}

/** `e2fsck -fn`: exit code and output (0 = clean). */
export function fsck(image: string): { code: number; out: string } {
  try {
    const out = execFileSync(findTool("e2fsck"), ["-fn", image], { stdio: ["ignore", "pipe", "pipe"] }).toString();
    return { code: 0, out };
  } catch (e) {
    const x = e as { status?: number; stdout?: Buffer; stderr?: Buffer };
    return { code: x.status ?? -1, out: `${x.stdout?.toString() ?? ""}${x.stderr?.toString() ?? ""}` };
  }
}
