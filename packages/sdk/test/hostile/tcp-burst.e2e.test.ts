// Hostile guest: bursts of 5,000 TCP connections at once to the gateway's DNS port
// (10.0.2.2:53, DNS over TCP, answered by the network stack inside msb-runtime), from
// the default busybox guest with a small static program (flood.c). The stack caps a
// sandbox at 1,024 TCP flows and resets the rest; msb-runtime's memory stays bounded and
// comes back when the guest closes them; DNS still answers over UDP and TCP afterwards;
// a neighbour sandbox made beforehand is not affected.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Sandbox } from "../../src/index.js";
import { cleanup, useTempMsbHome } from "../e2e-helpers.js";
import { alive, buildFlood, expectHostUnaffected, expectNeighbourAnswers, installFlood, rssKiB, sampleRss, watchHost } from "./probe-helpers.js";

useTempMsbHome();
let neighbour: Sandbox | undefined;
let sb: Sandbox | undefined;

beforeAll(async () => {
  const flood = buildFlood();
  neighbour = await Sandbox.builder("tcp-neighbour").create();
  await expectNeighbourAnswers(neighbour, "before");
  sb = await Sandbox.builder("tcp-victim").create();
  await installFlood(sb, flood);
});
afterAll(async () => {
  await cleanup(sb, neighbour);
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const BURSTS = 3;
const CONNECTS = 5000;
const MAX_FLOWS = 1024; // crates/netstack: maxConnections default

/** The gateway's DNS answers host.microsandbox.internal over UDP (busybox nslookup) and TCP (flood dnstcp). */
async function expectDnsAnswers(): Promise<void> {
  const udp = await sb!.execWith("nslookup", (b) => b.args(["host.microsandbox.internal", "10.0.2.2"]).timeout(20_000));
  expect(udp.code).toBe(0);
  expect(udp.stdout()).toContain("Name:\thost.microsandbox.internal\nAddress: 10.0.2.254\n");
  const tcp = await sb!.execWith("/flood", (b) => b.args(["dnstcp", "10.0.2.2", "53", "host.microsandbox.internal"]).timeout(20_000));
  expect([tcp.code, tcp.stdout(), tcp.stderr()]).toEqual([0, "rcode=0 answers=1 a=10.0.2.254\n", ""]);
}

describe("5,000 TCP connections to the gateway's DNS port", () => {
  it(`${BURSTS} bursts: 1,024 accepted and the rest reset each time, msb-runtime's memory bounded and given back, DNS still answers`, async () => {
    const pid = sb!.runtimePid;
    const neighbourPid = neighbour!.runtimePid;
    await expectDnsAnswers();
    const host = watchHost();
    const before = rssKiB(pid);
    const neighbourBefore = rssKiB(neighbourPid);
    const peak = sampleRss(pid);
    const figures: string[] = [];
    for (let i = 0; i < BURSTS; i++) {
      const t0 = Date.now();
      // Hold the accepted connections for 3 s, then close them all.
      const burst = sb!.execWith("/flood", (b) => b.args(["tcp", "10.0.2.2", "53", String(CONNECTS), "3000"]).rlimit("nofile", 8192).timeout(60_000));
      if (i === 0) {
        await sleep(1000);
        await expectNeighbourAnswers(neighbour!, "during");
      }
      const r = await burst;
      expect([r.code, r.stderr()]).toEqual([0, ""]);
      expect(r.stdout()).toBe(`connected=${MAX_FLOWS} refused=${CONNECTS - MAX_FLOWS} reset=0 timeout=0 other=0\n`);
      figures.push(`burst ${i + 1}: ${r.stdout().trim()} in ${Date.now() - t0} ms, RSS ${rssKiB(pid)} KiB`);
      await sleep(2000); // the stack closes its side once the guest's FINs are in
    }
    const peakKiB = peak.stop();
    const afterBursts = rssKiB(pid);
    await sleep(15_000); // idle: DNS connections the guest left would be closed after 10 s
    const idle = rssKiB(pid);
    const neighbourAfter = rssKiB(neighbourPid);
    console.log(
      `tcp burst: ${figures.join("; ")}; msb-runtime RSS KiB: before ${before}, peak ${peakKiB}, after the bursts ${afterBursts}, after 15 s idle ${idle}; neighbour's msb-runtime ${neighbourBefore} -> ${neighbourAfter}`,
    );
    expect(alive(pid)).toBe(true);
    expect(peakKiB).toBeLessThan(64 * 1024);
    expect(idle).toBeLessThan(64 * 1024);
    // The neighbour's runtime has nothing to do with it.
    expect(neighbourAfter - neighbourBefore).toBeLessThan(8 * 1024);

    await expectDnsAnswers();
    const m = await sb!.metrics();
    expect(m.netRxBytes).toBeGreaterThan(0);
    const h = await Sandbox.get("tcp-victim");
    expect([h.status, h.runtimePid]).toEqual(["running", pid]);
    await expectNeighbourAnswers(neighbour!, "after");
    expectHostUnaffected(host.stop());
  }, 150_000);
});
