// End-to-end: fork a running sandbox on real VMs. The fork sees the parent's files and
// a running process's memory as they were at the fork, and nothing either side writes
// after; it has its own hostname, random state and clock; both go on running commands
// (the parent's command in flight at the fork keeps streaming to the parent); a stopped
// fork boots again. Taken names and invalid ones are refused before anything is saved.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { InvalidConfigError, Sandbox, SandboxAlreadyExistsError } from "../src/index.js";
import { cleanup, useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();
let parent: Sandbox | undefined;
let child: Sandbox | undefined;
afterAll(async () => {
  await cleanup(child, parent);
});

const sh = async (s: Sandbox, script: string) => (await s.shell(script)).stdout().trim();

describe("fork", () => {
  it("gives a new sandbox with the parent's memory and disk at that moment, independent after", async () => {
    parent = await Sandbox.builder("fork-parent").create();
    await parent.fs().write("/root/before.txt", "from before the fork\n");
    // A process whose state is only in its memory: it writes $v out on SIGUSR1.
    await parent.shell(
      `v=$(cat /proc/sys/kernel/random/uuid); echo "$v" > /root/v.parent
       (trap 'echo "$v" > /root/v.dump' USR1; while :; do sleep 0.1; done) </dev/null >/dev/null 2>&1 &
       echo $! > /root/holder.pid`,
    );
    const remembered = await sh(parent, "cat /root/v.parent && rm /root/v.parent");
    expect(remembered).toMatch(/^[0-9a-f-]{36}$/);
    // A command in flight at the fork: it keeps streaming to the parent.
    const ticking = await parent.execStream("sh", ["-c", "while :; do echo tick; sleep 0.1; done"]);

    const t0 = performance.now();
    child = await parent.fork("fork-child");
    console.log(`fork: ${Math.round(performance.now() - t0)} ms`);
    expect(child.name).toBe("fork-child");
    expect((await Sandbox.get("fork-child")).status).toBe("running");

    // The disk and the process's memory as they were.
    expect(await child.fs().readToString("/root/before.txt")).toBe("from before the fork\n");
    await child.shell("kill -USR1 $(cat /root/holder.pid)");
    let dumped = "";
    for (let i = 0; i < 50 && dumped === ""; i++) dumped = await sh(child, "cat /root/v.dump 2>/dev/null || true");
    expect(dumped).toBe(remembered);
    expect(await parent.fs().exists("/root/v.dump")).toBe(false);

    // Independent from then on, both ways.
    await parent.fs().write("/root/after.txt", "parent\n");
    await child.fs().write("/root/child.txt", "child\n");
    expect(await child.fs().exists("/root/after.txt")).toBe(false);
    expect(await parent.fs().exists("/root/child.txt")).toBe(false);

    // Its own identity: hostname, random state, clock.
    expect(await sh(child, "hostname")).toBe("fork-child");
    expect(await sh(child, "echo $HOSTNAME")).toBe("fork-child");
    expect(await sh(parent, "hostname")).toBe("fork-parent");
    const [a, b] = await Promise.all([sh(parent, "head -c 32 /dev/urandom | od -An -tx1"), sh(child, "head -c 32 /dev/urandom | od -An -tx1")]);
    expect(a).not.toBe(b);
    const [ua, ub] = await Promise.all([sh(parent, "cat /proc/sys/kernel/random/uuid"), sh(child, "cat /proc/sys/kernel/random/uuid")]);
    expect(ua).not.toBe(ub);
    const guest = Number(await sh(child, "date +%s"));
    expect(Math.abs(guest - Date.now() / 1000)).toBeLessThan(2);

    // The parent's stream goes on after the fork; the fork never saw its output.
    let ticks = 0;
    for (let i = 0; i < 200 && ticks < 3; i++) {
      const ev = await ticking.recv();
      if (ev?.kind === "stdout") ticks += (Buffer.from(ev.data).toString().match(/tick/g) ?? []).length;
    }
    expect(ticks).toBeGreaterThanOrEqual(3);
    await ticking.kill();

    // A fork is an ordinary sandbox: stopped, it boots again with its own disk.
    await child.stop();
    child = await Sandbox.start("fork-child");
    expect(await child.fs().readToString("/root/child.txt")).toBe("child\n");
    expect(await child.fs().exists("/root/after.txt")).toBe(false);
  });

  it("forks a sandbox restored from a memory template (its memory a private mapping) too", async () => {
    // The first test's parent made the template: this one is a restore.
    const restored = await Sandbox.builder("fork-restored").create();
    try {
      const log = () => readFileSync(join(process.env.MSB_HOME!, "sandboxes", "fork-restored", "runtime.log"), "utf8");
      expect(log()).toMatch(/memory template [0-9a-f]{16}: restored /);
      await restored.shell("echo restored-state > /root/r.txt; (sleep 600) </dev/null >/dev/null 2>&1 & echo $! > /root/sleeper.pid");
      const copy = await restored.fork("fork-of-restored");
      try {
        expect(await copy.fs().readToString("/root/r.txt")).toBe("restored-state\n");
        // The process is there, in the fork's memory.
        expect(await sh(copy, "kill -0 $(cat /root/sleeper.pid) && echo alive")).toBe("alive");
        expect(await sh(copy, "hostname")).toBe("fork-of-restored");
      } finally {
        await copy.stop();
      }
      expect(log()).toMatch(/forked into .*: memory in the state stream \(mapped from a template\)/);
    } finally {
      await restored.stop();
    }
  });

  it("refuses a taken or invalid name before saving anything", async () => {
    expect(parent).toBeDefined();
    await expect(parent!.fork("fork-child")).rejects.toBeInstanceOf(SandboxAlreadyExistsError);
    await expect(parent!.fork("../x")).rejects.toBeInstanceOf(InvalidConfigError);
    // The parent was not disturbed.
    expect(await sh(parent!, "echo ok")).toBe("ok");
  });
});
