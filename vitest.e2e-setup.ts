// Global setup of the e2e project: make sure dist/ of the SDK and the CLI is
// current, because e2e tests spawn `packages/cli/dist/bin.js` and a fixture that
// imports the built SDK. `tsc -b` is incremental: quick when nothing changed.
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

export default function setup(): void {
  const root = fileURLToPath(new URL(".", import.meta.url));
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  execFileSync(process.execPath, [tsc, "-b", "packages/netstack", "packages/oci", "packages/sdk", "packages/cli"], { cwd: root, stdio: "inherit" });
}
