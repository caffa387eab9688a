// A scriptable stand-in for @microsandbox/core-native, for unit tests. It keeps an
// in-memory state store (records by name) that behaves like the real one: create
// needs a free name, start a stopped sandbox, remove a stopped one. Each sandbox also
// has an in-memory guest filesystem (FakeFs) served by the fs operations, with the
// agent's errno behaviour.
import type {
  NativeAgentClient,
  NativeBinding,
  NativeExecEvent,
  NativeExecRequest,
  NativeFsEntry,
  NativeFsOp,
  NativeMetricsRecord,
  NativeRuntimeInfo,
  NativeSandboxConfig,
  NativeSandboxRecord,
} from "../src/native.js";

/**
 * A session whose events are produced as it goes (stdin, signals, resizes reach it).
 * `next` resolves to the next event, `null` after the last, or rejects.
 */
export interface LiveSession {
  next(): Promise<NativeExecEvent | null>;
  stdin?(data: Uint8Array): void | Promise<void>;
  close?(): void;
  signal?(n: number): void;
  resize?(rows: number, cols: number): void;
}

export type Script = (req: NativeExecRequest) => (NativeExecEvent | null | Error)[] | LiveSession;

/** A queue of events that a producer pushes and `next()` pulls (waiting when empty). */
export class EventQueue {
  readonly #items: (NativeExecEvent | null | Error)[] = [];
  readonly #waiters: ((v: NativeExecEvent | null | Error) => void)[] = [];
  #ended = false;

  push(ev: NativeExecEvent | null | Error): void {
    const w = this.#waiters.shift();
    if (w) w(ev);
    else this.#items.push(ev);
  }

  /** Events from now on end with `ev` (no more pushes). */
  end(ev: NativeExecEvent | null | Error): void {
    if (this.#ended) return;
    this.push(ev);
    this.#ended = true;
  }

  get ended(): boolean {
    return this.#ended;
  }

  async next(): Promise<NativeExecEvent | null> {
    const ev = this.#items.length > 0 ? this.#items.shift() : await new Promise<NativeExecEvent | null | Error>((r) => this.#waiters.push(r));
    if (ev instanceof Error) throw ev;
    return ev ?? null;
  }
}

/** `cat`: echoes stdin to stdout; exits 0 at EOF, or 128+n on a signal. Records resizes. */
export function catSession(log: string[] = []): LiveSession {
  const q = new EventQueue();
  q.push({ kind: "started", pid: 77 });
  return {
    next: () => q.next(),
    stdin: (d) => void q.push({ kind: "stdout", data: Buffer.from(d) }),
    close: () => q.end({ kind: "exited", code: 0, signal: null }),
    signal: (n) => q.end({ kind: "exited", code: 128 + n, signal: n }),
    resize: (r, c) => void log.push(`resize ${r}x${c}`),
  };
}

/** A command that runs until a signal ends it (exit 128+n). */
export function sleeperSession(opts: { ignore?: number[] } = {}): LiveSession {
  const q = new EventQueue();
  q.push({ kind: "started", pid: 78 });
  return {
    next: () => q.next(),
    signal: (n) => {
      if (!opts.ignore?.includes(n)) q.end({ kind: "exited", code: 128 + n, signal: n });
    },
  };
}

function queueSession(events: (NativeExecEvent | null | Error)[]): LiveSession {
  const q = [...events];
  return {
    async next() {
      const ev = q.shift();
      if (ev === undefined) return null;
      if (ev instanceof Error) throw ev;
      return ev;
    },
  };
}

type FsNode =
  | { kind: "file"; data: Uint8Array; mode: number; mtime: number }
  | { kind: "dir"; mode: number; mtime: number }
  | { kind: "symlink"; target: string; mode: number; mtime: number };

class FsFailure extends Error {
  constructor(
    readonly errno: string,
    readonly path: string,
  ) {
    super(`${path}: ${errno}`);
  }
}

/**
 * An in-memory guest filesystem with the agent's semantics: absolute paths only
 * (EINVAL), ENOENT, EISDIR, ENOTDIR, EEXIST, ENOTEMPTY, EROFS under read-only
 * prefixes, ENOSPC beyond `capacity` bytes under `capped`; mkdir applies umask 022.
 * Symlinks are never followed (paths are taken literally).
 */
export class FakeFs {
  readonly nodes = new Map<string, FsNode>([["/", { kind: "dir", mode: 0o755, mtime: 0 }]]);
  /** Paths under these are read-only (EROFS). */
  readonly readonly: string[] = [];
  /** Writes under `capped` beyond `capacity` bytes fail with ENOSPC. */
  capped: { prefix: string; capacity: number } | undefined;

