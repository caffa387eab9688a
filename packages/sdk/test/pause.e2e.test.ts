// End-to-end: pause and resume a running sandbox on a real VM. A paused VM uses no CPU
// (QEMU's own CPU time, read from /proc, stands still while a busy loop runs in the
// guest), its status is "paused", commands are refused with SandboxPausedError, and
// after resume the same processes and files are there. A stop works while paused.
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NetworkPolicy, Sandbox, SandboxPausedError } from "../src/index.js";
import { cleanup, qemuProcessesMentioning, useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();
let sb: Sandbox | undefined;
let server: Server | undefined;
let port = 0;
beforeAll(async () => {
  server = createServer((_req, res) => res.end("from the host\n"));
  await new Promise<void>((res) => server!.listen(0, "127.0.0.1", res));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  await cleanup(sb);
  await new Promise<void>((res) => (server ? server.close(() => res()) : res()));
});
const fetchHost = async (s: Sandbox) => (await s.exec("wget", ["-q", "-O", "-", `http://host.microsandbox.internal:${port}/`])).stdout();

/** utime + stime of a process, in clock ticks (/proc/<pid>/stat fields 14 and 15). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]);
}

async function ticksOver(pid: number, ms: number): Promise<number> {
  const a = cpuTicks(pid);
  await new Promise((r) => setTimeout(r, ms));
  return cpuTicks(pid) - a;
}

describe("pause / resume", () => {
  it("a paused VM uses no CPU, refuses commands, and goes on where it was after resume", async () => {
    sb = await Sandbox.builder("pause-me")
      .network((n) => n.policy(NetworkPolicy.builder().egress((r) => r.tcp().port(port).allowHost()).build()))
      .create();
    await sb.fs().write("/root/before.txt", "kept\n");
    expect(await fetchHost(sb)).toBe("from the host\n");
    // A busy loop, as a command that goes on running: the VM burns a full CPU meanwhile.
    const loop = await sb.execStream("sh", ["-c", "echo $$ > /tmp/loop.pid; while :; do :; done"]);
    let loopPid = "";
    for (let i = 0; i < 100 && !/^\d+\n$/.test(loopPid); i++) loopPid = (await sb.shell("cat /tmp/loop.pid 2>/dev/null")).stdout();
    loopPid = loopPid.trim();
    expect(loopPid).toMatch(/^\d+$/);
    const [qemu] = qemuProcessesMentioning("pause-me");
    expect(qemu).toBeDefined();
    const running = await ticksOver(qemu!.pid, 1000);

    await sb.pause();
    expect((await Sandbox.get("pause-me")).status).toBe("paused");
    const paused = await ticksOver(qemu!.pid, 1000);
    console.log(`QEMU CPU ticks per second: running ${running}, paused ${paused}`);
    // 100 ticks = one full CPU; the loop keeps at least a third of one busy under TCG.
    expect(running).toBeGreaterThan(30);
    expect(paused).toBeLessThanOrEqual(2);

    for (const f of [() => sb!.exec("true"), () => sb!.fs().read("/root/before.txt"), () => sb!.ping(), () => sb!.metrics()]) {
      const e = await f().catch((x: unknown) => x);
      expect(e).toBeInstanceOf(SandboxPausedError);
      expect((e as SandboxPausedError).code).toBe("sandboxPaused");
    }
    await sb.pause(); // already paused: nothing to do

    await new Promise((r) => setTimeout(r, 2000));
    const t0 = Date.now();
    await sb.resume();
    console.log(`resume: ${Date.now() - t0} ms`);
    expect((await Sandbox.get("pause-me")).status).toBe("running");
    const guestNow = Number((await sb.exec("date", ["+%s"])).stdout().trim());
    const off = guestNow - Math.floor(Date.now() / 1000);
    console.log(`guest clock after a 3 s pause: ${off} s off the host's`);
    // QEMU's virtual clock stands still while paused: the runtime sets the guest's (-3 without).
    expect(Math.abs(off)).toBeLessThanOrEqual(1);
    expect((await sb.exec("cat", ["/root/before.txt"])).stdout()).toBe("kept\n");
    // The NIC's vhost-user rings were stopped and started again: the network still works.
    expect(await fetchHost(sb)).toBe("from the host\n");
    // The same busy loop is still there (the command went on across the pause).
    expect((await sb.shell(`kill -0 ${loopPid} && echo alive`)).stdout()).toBe("alive\n");
    expect(await ticksOver(qemu!.pid, 1000)).toBeGreaterThan(30);
    await sb.resume(); // already running: nothing to do
    await loop.kill();
  });

  it("a paused sandbox stops cleanly (the guest is resumed to shut down)", async () => {
    // Through a handle (what `msb pause NAME` uses): it is refreshed afterwards.
    const h = await Sandbox.get("pause-me");
    await h.pause();
    expect(h.status).toBe("paused");
    await h.resume();
    expect(h.status).toBe("running");
    expect((await sb!.exec("echo", ["back"])).stdout()).toBe("back\n");
    await h.pause();
    await sb!.stop();
    const after = await Sandbox.get("pause-me");
    expect([after.status, after.exitCode]).toEqual(["stopped", 0]);
    // A stopped sandbox cannot be paused.
    await expect(after.pause()).rejects.toMatchObject({ code: "sandboxNotRunning" });
  });
});
