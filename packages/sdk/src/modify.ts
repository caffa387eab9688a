/**
 * `sb.modify(options)` / `handle.modify(options)`: plan a change to a sandbox's stored
 * configuration and, unless `dryRun`, apply it. The plan has the reference SDK's shape
 * (`SandboxModificationPlan`, its `changes` classified by disposition).
 *
 * This runtime changes nothing in a running VM (QEMU's microvm boots a fixed CPU count
 * and memory size; env, workdir and labels are read at boot), so every change takes
 * effect at the next start: on a stopped sandbox it is "next start"; on a running one it
 * "requires restart" (refused with `SandboxStillRunningError` unless the policy is
 * `"next_start"`, which stores it for the next start, or `"restart"`, which stops the
 * sandbox, stores it and starts it again, detached).
 */
import "./polyfill.js";
import { z } from "zod";
import type { SandboxStatus } from "@microsandbox/contract";
import {
  check,
  cpusSchema,
  envKeySchema,
  envValueSchema,
  labelKeySchema,
  labelValueSchema,
  MAX_LABELS,
  memorySchema,
  msbHome,
  nameSchema,
  parseStoredConfig,
  secondsSchema,
  workdirSchema,
  type SandboxConfig,
} from "./config.js";
import { DEFAULT_STOP_TIMEOUT_MS } from "./defaults.js";
import { InvalidConfigError, SandboxStillRunningError } from "./errors.js";
import { checkBootstrapSizes } from "./input-limits.js";
import { startExisting } from "./launch.js";
import { closeQuietly, readRecord, RELEASE_TIMEOUT_MS, sleep, stopByName, type SandboxRecord } from "./lifecycle.js";
import { callNative, native, type NativeBinding } from "./native.js";

/** How to apply a modification (the reference's names). Default `"no_restart"`. */
export type ModificationPolicy = "no_restart" | "next_start" | "restart";
/** When or whether a planned change can take effect. */
export type ModificationDisposition = "live" | "next start" | "requires restart" | "unsupported";
/** What a config change does, for display. */
export type ChangeKind = "added" | "updated" | "removed";
/** What a secret change does (the reference's values; this SDK plans no secret changes). */
export type SecretChangeKind = "added" | "rotated" | "removed" | "renamed" | "hosts updated" | "placeholder updated";
/** Resources a live resize reports on (never populated here: nothing resizes live). */
export type ResourceKind = "cpus" | "memory";
export type ResourceConvergenceState = "accepted" | "converging" | "applied" | "guest-refused" | "failed";

/** The desired state of one secret (the reference's shape; refused here, see {@link ModifyOptions.secrets}). */
export interface SecretModifySpec {
  env?: string;
  value?: string;
  store?: string;
  placeholder?: string;
  allowedHosts?: string[];
}

/**
 * What `modify()` takes; every field is optional and an omitted one is left as it is.
 * `memory` / `maxMemory` are MiB.
 */
export interface ModifyOptions {
  /** vCPUs, 1-255, at most the sandbox's `maxCpus` (or the `maxCpus` given here). */
  cpus?: number;
  /** New upper bound for `cpus`, at least the (new) `cpus`. */
  maxCpus?: number;
  /** Guest memory in MiB, at least 128, at most the sandbox's `maxMemory` (or the one given here). */
  memory?: number;
  /** New upper bound for `memory`, in MiB. */
  maxMemory?: number;
  /** Refused (a conflict): the writable disk has a fixed size (4 GiB, sparse) here. */
  rootDiskSize?: number;
  /** Environment variables to set (for every command, from the next start). */
  env?: Record<string, string>;
  /** Environment variables to remove. */
  envRemove?: string[];
  /** Labels to set (same rules as `builder.label()`). */
  labels?: Record<string, string>;
  /** Label keys to remove. */
  labelsRemove?: string[];
  /** Default working directory of commands (absolute). */
  workdir?: string;
  /** Idle timeout in seconds (this SDK's addition); `null` removes it. */
  idleTimeout?: number | null;
  /** Refused (a conflict): secrets are given again with `Sandbox.start(name, { secrets })`. */
  secrets?: Record<string, SecretModifySpec>;
  /** Refused (a conflict), as {@link secrets}. */
  secretsRemove?: string[];
  /** Default `"no_restart"`. */
  policy?: ModificationPolicy;
  /** Only plan: change nothing. Default `false`. */
  dryRun?: boolean;
}

