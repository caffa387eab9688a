import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  ExecFailedError,
  ImageNotFoundError,
  InvalidConfigError,
  QemuNotFoundError,
  KernelNotFoundError,
  Sandbox,
  SandboxAlreadyExistsError,
  SandboxNotFoundError,
  SandboxNotRunningError,
  SandboxStillRunningError,
} from "../src/index.js";
import { setNativeBinding } from "../src/native.js";
import { fakeNative, run, type FakeNative } from "./fake-native.js";
import { defaultNetConfig } from "@microsandbox/netstack";

let fake: FakeNative;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative((req) => {
    if (req.cmd === "/bin/sh") return run("", "", Number(/exit (\d+)/.exec(req.args[1] ?? "")?.[1] ?? 0));
    if (req.cmd === "missing") return [{ kind: "failed", reason: "missing: No such file or directory" }];
    return run(`${[req.cmd, ...req.args].join(" ")}\n`, "to stderr\n");
  });
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-unit-home";
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

describe("Symbol.asyncDispose", () => {
  it("exists after importing the SDK (polyfilled on Node 20)", () => {
    expect(typeof Symbol.asyncDispose).toBe("symbol");
    expect(typeof Sandbox.prototype[Symbol.asyncDispose]).toBe("function");
  });
});

describe("ephemeral()", () => {
  it("asks the runtime to remove the sandbox when its VM ends, attached or detached", async () => {
    await Sandbox.builder("tmp1").ephemeral().create();
    expect(fake.configs[0]).toMatchObject({ name: "tmp1", attached: true, ephemeral: true });
    await Sandbox.builder("tmp2").ephemeral().createDetached();
    expect(fake.configs[1]).toMatchObject({ name: "tmp2", attached: false, ephemeral: true });
    expect(fake.configs[1]?.sdkConfig).toMatchObject({ ephemeral: true });
    const e = await Sandbox.builder("tmp3").ephemeral("yes" as unknown as boolean).create().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect(e).toMatchObject({ field: "ephemeral" });
    expect(fake.configs).toHaveLength(2);
  });
});

