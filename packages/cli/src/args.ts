/**
 * Command-line parsing for `msb`, separate from running anything so that it can
 * be unit-tested. Everything after the first `--` is the command to run in the
 * sandbox and is never looked at by the option parser.
 */
import { GROUPS } from "@microsandbox/contract";
import { Command, CommanderError, InvalidArgumentError } from "commander";
import { USAGE, formatError, usageError, wantsJson } from "./errors.js";
import { registerVolumeCommands, type VolumeCli } from "./volumes.js";
import { registerSnapshotCommands, type SnapshotCli } from "./snapshots.js";
import { registerImageCommands, type ImageCli } from "./images.js";
import { addLogsCommand, logsOptions, type LogsCliOptions, type RawLogsOpts } from "./logs.js";

/** A volume from `-v` / `--tmpfs`. */
export type VolumeSpec =
  | { kind: "bind"; source: string; guestPath: string; readonly: boolean }
  | { kind: "named"; source: string; guestPath: string; readonly: boolean }
  | { kind: "tmpfs"; guestPath: string; sizeMiB?: number; readonly: boolean };

/** Guest options shared by `run` and `create`: volumes and scripts. */
export interface GuestFlags {
  /** `-v` and `--tmpfs`, in order. */
  volumes?: VolumeSpec[];
  /** `--script NAME=HOSTFILE`: [name, host file]. */
  scripts?: [string, string][];
  /** `-p HOST:GUEST[/udp]`, in order. */
  ports?: PortSpec[];
  /** `--no-net`: no network at all. */
  noNet?: boolean;
  /** `--net-rule`, in order (before the default policy's rules: first match wins). */
  netRules?: NetRuleSpec[];
  /** `--secret ENV@HOST` and `--secret-file ENV@HOST=PATH`, in order (values are read when applied, never from argv). */
  secrets?: SecretSpec[];
  /** `--tls-upstream-ca PATH`: extra trust anchors for the upstream of intercepted TLS. */
  tlsUpstreamCas?: string[];
  /** `--tls-port N`: the ports whose TLS is intercepted (default 443). */
  tlsPorts?: number[];
}

/**
 * A secret from `--secret ENV@HOST` (value: msb's own environment variable ENV) or
 * `--secret-file ENV@HOST=PATH` (value: the file, one trailing newline stripped). A HOST
 * starting with `*.` is a pattern.
 */
export interface SecretSpec {
  envVar: string;
  host: string;
  /** `--secret-file`: the file holding the value; absent: the environment variable `envVar`. */
  file?: string;
}

/** A published port from `-p HOST:GUEST[/udp]`. */
export interface PortSpec {
  protocol: "tcp" | "udp";
  hostPort: number;
  guestPort: number;
}

/** The address groups a rule may name: the native stack's list, from the contract. */
export const NET_GROUPS = GROUPS;

/** An egress rule from `--net-rule allow|deny:TARGET[:tcp|udp|icmp][:PORT[-PORT]]`. */
export interface NetRuleSpec {
  action: "allow" | "deny";
  target:
    | { kind: "ip"; value: string }
    | { kind: "cidr"; value: string }
    | { kind: "domain"; value: string }
    | { kind: "domainSuffix"; value: string }
    | { kind: "group"; value: (typeof NET_GROUPS)[number] };
  protocol?: "tcp" | "udp" | "icmp";
  ports?: [number, number];
}

/** How a command is attached to msb's terminal: `-t` and `-i`. */
export interface AttachFlags {
  /** `-t`: run the command on a pseudo-terminal. */
  tty?: boolean;
  /** `-i`: forward msb's stdin (also done whenever stdin is not a terminal). */
  interactive?: boolean;
}

/** The sandbox options `msb run` and `msb create` share. */
export interface SandboxFlags extends GuestFlags {
  name?: string;
  image?: string;
  cpus?: number;
  memory?: number;
  env: [string, string][];
  workdir?: string;
  pullPolicy?: string;
  /** `--snapshot NAME`: boot on a copy of a disk snapshot's writable disk (its image pinned). */
  snapshot?: string;
  registry: RegistryFlags;
}

/** What `msb run` was asked to do. */
export interface RunOptions extends SandboxFlags, AttachFlags {
  /** Empty: run the image's entrypoint and default command. */
  command: string[];
}

/** `msb exec`'s options. */
export interface ExecCliOptions extends AttachFlags {
  env: [string, string][];
  workdir?: string;
  user?: string;
  timeoutMs?: number;
}

/** One side of `msb cp`: a host path, or `NAME:/guest/path`. */
export type CpEndpoint = { kind: "host"; path: string } | { kind: "sandbox"; name: string; path: string };

/** Registry access flags shared by `run` and `pull`. */
export interface RegistryFlags {
  username?: string;
  /** From --password or $MSB_REGISTRY_PASSWORD. */
  password?: string;
  insecure?: boolean;
  caFile?: string;
}

