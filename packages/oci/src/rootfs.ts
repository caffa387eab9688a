/**
 * Building the read-only root disk of an image: `mke2fs -d <staging>` copies the staged
 * tree (content, hardlinks, symlinks, mtimes), then one `debugfs -w -f <script>` run sets
 * the image's owners and modes (setuid/setgid/sticky included) and creates its device
 * nodes and fifos, none of which needs root on the host.
 */
import { spawn } from "node:child_process";
import { existsSync, promises as fsp } from "node:fs";
import { delimiter, join } from "node:path";
import { OciError, abortError } from "./errors.js";
import { modeWithType, type Inode, type TreeNode, type Unpacker } from "./unpack.js";

const SBIN = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/** Find mke2fs / debugfs on PATH or in the sbin directories (not on a user's PATH on Debian). */
export function findTool(name: string): string {
  const dirs = [...(process.env.PATH ?? "").split(delimiter).filter(Boolean), ...SBIN];
  for (const d of dirs) {
    const p = join(d, name);
    if (existsSync(p)) return p;
  }
  throw new OciError("image", `${name} was not found: install e2fsprogs (apt-get install e2fsprogs); run \`msb doctor\` to check the host`);
}

/** Quote a path for debugfs's command parser: double quotes, a quote inside is doubled. */
export function debugfsQuote(p: string): string {
  return `"${p.replace(/"/g, '""')}"`;
}

/** Names debugfs's line-based scripts cannot carry. */
function expressible(name: string): boolean {
  return !/[\n\r]/.test(name);
}

export interface ScriptOptions {
  /** Owner of the staged files (what mke2fs -d records). */
  hostUid: number;
  hostGid: number;
  /** The image has its own /lost+found: keep the one mke2fs makes. */
  keepLostFound?: boolean;
}

/**
 * The debugfs script that turns the mke2fs -d result into the image's real metadata:
 * `sif <path> uid|gid|mode ...` where the staged file differs, and `mknod` (after a
 * `cd` into the parent: debugfs links the new node into the current directory) for
 * devices and fifos. Returns the script and warnings for names it had to skip.
 */
export function debugfsScript(root: TreeNode, opts: ScriptOptions): { script: string; warnings: string[]; commands: number } {
  const lines: string[] = [];
  const warnings: string[] = [];
  const done = new Set<Inode>();

  const fix = (path: string, n: TreeNode, fresh: boolean): void => {
    const q = debugfsQuote(path);
    const i = n.inode;
    if (fresh || i.uid !== opts.hostUid) lines.push(`sif ${q} uid ${i.uid}`);
    if (fresh || i.gid !== opts.hostGid) lines.push(`sif ${q} gid ${i.gid}`);
    if (fresh || (n.type !== "symlink" && (i.perm & 0o7777) !== i.hostPerm)) {
      lines.push(`sif ${q} mode 0${modeWithType(n).toString(8)}`);
    }
    if (fresh) lines.push(`sif ${q} mtime @${i.mtime}`);
  };

  const visit = (n: TreeNode, path: string, parent: string): void => {
    const isDevice = n.type === "char" || n.type === "block" || n.type === "fifo";
    if (isDevice) {
      // each path gets its own node (a hardlinked device becomes two equal devices)
      const name = path.slice(path.lastIndexOf("/") + 1);
      lines.push(`cd ${debugfsQuote(parent)}`);
      lines.push(
        n.type === "fifo"
          ? `mknod ${debugfsQuote(name)} p`
          : `mknod ${debugfsQuote(name)} ${n.type === "char" ? "c" : "b"} ${n.inode.devmajor} ${n.inode.devminor}`,
      );
      lines.push("cd /");
      fix(path, n, true);
    } else if (!done.has(n.inode)) {
      done.add(n.inode);
      fix(path, n, false);
    }
    if (n.children) {
      for (const [name, c] of n.children) {
        const p = path === "/" ? `/${name}` : `${path}/${name}`;
        if (!expressible(name)) {
          warnings.push(`"${p.replace(/\n/g, "\\n").replace(/\r/g, "\\r")}": debugfs cannot express this name; its owner and mode were not set (and a device node there was not created)`);
          continue;
        }
        visit(c, p, path);
      }
    }
  };
  // the root: mke2fs -E root_owner=0:0 made it root-owned, 0755
  const r = root.inode;
  if (r.uid !== 0) lines.push(`sif / uid ${r.uid}`);
  if (r.gid !== 0) lines.push(`sif / gid ${r.gid}`);
  if ((r.perm & 0o7777) !== 0o755) lines.push(`sif / mode 0${modeWithType(root).toString(8)}`);
  done.add(root.inode);
  if (!opts.keepLostFound) lines.push("rmdir /lost+found");
  for (const [name, c] of root.children ?? []) {
    if (!expressible(name)) {
      warnings.push(`"/${name.replace(/\n/g, "\\n")}": debugfs cannot express this name; its owner and mode were not set`);
      continue;
    }
    visit(c, `/${name}`, "/");
  }
  return { script: lines.length ? lines.join("\n") + "\n" : "", warnings, commands: lines.length };
}

