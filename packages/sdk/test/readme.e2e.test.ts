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
// here): see IMAGE_SWAPS. Blocks that cannot run offline carry
// `<!-- readme-test: skip — <reason> -->` on the line right before their fence.
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { execFileSync } from "node:child_process";
import ts from "typescript";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pushFixtures, startRegistry, type Registry } from "../../../test-vms/registry/index.js";
import { removeAllSandboxes } from "./e2e-helpers.js";

const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const TMP = fileURLToPath(new URL("./.readme-tmp/", import.meta.url));
const BLOCK_TIMEOUT_MS = 180_000;

interface Block {
  /** 1-based line of the opening fence */
  line: number;
  lang: string;
  heading: string;
  code: string;
  skip?: string;
}

/** The README's fenced TypeScript/JavaScript blocks, with their heading and skip marker. */
function readmeBlocks(text: string): Block[] {
  const lines = text.split("\n");
  const blocks: Block[] = [];
  let heading = "(top)";
  let fence = "";
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    const open = /^(`{3,})\s*(\S*)\s*$/.exec(l);
    if (!fence && open) {
      fence = open[1]!;
      const lang = open[2]!.toLowerCase();
      if (["ts", "typescript", "js", "javascript"].includes(lang)) {
        const start = i;
        let j = i + 1;
        while (j < lines.length && lines[j]!.trim() !== fence) j++;
        const marker = /^<!--\s*readme-test:\s*skip\s*(?:—|-+|:)?\s*(.*?)\s*-->\s*$/.exec(lines[start - 1] ?? "");
        blocks.push({
          line: start + 1,
          lang,
          heading,
          code: lines.slice(start + 1, j).join("\n") + "\n",
          ...(marker ? { skip: marker[1] || "marked skip" } : {}),
        });
        i = j;
        fence = "";
      }
      continue;
    }
    if (fence) {
      if (l.trim() === fence) fence = "";
      continue;
    }
    const h = /^#{1,6}\s+(.*)$/.exec(l);
    if (h) heading = h[1]!.trim();
  }
  return blocks;
}

let reg: Registry;

// Public image reference (a whole string literal in a block) -> local copy. The test
// registry has no alpine image: busybox stands in for it (a shell and coreutils applets,
// which is all the README's alpine examples use).
const IMAGE_SWAPS: { match: RegExp; to: () => string; why: string }[] = [
  { match: /^(docker\.io\/)?(library\/)?python(:[\w.-]+)?$/, to: () => `${reg.host}/debian-python:latest`, why: "Debian 12 + python3" },
  { match: /^(docker\.io\/)?(library\/)?(debian|ubuntu)(:[\w.-]+)?$/, to: () => `${reg.host}/debian-python:latest`, why: "Debian 12 + python3" },
  { match: /^(docker\.io\/)?(library\/)?alpine(:[\w.-]+)?$/, to: () => `${reg.host}/busybox:latest`, why: "no alpine fixture" },
  { match: /^(docker\.io\/)?(library\/)?busybox(:[\w.-]+)?$/, to: () => `${reg.host}/busybox:latest`, why: "busybox fixture" },
];

/** Swap every string literal that is exactly a public image reference. */
function swapImages(code: string): string {
  return code.replace(/(["'`])([^"'`\n]+)\1/g, (all, q: string, s: string) => {
    const swap = IMAGE_SWAPS.find((x) => x.match.test(s));
    return swap ? `${q}${swap.to()}${q}` : all;
  });
}

/** Environment variables the blocks read. */
const BLOCK_ENV: Record<string, string> = {
  OPENAI_API_KEY: "sk-readme-test-not-a-real-key",
  API_KEY: "readme-test-key",
};

function toJs(b: Block): string {
  const code = swapImages(b.code);
  if (b.lang === "js" || b.lang === "javascript") return code;
  const out = ts.transpileModule(code, {
    fileName: `readme-${b.line}.mts`,
    reportDiagnostics: true,
    compilerOptions: {
      // ESNext: strip types only; `await using` and everything else stays as printed
      target: ts.ScriptTarget.ESNext,
      module: ts.ModuleKind.ESNext,
      verbatimModuleSyntax: false,
      sourceMap: false,
    },
  });
  const errs = (out.diagnostics ?? []).map((d) => ts.flattenDiagnosticMessageText(d.messageText, "\n"));
  if (errs.length) throw new Error(`README.md:${b.line}: does not parse as TypeScript: ${errs.join("; ")}`);
  return out.outputText;
}

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
  await pushFixtures(reg, ["busybox:latest", "debian-python:latest"]);
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
      const js = toJs(b);
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
