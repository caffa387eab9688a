#!/usr/bin/env node
// Network throughput and connection rate of our userspace stack against QEMU's user
// networking (-netdev user) and passt, on the same VM and image, interleaved in one run.
// Not a pass/fail test. msb-runtime swaps in the baselines when MSB_NET_BACKEND is
// "user" or "passt" (bench only; the guest then reaches the host at 10.0.2.2).
// Usage: node bench/net/net.mjs [runs=3]   (needs passt: apt-get install passt)
import { createServer } from "node:http";
import { createServer as createTcpServer } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NetworkPolicy, Sandbox } from "@microsandbox/sdk";

const runs = Number(process.argv[2] ?? 3);
const MiB = 1 << 20;
const SIZE = 64 * MiB;
const BIG = Buffer.alloc(SIZE, 7);
process.env.MSB_HOME = mkdtempSync(join(tmpdir(), "msb-bench-net-"));

const http = createServer((req, res) => res.end(req.url === "/big" ? BIG : "ok\n"));
await new Promise((r) => http.listen(0, "127.0.0.1", r));
const httpPort = http.address().port;
let upload = null; // { resolve, bytes, t0 }
const sink = createTcpServer((sock) => {
  sock.on("data", (d) => {
    if (!upload) return;
    upload.t0 ??= performance.now();
    upload.bytes += d.length;
    if (upload.bytes >= SIZE) upload.resolve(performance.now() - upload.t0);
  });
  sock.on("error", () => {});
});
await new Promise((r) => sink.listen(0, "127.0.0.1", r));
const sinkPort = sink.address().port;

const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const results = { msb: { down: [], up: [], cps: [] }, user: { down: [], up: [], cps: [] }, passt: { down: [], up: [], cps: [] } };

async function measure(backend) {
  process.env.MSB_NET_BACKEND = backend === "msb" ? "" : backend;
  const host = backend === "msb" ? "host.microsandbox.internal" : "10.0.2.2";
  const sb = await Sandbox.builder(`bench-net-${backend}`)
    .replace()
    .network((n) => n.policy(NetworkPolicy.builder().egress((r) => r.allowHost()).build()))
    .create();
  try {
    let t = performance.now();
    const d = await sb.shell(`wget -q -O /dev/null http://${host}:${httpPort}/big`);
    if (d.code !== 0) throw new Error(`${backend} download failed: ${d.stderr()}`);
    results[backend].down.push(SIZE / MiB / ((performance.now() - t) / 1000));

    const done = new Promise((resolve) => (upload = { resolve, bytes: 0, t0: null }));
    const up = sb.shell(`dd if=/dev/zero bs=65536 count=${SIZE / 65536} 2>/dev/null | nc -w 3 ${host} ${sinkPort}`);
    const ms = await done;
    upload = null;
    await up;
    results[backend].up.push(SIZE / MiB / (ms / 1000));

    t = performance.now();
    const n = 100;
    const c = await sb.shell(`i=0; while [ $i -lt ${n} ]; do wget -q -O /dev/null http://${host}:${httpPort}/s || exit 1; i=$((i+1)); done`);
    if (c.code !== 0) throw new Error(`${backend} connections failed`);
    results[backend].cps.push(n / ((performance.now() - t) / 1000));
  } finally {
    await sb.stop();
    await Sandbox.remove(`bench-net-${backend}`);
  }
}

try {
  for (let i = 0; i < runs; i++) for (const b of ["msb", "user", "passt"]) await measure(b);
  const row = (k, unit) => {
    const m = Object.fromEntries(Object.entries(results).map(([b, r]) => [b, median(r[k])]));
    const best = Math.max(m.user, m.passt);
    console.log(`${k.padEnd(5)} msb ${m.msb.toFixed(1)} ${unit}  user ${m.user.toFixed(1)}  passt ${m.passt.toFixed(1)}  ratio msb/best ${(m.msb / best).toFixed(2)}`);
  };
  console.log(`net bench: ${runs} runs each, ${SIZE / MiB} MiB transfers, 100 connections (wget) per run`);
  row("down", "MB/s");
  row("up", "MB/s");
  row("cps", "conn/s");
} finally {
  http.close();
  sink.close();
  rmSync(process.env.MSB_HOME, { recursive: true, force: true });
}
