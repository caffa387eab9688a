#!/usr/bin/env node
// Debian's cloud kernel against our own (build-kernel.sh), interleaved in one run:
//   floor  QEMU boots the kernel with the bench floor initramfs (same machine and kernel
//          arguments as a sandbox); "init" = time until its init printed its line
//          (kernel start to init, plus QEMU start ~0.2 s), "exit" = until QEMU exited.
//   create Sandbox.builder().create() until the first exec("true") returned.
// Usage: node test-vms/kernel/compare.mjs OWN_VMLINUX [runs=5]
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

import { Sandbox } from "@microsandbox/sdk";

const require = createRequire(import.meta.url);
const { assetPaths } = require("@microsandbox/core-native");

const own = resolve(process.argv[2] ?? "");
const runs = Number(process.argv[3] ?? 5);
delete process.env.MSB_KERNEL;
const debian = assetPaths().kernel;
const kernels = { debian, own };
const home = mkdtempSync(join(tmpdir(), "msb-kcmp-"));
process.env.MSB_HOME = home;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

function floorBoot(kernel) {
  const a = assetPaths();
  const argv = JSON.parse(execFileSync(a.runtime, ["--floor-argv", kernel, a.floorInitramfs], { encoding: "utf8" }));
  return new Promise((res, rej) => {
    const t0 = performance.now();
    let init;
    const p = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    p.stdout.on("data", (d) => {
      out += d;
      if (init === undefined && out.includes("init reached")) init = performance.now() - t0;
    });
    const timer = setTimeout(() => p.kill("SIGKILL"), 60_000);
    p.on("error", rej);
    p.on("exit", () => {
      clearTimeout(timer);
      if (init === undefined) rej(new Error(`floor boot of ${kernel} printed no line: ${out.slice(-2000)}`));
      else res({ init, exit: performance.now() - t0 });
    });
  });
}

async function coldStart(kernel, i) {
  process.env.MSB_KERNEL = kernel;
  const t0 = performance.now();
  const sb = await Sandbox.builder(`kcmp-${i}`).create();
  try {
    const out = await sb.exec("true");
    if (out.code !== 0) throw new Error(`exec true returned ${out.code}`);
    return performance.now() - t0;
  } finally {
    await sb.stop();
    delete process.env.MSB_KERNEL;
  }
}

try {
  const r = { debian: { init: [], exit: [], create: [] }, own: { init: [], exit: [], create: [] } };
  for (let i = 0; i < runs; i++) {
    for (const [name, k] of Object.entries(kernels)) {
      const f = await floorBoot(k);
      r[name].init.push(f.init);
      r[name].exit.push(f.exit);
      r[name].create.push(await coldStart(k, `${name}-${i}`));
    }
  }
  const fmt = (xs) => xs.map((x) => x.toFixed(0)).join(" ");
  console.log(`compare: ${runs} runs each, interleaved`);
  for (const [name, k] of Object.entries(kernels)) {
    console.log(`${name.padEnd(6)} ${k}`);
    for (const m of ["init", "exit", "create"])
      console.log(`  ${m.padEnd(6)} median ${median(r[name][m]).toFixed(0).padStart(5)} ms  [${fmt(r[name][m])}]`);
  }
} finally {
  rmSync(home, { recursive: true, force: true });
}