  static norm(p: string): string {
    const parts: string[] = [];
    for (const c of p.split("/")) {
      if (c === "" || c === ".") continue;
      if (c === "..") parts.pop();
      else parts.push(c);
    }
    return "/" + parts.join("/");
  }

  static parent(p: string): string {
    const i = p.lastIndexOf("/");
    return i <= 0 ? "/" : p.slice(0, i);
  }

  #abs(p: string): string {
    if (!p.startsWith("/") || p.includes("\0")) throw new FsFailure("EINVAL", p);
    return FakeFs.norm(p);
  }

  #ro(p: string): void {
    if (this.readonly.some((r) => p === r || p.startsWith(r + "/"))) throw new FsFailure("EROFS", p);
  }

  #get(p: string): FsNode {
    const n = this.nodes.get(p);
    if (!n) {
      // a file in the way of a parent is ENOTDIR
      let q = FakeFs.parent(p);
      while (q !== "/") {
        const m = this.nodes.get(q);
        if (m && m.kind !== "dir") throw new FsFailure("ENOTDIR", p);
        q = FakeFs.parent(q);
      }
      throw new FsFailure("ENOENT", p);
    }
    return n;
  }

  #parentDir(p: string): void {
    const parent = this.#get(FakeFs.parent(p));
    if (parent.kind !== "dir") throw new FsFailure("ENOTDIR", p);
  }

  #children(p: string): string[] {
    const prefix = p === "/" ? "/" : p + "/";
    return [...this.nodes.keys()].filter((k) => k !== p && k.startsWith(prefix) && !k.slice(prefix.length).includes("/"));
  }

  #subtree(p: string): string[] {
    const prefix = p === "/" ? "/" : p + "/";
    return [...this.nodes.keys()].filter((k) => k === p || k.startsWith(prefix));
  }

  #used(prefix: string): number {
    let n = 0;
    for (const [k, v] of this.nodes) if (v.kind === "file" && k.startsWith(prefix + "/")) n += v.data.byteLength;
    return n;
  }

  /** Put a file (parents created), for test setup. */
  put(path: string, data: string | Uint8Array, mode = 0o644): void {
    const p = FakeFs.norm(path);
    this.mkdirp(FakeFs.parent(p));
    this.nodes.set(p, { kind: "file", data: typeof data === "string" ? Buffer.from(data) : data, mode, mtime: Date.now() });
  }

  mkdirp(path: string, mode = 0o755): void {
    const p = FakeFs.norm(path);
    if (p === "/") return;
    this.mkdirp(FakeFs.parent(p));
    if (!this.nodes.has(p)) this.nodes.set(p, { kind: "dir", mode, mtime: Date.now() });
  }

  text(path: string): string | undefined {
    const n = this.nodes.get(FakeFs.norm(path));
    return n?.kind === "file" ? Buffer.from(n.data).toString() : undefined;
  }

  entry(name: string, n: FsNode): NativeFsEntry {
    const size = n.kind === "file" ? n.data.byteLength : n.kind === "symlink" ? n.target.length : 4096;
    return { name, kind: n.kind, size, mode: n.kind === "symlink" ? 0o777 : n.mode, modifiedMs: n.mtime };
  }

  read(path: string): Uint8Array {
    const p = this.#abs(path);
    const n = this.#get(p);
    if (n.kind === "dir") throw new FsFailure("EISDIR", p);
    if (n.kind === "symlink") {
      const t = n.target.startsWith("/") ? n.target : FakeFs.parent(p) + "/" + n.target;
      return this.read(FakeFs.norm(t));
    }
    return n.data;
  }

  /** Checks done when a write session opens. */
  openWrite(path: string): string {
    const p = this.#abs(path);
    this.#ro(p);
    this.#parentDir(p);
    if (this.nodes.get(p)?.kind === "dir") throw new FsFailure("EISDIR", p);
    return p;
  }

  write(p: string, data: Uint8Array, mode: number | null, append: boolean): void {
    const old = this.nodes.get(p);
    const prev = append && old?.kind === "file" ? old.data : new Uint8Array();
    if (this.capped && p.startsWith(this.capped.prefix + "/")) {
      const others = this.#used(this.capped.prefix) - (old?.kind === "file" ? old.data.byteLength : 0);
      if (others + prev.byteLength + data.byteLength > this.capped.capacity) throw new FsFailure("ENOSPC", p);
    }
    const out = new Uint8Array(prev.byteLength + data.byteLength);
    out.set(prev, 0);
    out.set(data, prev.byteLength);
    this.nodes.set(p, { kind: "file", data: out, mode: mode ?? (old?.kind === "file" ? old.mode : 0o644), mtime: Date.now() });
  }

  list(path: string): NativeFsEntry[] {
    const p = this.#abs(path);
    const n = this.#get(p);
    if (n.kind !== "dir") throw new FsFailure("ENOTDIR", p);
    return this.#children(p)
      .sort()
      .map((k) => this.entry(k.slice(k.lastIndexOf("/") + 1), this.nodes.get(k) as FsNode));
  }

  stat(path: string): NativeFsEntry {
    const p = this.#abs(path);
    return this.entry(p === "/" ? "/" : p.slice(p.lastIndexOf("/") + 1), this.#get(p));
  }

  exists(path: string): boolean {
    const p = this.#abs(path);
    return this.nodes.has(p);
  }

  mkdir(path: string, mode: number | null, recursive: boolean): void {
    const p = this.#abs(path);
    this.#ro(p);
    const existing = this.nodes.get(p);
    if (existing) {
      if (recursive && existing.kind === "dir") return;
      throw new FsFailure("EEXIST", p);
    }
    if (recursive) {
      const parent = FakeFs.parent(p);
      if (!this.nodes.has(parent)) this.mkdir(parent, null, true);
    }
    this.#parentDir(p);
    this.nodes.set(p, { kind: "dir", mode: (mode ?? 0o755) & ~0o022, mtime: Date.now() });
  }

  remove(path: string): void {
    const p = this.#abs(path);
    this.#ro(p);
    const n = this.#get(p);
    if (n.kind === "dir") throw new FsFailure("EISDIR", p);
    this.nodes.delete(p);
  }

  removeDir(path: string, recursive: boolean): void {
    const p = this.#abs(path);
    this.#ro(p);
    const n = this.#get(p);
    if (n.kind !== "dir") throw new FsFailure("ENOTDIR", p);
    if (!recursive && this.#children(p).length > 0) throw new FsFailure("ENOTEMPTY", p);
    for (const k of this.#subtree(p)) this.nodes.delete(k);
  }

  copy(src: string, dst: string): void {
    const s = this.#abs(src);
    const d = this.#abs(dst);
    this.#ro(d);
    this.#get(s);
    this.#parentDir(d);
    for (const k of this.#subtree(s)) {
      const n = this.nodes.get(k) as FsNode;
      this.nodes.set(d + k.slice(s.length), n.kind === "file" ? { ...n, data: new Uint8Array(n.data) } : { ...n });
    }
  }

  rename(src: string, dst: string): void {
    const s = this.#abs(src);
    const d = this.#abs(dst);
    this.#ro(s);
    this.#ro(d);
    this.#get(s);
    this.#parentDir(d);
    for (const k of this.#subtree(s)) {
      const n = this.nodes.get(k) as FsNode;
      this.nodes.delete(k);
      this.nodes.set(d + k.slice(s.length), n);
    }
  }

  symlink(target: string, link: string): void {
    const l = this.#abs(link);
    this.#ro(l);
    if (this.nodes.has(l)) throw new FsFailure("EEXIST", l);
    this.#parentDir(l);
    this.nodes.set(l, { kind: "symlink", target, mode: 0o777, mtime: Date.now() });
  }

  readlink(path: string): string {
    const n = this.#get(this.#abs(path));
    if (n.kind !== "symlink") throw new FsFailure("EINVAL", path);
    return n.target;
  }

  chmod(path: string, mode: number): void {
    const p = this.#abs(path);
    const n = this.#get(p);
    n.mode = mode;
  }

  /** The session of one fs operation (events as the agent sends them). */
  session(op: NativeFsOp): LiveSession {
    const q = new EventQueue();
    const fail = (e: unknown) => {
      if (e instanceof FsFailure) q.end({ kind: "fsError", errno: e.errno, message: `${e.path}: ${e.errno}` });
      else q.end(e instanceof Error ? e : new Error(String(e)));
    };
    try {
      if ("read" in op) {
        const data = this.read(op.read.path);
        for (let off = 0; off < data.byteLength; off += 65536) q.push({ kind: "fsData", data: Buffer.from(data.subarray(off, off + 65536)) });
        q.end({ kind: "fsEnd" });
      } else if ("write" in op) {
        const w = op.write;
        const p = this.openWrite(w.path);
        const chunks: Uint8Array[] = [];
        return {
          next: () => q.next(),
          stdin: (d) => void chunks.push(new Uint8Array(d)),
          close: () => {
            try {
              this.write(p, Buffer.concat(chunks), w.mode, w.append);
              q.end({ kind: "fsDone" });
            } catch (e) {
              fail(e);
            }
          },
        };
      } else if ("list" in op) q.end({ kind: "fsEntries", entries: this.list(op.list.path) });
      else if ("stat" in op) q.end({ kind: "fsStat", entry: this.stat(op.stat.path) });
      else if ("exists" in op) q.end({ kind: "fsExists", exists: this.exists(op.exists.path) });
      else {
        if ("mkdir" in op) this.mkdir(op.mkdir.path, op.mkdir.mode, op.mkdir.recursive);
        else if ("remove" in op) this.remove(op.remove.path);
        else if ("remove_dir" in op) this.removeDir(op.remove_dir.path, op.remove_dir.recursive);
        else if ("copy" in op) this.copy(op.copy.src, op.copy.dst);
        else if ("rename" in op) this.rename(op.rename.src, op.rename.dst);
        else if ("symlink" in op) this.symlink(op.symlink.target, op.symlink.link);
        else throw new Error(`invalidConfig: unknown fs op ${JSON.stringify(op)}`);
        q.end({ kind: "fsDone" });
      }
    } catch (e) {
      fail(e);
    }
    return { next: () => q.next() };
  }

  /** The helper commands the SDK runs as root (readlink, chmod), as the guest would. */
  helper(req: NativeExecRequest): LiveSession | undefined {
    if (req.user !== "0" || (req.cmd !== "readlink" && req.cmd !== "chmod")) return undefined;
    try {
      if (req.cmd === "readlink") return queueSession([{ kind: "started", pid: 9 }, { kind: "stdout", data: Buffer.from(this.readlink(req.args[0] ?? "") + "\n") }, { kind: "exited", code: 0, signal: null }]);
      this.chmod(req.args[1] ?? "", parseInt(req.args[0] ?? "", 8));
      return queueSession([{ kind: "started", pid: 9 }, { kind: "exited", code: 0, signal: null }]);
    } catch (e) {
      return queueSession([{ kind: "started", pid: 9 }, { kind: "stderr", data: Buffer.from(String(e)) }, { kind: "exited", code: 1, signal: null }]);
    }
  }
}

export class FakeClient implements NativeAgentClient {
  readonly requests: NativeExecRequest[] = [];
  readonly calls: string[] = [];
  readonly sessions = new Map<number, LiveSession>();
  /** Filesystem operations, in order. */
  readonly fsOps: NativeFsOp[] = [];
  /** Every stdin chunk, by session. */
  readonly stdinLog: [number, string][] = [];
  readonly signals: [number, number][] = [];
  readonly resizes: [number, number, number][] = [];
  stopError: Error | undefined;
  killError: Error | undefined;
  metricsError: Error | undefined;
  /** close() was called. */
  closedByUs = false;
  #nextId = 1;

  constructor(
    private readonly script: Script,
    private readonly fake: FakeNative,
    readonly sandbox: string,
  ) {}

  /** The runtime closed the connection (the VM is gone), or we closed it. */
  get closed(): boolean {
    return this.closedByUs || this.fake.gone(this.sandbox, this);
  }

  async exec(req: NativeExecRequest): Promise<number> {
    this.calls.push("exec");
    if (this.closed) throw new Error("runtime: connection closed");
    const id = this.#nextId++;
    if (this.fake.records.get(this.sandbox)?.status === "draining") {
      // As the real runtime does: the session's first (and only) frame is an error.
      this.sessions.set(id, queueSession([new Error(`sandboxDraining: sandbox ${this.sandbox} is draining; it takes no new commands`)]));
      return id;
    }
    this.requests.push(req);
    const helper = this.fake.fsOf(this.sandbox).helper(req);
    const r = helper ?? this.script(req);
    this.sessions.set(id, Array.isArray(r) ? queueSession(r) : r);
    return id;
  }

  async fs(op: NativeFsOp): Promise<number> {
    this.calls.push("fs");
    if (this.closed) throw new Error("sandboxNotRunning: the sandbox stopped");
    this.fsOps.push(op);
    const id = this.#nextId++;
    const hook = this.fake.fsHook?.(op);
    this.sessions.set(id, hook ?? this.fake.fsOf(this.sandbox).session(op));
    return id;
  }

  async next(sessionId: number): Promise<NativeExecEvent | null> {
    const s = this.sessions.get(sessionId);
    if (!s) return null;
    const ev = await s.next();
    if (ev === null || ["exited", "failed", "fsEnd", "fsDone", "fsError", "fsEntries", "fsStat", "fsExists"].includes(ev.kind)) {
      this.sessions.delete(sessionId);
    }
    return ev;
  }

  async writeStdin(sessionId: number, data: Buffer): Promise<void> {
    const s = this.sessions.get(sessionId);
    if (!s) throw new Error("sandboxNotRunning: the session has ended");
    this.stdinLog.push([sessionId, Buffer.from(data).toString()]);
    await s.stdin?.(data);
  }

  async closeStdin(sessionId: number): Promise<void> {
    this.stdinLog.push([sessionId, "<EOF>"]);
    this.sessions.get(sessionId)?.close?.();
  }

  async signal(sessionId: number, signal: number): Promise<void> {
    this.signals.push([sessionId, signal]);
    this.sessions.get(sessionId)?.signal?.(signal);
  }

  async resize(sessionId: number, rows: number, cols: number): Promise<void> {
    this.resizes.push([sessionId, rows, cols]);
    this.sessions.get(sessionId)?.resize?.(rows, cols);
  }

  async stop(timeoutMs: number): Promise<void> {
    this.calls.push(`stop:${timeoutMs}`);
    if (this.stopError) throw this.stopError;
    this.fake.endVm(this.sandbox, { code: 0, reason: "stopped" });
  }

  async kill(): Promise<void> {
    this.calls.push("kill");
    if (this.killError) throw this.killError;
    this.fake.endVm(this.sandbox, { code: 137, reason: "killed" });
  }

  /** Activity sequence of `touch()` (lifecycle-parity tests). */
  touches = 0;
  async ping(): Promise<void> {
    this.calls.push("ping");
    if (this.closed) throw new Error("sandboxNotRunning: connection closed");
  }
  async touch(): Promise<number> {
    this.calls.push("touch");
    if (this.closed) throw new Error("sandboxNotRunning: connection closed");
    return ++this.touches;
  }
  async pause(): Promise<void> {
    this.calls.push("pause");
    if (this.closed) throw new Error("sandboxNotRunning: connection closed");
  }
  async resume(): Promise<void> {
    this.calls.push("resume");
    if (this.closed) throw new Error("sandboxNotRunning: connection closed");
  }
  async fork(dir: string): Promise<void> {
    this.calls.push(`fork:${dir}`);
    if (this.closed) throw new Error("sandboxNotRunning: connection closed");
  }
  /** The VM ends later (as the real one does), when the test calls `fake.endVm`. */
  async requestStop(timeoutMs: number): Promise<void> {
    this.calls.push(`requestStop:${timeoutMs}`);
    if (this.closed) throw new Error("sandboxNotRunning: connection closed");
  }
  async requestKill(): Promise<void> {
    this.calls.push("requestKill");
    if (this.closed) throw new Error("sandboxNotRunning: connection closed");
  }
  async metrics(): Promise<NativeMetricsRecord> {
    this.calls.push("metrics");
    if (this.closed) throw new Error("runtime: connection closed");
    if (this.metricsError) throw this.metricsError;
    return this.fake.metricsOf(this.sandbox);
  }

  async drain(): Promise<void> {
    this.calls.push("drain");
    if (this.closed) throw new Error("runtime: connection closed");
    this.fake.setStatus(this.sandbox, "draining");
  }

  async detach(): Promise<void> {
    this.calls.push("detach");
    if (this.closed) throw new Error("runtime: connection closed");
  }

  wait(): Promise<void> {
    this.calls.push("wait");
    return this.fake.waitGone(this.sandbox, this);
  }

  close(): void {
    this.calls.push("close");
    this.closedByUs = true;
  }
}

/** Events of a command that prints `out` / `err` and exits with `code`. */
export function run(out: string, err = "", code = 0): NativeExecEvent[] {
  const evs: NativeExecEvent[] = [{ kind: "started", pid: 42 }];
  if (out) evs.push({ kind: "stdout", data: Buffer.from(out) });
  if (err) evs.push({ kind: "stderr", data: Buffer.from(err) });
  evs.push({ kind: "exited", code, signal: null });
  return evs;
}

export const FAKE_PID = 4242;

export interface FakeNative extends NativeBinding {
  configs: NativeSandboxConfig[];
  removed: [string, string][];
  killed: string[];
  /** Sandboxes whose runtime got SIGTERM (terminateSandbox). */
  terminated: string[];
  released: number[];
  clients: FakeClient[];
  records: Map<string, NativeSandboxRecord>;
  startError: Error | undefined;
  /** What verifyGuestAssets throws (a corrupt guest file). */
  verifyError: Error | undefined;
  removeError: Error | undefined;
  connectError: Error | undefined;
  /** Metrics the runtime of `name` reports (scriptable). */
  metricsOf: (name: string) => NativeMetricsRecord;
  /** The guest filesystem of sandbox `name` (kept across restarts, like its disk). */
  fsOf(name: string): FakeFs;
  /** Answer an fs operation differently (a hostile guest...); `undefined`: the FakeFs answers. */
  fsHook: ((op: NativeFsOp) => LiveSession | undefined) | undefined;
  /** Put a record in the store directly (a sandbox made by another process, a corrupt config...). */
  addRecord(r: Partial<NativeSandboxRecord> & { name: string }): NativeSandboxRecord;
  /** The VM of `name` ends (its runtime updates the record, connections close). */
  endVm(name: string, how: { code: number; reason: string; status?: "stopped" | "crashed" }): void;
  setStatus(name: string, status: NativeSandboxRecord["status"]): void;
  /** Whether the VM that `client` was connected to is gone. */
  gone(name: string, client: FakeClient): boolean;
  waitGone(name: string, client: FakeClient): Promise<void>;
}

export function defaultMetrics(): NativeMetricsRecord {
  return {
    cpuPercent: 12.5,
    memoryBytes: 100 << 20,
    memoryLimitBytes: 512 << 20,
    diskReadBytes: 1000,
    diskWriteBytes: 2000,
    netRxBytes: 0,
    netTxBytes: 0,
    timestampMs: Date.now(),
    uptimeMs: 1500,
  };
}

export function fakeNative(script: Script = (req) => run(`${req.cmd} ${req.args.join(" ")}\n`)): FakeNative {
  // Each boot of a sandbox is a "generation": a client is connected to one, and sees
  // the VM as gone once that generation ended (even if the sandbox was started again).
  const generation = new Map<string, number>();
  const clientGeneration = new WeakMap<FakeClient, number>();
  const ended = new Set<string>(); // `${name}#${gen}`
  const waiters = new Map<string, (() => void)[]>();

  const key = (name: string, gen: number) => `${name}#${gen}`;
  const notFound = (name: string) => new Error(`sandboxNotFound: no sandbox named ${name}`);
  const live = (r: NativeSandboxRecord | undefined) =>
    r !== undefined && (r.status === "starting" || r.status === "running" || r.status === "draining");

  const filesystems = new Map<string, FakeFs>();
  const fake: FakeNative = {
    fsOf(name) {
      let f = filesystems.get(name);
      if (!f) {
        f = new FakeFs();
        f.mkdirp("/tmp");
        filesystems.set(name, f);
      }
      return f;
    },
    fsHook: undefined,
    configs: [],
    removed: [],
    killed: [],
    terminated: [],
    released: [],
    clients: [],
    records: new Map(),
    startError: undefined,
    verifyError: undefined,
    removeError: undefined,
    connectError: undefined,
    metricsOf: () => defaultMetrics(),

    addRecord(r) {
      const now = Date.now();
      const rec: NativeSandboxRecord = {
        status: "stopped",
        configJson: JSON.stringify({ name: r.name, cpus: 1, memoryMib: 512 }),
        createdAt: now,
        updatedAt: now,
        runtimePid: undefined,
        socketPath: undefined,
        exitCode: undefined,
        exitReason: undefined,
        ...r,
      };
      if (live(rec)) {
        rec.runtimePid ??= FAKE_PID;
        if (rec.status !== "starting") rec.socketPath ??= `/tmp/fake/${rec.name}.sock`;
        generation.set(rec.name, (generation.get(rec.name) ?? 0) + 1);
      }
      fake.records.set(rec.name, rec);
      return rec;
    },

    endVm(name, how) {
      const rec = fake.records.get(name);
      if (!rec || !live(rec)) return;
      rec.status = how.status ?? "stopped";
      rec.exitCode = how.code;
      rec.exitReason = how.reason;
      rec.runtimePid = undefined;
      rec.socketPath = undefined;
      rec.updatedAt = Date.now();
      const k = key(name, generation.get(name) ?? 0);
      ended.add(k);
      for (const w of waiters.get(k) ?? []) w();
      waiters.delete(k);
    },

    setStatus(name, status) {
      const rec = fake.records.get(name);
      if (rec) {
        rec.status = status;
        rec.updatedAt = Date.now();
      }
    },

    gone(name, client) {
      return ended.has(key(name, clientGeneration.get(client) ?? -1));
    },

    waitGone(name, client) {
      const k = key(name, clientGeneration.get(client) ?? -1);
      if (ended.has(k)) return Promise.resolve();
      return new Promise((resolve) => waiters.set(k, [...(waiters.get(k) ?? []), resolve]));
    },

    async startSandbox(configJson: string): Promise<NativeRuntimeInfo> {
      if (fake.startError) throw fake.startError;
      const cfg = JSON.parse(configJson) as NativeSandboxConfig;
      const existing = fake.records.get(cfg.name);
      if (cfg.mode === "create" && existing) throw new Error(`sandboxAlreadyExists: sandbox ${cfg.name} already exists`);
      if (cfg.mode === "start") {
        if (!existing) throw notFound(cfg.name);
        if (live(existing)) throw new Error(`sandboxStillRunning: sandbox ${cfg.name} is running`);
      }
      fake.configs.push(cfg);
      const now = Date.now();
      const socketPath = `/tmp/fake/${cfg.name}.sock`;
      generation.set(cfg.name, (generation.get(cfg.name) ?? 0) + 1);
      fake.records.set(cfg.name, {
        name: cfg.name,
        status: "running",
        // mode start keeps the stored configuration unless a new one is given (as msb-runtime does)
        configJson: cfg.sdkConfig === null ? (existing?.configJson ?? "") : JSON.stringify(cfg.sdkConfig),
        createdAt: existing?.createdAt ?? now,
        updatedAt: now,
        runtimePid: FAKE_PID,
        socketPath,
        exitCode: undefined,
        exitReason: undefined,
      });
      return { pid: FAKE_PID, socketPath, sandboxDir: `${cfg.msbHome}/sandboxes/${cfg.name}` };
    },

    async removeSandbox(msbHome: string, name: string): Promise<void> {
      if (fake.removeError) throw fake.removeError;
      const rec = fake.records.get(name);
      if (!rec) throw notFound(name);
      if (live(rec)) throw new Error(`sandboxStillRunning: sandbox ${name} is ${rec.status}; stop it first`);
      fake.records.delete(name);
      filesystems.delete(name);
      fake.removed.push([msbHome, name]);
    },

    async listSandboxes(): Promise<NativeSandboxRecord[]> {
      return [...fake.records.values()].map((r) => ({ ...r }));
    },

    async getSandbox(_msbHome: string, name: string): Promise<NativeSandboxRecord> {
      const rec = fake.records.get(name);
      if (!rec) throw notFound(name);
      return { ...rec };
    },

    async killSandbox(_msbHome: string, name: string): Promise<void> {
      const rec = fake.records.get(name);
      if (!rec) throw notFound(name);
      fake.killed.push(name);
      fake.endVm(name, { code: 137, reason: "killed" });
    },

    async terminateSandbox(_msbHome: string, name: string): Promise<void> {
      const rec = fake.records.get(name);
      if (!rec) throw notFound(name);
      fake.terminated.push(name);
      if (rec.status === "starting") {
        fake.records.set(name, { ...rec, status: "stopped", runtimePid: undefined, socketPath: undefined, exitCode: 0, exitReason: "stopped while booting" });
      } else if (live(rec)) fake.endVm(name, { code: 0, reason: "stopped" });
    },

    async updateSandboxConfig(_msbHome: string, name: string, configJson: string, whileRunning: boolean): Promise<void> {
      const rec = fake.records.get(name);
      if (!rec) throw notFound(name);
      if (live(rec) && (!whileRunning || rec.status === "starting")) throw new Error(`sandboxStillRunning: sandbox '${name}' is running: stop it first`);
      rec.configJson = configJson;
      rec.updatedAt = Date.now();
    },

    releaseAttachment(pid: number): boolean {
      fake.released.push(pid);
      return true;
    },

    AgentClient: {
      async connect(socketPath: string): Promise<NativeAgentClient> {
        if (fake.connectError) throw fake.connectError;
        const rec = [...fake.records.values()].find((r) => r.socketPath === socketPath && live(r));
        if (!rec) throw new Error(`runtime: cannot connect to ${socketPath}: no such sandbox`);
        const c = new FakeClient(script, fake, rec.name);
        clientGeneration.set(c, generation.get(rec.name) ?? 0);
        fake.clients.push(c);
        return c;
      },
    },

    assetPaths() {
      return {
        runtime: "/assets/msb-runtime",
        kernel: "/assets/vmlinux",
        initramfs: "/assets/initramfs.cpio",
        defaultImage: "/assets/rootfs.ext4",
        floorInitramfs: "/assets/floor.cpio",
      };
    },
    verifyGuestAssets() {
      if (fake.verifyError) throw fake.verifyError;
    },
  };
  return fake;
}
