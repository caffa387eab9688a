// Runs one pullImage() in its own process (concurrency, crash and non-root tests).
// Usage: node pull-child.mjs <ref> <msbHome> [optionsJson]
// Prints "STREAMING" while a layer is half-way down, "PHASE <name>" when a phase starts, then
// one JSON line with the outcome.
import { pullImage } from "../../dist/index.js";

const [ref, msbHome, optsJson] = process.argv.slice(2);
const { pauseAt, ...opts } = JSON.parse(optsJson ?? "{}");
// pauseAt "streaming" | "building": block right after printing that marker, so that a
// test can kill the process at exactly that point.
const pause = (what) => {
  if (pauseAt === what) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000);
};
let streaming = false;
let phase = "";
try {
  const img = await pullImage(ref, {
    msbHome,
    ...opts,
    onProgress: (p) => {
      if (p.phase !== phase) {
        phase = p.phase;
        process.stdout.write(`PHASE ${phase}\n`);
        if (phase === "building") pause("building");
      }
      if (!streaming && p.phase === "layer" && p.doneBytes > 0 && p.doneBytes < p.totalBytes && !p.cached) {
        streaming = true;
        process.stdout.write("STREAMING\n");
        pause("streaming");
      }
    },
  });
  process.stdout.write(JSON.stringify({ ok: true, image: img }) + "\n");
} catch (e) {
  process.stdout.write(JSON.stringify({ ok: false, code: e.code, message: e.message }) + "\n");
  process.exitCode = 1;
}
