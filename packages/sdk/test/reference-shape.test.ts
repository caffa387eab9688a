/**
 * Parity with the reference Node SDK (npm `microsandbox` 0.6.14, sdk/node-ts/src/index.ts):
 * every name of its exports that issue 14 covers exists here with the same kind (class,
 * function, factory value, type) and the same method names (taken from its src/*.ts and
 * native/index.d.ts). Out of scope, so not listed: snapshots, SSH, the cloud backend and
 * its default-backend helpers, AgentClient and its FLAG_* constants.
 *
 * Checked twice: at compile time (`nx typecheck` compiles this file: each listed method
 * must be a key of our type, each listed type must exist) and at run time (each name is
 * exported with its kind, each method is on the class, its prototype or the factory).
 */
import { describe, expect, it } from "vitest";
import * as sdk from "../src/index.js";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Ctor = abstract new (...args: any) => any;
type Sym = "asyncIterator" | "asyncDispose";

interface Entry {
  name: string;
  kind: "class" | "function" | "value";
  /** Instance methods and getters (on the prototype). */
  methods?: readonly string[];
  /** Static methods (on the class) or a factory value's functions. */
  statics?: readonly string[];
  symbols?: readonly Sym[];
}

const entries: Entry[] = [];

/** A class: its instance method names must be keys of its instance type. */
function cls<C extends Ctor>(
  name: string,
  _c: C,
  methods: readonly (keyof InstanceType<C> & string)[],
  statics: readonly (keyof C & string)[] = [],
  symbols: readonly Sym[] = [],
): void {
  entries.push({ name, kind: "class", methods, statics, symbols });
}

/** A factory object (the reference's `Stdin`, `Destination`, `Rule`, ...). */
function value<V extends object>(name: string, _v: V, fns: readonly (keyof V & string)[]): void {
  entries.push({ name, kind: "value", statics: fns });
}

function fn(name: string, _f: (...args: never[]) => unknown): void {
  entries.push({ name, kind: "function" });
}

// ---------------------------------------------------------------- Exec
cls("ExecHandle", sdk.ExecHandle, ["id", "recv", "takeStdin", "wait", "collect", "signal", "kill", "resize"], [], ["asyncIterator", "asyncDispose"]);
cls("ExecOutput", sdk.ExecOutput, ["code", "success", "status", "stdout", "stderr", "stdoutBytes", "stderrBytes"]);
cls("ExecSink", sdk.ExecSink, ["write", "close"], [], ["asyncDispose"]);
cls("ExecOptionsBuilder", sdk.ExecOptionsBuilder, [
  "arg",
  "args",
  "cwd",
  "user",
  "env",
  "envs",
  "timeout",
  "stdinNull",
  "stdinPipe",
  "stdinBytes",
  "tty",
  "rlimit",
  "rlimitRange",
  "build",
]);
value("Stdin", sdk.Stdin, ["null", "pipe", "bytes"]);
cls(
  "Sandbox",
  sdk.Sandbox,
  ["exec", "execWith", "execStream", "execStreamWith", "shell", "shellStream", "fs", "config", "metrics", "metricsStream", "stop", "kill", "detach", "ownsLifecycle"],
  ["builder", "start", "startDetached", "get", "list", "remove"],
  ["asyncDispose"],
);
cls("SandboxHandle", sdk.SandboxHandle, ["config", "refresh", "metrics", "start", "startDetached", "connect", "stop", "kill", "remove"]);
cls("SandboxBuilder", sdk.SandboxBuilder, ["image", "imageWith", "cpus", "memory", "logLevel", "workdir", "shell", "replace", "entrypoint", "hostname", "user", "pullPolicy", "disableNetwork", "network", "port", "portUdp", "secret", "secretEnv", "env", "script", "maxDuration", "idleTimeout", "volume", "patch", "create"]);
cls("MetricsStream", sdk.MetricsStream, []); // ours is an Observable (subscribe/forEach), not recv()

