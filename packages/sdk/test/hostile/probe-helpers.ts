// Helpers of the hostile-guest probes (one file per probe): a neighbour check, the host
// process's own health, process memory from /proc, and the static network load generator
// (flood.c).
import { execFileSync } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { expect } from "vitest";
import type { Sandbox } from "../../src/index.js";
import { isGone, within } from "../e2e-helpers.js";

/** Resident set size of `pid` in KiB (`VmRSS` in /proc/<pid>/status). */
export function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

/** Live children of `pid` (from /proc/<n>/stat's ppid field). */
export function childrenOf(pid: number): number[] {
  const kids: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === pid && !isGone(Number(e))) kids.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return kids;
}

/** The QEMU process of a sandbox: the child of its msb-runtime running qemu-system. */
export function qemuPidOf(sb: Sandbox): number {
  const q = childrenOf(sb.runtimePid).filter((p) => {
    try {
      return readFileSync(`/proc/${p}/cmdline`, "utf8").includes("qemu-system");
    } catch {
      return false;
    }
  });
  expect(q, `msb-runtime ${sb.runtimePid} has one QEMU child`).toHaveLength(1);
  return q[0]!;
}

/** A process that exists and is not a zombie. */
export function alive(pid: number): boolean {
  return !isGone(pid);
}

/**
 * The neighbour still answers: an `echo` of a fresh token comes back exactly, and 64 KiB
 * of random bytes written to its filesystem read back identical. Bounded in time.
 */
export async function expectNeighbourAnswers(nb: Sandbox, tag: string): Promise<void> {
  const token = `${tag}-${randomUUID()}`;
  const out = await within(nb.exec("echo", [token]), 30_000, `neighbour echo (${tag})`);
  expect(out.code).toBe(0);
  expect(out.stdout()).toBe(`${token}\n`);
  expect(out.stderr()).toBe("");
  const data = randomBytes(64 * 1024);
  const path = `/tmp/neighbour-${tag}`;
  await within(nb.fs().write(path, data), 30_000, `neighbour fs write (${tag})`);
  const back = await within(nb.fs().read(path), 30_000, `neighbour fs read (${tag})`);
  expect(Buffer.from(back).equals(data)).toBe(true);
  expect(nb.running).toBe(true);
}

/**
 * Watches the test process itself while an attack runs: its event loop's worst delay
 * (a 100 ms timer's lateness) and its RSS growth. `stop()` returns the figures.
 */
export function watchHost(): { stop(): { maxLagMs: number; rssGrowthMiB: number } } {
  const rss0 = process.memoryUsage().rss;
  let maxLag = 0;
  let last = Date.now();
  const t = setInterval(() => {
    const now = Date.now();
    maxLag = Math.max(maxLag, now - last - 100);
    last = now;
  }, 100);
  return {
    stop() {
      clearInterval(t);
      return { maxLagMs: maxLag, rssGrowthMiB: (process.memoryUsage().rss - rss0) / (1 << 20) };
    },
  };
}

/** The host process was not hurt: its event loop kept running and its memory stayed put. */
export function expectHostUnaffected(fig: { maxLagMs: number; rssGrowthMiB: number }): void {
  expect(fig.maxLagMs).toBeLessThan(2000);
  expect(fig.rssGrowthMiB).toBeLessThan(128);
}

/** Sample `pid`'s RSS every 100 ms; `stop()` returns the peak in KiB. */
export function sampleRss(pid: number): { stop(): number } {
  let peak = rssKiB(pid);
  const t = setInterval(() => {
    try {
      peak = Math.max(peak, rssKiB(pid));
    } catch {
      // the process went away: the test sees it
    }
  }, 100);
  return {
    stop() {
      clearInterval(t);
      return peak;
    },
  };
}

/**
 * Build flood.c statically (it runs in the default busybox guest, which has no libc to
 * link against), once per test file; returns the binary's bytes and removes the build.
 */
export function buildFlood(): Uint8Array {
  const src = fileURLToPath(new URL("./flood.c", import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), "msb-flood-"));
  try {
    const out = join(dir, "flood");
    execFileSync("cc", ["-O2", "-static", "-o", out, src], { stdio: "pipe" });
    expect(existsSync(out)).toBe(true);
    return readFileSync(out);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Copy the flood binary into the sandbox as /flood, executable. */
export async function installFlood(sb: Sandbox, bin: Uint8Array): Promise<void> {
  await sb.fs().write("/flood", bin);
  const r = await sb.shell("chmod 755 /flood && /flood 2>&1; echo rc=$?");
  expect(r.stdout()).toBe("usage: flood tcp|udp|dnstcp ...\nrc=2\n");
}
