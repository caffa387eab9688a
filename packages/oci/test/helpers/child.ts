// Spawning pull-child.mjs and watching its output.
import { spawn, type ChildProcess } from "node:child_process";
import { childScript } from "./build.js";

export interface ChildResult {
  ok: boolean;
  code?: string;
  message?: string;
  image?: { digest: string; rootfs: string; reference: string };
}

export interface PullChild {
  proc: ChildProcess;
  lines: string[];
  /** Resolves when a line satisfying `pred` is printed (rejects if the child exits first). */
  waitFor(pred: (line: string) => boolean, timeoutMs?: number): Promise<string>;
  /** Exit status and the final JSON line. */
  done: Promise<{ status: number | null; signal: NodeJS.Signals | null; result?: ChildResult; stderr: string }>;
}

export function spawnPull(ref: string, msbHome: string, opts: object = {}, prefix: string[] = []): PullChild {
  const argv = [...prefix, process.execPath, childScript, ref, msbHome, JSON.stringify(opts)];
  const proc = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  const waiters: { pred: (l: string) => boolean; resolve: (l: string) => void; reject: (e: Error) => void }[] = [];
  let buf = "";
  let stderr = "";
  proc.stdout!.setEncoding("utf8").on("data", (d: string) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lines.push(line);
      for (const w of [...waiters]) {
        if (w.pred(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  proc.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const done = new Promise<{ status: number | null; signal: NodeJS.Signals | null; result?: ChildResult; stderr: string }>((resolve) => {
    proc.on("close", (status, signal) => {
      for (const w of waiters.splice(0)) w.reject(new Error(`child exited (${status ?? signal}) before the awaited line; stderr: ${stderr}`));
      const last = lines.filter((l) => l.startsWith("{")).at(-1);
      resolve({ status, signal, ...(last ? { result: JSON.parse(last) as ChildResult } : {}), stderr });
    });
  });
  return {
    proc,
    lines,
    done,
    waitFor(pred, timeoutMs = 30_000) {
      const hit = lines.find(pred);
      if (hit !== undefined) return Promise.resolve(hit);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`timed out waiting; lines so far: ${lines.join(" | ")}; stderr: ${stderr}`)), timeoutMs);
        waiters.push({
          pred,
          resolve: (l) => {
            clearTimeout(t);
            resolve(l);
          },
          reject: (e) => {
            clearTimeout(t);
            reject(e);
          },
        });
      });
    },
  };
}