// ---------------------------------------------------------------- Sandbox and handle lifecycle (landed)
cls(
  "Sandbox",
  sdk.Sandbox,
  ["ping", "touch", "modify", "requestStop", "requestKill", "stopWithTimeout", "requestDrain", "stopAndWait", "wait", "drain", "removePersisted"],
  ["listWith"],
);
cls("SandboxHandle", sdk.SandboxHandle, ["ping", "touch", "modify", "requestStop", "requestKill", "stopWithTimeout"]);
cls("SandboxBuilder", sdk.SandboxBuilder, ["label", "labels", "maxCpus", "maxMemory", "thp", "init", "initWith", "ephemeral", "replaceWithTimeout", "createDetached"]);
cls("SandboxListBuilder", sdk.SandboxListBuilder, ["limit", "cursor", "label", "labels"]);
cls("InitOptionsBuilder", sdk.InitOptionsBuilder, ["arg", "args", "env", "envs"]);
fn("allSandboxMetrics", sdk.allSandboxMetrics);
type _LifecycleTypes = [
  sdk.SandboxPage,
  sdk.SandboxPingResult,
  sdk.SandboxTouchResult,
  sdk.ChangeKind,
  sdk.ConfigPlannedChange,
  sdk.ModificationConflict,
  sdk.ModificationDisposition,
  sdk.ModificationPolicy,
  sdk.ModificationWarning,
  sdk.ModifyOptions,
  sdk.PlannedChange,
  sdk.ResourceConvergenceState,
  sdk.ResourceKind,
  sdk.ResourceResizeStatus,
  sdk.SandboxModificationPlan,
  sdk.SecretChangeKind,
  sdk.SecretModifySpec,
  sdk.SecretPlannedChange,
];
const _lifecycleTypesCompile: _LifecycleTypes | undefined = undefined;
void _lifecycleTypesCompile;

// ---------------------------------------------------------------- Filesystem
cls("SandboxFsOps", sdk.SandboxFsOps, [
  "read",
  "readToString",
  "readStream",
  "writeStream",
  "write",
  "list",
  "mkdir",
  "removeDir",
  "remove",
  "copy",
  "rename",
  "stat",
  "exists",
  "copyFromHost",
  "copyToHost",
]);
cls("FsReadStream", sdk.FsReadStream, ["recv", "collect"], [], ["asyncIterator", "asyncDispose"]);
cls("FsWriteSink", sdk.FsWriteSink, ["write", "close"], [], ["asyncDispose"]);

// ---------------------------------------------------------------- Network rules
value("Destination", sdk.Destination, ["any", "cidr", "domain", "domainSuffix", "group"]);
value("PortRange", sdk.PortRange, ["single", "range"]);
value("Rule", sdk.Rule, ["allowEgress", "denyEgress", "allowIngress", "denyIngress", "allowAny", "denyAny", "allowDns", "denyDns"]);
cls("NetworkPolicy", sdk.NetworkPolicy, [], ["none", "allowAll", "fromProfiles", "builder"]);
cls("NetworkPolicyBuilder", sdk.NetworkPolicyBuilder, ["defaultAllow", "defaultDeny", "defaultEgress", "defaultIngress", "rule", "egress", "ingress", "any", "build"]);
cls("RuleBuilder", sdk.RuleBuilder, [
  "egress",
  "ingress",
  "any",
  "tcp",
  "udp",
  "icmpv4",
  "port",
  "portRange",
  "allowPublic",
  "denyPublic",
  "allowPrivate",
  "denyPrivate",
  "allowLoopback",
  "denyLoopback",
  "allowLinkLocal",
  "denyLinkLocal",
  "allowMeta",
  "denyMeta",
  "allowHost",
  "denyHost",
  "allowLocal",
  "denyLocal",
  "allowDomain",
  "denyDomain",
  "allowDomains",
  "denyDomains",
  "allowDomainSuffix",
  "denyDomainSuffix",
  "allowDomainSuffixes",
  "denyDomainSuffixes",
  "allow",
  "deny",
]);
cls("RuleDestinationBuilder", sdk.RuleDestinationBuilder, ["ip", "cidr", "domain", "domainSuffix", "group", "any"]);
cls("NetworkBuilder", sdk.NetworkBuilder, ["policy", "port", "portUdp", "secret", "secretEnv", "tls"]);
cls("SecretBuilder", sdk.SecretBuilder, []);
cls("TlsBuilder", sdk.TlsBuilder, []);
cls("MountBuilder", sdk.MountBuilder, []);
cls("PatchBuilder", sdk.PatchBuilder, []);
cls("ImageBuilder", sdk.ImageBuilder, []);

