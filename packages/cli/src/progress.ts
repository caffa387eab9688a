/**
 * Pull progress for humans: on a TTY, one live bar per layer, redrawn in place; otherwise
 * plain lines, one per step (resolving, each layer done, unpacking, building, complete),
 * so logs stay readable.
 */
import type { ImagePullProgress as PullProgress } from "@microsandbox/sdk";

export interface ProgressSink {
  write(text: string): void;
  isTTY: boolean;
  columns?: number;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

const short = (digest: string) => digest.replace(/^sha256:/, "").slice(0, 12);

function bar(done: number, total: number, width: number): string {
  const frac = total > 0 ? Math.min(1, done / total) : 0;
  const full = Math.round(frac * width);
  return `[${"=".repeat(Math.max(0, full - 1))}${full > 0 ? ">" : ""}${" ".repeat(width - full)}]`;
}

export class PullProgressView {
  readonly #sink: ProgressSink;
  readonly #layers = new Map<string, { index: number; count: number; done: number; total: number; cached: boolean; finished: boolean }>();
  #status = "";
  #drawnLines = 0;

  constructor(sink: ProgressSink) {
    this.#sink = sink;
  }

  update(p: PullProgress): void {
    if (this.#sink.isTTY) this.#tty(p);
    else this.#plain(p);
  }

  #plain(p: PullProgress): void {
    switch (p.phase) {
      case "resolving":
        this.#sink.write(`resolving ${p.reference}\n`);
        break;
      case "layer": {
        const prev = this.#layers.get(p.digest);
        const finished = p.doneBytes >= p.totalBytes;
        this.#layers.set(p.digest, { ...p, done: p.doneBytes, total: p.totalBytes, finished });
        if (finished && !prev?.finished) {
          const how = p.cached ? "cached" : "downloaded";
          this.#sink.write(`layer ${p.index + 1}/${p.count} ${short(p.digest)}: ${how} ${formatBytes(p.totalBytes)}\n`);
        }
        break;
      }
      case "unpacking":
        this.#sink.write(`unpacking layer ${p.index + 1}/${p.count} ${short(p.digest)}\n`);
        break;
      case "building":
        this.#sink.write(`building root disk for ${p.reference}\n`);
        break;
      case "complete":
        this.#sink.write(`pulled ${p.reference} (${p.digest})\n`);
        break;
    }
  }

  #tty(p: PullProgress): void {
    switch (p.phase) {
      case "resolving":
        this.#status = `resolving ${p.reference}`;
        break;
      case "layer":
        this.#layers.set(p.digest, {
          index: p.index,
          count: p.count,
          done: p.doneBytes,
          total: p.totalBytes,
          cached: p.cached,
          finished: p.doneBytes >= p.totalBytes,
        });
        this.#status = "downloading";
        break;
      case "unpacking":
        this.#status = `unpacking layer ${p.index + 1}/${p.count}`;
        break;
      case "building":
        this.#status = "building root disk";
        break;
      case "complete":
        this.#status = `pulled ${p.reference} (${p.digest})`;
        break;
    }
    this.#redraw();
  }

  #redraw(): void {
    const width = Math.max(10, Math.min(40, (this.#sink.columns ?? 80) - 50));
    const lines: string[] = [];
    for (const [digest, l] of [...this.#layers].sort((a, b) => a[1].index - b[1].index)) {
      const state = l.cached ? "cached" : l.finished ? "done" : `${formatBytes(l.done)}/${formatBytes(l.total)}`;
      lines.push(`${short(digest)} ${bar(l.done, l.total, width)} ${state}`);
    }
    lines.push(this.#status);
    // Move up over what we drew last time, then redraw every line (clearing each).
    let out = this.#drawnLines > 0 ? `\x1b[${this.#drawnLines}F` : "";
    for (const line of lines) out += `\x1b[2K${line}\n`;
    this.#drawnLines = lines.length;
    this.#sink.write(out);
  }
}