/** What `msb create` was asked to do: `msb run`'s options without a command, plus lifetime limits. */
export interface CreateOptions extends SandboxFlags {
  idleTimeoutSecs?: number;
  maxDurationSecs?: number;
  replace?: boolean;
  /** `--label KEY=VALUE`, in order (checked by the SDK). */
  labels?: [string, string][];
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
  | { kind: "start"; names: string[]; secrets?: SecretSpec[] }
  | { kind: "stop"; names: string[]; timeoutMs?: number }
  | { kind: "kill"; names: string[] }
  | { kind: "pause"; names: string[] }
  | { kind: "fork"; source: string; name: string; json: boolean }
  | { kind: "warmup"; image?: string; cpus?: number; memory?: number; network: boolean; json: boolean }
  | { kind: "resume"; names: string[] }
  | { kind: "rm"; names: string[]; force: boolean }
  | { kind: "ls"; json: boolean; labels?: [string, string][] }
  | { kind: "inspect"; name: string }
  | { kind: "exec"; name: string; command: string[]; options: ExecCliOptions }
  | { kind: "cp"; src: CpEndpoint; dst: CpEndpoint }
  | { kind: "metrics"; options: MetricsOptions }
  | { kind: "pull"; image: string; registry: RegistryFlags }
  | { kind: "images"; json: boolean }
  | { kind: "rmi"; images: string[]; force?: boolean }
  | { kind: "logs"; options: LogsCliOptions }
  | { kind: "doctor"; json: boolean }
  | VolumeCli
  | SnapshotCli
  | ImageCli
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
export const EXEC_USAGE = "[options] NAME -- CMD [ARGS...]";
export const CP_USAGE = "SRC DST (one of them NAME:/guest/path)";

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

/** `--label KEY=VALUE` (the value may be empty: `KEY=`); the SDK checks the key. */
function labelPair(value: string, previous: [string, string][] | undefined): [string, string][] {
  const eq = value.indexOf("=");
  if (eq <= 0) throw new InvalidArgumentError(`label must be KEY=VALUE with a non-empty KEY (got ${JSON.stringify(value)}).`);
  return [...(previous ?? []), [value.slice(0, eq), value.slice(eq + 1)]];
}

function collect<T>(parse: (v: string) => T) {
  return (value: string, previous: T[] | undefined): T[] => [...(previous ?? []), parse(value)];
}

/** `-v HOST:GUEST[:ro]` (a host path has a '/') or `-v NAME:GUEST[:ro]` (a named volume). */
export function parseVolume(value: string): VolumeSpec {
  const parts = value.split(":");
  const mode = parts.length === 3 ? parts[2] : undefined;
  const [source, guestPath] = parts;
  if (parts.length < 2 || parts.length > 3 || !source || !guestPath || (mode !== undefined && mode !== "ro" && mode !== "rw")) {
    throw new InvalidArgumentError(`volume must be HOST_DIR:GUEST_PATH[:ro] or NAME:GUEST_PATH[:ro] (got ${JSON.stringify(value)}).`);
  }
  if (!guestPath.startsWith("/")) throw new InvalidArgumentError(`volume guest path must be absolute (got ${JSON.stringify(guestPath)}).`);
  const readonly = mode === "ro";
  const isPath = source.includes("/") || source === "." || source === ".." || source.startsWith("~");
  return isPath ? { kind: "bind", source, guestPath, readonly } : { kind: "named", source, guestPath, readonly };
}

/** `--tmpfs GUEST[:size=MiB][,ro]`. */
export function parseTmpfs(value: string): VolumeSpec {
  const colon = value.indexOf(":");
  const guestPath = colon === -1 ? value : value.slice(0, colon);
  if (!guestPath.startsWith("/")) throw new InvalidArgumentError(`tmpfs guest path must be absolute (got ${JSON.stringify(guestPath)}).`);
  const spec: VolumeSpec = { kind: "tmpfs", guestPath, readonly: false };
  if (colon !== -1) {
    for (const opt of value.slice(colon + 1).split(",")) {
      const m = /^size=([1-9][0-9]*)$/.exec(opt);
      if (m) spec.sizeMiB = Number(m[1]);
      else if (opt === "ro") spec.readonly = true;
      else throw new InvalidArgumentError(`tmpfs options are size=MiB and ro (got ${JSON.stringify(opt)}).`);
    }
  }
  return spec;
}

function portNumber(s: string | undefined, what: string, value: string): number {
  if (s === undefined || !/^[0-9]{1,5}$/.test(s) || Number(s) < 1 || Number(s) > 65535) {
    throw new InvalidArgumentError(`${what} must be a port from 1 to 65535 (got ${JSON.stringify(value)}).`);
  }
  return Number(s);
}

/** `-p HOST:GUEST[/udp]` (also `/tcp`). */
export function parsePort(value: string): PortSpec {
  const m = /^([^:/]*):([^:/]*)(?:\/(tcp|udp))?$/.exec(value);
  if (!m) throw new InvalidArgumentError(`port must be HOST_PORT:GUEST_PORT[/udp] (got ${JSON.stringify(value)}).`);
  return {
    protocol: m[3] === "udp" ? "udp" : "tcp",
    hostPort: portNumber(m[1], "host port", value),
    guestPort: portNumber(m[2], "guest port", value),
  };
}

/**
 * `--net-rule allow|deny:TARGET[:tcp|udp|icmp][:PORT[-PORT]]`. TARGET: an IPv4 address, a
 * CIDR (`10.0.0.0/8`), a group (public, private, loopback, link-local, metadata, host,
 * any), `*.example.com` (the domain and every name below it) or a domain name.
 */
export function parseNetRule(value: string): NetRuleSpec {
  const usage = `net rule must be allow|deny:TARGET[:tcp|udp|icmp][:PORT[-PORT]] (got ${JSON.stringify(value)}).`;
  const [action, target, ...rest] = value.split(":");
  if ((action !== "allow" && action !== "deny") || !target || rest.length > 2) throw new InvalidArgumentError(usage);
  const rule: NetRuleSpec = { action, target: { kind: "domain", value: target } };
  if ((NET_GROUPS as readonly string[]).includes(target)) rule.target = { kind: "group", value: target as (typeof NET_GROUPS)[number] };
  else if (target.includes("/")) rule.target = { kind: "cidr", value: target };
  else if (/^[0-9]+(\.[0-9]+){3}$/.test(target)) rule.target = { kind: "ip", value: target };
  else if (target.startsWith("*.") || target.startsWith(".")) rule.target = { kind: "domainSuffix", value: target.replace(/^\*?\./, "") };
  if (rule.target.kind !== "group" && rule.target.kind !== "ip" && rule.target.kind !== "cidr" && !/^[A-Za-z0-9_.-]+$/.test(rule.target.value)) {
    throw new InvalidArgumentError(`net rule target must be an IPv4 address, a CIDR, a group (${NET_GROUPS.join(", ")}), *.SUFFIX or a domain (got ${JSON.stringify(target)}).`);
  }
  for (const part of rest) {
    if (part === "tcp" || part === "udp" || part === "icmp") {
      if (rule.protocol !== undefined || rule.ports !== undefined) throw new InvalidArgumentError(usage);
      rule.protocol = part;
      continue;
    }
    const m = /^([^-]*)(?:-([^-]*))?$/.exec(part);
    if (!m || rule.ports !== undefined) throw new InvalidArgumentError(usage);
    const from = portNumber(m[1], "net rule port", value);
    const to = m[2] === undefined ? from : portNumber(m[2], "net rule port", value);
    if (from > to) throw new InvalidArgumentError(`net rule port range must not end below its start (got ${JSON.stringify(value)}).`);
    rule.ports = [from, to];
  }
  if (rule.protocol === "icmp" && rule.ports !== undefined) throw new InvalidArgumentError(`net rule ports apply to tcp and udp only (got ${JSON.stringify(value)}).`);
  return rule;
}

function secretTarget(spec: string, flag: string, form: string): { envVar: string; host: string } {
  // Never echo the argument: a value typed by mistake must not reach the terminal or a log.
  if (spec.includes("=")) {
    throw new InvalidArgumentError(
      `${flag} must be ${form}; the value is never given on the command line (${flag === "--secret" ? "it is read from msb's own environment variable ENV" : "it is read from PATH"}).`,
    );
  }
  const at = spec.lastIndexOf("@");
  const envVar = spec.slice(0, at);
  const host = spec.slice(at + 1);
  if (at <= 0 || host === "") throw new InvalidArgumentError(`${flag} must be ${form} with a non-empty ENV and HOST.`);
  return { envVar, host };
}

/** `--secret ENV@HOST`: the value is msb's own environment variable ENV (read when the sandbox is made). */
export function parseSecret(value: string): SecretSpec {
  return secretTarget(value, "--secret", "ENV@HOST");
}

/** `msb start --secret ENV`: the stored secret ENV's value, from msb's own environment. */
export function parseStartSecret(value: string): SecretSpec {
  if (value.includes("=") || value.includes("@") || value === "") {
    throw new InvalidArgumentError("msb start --secret must be ENV (the secret's env var); the value is read from msb's own environment variable ENV, never from the command line.");
  }
  return { envVar: value, host: "" };
}

/** `msb start --secret-file ENV=PATH`. */
export function parseStartSecretFile(value: string): SecretSpec {
  const eq = value.indexOf("=");
  const envVar = value.slice(0, eq);
  const file = value.slice(eq + 1);
  if (eq <= 0 || file === "" || envVar.includes("@")) throw new InvalidArgumentError("msb start --secret-file must be ENV=PATH with a non-empty ENV and PATH.");
  return { envVar, host: "", file };
}

/** `--secret-file ENV@HOST=PATH`: the value is the file's content (one trailing newline stripped). */
export function parseSecretFile(value: string): SecretSpec {
  const eq = value.indexOf("=");
  const file = value.slice(eq + 1);
  if (eq <= 0 || file === "") throw new InvalidArgumentError("--secret-file must be ENV@HOST=PATH with a non-empty PATH.");
  return { ...secretTarget(value.slice(0, eq), "--secret-file", "ENV@HOST=PATH"), file };
}

/** `--tls-port N`. */
export function parseTlsPort(value: string): number {
  return portNumber(value, "tls port", value);
}

/** `--script NAME=HOSTFILE`. */
export function parseScript(value: string): [string, string] {
  const eq = value.indexOf("=");
  const name = value.slice(0, eq);
  const file = value.slice(eq + 1);
  if (eq <= 0 || file === "" || name.includes("/")) {
    throw new InvalidArgumentError(`script must be NAME=HOSTFILE, NAME without '/' (got ${JSON.stringify(value)}).`);
  }
  return [name, file];
}

const CP_SANDBOX = /^([A-Za-z0-9][A-Za-z0-9_.-]*):(\/.*)$/;

/** `NAME:/guest/path` is a sandbox path; anything else a host path (write `./a:b` for a host file named `a:b`). */
export function parseCpEndpoint(value: string): CpEndpoint {
  const m = CP_SANDBOX.exec(value);
  return m ? { kind: "sandbox", name: m[1] as string, path: m[2] as string } : { kind: "host", path: value };
}

interface RawRegistryOpts {
  username?: string;
  password?: string;
  insecure?: boolean;
  caFile?: string;
}

interface RawRunOpts extends RawRegistryOpts, RawGuestOpts, RawAttachOpts {
  name?: string;
  cpus?: number;
  memory?: number;
  env?: [string, string][];
  workdir?: string;
  pullPolicy?: string;
  snapshot?: string;
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

interface RawGuestOpts {
  volume?: VolumeSpec[];
  tmpfs?: VolumeSpec[];
  script?: [string, string][];
  publish?: PortSpec[];
  net?: boolean;
  netRule?: NetRuleSpec[];
  secret?: string[];
  secretFile?: string[];
  tlsUpstreamCa?: string[];
  tlsPort?: number[];
}

interface RawAttachOpts {
  tty?: boolean;
  interactive?: boolean;
}

function guestOptions(cmd: Command): Command {
  return cmd
    .option("-v, --volume <spec>", "mount a host directory (HOST_DIR:GUEST_PATH[:ro]) or a named volume (NAME:GUEST_PATH[:ro]); repeatable", collect(parseVolume))
    .option("--tmpfs <spec>", "mount a tmpfs: GUEST_PATH[:size=MiB][,ro]; repeatable", collect(parseTmpfs))
    .option("--script <NAME=HOSTFILE>", "install HOSTFILE as /.msb/scripts/NAME (on PATH); repeatable", collect(parseScript))
    .option("-p, --publish <HOST:GUEST[/udp]>", "publish a guest port on the host's 127.0.0.1:HOST (tcp unless /udp); repeatable", collect(parsePort))
    .option("--no-net", "no network at all (the guest gets no NIC)")
    .option(
      "--net-rule <rule>",
      "egress rule allow|deny:TARGET[:tcp|udp|icmp][:PORT[-PORT]], TARGET an IP, CIDR, domain, *.SUFFIX or group (public, private, loopback, link-local, metadata, host, any); checked in order before the default (public allowed, everything else denied); repeatable",
      collect(parseNetRule),
    )
    .option(
      "--secret <ENV@HOST>",
      "a secret the guest can use but not read: $ENV in the guest holds the placeholder $MSB_ENV, replaced by the value of msb's own environment variable ENV in HTTPS requests to HOST (or *.SUFFIX); the value is never taken from the command line; repeatable",
      // Parsed in guestFlags, not by commander, whose errors repeat the argument (which
      // could be a value typed by mistake).
      collect((v: string) => v),
    )
    .option("--secret-file <ENV@HOST=PATH>", "as --secret, the value read from the file PATH (one trailing newline stripped); repeatable", collect((v: string) => v))
    .option("--tls-upstream-ca <pem>", "an extra CA certificate (PEM file) trusted for the upstream of intercepted TLS; repeatable", collect((v: string) => v))
    .option("--tls-port <port>", "a port whose TLS is intercepted for secrets (default 443; giving any replaces it); repeatable", collect(parseTlsPort));
}

function guestFlags(o: RawGuestOpts, into: GuestFlags): void {
  const volumes = [...(o.volume ?? []), ...(o.tmpfs ?? [])];
  if (volumes.length > 0) into.volumes = volumes;
  if (o.script !== undefined) into.scripts = o.script;
  if (o.publish !== undefined) into.ports = o.publish;
  if (o.net === false) into.noNet = true;
  if (o.netRule !== undefined) into.netRules = o.netRule;
  const secrets = [...(o.secret ?? []).map(parseSecret), ...(o.secretFile ?? []).map(parseSecretFile)];
  if (secrets.length > 0) into.secrets = secrets;
  if (o.tlsUpstreamCa !== undefined) into.tlsUpstreamCas = o.tlsUpstreamCa;
  if (o.tlsPort !== undefined) into.tlsPorts = o.tlsPort;
}

/** {@link guestFlags}, a bad flag (a `--secret` spec) returned as its message. */
function guestFlagsOrError(o: RawGuestOpts, into: GuestFlags): string | undefined {
  try {
    guestFlags(o, into);
    return undefined;
  } catch (e) {
    if (e instanceof InvalidArgumentError) return e.message;
    throw e;
  }
}

function attachOptions(cmd: Command): Command {
  return cmd
    .option("-t, --tty", "run the command on a pseudo-terminal (the local terminal goes raw; resizes are forwarded)")
    .option("-i, --interactive", "forward stdin (always done when stdin is not a terminal)");
}

function attachFlags(o: RawAttachOpts, into: AttachFlags): void {
  if (o.tty) into.tty = true;
  if (o.interactive) into.interactive = true;
}

interface RawExecOpts extends RawAttachOpts {
  env?: [string, string][];
  workdir?: string;
  user?: string;
  timeout?: number;
}

interface RawCreateOpts extends RawRunOpts {
  idleTimeout?: number;
  maxDuration?: number;
  replace?: boolean;
  label?: [string, string][];
}

interface Handlers {
  run(image: string | undefined, opts: RawRunOpts): void;
  create(image: string | undefined, opts: RawCreateOpts): void;
  lifecycle(kind: "start" | "kill" | "pause" | "resume", names: string[]): void;
  start(names: string[], opts: { secret?: string[]; secretFile?: string[] }): void;
  stop(names: string[], opts: { timeout?: number }): void;
  rm(names: string[], opts: { force?: boolean }): void;
  ls(opts: { json?: boolean; label?: [string, string][] }): void;
  inspect(name: string): void;
  exec(name: string, opts: RawExecOpts): void;
  cp(src: string, dst: string): void;
  metrics(name: string, opts: { watch?: boolean; json?: boolean; interval?: number }): void;
  pull(image: string, opts: RawRegistryOpts): void;
  warmup(image: string | undefined, opts: { cpus?: number; memory?: number; net?: boolean; json?: boolean }): void;
  fork(source: string, name: string, opts: { json?: boolean }): void;
  images(opts: { json?: boolean }): void;
  rmi(images: string[], opts?: { force?: boolean }): void;
  logs(name: string, opts: RawLogsOpts): void;
  doctor(opts: { json?: boolean }): void;
  volume(r: VolumeCli): void;
  volumeUsage(message: string): void;
  snapshot(r: SnapshotCli): void;
  image(r: ImageCli): void;
}

/** `--json` on a command whose output is not JSON: errors are reported as JSON objects. */
const JSON_ERRORS = ["--json", 'report errors as one JSON object on stderr: {"error":{"code","message"}}'] as const;

function jsonErrors(cmd: Command): Command {
  return cmd.option(...JSON_ERRORS);
}

function buildProgram(version: string, out: CliOutput, on: Handlers, json: boolean): Command {
  const program = new Command("msb");
  program
    .description("Run commands in hardware-isolated microVM sandboxes")
    .version(version, "-V, --version", "print the version")
    .helpOption("-h, --help", "show help")
    .helpCommand(false)
    .exitOverride()
    .configureOutput({
      writeOut: (s) => out.out(s),
      writeErr: (s) => out.err(s),
      // commander's "error: ..." in msb's one format
      outputError: (s) => out.err(formatError(usageError(s), json)),
    });

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
    .option("--pull-policy <policy>", "when to pull an OCI image: always, if-missing (default), never", pullPolicy)
    .option("--snapshot <NAME>", "start from a disk snapshot (msb snapshot create): its files, on its pinned image (no IMAGE then)");
  guestOptions(run);
  attachOptions(run);
  jsonErrors(run);
  registryOptions(run)
    .addHelpText(
      "after",
      "\nEverything after -- is the command and its arguments, passed as is; an OCI image's\nentrypoint is put in front of it. Without a command, the image's entrypoint and\ndefault command run.\n\nSecrets: --secret API_KEY@api.example.com gives the guest $API_KEY=$MSB_API_KEY, a\nplaceholder that the sandbox's network replaces with msb's own $API_KEY in HTTPS\nrequests to api.example.com (and blocks anywhere else). The value never enters the\nguest and is never stored.\n\nExamples:\n  msb run -e GREETING=hi -- sh -c 'echo $GREETING'\n  msb run alpine -- cat /etc/os-release\n  API_KEY=... msb run --secret API_KEY@api.example.com debian -- sh -c 'curl -H \"Authorization: Bearer $API_KEY\" https://api.example.com/'\n",
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
    .option("--snapshot <NAME>", "start from a disk snapshot (msb snapshot create): its files, on its pinned image (no IMAGE then)")
    .option("--idle-timeout <secs>", "stop the sandbox after this many seconds without a running command", positiveInteger("idle-timeout"))
    .option("--max-duration <secs>", "stop the sandbox at this age in seconds, whatever runs in it", positiveInteger("max-duration"))
    .option("--replace", "stop and remove a sandbox of the same name first")
    .option("-l, --label <KEY=VALUE>", "a label, stored with the sandbox (msb ls --label KEY=VALUE finds it); repeatable", labelPair);
  guestOptions(create);
  jsonErrors(create);
  registryOptions(create)
    .addHelpText("after", "\nExamples:\n  msb create --name worker alpine\n  msb exec worker -- cat /etc/os-release\n  msb stop worker && msb rm worker\n")
    .action((image: string | undefined, opts: RawCreateOpts) => on.create(image, opts));

  program
    .command("start")
    .description("boot stopped sandboxes again (their files are kept), in the background")
    .argument("<NAME...>", "sandbox names")
    .option("--secret <ENV>", "give a secret its value again, from msb's own environment variable ENV (values are never stored); repeatable", collect((v: string) => v))
    .option("--secret-file <ENV=PATH>", "as --secret, the value read from the file PATH; repeatable", collect((v: string) => v))
    .option(...JSON_ERRORS)
    .action((names: string[], opts: { secret?: string[]; secretFile?: string[] }) => on.start(names, opts));
  program
    .command("stop")
    .description("stop sandboxes gracefully (SIGTERM to their processes, then power off)")
    .argument("<NAME...>", "sandbox names")
    .option("-t, --timeout <ms>", "kill the VM if it has not stopped after this many milliseconds (default 10000)", positiveInteger("timeout"))
    .option(...JSON_ERRORS)
    .action((names: string[], opts: { timeout?: number }) => on.stop(names, opts));
  program
    .command("kill")
    .description("end sandboxes' VMs at once")
    .argument("<NAME...>", "sandbox names")
    .option(...JSON_ERRORS)
    .action((names: string[]) => on.lifecycle("kill", names));
  program
    .command("pause")
    .description("pause sandboxes' VMs: their vCPUs stop (no CPU used), memory and disks stay; commands are refused until msb resume")
    .argument("<NAME...>", "sandbox names")
    .option(...JSON_ERRORS)
    .action((names: string[]) => on.lifecycle("pause", names));
  program
    .command("resume")
    .description("let paused sandboxes run again")
    .argument("<NAME...>", "sandbox names")
    .option(...JSON_ERRORS)
    .action((names: string[]) => on.lifecycle("resume", names));
  program
    .command("rm")
    .description("remove stopped sandboxes and all their state")
    .argument("<NAME...>", "sandbox names")
    .option("-f, --force", "kill running sandboxes first")
    .option(...JSON_ERRORS)
    .action((names: string[], opts: { force?: boolean }) => on.rm(names, opts));
  program
    .command("ls")
    .alias("ps")
    .description("list sandboxes (running, draining, stopped, crashed)")
    .option("--json", "print JSON instead of a table")
    .option("-l, --label <KEY=VALUE>", "only sandboxes with this label (repeatable: all must match)", labelPair)
    .action((opts: { json?: boolean; label?: [string, string][] }) => on.ls(opts));
  program
    .command("inspect")
    .description("print a sandbox's state and configuration as JSON")
    .argument("<NAME>", "sandbox name")
    .option(...JSON_ERRORS)
    .action((name: string) => on.inspect(name));
  const exec = program
    .command("exec")
    .description("run a command in a running sandbox, stream its output and exit with its exit code")
    .usage(EXEC_USAGE)
    .argument("<NAME>", "sandbox name")
    .option("-e, --env <KEY=VALUE>", "environment variable for the command (repeatable)", envPair)
    .option("-w, --workdir <dir>", "working directory (absolute)")
    .option("-u, --user <user>", "run as this user: a name, uid or uid:gid")
    .option("--timeout <ms>", "kill the command after this many milliseconds (exit 124)", positiveInteger("timeout"));
  attachOptions(exec);
  jsonErrors(exec)
    .addHelpText(
      "after",
      "\nEverything after -- is the command and its arguments, passed as is. stdin is forwarded\nwhen it is not a terminal (or with -i); Ctrl-C sends SIGINT to the command (a second\none ends msb). With -t on a terminal, keys go to the command as typed.\n\nExamples:\n  msb exec worker -- sh -c 'echo $HOSTNAME'\n  echo hi | msb exec worker -- cat\n  msb exec -t worker -- sh\n",
    )
    .action((name: string, opts: RawExecOpts) => on.exec(name, opts));
  program
    .command("cp")
    .description("copy files or directory trees between the host and a running sandbox")
    .usage(CP_USAGE)
    .argument("<SRC>", "host path or NAME:/guest/path")
    .argument("<DST>", "host path or NAME:/guest/path")
    .option(...JSON_ERRORS)
    .addHelpText(
      "after",
      "\nA destination that is an existing directory receives SRC inside it; otherwise SRC is\ncopied to DST. Modes are kept and symbolic links are copied as links.\n\nExamples:\n  msb cp ./src worker:/app\n  msb cp worker:/var/log/app.log ./app.log\n",
    )
    .action((src: string, dst: string) => on.cp(src, dst));
  program
    .command("metrics")
    .description("show a running sandbox's resource use")
    .argument("<NAME>", "sandbox name")
    .option("--watch", "keep sampling (a live line on a terminal, one line per sample otherwise) until Ctrl-C")
    .option("--interval <ms>", `sampling interval with --watch (default ${DEFAULT_METRICS_INTERVAL_MS})`, positiveInteger("interval"))
    .option("--json", "print JSON (one object per line)")
    .action((name: string, opts: { watch?: boolean; json?: boolean; interval?: number }) => on.metrics(name, opts));

  registryOptions(jsonErrors(program.command("pull").description("pull an OCI image into the local cache").argument("<IMAGE>", "image reference"))).action(
    (image: string, opts: RawRegistryOpts) => on.pull(image, opts),
  );
  program
    .command("fork")
    .description("fork a running sandbox: a new (detached) sandbox with its memory and disk as they are now")
    .argument("<SOURCE>", "the running sandbox")
    .argument("<NAME>", "the new sandbox's name")
    .option("--json", "print the result as JSON")
    .action((source: string, name: string, opts: { json?: boolean }) => on.fork(source, name, opts));
  program
    .command("warmup")
    .description("make the memory template of a sandbox shape, so that sandboxes of it start without a kernel boot")
    .argument("[IMAGE]", "the image (default: the embedded busybox image)")
    .option("--cpus <n>", "number of virtual CPUs (default 1)", integer("cpus"))
    .option("--memory <mib>", "guest memory in MiB (default 512)", integer("memory"))
    .option("--no-net", "the shape of sandboxes without a network")
    .option("--json", "print the result as JSON")
    .action((image: string | undefined, opts: { cpus?: number; memory?: number; net?: boolean; json?: boolean }) => on.warmup(image, opts));
  program
    .command("images")
    .description("list cached images")
    .option("--json", "print JSON instead of a table")
    .action((opts: { json?: boolean }) => on.images(opts));
  program
    .command("rmi")
    .description("remove cached images")
    .argument("<IMAGE...>", "image references")
    .option(...JSON_ERRORS)
    .option("-f, --force", "remove even when sandboxes use the image")
    .action((images: string[], opts: { force?: boolean }) => on.rmi(images, opts));
  registerVolumeCommands(program, (r) => on.volume(r), (m) => on.volumeUsage(m));
  registerSnapshotCommands(program, (r) => on.snapshot(r));
  registerImageCommands(program, (r) => on.image(r));

  addLogsCommand(program, (name, opts) => on.logs(name, opts));
  program
    .command("doctor")
    .description("check that this host can run sandboxes (QEMU, KVM, e2fsprogs, virtiofsd, disk space, msb's own files) and say how to fix what is missing")
    .option("--json", 'print JSON: {"ok": boolean, "checks": [{name, status, detail, ...}]}')
    .addHelpText("after", "\nExit code 0 when a sandbox can start here (warnings allowed), 1 when a check failed.\n")
    .action((opts: { json?: boolean }) => on.doctor(opts));

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

  const json = wantsJson(argv);
  const usage = (message: string): ParsedCli => {
    out.err(formatError({ code: USAGE, message }, json));
    return { kind: "exit", code: EXIT_USAGE };
  };
  let result: ParsedCli | undefined;
  const program = buildProgram(version, out, {
    run(image, opts) {
      if ((command[0] === undefined || command[0] === "") && image === undefined) {
        result = usage(`missing command: msb run ${RUN_USAGE}`);
        return;
      }
      if (command.length > 0 && command[0] === "") {
        result = usage("the command must not be empty");
        return;
      }
      const options: RunOptions = { env: opts.env ?? [], command, registry: registryFlags(opts, env) };
      const bad = guestFlagsOrError(opts, options);
      if (bad !== undefined) {
        result = usage(bad);
        return;
      }
      attachFlags(opts, options);
      if (image !== undefined) options.image = image;
      if (opts.name !== undefined) options.name = opts.name;
      if (opts.cpus !== undefined) options.cpus = opts.cpus;
      if (opts.memory !== undefined) options.memory = opts.memory;
      if (opts.workdir !== undefined) options.workdir = opts.workdir;
      if (opts.pullPolicy !== undefined) options.pullPolicy = opts.pullPolicy;
      if (opts.snapshot !== undefined) options.snapshot = opts.snapshot;
      result = { kind: "run", options };
    },
    create(image, opts) {
      if (sep !== -1) {
        result = usage("msb create takes no command (run one with: msb exec NAME -- CMD)");
        return;
      }
      const options: CreateOptions = { env: opts.env ?? [], registry: registryFlags(opts, env) };
      const bad = guestFlagsOrError(opts, options);
      if (bad !== undefined) {
        result = usage(bad);
        return;
      }
      if (image !== undefined) options.image = image;
      if (opts.name !== undefined) options.name = opts.name;
      if (opts.cpus !== undefined) options.cpus = opts.cpus;
      if (opts.memory !== undefined) options.memory = opts.memory;
      if (opts.workdir !== undefined) options.workdir = opts.workdir;
      if (opts.pullPolicy !== undefined) options.pullPolicy = opts.pullPolicy;
      if (opts.snapshot !== undefined) options.snapshot = opts.snapshot;
      if (opts.idleTimeout !== undefined) options.idleTimeoutSecs = opts.idleTimeout;
      if (opts.maxDuration !== undefined) options.maxDurationSecs = opts.maxDuration;
      if (opts.replace) options.replace = true;
      if (opts.label !== undefined) options.labels = opts.label;
      result = { kind: "create", options };
    },
    lifecycle(kind, names) {
      result = { kind, names };
    },
    start(names, opts) {
      let secrets: SecretSpec[];
      try {
        secrets = [...(opts.secret ?? []).map(parseStartSecret), ...(opts.secretFile ?? []).map(parseStartSecretFile)];
      } catch (e) {
        if (!(e instanceof InvalidArgumentError)) throw e;
        result = usage(e.message);
        return;
      }
      result = secrets.length > 0 ? { kind: "start", names, secrets } : { kind: "start", names };
    },
    stop(names, opts) {
      result = opts.timeout === undefined ? { kind: "stop", names } : { kind: "stop", names, timeoutMs: opts.timeout };
    },
    rm(names, opts) {
      result = { kind: "rm", names, force: opts.force === true };
    },
    ls(opts) {
      result = opts.label === undefined ? { kind: "ls", json: opts.json === true } : { kind: "ls", json: opts.json === true, labels: opts.label };
    },
    inspect(name) {
      result = { kind: "inspect", name };
    },
    exec(name, opts) {
      if (command[0] === undefined || command[0] === "") {
        result = usage(`missing command: msb exec ${EXEC_USAGE}`);
        return;
      }
      const options: ExecCliOptions = { env: opts.env ?? [] };
      attachFlags(opts, options);
      if (opts.workdir !== undefined) options.workdir = opts.workdir;
      if (opts.user !== undefined) options.user = opts.user;
      if (opts.timeout !== undefined) options.timeoutMs = opts.timeout;
      result = { kind: "exec", name, command, options };
    },
    cp(src, dst) {
      if (sep !== -1) {
        result = usage("msb cp takes no command after --");
        return;
      }
      const s = parseCpEndpoint(src);
      const d = parseCpEndpoint(dst);
      if ((s.kind === "sandbox") === (d.kind === "sandbox")) {
        result = usage(`exactly one of SRC and DST must be a sandbox path NAME:/path (msb cp ${CP_USAGE})`);
        return;
      }
      result = { kind: "cp", src: s, dst: d };
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
    fork(source, name, opts) {
      result = { kind: "fork", source, name, json: opts.json === true };
    },
    warmup(image, opts) {
      result = {
        kind: "warmup",
        ...(image !== undefined ? { image } : {}),
        ...(opts.cpus !== undefined ? { cpus: opts.cpus } : {}),
        ...(opts.memory !== undefined ? { memory: opts.memory } : {}),
        network: opts.net !== false,
        json: opts.json === true,
      };
    },
    images(opts) {
      result = { kind: "images", json: opts.json === true };
    },
    rmi(images, opts) {
      result = { kind: "rmi", images, ...(opts?.force ? { force: true } : {}) };
    },
    logs(name, opts) {
      result = sep !== -1 ? usage("msb logs takes no command after --") : { kind: "logs", options: logsOptions(name, opts) };
    },
    doctor(opts) {
      result = sep !== -1 ? usage("msb doctor takes no command after --") : { kind: "doctor", json: opts.json === true };
    },
    volume(r) {
      result = sep !== -1 ? usage("msb volume takes no command after --") : r;
    },
    volumeUsage(message) {
      result = usage(message);
    },
    snapshot(r) {
      result = sep !== -1 ? usage("msb snapshot takes no command after --") : r;
    },
    image(r) {
      result = sep !== -1 ? usage("msb image takes no command after --") : r;
    },
  }, json);

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