/** A planned change of an ordinary configuration field. */
export interface ConfigPlannedChange {
  kind: "config";
  /** `cpus`, `max_cpus`, `memory`, `max_memory`, `env`, `label`, `workdir`, `idle_timeout`. */
  field: string;
  change: ChangeKind;
  before?: string;
  after?: string;
  disposition: ModificationDisposition;
  reason?: string;
}

/** A planned secret change (the reference's shape; this SDK never plans one). */
export interface SecretPlannedChange {
  kind: "secret";
  field: string;
  name: string;
  change: SecretChangeKind;
  beforeRef?: string;
  afterRef?: string;
  disposition: ModificationDisposition;
  allowHosts: string[];
  reason?: string;
}

export type PlannedChange = ConfigPlannedChange | SecretPlannedChange;

/** A conflict: the modification cannot be applied as asked. */
export interface ModificationConflict {
  field: string;
  message: string;
}

export interface ModificationWarning {
  field: string;
  message: string;
}

/** A live resize's outcome (never populated here). */
export interface ResourceResizeStatus {
  resource: ResourceKind;
  requested: string;
  actual: string;
  enforced: string;
  state: ResourceConvergenceState;
}

/** What `modify()` returns: the plan, and whether it was applied. */
export interface SandboxModificationPlan {
  sandbox: string;
  /** The sandbox's status the plan was made for. */
  status: string;
  applied: boolean;
  policy: ModificationPolicy;
  changes: PlannedChange[];
  conflicts: ModificationConflict[];
  warnings: ModificationWarning[];
  resizeStatus: ResourceResizeStatus[];
}

const LIVE_RESIZE_UNAVAILABLE = "live CPU and memory resize are not available in this runtime";
const LIVE_EXEC_DEFAULT_UPDATE_UNAVAILABLE = "env and workdir are given to the guest at boot: a running sandbox sees the change after a restart";
const LIVE_LABEL_UPDATE_UNAVAILABLE = "labels of a running sandbox are changed with policy next_start or restart";
const LIVE_POLICY_UPDATE_UNAVAILABLE = "the idle timeout is read by the sandbox's runtime at boot";
const FUTURE_EXECS_ONLY = "applies to future execs only; running processes keep their current environment";

const policySchema = z.enum(["no_restart", "next_start", "restart"], { error: 'must be "no_restart", "next_start" or "restart"' });
const stringList = z.array(z.string({ error: "must be strings" }), { error: "must be an array of strings" });
const stringRecord = z.record(z.string(), z.string({ error: "values must be strings" }), { error: "must be an object of strings" });

/** The options, checked (types and ranges; relations between fields are conflicts). */
interface Patch {
  cpus?: number;
  maxCpus?: number;
  memory?: number;
  maxMemory?: number;
  rootDiskSize?: unknown;
  env: [string, string][];
  envRemove: string[];
  labels: [string, string][];
  labelsRemove: string[];
  workdir?: string;
  idleTimeout?: number | null;
  secrets: string[];
  secretsRemove: string[];
  policy: ModificationPolicy;
  dryRun: boolean;
}

const KNOWN = new Set([
  "cpus",
  "maxCpus",
  "memory",
  "maxMemory",
  "rootDiskSize",
  "env",
  "envRemove",
  "labels",
  "labelsRemove",
  "workdir",
  "idleTimeout",
  "secrets",
  "secretsRemove",
  "policy",
  "dryRun",
]);

