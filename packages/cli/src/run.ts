/**
 * `msb run`: boot a sandbox, run one command with its output streamed through,
 * then stop and remove the sandbox whatever happened (error, SIGINT, SIGTERM; on
 * SIGKILL its runtime removes it, the sandbox being ephemeral).
 *
 * The sandbox operations come in through {@link RunDeps} so that the exit-code
 * and clean-up logic is unit-testable without a VM.
 */
import { randomBytes } from "node:crypto";
import { closeSync, fstatSync, openSync, readFileSync } from "node:fs";
import { constants } from "node:os";
import {
  ExecFailedError,
  ExecTimeoutError,
  InvalidConfigError,
  MAX_SECRET_VALUE_LEN,
  NetworkPolicy,
  Sandbox,
  SandboxAlreadyExistsError,
  SandboxNotFoundError,
  SandboxStillRunningError,
  type ExecEvent,
  type PullPolicy,
  type ImagePullProgress as PullProgress,
  type SandboxBuilder,
  type TargetBuilder,
} from "@microsandbox/sdk";
import { EXIT_USAGE, type GuestFlags, type NetRuleSpec, type RegistryFlags, type RunOptions, type SecretSpec } from "./args.js";
import { attach, attachPlan, type AttachableCommand, type TerminalIO } from "./attach.js";
import { cliError, formatError } from "./errors.js";

/** Exit code when the command could not be started (as a shell does for "command not found"). */
export const EXIT_EXEC_FAILED = 127;
/** Exit code for any other failure of msb itself. */
export const EXIT_FAILURE = 1;
/** Exit code when `--timeout` killed the command (as timeout(1) does). */
export const EXIT_TIMEOUT = 124;

/** How `msb run` starts its command. */
export interface RunExecOptions {
  /** Run on a pseudo-terminal of this size. */
  tty?: { rows: number; cols: number } | undefined;
  /** stdin is a pipe msb writes to (else /dev/null). */
  stdin?: boolean;
}

/** The part of a Sandbox that `msb run` uses. */
export interface RunSandbox {
  /** The image's entrypoint and default command (OCI images), after builder overrides. */
  config(): { entrypoint: string[] | null; cmd?: string[] | null };
  execStream(cmd: string, args: readonly string[], options?: RunExecOptions): Promise<AttachableCommand | AsyncIterable<ExecEvent>>;
  stop(): Promise<void>;
  kill(): Promise<void>;
}

export interface RunDeps {
  create(options: RunOptions & { name: string }): Promise<RunSandbox>;
  remove(name: string): Promise<void>;
  /** Write a chunk to stdout / stderr; resolves when it may be followed by more (back-pressure). */
  writeOut(data: Uint8Array): Promise<void>;
  writeErr(data: Uint8Array | string): Promise<void>;
  /** Aborted (with the signal name as reason, e.g. "SIGINT") to end the run early. */
  signal?: AbortSignal;
  /** How long to retry removing a sandbox whose runtime is still exiting (ms). Default 10 s. */
  removeTimeoutMs?: number;
  /** msb's terminal, for -t / -i and piped stdin; without it nothing is forwarded. */
  terminal?: TerminalIO;
  /** Report errors as JSON objects (`--json`). */
  json?: boolean;
}

