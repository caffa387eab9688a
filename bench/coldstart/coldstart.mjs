#!/usr/bin/env node
// Cold start and warm exec, measured in one run on this machine (not a pass/fail test).
//   (a) floor: QEMU boots the same kernel, same machine and kernel arguments, with an
//       initramfs whose init prints one line and powers off; time to QEMU's exit.
//   (b) Sandbox.builder().create() until the first exec("true") has returned.
//   (c) a warm exec("true") round trip on a running sandbox.
//   (d) as (b), restored from a memory template (made by a warm-up boot first), with
//       (b) measured with `.memoryTemplate(false)` in the same loop: d/b is the ratio.
//   (e) PSS of QEMU and msb-runtime per idle sandbox, 10 sandboxes from one template.
//   (f) sb.fork() of the running warm sandbox until the fork's first exec("true") returned.
// Runs of (a), (b) and (d) are interleaved so that background load hits them alike.
// Usage: node bench/coldstart/coldstart.mjs [runs=7] [warmExecs=100] [idle=10]
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Sandbox } from "@microsandbox/sdk";

const require = createRequire(import.meta.url);
const { assetPaths } = require("@microsandbox/core-native");

const runs = Number(process.argv[2] ?? 7);
const warmExecs = Number(process.argv[3] ?? 100);
const idleCount = Number(process.argv[4] ?? 10);
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

async function coldStart(i, template = false) {
  const t0 = performance.now();
  const sb = await Sandbox.builder(`bench-${i}`).memoryTemplate(template).create();
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
  const restored = [];
  // Makes the template the restores use.
  await (await coldStart("template-maker", true)).sb.stop();
  for (let i = 0; i < runs; i++) {
    floor.push(await floorBoot());
    const c = await coldStart(i);
    cold.push(c.ms);
    await c.sb.stop();
    const r = await coldStart(`r${i}`, true);
    restored.push(r.ms);
    await r.sb.stop();
  }
  const { sb } = await coldStart("warm");
  for (let i = 0; i < 10; i++) await sb.exec("true");
  const warm = [];
  for (let i = 0; i < warmExecs; i++) {
    const t0 = performance.now();
    await sb.exec("true");
    warm.push(performance.now() - t0);
  }
  const forked = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const child = await sb.fork(`fork-${i}`);
    await child.exec("true");
    forked.push(performance.now() - t0);
    await child.stop();
  }
  await sb.stop();

  // PSS (proportional set size: shared pages split between their users) of each idle
  // sandbox's QEMU and msb-runtime, with `idleCount` restored from one template.
  const idle = [];
  for (let i = 0; i < idleCount; i++) idle.push((await coldStart(`idle-${i}`, true)).sb);
  await new Promise((r) => setTimeout(r, 3000));
  const pss = (pid) => {
    try {
      const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"));
      return m ? Number(m[1]) / 1024 : 0;
    } catch {
      return 0;
    }
  };
  const procs = readdirSync("/proc").filter((d) => /^\d+$/.test(d));
  const ofHome = (pid) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(home);
    } catch {
      return false;
    }
  };
  // Each sandbox's QEMU (its drives are under the home) and its parent, the msb-runtime.
  const qemus = procs.filter((p) => ofHome(p) && readFileSync(`/proc/${p}/cmdline`, "utf8").includes("qemu-system"));
  const ppid = (p) => readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1].split(" ")[1];
  const mine = [...qemus, ...qemus.map(ppid)];
  const qemuPss = qemus.reduce((n, p) => n + pss(p), 0);
  const totalPss = mine.reduce((n, p) => n + pss(p), 0);
  for (const s of idle) await s.stop();

  const a = median(floor);
  const b = median(cold);
  const c = median(warm);
  const fmt = (xs) => xs.map((x) => x.toFixed(0)).join(" ");
  console.log(`(a) floor boot            median ${a.toFixed(0)} ms   [${fmt(floor)}]`);
  console.log(`(b) create + first exec   median ${b.toFixed(0)} ms   [${fmt(cold)}]`);
  console.log(`(c) warm exec("true")     median ${c.toFixed(2)} ms  (${warmExecs} execs, min ${Math.min(...warm).toFixed(2)})`);
  const d = median(restored);
  console.log(`(d) restored + first exec median ${d.toFixed(0)} ms   [${fmt(restored)}]`);
  console.log(`b/a = ${(b / a).toFixed(2)}   (target <= 1.3; warm exec target < 5 ms)`);
  console.log(`d/b = ${(d / b).toFixed(2)}   (target <= 0.25, and d <= 300 ms on a quiet machine)`);
  console.log(`(f) fork + first exec      median ${median(forked).toFixed(0)} ms   [${fmt(forked)}]   (target <= 500 ms)`);
  console.log(`(e) PSS per idle sandbox, ${idleCount} from one template: ${(totalPss / idleCount).toFixed(1)} MiB (QEMU ${(qemuPss / idleCount).toFixed(1)} MiB; ${mine.length} processes; target <= 60 MiB)`);
} finally {
  rmSync(home, { recursive: true, force: true });
}
