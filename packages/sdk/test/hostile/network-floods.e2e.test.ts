// Hostile guest on the network (Debian test image, python3 as the attacker): a burst of
// 5,000 TCP connections to the gateway's DNS port and a flood of UDP garbage at it. The
// gateway's DNS must still answer, msb-runtime's memory must stay bounded and come back,
// and a neighbour sandbox must not notice.
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Sandbox } from "../../src/index.js";
import { pushFixtures, startRegistry, type Registry } from "../../../../test-vms/registry/index.js";
import { cleanup, DNS_PROBE, useTempMsbHome } from "../e2e-helpers.js";
import { expectNeighbourFine, rssKiB } from "./hostile-helpers.js";

useTempMsbHome();
let reg: Registry | undefined;
let neighbour: Sandbox | undefined;
let sb: Sandbox | undefined;

beforeAll(async () => {
  const script = fileURLToPath(new URL("../../../../test-vms/registry/build-debian-python.sh", import.meta.url));
  execFileSync("bash", [script], { stdio: "inherit" }); // a no-op once built
  reg = await startRegistry("plain");
  await pushFixtures(reg, ["debian-python:latest"]);
  neighbour = await Sandbox.builder("flood-neighbour").create();
  sb = await Sandbox.builder("flood-victim").image(`${reg.host}/debian-python:latest`).create();
}, 600_000);
afterAll(async () => {
  await cleanup(sb, neighbour);
  await reg?.stop();
});


// 5,000 connects to the gateway's port 53, all held open until every one is answered
// (connected or reset), then closed. Prints how many connected and how many were refused.
const TCP_BURST = `
import errno, select, socket
ok = refused = 0
todo = 5000
live = {}
held = []
while todo or live:
    while todo and len(live) < 1000:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(('10.0.2.2', 53))
        live[s.fileno()] = s
        todo -= 1
    p = select.poll()
    for fd in live: p.register(fd, select.POLLOUT)
    ready = p.poll(30000)
    if not ready:
        break
    for fd, _ in ready:
        s = live[fd]
        e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        del live[s.fileno()]
        if e == 0:
            ok += 1
            held.append(s)
        else:
            refused += 1
            s.close()
print(ok, refused, len(live))
for s in held: s.close()
`;

// 20,000 datagrams of garbage (1 to 512 bytes) at the gateway's DNS port.
const UDP_FLOOD = `
import os, random, socket
random.seed(11)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
for i in range(20000):
    try:
        s.sendto(os.urandom(random.randrange(1, 513)), ('10.0.2.2', 53)); sent += 1
    except OSError:
        pass
print(sent)
`;

async function dnsAnswers(): Promise<void> {
  for (const proto of [[], ["tcp"]]) {
    const r = await sb!.exec("python3", ["-c", DNS_PROBE, "host.microsandbox.internal", ...proto]);
    expect([r.code, r.stdout()]).toEqual([0, "True 0 1\n"]);
  }
}

const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("network floods from a hostile guest", () => {
  it("5,000 TCP connections to the gateway's DNS port: capped, every one answered, memory given back, DNS still answers", async () => {
    const pid = sb!.runtimePid;
    await dnsAnswers();
    const before = rssKiB(pid);
    const r = await sb!.execWith("python3", (b) => b.args(["-c", TCP_BURST]).rlimit("nofile", 8192));
    expect([r.code, r.stderr()]).toEqual([0, ""]);
    const [ok, refused, stuck] = r.stdout().trim().split(" ").map(Number);
    expect(stuck).toBe(0);
    expect((ok as number) + (refused as number)).toBe(5000);
    // At most 1024 flows per sandbox: the rest are reset at once.
    expect(ok).toBeGreaterThan(0);
    expect(ok).toBeLessThanOrEqual(1024);
    expect(refused).toBeGreaterThanOrEqual(5000 - 1024);
    const peak = rssKiB(pid);
    await settle(12_000); // idle DNS connections close after 10 s
    const after = rssKiB(pid);
    console.log(`tcp burst: ${ok} connected, ${refused} refused; msb-runtime RSS KiB before ${before}, after the burst ${peak}, after 12 s idle ${after}`);
    expect(after - before).toBeLessThan(16 * 1024);
    await dnsAnswers();
    await expectNeighbourFine(neighbour!);
  });

  it("20,000 UDP datagrams of garbage at the gateway's DNS port: DNS still answers, memory bounded", async () => {
    const pid = sb!.runtimePid;
    const before = rssKiB(pid);
    const r = await sb!.exec("python3", ["-c", UDP_FLOOD]);
    expect([r.code, Number(r.stdout())]).toEqual([0, 20000]);
    await settle(2000);
    const after = rssKiB(pid);
    console.log(`udp flood: msb-runtime RSS KiB before ${before}, after ${after}`);
    expect(after - before).toBeLessThan(16 * 1024);
    await dnsAnswers();
    await expectNeighbourFine(neighbour!);
    expect((await Sandbox.get("flood-victim")).status).toBe("running");
  });
});
