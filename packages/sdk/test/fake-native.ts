// A scriptable stand-in for @microsandbox/core-native, for unit tests.
import type {
  NativeAgentClient,
  NativeBinding,
  NativeExecEvent,
  NativeExecRequest,
  NativeRuntimeInfo,
  NativeSandboxConfig,
} from "../src/native.js";

export type Script = (req: NativeExecRequest) => (NativeExecEvent | null | Error)[];

export class FakeClient implements NativeAgentClient {
  readonly requests: NativeExecRequest[] = [];
  readonly calls: string[] = [];
  readonly sessions = new Map<number, (NativeExecEvent | null | Error)[]>();
  stopError: Error | undefined;
  killError: Error | undefined;
  closed = false;
  #nextId = 1;

  constructor(private readonly script: Script) {}

  async exec(requestJson: string): Promise<number> {
    this.calls.push("exec");
    const req = JSON.parse(requestJson) as NativeExecRequest;
    this.requests.push(req);
    const id = this.#nextId++;
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
  }

  async kill(): Promise<void> {
    this.calls.push("kill");
    if (this.killError) throw this.killError;
  }

  close(): void {
    this.calls.push("close");
    this.closed = true;
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

export interface FakeNative extends NativeBinding {
  configs: NativeSandboxConfig[];
  removed: [string, string][];
  clients: FakeClient[];
  startError: Error | undefined;
  removeError: Error | undefined;
}

export function fakeNative(script: Script = (req) => run(`${req.cmd} ${req.args.join(" ")}\n`)): FakeNative {
  const fake: FakeNative = {
    configs: [],
    removed: [],
    clients: [],
    startError: undefined,
    removeError: undefined,
    async startSandbox(configJson: string): Promise<NativeRuntimeInfo> {
      if (fake.startError) throw fake.startError;
      const cfg = JSON.parse(configJson) as NativeSandboxConfig;
      fake.configs.push(cfg);
      return { pid: 4242, socketPath: `/tmp/fake/${cfg.name}.sock`, sandboxDir: `${cfg.msbHome}/sandboxes/${cfg.name}` };
    },
    async removeSandbox(msbHome: string, name: string): Promise<void> {
      if (fake.removeError) throw fake.removeError;
      fake.removed.push([msbHome, name]);
    },
    AgentClient: {
      async connect(): Promise<NativeAgentClient> {
        const c = new FakeClient(script);
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
