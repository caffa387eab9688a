// A scriptable stand-in for @microsandbox/core-native, for unit tests. It keeps an
// in-memory state store (records by name) that behaves like the real one: create
// needs a free name, start a stopped sandbox, remove a stopped one.
import type {
  NativeAgentClient,
  NativeBinding,
  NativeExecEvent,
  NativeExecRequest,
  NativeMetricsRecord,
  NativeRuntimeInfo,
  NativeSandboxConfig,
  NativeSandboxRecord,
} from "../src/native.js";

export type Script = (req: NativeExecRequest) => (NativeExecEvent | null | Error)[];

export class FakeClient implements NativeAgentClient {
  readonly requests: NativeExecRequest[] = [];
  readonly calls: string[] = [];
  readonly sessions = new Map<number, (NativeExecEvent | null | Error)[]>();
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

  async exec(requestJson: string): Promise<number> {
    this.calls.push("exec");
    if (this.closed) throw new Error("runtime: connection closed");
    const req = JSON.parse(requestJson) as NativeExecRequest;
    const id = this.#nextId++;
    if (this.fake.records.get(this.sandbox)?.status === "draining") {
      // As the real runtime does: the session's first (and only) frame is an error.
      this.sessions.set(id, [new Error(`sandboxDraining: sandbox ${this.sandbox} is draining; it takes no new commands`)]);
      return id;
    }
    this.requests.push(req);
    this.sessions.set(id, [...this.script(req)]);
    return id;
  }

  async next(sessionId: number): Promise<NativeExecEvent | null> {
    const q = this.sessions.get(sessionId);
    if (!q) throw new Error(`protocol: unknown session ${sessionId}`);
    const ev = q.shift();
    if (ev === undefined) return null;
    if (ev instanceof Error) throw ev;
    return ev;
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
  evs.push({ kind: "exited", code });
  return evs;
}

export const FAKE_PID = 4242;

export interface FakeNative extends NativeBinding {
  configs: NativeSandboxConfig[];
  removed: [string, string][];
  killed: string[];
  released: number[];
  clients: FakeClient[];
  records: Map<string, NativeSandboxRecord>;
  startError: Error | undefined;
  removeError: Error | undefined;
  connectError: Error | undefined;
  /** Metrics the runtime of `name` reports (scriptable). */
  metricsOf: (name: string) => NativeMetricsRecord;
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
  const live = (r: NativeSandboxRecord | undefined) => r !== undefined && (r.status === "running" || r.status === "draining");

  const fake: FakeNative = {
    configs: [],
    removed: [],
    killed: [],
    released: [],
    clients: [],
    records: new Map(),
    startError: undefined,
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
        runtimePid: null,
        socketPath: null,
        exitCode: null,
        exitReason: null,
        ...r,
      };
      if (live(rec)) {
        rec.runtimePid ??= FAKE_PID;
        rec.socketPath ??= `/tmp/fake/${rec.name}.sock`;
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
      rec.runtimePid = null;
      rec.socketPath = null;
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
        exitCode: null,
        exitReason: null,
      });
      return { pid: FAKE_PID, socketPath, sandboxDir: `${cfg.msbHome}/sandboxes/${cfg.name}` };
    },

    async removeSandbox(msbHome: string, name: string): Promise<void> {
      if (fake.removeError) throw fake.removeError;
      const rec = fake.records.get(name);
      if (!rec) throw notFound(name);
      if (live(rec)) throw new Error(`sandboxStillRunning: sandbox ${name} is ${rec.status}; stop it first`);
      fake.records.delete(name);
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
  };
  return fake;
}