/** Check `modify()`'s options at the API boundary: `InvalidConfigError` naming the option. */
export function checkModifyOptions(opts: unknown): Patch {
  if (opts === undefined || opts === null) opts = {};
  if (typeof opts !== "object" || Array.isArray(opts)) throw new InvalidConfigError("options", "invalid options: modify() takes an object such as { cpus: 2, dryRun: true }");
  const o = opts as Record<string, unknown>;
  const unknown = Object.keys(o).find((k) => !KNOWN.has(k));
  if (unknown !== undefined) throw new InvalidConfigError("options", `invalid options: unknown option ${JSON.stringify(unknown)}`);
  const p: Patch = { env: [], envRemove: [], labels: [], labelsRemove: [], secrets: [], secretsRemove: [], policy: "no_restart", dryRun: false };
  if (o.cpus !== undefined) p.cpus = check(cpusSchema, "cpus", o.cpus);
  if (o.maxCpus !== undefined) p.maxCpus = check(cpusSchema, "maxCpus", o.maxCpus);
  if (o.memory !== undefined) p.memory = check(memorySchema, "memory", o.memory);
  if (o.maxMemory !== undefined) p.maxMemory = check(memorySchema, "maxMemory", o.maxMemory);
  if (o.rootDiskSize !== undefined) p.rootDiskSize = o.rootDiskSize;
  if (o.env !== undefined) {
    for (const [k, v] of Object.entries(check(stringRecord, "env", o.env))) {
      const key = check(envKeySchema, "env", k, "env key");
      p.env.push([key, check(envValueSchema, "env", v, `env value of ${key}`)]);
    }
  }
  if (o.envRemove !== undefined) p.envRemove = check(stringList, "envRemove", o.envRemove);
  if (o.labels !== undefined) {
    const given = Object.entries(check(stringRecord, "labels", o.labels));
    if (given.length > MAX_LABELS) throw new InvalidConfigError("labels", `invalid labels: at most ${MAX_LABELS} labels per sandbox`);
    for (const [k, v] of given) {
      const key = check(labelKeySchema, "labels", k, "label key");
      p.labels.push([key, check(labelValueSchema, "labels", v, `label value of ${key}`)]);
    }
  }
  if (o.labelsRemove !== undefined) p.labelsRemove = check(stringList, "labelsRemove", o.labelsRemove);
  if (o.workdir !== undefined) p.workdir = check(workdirSchema, "workdir", o.workdir);
  if (o.idleTimeout !== undefined) p.idleTimeout = o.idleTimeout === null ? null : check(secondsSchema, "idleTimeout", o.idleTimeout);
  if (o.secrets !== undefined) p.secrets = Object.keys(check(z.record(z.string(), z.unknown(), { error: "must be an object" }), "secrets", o.secrets));
  if (o.secretsRemove !== undefined) p.secretsRemove = check(stringList, "secretsRemove", o.secretsRemove);
  if (o.policy !== undefined) p.policy = check(policySchema, "policy", o.policy);
  if (o.dryRun !== undefined) p.dryRun = check(z.boolean({ error: "must be a boolean" }), "dryRun", o.dryRun);
  return p;
}

type Kind = "stopped" | "running" | "transitional";

function kindOf(status: SandboxStatus | string): Kind {
  if (status === "running" || status === "draining" || status === "paused") return "running";
  if (status === "starting") return "transitional";
  return "stopped";
}

