// End-to-end: limits of one command on a real VM (default busybox image): the output
// limit of buffered calls, the host-side timeout under a guest that does not yield, and
// input sizes refused before anything is sent or booted.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_MAX_OUTPUT_BYTES, ExecTimeoutError, InvalidConfigError, OutputLimitError, Sandbox } from "../src/index.js";
import { cleanup, useTempMsbHome, waitForAsync } from "./e2e-helpers.js";

useTempMsbHome();

let sb: Sandbox | undefined;
const box = (): Sandbox => {
  if (!sb) throw new Error("sandbox was not created");
  return sb;
};

beforeAll(async () => {
  sb = await Sandbox.builder("e2e-limits").create();
});
afterAll(async () => {
  await cleanup(sb);
});

/** Guest pids of processes whose comm is `name` (read with shell builtins only). */
async function guestPids(name: string): Promise<string[]> {
  const out = await box().shell(`for d in /proc/[0-9]*; do read c < $d/comm 2>/dev/null && [ "$c" = ${name} ] && echo \${d#/proc/}; done; true`);
  return out.stdout().split("\n").filter((l) => l !== "");
}

describe("maxOutputBytes", () => {
  it("cat /dev/zero with a 1 MiB limit rejects with OutputLimitError, the cat is killed, the sandbox still works", async () => {
    const t0 = Date.now();
    const e = await box()
      .execWith("cat", (b) => b.arg("/dev/zero").maxOutputBytes(1 << 20))
      .catch((x: unknown) => x);
    const took = Date.now() - t0;
    expect(e).toBeInstanceOf(OutputLimitError);
    expect(e).toMatchObject({ code: "outputLimit", limit: 1 << 20, field: "maxOutputBytes" });
    expect((e as Error).message).toContain("1048576 bytes");
    // 1 MiB at tens of MB/s: well under the time the whole 64 MiB default would take
    expect(took).toBeLessThan(20_000);
    // the guest process was killed (SIGKILL), not left blocked on a full pipe
    expect(await waitForAsync(async () => (await guestPids("cat")).length === 0, 20_000)).toBe(true);
    // and the next command runs normally
    const next = await box().exec("echo", ["still here"]);
    expect(next.code).toBe(0);
    expect(next.stdout()).toBe("still here\n");
  });

  it("the 64 MiB default applies to sb.exec, and output below a limit is returned whole", async () => {
    const e = await box()
      .exec("cat", ["/dev/zero"])
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OutputLimitError);
    expect((e as OutputLimitError).limit).toBe(DEFAULT_MAX_OUTPUT_BYTES);
    expect(await waitForAsync(async () => (await guestPids("cat")).length === 0, 20_000)).toBe(true);
    // exactly at the limit passes (stdout + stderr counted together)
    const ok = await box().shellWith("head -c 1000 /dev/zero; head -c 24 /dev/zero >&2", (b) => b.maxOutputBytes(1024));
    expect(ok.code).toBe(0);
    expect(ok.stdoutBytes().byteLength).toBe(1000);
    expect(ok.stderrBytes().byteLength).toBe(24);
    await expect(
      box().shellWith("head -c 1000 /dev/zero; head -c 25 /dev/zero >&2", (b) => b.maxOutputBytes(1024)),
    ).rejects.toBeInstanceOf(OutputLimitError);
  });

  it("streams stay unbounded: 3 MiB through a handle whose limit is 1 MiB", async () => {
    const h = await box().execStreamWith("head", (b) => b.args(["-c", String(3 << 20), "/dev/zero"]).maxOutputBytes(1 << 20));
    let bytes = 0;
    let code: number | undefined;
    for await (const ev of h) {
      if (ev.kind === "stdout") bytes += ev.data.byteLength;
      if (ev.kind === "exited") code = ev.code;
    }
    expect(bytes).toBe(3 << 20);
    expect(code).toBe(0);
  });
});