/** The real dependencies: the SDK. */
export function sdkDeps(
  io: Pick<RunDeps, "writeOut" | "writeErr" | "signal" | "terminal"> & { onPullProgress?: (p: PullProgress) => void },
): RunDeps {
  return {
    ...io,
    async create(o) {
      // Ephemeral: if msb itself is killed (SIGKILL, no chance to clean up), the
      // sandbox's runtime removes it.
      const b = Sandbox.builder(o.name).ephemeral();
      if (o.image !== undefined) b.image(o.image);
      if (o.cpus !== undefined) b.cpus(o.cpus);
      if (o.memory !== undefined) b.memory(o.memory);
      for (const [k, v] of o.env) b.env(k, v);
      if (o.workdir !== undefined) b.workdir(o.workdir);
      if (o.pullPolicy !== undefined) b.pullPolicy(o.pullPolicy as PullPolicy);
      if (o.snapshot !== undefined) b.fromSnapshot(o.snapshot);
      applyGuestFlags(b, o);
      applyRegistryFlags(b, o.registry);
      if (io.onPullProgress) b.onPullProgress(io.onPullProgress);
      const sb = await b.create();
      return {
        config: () => sb.config(),
        execStream: (cmd, args, x = {}) =>
          sb.execStreamWith(cmd, (e) => {
            e.args(args);
            if (x.tty) e.tty(true, x.tty);
            if (x.stdin) e.stdinPipe();
          }),
        stop: () => sb.stop(),
        kill: () => sb.kill(),
      };
    },
    // Ephemeral: its runtime may have removed it already, when the VM ended.
    remove: (name) =>
      Sandbox.remove(name).catch((e: unknown) => {
        if (!(e instanceof SandboxNotFoundError)) throw e;
      }),
  };
}

/**
 * Volumes, scripts, network and secrets onto a builder. A script's host file is read
 * here: one that cannot be read is an `InvalidConfigError` (field "script") naming it.
 * Secret values are read here too, from `env` (msb's own environment) or their file.
 */