/** `2 GiB` / `640 MiB`, as the reference prints sizes. */
export function formatMib(mib: number): string {
  return mib >= 1024 && mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`;
}

function disposition(kind: Kind, policy: ModificationPolicy): ModificationDisposition {
  if (policy === "next_start" || kind === "stopped") return "next start";
  if (kind === "transitional") return "unsupported";
  return "requires restart";
}

function reasonFor(kind: Kind, policy: ModificationPolicy, status: string, running: string): string | undefined {
  switch (disposition(kind, policy)) {
    case "requires restart":
      return running;
    case "unsupported":
      return `cannot modify while sandbox is ${status}`;
    default:
      return undefined;
  }
}

function change(
  field: string,
  kind: ChangeKind,
  before: string | undefined,
  after: string | undefined,
  d: ModificationDisposition,
  reason: string | undefined,
): ConfigPlannedChange {
  const c: ConfigPlannedChange = { kind: "config", field, change: kind, disposition: d };
  if (before !== undefined) c.before = before;
  if (after !== undefined) c.after = after;
  if (reason !== undefined) c.reason = reason;
  return c;
}

/**
 * The plan for `patch` against a sandbox's stored configuration and status (pure: the
 * unit tests drive it). `applied` is false.
 */
export function planModification(name: string, status: SandboxStatus | string, config: SandboxConfig, patch: Patch): SandboxModificationPlan {
  const kind = kindOf(status);
  const policy = patch.policy;
  const d = disposition(kind, policy);
  const changes: PlannedChange[] = [];
  const conflicts: ModificationConflict[] = [];
  const warnings: ModificationWarning[] = [];
  const resizeWarning = (field: string) => {
    if (kind === "running" && policy !== "next_start") warnings.push({ field, message: LIVE_RESIZE_UNAVAILABLE });
  };
  const futureExecWarning = (field: string) => {
    if (kind !== "running" || policy === "no_restart") return;
    if (!warnings.some((w) => w.field === field && w.message === FUTURE_EXECS_ONLY)) warnings.push({ field, message: FUTURE_EXECS_ONLY });
  };

  // Resources, within their bounds.
  const cpus = patch.cpus ?? config.cpus;
  const memory = patch.memory ?? config.memoryMib;
  if (patch.cpus !== undefined && patch.cpus !== config.cpus) {
    changes.push(change("cpus", "updated", String(config.cpus), String(patch.cpus), d, reasonFor(kind, policy, status, LIVE_RESIZE_UNAVAILABLE)));
    resizeWarning("cpus");
  }
  if (patch.maxCpus !== undefined && patch.maxCpus !== config.maxCpus) {
    changes.push(
      change("max_cpus", config.maxCpus === null ? "added" : "updated", config.maxCpus === null ? undefined : String(config.maxCpus), String(patch.maxCpus), d,
        reasonFor(kind, policy, status, "max_cpus defines boot-time capacity and cannot be raised live")),
    );
  }
  if (patch.memory !== undefined && patch.memory !== config.memoryMib) {
    changes.push(change("memory", "updated", formatMib(config.memoryMib), formatMib(patch.memory), d, reasonFor(kind, policy, status, LIVE_RESIZE_UNAVAILABLE)));
    resizeWarning("memory");
  }
  if (patch.maxMemory !== undefined && patch.maxMemory !== config.maxMemoryMib) {
    changes.push(
      change("max_memory", config.maxMemoryMib === null ? "added" : "updated", config.maxMemoryMib === null ? undefined : formatMib(config.maxMemoryMib), formatMib(patch.maxMemory), d,
        reasonFor(kind, policy, status, "max_memory defines boot-time capacity and cannot be raised live")),
    );
  }
  if (patch.maxCpus !== undefined && patch.maxCpus < cpus) {
    conflicts.push({ field: "max_cpus", message: `max_cpus ${patch.maxCpus} is lower than requested cpus ${cpus}` });
  } else if (patch.maxCpus === undefined && config.maxCpus !== null && cpus > config.maxCpus) {
    conflicts.push({ field: "cpus", message: `cpus ${cpus} exceeds the sandbox's max_cpus ${config.maxCpus}; raise maxCpus in the same modification` });
  }
  if (patch.maxMemory !== undefined && patch.maxMemory < memory) {
    conflicts.push({ field: "max_memory", message: `max_memory ${formatMib(patch.maxMemory)} is lower than requested memory ${formatMib(memory)}` });
  } else if (patch.maxMemory === undefined && config.maxMemoryMib !== null && memory > config.maxMemoryMib) {
    conflicts.push({
      field: "memory",
      message: `memory ${formatMib(memory)} exceeds the sandbox's max_memory ${formatMib(config.maxMemoryMib)}; raise maxMemory in the same modification`,
    });
  }
  if (patch.rootDiskSize !== undefined) {
    conflicts.push({ field: "root_disk_size", message: "the writable disk has a fixed size here (4 GiB, sparse on the host); root disk size cannot be modified" });
  }

  // Environment, labels, workdir, idle timeout.
  const env = new Map(config.env);
  const secretEnvs = new Set((config.network?.secrets ?? []).map((r) => r.envVar));
  for (const [k, v] of patch.env) {
    if (secretEnvs.has(k)) {
      conflicts.push({ field: "env", message: `env ${k} holds a secret's placeholder; it cannot be set` });
      continue;
    }
    const before = env.get(k);
    if (before === v) continue;
    changes.push(change("env", before === undefined ? "added" : "updated", before === undefined ? undefined : `${k}=${before}`, `${k}=${v}`, d, reasonFor(kind, policy, status, LIVE_EXEC_DEFAULT_UPDATE_UNAVAILABLE)));
    futureExecWarning("env");
  }
  for (const k of patch.envRemove) {
    const before = env.get(k);
    if (before === undefined) continue;
    changes.push(change("env", "removed", `${k}=${before}`, undefined, d, reasonFor(kind, policy, status, LIVE_EXEC_DEFAULT_UPDATE_UNAVAILABLE)));
    futureExecWarning("env");
  }
  const labels = new Map(Object.entries(config.labels));
  for (const [k, v] of patch.labels) {
    const before = labels.get(k);
    if (before === v) continue;
    changes.push(change("label", before === undefined ? "added" : "updated", before === undefined ? undefined : `${k}=${before}`, `${k}=${v}`, d, reasonFor(kind, policy, status, LIVE_LABEL_UPDATE_UNAVAILABLE)));
  }
  for (const k of patch.labelsRemove) {
    const before = labels.get(k);
    if (before === undefined) continue;
    changes.push(change("label", "removed", `${k}=${before}`, undefined, d, reasonFor(kind, policy, status, LIVE_LABEL_UPDATE_UNAVAILABLE)));
  }
  if (patch.workdir !== undefined && patch.workdir !== config.workdir) {
    changes.push(change("workdir", config.workdir === null ? "added" : "updated", config.workdir ?? undefined, patch.workdir, d, reasonFor(kind, policy, status, LIVE_EXEC_DEFAULT_UPDATE_UNAVAILABLE)));
    futureExecWarning("workdir");
  }
  if (patch.idleTimeout !== undefined && patch.idleTimeout !== config.idleTimeoutSecs) {
    const before = config.idleTimeoutSecs === null ? undefined : `${config.idleTimeoutSecs}s`;
    const after = patch.idleTimeout === null ? undefined : `${patch.idleTimeout}s`;
    const ck: ChangeKind = before === undefined ? "added" : after === undefined ? "removed" : "updated";
    changes.push(change("idle_timeout", ck, before, after, d, reasonFor(kind, policy, status, LIVE_POLICY_UPDATE_UNAVAILABLE)));
  }
  for (const [k] of patch.env) {
    if (patch.envRemove.includes(k)) conflicts.push({ field: "env", message: `env ${k} is both set and removed in the same modification` });
  }
  for (const [k] of patch.labels) {
    if (patch.labelsRemove.includes(k)) conflicts.push({ field: "label", message: `label ${k} is both set and removed in the same modification` });
  }
  const labelCount = new Set([...labels.keys(), ...patch.labels.map(([k]) => k)].filter((k) => !patch.labelsRemove.includes(k))).size;
  if (labelCount > MAX_LABELS) conflicts.push({ field: "label", message: `a sandbox has at most ${MAX_LABELS} labels (this would make ${labelCount})` });
  for (const n of [...patch.secrets, ...patch.secretsRemove]) {
    conflicts.push({
      field: "secret",
      message: `secret ${n}: secrets cannot be modified here; their values are given at each start (Sandbox.start(name, { secrets })), their rules at create`,
    });
  }
  if (policy === "restart" && kind === "running" && (config.network?.secrets?.length ?? 0) > 0 && changes.length > 0) {
    conflicts.push({
      field: "policy",
      message: "a restart needs the secrets' values again, which are never stored: stop the sandbox, modify it, then Sandbox.start(name, { secrets })",
    });
  }
  return { sandbox: name, status, applied: false, policy, changes, conflicts, warnings, resizeStatus: [] };
}

