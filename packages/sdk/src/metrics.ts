/**
 * Resource metrics of a sandbox: one snapshot ({@link SandboxMetrics}), and a stream of
 * them ({@link MetricsStream}: an RxJS Observable that is also async-iterable).
 *
 * The numbers are measured by the sandbox's msb-runtime (from QEMU and the guest),
 * never by the process that created the sandbox, so a detached sandbox reports the
 * same figures to anyone who asks.
 */
import "./polyfill.js";
import { Observable } from "rxjs";
import { ProtocolError } from "./errors.js";
import type { Same } from "@microsandbox/contract";
import { msbHome } from "./config.js";
import { closeQuietly, toRecord } from "./lifecycle.js";
import { callNative, native, type NativeMetricsRecord } from "./native.js";

/** A point-in-time snapshot of a sandbox's resource use. */
export interface SandboxMetrics {
  /** CPU use over the last second or so, as a percent of all the sandbox's vCPUs together: 0 to 100. */
  cpuPercent: number;
  /** Memory the guest uses, in bytes: its total memory minus what it reports available (MemTotal - MemAvailable). */
  memoryBytes: number;
  /** The guest's memory size in bytes (the builder's `memory`, in bytes). */
  memoryLimitBytes: number;
  /** Bytes read from the guest's block devices since the VM booted. */
  diskReadBytes: number;
  /** Bytes written to the guest's block devices since the VM booted. */
  diskWriteBytes: number;
  /** Bytes received over the network since boot (0 until sandboxes have networking). */
  netRxBytes: number;
  /** Bytes sent over the network since boot (0 until sandboxes have networking). */
  netTxBytes: number;
  /** When the measurement was taken. */
  timestamp: Date;
  /** Milliseconds since the VM started (a restarted sandbox counts from its last start). */
  uptime: number;
}

const FIELDS = [
  "cpuPercent",
  "memoryBytes",
  "memoryLimitBytes",
  "diskReadBytes",
  "diskWriteBytes",
  "netRxBytes",
  "netTxBytes",
  "timestampMs",
  "uptimeMs",
] as const;
// Every field of the runtime's MetricsReport is checked (compile time: no more, no fewer).
const _everyFieldChecked: Same<(typeof FIELDS)[number], keyof NativeMetricsRecord> = true;

/** Check and convert what the addon returns. A missing or non-numeric field is a {@link ProtocolError}. */
export function toSandboxMetrics(m: NativeMetricsRecord): SandboxMetrics {
  for (const f of FIELDS) {
    const v = (m as unknown as Record<string, unknown> | null)?.[f];
    if (typeof v !== "number" || !Number.isFinite(v) || v < 0) {
      throw new ProtocolError(`metrics from the runtime have a bad ${f}: ${JSON.stringify(v)}`);
    }
  }
  return {
    cpuPercent: Math.min(100, m.cpuPercent),
    memoryBytes: m.memoryBytes,
    memoryLimitBytes: m.memoryLimitBytes,
    diskReadBytes: m.diskReadBytes,
    diskWriteBytes: m.diskWriteBytes,
    netRxBytes: m.netRxBytes,
    netTxBytes: m.netTxBytes,
    timestamp: new Date(m.timestampMs),
    uptime: m.uptimeMs,
  };
}

/**
 * How many samples an async iterator keeps for a consumer that has fallen behind;
 * older ones are dropped (a metrics snapshot is only worth its newest value).
 */
export const METRICS_ITERATOR_BUFFER = 64;

/**
 * A stream of {@link SandboxMetrics}: an RxJS `Observable` (cold: each subscription
 * samples on its own) that is also an `AsyncIterable`.
 *
 * Each subscription takes a sample at once and then one every `intervalMs` (measured
 * from the start of the previous sample, so a slow sample does not shift the rate), and
 * stops sampling when it is unsubscribed. `for await` subscribes when the loop starts
 * and unsubscribes when it ends (also on `break`, `return` or a throw). When the
 * sandbox stops, the stream errors with `SandboxNotRunningError`.
 */
export class MetricsStream extends Observable<SandboxMetrics> implements AsyncIterable<SandboxMetrics> {
  /** The sampling interval in milliseconds. */
  readonly intervalMs: number;

