// Child-process tests import the built package (dist/): build it once per test file.
// Test files of the unit and e2e projects may do this at the same time: a flock keeps
// two `tsc -b` runs from writing dist/ together (and a child from reading half of it).
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const ociRoot = fileURLToPath(new URL("../../", import.meta.url));
export const childScript = fileURLToPath(new URL("./pull-child.mjs", import.meta.url));

export async function buildOci(): Promise<void> {
  const require = createRequire(import.meta.url);
  const { lockFile } = require("@microsandbox/core-native") as { lockFile(p: string): Promise<{ release(): void }> };
  const lock = await lockFile(join(tmpdir(), `msb-oci-build-${process.getuid?.() ?? 0}.lock`));
  try {
    const tsc = require.resolve("typescript/bin/tsc");
    execFileSync(process.execPath, [tsc, "-b", ociRoot], { stdio: "inherit" });
  } finally {
    lock.release();
  }
}
