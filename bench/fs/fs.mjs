#!/usr/bin/env node
// Filesystem transfer throughput against the agent channel's raw throughput, measured in
// one run on this machine (not a pass/fail test).
//   raw out: `dd if=/dev/zero bs=65536 count=N` through execStream, output discarded
//            (guest -> host, the channel's own speed with no filesystem involved)
//   raw in:  the same bytes written to `cat > /dev/null` through takeStdin (host -> guest)
//   write:   a file written with fs().writeStream (host -> guest file)
//   read:    the same file read back with fs().readStream (guest file -> host)
// Rounds are interleaved so that background load hits every kind alike; medians are
// reported. The file's sha256 is checked in the guest after the last round (untimed).
// Usage: node bench/fs/fs.mjs [MiB=256] [rounds=3]
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Sandbox } from "@microsandbox/sdk";

const MiB = 1 << 20;
const sizeMiB = Number(process.argv[2] ?? 256);
const rounds = Number(process.argv[3] ?? 3);
const home = mkdtempSync(join(tmpdir(), "msb-bench-fs-"));
process.env.MSB_HOME = home;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const mbps = (bytes, ms) => bytes / 1e6 / (ms / 1000);

// The file's contents: 1 MiB chunks, each different, made before anything is timed.
const chunks = Array.from({ length: sizeMiB }, (_, i) => {
  const b = Buffer.alloc(MiB, i & 0xff);
  b.writeUInt32BE(i, 0);
  return b;
});
const expected = createHash("sha256");
for (const c of chunks) expected.update(c);
const digest = expected.digest("hex");
const total = sizeMiB * MiB;

async function rawOut(sb) {
  const t0 = performance.now();
  const h = await sb.execStream("dd", ["if=/dev/zero", "bs=65536", `count=${sizeMiB * 16}`]);
  let n = 0;
  for await (const ev of h) if (ev.kind === "stdout") n += ev.data.byteLength;
  const ms = performance.now() - t0;
  if (n !== total) throw new Error(`raw out: got ${n} bytes, expected ${total}`);
  return ms;
}

async function rawIn(sb) {
  const t0 = performance.now();
  const h = await sb.execStreamWith("sh", (b) => b.args(["-c", "cat > /dev/null"]).stdinPipe());
  const stdin = h.takeStdin();
  for (const c of chunks) await stdin.write(c);
  await stdin.close();
  const st = await h.wait();
  const ms = performance.now() - t0;
  if (!st.success) throw new Error(`raw in: exit ${st.code}`);
  return ms;
}

async function fsWrite(sb) {
  const t0 = performance.now();
  const ws = await sb.fs().writeStream("/tmp/bench.bin");
  for (const c of chunks) await ws.write(c);
  await ws.close();
  return performance.now() - t0;
}

async function fsRead(sb) {
  const t0 = performance.now();
  let n = 0;
  for await (const c of await sb.fs().readStream("/tmp/bench.bin")) n += c.byteLength;
  const ms = performance.now() - t0;
  if (n !== total) throw new Error(`read: got ${n} bytes, expected ${total}`);
  return ms;
}

let sb;
try {
  sb = await Sandbox.builder("bench-fs").memory(1024).create();
  console.log(`bench:fs: ${sizeMiB} MiB, ${rounds} rounds`);
  const t = { rawOut: [], rawIn: [], write: [], read: [] };
  // warm-up (first-touch effects in the guest), not counted
  await rawOut(sb);
  for (let r = 0; r < rounds; r++) {
    t.rawOut.push(await rawOut(sb));
    t.rawIn.push(await rawIn(sb));
    t.write.push(await fsWrite(sb));
    t.read.push(await fsRead(sb));
  }
  const sum = (await sb.exec("sha256sum", ["/tmp/bench.bin"])).stdout().split(" ")[0];
  if (sum !== digest) throw new Error(`the file in the guest has sha256 ${sum}, expected ${digest}`);
  const rate = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, mbps(total, median(v))]));
  const line = (label, k) => `${label} ${rate[k].toFixed(1).padStart(7)} MB/s   [${t[k].map((ms) => (ms / 1000).toFixed(2)).join(" ")} s]`;
  console.log(line("raw out (dd | execStream)      ", "rawOut"));
  console.log(line("raw in  (takeStdin | cat)      ", "rawIn"));
  console.log(line("fs write (writeStream)         ", "write"));
  console.log(line("fs read  (readStream)          ", "read"));
  console.log(`read / raw out  = ${(rate.read / rate.rawOut).toFixed(2)}   (target >= 0.7)`);
  console.log(`write / raw out = ${(rate.write / rate.rawOut).toFixed(2)}   (target >= 0.7)`);
  console.log(`write / raw in  = ${(rate.write / rate.rawIn).toFixed(2)}   (same direction)`);
  console.log(`sha256 of the file in the guest matches (${digest.slice(0, 16)}...)`);
} finally {
  await sb?.stop().catch(() => sb?.kill());
  rmSync(home, { recursive: true, force: true });
}
