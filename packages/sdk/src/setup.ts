/**
 * What happens in a fresh guest before `create()` resolves: scripts into
 * /.msb/scripts, then the patches, in order, through the filesystem operations.
 */
import { createReadStream, statSync } from "node:fs";
import { posix } from "node:path";
import type { PatchOp } from "./config.js";
import { SandboxFsOpsError } from "./errors.js";
import type { SandboxFs } from "./fs.js";

/** Where `.script(name, content)` puts scripts; every command's PATH ends with it. */
export const SCRIPTS_DIR = "/.msb/scripts";

/** Write the sandbox's scripts (mode 0755), replacing what is there. */
export async function installScripts(fs: SandboxFs, scripts: readonly [string, string][]): Promise<void> {
  if (scripts.length === 0) return;
  await fs.mkdir(SCRIPTS_DIR, { mode: 0o755, recursive: true });
  for (const [name, content] of scripts) await fs.write(posix.join(SCRIPTS_DIR, name), content, { mode: 0o755 });
}

async function parentOf(fs: SandboxFs, path: string): Promise<void> {
  const parent = posix.dirname(path);
  if (parent !== "/" && parent !== path) await fs.mkdir(parent, { recursive: true });
}

/** Apply patch steps in order. */
export async function applyPatches(fs: SandboxFs, patches: readonly PatchOp[]): Promise<void> {
  for (const p of patches) {
    switch (p.kind) {
      case "text":
      case "file":
        await parentOf(fs, p.path);
        await fs.write(p.path, p.content ?? new Uint8Array(), p.mode === null ? {} : { mode: p.mode });
        break;
      case "append":
        await parentOf(fs, p.path);
        await fs.write(p.path, p.content ?? new Uint8Array(), { append: true });
        break;
      case "copyFile": {
        await parentOf(fs, p.path);
        const src = p.source as string;
        const mode = p.mode ?? statSync(src).mode & 0o7777;
        const ws = await fs.writeStream(p.path, { mode });
        try {
          for await (const chunk of createReadStream(src, { highWaterMark: 1 << 20 })) await ws.write(chunk as Buffer);
        } finally {
          await ws.close();
        }
        break;
      }
      case "copyDir":
        await parentOf(fs, p.path);
        await fs.copyFromHost(p.source as string, p.path);
        break;
      case "symlink":
        await parentOf(fs, p.path);
        try {
          await fs.symlink(p.target as string, p.path);
        } catch (e) {
          if (!(e instanceof SandboxFsOpsError && e.errno === "EEXIST") || (await fs.stat(p.path)).kind === "dir") throw e;
          await fs.remove(p.path);
          await fs.symlink(p.target as string, p.path);
        }
        break;
      case "mkdir":
        await fs.mkdir(p.path, p.mode === null ? { recursive: true } : { mode: p.mode, recursive: true });
        break;
      case "remove": {
        let kind: string;
        try {
          kind = (await fs.stat(p.path)).kind;
        } catch (e) {
          if (e instanceof SandboxFsOpsError && e.errno === "ENOENT") break;
          throw e;
        }
        if (kind === "dir") await fs.removeDir(p.path, { recursive: true });
        else await fs.remove(p.path);
        break;
      }
    }
  }
}