describe("Sandbox.create", () => {
  it("passes the full configuration to startSandbox, with the default image", async () => {
    const sb = await Sandbox.builder("w1").cpus(2).memory(1024).env("MODE", "test").workdir("/app").hostname("w1").create();
    expect(fake.configs).toEqual([
      {
        name: "w1",
        msbHome: "/tmp/msb-unit-home",
        runtimePath: "/assets/msb-runtime",
        kernel: "/assets/vmlinux",
        initramfs: "/assets/initramfs.cpio",
        image: "/assets/rootfs.ext4",
        cpus: 2,
        memoryMib: 1024,
        env: [["MODE", "test"]],
        workdir: "/app",
        hostname: "w1",
        user: null,
        mode: "create",
        attached: true,
        ephemeral: false,
        memoryTemplate: true,
        bootTimeoutMs: 60000,
        idleTimeoutSecs: null,
        maxDurationSecs: null,
        mounts: [],
        imageFstype: null,
        upperSource: null,
        forkFrom: null,
        logLevel: null,
        network: defaultNetConfig(),
        sdkConfig: {
          name: "w1",
          image: null,
          imageKind: null,
          cpus: 2,
          memoryMib: 1024,
          env: [["MODE", "test"]],
          workdir: "/app",
          hostname: "w1",
          entrypoint: null,
          user: null,
          pullPolicy: "if-missing",
          registryAuth: null,
          insecureRegistry: false,
          registryCa: null,
          idleTimeoutSecs: null,
          maxDurationSecs: null,
          imageFstype: null,
          shell: null,
          scripts: [],
          patches: [],
          volumes: [],
          logLevel: null,
          network: defaultNetConfig(),
          labels: {},
          maxCpus: null,
          maxMemoryMib: null,
          thp: null,
          init: null,
          ephemeral: false,
          memoryTemplate: true,
        },
      },
    ]);
    expect(sb.name).toBe("w1");
    expect(sb.ownsLifecycle).toBe(true);
    expect(sb.runtimePid).toBe(4242);
    expect(sb.sandboxDir).toBe("/tmp/msb-unit-home/sandboxes/w1");
    expect(sb.running).toBe(true);
    await sb.stop();
  });

  it("uses null for unset workdir and hostname, and resolves a relative image path", async () => {
    const sb = await Sandbox.builder("w2").image("./some/rootfs").create();
    const c = fake.configs[0]!;
    expect(c.workdir).toBeNull();
    expect(c.hostname).toBeNull();
    expect(c.image).toBe(`${process.cwd()}/some/rootfs`);
    expect(c.cpus).toBe(1);
    expect(c.memoryMib).toBe(512);
    await sb.kill();
  });

  it("maps native start errors to typed errors", async () => {
    fake.startError = new Error("sandboxAlreadyExists: sandbox w1 already exists");
    await expect(Sandbox.builder("w1").create()).rejects.toBeInstanceOf(SandboxAlreadyExistsError);
    fake.startError = new Error("imageNotFound: /nope does not exist");
    const e = await Sandbox.builder("w1").image("/nope").create().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ImageNotFoundError);
    expect((e as Error).message).toBe("/nope does not exist");
    fake.startError = new Error("qemuNotFound: qemu-system-x86_64 not found; install it with: apt-get install qemu-system-x86");
    await expect(Sandbox.builder("w1").create()).rejects.toBeInstanceOf(QemuNotFoundError);
  });

  it("a guest file that fails its manifest check rejects create() before anything starts", async () => {
    fake.startError = undefined;
    fake.verifyError = Object.assign(new Error("kernelNotFound: @microsandbox/guest-linux-x64: vmlinux is 3 bytes, its manifest says 12 (truncated or replaced). Fix: reinstall it"), { code: "ERR_MSB_INSTALL" });
    const e = await Sandbox.builder("w1").create().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(KernelNotFoundError);
    expect((e as Error).message).toBe("@microsandbox/guest-linux-x64: vmlinux is 3 bytes, its manifest says 12 (truncated or replaced). Fix: reinstall it");
    expect(fake.configs).toHaveLength(0);
    fake.verifyError = undefined;
  });
});

describe("Sandbox exec", () => {
  it("exec sends cmd and args and collects the output", async () => {
    const sb = await Sandbox.builder("w1").create();
    const out = await sb.exec("echo", ["hello", "world"]);
    expect(out.code).toBe(0);
    expect(out.stdout()).toBe("echo hello world\n");
    expect(out.stderr()).toBe("to stderr\n");
    expect(fake.clients[0]!.requests[0]).toEqual({
      cmd: "echo",
      args: ["hello", "world"],
      env: [],
      cwd: null,
      user: null,
      stdin: false,
      tty: null,
      rlimits: [],
    });
    await sb.stop();
  });

  it("shell runs /bin/sh -c script", async () => {
    const sb = await Sandbox.builder("w1").create();
    const out = await sb.shell("exit 42");
    expect(out.code).toBe(42);
    expect(out.success).toBe(false);
    expect(fake.clients[0]!.requests[0]).toEqual({
      cmd: "/bin/sh",
      args: ["-c", "exit 42"],
      env: [],
      cwd: null,
      user: null,
      stdin: false,
      tty: null,
      rlimits: [],
    });
    await sb.stop();
  });

  it("execStream yields events as they come", async () => {
    const sb = await Sandbox.builder("w1").create();
    const h = await sb.execStream("echo", ["x"]);
    const kinds: string[] = [];
    for await (const ev of h) kinds.push(ev.kind);
    expect(kinds).toEqual(["started", "stdout", "stderr", "exited"]);
    await sb.stop();
  });

  it("a command that cannot start rejects with ExecFailedError", async () => {
    const sb = await Sandbox.builder("w1").create();
    const e = await sb.exec("missing").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ExecFailedError);
    expect((e as ExecFailedError).code).toBe("execFailed");
    expect((e as ExecFailedError).reason).toContain("No such file");
    await sb.stop();
  });

  it("validates exec arguments", async () => {
    const sb = await Sandbox.builder("w1").create();
    const e = await sb.exec("").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect((e as InvalidConfigError).field).toBe("cmd");
    await expect(sb.exec("echo", ["a\0b"])).rejects.toBeInstanceOf(InvalidConfigError);
    await sb.stop();
  });

  it("exec on a stopped sandbox rejects with SandboxNotRunningError", async () => {
    const sb = await Sandbox.builder("w1").create();
    await sb.stop();
    const e = await sb.exec("echo").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SandboxNotRunningError);
    expect((e as SandboxNotRunningError).code).toBe("sandboxNotRunning");
    await expect(sb.shell("true")).rejects.toBeInstanceOf(SandboxNotRunningError);
  });
});

