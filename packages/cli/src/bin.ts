#!/usr/bin/env node
import { constants } from "node:os";
import { main, processIO } from "./main.js";

// A closed stdout / stderr (e.g. `msb run ... | head -1`) must not crash msb
// before it has removed its sandbox.
process.stdout.on("error", () => undefined);
process.stderr.on("error", () => undefined);

// First SIGINT / SIGTERM: end what msb is doing (msb run kills and removes its
// sandbox; exec and metrics --watch stop streaming), exit 128+signal.
// A second one: exit at once (an attached VM still goes down with us).
const controller = new AbortController();
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(sig, () => {
    if (controller.signal.aborted) process.exit(128 + constants.signals[sig]);
    controller.abort(sig);
  });
}

const code = await main(process.argv.slice(2), processIO(controller.signal));

const flush = (s: NodeJS.WriteStream) => new Promise<void>((resolve) => (s.writableLength === 0 ? resolve() : s.write("", () => resolve())));
await Promise.all([flush(process.stdout), flush(process.stderr)]);
process.exit(code);
