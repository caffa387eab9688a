import { createRequire } from "node:module";
import { parseCli, type CliOutput } from "./args.js";
import { runCommand, sdkDeps, type RunDeps } from "./run.js";

/** This package's version (read from its package.json, one level above src/ and dist/). */
export const VERSION: string = (createRequire(import.meta.url)("../package.json") as { version: string }).version;

export interface MainIO extends CliOutput {
  writeOut: RunDeps["writeOut"];
  writeErr: RunDeps["writeErr"];
  signal?: AbortSignal;
}

function writer(stream: NodeJS.WriteStream): (data: Uint8Array | string) => Promise<void> {
  return (data) =>
    new Promise<void>((resolve) => {
      if (stream.write(data)) resolve();
      else stream.once("drain", () => resolve());
    });
}

/** The process's own stdout / stderr. */
export function processIO(signal?: AbortSignal): MainIO {
  const io: MainIO = {
    out: (s) => void process.stdout.write(s),
    err: (s) => void process.stderr.write(s),
    writeOut: writer(process.stdout),
    writeErr: writer(process.stderr),
  };
  if (signal !== undefined) io.signal = signal;
  return io;
}

/** Run `msb` with `argv` (arguments after the script path); resolves to the exit code. */
export async function main(argv: readonly string[], io: MainIO = processIO()): Promise<number> {
  const parsed = parseCli(argv, VERSION, io);
  if (parsed.kind === "exit") return parsed.code;
  const deps = sdkDeps({ writeOut: io.writeOut, writeErr: io.writeErr, ...(io.signal ? { signal: io.signal } : {}) });
  return runCommand(parsed.options, deps);
}
