/**
 * Starting a sandbox's runtime and connecting to its guest agent: a new sandbox (the
 * builder), a stopped one booted again (`Sandbox.start`), a running one reached from
 * its record (`handle.connect()`).
 */
import "./polyfill.js";
import { join } from "node:path";
import type { PullProgress } from "@microsandbox/oci";
import {
  bootTimeoutMs,
  check,
  checkBindSource,
  copyConfig,
  msbHome,
  nameSchema,
  parseStoredConfig,
  persistableConfig,
  placeholderEnv,
  startSecretValues,
  type InitConfig,
  type PatchOp,
  type SandboxConfig,
  type ThpPolicy,
} from "./config.js";
import { DEFAULT_SHELL, DEFAULT_STOP_TIMEOUT_MS } from "./defaults.js";
import { ExecFailedError, fromNative, InvalidConfigError, SandboxFsOpsError, SandboxStillRunningError } from "./errors.js";
import type { ExecOutput } from "./exec.js";
import { checkBootstrapSizes } from "./input-limits.js";
import { findRecord, isLive, readRecord, removeWhenStopped, stopByName } from "./lifecycle.js";
import { callNative, native, type NativeAgentClient, type NativeBinding, type NativeSandboxConfig } from "./native.js";
import { resolveRootfs } from "./rootfs.js";
import { checkNamedVolumesMountable } from "./volume.js";
import { applyPatches, installScripts } from "./setup.js";
// Type only (erased): sandbox.ts imports this module, see provideSandbox.
import type { Sandbox } from "./sandbox.js";

/**
 * The Sandbox class, handed over by sandbox.ts when it loads. The public classes make
 * each other (Sandbox.builder() a SandboxBuilder whose create() makes a Sandbox here,
 * Sandbox.get() a SandboxHandle whose connect() does), so one direction must be passed
 * at run time rather than imported, or the modules import each other: this one. The
 * package index imports sandbox.ts, so the class is here before any call.
 */
let SandboxClass: typeof Sandbox | undefined;

/** @internal Called once by sandbox.ts with its Sandbox class. */
export function provideSandbox(cls: typeof Sandbox): void {
  SandboxClass = cls;
}

function sandboxClass(): typeof Sandbox {
  if (SandboxClass === undefined) throw new Error("internal: sandbox.js was not loaded (import the SDK from its index)");
  return SandboxClass;
}

export interface LaunchOptions {
  mode: "create" | "start";
  attached: boolean;
  /** Removed by its runtime when its creator exits without stopping it. */
  ephemeral?: boolean;
  replace?: boolean;
  /** With `replace`: how long the old sandbox gets to stop (0: killed at once). Default 10 s. */
  replaceTimeoutMs?: number;
  /** mode "start": the stored configuration, as stored. */
  storedConfig?: unknown;
  onPullProgress?: (p: PullProgress) => void;
  /** mode "create": patch steps to apply after boot. */
  patches?: PatchOp[];
  /** mode "create": the writable disk starts as a copy of this file (`fromSnapshot`). */
  upperSource?: string;
  /** mode "create": a fork (fork.ts): restore the state its parent saved in this directory. */
  forkFrom?: string;
}

/**
 * Boot a sandbox: find its root filesystem (pulling an OCI image if needed), hand the
 * configuration to msb-runtime, connect to the guest agent. Used by the builder
 * (`mode: "create"`, a new sandbox) and by `Sandbox.start` (`mode: "start"`: an existing
 * stopped sandbox, booted again from its stored configuration with its disk kept).
 */
