// End-to-end: root filesystem sources other than the default image, and the failures a
// user can act on (missing kernel, missing QEMU, a guest that never answers). Each
// failure must be a typed error with a code, and must leave no VM behind.
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  AgentTimeoutError,
  KernelNotFoundError,
  MicrosandboxError,
  QemuNotFoundError,
  Sandbox,
} from "@microsandbox/sdk";
import { cleanup, qemuProcessesMentioning, useTempMsbHome, waitFor } from "./e2e-helpers.js";

const home = useTempMsbHome();
const require = createRequire(import.meta.url);
const { assetPaths } = require("@microsandbox/core-native") as { assetPaths(): { defaultImage: string } };

const scratch = mkdtempSync(join(tmpdir(), "msb-src-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

const savedEnv = { ...process.env };
afterEach(() => {
  for (const k of ["MSB_KERNEL", "MSB_QEMU", "MSB_BOOT_TIMEOUT_MS"]) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
});

/** A minimal root filesystem directory: one static busybox and a few applet links. */
function busyboxDir(): string {
  const root = join(scratch, "rootfs");
  mkdirSync(join(root, "bin"), { recursive: true });
  const busybox = join(process.cwd(), "test-vms/build/busybox-pkg/bin/busybox");
  copyFileSync(busybox, join(root, "bin/busybox"));
  chmodSync(join(root, "bin/busybox"), 0o755);
  for (const applet of ["sh", "echo", "cat", "ls"]) symlinkSync("busybox", join(root, "bin", applet));
  mkdirSync(join(root, "etc"));
  writeFileSync(join(root, "etc/message"), "from a host directory\n");
  return root;
}

async function expectNoVmFor(name: string): Promise<void> {
  const dir = join(home(), "sandboxes", name);
  const clean = await waitFor(() => qemuProcessesMentioning(dir).length === 0, 10_000);
  expect(clean, `QEMU left running for ${name}`).toBe(true);
}

describe("root filesystem sources", () => {
  it("boots from a host directory (turned into the sandbox's read-only disk)", async () => {
    const root = busyboxDir();
    const sb = await Sandbox.builder("e2e-dir").image(root).create();
    try {
      expect((await sb.exec("cat", ["/etc/message"])).stdout()).toBe("from a host directory\n");
      // Writes land in the sandbox's own layer, never in the host directory.
      const w = await sb.shell("echo changed > /etc/message && cat /etc/message");
      expect(w.stdout()).toBe("changed\n");
      expect(readFileSync(join(root, "etc/message"), "utf8")).toBe("from a host directory\n");
    } finally {
      await cleanup(sb);
    }
  });

  it("a sandbox from a host directory starts again with its changes kept", async () => {
    const root = existsSync(join(scratch, "rootfs")) ? join(scratch, "rootfs") : busyboxDir();
    const sb = await Sandbox.builder("e2e-dir-restart").image(root).create();
    try {
      await sb.shell("echo second boot > /etc/restart-marker");
    } finally {
      await cleanup(sb);
    }
    const again = await Sandbox.start("e2e-dir-restart");
    try {
      expect((await again.exec("cat", ["/etc/restart-marker"])).stdout()).toBe("second boot\n");
      expect((await again.exec("cat", ["/etc/message"])).stdout()).toBe("from a host directory\n");
    } finally {
      await cleanup(again);
    }
  });

  it("boots from an ext4 disk image file", async () => {
    const disk = join(scratch, "copy.ext4");
    copyFileSync(assetPaths().defaultImage, disk);
    const sb = await Sandbox.builder("e2e-disk").image(disk).create();
    try {
      expect((await sb.shell("echo disk ok")).stdout()).toBe("disk ok\n");
    } finally {
      await cleanup(sb);
    }
  });

  it("rejects a file that is not a disk image it can mount", async () => {
    const junk = join(scratch, "junk.img");
    writeFileSync(junk, Buffer.alloc(8192, 7));
    const e = await Sandbox.builder("e2e-junk").image(junk).create().catch((x: unknown) => x);
    if (e instanceof Sandbox) await cleanup(e);
    expect(e).toBeInstanceOf(MicrosandboxError);
    expect((e as MicrosandboxError).code).toBe("invalidConfig");
    expect((e as Error).message).toContain("junk.img");
  });
});

describe("failures a user can act on", () => {
  it("a kernel that is not there -> KernelNotFoundError saying how to build it", async () => {
    process.env.MSB_KERNEL = join(scratch, "no-such-vmlinux");
    const e = await Sandbox.builder("e2e-nokernel").create().catch((x: unknown) => x);
    if (e instanceof Sandbox) await cleanup(e);
    expect(e).toBeInstanceOf(KernelNotFoundError);
    expect((e as KernelNotFoundError).code).toBe("kernelNotFound");
    expect((e as Error).message).toContain("no-such-vmlinux");
    expect((e as Error).message).toContain("npm run setup");
    await expectNoVmFor("e2e-nokernel");
  });

  it("QEMU not installed -> QemuNotFoundError saying what to install", async () => {
    process.env.MSB_QEMU = join(scratch, "no-such-qemu");
    const e = await Sandbox.builder("e2e-noqemu").create().catch((x: unknown) => x);
    if (e instanceof Sandbox) await cleanup(e);
    expect(e).toBeInstanceOf(QemuNotFoundError);
    expect((e as QemuNotFoundError).code).toBe("qemuNotFound");
    expect((e as Error).message).toContain("apt-get install qemu-system-x86");
  });

  it("an agent that never answers in time -> AgentTimeoutError with the kernel log, nothing left running", async () => {
    // Far shorter than any boot: the guest cannot have answered yet.
    process.env.MSB_BOOT_TIMEOUT_MS = "300";
    // A cold boot: a restore from a memory template can be ready within 300 ms.
    const e = await Sandbox.builder("e2e-timeout").memoryTemplate(false).create().catch((x: unknown) => x);
    if (e instanceof Sandbox) await cleanup(e);
    expect(e).toBeInstanceOf(AgentTimeoutError);
    expect((e as AgentTimeoutError).code).toBe("agentTimeout");
    expect((e as Error).message).toMatch(/did not answer within 300 ms; last lines of the kernel log/);
    await expectNoVmFor("e2e-timeout");
    // The failed boot's logs are kept for a look (the sandbox itself is gone).
    const consoleLog = join(home(), "sandboxes", "e2e-timeout", "console.log");
    expect((e as Error).message).toContain(consoleLog);
    expect(existsSync(consoleLog)).toBe(true);
    expect(existsSync(join(home(), "sandboxes", "e2e-timeout", "runtime.log"))).toBe(true);
    await expect(Sandbox.get("e2e-timeout")).rejects.toMatchObject({ code: "sandboxNotFound" });
    // The name is free again once the failed runtime is gone.
    delete process.env.MSB_BOOT_TIMEOUT_MS;
    const sb = await Sandbox.builder("e2e-timeout").create();
    try {
      expect((await sb.exec("echo", ["second try"])).stdout()).toBe("second try\n");
    } finally {
      await cleanup(sb);
    }
  });
});
