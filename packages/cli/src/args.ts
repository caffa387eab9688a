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
  pullPolicy?: string;
  registry: RegistryFlags;
  /** Empty: run the image's entrypoint and default command. */
  command: string[];
}

/** Registry access flags shared by `run` and `pull`. */
export interface RegistryFlags {
  username?: string;
  /** From --password or $MSB_REGISTRY_PASSWORD. */
  password?: string;
  insecure?: boolean;
  caFile?: string;
}

/** What `msb create` was asked to do: `msb run`'s options without a command, plus lifetime limits. */
export interface CreateOptions {
  name?: string;
  image?: string;
  cpus?: number;
  memory?: number;
  env: [string, string][];
  workdir?: string;
  pullPolicy?: string;
  registry: RegistryFlags;
  idleTimeoutSecs?: number;
  maxDurationSecs?: number;
  replace?: boolean;
}

/** `msb metrics`. */
export interface MetricsOptions {
  name: string;
  watch: boolean;
  json: boolean;
  intervalMs: number;
}

/** Default sampling interval of `msb metrics --watch`, in ms. */
export const DEFAULT_METRICS_INTERVAL_MS = 1000;

export type ParsedCli =
  | { kind: "run"; options: RunOptions }
  | { kind: "create"; options: CreateOptions }
  | { kind: "start"; names: string[] }
  | { kind: "stop"; names: string[]; timeoutMs?: number }
  | { kind: "kill"; names: string[] }
  | { kind: "rm"; names: string[]; force: boolean }
  | { kind: "ls"; json: boolean }
  | { kind: "inspect"; name: string }
  | { kind: "exec"; name: string; command: string[] }
  | { kind: "metrics"; options: MetricsOptions }
  | { kind: "pull"; image: string; registry: RegistryFlags }
  | { kind: "images"; json: boolean }
  | { kind: "rmi"; images: string[] }
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
export const EXEC_USAGE = "NAME -- CMD [ARGS...]";

function integer(field: string) {
  return (value: string): number => {
    if (!/^[0-9]+$/.test(value)) {
      throw new InvalidArgumentError(`${field} must be a whole number (got ${JSON.stringify(value)}).`);
    }
    return Number(value);
  };
}