export async function launch(given: SandboxConfig, o: LaunchOptions): Promise<Sandbox> {
  // Host directories may have gone since the configuration was made (a restart).
  for (const v of given.volumes) if (v.kind === "bind") checkBindSource(v.source ?? "", v.guestPath);
  // A disk volume needs its image and no other user (volume.ts): checked before anything starts.
  await checkNamedVolumesMountable(given.volumes, msbHome(), given.name);
  const home = msbHome();
  const binding = await callNative(() => native());
  const assets = await callNative(() => binding.assetPaths());
  // A truncated or altered kernel would hang the boot: check the guest files first (hashed
  // once per file version: `$MSB_HOME/cache` remembers what an earlier process checked).
  await callNative(() => binding.verifyGuestAssets(join(home, "cache")));
  const { rootfs, config } = await resolveRootfs(given, home, assets.defaultImage, o.mode, o.onPullProgress);
  // The image's environment is merged in now: the bootstrap must still fit its frame
  // (with the secrets' placeholders, which msb-runtime adds to it).
  const placeholders = placeholderEnv(config.network);
  const secretEnvs = new Set(placeholders.map(([k]) => k));
  // An image variable of a secret's name gives way to the placeholder.
  const env = config.env.filter(([k]) => !secretEnvs.has(k));
  checkBootstrapSizes({ ...config, env: [...env, ...placeholders] });
  if (o.replace) await replaceExisting(binding, home, config.name, o.replaceTimeoutMs ?? DEFAULT_STOP_TIMEOUT_MS);
  const nativeConfig: NativeSandboxConfig = {
    name: config.name,
    msbHome: home,
    runtimePath: assets.runtime,
    kernel: assets.kernel,
    initramfs: assets.initramfs,
    image: rootfs,
    cpus: config.cpus,
    memoryMib: config.memoryMib,
    env,
    workdir: config.workdir,
    hostname: config.hostname,
    user: config.user,
    mode: o.mode,
    attached: o.attached,
    ephemeral: o.ephemeral === true || config.ephemeral === true,
    memoryTemplate: config.memoryTemplate,
    bootTimeoutMs: bootTimeoutMs(),
    idleTimeoutSecs: config.idleTimeoutSecs,
    maxDurationSecs: config.maxDurationSecs,
    mounts: config.volumes.map((v) => ({ guestPath: v.guestPath, kind: v.kind, source: v.source, readonly: v.readonly, sizeMiB: v.sizeMiB })),
    imageFstype: config.imageFstype,
    upperSource: o.mode === "create" ? (o.upperSource ?? null) : null,
    forkFrom: o.mode === "create" ? (o.forkFrom ?? null) : null,
    logLevel: config.logLevel,
    network: config.network,
    // A restart stores back exactly what was stored.
    sdkConfig: o.storedConfig !== undefined ? o.storedConfig : persistableConfig(config),
  };
  // Only ever on msb-runtime's stdin (startSandbox writes the JSON there); it never
  // stores them. A secret without a value has its placeholder blocked.
  const values = config.secretValues ?? [];
  if (values.length > 0) nativeConfig.secretValues = values.map((v) => ({ envVar: v.envVar, value: v.value }));
  // (A create whose boot fails leaves nothing behind: msb-runtime forgets the sandbox.)
  const info = await callNative(() => binding.startSandbox(JSON.stringify(nativeConfig)));
  let client: NativeAgentClient;
  try {
    client = await callNative(() => binding.AgentClient.connect(info.socketPath));
  } catch (e) {
    // The VM is up but unreachable: end it rather than leave it running.
    await callNative(() => binding.killSandbox(home, config.name)).catch(() => {
      try {
        process.kill(info.pid, "SIGKILL");
      } catch {
        // already gone
      }
    });
    throw e;
  }
  // The Sandbox keeps no secret value.
  const sb = new (sandboxClass())(copyConfig(config), info, client, o.attached, home);
  // Before anything of the caller's runs: the default user exists (a new sandbox), then
  // scripts (every boot) and patches (the first one).
  // A fork is its parent's guest as it was: user checked, scripts, patches, thp and init
  // all done there already.
  if (o.forkFrom !== undefined) return sb;
  const checkUser = o.mode === "create" && config.user !== null;
  const init = config.init !== null && config.init.cmd !== "auto" ? config.init : null;
  if (checkUser || config.scripts.length > 0 || (o.patches?.length ?? 0) > 0 || config.thp !== null || init !== null) {
    try {
      if (checkUser) await checkDefaultUser(sb, config.user as string);
      const fs = sb.fs();
      await installScripts(fs, config.scripts);
      if (o.mode === "create" && o.patches) await applyPatches(fs, o.patches);
      if (config.thp !== null) await setThp(sb, config.thp);
      if (init !== null) await startInit(sb, init, config.shell ?? DEFAULT_SHELL);
    } catch (e) {
      await sb.kill().catch(() => undefined);
      if (o.mode === "create") await removeWhenStopped(binding, home, config.name, { missingOk: true }).catch(() => undefined);
      throw fromNative(e);
    }
  }
  return sb;
}

/** How the agent reports a user or group it cannot find (crates/agent/src/exec.rs, resolve_user). */
const UNKNOWN_USER = /^unknown (user|group): /;

/**
 * The sandbox's default user (from the builder or the image) must exist in the guest:
 * run `true` as it (an exec that names no user gets the default) and turn the agent's
 * "unknown user" / "unknown group" into InvalidConfigError("user"). An image without a
 * `true` program cannot be checked this way; its first command reports a bad user.
 */
