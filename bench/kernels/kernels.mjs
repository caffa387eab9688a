#!/usr/bin/env node
// The guest's own kernel (packages/guest-linux-x64, test-vms/kernel) against Debian's
// cloud kernel (the previous guest), interleaved in one run on this machine:
//   floor  QEMU boots the kernel with the floor initramfs (same machine and kernel
//          arguments as a sandbox); "init" = until its init printed its line (kernel
//          start to init, plus QEMU start ~0.2 s), "exit" = until QEMU exited.
//   create Sandbox.builder().create() until the first exec("true") returned.
// Each kernel boots with its own initramfs: the Debian guest's carries its modules.
// Usage: node bench/kernels/kernels.mjs [runs=5]   (npm run bench:kernels builds the Debian
//        guest into test-vms/build/debian-guest first: MSB_GUEST_KERNEL=debian test-vms/build.sh)
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import { Sandbox } from "@microsandbox/sdk";

const require = createRequire(import.meta.url);
const { assetPaths } = require("@microsandbox/core-native");

const runs = Number(process.argv[2] ?? 5);
for (const v of ["MSB_GUEST_DIR", "MSB_KERNEL", "MSB_INITRAMFS"]) delete process.env[v];
const guests = {
  own: fileURLToPath(new URL("../../packages/guest-linux-x64", import.meta.url)),
  debian: fileURLToPath(new URL("../../test-vms/build/debian-guest", import.meta.url)),
};
const home = mkdtempSync(join(tmpdir(), "msb-kcmp-"));
process.env.MSB_HOME = home;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

function floorBoot(guest) {
  const a = assetPaths();
  const argv = JSON.parse(execFileSync(a.runtime, ["--floor-argv", join(guest, "vmlinux"), join(guest, "floor.cpio")], { encoding: "utf8" }));
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
      if (init === undefined) rej(new Error(`floor boot of ${guest} printed no line: ${out.slice(-2000)}`));
      else res({ init, exit: performance.now() - t0 });
    });
  });
}

async function coldStart(guest, i) {
  process.env.MSB_GUEST_DIR = guest;
  const t0 = performance.now();
  const sb = await Sandbox.builder(`kcmp-${i}`).create();
  try {
    const out = await sb.exec("true");
    if (out.code !== 0) throw new Error(`exec true returned ${out.code}`);
    return performance.now() - t0;
  } finally {
    await sb.stop();
    delete process.env.MSB_GUEST_DIR;
  }
}

try {
  const r = { own: { init: [], exit: [], create: [] }, debian: { init: [], exit: [], create: [] } };
  for (let i = 0; i < runs; i++) {
    for (const [name, g] of Object.entries(guests)) {
      const f = await floorBoot(g);
      r[name].init.push(f.init);
      r[name].exit.push(f.exit);
      r[name].create.push(await coldStart(g, `${name}-${i}`));
    }
  }
  const fmt = (xs) => xs.map((x) => x.toFixed(0)).join(" ");
  console.log(`kernels: ${runs} runs each, interleaved`);
  for (const [name, g] of Object.entries(guests)) {
    console.log(`${name.padEnd(6)} ${g}`);
    for (const m of ["init", "exit", "create"])
      console.log(`  ${m.padEnd(6)} median ${median(r[name][m]).toFixed(0).padStart(5)} ms  [${fmt(r[name][m])}]`);
  }
  for (const m of ["init", "create"]) console.log(`own/debian ${m}: ${(median(r.own[m]) / median(r.debian[m])).toFixed(2)}`);
} finally {
  rmSync(home, { recursive: true, force: true });
}
