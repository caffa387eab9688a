// End-to-end: exec options on a real VM (default busybox image): cwd, user, env,
// timeout, stdin (bytes and pipe), TTY with resize, rlimits, bad input, concurrency.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExecFailedError, ExecTimeoutError, Sandbox } from "../src/index.js";
import { cleanup, readUntil, useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();

let sb: Sandbox | undefined;
const box = (): Sandbox => {
  if (!sb) throw new Error("sandbox was not created");
  return sb;
};

beforeAll(async () => {
  sb = await Sandbox.builder("e2e-exec").env("BASE", "sandbox").create();
});
afterAll(async () => {
  await cleanup(sb);
});

describe("execWith options", () => {
  it("cwd, env (merged over the sandbox's), args", async () => {
    const out = await box().execWith("sh", (b) =>
      b.arg("-c").arg('pwd; echo "$BASE $K1 $K2 $0 $1"').args(["zero", "one"]).cwd("/etc").env("K1", "a").envs({ K2: "b" }),
    );
    expect(out.code).toBe(0);
    expect(out.stdout()).toBe("/etc\nsandbox a b zero one\n");
  });

  it("user by name, by uid:gid, and by uid", async () => {
    expect((await box().execWith("id", (b) => b.user("nobody"))).stdout()).toBe("uid=65534(nobody) gid=65534(nogroup)\n");
    expect((await box().execWith("id", (b) => b.user("1000:1000"))).stdout()).toBe("uid=1000 gid=1000\n");
    expect((await box().execWith("id", (b) => b.user("0"))).stdout()).toMatch(/^uid=0\(root\) gid=0\(root\)/);
    expect((await box().exec("id")).stdout()).toMatch(/^uid=0\(root\)/);
  });

  it("a command starts in the commands' memory cgroup, in its own process group, with SIGPIPE at its default", async () => {
    // Its own pid, pgid and the agent's (1) pgid; SigIgn has no bit 12 (SIGPIPE), which the
    // agent's Rust runtime ignores.
    const out = await box().exec("sh", ["-c", "cat /proc/self/cgroup; cut -d' ' -f1,5 /proc/$$/stat; grep SigIgn /proc/$$/status"]);
    const [cgroup, stat, sigIgn] = out.stdout().trim().split("\n");
    expect(cgroup).toBe("0::/msb-commands");
    const [pid, pgid] = stat!.split(" ").map(Number);
    expect(pgid).toBe(pid);
    expect(BigInt(`0x${sigIgn!.split(/\s+/)[1]}`) & (1n << 12n)).toBe(0n);
  });

  it("a script without #! runs under /bin/sh, as execvp runs it", async () => {
    await box().fs().write("/tmp/no-shebang", "echo ran by $0 with $1\n");
    await box().exec("chmod", ["755", "/tmp/no-shebang"]);
    const out = await box().exec("/tmp/no-shebang", ["arg"]);
    expect([out.code, out.stdout()]).toEqual([0, "ran by /tmp/no-shebang with arg\n"]);
  });

  it("a timeout kills the command and rejects with ExecTimeoutError; the process is gone", async () => {
    const t0 = Date.now();
    const e = await box()
      .execWith("sh", (b) => b.args(["-c", "echo $$ > /tmp/timeout.pid; exec sleep 100"]).timeout(1500))
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ExecTimeoutError);
    expect((e as ExecTimeoutError).code).toBe("execTimeout");
    expect((e as ExecTimeoutError).timeoutMs).toBe(1500);
    expect(Date.now() - t0).toBeLessThan(15_000);
    const pid = (await box().exec("cat", ["/tmp/timeout.pid"])).stdout().trim();
    expect(pid).toMatch(/^\d+$/);
    const alive = await box().shell(`kill -0 ${pid} 2>/dev/null && echo alive || echo gone`);
    expect(alive.stdout()).toBe("gone\n");
    // a command that finishes in time is unaffected
    expect((await box().execWith("echo", (b) => b.arg("quick").timeout(30_000))).stdout()).toBe("quick\n");
  });

  it("stdinBytes feeds bytes then EOF; the default stdin is /dev/null", async () => {
    const data = new Uint8Array(300_000).map((_, i) => (i * 7) % 256);
    const out = await box().execWith("sh", (b) => b.args(["-c", "wc -c; echo done"]).stdinBytes(data));
    expect(out.stdout().trim().split(/\s+/)).toEqual(["300000", "done"]);
    const echoed = await box().execWith("cat", (b) => b.stdinBytes("héllo\n"));
    expect(echoed.stdout()).toBe("héllo\n");
    expect((await box().exec("cat")).stdout()).toBe("");
  });

  it("stdinPipe streams both ways: a line in, its echo out, then EOF", async () => {
    const h = await box().execStreamWith("cat", (b) => b.stdinPipe());
    const stdin = h.takeStdin()!;
    expect(h.takeStdin()).toBeNull();
    const seen = { text: "" };
    await stdin.write("first line\n");
    await readUntil(h, /first line\n$/, 30_000, seen);
    await stdin.write(new TextEncoder().encode("second line\n"));
    await readUntil(h, /second line\n$/, 30_000, seen);
    await stdin.close();
    expect(await h.wait()).toEqual({ code: 0, success: true });
    expect(seen.text).toBe("first line\nsecond line\n");
  });

  it("tty: a /dev/pts terminal whose size follows resize()", async () => {
    const h = await box().execStreamWith("sh", (b) => b.tty(true));
    const stdin = h.takeStdin()!;
    const seen = { text: "" };
    await stdin.write("tty; stty size\n");
    await readUntil(h, /\/dev\/pts\/\d+\r?\n24 80\r?\n/, 30_000, seen);
    await h.resize(50, 132);
    await stdin.write("stty size\n");
    await readUntil(h, /50 132\r?\n/, 30_000, seen);
    await stdin.write("exit 3\n");
    const rest = await h.collect();
    expect(rest.code).toBe(3);
    expect(rest.stderr()).toBe("");
  });

  it("rlimit: ulimit -n shows the limit", async () => {
    const out = await box().execWith("sh", (b) => b.args(["-c", "ulimit -n"]).rlimit("nofile", 123));
    expect(out.stdout()).toBe("123\n");
    const inf = await box().execWith("sh", (b) => b.args(["-c", "ulimit -c; ulimit -H -c"]).rlimit("core", "unlimited"));
    expect(inf.stderr()).toBe("");
    expect(inf.stdout()).toBe("unlimited\nunlimited\n");
  });

  it("signal() and kill() reach the command", async () => {
    const h = await box().execStream("sleep", ["100"]);
    expect((await h.recv())?.kind).toBe("started");
    await h.signal(15);
    expect(await h.wait()).toEqual({ code: 143, success: false });
    const k = await box().execStream("sh", ["-c", "sleep 100; echo never"]);
    await k.kill();
    const out = await k.collect();
    expect(out.code).toBe(137);
    expect(out.stdout()).toBe("");
  });

  it("bad input: a missing binary, a missing cwd, an unknown user are ExecFailedError naming them", async () => {
    const cases: [() => Promise<unknown>, RegExp][] = [
      [() => box().exec("no-such-binary-xyz"), /command not found: no-such-binary-xyz/],
      [() => box().execWith("pwd", (b) => b.cwd("/no/such/dir")), /working directory \/no\/such\/dir does not exist/],
      [() => box().execWith("id", (b) => b.user("ghost")), /unknown user: ghost/],
    ];
    for (const [p, re] of cases) {
      const e = await p().catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ExecFailedError);
      expect((e as ExecFailedError).reason).toMatch(re);
    }
    await expect(box().execWith("pwd", (b) => b.cwd("relative"))).rejects.toMatchObject({ code: "invalidConfig", field: "cwd" });
  });

  it("runs 20 commands at once, each with its own output", async () => {
    const outs = await Promise.all(
      Array.from({ length: 20 }, (_, i) => box().shell(`sleep 0.$((${i} % 5)); echo out-${i}; echo err-${i} >&2; exit ${i}`)),
    );
    outs.forEach((o, i) => {
      expect(o.stdout()).toBe(`out-${i}\n`);
      expect(o.stderr()).toBe(`err-${i}\n`);
      expect(o.code).toBe(i);
    });
  });
});