// ---------------------------------------------------------------- Errors (name -> the reference's code)
const ERROR_CODES: Record<string, string> = {
  MicrosandboxError: "",
  IoError: "io",
  HttpError: "http",
  CloudHttpError: "cloudHttp",
  LibkrunfwNotFoundError: "libkrunfwNotFound",
  DatabaseError: "database",
  InvalidConfigError: "invalidConfig",
  NoDefaultCommandError: "noDefaultCommand",
  SandboxNotFoundError: "sandboxNotFound",
  SandboxAlreadyExistsError: "sandboxAlreadyExists",
  SandboxStillRunningError: "sandboxStillRunning",
  RuntimeError: "runtime",
  JsonError: "json",
  ProtocolError: "protocol",
  NixError: "nix",
  ExecTimeoutError: "execTimeout",
  TerminalError: "terminal",
  SandboxFsOpsError: "sandboxFsOps",
  ImageNotFoundError: "imageNotFound",
  ImageInUseError: "imageInUse",
  ImageError: "image",
  PatchFailedError: "patchFailed",
  MetricsDisabledError: "metricsDisabled",
  MetricsUnavailableError: "metricsUnavailable",
  UnsupportedOperationError: "unsupportedOperation",
  UnsupportedError: "unsupported",
  CustomError: "custom",
};
// Compile time: each is exported, as a class.
const _errorClasses: Record<keyof typeof ERROR_CODES & string, Ctor> = {
  MicrosandboxError: sdk.MicrosandboxError,
  IoError: sdk.IoError,
  HttpError: sdk.HttpError,
  CloudHttpError: sdk.CloudHttpError,
  LibkrunfwNotFoundError: sdk.LibkrunfwNotFoundError,
  DatabaseError: sdk.DatabaseError,
  InvalidConfigError: sdk.InvalidConfigError,
  NoDefaultCommandError: sdk.NoDefaultCommandError,
  SandboxNotFoundError: sdk.SandboxNotFoundError,
  SandboxAlreadyExistsError: sdk.SandboxAlreadyExistsError,
  SandboxStillRunningError: sdk.SandboxStillRunningError,
  RuntimeError: sdk.RuntimeError,
  JsonError: sdk.JsonError,
  ProtocolError: sdk.ProtocolError,
  NixError: sdk.NixError,
  ExecTimeoutError: sdk.ExecTimeoutError,
  TerminalError: sdk.TerminalError,
  SandboxFsOpsError: sdk.SandboxFsOpsError,
  ImageNotFoundError: sdk.ImageNotFoundError,
  ImageInUseError: sdk.ImageInUseError,
  ImageError: sdk.ImageError,
  PatchFailedError: sdk.PatchFailedError,
  MetricsDisabledError: sdk.MetricsDisabledError,
  MetricsUnavailableError: sdk.MetricsUnavailableError,
  UnsupportedOperationError: sdk.UnsupportedOperationError,
  UnsupportedError: sdk.UnsupportedError,
  CustomError: sdk.CustomError,
};
for (const name of Object.keys(ERROR_CODES)) entries.push({ name, kind: "class" });

// ---------------------------------------------------------------- Volumes
cls("Volume", sdk.Volume, ["name", "path", "fs"], ["builder", "get", "getDefault", "list", "remove"]);
cls("VolumeBuilder", sdk.VolumeBuilder, ["directory", "disk", "quota", "size", "label", "build", "create"]);
cls("VolumeHandle", sdk.VolumeHandle, ["remove", "fs"]);
// Its data are readonly fields (as the reference's TS class), checked at compile time.
const _volumeHandleFields: readonly (keyof sdk.VolumeHandle)[] = ["name", "isDefault", "kind", "quotaMib", "usedBytes", "capacityBytes", "diskFormat", "diskFstype", "labels", "createdAt"];
cls("VolumeFs", sdk.VolumeFs, ["read", "readToString", "readStream", "write", "writeStream", "list", "mkdir", "removeDir", "remove", "copy", "rename", "stat", "exists"]);
cls("VolumeFsReadStream", sdk.VolumeFsReadStream, ["recv", "collect"], [], ["asyncIterator", "asyncDispose"]);
cls("VolumeFsWriteSink", sdk.VolumeFsWriteSink, ["write", "close"], [], ["asyncDispose"]);
cls("VolumeNotFoundError", sdk.VolumeNotFoundError, []);
cls("VolumeAlreadyExistsError", sdk.VolumeAlreadyExistsError, []);

// ---------------------------------------------------------------- types (compile time only)
type _ReferenceTypes = [
  sdk.ExecEvent,
  sdk.ExitStatus,
  sdk.StdinMode,
  sdk.Rlimit,
  sdk.RlimitResource,
  sdk.FsEntry,
  sdk.FsEntryKind,
  sdk.FsMetadata,
  sdk.MicrosandboxErrorCode,
  sdk.SandboxConfig,
  sdk.SandboxStatus,
  sdk.SandboxMetrics,
  sdk.PullPolicy,
  sdk.LogLevel,
  sdk.RegistryAuth,
  sdk.VolumeMount,
  sdk.PatchKind,
  sdk.PullProgress,
  sdk.Destination,
  sdk.PortRange,
  sdk.Rule,
  sdk.NetworkPolicy,
  sdk.Action,
  sdk.Direction,
  sdk.Protocol,
  sdk.DestinationGroup,
  sdk.ViolationAction,
  sdk.LogSource,
  sdk.LogReadSource,
  sdk.LogReadOptions,
  sdk.LogStreamOptions,
  sdk.ImageDetail,
  sdk.ImageConfigDetail,
  sdk.ImageLayerDetail,
  sdk.ImagePruneReport,
  sdk.SandboxPage,
  sdk.SandboxPingResult,
  sdk.SandboxTouchResult,
  sdk.SandboxModificationPlan,
  sdk.ModifyOptions,
  sdk.PlannedChange,
];
const _typesCompile: _ReferenceTypes | undefined = undefined;
fn("fromNative", sdk.fromNative); // ours, kept: the error mapper the SDK's own code uses