/** The option a conflict's field stands for, as `InvalidConfigError.field`. */
const OPTION_OF: Record<string, string> = {
  cpus: "cpus",
  max_cpus: "maxCpus",
  memory: "memory",
  max_memory: "maxMemory",
  root_disk_size: "rootDiskSize",
  env: "env",
  label: "labels",
  workdir: "workdir",
  idle_timeout: "idleTimeout",
  secret: "secrets",
  policy: "policy",
};

/** The stored configuration JSON with the patch applied (other keys are kept as stored). */
export function applyToStored(stored: Record<string, unknown>, config: SandboxConfig, patch: Patch): Record<string, unknown> {
  const out: Record<string, unknown> = { ...stored };
  if (patch.cpus !== undefined) out.cpus = patch.cpus;
  if (patch.maxCpus !== undefined) out.maxCpus = patch.maxCpus;
  if (patch.memory !== undefined) out.memoryMib = patch.memory;
  if (patch.maxMemory !== undefined) out.maxMemoryMib = patch.maxMemory;
  if (patch.env.length > 0 || patch.envRemove.length > 0) {
    const env = new Map(config.env);
    for (const [k, v] of patch.env) env.set(k, v);
    for (const k of patch.envRemove) env.delete(k);
    out.env = [...env];
  }
  if (patch.labels.length > 0 || patch.labelsRemove.length > 0) {
    const labels = new Map(Object.entries(config.labels));
    for (const [k, v] of patch.labels) labels.set(k, v);
    for (const k of patch.labelsRemove) labels.delete(k);
    out.labels = Object.fromEntries(labels);
  }
  if (patch.workdir !== undefined) out.workdir = patch.workdir;
  if (patch.idleTimeout !== undefined) out.idleTimeoutSecs = patch.idleTimeout;
  return out;
}