export function applyGuestFlags(b: SandboxBuilder, g: GuestFlags, env: NodeJS.ProcessEnv = process.env): void {
  const secrets = g.secrets ?? [];
  const tls = (g.tlsPorts?.length ?? 0) > 0 || (g.tlsUpstreamCas?.length ?? 0) > 0;
  if (g.noNet && (secrets.length > 0 || tls)) {
    throw new InvalidConfigError(secrets.length > 0 ? "secret" : "tls", `invalid ${secrets.length > 0 ? "--secret" : "--tls-*"}: --no-net leaves the sandbox without the network that secrets and TLS interception work in`);
  }
  for (const v of g.volumes ?? []) {
    b.volume(v.guestPath, (m) => {
      if (v.kind === "bind") m.bind(v.source);
      else if (v.kind === "named") m.named(v.source);
      else m.tmpfs(v.sizeMiB === undefined ? {} : { sizeMiB: v.sizeMiB });
      if (v.readonly) m.readonly();
    });
  }
  for (const [name, file] of g.scripts ?? []) {
    let content: string;
    try {
      content = readFileSync(file, "utf8");
    } catch (e) {
      throw new InvalidConfigError("script", `invalid script ${name}: cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { cause: e });
    }
    b.script(name, content);
  }
  if (g.noNet) b.disableNetwork();
  for (const p of g.ports ?? []) {
    if (p.protocol === "udp") b.portUdp(p.hostPort, p.guestPort);
    else b.port(p.hostPort, p.guestPort);
  }
  const rules = g.netRules ?? [];
  if (rules.length > 0) b.network((n) => n.policy(netRulesPolicy(rules)));
  if (tls) {
    b.network((n) =>
      n.tls((t) => {
        if (g.tlsPorts !== undefined && g.tlsPorts.length > 0) t.interceptedPorts(g.tlsPorts);
        for (const ca of g.tlsUpstreamCas ?? []) t.upstreamCaCert(ca);
      }),
    );
  }
  for (const spec of secrets) {
    const value = secretValue(spec, env);
    b.secret((s) => {
      s.env(spec.envVar).value(value);
      if (spec.host.startsWith("*.")) s.allowHostPattern(spec.host);
      else s.allowHost(spec.host);
    });
  }
}

/**
 * The value of a `--secret` (msb's environment variable of that name) or a
 * `--secret-file` (the file, one trailing newline stripped). No message shows it.
 */
export function secretValue(spec: SecretSpec, env: NodeJS.ProcessEnv = process.env): string {
  const target = spec.host === "" ? spec.envVar : `${spec.envVar}@${spec.host}`;
  if (spec.file === undefined) {
    const v = env[spec.envVar];
    if (v === undefined) {
      throw new InvalidConfigError(
        "secret",
        `invalid --secret ${target}: the environment variable ${spec.envVar} is not set (--secret reads the value from msb's own environment: export ${spec.envVar}=... first, or use --secret-file ${target}=PATH)`,
      );
    }
    if (v === "") throw new InvalidConfigError("secret", `invalid --secret ${target}: the environment variable ${spec.envVar} is empty`);
    return v;
  }
  const what = `--secret-file ${target}=${spec.file}`;
  let fd: number | undefined;
  let text: string;
  try {
    fd = openSync(spec.file, "r");
    const st = fstatSync(fd);
    if (!st.isFile()) throw new InvalidConfigError("secret", `invalid ${what}: not a regular file`);
    // The value and one trailing newline (CRLF included).
    if (st.size > MAX_SECRET_VALUE_LEN + 2) {
      throw new InvalidConfigError("secret", `invalid ${what}: the file is ${st.size} bytes, more than a secret's ${MAX_SECRET_VALUE_LEN}`);
    }
    text = readFileSync(fd, "utf8");
  } catch (e) {
    if (e instanceof InvalidConfigError) throw e;
    throw new InvalidConfigError("secret", `invalid ${what}: cannot read the file (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { cause: e });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  const value = text.endsWith("\r\n") ? text.slice(0, -2) : text.endsWith("\n") ? text.slice(0, -1) : text;
  if (value === "") throw new InvalidConfigError("secret", `invalid ${what}: the file is empty`);
  return value;
}

/** `--net-rule`s, in order, then the default policy (public allowed, everything else denied). */
export function netRulesPolicy(rules: readonly NetRuleSpec[]): NetworkPolicy {
  return NetworkPolicy.builder()
    .defaultDeny()
    .egress((r) => {
      for (const rule of rules) {
        r.anyProtocol().anyPort();
        if (rule.protocol === "tcp") r.tcp();
        else if (rule.protocol === "udp") r.udp();
        else if (rule.protocol === "icmp") r.icmp();
        if (rule.ports) r.portRange(rule.ports[0], rule.ports[1]);
        const t = rule.target;
        const pick = (d: TargetBuilder) => {
          if (t.kind === "ip") d.ip(t.value);
          else if (t.kind === "cidr") d.cidr(t.value);
          else if (t.kind === "domain") d.domain(t.value);
          else if (t.kind === "domainSuffix") d.domainSuffix(t.value);
          else d.group(t.value);
        };
        if (rule.action === "allow") r.allow(pick);
        else r.deny(pick);
      }
      r.anyProtocol().anyPort().allowPublic();
    })
    .build();
}

/** Registry flags onto a builder (or image pull options). */
export function applyRegistryFlags(b: SandboxBuilder, r: RegistryFlags): void {
  if (r.username !== undefined) b.registryAuth({ kind: "basic", username: r.username, password: r.password ?? "" });
  if (r.insecure) b.insecureRegistry(true);
  if (r.caFile !== undefined) b.registryCa(r.caFile);
}

/**
 * What to run: an OCI image's entrypoint in front of the given command, or of the image's
 * default command when none is given (as `docker run` does).
 */
export function commandLine(given: readonly string[], config: { entrypoint: string[] | null; cmd?: string[] | null }): string[] {
  const entry = config.entrypoint ?? [];
  const rest = given.length > 0 ? given : (config.cmd ?? []);
  return [...entry, ...rest];
}

/** A fresh default sandbox name: `run-` (or `prefix-`) and 8 hex digits. */
export function defaultName(prefix = "run"): string {
  return `${prefix}-${randomBytes(4).toString("hex")}`;
}

/** Exit code for an error. */
export function exitCodeOf(e: unknown): number {
  if (e instanceof InvalidConfigError) return EXIT_USAGE;
  if (e instanceof ExecFailedError) return EXIT_EXEC_FAILED;
  if (e instanceof ExecTimeoutError) return EXIT_TIMEOUT;
  return EXIT_FAILURE;
}

/**
 * Exit code for an error, and the line to print for it (without its newline):
 * `msb: <message>`, or with `json` the object `{"error":{"code":...,"message":...}}`.
 */
export function describeError(e: unknown, json = false): { code: number; message: string } {
  return { code: exitCodeOf(e), message: formatError(cliError(e), json).replace(/\n$/, "") };
}

/** 128 + signal number, as shells report a death by signal. */
export function signalExitCode(reason: unknown): number {
  const n = typeof reason === "string" ? (constants.signals as Record<string, number>)[reason] : undefined;
  return 128 + (n ?? constants.signals.SIGTERM);
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function removeWithRetry(deps: RunDeps, name: string): Promise<void> {
  // The runtime releases the sandbox's lock a moment after the VM is gone.
  const deadline = Date.now() + (deps.removeTimeoutMs ?? 10_000);
  for (;;) {
    try {
      await deps.remove(name);
      return;
    } catch (e) {
      if (!(e instanceof SandboxStillRunningError) || Date.now() >= deadline) throw e;
      await sleep(100);
    }
  }
}

/** Run the command; resolves to the process exit code. Never rejects. */
export async function runCommand(options: RunOptions, deps: RunDeps): Promise<number> {
  const name = options.name ?? defaultName();
  const signal = deps.signal;
  let sandbox: RunSandbox | undefined;
  let teardown: Promise<void> | undefined;
  let code: number;

  const shutdown = (mode: "stop" | "kill"): Promise<void> => {
    const sb = sandbox;
    if (sb === undefined) return Promise.resolve();
    teardown ??= (mode === "kill" ? sb.kill() : sb.stop().catch(() => sb.kill())).catch(() => undefined);
    return teardown;
  };
  const onAbort = () => void shutdown("kill");
  signal?.addEventListener("abort", onAbort, { once: true });

  let createError: unknown;
  try {
    try {
      sandbox = await deps.create({ ...options, name });
    } catch (e) {
      createError = e;
      throw e;
    }
    if (signal?.aborted) throw signal.reason;
    const [cmd, ...args] = commandLine(options.command, sandbox.config());
    if (cmd === undefined || cmd === "") {
      throw new InvalidConfigError("command", "no command given and the image defines no entrypoint or default command");
    }
    const plan = attachPlan(options, deps.terminal);
    const execOptions: RunExecOptions = {};
    if (plan.tty) execOptions.tty = deps.terminal?.size() ?? { rows: 24, cols: 80 };
    if (plan.forwardStdin) execOptions.stdin = true;
    const handle = await (plan.tty || plan.forwardStdin ? sandbox.execStream(cmd, args, execOptions) : sandbox.execStream(cmd, args));
    code = await attach(handle, plan, deps.terminal, deps);
  } catch (e) {
    if (signal?.aborted) {
      code = signalExitCode(signal.reason);
    } else {
      const d = describeError(e, deps.json);
      await deps.writeErr(`${d.message}\n`).catch(() => undefined);
      code = d.code;
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }

  // Clean up. A sandbox that was never created is removed too (a failed boot can
  // leave its directory), except when the name belongs to someone else's sandbox
  // or the configuration was rejected before anything was made.
  const ownsName =
    sandbox !== undefined ||
    !(createError instanceof SandboxAlreadyExistsError || createError instanceof InvalidConfigError);
  try {
    await shutdown(signal?.aborted ? "kill" : "stop");
    if (ownsName) await removeWithRetry(deps, name);
  } catch (e) {
    if (sandbox !== undefined) {
      const err = cliError(e);
      await deps.writeErr(formatError({ ...err, message: `could not remove sandbox ${name}: ${err.message}` }, deps.json === true)).catch(() => undefined);
      if (code === 0) code = EXIT_FAILURE;
    }
  }
  return code;
}
