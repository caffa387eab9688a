// Every fenced ```ts / ```typescript / ```js / ```javascript block of the README, run as
// printed so the README cannot drift: each block is written to a temp module inside the
// repo (packages/sdk/test/.readme-tmp/, so `@microsandbox/sdk` resolves to the built
// package as it would from node_modules), TypeScript blocks only have their type syntax
// stripped (typescript's transpileModule, target ESNext: nothing is lowered, so syntax
// that Node cannot parse, `await using` on Node 20, fails here as it would for a user),
// and the result runs with plain `node`, with a fresh MSB_HOME and a timeout. A block
// passes when it exits 0.
//
// Public image references are swapped for copies in a local test registry (no internet
// here): see IMAGE_SWAPS in readme-blocks.ts (shared with test-vms/install). Blocks that
// cannot run offline carry `<!-- readme-test: skip — <reason> -->` on the line right
// before their fence.
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execFileSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pushFixtures, startRegistry, type Registry } from "../../../test-vms/registry/index.js";
import { removeAllSandboxes } from "./e2e-helpers.js";
import { BLOCK_ENV, blockToJs, readmeBlocks, SWAP_FIXTURES } from "./readme-blocks.js";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const TMP = fileURLToPath(new URL("./.readme-tmp/", import.meta.url));
const BLOCK_TIMEOUT_MS = 180_000;

let reg: Registry;

function runNode(file: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number | null; signal: string | null; out: string; timedOut: boolean }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [file], { cwd: TMP, env, stdio: ["ignore", "pipe", "pipe"], detached: true });
    let out = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    child.stderr.on("data", (c: Buffer) => (out += c.toString()));
    let timedOut = false;
    const t = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        /* gone */
      }
    }, timeoutMs);
    child.on("close", (code, signal) => {
      clearTimeout(t);
      resolve({ code, signal, out, timedOut });
    });
  });
}

const BLOCKS = readmeBlocks(readFileSync(join(ROOT, "README.md"), "utf8"));

beforeAll(async () => {
  execFileSync("bash", [join(ROOT, "test-vms/registry/build-debian-python.sh")], { stdio: "inherit" }); // no-op once built
  reg = await startRegistry("plain");
  await pushFixtures(reg, SWAP_FIXTURES);
  mkdirSync(TMP, { recursive: true });
}, 600_000);

afterAll(async () => {
  await reg?.stop();
  rmSync(TMP, { recursive: true, force: true });
});

describe("README.md code blocks run as printed", () => {
  it("finds the README's TypeScript blocks", () => {
    expect(BLOCKS.length).toBeGreaterThan(5);
  });

  for (const b of BLOCKS) {
    const name = `${b.heading} (README.md:${b.line})`;
    if (b.skip) {
      it.skip(`${name} — skipped: ${b.skip}`, () => undefined);
      continue;
    }
    it(name, async () => {
      const js = blockToJs(b, reg.host);
      const file = join(TMP, `block-${b.line}.mjs`);
      writeFileSync(join(TMP, `block-${b.line}.mts`), b.code);
      writeFileSync(file, js);
      const home = mkdtempSync("/tmp/msb-rd-");
      const saved = process.env.MSB_HOME;
      try {
        const r = await runNode(file, { ...process.env, ...BLOCK_ENV, MSB_HOME: home }, BLOCK_TIMEOUT_MS);
        const why = r.timedOut ? `timed out after ${BLOCK_TIMEOUT_MS} ms` : `exit ${r.code ?? r.signal}`;
        expect(r.code, `README.md:${b.line} (${b.heading}): ${why}; output:\n${r.out}\n--- as run:\n${js}`).toBe(0);
        if (process.env.README_TEST_VERBOSE) console.log(`README.md:${b.line} output:\n${r.out}`);
      } finally {
        process.env.MSB_HOME = home;
        await removeAllSandboxes();
        if (saved === undefined) delete process.env.MSB_HOME;
        else process.env.MSB_HOME = saved;
        rmSync(home, { recursive: true, force: true });
      }
    }, BLOCK_TIMEOUT_MS + 30_000);
  }
});
