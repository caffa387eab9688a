// End-to-end: boots real microVMs on the embedded default (busybox) image.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ExecFailedError,
  ImageNotFoundError,
  Sandbox,
  SandboxAlreadyExistsError,
  SandboxNotRunningError,
} from "../src/index.js";
import { cleanup, isGone, useTempMsbHome, waitFor } from "./e2e-helpers.js";

const home = useTempMsbHome();

describe("a sandbox on the default image", () => {
  let sb: Sandbox | undefined;

  beforeAll(async () => {
    sb = await Sandbox.builder("e2e-main").env("FOO", "bar").workdir("/tmp").create();
  });
  afterAll(async () => {
    await cleanup(sb);
  });

  const box = (): Sandbox => {
    if (!sb) throw new Error("sandbox was not created");
    return sb;
  };

  it("runs echo hello", async () => {
    const out = await box().exec("echo", ["hello"]);
    expect(out.code).toBe(0);
    expect(out.success).toBe(true);
    expect(out.stdout()).toBe("hello\n");
    expect(out.stderr()).toBe("");
    expect(box().name).toBe("e2e-main");
    expect(box().ownsLifecycle).toBe(true);
  });

  it("passes exit codes 0, 1 and 42 through", async () => {
    for (const code of [0, 1, 42]) {
      const out = await box().shell(`exit ${code}`);
      expect(out.code).toBe(code);
      expect(out.success).toBe(code === 0);
    }
  });

  it("keeps stderr apart from stdout", async () => {
    const out = await box().shell("echo to-out; echo to-err >&2; echo more-out");
    expect(out.stdout()).toBe("to-out\nmore-out\n");
    expect(out.stderr()).toBe("to-err\n");
  });

  it("honours the sandbox's env and workdir", async () => {
    // Debian's busybox-static has no printenv applet: read the environment with env.
    expect((await box().exec("env")).stdout().split("\n")).toContain("FOO=bar");
    expect((await box().shell('echo "$FOO"')).stdout()).toBe("bar\n");
    expect((await box().exec("pwd")).stdout()).toBe("/tmp\n");
  });

  it("reports a command that does not exist as ExecFailedError (and 127 through a shell)", async () => {
    const e = await box()
      .exec("definitely-not-a-command")
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ExecFailedError);
    expect((e as ExecFailedError).code).toBe("execFailed");
    expect((e as ExecFailedError).reason).toMatch(/not found|No such file/i);
    const viaShell = await box().shell("definitely-not-a-command");
    expect(viaShell.code).toBe(127);
  });

  it("streams events: started, output, exited", async () => {
    const h = await box().execStream("/bin/sh", ["-c", "echo a; echo b >&2; exit 7"]);
    const kinds: string[] = [];
    let out = "";
    let exit: number | undefined;
    for await (const ev of h) {
      kinds.push(ev.kind);
      if (ev.kind === "stdout") out += new TextDecoder().decode(ev.data);
      if (ev.kind === "exited") exit = ev.code;
    }
    expect(kinds[0]).toBe("started");
    expect(kinds.at(-1)).toBe("exited");
    expect(out).toBe("a\n");
    expect(exit).toBe(7);
    expect(await h.recv()).toBeNull();
  });

  it("runs 100 sequential commands, each with the right output", async () => {
    for (let i = 0; i < 100; i++) {
      const out = await box().exec("echo", [String(i)]);
      expect(out.code).toBe(0);
      expect(out.stdout()).toBe(`${i}\n`);
    }
  });

  it("rejects a second sandbox with a name in use", async () => {
    const e = await Sandbox.builder("e2e-main")
      .create()
      .catch((x: unknown) => x);
    if (e instanceof Sandbox) await cleanup(e);
    expect(e).toBeInstanceOf(SandboxAlreadyExistsError);
    expect((e as SandboxAlreadyExistsError).code).toBe("sandboxAlreadyExists");
    // the first one is untouched
    expect((await box().exec("echo", ["still here"])).stdout()).toBe("still here\n");
  });
});

describe("bad input", () => {
  it("a missing image path rejects with ImageNotFoundError", async () => {
    const e = await Sandbox.builder("e2e-noimage")
      .image("/nonexistent/rootfs-for-msb-tests")
      .create()
      .catch((x: unknown) => x);
    if (e instanceof Sandbox) await cleanup(e);
    expect(e).toBeInstanceOf(ImageNotFoundError);
    expect((e as ImageNotFoundError).code).toBe("imageNotFound");
    expect((e as Error).message).toContain("/nonexistent/rootfs-for-msb-tests");
  });
});

describe("lifecycle", () => {
  it("stop ends the VM and its runtime; exec afterwards is rejected; remove deletes the state", async () => {
    const sb = await Sandbox.builder("e2e-stop").create();
    try {
      expect((await sb.shell("echo up")).stdout()).toBe("up\n");
      await sb.stop();
      expect(await waitFor(() => isGone(sb.runtimePid), 10_000)).toBe(true);
      await expect(sb.exec("true")).rejects.toBeInstanceOf(SandboxNotRunningError);
      await sb.stop(); // idempotent
    } finally {
      await cleanup(sb);
    }
    expect(await waitFor(() => isGone(sb.runtimePid), 10_000)).toBe(true);
    await Sandbox.remove("e2e-stop");
    expect(existsSync(join(home(), "sandboxes", "e2e-stop"))).toBe(false);
  });

  it("kill ends the VM at once", async () => {
    const sb = await Sandbox.builder("e2e-kill").create();
    try {
      await sb.kill();
      expect(await waitFor(() => isGone(sb.runtimePid), 10_000)).toBe(true);
    } finally {
      await cleanup(sb);
    }
  });

  it("await using stops the sandbox at the end of the scope", async () => {
    let pid = 0;
    {
      await using sb = await Sandbox.builder("e2e-using").create();
      pid = sb.runtimePid;
      expect((await sb.exec("echo", ["scoped"])).stdout()).toBe("scoped\n");
    }
    expect(await waitFor(() => isGone(pid), 10_000)).toBe(true);
  });
});
