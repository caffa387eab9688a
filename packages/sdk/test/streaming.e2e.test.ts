// End-to-end: output flow control. 1 GiB of stdout arrives complete while this process's
// memory stays bounded; a consumer that stops reading makes the guest's producer wait.
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Sandbox } from "../src/index.js";
import { cleanup, useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();

/** sha256 of 1 GiB of zero bytes. */
const GIB_OF_ZEROS_SHA256 = "49bc20df15e412a64472421e13fe86ff1c5165e18b2afccf160d4dc19fe68a14";
const MiB = 1 << 20;

let sb: Sandbox | undefined;
const box = (): Sandbox => {
  if (!sb) throw new Error("sandbox was not created");
  return sb;
};

beforeAll(async () => {
  sb = await Sandbox.builder("e2e-stream").create();
});
afterAll(async () => {
  await cleanup(sb);
});

describe("flow control", () => {
  it("1 GiB of stdout arrives complete (sha256) with bounded memory", async () => {
    global.gc?.();
    const base = process.memoryUsage().rss;
    let peak = base;
    const sample = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 50);
    const hash = createHash("sha256");
    let bytes = 0;
    let exit: number | undefined;
    try {
      const h = await box().execStream("dd", ["if=/dev/zero", "bs=65536", "count=16384"]);
      for await (const ev of h) {
        if (ev.kind === "stdout") {
          hash.update(ev.data);
          bytes += ev.data.byteLength;
        } else if (ev.kind === "exited") exit = ev.code;
      }
    } finally {
      clearInterval(sample);
    }
    peak = Math.max(peak, process.memoryUsage().rss);
    expect(exit).toBe(0);
    expect(bytes).toBe(1024 * MiB);
    expect(hash.digest("hex")).toBe(GIB_OF_ZEROS_SHA256);
    expect(peak - base).toBeLessThan(200 * 1000 * 1000);
  }, 300_000);

  it("a consumer that stops reading makes the producer wait (at most a window ahead)", async () => {
    // 256 writes of 1 MiB; after each one the guest records how many it has done.
    const script = "i=0; while [ $i -lt 256 ]; do dd if=/dev/zero bs=1048576 count=1 2>/dev/null; i=$((i+1)); echo $i > /tmp/progress; done";
    const h = await box().execStream("sh", ["-c", script]);
    let consumed = 0;
    while (consumed < 2 * MiB) {
      const ev = await h.recv();
      if (ev?.kind === "stdout") consumed += ev.data.byteLength;
      // a slow consumer
      await new Promise((r) => setTimeout(r, 5));
    }
    // Stop reading. The guest may run ahead by the channel's window (4 MiB) plus a pipe
    // and one 1 MiB write; without flow control it would be done with all 256 in seconds.
    await new Promise((r) => setTimeout(r, 3000));
    const progress = async () => Number((await box().exec("cat", ["/tmp/progress"])).stdout().trim());
    const p1 = await progress();
    await new Promise((r) => setTimeout(r, 1000));
    const p2 = await progress();
    expect(p2).toBe(p1); // stalled
    expect(p1 * MiB).toBeLessThanOrEqual(consumed + 7 * MiB);
    expect(p1).toBeLessThan(256);
    // Reading again lets it finish, nothing lost.
    for (let ev = await h.recv(); ev !== null; ev = await h.recv()) {
      if (ev.kind === "stdout") consumed += ev.data.byteLength;
      if (ev.kind === "exited") expect(ev.code).toBe(0);
    }
    expect(consumed).toBe(256 * MiB);
    expect(await progress()).toBe(256);
  }, 180_000);

  it("collect() of a command whose output is not read yet still gets all of it", async () => {
    const h = await box().execStream("sh", ["-c", "dd if=/dev/zero bs=65536 count=160 2>/dev/null; echo end >&2"]);
    await new Promise((r) => setTimeout(r, 500));
    const out = await h.collect();
    expect(out.stdoutBytes().byteLength).toBe(160 * 65536);
    expect(out.stderr()).toBe("end\n");
  });
});