async function checkDefaultUser(sb: Sandbox, user: string): Promise<void> {
  try {
    await sb.execWith("true", (b) => b.maxOutputBytes(64 * 1024));
  } catch (e) {
    if (e instanceof ExecFailedError) {
      if (UNKNOWN_USER.test(e.reason)) {
        throw new InvalidConfigError("user", `invalid user ${JSON.stringify(user)}: ${e.reason} (the image's /etc/passwd or /etc/group has no such entry)`, {
          cause: e,
        });
      }
      if (e.reason.startsWith("command not found")) return;
    }
    throw e;
  }
}

const THP_PATH = "/sys/kernel/mm/transparent_hugepage/enabled";

/** `.thp(policy)`: the guest kernel's transparent huge-page policy, at every boot. */
async function setThp(sb: Sandbox, policy: ThpPolicy): Promise<void> {
  try {
    await sb.fs().write(THP_PATH, `${policy}\n`);
  } catch (e) {
    if (e instanceof SandboxFsOpsError) {
      throw new InvalidConfigError("thp", `invalid thp ${JSON.stringify(policy)}: the guest kernel did not take it (${THP_PATH}: ${e.message})`, { cause: e });
    }
    throw e;
  }
}

/**
 * `.init(path, args)`: the agent stays PID 1; the program is started as a background
 * process of it (its own process, stdio on /dev/null), through the sandbox's shell so
 * that the starting session ends at once (a session left open would keep the sandbox
 * busy for the idle timeout and a drain).
 */
async function startInit(sb: Sandbox, init: InitConfig, shell: string): Promise<void> {
  const fs = sb.fs();
  if (!(await fs.exists(init.cmd))) {
    throw new InvalidConfigError("init", `invalid init ${JSON.stringify(init.cmd)}: no such file in the guest`);
  }
  let out: ExecOutput;
  try {
    out = await sb.execWith(shell, (b) => {
      b.args(["-c", 'exec "$0" "$@" </dev/null >/dev/null 2>&1 &', init.cmd, ...init.args]).user("0").maxOutputBytes(64 * 1024);
      for (const [k, v] of init.env) b.env(k, v);
      return b;
    });
  } catch (e) {
    if (e instanceof ExecFailedError) {
      throw new InvalidConfigError("init", `invalid init ${JSON.stringify(init.cmd)}: it is started through the sandbox's shell ${shell}, which could not run (${e.reason})`, {
        cause: e,
      });
    }
    throw e;
  }
  if (!out.success) throw new InvalidConfigError("init", `invalid init ${JSON.stringify(init.cmd)}: starting it failed (${out.stderr().trim() || `exit ${out.code}`})`);
}

/** `.replace()`: stop (or kill) and remove a sandbox of that name, if there is one. */
async function replaceExisting(binding: NativeBinding, home: string, name: string, timeoutMs: number): Promise<void> {
  const rec = await findRecord(binding, home, name);
  if (rec === undefined) return;
  if (isLive(rec.status)) {
    if (timeoutMs === 0) await callNative(() => binding.killSandbox(home, name));
    else await stopByName(binding, home, name, timeoutMs);
  }
  await removeWhenStopped(binding, home, name, { missingOk: true });
}

/** What `Sandbox.start` and a handle's `start` take. */
export interface StartOptions {
  /**
   * The values of the sandbox's secrets, by env var: `{ API_KEY: key }`. They are never
   * stored, so a restart needs them again; a secret left out has its placeholder
   * blocked (runtime.log says so).
   */
  secrets?: Record<string, string>;
}

/** `Sandbox.start` / `startDetached`: boot a stopped (or crashed) sandbox again. */
export async function startExisting(name: string, attached: boolean, options?: StartOptions): Promise<Sandbox> {
  const n = check(nameSchema, "name", name);
  const home = msbHome();
  const binding = await callNative(() => native());
  const rec = await readRecord(binding, home, n);
  if (isLive(rec.status)) throw new SandboxStillRunningError(`sandbox ${n} is ${rec.status}; stop it first`);
  const config = parseStoredConfig(rec.configJson, n);
  const values = startSecretValues(config, options);
  if (values.length > 0) config.secretValues = values;
  return launch(config, { mode: "start", attached, ephemeral: config.ephemeral, storedConfig: JSON.parse(rec.configJson) as unknown });
}

/** @internal Boot a handle's sandbox from a record (`handle.connect()`). */
export async function connectRecord(
  binding: NativeBinding,
  home: string,
  name: string,
  config: SandboxConfig,
  pid: number,
  socketPath: string,
): Promise<Sandbox> {
  const client = await callNative(() => binding.AgentClient.connect(socketPath));
  return new (sandboxClass())(config, { pid, socketPath, sandboxDir: join(home, "sandboxes", name) }, client, false, home);
}
