#!/usr/bin/env node
// Cold start and warm exec, measured in one run on this machine (not a pass/fail test).
//   (a) floor: QEMU boots the same kernel, same machine and kernel arguments, with an
//       initramfs whose init prints one line and powers off; time to QEMU's exit.
//   (b) Sandbox.builder().create() until the first exec("true") has returned.
//   (c) a warm exec("true") round trip on a running sandbox.
// Runs of (a) and (b) are interleaved so that background load hits both alike.
// Usage: node bench/coldstart/coldstart.mjs [runs=7] [warmExecs=100]
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Sandbox } from "@microsandbox/sdk";

const require = createRequire(import.meta.url);
const { assetPaths } = require("@microsandbox/core-native");

const runs = Number(process.argv[2] ?? 7);
const warmExecs = Number(process.argv[3] ?? 100);
const assets = assetPaths();
const home = mkdtempSync(join(tmpdir(), "msb-bench-"));
process.env.MSB_HOME = home;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const floorArgv = JSON.parse(
  execFileSync(assets.runtime, ["--floor-argv", assets.kernel, assets.floorInitramfs], { encoding: "utf8" }),
);

function floorBoot() {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn(floorArgv[0], floorArgv.slice(1), { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    p.stdout.on("data", (d) => (out += d));
    p.on("error", reject);
    p.on("exit", () => {
      const ms = performance.now() - t0;
      if (!out.includes("init reached")) reject(new Error(`floor boot printed no line: ${out}`));
      else resolve(ms);
    });
  });
}

async function coldStart(i) {
  const t0 = performance.now();
  const sb = await Sandbox.builder(`bench-${i}`).create();
  const out = await sb.exec("true");
  const ms = performance.now() - t0;
  if (out.code !== 0) throw new Error(`exec true returned ${out.code}`);
  return { ms, sb };
}

try {
  const accel = floorArgv[floorArgv.indexOf("-accel") + 1];
  console.log(`coldstart: ${runs} runs each, accel=${accel}, kernel=${assets.kernel}`);
  const floor = [];
  const cold = [];
  for (let i = 0; i < runs; i++) {
    floor.push(await floorBoot());
    const { ms, sb } = await coldStart(i);
    cold.push(ms);
    await sb.stop();
  }
  const { sb } = await coldStart("warm");
  for (let i = 0; i < 10; i++) await sb.exec("true");
  const warm = [];
  for (let i = 0; i < warmExecs; i++) {
    const t0 = performance.now();
    await sb.exec("true");
    warm.push(performance.now() - t0);
  }
  await sb.stop();

  const a = median(floor);
  const b = median(cold);
  const c = median(warm);
  const fmt = (xs) => xs.map((x) => x.toFixed(0)).join(" ");
  console.log(`(a) floor boot            median ${a.toFixed(0)} ms   [${fmt(floor)}]`);
  console.log(`(b) create + first exec   median ${b.toFixed(0)} ms   [${fmt(cold)}]`);
  console.log(`(c) warm exec("true")     median ${c.toFixed(2)} ms  (${warmExecs} execs, min ${Math.min(...warm).toFixed(2)})`);
  console.log(`b/a = ${(b / a).toFixed(2)}   (target <= 1.3; warm exec target < 5 ms)`);
} finally {
  rmSync(home, { recursive: true, force: true });
}
