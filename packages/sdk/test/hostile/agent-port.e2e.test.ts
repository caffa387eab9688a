// Hostile guest, as root, against its own agent channel: it unbinds and rebinds the
// virtio_console driver (the agent, PID 1, holds the old port open, so a plain open is
// EBUSY), opens the new `agent` port and writes garbage onto it. msb-runtime validates
// every guest frame: the first bad one kills that VM and records it crashed with the
// exact protocol error. Only the victim is hurt: the test process, a neighbour sandbox
// made beforehand and the store carry on.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExecTimeoutError, RuntimeError, Sandbox, SandboxNotRunningError } from "../../src/index.js";
import { cleanup, useTempMsbHome, waitFor, within } from "../e2e-helpers.js";
import { alive, expectHostUnaffected, expectNeighbourAnswers, qemuPidOf, watchHost } from "./probe-helpers.js";

useTempMsbHome();
let neighbour: Sandbox | undefined;
const victims: Sandbox[] = [];

beforeAll(async () => {
  neighbour = await Sandbox.builder("port-neighbour").create();
  await expectNeighbourAnswers(neighbour, "before");
});
afterAll(async () => {
  await cleanup(...victims, neighbour);
});

/**
 * In the background (its own exec session dies with the channel): find the virtio device
 * of the port named `agent`, unbind and rebind virtio_console, wait for the new port,
 * open it as fd 3, then run `garbage`.
 */
function rebindThen(garbage: string): string {
  return `
for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name)" = agent ] && dev=$(basename $(readlink -f $p/device)); done
[ -n "$dev" ] || exit 1
echo $dev > /sys/bus/virtio/drivers/virtio_console/unbind
echo $dev > /sys/bus/virtio/drivers/virtio_console/bind
port=
for i in $(seq 1 200); do
  for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name 2>/dev/null)" = agent ] && port=/dev/$(basename $p); done
  [ -n "$port" ] && [ -c "$port" ] && break
  sleep 0.05
done
exec 3<>$port
${garbage}
`;
}

/** Boot a victim, check a plain open of the agent port is refused, start a command that stays in flight. */
async function victim(name: string) {
  const sb = await Sandbox.builder(name).create();
  victims.push(sb);
  const busy = await sb.shell("exec 3<>/dev/vport0p1 && echo opened");
  expect([busy.code, busy.stdout(), busy.stderr()]).toEqual([1, "", "/bin/sh: can't create /dev/vport0p1: Device or resource busy\n"]);
  const qemuPid = qemuPidOf(sb);
  const inflight = await sb.shellStream("sleep 600");
  const inflightEnd = inflight.wait().then(
    (v) => ({ resolved: v }),
    (e: unknown) => ({ rejected: e }),
  );
  return { sb, runtimePid: sb.runtimePid, qemuPid, inflightEnd };
}

async function launch(sb: Sandbox, script: string): Promise<void> {
  const out = await sb.shellWith(`setsid sh -c "$1" </dev/null >/dev/null 2>&1 & echo launched`, (b) => b.args(["sh", script]));
  expect([out.code, out.stdout()]).toEqual([0, "launched\n"]);
}

const CASES: { what: string; garbage: string; reason: string | RegExp }[] = [
  {
    what: "2 MiB of random bytes",
    garbage: "head -c 2097152 /dev/urandom >&3",
    // Whatever the first four bytes say, the frame is refused: a length out of range, or
    // (1 in ~4000) a frame of up to 1 MiB whose payload is no message.
    reason: /^protocol error: bad frame from guest: (frame length \d+ (exceeds the maximum of 1048581|is below the minimum of 5)|malformed payload: .+)$/,
  },
  {
    what: "a header claiming a 4 GiB frame",
    garbage: "printf '\\377\\377\\377\\377\\0\\0\\0\\1\\0' >&3",
    reason: "protocol error: bad frame from guest: frame length 4294967295 exceeds the maximum of 1048581",
  },
  {
    what: "a valid header with a payload that is not CBOR of a message",
    garbage: "printf '\\0\\0\\0\\015\\0\\0\\0\\1\\0\\377\\377\\377\\377\\377\\377\\377\\377' >&3",
    // Today: malformed payload: Semantic(None, "invalid type: break, expected enum")
    reason: /^protocol error: bad frame from guest: malformed payload: \S.*$/,
  },
  {
    what: "a well-formed message only the host may send (stdin_close)",
    garbage: "printf '\\0\\0\\0\\021\\0\\0\\0\\1\\0\\153stdin_close' >&3",
    // (the kind is Debug-printed, hence the quotes)
    reason: `protocol error: guest sent a message it may not send: "StdinClose"`,
  },
  {
    what: "a well-formed ready for a session that does not exist",
    garbage: "printf '\\0\\0\\0\\013\\1\\2\\3\\4\\0\\145ready' >&3",
    reason: "protocol error: guest used unknown request id 16909060",
  },
];