/** `sb.modify()` / `handle.modify()`: plan, then (unless a dry run) apply. */
export async function modifySandbox(name: string, options: unknown): Promise<SandboxModificationPlan> {
  const n = check(nameSchema, "name", name);
  const patch = checkModifyOptions(options);
  const home = msbHome();
  const binding = await callNative(() => native());
  const rec = await readRecord(binding, home, n);
  const config = parseStoredConfig(rec.configJson, n);
  const plan = planModification(n, rec.status, config, patch);
  if (patch.dryRun) return plan;

  const conflict = plan.conflicts[0];
  if (conflict !== undefined) {
    throw new InvalidConfigError(OPTION_OF[conflict.field] ?? conflict.field, `cannot apply modification: ${conflict.message}`);
  }
  for (const c of plan.changes) {
    const what = c.kind === "secret" ? `secret ${c.name}` : c.field;
    if (c.disposition === "unsupported") {
      throw new SandboxStillRunningError(`cannot apply modification to sandbox ${n}: ${what} is unsupported (${c.reason ?? "not now"})`);
    }
    if (c.disposition === "requires restart" && policyOf(plan) !== "restart") {
      throw new SandboxStillRunningError(
        `cannot apply modification to sandbox ${n}: ${what} requires restart (${c.reason ?? "it is read at boot"}); stop the sandbox first, or use policy "next_start" or "restart"`,
      );
    }
  }
  if (plan.changes.length === 0) return { ...plan, applied: true };

  const stored = JSON.parse(rec.configJson) as Record<string, unknown>;
  const next = applyToStored(stored, config, patch);
  const nextJson = JSON.stringify(next);
  // What is stored must read back, and the guest's bootstrap must still fit its frame.
  const nextConfig = parseStoredConfig(nextJson, n);
  checkBootstrapSizes(nextConfig);
  const restart = plan.changes.some((c) => c.disposition === "requires restart");
  if (restart) await stopByName(binding, home, n, DEFAULT_STOP_TIMEOUT_MS);
  await persist(binding, home, n, nextJson, rec, restart);
  if (restart) {
    const sb = await startExisting(n, false);
    closeQuietly({ close: () => sb[Symbol.asyncDispose]() });
  }
  return { ...plan, applied: true };
}

function policyOf(plan: SandboxModificationPlan): ModificationPolicy {
  return plan.policy;
}

/** Store the new configuration; a running sandbox (policy next_start) keeps running with its old one. */
async function persist(binding: NativeBinding, home: string, name: string, json: string, rec: SandboxRecord, afterStop: boolean): Promise<void> {
  const whileRunning = !afterStop && kindOf(rec.status) === "running";
  // After a stop the runtime lets go of the sandbox's lock a moment after its VM is gone.
  const deadline = Date.now() + (afterStop ? RELEASE_TIMEOUT_MS : 0);
  for (;;) {
    try {
      await callNative(() => binding.updateSandboxConfig(home, name, json, whileRunning));
      return;
    } catch (e) {
      if (!(e instanceof SandboxStillRunningError) || Date.now() >= deadline) throw e;
      await sleep(100);
    }
  }
}