function run(cmd: string, args: string[], signal: AbortSignal | undefined): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...(signal ? { signal } : {}) });
    let stdout = "";
    let stderr = "";
    p.stdout.setEncoding("utf8").on("data", (d: string) => {
      if (stdout.length < 1 << 20) stdout += d;
    });
    p.stderr.setEncoding("utf8").on("data", (d: string) => {
      if (stderr.length < 1 << 20) stderr += d;
    });
    p.on("error", (e) => reject(signal?.aborted ? abortError(signal) : e));
    p.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

/** Size of the disk in MiB for the staged content: content * 1.25 + 64 MiB. */
export function diskSizeMiB(diskEstimateBytes: number): number {
  return Math.ceil((diskEstimateBytes * 1.25) / (1 << 20)) + 64;
}

export interface BuildResult {
  warnings: string[];
  sizeMiB: number;
  debugfsCommands: number;
}

/**
 * Build `out` (ext4) from the unpacker's staging dir and tree. `out` must not exist;
 * the caller renames it into place once this resolves.
 */
export async function buildExt4(
  unpacker: Unpacker,
  out: string,
  scriptPath: string,
  signal?: AbortSignal,
): Promise<BuildResult> {
  const mke2fs = findTool("mke2fs");
  const debugfs = findTool("debugfs");
  const st = unpacker.stats();
  const sizeMiB = diskSizeMiB(st.diskEstimate);
  const inodes = Math.max(st.nodes + Math.ceil(st.nodes / 4) + 1024, 4096);
  const fh = await fsp.open(out, "wx", 0o644);
  await fh.truncate(sizeMiB * (1 << 20));
  await fh.close();
  // 4 KiB blocks (mke2fs would pick 1 KiB for a "small" fs), no journal (the disk is
  // mounted read-only), no reserved blocks, inodes for every entry.
  const mk = await run(
    mke2fs,
    [
      "-q", "-F", "-t", "ext4", "-b", "4096", "-N", String(inodes), "-m", "0", "-O", "^has_journal",
      "-E", "root_owner=0:0", "-d", unpacker.staging, "-L", "msb-image", out, `${sizeMiB}M`,
    ],
    signal,
  );
  if (mk.code !== 0) {
    throw new OciError("image", `mke2fs failed (exit ${mk.code}) building ${out}: ${(mk.stderr || mk.stdout).trim().slice(0, 2000)}`);
  }
  const keepLostFound = unpacker.root.children?.has("lost+found") ?? false;
  const { script, warnings, commands } = debugfsScript(unpacker.root, {
    hostUid: process.getuid?.() ?? 0,
    hostGid: process.getgid?.() ?? 0,
    keepLostFound,
  });
  if (script) {
    await fsp.writeFile(scriptPath, script);
    const db = await run(debugfs, ["-w", "-f", scriptPath, out], signal);
    const errors = db.stderr
      .split("\n")
      .filter((l) => l.trim() !== "" && !/^debugfs \d/.test(l));
    if (db.code !== 0 || errors.length) {
      throw new OciError(
        "image",
        `debugfs failed to set owners/modes in ${out} (exit ${db.code}): ${errors.slice(0, 10).join("; ").slice(0, 2000)}`,
      );
    }
  }
  return { warnings, sizeMiB, debugfsCommands: commands };
}