describe("garbage on the agent port after rebinding virtio_console", () => {
  it.each(CASES)("$what: the victim is crashed with the exact protocol error, nothing else is touched", async ({ garbage, reason }) => {
    const name = `port-victim-${victims.length}`;
    const v = await victim(name);
    const host = watchHost();
    const t0 = Date.now();
    await launch(v.sb, rebindThen(garbage));

    const end = await within(v.sb.wait(), 30_000, "the victim's end");
    const ms = Date.now() - t0;
    expect(end).toEqual({ code: 1, success: false });
    const h = await Sandbox.get(name);
    expect([h.status, h.exitCode, h.runtimePid]).toEqual(["crashed", 1, null]);
    if (typeof reason === "string") expect(h.exitReason).toBe(reason);
    else expect(h.exitReason).toMatch(reason);
    console.log(`agent port, ${name}: crashed ${ms} ms after the launch: ${h.exitReason}`);
    // msb-runtime logged why it ended the VM, killed QEMU and exited.
    expect(readFileSync(join(v.sb.sandboxDir, "runtime.log"), "utf8")).toContain(`ending the sandbox: ${h.exitReason!.slice("protocol error: ".length)}`);
    expect(await waitFor(() => !alive(v.runtimePid) && !alive(v.qemuPid), 10_000)).toBe(true);

    // The command in flight ends with an error saying the sandbox went away; new ones are refused.
    const inflight = await within(v.inflightEnd, 10_000, "the in-flight command's end");
    expect("rejected" in inflight).toBe(true);
    const err = (inflight as { rejected: unknown }).rejected;
    expect(err).toBeInstanceOf(RuntimeError);
    expect(err).toMatchObject({ code: "runtime", message: "the sandbox stopped while the command was running (the sandbox stopped)" });
    const next = await v.sb.exec("echo", ["hi"]).catch((e: unknown) => e);
    expect(next).toBeInstanceOf(SandboxNotRunningError);
    expect(next).toMatchObject({ code: "sandboxNotRunning", message: `sandbox ${name} is stopped` });

    await expectNeighbourAnswers(neighbour!, `after-${name}`);
    expect((await Sandbox.get("port-neighbour")).status).toBe("running");
    expectHostUnaffected(host.stop());
  });

  it("rebinding alone (no garbage): the victim goes deaf, the host-side timeout and stop() still end it", async () => {
    const name = "port-deaf";
    const v = await victim(name);
    const host = watchHost();
    await launch(v.sb, rebindThen("sleep 600"));
    await new Promise((r) => setTimeout(r, 2000));

    // The host sees nothing wrong (no bad frame); the guest just never answers again.
    // (Today the agent keeps its dead port and retries reads at once: the victim's QEMU
    // burns a host core until it is stopped; it does not look for the rebound port.)
    expect((await Sandbox.get(name)).status).toBe("running");
    const t0 = Date.now();
    const e = await v.sb.execWith("echo", (b) => b.args(["hi"]).timeout(3000)).catch((x: unknown) => x);
    const waited = Date.now() - t0;
    expect(e).toBeInstanceOf(ExecTimeoutError);
    expect(e).toMatchObject({ code: "execTimeout", timeoutMs: 3000 });
    expect(waited).toBeGreaterThanOrEqual(3000);
    expect(waited).toBeLessThan(3000 + 2000);

    // The Shutdown frame is never read: stop() kills it after its grace period.
    const t1 = Date.now();
    await within(v.sb.stop(2000), 15_000, "stop() of a deaf guest");
    const stopMs = Date.now() - t1;
    expect(stopMs).toBeGreaterThanOrEqual(2000);
    const h = await Sandbox.get(name);
    expect([h.status, h.exitCode, h.exitReason]).toEqual(["stopped", 137, "stopped (killed after the grace period)"]);
    expect(await waitFor(() => !alive(v.runtimePid) && !alive(v.qemuPid), 10_000)).toBe(true);
    const inflight = await within(v.inflightEnd, 10_000, "the in-flight command's end");
    expect((inflight as { rejected: unknown }).rejected).toBeInstanceOf(RuntimeError);
    console.log(`agent port, deaf guest: exec timeout after ${waited} ms, stop() in ${stopMs} ms`);

    await expectNeighbourAnswers(neighbour!, "after-deaf");
    expectHostUnaffected(host.stop());
  });
});
