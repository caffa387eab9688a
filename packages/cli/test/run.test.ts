import { describe, expect, it } from "vitest";
import {
  ExecFailedError,
  InvalidConfigError,
  KernelNotFoundError,
  QemuNotFoundError,
  SandboxAlreadyExistsError,
  SandboxStillRunningError,
  type ExecEvent,
} from "@microsandbox/sdk";
import type { RunOptions } from "../src/args.js";
import { defaultName, describeError, runCommand, signalExitCode, type RunDeps, type RunSandbox } from "../src/run.js";
import { main, VERSION } from "../src/main.js";

const enc = new TextEncoder();
const dec = new TextDecoder();

interface World {
  deps: RunDeps;
  log: string[];
  stdout: () => string;
  stderr: () => string;
}

function world(opts: {
  events?: (ExecEvent | Error)[];
  createError?: Error;
  execError?: Error;
  removeFailures?: Error[];
  stopError?: Error;
  signal?: AbortSignal;
  onEvent?: (i: number) => void | Promise<void>;
}): World {
  const log: string[] = [];
  let out = "";
  let err = "";
  const removeFailures = [...(opts.removeFailures ?? [])];
  const sandbox: RunSandbox = {
    config: () => ({ entrypoint: null, cmd: null }),
    async execStream(cmd, args) {
      log.push(`exec ${cmd} ${args.join(" ")}`);
      if (opts.execError) throw opts.execError;
      const events = opts.events ?? [];
      return (async function* () {
        let i = 0;
        for (const ev of events) {
          await opts.onEvent?.(i++);
          if (ev instanceof Error) throw ev;
          yield ev;
        }
      })();
    },
    async stop() {
      log.push("stop");
      if (opts.stopError) throw opts.stopError;
    },
    async kill() {
      log.push("kill");
    },
  };
  const deps: RunDeps = {
    async create(o) {
      log.push(`create ${o.name}`);
      if (opts.createError) throw opts.createError;
      return sandbox;
    },
    async remove(name) {
      log.push(`remove ${name}`);
      const f = removeFailures.shift();
      if (f) throw f;
    },
    async writeOut(d) {
      out += dec.decode(d);
    },
    async writeErr(d) {
      err += typeof d === "string" ? d : dec.decode(d);
    },
    removeTimeoutMs: 2000,
  };
  if (opts.signal) deps.signal = opts.signal;
  return { deps, log, stdout: () => out, stderr: () => err };
}

const opts = (o: Partial<RunOptions> = {}): RunOptions => ({ env: [], registry: {}, command: ["sh", "-c", "x"], name: "t1", ...o });

