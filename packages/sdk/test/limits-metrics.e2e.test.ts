// End-to-end: host-side lifetime limits (idle timeout, max duration) and metrics on
// real VMs. Timing is only checked as generous "within N seconds" bounds: the VMs run
// under TCG on 2 cores here.
import { describe, expect, it } from "vitest";
import { Sandbox, SandboxNotRunningError, type SandboxMetrics } from "../src/index.js";
import { cleanup, useTempMsbHome, within } from "./e2e-helpers.js";

useTempMsbHome();

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe("idleTimeout", () => {
  it("stops a sandbox with no command running, and not while one runs", async () => {
    const sb = await Sandbox.builder("e2e-idle").idleTimeout(3).create();
    try {
      expect(sb.config().idleTimeoutSecs).toBe(3);
      // A command longer than the idle timeout is not cut short: the sandbox is not idle.
      const t0 = Date.now();
      const out = await sb.shell("sleep 5; echo survived");
      expect(out.stdout()).toBe("survived\n");
      expect(Date.now() - t0).toBeGreaterThanOrEqual(4_500);
      // Then nothing runs: it drains and stops within ~3 s (15 s allowed).
      const idleSince = Date.now();
      const status = await within(sb.wait(), 15_000, "the idle sandbox stopping");
      const idleFor = Date.now() - idleSince;
      expect(idleFor, "stopped before it had been idle for its timeout").toBeGreaterThanOrEqual(2_000);
      expect(status).toEqual({ code: 0, success: true });
      const h = await Sandbox.get("e2e-idle");
      expect(h.status).toBe("stopped");
      expect(h.exitReason).toBe("idle timeout");
    } finally {
      await cleanup(sb);
    }
  });
});

describe("maxDuration", () => {
  it("stops a sandbox at its age limit even though a command is still running", async () => {
    const created = Date.now();
    const sb = await Sandbox.builder("e2e-maxdur").maxDuration(5).create();
    try {
      const busy = await sb.execStream("sleep", ["100"]);
      const busyDone = busy.wait().then(
        (s) => `exited ${s.code}`,
        (e: unknown) => `failed ${(e as Error).name}`,
      );
      const status = await within(sb.wait(), 25_000, "the sandbox stopping at its max duration");
      const age = Date.now() - created;
      expect(age, "stopped long before its max duration").toBeGreaterThanOrEqual(4_000);
      expect(age).toBeLessThanOrEqual(25_000);
      // a graceful shutdown: the guest's processes take SIGTERM and go, nothing is killed
      expect(status).toEqual({ code: 0, success: true });
      const h = await Sandbox.get("e2e-maxdur");
      expect(h.status).toBe("stopped");
      expect(h.exitCode).toBe(0);
      expect(h.exitReason).toBe("max duration");
      // the long command was ended by the shutdown's SIGTERM (128 + 15)
      expect(await within(busyDone, 10_000, "the cut-off command settling")).toBe("exited 143");
    } finally {
      await cleanup(sb);
    }
  });
});