  /** @internal Use `sandbox.metricsStream(intervalMs)`. */
  constructor(sample: () => Promise<SandboxMetrics>, intervalMs: number) {
    super((subscriber) => {
      let active = true;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const tick = async (): Promise<void> => {
        timer = undefined;
        const started = Date.now();
        let m: SandboxMetrics;
        try {
          m = await sample();
        } catch (e) {
          if (active) subscriber.error(e);
          return;
        }
        if (!active) return;
        subscriber.next(m);
        if (!active) return;
        timer = setTimeout(() => void tick(), Math.max(0, started + intervalMs - Date.now()));
      };
      void tick();
      return () => {
        active = false;
        if (timer !== undefined) clearTimeout(timer);
      };
    });
    this.intervalMs = intervalMs;
  }

  [Symbol.asyncIterator](): AsyncIterator<SandboxMetrics> & AsyncIterable<SandboxMetrics> {
    const queue: SandboxMetrics[] = [];
    let waiting: { resolve: (r: IteratorResult<SandboxMetrics>) => void; reject: (e: unknown) => void } | undefined;
    let failure: { error: unknown } | undefined;
    let done = false;
    const finished = (): IteratorResult<SandboxMetrics> => ({ value: undefined, done: true });

    const subscription = this.subscribe({
      next(m) {
        if (waiting) {
          const w = waiting;
          waiting = undefined;
          w.resolve({ value: m, done: false });
          return;
        }
        queue.push(m);
        if (queue.length > METRICS_ITERATOR_BUFFER) queue.shift();
      },
      error(e: unknown) {
        if (waiting) {
          const w = waiting;
          waiting = undefined;
          done = true;
          w.reject(e);
        } else {
          failure = { error: e };
        }
      },
      complete() {
        done = true;
        if (waiting) {
          const w = waiting;
          waiting = undefined;
          w.resolve(finished());
        }
      },
    });

    const iterator: AsyncIterator<SandboxMetrics> & AsyncIterable<SandboxMetrics> = {
      next(): Promise<IteratorResult<SandboxMetrics>> {
        const m = queue.shift();
        if (m !== undefined) return Promise.resolve({ value: m, done: false });
        if (failure) {
          const f = failure;
          failure = undefined;
          done = true;
          return Promise.reject(f.error);
        }
        if (done) return Promise.resolve(finished());
        return new Promise((resolve, reject) => {
          waiting = { resolve, reject };
        });
      },
      return(): Promise<IteratorResult<SandboxMetrics>> {
        done = true;
        queue.length = 0;
        failure = undefined;
        subscription.unsubscribe();
        if (waiting) {
          const w = waiting;
          waiting = undefined;
          w.resolve(finished());
        }
        return Promise.resolve(finished());
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }
}

/**
 * A metrics sample of every running (or draining) sandbox in `$MSB_HOME`, by name, each
 * from its own runtime (the reference's `allSandboxMetrics()`). Sandboxes that stop while
 * they are asked, or whose runtime does not answer, are left out. At most
 * {@link ALL_METRICS_CONCURRENCY} are asked at once.
 */
export async function allSandboxMetrics(): Promise<Record<string, SandboxMetrics>> {
  const home = msbHome();
  const binding = await callNative(() => native());
  const records = (await callNative(() => binding.listSandboxes(home))).map(toRecord);
  const live = records.filter((r) => (r.status === "running" || r.status === "draining") && r.socketPath !== null);
  const out = new Map<string, SandboxMetrics>();
  let next = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const r = live[next++];
      if (r === undefined) return;
      const socketPath = r.socketPath as string;
      try {
        const client = await callNative(() => binding.AgentClient.connect(socketPath));
        try {
          out.set(r.name, toSandboxMetrics(await callNative(() => client.metrics())));
        } finally {
          closeQuietly(client);
        }
      } catch {
        // stopped meanwhile, or not answering: not a running sandbox's sample
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(ALL_METRICS_CONCURRENCY, live.length) }, worker));
  return Object.fromEntries([...out].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** How many sandboxes `allSandboxMetrics()` asks at once. */
export const ALL_METRICS_CONCURRENCY = 8;
