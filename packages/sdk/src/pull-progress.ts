/**
 * Pull progress in the reference SDK's shape: the `PullProgress` events (`kind`) and the
 * create-with-progress session `PullProgressCreate` that
 * `Sandbox.builder(name)....createWithPullProgress()` returns: a `progress` stream
 * (`recv()` or `for await`), closed once the pull is done, and `awaitSandbox()`, which
 * resolves with the sandbox once it has booted and may be called once.
 */
import type { PullProgress as PullerProgress } from "@microsandbox/oci";
import { MicrosandboxError } from "./errors.js";
// Type only (erased): sandbox.ts imports builder.ts, which imports this module.
import type { Sandbox } from "./sandbox.js";

/**
 * Image-pull progress event of `createWithPullProgress()`, as the reference SDK defines
 * it (its `PullProgress` union, exported under both names). The puller's own events
 * (`phase`), which `onPullProgress` and `Images.pull` report, are `ImagePullProgress`.
 */
export type PullProgressEvent =
  | { kind: "resolving"; reference: string }
  | { kind: "resolved"; reference: string; manifestDigest: string; layerCount: number; totalDownloadBytes: number | null }
  | { kind: "layerDownloadProgress"; layerIndex: number; digest: string; downloadedBytes: number; totalBytes: number | null }
  | { kind: "layerDownloadComplete"; layerIndex: number; digest: string; downloadedBytes: number }
  | { kind: "layerDownloadVerifying"; layerIndex: number; digest: string }
  | { kind: "layerMaterializeStarted"; layerIndex: number; diffId: string }
  | { kind: "layerMaterializeProgress"; layerIndex: number; bytesRead: number; totalBytes: number }
  | { kind: "layerMaterializeWriting"; layerIndex: number }
  | { kind: "layerMaterializeComplete"; layerIndex: number; diffId: string }
  | { kind: "stitchMergingTrees"; layerCount: number }
  | { kind: "stitchWritingFsmeta" }
  | { kind: "stitchWritingVmdk" }
  | { kind: "stitchComplete" }
  | { kind: "complete"; reference: string; layerCount: number };

/** The reference's name for the union. */
export type PullProgress = PullProgressEvent;
/** {@link PullProgress}. */
export type ReferencePullProgress = PullProgressEvent;

/**
 * Turns the puller's events (`phase`) into the reference's sequence: resolving,
 * resolved, per layer download progress/complete (only for layers not cached),
 * materialize started/complete per layer, stitch events around the root disk, complete.
 */
export class PullProgressTranslator {
  #layerCount = 0;
  #reference = "";
  #unpacking: { index: number; diffId: string } | undefined;
  #building = false;

  translate(p: PullerProgress): PullProgressEvent[] {
    const out: PullProgressEvent[] = [];
    const endUnpack = () => {
      if (this.#unpacking) out.push({ kind: "layerMaterializeComplete", layerIndex: this.#unpacking.index, diffId: this.#unpacking.diffId });
      this.#unpacking = undefined;
    };
    switch (p.phase) {
      case "resolving":
        this.#reference = p.reference;
        out.push({ kind: "resolving", reference: p.reference });
        break;
      case "resolved":
        this.#layerCount = p.layerCount;
        out.push({ kind: "resolved", reference: p.reference, manifestDigest: p.digest, layerCount: p.layerCount, totalDownloadBytes: p.totalBytes });
        break;
      case "layer":
        if (p.cached) break;
        if (p.doneBytes >= p.totalBytes && p.doneBytes > 0) {
          out.push({ kind: "layerDownloadProgress", layerIndex: p.index, digest: p.digest, downloadedBytes: p.doneBytes, totalBytes: p.totalBytes });
          out.push({ kind: "layerDownloadComplete", layerIndex: p.index, digest: p.digest, downloadedBytes: p.doneBytes });
        } else {
          out.push({ kind: "layerDownloadProgress", layerIndex: p.index, digest: p.digest, downloadedBytes: p.doneBytes, totalBytes: p.totalBytes });
        }
        break;
      case "unpacking":
        endUnpack();
        this.#unpacking = { index: p.index, diffId: p.diffId };
        out.push({ kind: "layerMaterializeStarted", layerIndex: p.index, diffId: p.diffId });
        break;
      case "building":
        endUnpack();
        this.#building = true;
        out.push({ kind: "stitchMergingTrees", layerCount: this.#layerCount });
        break;
      case "complete":
        endUnpack();
        if (this.#building) out.push({ kind: "stitchComplete" });
        this.#building = false;
        out.push({ kind: "complete", reference: p.reference || this.#reference, layerCount: this.#layerCount });
        break;
    }
    return out;
  }
}

/** Streaming subscription to pull progress: `recv()` (null once closed) or `for await`. */
export class PullProgressStream implements AsyncIterable<PullProgressEvent> {
  readonly #queue: PullProgressEvent[] = [];
  readonly #waiters: ((e: PullProgressEvent | null) => void)[] = [];
  #closed = false;

  /** @internal */
  push(e: PullProgressEvent): void {
    if (this.#closed) return;
    const w = this.#waiters.shift();
    if (w) w(e);
    else this.#queue.push(e);
  }

  /** @internal */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) w(null);
  }

  /** The next event, or `null` once the pull is over (the stream is closed). */
  recv(): Promise<PullProgressEvent | null> {
    const e = this.#queue.shift();
    if (e !== undefined) return Promise.resolve(e);
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<PullProgressEvent, void, undefined> {
    for (;;) {
      const e = await this.recv();
      if (e === null) return;
      yield e;
    }
  }
}

/**
 * A sandbox being created with pull progress: iterate `progress` (or the session itself)
 * for the events, then `awaitSandbox()` for the sandbox. `awaitSandbox()` rejects with the
 * create's error, and rejects on a second call.
 */
export class PullProgressCreate implements AsyncIterable<PullProgressEvent> {
  readonly #progress = new PullProgressStream();
  readonly #translator = new PullProgressTranslator();
  #result: Promise<Sandbox> | undefined;
  #consumed = false;

  /** @internal Use `SandboxBuilder.createWithPullProgress()`. */
  constructor() {}

  /** @internal the builder's progress listener */
  readonly listener = (p: PullerProgress): void => {
    for (const e of this.#translator.translate(p)) this.#progress.push(e);
    if (p.phase === "complete") this.#progress.close();
  };

  /** @internal */
  start(result: Promise<Sandbox>): void {
    // held until awaitSandbox(); never an unhandled rejection meanwhile
    result.catch(() => undefined);
    result.then(
      () => this.#progress.close(),
      () => this.#progress.close(),
    );
    this.#result = result;
  }

  /** The progress events; the stream closes once the pull completes (or the create fails). */
  get progress(): PullProgressStream {
    return this.#progress;
  }

  [Symbol.asyncIterator](): AsyncIterator<PullProgressEvent> {
    return this.#progress[Symbol.asyncIterator]();
  }

  /** The sandbox, once pulled and booted. Single use: a second call rejects. */
  async awaitSandbox(): Promise<Sandbox> {
    if (this.#consumed || this.#result === undefined) {
      throw new MicrosandboxError("invalidState", "awaitSandbox() was already called: the sandbox of this session was already consumed");
    }
    this.#consumed = true;
    return this.#result;
  }

  /** Same as {@link awaitSandbox} (single use). */
  result(): Promise<Sandbox> {
    return this.awaitSandbox();
  }
}