// ---------------------------------------------------------------- Logs
cls("Sandbox", sdk.Sandbox, ["logs", "logStream"]);
cls("SandboxHandle", sdk.SandboxHandle, ["logs", "logStream"]);
cls("LogEntry", sdk.LogEntry, ["text"]);
cls("LogStream", sdk.LogStream, ["recv"], [], ["asyncIterator"]);

// ---------------------------------------------------------------- Images and pull progress
cls("Image", sdk.Image, [], ["get", "list", "inspect", "remove", "prune", "load", "save"]);
cls("ImageHandle", sdk.ImageHandle, []);
cls("PullProgressCreate", sdk.PullProgressCreate, ["progress", "awaitSandbox"], [], ["asyncIterator"]);
cls("SandboxBuilder", sdk.SandboxBuilder, ["createWithPullProgress"]);

// ---------------------------------------------------------------- run-time checks
const exported = sdk as unknown as Record<string, unknown>;

function has(obj: unknown, key: string): boolean {
  return obj !== null && obj !== undefined && key in (obj as object);
}

function checkEntry(e: Entry): void {
  const v = exported[e.name];
  expect(v, `${e.name} is exported`).toBeDefined();
  if (e.kind === "value") {
    expect(typeof v, `${e.name} is a factory object`).toBe("object");
  } else {
    expect(typeof v, `${e.name} is a ${e.kind}`).toBe("function");
    if (e.kind === "class") expect(typeof (v as { prototype?: unknown }).prototype, `${e.name} has a prototype`).toBe("object");
  }
  const proto = (v as { prototype?: object }).prototype;
  for (const m of e.methods ?? []) expect(has(proto, m), `${e.name}.prototype.${m}`).toBe(true);
  for (const s of e.statics ?? []) expect(typeof (v as Record<string, unknown>)[s], `${e.name}.${s}`).toBe("function");
  for (const s of e.symbols ?? []) expect(has(proto, Symbol[s] as unknown as string), `${e.name}.prototype[Symbol.${s}]`).toBe(true);
}

describe("reference SDK shape (microsandbox 0.6.14)", () => {
  for (const e of entries) {
    it(`${e.name}: ${e.kind}${e.methods?.length ? ` with ${e.methods.length} methods` : ""}`, () => checkEntry(e));
  }

  it("error classes carry the reference's codes and are MicrosandboxErrors", () => {
    for (const [name, code] of Object.entries(ERROR_CODES)) {
      if (name === "MicrosandboxError") continue;
      const C = exported[name] as new (message: string) => sdk.MicrosandboxError;
      const e = new C("boom");
      expect(e, name).toBeInstanceOf(sdk.MicrosandboxError);
      expect(e, name).toBeInstanceOf(Error);
      expect(e.code, name).toBe(code);
      expect(e.message, name).toBe("boom");
      expect(e.name, name).toBe(name);
    }
    expect(new sdk.MicrosandboxError("custom", "m").code).toBe("custom");
    expect(Object.keys(_errorClasses)).toEqual(Object.keys(ERROR_CODES));
  });

  it("our names stay as aliases of the reference's", () => {
    expect(sdk.ExecSink).toBe(sdk.ExecStdin);
    expect(sdk.FsWriteSink).toBe(sdk.FsWriteStream);
    expect(sdk.SandboxFsOps).toBe(sdk.SandboxFs);
    expect(sdk.RuleDestinationBuilder).toBe(sdk.TargetBuilder);
    expect(sdk.Rule).toBe(sdk.PolicyRules);
    // KernelNotFoundError keeps its code and is a LibkrunfwNotFoundError
    const k = new sdk.KernelNotFoundError("no kernel");
    expect(k).toBeInstanceOf(sdk.LibkrunfwNotFoundError);
    expect(k.code).toBe("kernelNotFound");
    expect(_typesCompile).toBeUndefined();
  });

});
