#!/usr/bin/env node
// prepublishOnly of the packages whose files are build outputs (the platform package's
// addon and msb-runtime, the guest package's kernel/initramfs/image): refuses to publish
// a package with a file missing, or a guest file that does not match its manifest.json.
// Run in the package's directory (npm does).
import { createHash } from "node:crypto";
import { readFileSync, statSync } from "node:fs";

const pkg = JSON.parse(readFileSync("package.json", "utf8"));
const problems = [];
for (const entry of pkg.files ?? []) {
  if (/[*!]/.test(entry)) continue;
  try {
    const st = statSync(entry);
    if (st.isFile() && st.size === 0) problems.push(`${entry} is empty`);
  } catch {
    problems.push(`${entry} is missing`);
  }
}
let manifest;
try {
  manifest = JSON.parse(readFileSync("manifest.json", "utf8"));
} catch {
  /* no manifest: nothing more to check */
}
for (const [name, want] of Object.entries(manifest?.files ?? {})) {
  try {
    const got = createHash("sha256").update(readFileSync(name)).digest("hex");
    if (got !== want.sha256) problems.push(`${name}: sha256 ${got}, manifest.json says ${want.sha256}`);
  } catch {
    problems.push(`${name} (in manifest.json) is missing`);
  }
}
if (problems.length) {
  console.error(`${pkg.name}: not publishable, build it first (bash scripts/setup.sh):\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
console.error(`${pkg.name}: every file present${manifest ? ", manifest.json matches" : ""}`);
