// Metrics snapshots and the metrics stream (RxJS Observable + async iterator), with fake timers.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { take, toArray, firstValueFrom, type Subscription } from "rxjs";
import { InvalidConfigError, MetricsStream, ProtocolError, Sandbox, SandboxNotRunningError, type SandboxMetrics } from "../src/index.js";
import { METRICS_ITERATOR_BUFFER, toSandboxMetrics } from "../src/metrics.js";
import { setNativeBinding } from "../src/native.js";
import { defaultMetrics, fakeNative, type FakeClient, type FakeNative } from "./fake-native.js";

let fake: FakeNative;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative();
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-unit-home";
});
afterEach(() => {
  vi.useRealTimers();
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

const metricsCalls = (c: FakeClient) => c.calls.filter((x) => x === "metrics").length;

describe("metrics()", () => {
  it("converts the runtime's record: timestamp as a Date, uptime in ms", async () => {
    fake.metricsOf = () => ({
      cpuPercent: 55.5,
      memoryBytes: 123,
      memoryLimitBytes: 512 << 20,
      diskReadBytes: 10,
      diskWriteBytes: 20,
      netRxBytes: 0,
      netTxBytes: 0,
      timestampMs: 1_700_000_000_000,
      uptimeMs: 4321,
    });
    const sb = await Sandbox.builder("m").create();
    expect(await sb.metrics()).toEqual({
      cpuPercent: 55.5,
      memoryBytes: 123,
      memoryLimitBytes: 512 << 20,
      diskReadBytes: 10,
      diskWriteBytes: 20,
      netRxBytes: 0,
      netTxBytes: 0,
      timestamp: new Date(1_700_000_000_000),
      uptime: 4321,
    });
  });

  it("rejects malformed records with ProtocolError", () => {
    const bad = [
      { ...defaultMetrics(), cpuPercent: Number.NaN },
      { ...defaultMetrics(), memoryBytes: -1 },
      { ...defaultMetrics(), uptimeMs: undefined as unknown as number },
      null as unknown as ReturnType<typeof defaultMetrics>,
    ];
    for (const m of bad) expect(() => toSandboxMetrics(m)).toThrow(ProtocolError);
  });

  it("of a stopped sandbox -> SandboxNotRunningError", async () => {
    const sb = await Sandbox.builder("m").create();
    await sb.stop();
    await expect(sb.metrics()).rejects.toBeInstanceOf(SandboxNotRunningError);
  });
});

describe("metricsStream()", () => {
  it("validates the interval", async () => {
    const sb = await Sandbox.builder("m").create();
    for (const bad of [0, -100, 2.5, Number.NaN]) {
      let err: unknown;
      try {
        sb.metricsStream(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(InvalidConfigError);
      expect((err as InvalidConfigError).field).toBe("intervalMs");
    }
    expect(sb.metricsStream(250)).toBeInstanceOf(MetricsStream);
    expect(sb.metricsStream(250).intervalMs).toBe(250);
  });

  it("samples only while subscribed: at once, then every interval; unsubscribe stops it", async () => {
    vi.useFakeTimers();
    const sb = await Sandbox.builder("m").create();
    const client = fake.clients[0]!;
    const stream = sb.metricsStream(300);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(metricsCalls(client)).toBe(0); // cold: nothing before subscribe

    const got: SandboxMetrics[] = [];
    const sub: Subscription = stream.subscribe((m) => got.push(m));
    await vi.advanceTimersByTimeAsync(0);
    expect(got).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(299);
    expect(got).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(got).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(900);
    expect(got).toHaveLength(5); // t = 0, 300, 600, 900, 1200
    sub.unsubscribe();
    const calls = metricsCalls(client);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(metricsCalls(client)).toBe(calls);
    expect(got).toHaveLength(5);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("keeps its rate when a sample is slow, and never overlaps samples", async () => {
    vi.useFakeTimers();
    const sb = await Sandbox.builder("m").create();
    const client = fake.clients[0]!;
    let inFlight = 0;
    let maxInFlight = 0;
    const orig = client.metrics.bind(client);
    client.metrics = async () => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise((r) => setTimeout(r, 100));
      inFlight--;
      return orig();
    };
    const times: number[] = [];
    const start = Date.now();
    const sub = sb.metricsStream(300).subscribe(() => times.push(Date.now() - start));
    await vi.advanceTimersByTimeAsync(1_000);
    sub.unsubscribe();
    // samples start at 0, 300, 600, 900 and each arrives 100 ms later
    expect(times).toEqual([100, 400, 700, 1000]);
    expect(maxInFlight).toBe(1);
  });

  it("works with RxJS operators (take completes and stops sampling)", async () => {
    vi.useFakeTimers();
    const sb = await Sandbox.builder("m").create();
    const client = fake.clients[0]!;
    const p = firstValueFrom(sb.metricsStream(100).pipe(take(3), toArray()));
    await vi.advanceTimersByTimeAsync(1_000);
    expect(await p).toHaveLength(3);
    expect(metricsCalls(client)).toBe(3);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("each subscription samples on its own (cold)", async () => {
    vi.useFakeTimers();
    const sb = await Sandbox.builder("m").create();
    const s = sb.metricsStream(1000);
    const a: SandboxMetrics[] = [];
    const b: SandboxMetrics[] = [];
    const sa = s.subscribe((m) => a.push(m));
    await vi.advanceTimersByTimeAsync(500);
    const sbs = s.subscribe((m) => b.push(m));
    await vi.advanceTimersByTimeAsync(1000);
    sa.unsubscribe();
    sbs.unsubscribe();
    expect(a).toHaveLength(2);
    expect(b).toHaveLength(2);
  });

  it("errors with SandboxNotRunningError when the sandbox stops", async () => {
    vi.useFakeTimers();
    const sb = await Sandbox.builder("m").create();
    const got: SandboxMetrics[] = [];
    let error: unknown;
    let completed = false;
    sb.metricsStream(200).subscribe({ next: (m) => got.push(m), error: (e) => (error = e), complete: () => (completed = true) });
    await vi.advanceTimersByTimeAsync(250);
    expect(got).toHaveLength(2);
    fake.endVm("m", { code: 0, reason: "max duration" });
    await vi.advanceTimersByTimeAsync(1_000);
    expect(error).toBeInstanceOf(SandboxNotRunningError);
    expect(completed).toBe(false);
    expect(got).toHaveLength(2);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("passes other sampling errors through, typed", async () => {
    vi.useFakeTimers();
    const sb = await Sandbox.builder("m").create();
    fake.clients[0]!.metricsError = new Error("protocol: bad metrics frame");
    let error: unknown;
    sb.metricsStream(200).subscribe({ error: (e) => (error = e) });
    await vi.advanceTimersByTimeAsync(0);
    expect(error).toBeInstanceOf(ProtocolError);
  });

  it("is async-iterable: for await gets samples at the interval, break stops sampling", async () => {
    vi.useFakeTimers();
    const sb = await Sandbox.builder("m").create();
    const client = fake.clients[0]!;
    const start = Date.now();
    const at: number[] = [];
    const loop = (async () => {
      for await (const m of sb.metricsStream(300)) {
        expect(m.timestamp).toBeInstanceOf(Date);
        at.push(Date.now() - start);
        if (at.length === 5) break;
      }
    })();
    await vi.advanceTimersByTimeAsync(2_000);
    await loop;
    expect(at).toEqual([0, 300, 600, 900, 1200]);
    const calls = metricsCalls(client);
    expect(calls).toBe(5);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(metricsCalls(client)).toBe(calls);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("for await rejects with SandboxNotRunningError when the sandbox stops", async () => {
    vi.useFakeTimers();
    const sb = await Sandbox.builder("m").create();
    let n = 0;
    const loop = (async () => {
      for await (const _ of sb.metricsStream(100)) {
        if (++n === 2) fake.endVm("m", { code: 137, reason: "killed" });
      }
    })();
    const settled = loop.then(
      () => "completed",
      (e: unknown) => e,
    );
    await vi.advanceTimersByTimeAsync(1_000);
    expect(await settled).toBeInstanceOf(SandboxNotRunningError);
    expect(n).toBe(2);
  });

  it("an iterator that falls behind keeps only the newest samples", async () => {
    vi.useFakeTimers();
    let seq = 0;
    fake.metricsOf = () => ({ ...defaultMetrics(), uptimeMs: seq++ });
    const sb = await Sandbox.builder("m").create();
    const it = sb.metricsStream(10)[Symbol.asyncIterator]();
    await vi.advanceTimersByTimeAsync(10 * (METRICS_ITERATOR_BUFFER + 20));
    const first = await it.next();
    expect(first.done).toBe(false);
    expect((first.value as SandboxMetrics).uptime).toBeGreaterThanOrEqual(20);
    await it.return!();
    expect(await it.next()).toEqual({ value: undefined, done: true });
    const calls = metricsCalls(fake.clients[0]!);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(metricsCalls(fake.clients[0]!)).toBe(calls);
  });
});