function positiveInteger(field: string) {
  return (value: string): number => {
    if (!/^[0-9]+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
      throw new InvalidArgumentError(`${field} must be a positive whole number (got ${JSON.stringify(value)}).`);
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

interface RawRegistryOpts {
  username?: string;
  password?: string;
  insecure?: boolean;
  caFile?: string;
}

interface RawRunOpts extends RawRegistryOpts {
  name?: string;
  cpus?: number;
  memory?: number;
  env?: [string, string][];
  workdir?: string;
  pullPolicy?: string;
}

function pullPolicy(value: string): string {
  if (!["always", "if-missing", "never"].includes(value)) {
    throw new InvalidArgumentError(`pull-policy must be always, if-missing or never (got ${JSON.stringify(value)}).`);
  }
  return value;
}

function registryOptions(cmd: Command): Command {
  return cmd
    .option("--username <user>", "registry user name")
    .option("--password <password>", "registry password (or set MSB_REGISTRY_PASSWORD)")
    .option("--insecure", "allow plain HTTP / unverified TLS for this registry")
    .option("--ca-file <pem>", "extra CA certificate for the registry's TLS");
}

function registryFlags(o: RawRegistryOpts, env: NodeJS.ProcessEnv): RegistryFlags {
  const r: RegistryFlags = {};
  if (o.username !== undefined) r.username = o.username;
  const password = o.password ?? env.MSB_REGISTRY_PASSWORD;
  if (password !== undefined) r.password = password;
  if (o.insecure) r.insecure = true;
  if (o.caFile !== undefined) r.caFile = o.caFile;
  return r;
}

interface RawCreateOpts extends RawRunOpts {
  idleTimeout?: number;
  maxDuration?: number;
  replace?: boolean;
}

interface Handlers {
  run(image: string | undefined, opts: RawRunOpts): void;
  create(image: string | undefined, opts: RawCreateOpts): void;
  lifecycle(kind: "start" | "kill", names: string[]): void;
  stop(names: string[], opts: { timeout?: number }): void;
  rm(names: string[], opts: { force?: boolean }): void;
  ls(opts: { json?: boolean }): void;
  inspect(name: string): void;
  exec(name: string): void;
  metrics(name: string, opts: { watch?: boolean; json?: boolean; interval?: number }): void;
  pull(image: string, opts: RawRegistryOpts): void;
  images(opts: { json?: boolean }): void;
  rmi(images: string[]): void;
}

function buildProgram(version: string, out: CliOutput, on: Handlers): Command {
  const program = new Command("msb");
  program
    .description("Run commands in hardware-isolated microVM sandboxes")
    .version(version, "-V, --version", "print the version")
    .helpOption("-h, --help", "show help")
    .helpCommand(false)
    .exitOverride()
    .configureOutput({ writeOut: (s) => out.out(s), writeErr: (s) => out.err(s) });

  const run = program
    .command("run")
    .description("boot a sandbox, run one command in it, stream its output, exit with its exit code, remove the sandbox")
    .usage(RUN_USAGE)
    .argument("[IMAGE]", "OCI image reference, directory or disk image (default: the embedded busybox image)")
    .option("-n, --name <name>", "sandbox name (default: run-<random hex>)")
    .option("--cpus <n>", "number of virtual CPUs (1-255, default 1)", integer("cpus"))
    .option("--memory <mib>", "guest memory in MiB (at least 64, default 512)", integer("memory"))
    .option("-e, --env <KEY=VALUE>", "environment variable for the command (repeatable)", envPair)
    .option("-w, --workdir <dir>", "working directory inside the sandbox (absolute)")
    .option("--pull-policy <policy>", "when to pull an OCI image: always, if-missing (default), never", pullPolicy);
  registryOptions(run)
    .addHelpText(
      "after",
      "\nEverything after -- is the command and its arguments, passed as is; an OCI image's\nentrypoint is put in front of it. Without a command, the image's entrypoint and\ndefault command run.\n\nExamples:\n  msb run -e GREETING=hi -- sh -c 'echo $GREETING'\n  msb run alpine -- cat /etc/os-release\n",
    )
    .action((image: string | undefined, opts: RawRunOpts) => on.run(image, opts));

  const create = program
    .command("create")
    .description("create a sandbox that keeps running in the background (detached); prints its name")
    .usage("[options] [IMAGE]")
    .argument("[IMAGE]", "OCI image reference, directory or disk image (default: the embedded busybox image)")
    .option("-n, --name <name>", "sandbox name (default: sb-<random hex>)")
    .option("--cpus <n>", "number of virtual CPUs (1-255, default 1)", integer("cpus"))
    .option("--memory <mib>", "guest memory in MiB (at least 64, default 512)", integer("memory"))
    .option("-e, --env <KEY=VALUE>", "environment variable for every command (repeatable)", envPair)
    .option("-w, --workdir <dir>", "default working directory inside the sandbox (absolute)")
    .option("--pull-policy <policy>", "when to pull an OCI image: always, if-missing (default), never", pullPolicy)
    .option("--idle-timeout <secs>", "stop the sandbox after this many seconds without a running command", positiveInteger("idle-timeout"))
    .option("--max-duration <secs>", "stop the sandbox at this age in seconds, whatever runs in it", positiveInteger("max-duration"))
    .option("--replace", "stop and remove a sandbox of the same name first");
  registryOptions(create)
    .addHelpText("after", "\nExamples:\n  msb create --name worker alpine\n  msb exec worker -- cat /etc/os-release\n  msb stop worker && msb rm worker\n")
    .action((image: string | undefined, opts: RawCreateOpts) => on.create(image, opts));

  program
    .command("start")
    .description("boot stopped sandboxes again (their files are kept), in the background")
    .argument("<NAME...>", "sandbox names")
    .action((names: string[]) => on.lifecycle("start", names));
  program
    .command("stop")
    .description("stop sandboxes gracefully (SIGTERM to their processes, then power off)")
    .argument("<NAME...>", "sandbox names")
    .option("-t, --timeout <ms>", "kill the VM if it has not stopped after this many milliseconds (default 10000)", positiveInteger("timeout"))
    .action((names: string[], opts: { timeout?: number }) => on.stop(names, opts));
  program
    .command("kill")
    .description("end sandboxes' VMs at once")
    .argument("<NAME...>", "sandbox names")
    .action((names: string[]) => on.lifecycle("kill", names));
  program
    .command("rm")
    .description("remove stopped sandboxes and all their state")
    .argument("<NAME...>", "sandbox names")
    .option("-f, --force", "kill running sandboxes first")
    .action((names: string[], opts: { force?: boolean }) => on.rm(names, opts));
  program
    .command("ls")
    .alias("ps")
    .description("list sandboxes (running, draining, stopped, crashed)")
    .option("--json", "print JSON instead of a table")
    .action((opts: { json?: boolean }) => on.ls(opts));
  program
    .command("inspect")
    .description("print a sandbox's state and configuration as JSON")
    .argument("<NAME>", "sandbox name")
    .action((name: string) => on.inspect(name));
  program
    .command("exec")
    .description("run a command in a running sandbox, stream its output and exit with its exit code")
    .usage(EXEC_USAGE)
    .argument("<NAME>", "sandbox name")
    .addHelpText("after", "\nEverything after -- is the command and its arguments, passed as is.\n\nExample:\n  msb exec worker -- sh -c 'echo $HOSTNAME'\n")
    .action((name: string) => on.exec(name));
  program
    .command("metrics")
    .description("show a running sandbox's resource use")
    .argument("<NAME>", "sandbox name")
    .option("--watch", "keep sampling (a live line on a terminal, one line per sample otherwise) until Ctrl-C")
    .option("--interval <ms>", `sampling interval with --watch (default ${DEFAULT_METRICS_INTERVAL_MS})`, positiveInteger("interval"))
    .option("--json", "print JSON (one object per line)")
    .action((name: string, opts: { watch?: boolean; json?: boolean; interval?: number }) => on.metrics(name, opts));

  registryOptions(program.command("pull").description("pull an OCI image into the local cache").argument("<IMAGE>", "image reference")).action(
    (image: string, opts: RawRegistryOpts) => on.pull(image, opts),
  );
  program
    .command("images")
    .description("list cached images")
    .option("--json", "print JSON instead of a table")
    .action((opts: { json?: boolean }) => on.images(opts));
  program
    .command("rmi")
    .description("remove cached images")
    .argument("<IMAGE...>", "image references")
    .action((images: string[]) => on.rmi(images));

  return program;
}

/**
 * Parse `msb` arguments (without the node executable and script path).
 * Help and version output and usage errors are written to `out`.
 */
export function parseCli(argv: readonly string[], version: string, out: CliOutput, env: NodeJS.ProcessEnv = process.env): ParsedCli {
  const sep = argv.indexOf("--");
  const before = sep === -1 ? [...argv] : argv.slice(0, sep);
  const command = sep === -1 ? [] : argv.slice(sep + 1);

  let result: ParsedCli | undefined;
  const program = buildProgram(version, out, {
    run(image, opts) {
      if ((command[0] === undefined || command[0] === "") && image === undefined) {
        out.err(`error: missing command: msb run ${RUN_USAGE}\n`);
        result = { kind: "exit", code: EXIT_USAGE };
        return;
      }
      if (command.length > 0 && command[0] === "") {
        out.err(`error: the command must not be empty\n`);
        result = { kind: "exit", code: EXIT_USAGE };
        return;
      }
      const options: RunOptions = { env: opts.env ?? [], command, registry: registryFlags(opts, env) };
      if (image !== undefined) options.image = image;
      if (opts.name !== undefined) options.name = opts.name;
      if (opts.cpus !== undefined) options.cpus = opts.cpus;
      if (opts.memory !== undefined) options.memory = opts.memory;
      if (opts.workdir !== undefined) options.workdir = opts.workdir;
      if (opts.pullPolicy !== undefined) options.pullPolicy = opts.pullPolicy;
      result = { kind: "run", options };
    },
    create(image, opts) {
      if (sep !== -1) {
        out.err("error: msb create takes no command (run one with: msb exec NAME -- CMD)\n");
        result = { kind: "exit", code: EXIT_USAGE };
        return;
      }
      const options: CreateOptions = { env: opts.env ?? [], registry: registryFlags(opts, env) };
      if (image !== undefined) options.image = image;
      if (opts.name !== undefined) options.name = opts.name;
      if (opts.cpus !== undefined) options.cpus = opts.cpus;
      if (opts.memory !== undefined) options.memory = opts.memory;
      if (opts.workdir !== undefined) options.workdir = opts.workdir;
      if (opts.pullPolicy !== undefined) options.pullPolicy = opts.pullPolicy;
      if (opts.idleTimeout !== undefined) options.idleTimeoutSecs = opts.idleTimeout;
      if (opts.maxDuration !== undefined) options.maxDurationSecs = opts.maxDuration;
      if (opts.replace) options.replace = true;
      result = { kind: "create", options };
    },
    lifecycle(kind, names) {
      result = { kind, names };
    },
    stop(names, opts) {
      result = opts.timeout === undefined ? { kind: "stop", names } : { kind: "stop", names, timeoutMs: opts.timeout };
    },
    rm(names, opts) {
      result = { kind: "rm", names, force: opts.force === true };
    },
    ls(opts) {
      result = { kind: "ls", json: opts.json === true };
    },
    inspect(name) {
      result = { kind: "inspect", name };
    },
    exec(name) {
      if (command[0] === undefined || command[0] === "") {
        out.err(`error: missing command: msb exec ${EXEC_USAGE}\n`);
        result = { kind: "exit", code: EXIT_USAGE };
        return;
      }
      result = { kind: "exec", name, command };
    },
    metrics(name, opts) {
      result = {
        kind: "metrics",
        options: { name, watch: opts.watch === true, json: opts.json === true, intervalMs: opts.interval ?? DEFAULT_METRICS_INTERVAL_MS },
      };
    },
    pull(image, opts) {
      result = { kind: "pull", image, registry: registryFlags(opts, env) };
    },
    images(opts) {
      result = { kind: "images", json: opts.json === true };
    },
    rmi(images) {
      result = { kind: "rmi", images };
    },
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
