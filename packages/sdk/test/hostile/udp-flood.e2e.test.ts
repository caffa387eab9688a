// Hostile guest: floods the gateway's DNS (10.0.2.2:53, UDP, answered by the network
// stack inside msb-runtime) with 20,000 datagrams from 64 sockets, in turn: a valid query
// for host.microsandbox.internal (answered by the stack itself, never resolved on the
// host), random bytes of random length, a 5-byte stub, an empty datagram (flood.c).
// Every query is answered, the garbage is dropped (or gets FORMERR when it happens to
// carry a query-like header), msb-runtime's memory stays bounded, a normal lookup still
// answers, and a neighbour sandbox made beforehand is not affected.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Sandbox } from "../../src/index.js";
import { cleanup, useTempMsbHome } from "../e2e-helpers.js";
import { alive, buildFlood, expectHostUnaffected, expectNeighbourAnswers, installFlood, rssKiB, sampleRss, watchHost } from "./probe-helpers.js";

useTempMsbHome();
let neighbour: Sandbox | undefined;
let sb: Sandbox | undefined;

beforeAll(async () => {
  const flood = buildFlood();
  neighbour = await Sandbox.builder("udp-neighbour").create();
  await expectNeighbourAnswers(neighbour, "before");
  sb = await Sandbox.builder("udp-victim").create();
  await installFlood(sb, flood);
});
afterAll(async () => {
  await cleanup(sb, neighbour);
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const DATAGRAMS = 20_000;
const ROUNDS = 2;

async function expectLookupAnswers(): Promise<void> {
  const r = await sb!.execWith("nslookup", (b) => b.args(["host.microsandbox.internal", "10.0.2.2"]).timeout(20_000));
  expect(r.code).toBe(0);
  expect(r.stdout()).toContain("Name:\thost.microsandbox.internal\nAddress: 10.0.2.254\n");
}

describe("a UDP flood at the gateway's DNS", () => {
  it(`${ROUNDS} x ${DATAGRAMS} datagrams: every query answered, garbage dropped, memory bounded, DNS still answers`, async () => {
    const pid = sb!.runtimePid;
    await expectLookupAnswers();
    const host = watchHost();
    const rx0 = (await sb!.metrics()).netRxBytes;
    const before = rssKiB(pid);
    const peak = sampleRss(pid);
    const figures: string[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      const t0 = Date.now();
      const flood = sb!.execWith("/flood", (b) => b.args(["udp", "10.0.2.2", "53", String(DATAGRAMS), "64"]).timeout(90_000));
      if (i === 0) {
        await sleep(1000);
        await expectNeighbourAnswers(neighbour!, "during");
      }
      const r = await flood;
      expect([r.code, r.stderr()]).toEqual([0, ""]);
      const m = /^sent=(\d+) dropped=(\d+) answered=(\d+) formerr=(\d+) other=(\d+)\n$/.exec(r.stdout());
      expect(m, r.stdout()).not.toBeNull();
      const [sent, dropped, answered, formerr, other] = m!.slice(1).map(Number);
      expect([sent, dropped]).toEqual([DATAGRAMS, 0]);
      // One query in four: each answered, with the host's address.
      expect(answered).toBe(DATAGRAMS / 4);
      // Random bytes with a 12-byte header that is not a response get FORMERR; stubs,
      // empty datagrams and "responses" get nothing at all.
      expect(formerr).toBeGreaterThan(0);
      expect(formerr).toBeLessThan(DATAGRAMS / 4);
      expect(other).toBe(0);
      figures.push(`round ${i + 1}: ${r.stdout().trim()} in ${Date.now() - t0} ms`);
    }
    await sleep(5000);
    const peakKiB = peak.stop();
    const after = rssKiB(pid);
    console.log(`udp flood: ${figures.join("; ")}; msb-runtime RSS KiB: before ${before}, peak ${peakKiB}, 5 s after ${after}`);
    expect(alive(pid)).toBe(true);
    expect(peakKiB).toBeLessThan(64 * 1024);
    expect(after).toBeLessThan(64 * 1024);
    // The answers really came through the stack: the guest received them.
    expect((await sb!.metrics()).netRxBytes - rx0).toBeGreaterThan(ROUNDS * (DATAGRAMS / 4) * 60);

    await expectLookupAnswers();
    const h = await Sandbox.get("udp-victim");
    expect([h.status, h.runtimePid]).toEqual(["running", pid]);
    await expectNeighbourAnswers(neighbour!, "after");
    expectHostUnaffected(host.stop());
  }, 150_000);
});