describe("timeout", () => {
  /** Guest processes of uid 65534 (nobody), counted with shell builtins, not counting
   * `sleep` (the setsid'd loop below always has one running, replaced every second);
   * `kill` SIGKILLs all of them, sleeps included. */
  const nobodys = async (kill = false) =>
    (
      await box().shell(
        `n=0; for d in /proc/[0-9]*; do read c < $d/comm || continue; while read k v _; do [ "$k" = Uid: ] && [ "$v" = 65534 ] && { [ "$c" = sleep ] || n=$((n+1)); ${kill ? "kill -9 ${d#/proc/};" : ""} }; done < $d/status; done 2>/dev/null; echo $n`,
      )
    ).stdout().trim();

  it("fires on time under a guest that ignores SIGTERM, forks, spins and keeps the output open", async () => {
    // As nobody, so RLIMIT_NPROC bounds the bomb (root is exempt). Busy loops keep the
    // single vCPU saturated, the bomb keeps forking, and a child in a session of its own
    // survives the process-group SIGKILL with stdout open, so the session never ends by
    // itself. The host's deadline must not care (it used to wait up to 5 s more).
    // The setsid'd child says when it is in its own session: under a loaded host it
    // could otherwise still be in the group when the deadline's SIGKILL comes.
    const script = [
      "trap '' TERM",
      "rm -f /tmp/setsid-ready",
      "setsid sh -c 'trap \"\" TERM; : > /tmp/setsid-ready; while :; do sleep 1; done' &",
      "while [ ! -e /tmp/setsid-ready ]; do :; done",
      "for i in 1 2 3 4; do (while :; do :; done) & done",
      "f() { f | f & }; f 2>/dev/null",
      "while :; do :; done",
    ].join("\n");
    const t0 = Date.now();
    const e = await box()
      .shellWith(script, (b) => b.user("nobody").rlimit("nproc", 48).timeout(3000))
      .catch((x: unknown) => x);
    const took = Date.now() - t0;
    expect(e).toBeInstanceOf(ExecTimeoutError);
    expect((e as ExecTimeoutError).timeoutMs).toBe(3000);
    expect(took).toBeGreaterThanOrEqual(2900);
    // within a second of the deadline is the requirement; the bound leaves room for a loaded host
    expect(took).toBeLessThan(3000 + 2500);
    // the process group was SIGKILLed: only the setsid'd child is left; end it, the guest is fine
    expect(await waitForAsync(async () => (await nobodys()) === "1", 60_000)).toBe(true);
    await nobodys(true);
    expect(await waitForAsync(async () => (await nobodys()) === "0", 30_000)).toBe(true);
    expect((await box().exec("echo", ["ok"])).stdout()).toBe("ok\n");
  });
});

describe("input sizes", () => {
  it("a 1 MiB argument or env value is InvalidConfigError naming it (not ProtocolError); the sandbox is unaffected", async () => {
    const big = "x".repeat(1 << 20);
    const a = await box().exec("echo", ["ok", big]).catch((x: unknown) => x);
    expect(a).toBeInstanceOf(InvalidConfigError);
    expect((a as InvalidConfigError).field).toBe("args[1]");
    const e = await box().execWith("env", (b) => b.env("MODE", big)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect((e as InvalidConfigError).field).toBe("env.MODE");
    // the largest argument that is accepted reaches the command whole
    const fits = "y".repeat(128 * 1024 - 1);
    const out = await box().exec("sh", ["-c", 'printf %s "$0" | wc -c', fits]);
    expect(out.stdout().trim()).toBe(String(fits.length));
  });

  it("a 1 MiB env value at create is refused before any boot: the name stays free", async () => {
    const t0 = Date.now();
    const e = await Sandbox.builder("e2e-limits-big-env")
      .env("MODE", "x".repeat(1 << 20))
      .create()
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect((e as InvalidConfigError).field).toBe("env.MODE");
    expect(Date.now() - t0).toBeLessThan(1000);
    await expect(Sandbox.get("e2e-limits-big-env")).rejects.toMatchObject({ code: "sandboxNotFound" });
  });
});