describe("metrics", () => {
  it("a snapshot has every field, in range; disk and network counters follow what the guest does", async () => {
    const sb = await Sandbox.builder("e2e-metrics-snap").memory(256).create();
    try {
      const m = await sb.metrics();
      expect(m.memoryLimitBytes).toBe(256 * 1024 * 1024);
      expect(m.memoryBytes).toBeGreaterThan(0);
      expect(m.memoryBytes).toBeLessThanOrEqual(m.memoryLimitBytes);
      expect(Number.isFinite(m.cpuPercent)).toBe(true);
      expect(m.cpuPercent).toBeLessThanOrEqual(100);
      expect(m.diskReadBytes).toBeGreaterThan(0); // the root filesystem was read at boot
      // nothing has used the network yet
      expect(m.netRxBytes).toBe(0);
      expect(m.netTxBytes).toBe(0);
      expect(m.uptime).toBeGreaterThan(0);
      expect(Math.abs(m.timestamp.getTime() - Date.now())).toBeLessThan(60_000);
      // handle.metrics() asks the runtime too
      const hm = await (await Sandbox.get("e2e-metrics-snap")).metrics();
      expect(hm.memoryLimitBytes).toBe(m.memoryLimitBytes);
      expect(hm.uptime).toBeGreaterThanOrEqual(m.uptime);

      // 8 MiB written and synced to the writable disk: diskWriteBytes grows by at least that
      const w = await sb.shell("dd if=/dev/urandom of=/root/f bs=1048576 count=8 2>&1 && sync");
      expect(w.code, w.stdout()).toBe(0);
      const afterWrite = await sb.metrics();
      expect(afterWrite.diskWriteBytes - m.diskWriteBytes).toBeGreaterThanOrEqual(8 * 1024 * 1024);
      // a DNS query to the gateway and its answer (whatever the host's resolver says): both network counters move
      await sb.shell("nslookup example.com 10.0.2.2 >/dev/null 2>&1");
      const afterNet = await sb.metrics();
      expect(afterNet.netTxBytes).toBeGreaterThan(0);
      expect(afterNet.netRxBytes).toBeGreaterThan(0);
    } finally {
      await cleanup(sb);
    }
  });

  it("cpuPercent rises while the guest burns CPU", async () => {
    const sb = await Sandbox.builder("e2e-metrics-cpu").cpus(1).create();
    try {
      const burn = await sb.execStream("timeout", ["20", "sh", "-c", "while :; do :; done"]);
      const burnDone = burn.wait().catch(() => undefined);
      let best = 0;
      const deadline = Date.now() + 15_000;
      while (Date.now() < deadline && best <= 30) {
        await sleep(1_000);
        best = Math.max(best, (await sb.metrics()).cpuPercent);
      }
      expect(best, "cpuPercent while a busy loop runs").toBeGreaterThan(30);
      await sb.kill();
      await burnDone;
    } finally {
      await cleanup(sb);
    }
  });

  it("memoryBytes rises by more than 50 MB when the guest fills 100 MiB of tmpfs", async () => {
    const sb = await Sandbox.builder("e2e-metrics-mem").memory(512).create();
    try {
      const before = (await sb.metrics()).memoryBytes;
      const fill = await sb.shell("dd if=/dev/zero of=/dev/shm/f bs=1048576 count=100 2>&1 && sync");
      expect(fill.code, fill.stdout()).toBe(0);
      let after = 0;
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline && after - before <= 50e6) {
        after = (await sb.metrics()).memoryBytes;
        if (after - before <= 50e6) await sleep(500);
      }
      expect(after - before, `memoryBytes ${before} -> ${after}`).toBeGreaterThan(50e6);
      // and falls back once the file is gone
      await sb.shell("rm /dev/shm/f");
      let released = after;
      const deadline2 = Date.now() + 10_000;
      while (Date.now() < deadline2 && after - released <= 50e6) {
        await sleep(500);
        released = (await sb.metrics()).memoryBytes;
      }
      expect(after - released, `memoryBytes ${after} -> ${released} after rm`).toBeGreaterThan(50e6);
    } finally {
      await cleanup(sb);
    }
  });

  it("the stream emits at the requested interval, stops on break, and errors when the sandbox stops", async () => {
    const sb = await Sandbox.builder("e2e-metrics-stream").create();
    try {
      // 5 samples at 300 ms: the first at once, then 4 intervals.
      const start = Date.now();
      const samples: SandboxMetrics[] = [];
      for await (const m of sb.metricsStream(300)) {
        samples.push(m);
        if (samples.length === 5) break;
      }
      const took = Date.now() - start;
      expect(took).toBeGreaterThanOrEqual(1_150);
      expect(took).toBeLessThanOrEqual(5_000);
      for (let i = 1; i < samples.length; i++) {
        expect(samples[i]!.uptime).toBeGreaterThan(samples[i - 1]!.uptime);
        expect(samples[i]!.timestamp.getTime()).toBeGreaterThanOrEqual(samples[i - 1]!.timestamp.getTime());
      }

      // subscribe(): samples flow until unsubscribed
      const got: SandboxMetrics[] = [];
      const sub = sb.metricsStream(200).subscribe((m) => got.push(m));
      await sleep(1_500);
      sub.unsubscribe();
      const n = got.length;
      expect(n).toBeGreaterThanOrEqual(3);
      await sleep(1_000);
      expect(got.length).toBe(n);

      // stopping the sandbox errors an open stream with a typed error
      const ended = new Promise<unknown>((resolve) => {
        sb.metricsStream(200).subscribe({ error: resolve, complete: () => resolve("completed") });
      });
      await sleep(500);
      await sb.stop();
      expect(await within(ended, 10_000, "the stream ending")).toBeInstanceOf(SandboxNotRunningError);
    } finally {
      await cleanup(sb);
    }
  });
});
