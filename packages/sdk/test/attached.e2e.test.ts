// End-to-end: an attached sandbox must not outlive the process that created it,
// even when that process is SIGKILLed (no chance to clean up).
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { expect, it } from "vitest";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { Sandbox, SandboxNotFoundError } from "../src/index.js";
import { isGone, qemuProcessesMentioning, useTempMsbHome, waitFor } from "./e2e-helpers.js";

const home = useTempMsbHome();

const fixture = fileURLToPath(new URL("./fixtures/attached-child.mjs", import.meta.url));

async function killCreator(name: string, ephemeral: boolean): Promise<void> {
  const child = spawn(process.execPath, [fixture, name, ...(ephemeral ? ["ephemeral"] : [])], { env: process.env, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));

  try {
    const ready = await waitFor(() => stdout.includes("\n") || child.exitCode !== null, 100_000);
    expect(ready, `fixture did not report in time; stderr: ${stderr}`).toBe(true);
    const m = /^READY (\d+) (\S+) alive$/m.exec(stdout);
    expect(m, `fixture output: ${stdout}\nstderr: ${stderr}`).not.toBeNull();
    const runtimePid = Number(m![1]);
    const sandboxDir = m![2]!;

    expect(isGone(runtimePid)).toBe(false);
    expect(qemuProcessesMentioning(sandboxDir).length, "a QEMU process whose command line names the sandbox dir").toBeGreaterThan(0);

    child.kill("SIGKILL");
    await exited;

    // Both must be gone within 10 s of the kill.
    await waitFor(() => isGone(runtimePid) && qemuProcessesMentioning(sandboxDir).length === 0, 10_000);
    expect(isGone(runtimePid), `msb-runtime ${runtimePid} still running 10 s after its creator was killed`).toBe(true);
    expect(qemuProcessesMentioning(sandboxDir), "QEMU processes left behind").toEqual([]);
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
}

it("SIGKILL of the creating process leaves no msb-runtime or QEMU behind; the sandbox stays, stopped", async () => {
  await killCreator("e2e-attached", false);
  const h = await Sandbox.get("e2e-attached");
  expect([h.status, h.exitReason]).toEqual(["stopped", "creator exited"]);
});

it("an ephemeral sandbox is removed by its runtime when its creator is SIGKILLed", async () => {
  await killCreator("e2e-ephemeral", true);
  await expect(Sandbox.get("e2e-ephemeral")).rejects.toBeInstanceOf(SandboxNotFoundError);
  expect(existsSync(join(home(), "sandboxes", "e2e-ephemeral"))).toBe(false);
  expect(readdirSync(join(home(), "run"))).toEqual([]);
});
