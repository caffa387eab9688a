/**
 * Command-line parsing for `msb`, separate from running anything so that it can
 * be unit-tested. Everything after the first `--` is the command to run in the
 * sandbox and is never looked at by the option parser.
 */
import { Command, CommanderError, InvalidArgumentError } from "commander";

/** What `msb run` was asked to do. */
export interface RunOptions {
  name?: string;
  image?: string;
  cpus?: number;
  memory?: number;
  env: [string, string][];
  workdir?: string;
  cmd: string;
  args: string[];
}

export type ParsedCli =
  | { kind: "run"; options: RunOptions }
  /** Nothing to run: help or version was printed, or the arguments were bad (code 2). */
  | { kind: "exit"; code: number };

/** Where parse output (help, version, errors) goes. */
export interface CliOutput {
  out(text: string): void;
  err(text: string): void;
}

/** Exit code for bad usage or invalid options. */
export const EXIT_USAGE = 2;

export const RUN_USAGE = "[options] [IMAGE] -- CMD [ARGS...]";

function integer(field: string) {
  return (value: string): number => {
    if (!/^[0-9]+$/.test(value)) {
      throw new InvalidArgumentError(`${field} must be a whole number (got ${JSON.stringify(value)}).`);
    }
    return Number(value);
  };
}

function envPair(value: string, previous: [string, string][] | undefined): [string, string][] {
  const eq = value.indexOf("=");
  if (eq <= 0) {
    throw new InvalidArgumentError(`env must be KEY=VALUE with a non-empty KEY (got ${JSON.stringify(value)}).`);
  }
  return [...(previous ?? []), [value.slice(0, eq), value.slice(eq + 1)]];
}

interface RawRunOpts {
  name?: string;
  cpus?: number;
  memory?: number;
  env?: [string, string][];
  workdir?: string;
}

function buildProgram(version: string, out: CliOutput, onRun: (image: string | undefined, opts: RawRunOpts) => void): Command {
  const program = new Command("msb");
  program
    .description("Run commands in hardware-isolated microVM sandboxes")
    .version(version, "-V, --version", "print the version")
    .helpOption("-h, --help", "show help")
    .helpCommand(false)
    .exitOverride()
    .configureOutput({ writeOut: (s) => out.out(s), writeErr: (s) => out.err(s) });

  program
    .command("run")
    .description("boot a sandbox, run one command in it, stream its output, exit with its exit code, remove the sandbox")
    .usage(RUN_USAGE)
    .argument("[IMAGE]", "root filesystem: a directory or disk image (default: the embedded busybox image)")
    .option("-n, --name <name>", "sandbox name (default: run-<random hex>)")
    .option("--cpus <n>", "number of virtual CPUs (1-255, default 1)", integer("cpus"))
    .option("--memory <mib>", "guest memory in MiB (at least 64, default 512)", integer("memory"))
    .option("-e, --env <KEY=VALUE>", "environment variable for the command (repeatable)", envPair)
    .option("-w, --workdir <dir>", "working directory inside the sandbox (absolute)")
    .addHelpText("after", "\nEverything after -- is the command and its arguments, passed as is.\n\nExample:\n  msb run -e GREETING=hi -- sh -c 'echo $GREETING'\n")
    .action((image: string | undefined, opts: RawRunOpts) => onRun(image, opts));

  return program;
}

/**
 * Parse `msb` arguments (without the node executable and script path).
 * Help and version output and usage errors are written to `out`.
 */
export function parseCli(argv: readonly string[], version: string, out: CliOutput): ParsedCli {
  const sep = argv.indexOf("--");
  const before = sep === -1 ? [...argv] : argv.slice(0, sep);
  const command = sep === -1 ? [] : argv.slice(sep + 1);

  let result: ParsedCli | undefined;
  const program = buildProgram(version, out, (image, opts) => {
    const [cmd, ...args] = command;
    if (cmd === undefined || cmd === "") {
      out.err(`error: missing command: msb run ${RUN_USAGE}\n`);
      result = { kind: "exit", code: EXIT_USAGE };
      return;
    }
    const options: RunOptions = { env: opts.env ?? [], cmd, args };
    if (image !== undefined) options.image = image;
    if (opts.name !== undefined) options.name = opts.name;
    if (opts.cpus !== undefined) options.cpus = opts.cpus;
    if (opts.memory !== undefined) options.memory = opts.memory;
    if (opts.workdir !== undefined) options.workdir = opts.workdir;
    result = { kind: "run", options };
  });

  if (before.length === 0) {
    program.outputHelp({ error: true });
    return { kind: "exit", code: EXIT_USAGE };
  }
  try {
    program.parse(before, { from: "user" });
  } catch (e) {
    if (e instanceof CommanderError) {
      // help and version exit 0; every parse error is a usage error
      return { kind: "exit", code: e.exitCode === 0 ? 0 : EXIT_USAGE };
    }
    throw e;
  }
  return result ?? { kind: "exit", code: EXIT_USAGE };
}
