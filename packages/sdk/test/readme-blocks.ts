// The README's code blocks as tests run them, shared by readme.e2e.test.ts (every block,
// against the repository's build) and test-vms/install/install.e2e.test.ts (the first
// block, from a project that installed the published packages from a registry).
//
// - readmeBlocks(): every fenced ```ts / ```typescript / ```js / ```javascript block, with
//   the heading it is under and its skip marker (`<!-- readme-test: skip — <reason> -->`
//   on the line right before the fence).
// - blockToJs(): the block as it runs: public image references swapped for copies in a
//   local test registry (no internet here, see IMAGE_SWAPS), TypeScript only type-stripped
//   (typescript's transpileModule, target ESNext: nothing is lowered, so syntax that Node
//   cannot parse, `await using` on Node 20, fails here as it would for a user).
import ts from "typescript";

export interface Block {
  /** 1-based line of the opening fence */
  line: number;
  lang: string;
  heading: string;
  code: string;
  skip?: string;
}

/** The README's fenced TypeScript/JavaScript blocks, with their heading and skip marker. */
export function readmeBlocks(text: string): Block[] {
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

export interface ImageSwap {
  match: RegExp;
  /** the local copy, given the test registry's "127.0.0.1:PORT" */
  to: (registryHost: string) => string;
  why: string;
}

// Public image reference (a whole string literal in a block) -> local copy. The test
// registry has no alpine image: busybox stands in for it (a shell and coreutils applets,
// which is all the README's alpine examples use).
export const IMAGE_SWAPS: ImageSwap[] = [
  { match: /^(docker\.io\/)?(library\/)?python(:[\w.-]+)?$/, to: (h) => `${h}/debian-python:latest`, why: "Debian 12 + python3" },
  { match: /^(docker\.io\/)?(library\/)?(debian|ubuntu)(:[\w.-]+)?$/, to: (h) => `${h}/debian-python:latest`, why: "Debian 12 + python3" },
  { match: /^(docker\.io\/)?(library\/)?alpine(:[\w.-]+)?$/, to: (h) => `${h}/busybox:latest`, why: "no alpine fixture" },
  { match: /^(docker\.io\/)?(library\/)?busybox(:[\w.-]+)?$/, to: (h) => `${h}/busybox:latest`, why: "busybox fixture" },
];

/** The fixture images (test-vms/registry pushFixtures names) that IMAGE_SWAPS point at. */
export const SWAP_FIXTURES = ["busybox:latest", "debian-python:latest"];

/** Environment variables the blocks read. */
export const BLOCK_ENV: Record<string, string> = {
  OPENAI_API_KEY: "sk-readme-test-not-a-real-key",
  API_KEY: "readme-test-key",
};

/** Swap every string literal that is exactly a public image reference. */
export function swapImages(code: string, registryHost: string): string {
  return code.replace(/(["'`])([^"'`\n]+)\1/g, (all, q: string, s: string) => {
    const swap = IMAGE_SWAPS.find((x) => x.match.test(s));
    return swap ? `${q}${swap.to(registryHost)}${q}` : all;
  });
}

/** The block as it runs: images swapped, TypeScript type-stripped (an ES module). */
export function blockToJs(b: Block, registryHost: string): string {
  const code = swapImages(b.code, registryHost);
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