describe("Sandbox lifecycle", () => {
  it("stop uses a 10 s default timeout, closes the client, and is idempotent", async () => {
    const sb = await Sandbox.builder("w1").create();
    const c = fake.clients[0]!;
    await Promise.all([sb.stop(), sb.stop()]);
    await sb.stop();
    await sb.kill();
    expect(c.calls).toEqual(["stop:10000", "close"]);
    expect(sb.running).toBe(false);
  });

  it("stop takes a timeout in ms and validates it", async () => {
    const sb = await Sandbox.builder("w1").create();
    await expect(sb.stop(-5)).rejects.toBeInstanceOf(InvalidConfigError);
    await sb.stop(2500);
    expect(fake.clients[0]!.calls).toEqual(["stop:2500", "close"]);
  });

  it("a failed stop leaves the handle usable for kill", async () => {
    const sb = await Sandbox.builder("w1").create();
    const c = fake.clients[0]!;
    c.stopError = new Error("agentTimeout: guest did not shut down");
    await expect(sb.stop()).rejects.toThrow("guest did not shut down");
    expect(sb.running).toBe(true);
    await sb.kill();
    expect(c.calls).toEqual(["stop:10000", "kill", "close"]);
  });

  it("await using stops the sandbox at the end of the scope", async () => {
    let client;
    {
      await using sb = await Sandbox.builder("w1").create();
      client = fake.clients[0]!;
      expect((await sb.exec("echo", ["in scope"])).stdout()).toBe("echo in scope\n");
    }
    expect(client.calls).toEqual(["exec", "stop:10000", "close"]);
  });

  it("dispose does nothing when already stopped, and never throws when the VM is gone", async () => {
    const a = await Sandbox.builder("a").create();
    await a.kill();
    await a[Symbol.asyncDispose]();
    expect(fake.clients[0]!.calls).toEqual(["kill", "close"]);

    const b = await Sandbox.builder("b").create();
    const c = fake.clients[1]!;
    c.stopError = new Error("runtime: connection closed");
    c.killError = new Error("runtime: connection closed");
    await b[Symbol.asyncDispose]();
    expect(b.running).toBe(false);
    expect(c.closed).toBe(true);
  });

  it("Sandbox.remove validates the name and calls removeSandbox with MSB_HOME", async () => {
    fake.addRecord({ name: "w1" });
    await Sandbox.remove("w1");
    expect(fake.removed).toEqual([["/tmp/msb-unit-home", "w1"]]);
    await expect(Sandbox.remove("")).rejects.toBeInstanceOf(InvalidConfigError);
    await expect(Sandbox.remove("w1")).rejects.toBeInstanceOf(SandboxNotFoundError);
    fake.removeError = new Error("sandboxStillRunning: sandbox w1 is running; stop it first");
    await expect(Sandbox.remove("w1")).rejects.toBeInstanceOf(SandboxStillRunningError);
  });
});
