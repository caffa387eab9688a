import { createRequire } from "node:module";
import { parseCli, type CliOutput } from "./args.js";
import { wantsJson } from "./errors.js";
import { processTerminal, type TerminalIO } from "./attach.js";
import { imageCommand, imagesCommand, pullCommand, rmiCommand, type ImagesIO } from "./images.js";
import { PullProgressView } from "./progress.js";
import { runCommand, sdkDeps, type RunDeps } from "./run.js";
import { logsCommand } from "./logs.js";
import { doctorCommand } from "./doctor.js";
import { volumeCommand } from "./volumes.js";
import { snapshotCommand } from "./snapshots.js";
import {
  cpCommand,
  createCommand,
  execCommand,
  inspectCommand,
  killCommand, pauseCommand, warmupCommand, forkCommand,
  lsCommand,
  metricsCommand,
  rmCommand,
  startCommand,
  stopCommand,
  type CommandIO,
} from "./sandboxes.js";

/** This package's version (read from its package.json, one level above src/ and dist/). */
export const VERSION: string = (createRequire(import.meta.url)("../package.json") as { version: string }).version;

export interface MainIO extends CliOutput {
  writeOut: RunDeps["writeOut"];
  writeErr: RunDeps["writeErr"];
  signal?: AbortSignal;
  /** stdout is a terminal (default: process.stdout.isTTY). */
  isTTY?: boolean;
  columns?: number;
  /** msb's terminal (stdin, raw mode, size) for exec and run; without it stdin is not forwarded. */
  terminal?: TerminalIO;
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
    terminal: processTerminal(),
  };
  if (signal !== undefined) io.signal = signal;
  return io;
}

/** Run `msb` with `argv` (arguments after the script path); resolves to the exit code. */
export async function main(argv: readonly string[], io: MainIO = processIO()): Promise<number> {
  const parsed = parseCli(argv, VERSION, io);
  const json = wantsJson(argv);
  const imagesIO: ImagesIO = {
    out: io.out,
    err: io.err,
    progress: { write: io.err, isTTY: process.stderr.isTTY === true, columns: process.stderr.columns ?? 80 },
    json,
  };
  const view = new PullProgressView(imagesIO.progress);
  const cmdIO: CommandIO = {
    out: io.out,
    err: io.err,
    writeOut: io.writeOut,
    writeErr: io.writeErr,
    isTTY: io.isTTY ?? process.stdout.isTTY === true,
    onPullProgress: (p) => view.update(p),
    json,
  };
  const columns = io.columns ?? process.stdout.columns;
  if (columns !== undefined) cmdIO.columns = columns;
  if (io.signal !== undefined) cmdIO.signal = io.signal;
  if (io.terminal !== undefined) cmdIO.terminal = io.terminal;
  switch (parsed.kind) {
    case "exit":
      return parsed.code;
    case "create":
      return createCommand(parsed.options, cmdIO);
    case "start":
      return startCommand(parsed.names, cmdIO, parsed.secrets);
    case "stop":
      return stopCommand(parsed.names, parsed.timeoutMs, cmdIO);
    case "kill":
      return killCommand(parsed.names, cmdIO);
    case "warmup":
      return warmupCommand(parsed, cmdIO);
    case "fork":
      return forkCommand(parsed, cmdIO);
    case "pause":
    case "resume":
      return pauseCommand(parsed.names, parsed.kind === "resume", cmdIO);
    case "rm":
      return rmCommand(parsed.names, parsed.force, cmdIO);
    case "ls":
      return lsCommand(parsed.json, cmdIO, parsed.labels);
    case "inspect":
      return inspectCommand(parsed.name, cmdIO);
    case "exec":
      return execCommand(parsed.name, parsed.command, cmdIO, parsed.options);
    case "cp":
      return cpCommand(parsed.src, parsed.dst, cmdIO);
    case "metrics":
      return metricsCommand(parsed.options, cmdIO);
    case "pull":
      return pullCommand(parsed.image, parsed.registry, imagesIO);
    case "images":
      return imagesCommand(parsed.json, imagesIO);
    case "rmi":
      return rmiCommand(parsed.images, imagesIO, parsed.force === true);
    case "logs":
      return logsCommand(parsed.options, cmdIO);
    case "doctor":
      return doctorCommand(parsed.json, { out: io.out, err: io.err });
    case "volumeCreate":
    case "volumeLs":
    case "volumeInspect":
    case "volumeRm":
      return volumeCommand(parsed, { out: io.out, err: io.err, json });
    case "snapshotCreate":
    case "snapshotLs":
    case "snapshotInspect":
    case "snapshotRm":
    case "snapshotVerify":
    case "snapshotSave":
    case "snapshotLoad":
      return snapshotCommand(parsed, { out: io.out, err: io.err, json });
    case "imageSave":
    case "imageLoad":
    case "imageInspect":
    case "imagePrune":
    case "imageRm":
      return imageCommand(parsed, imagesIO);
    case "run": {
      // Pull progress of `msb run IMAGE` goes to stderr, like the command's own stderr.
      const deps = sdkDeps({
        writeOut: io.writeOut,
        writeErr: io.writeErr,
        onPullProgress: (p) => view.update(p),
        ...(io.signal ? { signal: io.signal } : {}),
        ...(io.terminal ? { terminal: io.terminal } : {}),
      });
      deps.json = json;
      return runCommand(parsed.options, deps);
    }
  }
}
