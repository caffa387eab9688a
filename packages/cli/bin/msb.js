#!/usr/bin/env node
// Launcher for the built CLI (dist/bin.js). It lives outside dist/ so that npm
// links `msb` into node_modules/.bin at install time, before the first build.
try {
  await import("../dist/bin.js");
} catch (e) {
  if (e && e.code === "ERR_MODULE_NOT_FOUND" && String(e.message).includes("dist/bin.js")) {
    process.stderr.write("msb: the CLI is not built yet; run \"npm run build\" (or \"npm run setup\") at the repository root\n");
    process.exit(1);
  }
  throw e;
}