describe("runCommand", () => {
  it("streams stdout and stderr apart, passes the exit code through, stops and removes", async () => {
    const w = world({
      events: [
        { kind: "started", pid: 1 },
        { kind: "stdout", data: enc.encode("out\n") },
        { kind: "stderr", data: enc.encode("err\n") },
        { kind: "exited", code: 3 },
      ],
    });
    expect(await runCommand(opts(), w.deps)).toBe(3);
    expect(w.stdout()).toBe("out\n");
    expect(w.stderr()).toBe("err\n");
    expect(w.log).toEqual(["create t1", "exec sh -c x", "stop", "remove t1"]);
  });

  it("uses run-<hex> as the default name", async () => {
    const w = world({ events: [{ kind: "exited", code: 0 }] });
    expect(await runCommand(opts({ name: undefined }), w.deps)).toBe(0);
    expect(w.log[0]).toMatch(/^create run-[0-9a-f]{8}$/);
    expect(defaultName()).toMatch(/^run-[0-9a-f]{8}$/);
    expect(defaultName()).not.toBe(defaultName());
  });

  it("ExecFailedError: prints the reason, exit 127, still cleans up", async () => {
    const w = world({ events: [new ExecFailedError("nope: No such file or directory")] });
    expect(await runCommand(opts(), w.deps)).toBe(127);
    expect(w.stderr()).toBe("msb: nope: No such file or directory\n");
    expect(w.log).toEqual(["create t1", "exec sh -c x", "stop", "remove t1"]);
  });

  it("invalid configuration: exit 2, nothing to remove", async () => {
    const w = world({ createError: new InvalidConfigError("cpus", "invalid cpus 0: cpus must be an integer from 1 to 255") });
    expect(await runCommand(opts(), w.deps)).toBe(2);
    expect(w.stderr()).toContain("cpus");
    expect(w.log).toEqual(["create t1"]);
  });

  it("native errors print msb: <message> and exit 1", async () => {
    const msg = "qemu-system-x86_64 not found: install it with `apt-get install qemu-system-x86`";
    const w = world({ createError: new QemuNotFoundError(msg) });
    expect(await runCommand(opts(), w.deps)).toBe(1);
    expect(w.stderr()).toBe(`msb: ${msg}\n`);
    // a failed boot may leave a directory behind: it is removed (errors ignored)
    expect(w.log).toEqual(["create t1", "remove t1"]);

    const k = world({ createError: new KernelNotFoundError("guest kernel missing: run `npm run setup`"), removeFailures: [new Error("sandboxNotFound")] });
    expect(await runCommand(opts(), k.deps)).toBe(1);
    expect(k.stderr()).toBe("msb: guest kernel missing: run `npm run setup`\n");
  });

  it("never removes a sandbox whose name belongs to someone else", async () => {
    const w = world({ createError: new SandboxAlreadyExistsError("sandbox t1 already exists") });
    expect(await runCommand(opts(), w.deps)).toBe(1);
    expect(w.stderr()).toBe("msb: sandbox t1 already exists\n");
    expect(w.log).toEqual(["create t1"]);
  });

  it("retries removal while the runtime is still exiting", async () => {
    const still = () => new SandboxStillRunningError("sandbox t1 is still running");
    const w = world({ events: [{ kind: "exited", code: 0 }], removeFailures: [still(), still()] });
    expect(await runCommand(opts(), w.deps)).toBe(0);
    expect(w.log).toEqual(["create t1", "exec sh -c x", "stop", "remove t1", "remove t1", "remove t1"]);
  });

  it("a sandbox that cannot be removed turns success into exit 1", async () => {
    const w = world({ events: [{ kind: "exited", code: 0 }], removeFailures: [new Error("disk on fire")] });
    expect(await runCommand(opts(), w.deps)).toBe(1);
    expect(w.stderr()).toContain("could not remove sandbox t1");
  });

  it("falls back to kill when stop fails", async () => {
    const w = world({ events: [{ kind: "exited", code: 5 }], stopError: new Error("runtime: stuck") });
    expect(await runCommand(opts(), w.deps)).toBe(5);
    expect(w.log).toEqual(["create t1", "exec sh -c x", "stop", "kill", "remove t1"]);
  });

  it("on SIGINT kills the sandbox, removes it and exits 130", async () => {
    const ac = new AbortController();
    const w = world({
      signal: ac.signal,
      events: [{ kind: "started", pid: 1 }, { kind: "stdout", data: enc.encode("partial") }, new Error("runtime: session closed")],
      onEvent: (i) => {
        if (i === 2) ac.abort("SIGINT");
      },
    });
    expect(await runCommand(opts(), w.deps)).toBe(130);
    expect(w.stdout()).toBe("partial");
    expect(w.stderr()).toBe("");
    expect(w.log).toEqual(["create t1", "exec sh -c x", "kill", "remove t1"]);
  });

  it("a signal during create still cleans up once the sandbox exists", async () => {
    const ac = new AbortController();
    const w = world({ signal: ac.signal, events: [{ kind: "exited", code: 0 }] });
    const create = w.deps.create;
    w.deps.create = async (o) => {
      const sb = await create(o);
      ac.abort("SIGTERM");
      return sb;
    };
    expect(await runCommand(opts(), w.deps)).toBe(143);
    expect(w.log).toEqual(["create t1", "kill", "remove t1"]);
  });
});

describe("helpers", () => {
  it("describeError maps error types to exit codes", () => {
    expect(describeError(new InvalidConfigError("memory", "invalid memory -1")).code).toBe(2);
    expect(describeError(new ExecFailedError("x: not found")).code).toBe(127);
    expect(describeError(new QemuNotFoundError("install qemu")).code).toBe(1);
    expect(describeError(new Error("boom"))).toEqual({ code: 1, message: "msb: boom" });
  });

  it("signalExitCode is 128 + signal number", () => {
    expect(signalExitCode("SIGINT")).toBe(130);
    expect(signalExitCode("SIGTERM")).toBe(143);
    expect(signalExitCode("SIGHUP")).toBe(129);
    expect(signalExitCode(undefined)).toBe(143);
  });
});

describe("main", () => {
  function io() {
    let out = "";
    let err = "";
    return {
      io: {
        out: (s: string) => void (out += s),
        err: (s: string) => void (err += s),
        writeOut: async () => undefined,
        writeErr: async (d: Uint8Array | string) => void (err += typeof d === "string" ? d : dec.decode(d)),
      },
      out: () => out,
      err: () => err,
    };
  }

  it("--version prints the package version", async () => {
    const t = io();
    expect(await main(["--version"], t.io)).toBe(0);
    expect(t.out().trim()).toBe(VERSION);
    expect(VERSION).toMatch(/^\d+\.\d+\.\d+/);
  });

  it("invalid options exit 2 before anything starts, naming the field", async () => {
    for (const [argv, field] of [
      [["run", "--cpus", "0", "--", "true"], "cpus"],
      [["run", "--memory", "32", "--", "true"], "memory"],
      [["run", "-w", "relative", "--", "true"], "workdir"],
      [["run", "--name", "bad/name", "--", "true"], "name"],
      [["run", "-e", "A\0=1", "--", "true"], "env"],
    ] as const) {
      const t = io();
      expect(await main(argv, t.io)).toBe(2);
      expect(t.err()).toContain(field);
    }
  });
});
