// Helpers of the install test: the release directory (a copy of the repository's
// publishable parts), child processes with their output, and what a published tarball
// holds. Node built-ins only.
import { spawn } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { gunzipSync } from "node:zlib";

export interface PackageJson {
  name: string;
  version: string;
  private?: boolean;
  bin?: Record<string, string> | string;
  files?: string[];
  os?: string[];
  cpu?: string[];
  libc?: string[];
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
}

export const readJson = <T>(file: string): T => JSON.parse(readFileSync(file, "utf8")) as T;

/** The repository's packages/*\/ directories with a package.json, by directory name. */
export function workspacePackages(root: string): { dir: string; pkg: PackageJson }[] {
  return readdirSync(join(root, "packages"), { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(root, "packages", d.name, "package.json")))
    .map((d) => ({ dir: d.name, pkg: readJson<PackageJson>(join(root, "packages", d.name, "package.json")) }))
    .sort((a, b) => a.dir.localeCompare(b.dir));
}

/**
 * Copies what a release needs from `root` into `dest`: the root package.json (its
 * workspaces) and package-lock.json, .changeset/ (config and pending changesets),
 * scripts/ (packages' publish hooks run `node ../../scripts/...`), the root LICENSE, and
 * every non-private packages/*\/ directory as it is, built artifacts included, without
 * node_modules. Private packages keep only their package.json (the workspace graph stays
 * whole; they are never published). Returns the non-private packages copied (their
 * directory under packages/ and their package.json as it was).
 */
export function copyRelease(root: string, dest: string): { dir: string; pkg: PackageJson }[] {
  mkdirSync(join(dest, "packages"), { recursive: true });
  for (const f of ["package.json", "package-lock.json", "LICENSE"]) {
    if (existsSync(join(root, f))) cpSync(join(root, f), join(dest, f));
  }
  for (const d of [".changeset", "scripts"]) {
    if (existsSync(join(root, d))) cpSync(join(root, d), join(dest, d), { recursive: true });
  }
  const published: { dir: string; pkg: PackageJson }[] = [];
  for (const { dir, pkg } of workspacePackages(root)) {
    const from = join(root, "packages", dir);
    const to = join(dest, "packages", dir);
    if (pkg.private) {
      mkdirSync(to, { recursive: true });
      cpSync(join(from, "package.json"), join(to, "package.json"));
      continue;
    }
    cpSync(from, to, {
      recursive: true,
      filter: (src) => {
        const rel = relative(from, src);
        return !rel.split(sep).some((part) => part === "node_modules" || part === ".readme-tmp");
      },
    });
    published.push({ dir, pkg });
  }
  return published;
}

export interface RunResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

/**
 * Runs a command to its end (never throws for a non-zero exit), in a process group of
 * its own that is killed whole on timeout.
 */
export function runCmd(
  cmd: string,
  args: string[],
  opts: { cwd: string; env: NodeJS.ProcessEnv; timeoutMs: number; input?: string },
): Promise<RunResult> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ["pipe", "pipe", "pipe"], detached: true });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    child.stdin.end(opts.input ?? "");
    let timedOut = false;
    const t = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        /* gone */
      }
    }, opts.timeoutMs);
    child.on("error", (e) => (stderr += `spawn error: ${e.message}\n`));
    child.on("close", (code, signal) => {
      clearTimeout(t);
      resolve({ code, signal, stdout, stderr, timedOut, ms: Date.now() - t0 });
    });
  });
}

/** "cmd args -> exit N (after T s)\nstdout...\nstderr..." for assertion messages. */
export function describeRun(what: string, r: RunResult): string {
  const end = r.timedOut ? "timed out" : `exit ${r.code ?? r.signal}`;
  return `${what}: ${end} after ${(r.ms / 1000).toFixed(1)} s\n--- stdout:\n${r.stdout.slice(-8000)}\n--- stderr:\n${r.stderr.slice(-8000)}`;
}

export interface TarEntry {
  /** path inside the package (the tarball's leading "package/" removed) */
  path: string;
  type: "file" | "dir" | "symlink" | "other";
  mode: number;
  size: number;
}

export interface TarballStats {
  /** compressed: the .tgz as served */
  size: number;
  /** sum of the file sizes inside (npm's `unpackedSize`) */
  unpackedSize: number;
  entries: TarEntry[];
}

/** Walks a published .tgz (npm writes ustar, with pax headers for long names). */
export function tarballStats(tgz: Buffer): TarballStats {
  const tar = gunzipSync(tgz);
  const entries: TarEntry[] = [];
  let paxPath: string | undefined;
  let longName: string | undefined;
  for (let off = 0; off + 512 <= tar.length; ) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const str = (a: number, n: number) => h.subarray(a, a + n).toString("utf8").replace(/\0.*$/s, "");
    const size = parseInt(str(124, 12).trim() || "0", 8);
    const type = String.fromCharCode(h[156]!);
    const data = tar.subarray(off + 512, off + 512 + size);
    off += 512 + Math.ceil(size / 512) * 512;
    if (type === "x") {
      const m = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(data.toString("utf8"));
      paxPath = m?.[1];
      continue;
    }
    if (type === "L") {
      longName = data.toString("utf8").replace(/\0.*$/s, "");
      continue;
    }
    if (type === "g") continue;
    const prefix = str(345, 155);
    const name = paxPath ?? longName ?? (prefix ? `${prefix}/${str(0, 100)}` : str(0, 100));
    paxPath = longName = undefined;
    entries.push({
      path: name.replace(/^package\//, ""),
      type: type === "0" || type === "\0" ? "file" : type === "5" ? "dir" : type === "2" ? "symlink" : "other",
      mode: parseInt(str(100, 8).trim() || "0", 8),
      size,
    });
  }
  return { size: tgz.length, unpackedSize: entries.filter((e) => e.type === "file").reduce((s, e) => s + e.size, 0), entries };
}

/** 1234567 -> "1.18 MiB" */
export function human(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}
