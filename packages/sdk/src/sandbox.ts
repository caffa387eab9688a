import "./polyfill.js";
import { join } from "node:path";
import { parseReference, pullImage, type ImageConfig, type PulledImage, type PullProgress } from "@microsandbox/oci";
import { NetworkBuilder } from "@microsandbox/netstack";
import { ImageBuilder, MountBuilder, PatchBuilder } from "./builders.js";
import {
  bootTimeoutMs,
  check,
  checkBindSource,
  cmdSchema,
  copyConfig,
  msbHome,
  nameSchema,
  parseStoredConfig,
  persistableConfig,
  timeoutMsSchema,
  validateAll,
  validateConfig,
  type LogLevel,
  type PatchOp,
  type PullPolicy,
  type RawSandboxConfig,
  type RegistryAuth,
  type SandboxConfig,
} from "./config.js";
import {
  ExecFailedError,
  fromNative,
  fromOci,
  InvalidConfigError,
  SandboxDrainingError,
  SandboxNotRunningError,
  SandboxStillRunningError,
} from "./errors.js";
import { ExecHandle, type ExecOutput, type ExitStatus, type SessionControls } from "./exec.js";
import { buildExecOptions, resolveExecOptions, type ExecOptionsBuilder } from "./exec-options.js";
import { SandboxFs } from "./fs.js";
import { checkBootstrapSizes, checkScript } from "./input-limits.js";
import { applyPatches, installScripts } from "./setup.js";
import { SandboxHandle } from "./handle.js";
import {
  closeQuietly,
  findRecord,
  finalExit,
  isLive,
  readRecord,
  removeWhenStopped,
  stopByName,
  toRecord,
} from "./lifecycle.js";
import { MetricsStream, toSandboxMetrics, type SandboxMetrics } from "./metrics.js";
import {
  callNative,
  native,
  type NativeAgentClient,
  type NativeBinding,
  type NativeRuntimeInfo,
  type NativeSandboxConfig,
} from "./native.js";

/** Default graceful-stop timeout of {@link Sandbox.stop}, in milliseconds. */
export const DEFAULT_STOP_TIMEOUT_MS = 10_000;

/** The shell {@link Sandbox.shell} runs scripts with. */
export const DEFAULT_SHELL = "/bin/sh";

/**
 * Configures a sandbox. Setters only record their argument; {@link create}
 * validates the whole configuration (zod) before anything is started, and
 * rejects with {@link InvalidConfigError} naming the first bad field.
 */
export class SandboxBuilder {
  readonly #raw: RawSandboxConfig;
  #onPullProgress: ((p: PullProgress) => void) | undefined;
  #replace = false;
  #ephemeral = false;
  readonly #net = new NetworkBuilder();

  /** @internal Use {@link Sandbox.builder}. */
  constructor(name: string) {
    this.#raw = { name, env: [], scripts: [], patches: [], volumes: [] };
  }

  /**
   * The root filesystem given explicitly, for a disk image whose filesystem cannot be
   * detected: `.imageWith(i => i.disk("./disk.qcow2").fstype("ext4"))`.
   */
  imageWith(configure: (i: ImageBuilder) => ImageBuilder | void): this {
    const b = new ImageBuilder();
    if (typeof configure === "function") configure(b);
    this.#raw.image = b.disk_;
    this.#raw.imageIsDisk = true;
    if (b.fstype_ !== undefined) this.#raw.imageFstype = b.fstype_;
    else delete this.#raw.imageFstype;
    return this;
  }

  /** The shell of `sb.shell(script)` and `sb.shellStream(script)` (run as `shell -c script`). Default `/bin/sh`. */
  shell(shell: string): this {
    this.#raw.shell = shell;
    return this;
  }

  /**
   * A script installed as `/.msb/scripts/<name>` (mode 0755) before `create()` resolves.
   * That directory ends every command's PATH, so `sb.exec(name)` and `sb.shell(name)`
   * run it; give it a `#!` line. `name` is one file name (no `/`). Repeatable; a later
   * script of the same name wins.
   */
  script(name: string, content: string): this {
    this.#raw.scripts?.push([name, content]);
    return this;
  }

  /**
   * Changes to the root filesystem, applied to this sandbox's writable layer in order
   * before `create()` resolves: `.patch(p => p.text("/etc/motd", "hi\n").mkdir("/data"))`.
   * The image itself is never modified. Host sources (`copyFile`, `copyDir`) must exist
   * when `create()` is called. Repeatable.
   */
  patch(configure: (p: PatchBuilder) => PatchBuilder | void): this {
    const b = new PatchBuilder();
    if (typeof configure === "function") configure(b);
    this.#raw.patches?.push(...b.steps);
    return this;
  }

  /**
   * Mount a volume at `guestPath` (absolute): `m.bind(hostDir)`, `m.named(name)` or
   * `m.tmpfs({ sizeMiB })`, optionally `.readonly()`. Repeatable.
   */
  volume(guestPath: string, configure: (m: MountBuilder) => MountBuilder | void): this {
    const b = new MountBuilder(guestPath);
    if (typeof configure === "function") configure(b);
    this.#raw.volumes?.push(b.raw);
    return this;
  }

  /**
   * The sandbox's network: `.network(n => n.policy(NetworkPolicy.builder()...build()).port(8080, 80))`.
   * Without it a sandbox still has a network, with the default policy (public addresses
   * allowed, everything else denied; the gateway's DNS always served). Repeatable: later
   * calls add to the same network (and turn a `.disableNetwork()` off).
   */
  network(configure: (n: NetworkBuilder) => NetworkBuilder | void): this {
    this.#raw.networkDisabled = false;
    return this.#netCall(() => {
      if (typeof configure === "function") configure(this.#net);
    });
  }

  /** No network at all: the guest gets no NIC (only `lo`). */
  disableNetwork(): this {
    this.#raw.networkDisabled = true;
    return this;
  }

  /** Publish guest TCP `guestPort` on the host's 127.0.0.1:`hostPort`. Repeatable. */
  port(hostPort: number, guestPort: number): this {
    return this.#netCall(() => this.#net.port(hostPort, guestPort));
  }

  /** Publish guest UDP `guestPort` on the host's 127.0.0.1:`hostPort`. Repeatable. */
  portUdp(hostPort: number, guestPort: number): this {
    return this.#netCall(() => this.#net.portUdp(hostPort, guestPort));
  }

  #netCall(f: () => void): this {
    try {
      f();
    } catch (e) {
      const err = e as { code?: unknown; field?: unknown; message?: unknown };
      if (err?.code !== "invalidConfig") throw e;
      // Reported by validate()/create(), like every other bad option.
      this.#raw.networkError ??= {
        field: typeof err.field === "string" ? err.field : "network",
        message: typeof err.message === "string" ? err.message : String(e),
        cause: e,
      };
    }
    this.#raw.network = this.#net.toNativeConfig();
    return this;
  }

  /** Verbosity of the sandbox's runtime log (`$MSB_HOME/sandboxes/<name>/runtime.log`): trace, debug, info (default), warn, error. */
  logLevel(level: LogLevel): this {
    this.#raw.logLevel = level;
    return this;
  }

  /**
   * Root filesystem: an OCI image reference (`alpine`, `python:3.12-slim`,
   * `127.0.0.1:5000/team/app@sha256:...`), a local directory, or a disk image file
   * (ext4). Paths start with `/`, `./`, `../` or `~`, or name something that exists on
   * the host; anything else is pulled from its registry. Default: the embedded busybox image.
   */
  image(image: string): this {
    this.#raw.image = image;
    delete this.#raw.imageIsDisk;
    delete this.#raw.imageFstype;
    return this;
  }

  /** When to pull an OCI image: `"if-missing"` (default), `"always"` or `"never"` (cached only). */
  pullPolicy(policy: PullPolicy): this {
    this.#raw.pullPolicy = policy;
    return this;
  }

  /** Credentials for the image's registry: `{ kind: "basic", username, password }`. The password is never stored. */
  registryAuth(auth: RegistryAuth): this {
    this.#raw.registryAuth = auth;
    return this;
  }

  /** Allow plain HTTP (and unverified TLS) for the image's registry. Loopback registries never need it. */
  insecureRegistry(insecure = true): this {
    this.#raw.insecureRegistry = insecure;
    return this;
  }

  /** An extra CA certificate (PEM file) to trust for the image's registry. */
  registryCa(pemPath: string): this {
    this.#raw.registryCa = pemPath;
    return this;
  }

  /** Receive progress events while an OCI image is pulled. */
  onPullProgress(listener: (p: PullProgress) => void): this {
    this.#onPullProgress = listener;
    return this;
  }

  /** Override the image's entrypoint (what `msb run` starts when given no command, and prefixes to one). */
  entrypoint(cmd: readonly string[]): this {
    this.#raw.entrypoint = [...cmd];
    return this;
  }

  /** Default user of every command: a name from the guest's /etc/passwd, a uid, or uid:gid. */
  user(user: string): this {
    this.#raw.user = user;
    return this;
  }

  /** Number of virtual CPUs, 1 to 255. Default 1. */
  cpus(count: number): this {
    this.#raw.cpus = count;
    return this;
  }

  /** Guest memory in MiB, at least 128 (the smallest that boots every time). Default 512. */
  memory(mib: number): this {
    this.#raw.memory = mib;
    return this;
  }

  /** An environment variable for every command in the sandbox. Repeatable; a later value for the same key wins. */
  env(key: string, value: string): this {
    this.#raw.env.push([key, value]);
    return this;
  }

  /** Default working directory of commands; an absolute path inside the guest. */
  workdir(path: string): this {
    this.#raw.workdir = path;
    return this;
  }

  /** Guest hostname. */
  hostname(hostname: string): this {
    this.#raw.hostname = hostname;
    return this;
  }

  /**
   * Drain the sandbox after `secs` seconds (a positive integer) with no exec session
   * running: it then stops. Enforced by the sandbox's runtime on the host, so it
   * also applies to detached sandboxes.
   */
  idleTimeout(secs: number): this {
    this.#raw.idleTimeout = secs;
    return this;
  }

  /**
   * Maximum lifetime in seconds (a positive integer): at that age the sandbox is
   * drained and stopped, whatever runs in it. Enforced on the host; the guest cannot
   * extend it.
   */
  maxDuration(secs: number): this {
    this.#raw.maxDuration = secs;
    return this;
  }

  /**
   * If a sandbox with this name exists, stop it (gracefully, killed after 10 s) and
   * remove it before creating the new one. Without this, a name in use rejects
   * with {@link SandboxAlreadyExistsError}.
   */
  replace(replace = true): this {
    this.#replace = replace;
    return this;
  }

  /**
   * A throwaway sandbox: when the process that created it exits without stopping it
   * (a crash, SIGKILL), its runtime removes it (state, disks, logs) instead of leaving
   * it stopped. A sandbox stopped by its creator is kept until removed, as usual. Only
   * for {@link create} (attached); `msb run` uses it.
   */
  ephemeral(ephemeral = true): this {
    this.#ephemeral = ephemeral;
    return this;
  }

  /** Validate the configuration without starting anything. Throws {@link InvalidConfigError}. */
  validate(): SandboxConfig {
    return validateConfig(this.#raw);
  }

  /**
   * Boot the sandbox in attached mode: it is stopped when this process exits,
   * however it exits. Resolves once the guest agent is ready for commands.
   */
  async create(): Promise<Sandbox> {
    return this.#create(true);
  }

  /**
   * Boot the sandbox in detached mode: it keeps running after this process exits,
   * until it is stopped (`Sandbox.get(name)` reaches it from anywhere).
   */
  async createDetached(): Promise<Sandbox> {
    return this.#create(false);
  }

  async #create(attached: boolean): Promise<Sandbox> {
    const { config, patches } = validateAll(this.#raw);
    if (this.#ephemeral && !attached) {
      throw new InvalidConfigError("ephemeral", "invalid ephemeral: a detached sandbox has no creator to follow; use create()");
    }
    return launch(config, {
      mode: "create",
      attached,
      ephemeral: this.#ephemeral,
      replace: this.#replace,
      patches,
      ...(this.#onPullProgress ? { onPullProgress: this.#onPullProgress } : {}),
    });
  }
}

interface LaunchOptions {
  mode: "create" | "start";
  attached: boolean;
  /** Removed by its runtime when its creator exits without stopping it. */
  ephemeral?: boolean;
  replace?: boolean;
  /** mode "start": the stored configuration, as stored. */
  storedConfig?: unknown;
  onPullProgress?: (p: PullProgress) => void;
  /** mode "create": patch steps to apply after boot. */
  patches?: PatchOp[];
}

/**
 * Boot a sandbox: find its root filesystem (pulling an OCI image if needed), hand the
 * configuration to msb-runtime, connect to the guest agent. Used by the builder
 * (`mode: "create"`, a new sandbox) and by `Sandbox.start` (`mode: "start"`: an existing
 * stopped sandbox, booted again from its stored configuration with its disk kept).
 */
async function launch(given: SandboxConfig, o: LaunchOptions): Promise<Sandbox> {
  // Host directories may have gone since the configuration was made (a restart).
  for (const v of given.volumes) if (v.kind === "bind") checkBindSource(v.source ?? "", v.guestPath);
  const home = msbHome();
  const binding = await callNative(() => native());
  const assets = await callNative(() => binding.assetPaths());
  const { rootfs, config } = await resolveRootfs(given, home, assets.defaultImage, o.mode, o.onPullProgress);
  // The image's environment is merged in now: the bootstrap must still fit its frame.
  checkBootstrapSizes(config);
  if (o.replace) await replaceExisting(binding, home, config.name);
  const nativeConfig: NativeSandboxConfig = {
    name: config.name,
    msbHome: home,
    runtimePath: assets.runtime,
    kernel: assets.kernel,
    initramfs: assets.initramfs,
    image: rootfs,
    cpus: config.cpus,
    memoryMib: config.memoryMib,
    env: config.env,
    workdir: config.workdir,
    hostname: config.hostname,
    user: config.user,
    mode: o.mode,
    attached: o.attached,
    ephemeral: o.ephemeral === true,
    bootTimeoutMs: bootTimeoutMs(),
    idleTimeoutSecs: config.idleTimeoutSecs,
    maxDurationSecs: config.maxDurationSecs,
    mounts: config.volumes.map((v) => ({ guestPath: v.guestPath, kind: v.kind, source: v.source, readonly: v.readonly, sizeMiB: v.sizeMiB })),
    imageFstype: config.imageFstype,
    logLevel: config.logLevel,
    network: config.network,
    // A restart stores back exactly what was stored.
    sdkConfig: o.storedConfig !== undefined ? o.storedConfig : persistableConfig(config),
  };
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
  const sb = new Sandbox(config, info, client, o.attached, home);
  // Before anything of the caller's runs: the default user exists (a new sandbox), then
  // scripts (every boot) and patches (the first one).
  const checkUser = o.mode === "create" && config.user !== null;
  if (checkUser || config.scripts.length > 0 || (o.patches?.length ?? 0) > 0) {
    try {
      if (checkUser) await checkDefaultUser(sb, config.user as string);
      const fs = sb.fs();
      await installScripts(fs, config.scripts);
      if (o.mode === "create" && o.patches) await applyPatches(fs, o.patches);
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

/**
 * The root filesystem to boot. For a new sandbox from an OCI image: pull it (with the
 * configured policy) and merge the image's defaults under the builder's options. For
 * a restart: the same image again, from the cache when it is there (pull policy
 * "if-missing"), pinned to the digest it was created from, with the stored
 * configuration as is (it already has the image's defaults merged in).
 */
async function resolveRootfs(
  config: SandboxConfig,
  home: string,
  defaultImage: string,
  mode: "create" | "start",
  onProgress?: (p: PullProgress) => void,
): Promise<{ rootfs: string; config: SandboxConfig }> {
  if (config.imageKind !== "oci" || config.image === null) return { rootfs: config.image ?? defaultImage, config };
  if (mode === "create") {
    const pulled = await pull(config.image, config, home, config.pullPolicy, onProgress);
    return { rootfs: pulled.rootfs, config: { ...applyImageConfig(config, pulled.config), imageDigest: pulled.digest } };
  }
  const digest = config.imageDigest ?? null;
  let byTag: PulledImage | undefined;
  let tagError: unknown;
  try {
    byTag = await pull(config.image, config, home, "if-missing", onProgress);
  } catch (e) {
    tagError = e;
  }
  if (byTag !== undefined && (digest === null || byTag.digest === digest)) return { rootfs: byTag.rootfs, config };
  if (digest === null) throw tagError;
  // The tag now names another image (or cannot be resolved): use the one the sandbox's disk was made on.
  try {
    const pinned = await pull(pinnedReference(config.image, digest), config, home, "if-missing", onProgress);
    return { rootfs: pinned.rootfs, config };
  } catch (e) {
    throw tagError ?? e;
  }
}

/** `registry/repository@digest` for an image reference. */
function pinnedReference(image: string, digest: string): string {
  try {
    const r = parseReference(image);
    return `${r.registry}/${r.repository}@${digest}`;
  } catch (e) {
    throw fromOci(e);
  }
}

/** Pull (or find in the cache) an OCI image. */
async function pull(
  image: string,
  config: SandboxConfig,
  home: string,
  policy: PullPolicy,
  onProgress?: (p: PullProgress) => void,
): Promise<PulledImage> {
  const auth = config.registryAuth;
  try {
    return await pullImage(image, {
      msbHome: home,
      policy,
      // A configuration read back from the store has no password: pull anonymously.
      ...(auth && auth.password !== undefined ? { auth: { kind: auth.kind, username: auth.username, password: auth.password } } : {}),
      insecure: config.insecureRegistry,
      ...(config.registryCa ? { caFile: config.registryCa } : {}),
      ...(onProgress ? { onProgress } : {}),
    });
  } catch (e) {
    throw fromOci(e);
  }
}

/** `.replace()`: stop (or kill) and remove a sandbox of that name, if there is one. */
async function replaceExisting(binding: NativeBinding, home: string, name: string): Promise<void> {
  const rec = await findRecord(binding, home, name);
  if (rec === undefined) return;
  if (isLive(rec.status)) await stopByName(binding, home, name, DEFAULT_STOP_TIMEOUT_MS);
  await removeWhenStopped(binding, home, name, { missingOk: true });
}

/** `Sandbox.start` / `startDetached`: boot a stopped (or crashed) sandbox again. */
async function startExisting(name: string, attached: boolean): Promise<Sandbox> {
  const n = check(nameSchema, "name", name);
  const home = msbHome();
  const binding = await callNative(() => native());
  const rec = await readRecord(binding, home, n);
  if (isLive(rec.status)) throw new SandboxStillRunningError(`sandbox ${n} is ${rec.status}; stop it first`);
  const config = parseStoredConfig(rec.configJson, n);
  return launch(config, { mode: "start", attached, storedConfig: JSON.parse(rec.configJson) as unknown });
}

/**
 * The image's defaults under the builder's options: image env first (builder values for
 * the same key win), workdir, user and entrypoint from the image unless set.
 */
export function applyImageConfig(config: SandboxConfig, image: ImageConfig): SandboxConfig {
  const env = new Map<string, string>(image.env);
  for (const [k, v] of config.env) env.set(k, v);
  return {
    ...config,
    env: [...env],
    workdir: config.workdir ?? image.workingDir ?? null,
    user: config.user ?? (image.user ? image.user : null),
    entrypoint: config.entrypoint ?? image.entrypoint ?? null,
    cmd: image.cmd ?? null,
  };
}

type State = "running" | "stopping" | "stopped" | "closed";

/**
 * A running sandbox: a microVM with its own kernel, reached through its guest
 * agent. Supports `await using`: leaving the scope stops the VM when this
 * handle owns its lifecycle (attached mode), and otherwise only closes this
 * handle's connection.
 */
export class Sandbox implements AsyncDisposable {
  /** The sandbox's unique name. */
  readonly name: string;
  /** @internal Process id of this sandbox's msb-runtime (tests and tooling). */
  readonly runtimePid: number;
  /** @internal Host directory of this sandbox's state (`$MSB_HOME/sandboxes/<name>`). */
  readonly sandboxDir: string;

  readonly #config: SandboxConfig;
  readonly #client: NativeAgentClient;
  readonly #home: string;
  #ownsLifecycle: boolean;
  #state: State = "running";
  #draining = false;
  #stopping: Promise<void> | undefined;
  #waiting: Promise<void> | undefined;

  /** @internal Use {@link Sandbox.builder}, {@link Sandbox.start} or `handle.connect()`. */
  constructor(config: SandboxConfig, info: NativeRuntimeInfo, client: NativeAgentClient, ownsLifecycle: boolean, home: string = msbHome()) {
    this.name = config.name;
    this.#ownsLifecycle = ownsLifecycle;
    this.runtimePid = info.pid;
    this.sandboxDir = info.sandboxDir;
    this.#config = config;
    this.#client = client;
    this.#home = home;
  }

  /** Start configuring a sandbox called `name` (unique; 1-63 of `[A-Za-z0-9_.-]`, starting with a letter or digit). */
  static builder(name: string): SandboxBuilder {
    return new SandboxBuilder(name);
  }

  /** A handle to an existing sandbox, running or not. Unknown name -> `SandboxNotFoundError`. */
  static async get(name: string): Promise<SandboxHandle> {
    const n = check(nameSchema, "name", name);
    const home = msbHome();
    const binding = await callNative(() => native());
    return new SandboxHandle(await readRecord(binding, home, n), home);
  }

  /** Every sandbox in `$MSB_HOME`: running, draining, stopped and crashed ones. */
  static async list(): Promise<SandboxHandle[]> {
    const home = msbHome();
    const binding = await callNative(() => native());
    const records = await callNative(() => binding.listSandboxes(home));
    return records.map((r) => new SandboxHandle(toRecord(r), home));
  }

  /**
   * Delete a stopped sandbox and all its state (configuration, disk, logs). Rejects with
   * `SandboxStillRunningError` while it runs and `SandboxNotFoundError` for an unknown name.
   */
  static async remove(name: string): Promise<void> {
    const n = check(nameSchema, "name", name);
    const home = msbHome();
    const binding = await callNative(() => native());
    await callNative(() => binding.removeSandbox(home, n));
  }

  /**
   * Boot a stopped (or crashed) sandbox again from its stored configuration, with the
   * files it wrote kept, in attached mode (it stops when this process exits).
   * Unknown name -> `SandboxNotFoundError`; a running one -> `SandboxStillRunningError`.
   */
  static async start(name: string): Promise<Sandbox> {
    return startExisting(name, true);
  }

  /** As {@link Sandbox.start}, in detached mode: the sandbox outlives this process. */
  static async startDetached(name: string): Promise<Sandbox> {
    return startExisting(name, false);
  }

  /**
   * `true` when this handle owns the VM's lifecycle (attached mode: the VM stops
   * when this process exits, and `await using` stops it); `false` for detached
   * sandboxes, after {@link detach}, and for handles from `connect()`.
   */
  get ownsLifecycle(): boolean {
    return this.#ownsLifecycle;
  }

  /** The validated configuration the sandbox runs with (an OCI image's defaults merged in). */
  config(): SandboxConfig {
    return copyConfig(this.#config);
  }

  /** `true` until the sandbox was seen to stop (or this handle was stopped, killed or disposed). */
  get running(): boolean {
    if (this.#state === "running" && this.#client.closed) this.#finish();
    return this.#state === "running";
  }

  /** Run `cmd` with `args` and wait for it to finish. */
  async exec(cmd: string, args: readonly string[] = []): Promise<ExecOutput> {
    return (await this.execStream(cmd, args)).collect();
  }

  /**
   * Run `cmd` with options and wait for it to finish:
   * `sb.execWith("ls", b => b.args(["-l"]).cwd("/tmp").env("K", "V").timeout(5000))`.
   * With a timeout, a command still running is killed and the call rejects with
   * `ExecTimeoutError`. `stdinPipe()` makes no sense here (use {@link execStreamWith}).
   */
  async execWith(cmd: string, configure: (b: ExecOptionsBuilder) => ExecOptionsBuilder | void): Promise<ExecOutput> {
    const b = buildExecOptions(configure);
    if (b.raw.stdin === "pipe") {
      throw new InvalidConfigError("stdin", "invalid stdin: stdinPipe() needs a handle to write to: use execStreamWith() and takeStdin(), or stdinBytes()");
    }
    return (await this.execStreamWith(cmd, () => b)).collect();
  }

  /** Run `script` with the sandbox's shell (`/bin/sh -c script` unless `.shell()` chose another) and wait for it to finish. */
  async shell(script: string): Promise<ExecOutput> {
    return (await this.shellStream(script)).collect();
  }

  /**
   * {@link shell} with options (see {@link execWith}):
   * `sb.shellWith("make", b => b.cwd("/src").timeout(60_000).maxOutputBytes(1 << 20))`.
   * Arguments given with `b.args()` follow the script (`$0`, `$1`, ...).
   */
  async shellWith(script: string, configure: (b: ExecOptionsBuilder) => ExecOptionsBuilder | void): Promise<ExecOutput> {
    const s = check(cmdSchema, "script", script);
    checkScript(s);
    const b = buildExecOptions(configure);
    b.raw.args.unshift("-c", s);
    return this.execWith(this.#config.shell ?? DEFAULT_SHELL, () => b);
  }

  /**
   * Start `cmd` with `args` and return a handle that streams its events as they come.
   * Rejects with `SandboxDrainingError` while the sandbox drains and
   * `SandboxNotRunningError` once it stopped.
   */
  async execStream(cmd: string, args: readonly string[] = []): Promise<ExecHandle> {
    return this.execStreamWith(cmd, (b) => b.args(args));
  }

  /**
   * Start `cmd` with options (see {@link execWith}) and return its {@link ExecHandle}:
   * events, `takeStdin()` (with `stdinPipe()` or `tty(true)`), `signal(n)`, `kill()`,
   * `resize(rows, cols)` (TTY), `wait()`, `collect()`.
   */
  async execStreamWith(cmd: string, configure?: (b: ExecOptionsBuilder) => ExecOptionsBuilder | void): Promise<ExecHandle> {
    const o = resolveExecOptions(cmd, buildExecOptions(configure));
    this.#ensureRunning();
    if (this.#draining) throw new SandboxDrainingError(`sandbox ${this.name} is draining: it takes no new commands`);
    const client = this.#client;
    const session = await this.#call(() => client.exec(o.request));
    const controls: SessionControls = {
      writeStdin: (data) => client.writeStdin(session, Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength)),
      closeStdin: () => client.closeStdin(session),
      signal: (n) => client.signal(session, n),
      resize: (rows, cols) => client.resize(session, rows, cols),
      get closed() {
        return client.closed;
      },
    };
    return new ExecHandle(() => client.next(session), {
      controls,
      stdin: o.stdin,
      stdinBytes: o.stdinBytes,
      tty: o.request.tty !== null,
      timeoutMs: o.timeoutMs,
      maxOutputBytes: o.maxOutputBytes,
    });
  }

  /** Start `script` with the sandbox's shell and return its {@link ExecHandle}. */
  async shellStream(script: string): Promise<ExecHandle> {
    const s = check(cmdSchema, "script", script);
    checkScript(s);
    return this.execStream(this.#config.shell ?? DEFAULT_SHELL, ["-c", s]);
  }

  /** {@link shellStream} with options (see {@link execStreamWith}); arguments given with `b.args()` follow the script. */
  async shellStreamWith(script: string, configure?: (b: ExecOptionsBuilder) => ExecOptionsBuilder | void): Promise<ExecHandle> {
    const s = check(cmdSchema, "script", script);
    checkScript(s);
    const b = buildExecOptions(configure);
    b.raw.args.unshift("-c", s);
    return this.execStreamWith(this.#config.shell ?? DEFAULT_SHELL, () => b);
  }

  /**
   * Files in the sandbox: read, write, list, stat, copy to and from the host...
   * See {@link SandboxFs}.
   */
  fs(): SandboxFs {
    return new SandboxFs({
      client: () => {
        this.#ensureRunning();
        return this.#client;
      },
      call: (f) => this.#call(f),
      run: (cmd, args) => this.#runAsRoot(cmd, args),
    });
  }

  /** A helper command as root, whatever the sandbox's default user (fs fallbacks). */
  async #runAsRoot(cmd: string, args: string[]): Promise<ExecOutput> {
    this.#ensureRunning();
    const client = this.#client;
    const o = resolveExecOptions(cmd, buildExecOptions((b) => b.args(args).user("0")));
    const session = await this.#call(() => client.exec(o.request));
    return new ExecHandle(() => client.next(session)).collect();
  }

  /**
   * Shut the VM down gracefully (guest processes get SIGTERM, disks are synced, the VM
   * powers off) and resolve once it is gone. After `timeoutMs` (a positive integer,
   * default 10 s) the VM is killed. Calling it again, or after {@link kill}, does nothing.
   */
  async stop(timeoutMs: number = DEFAULT_STOP_TIMEOUT_MS): Promise<void> {
    const t = check(timeoutMsSchema, "timeoutMs", timeoutMs);
    if (this.#state === "stopped") return;
    if (this.#state === "closed") this.#ensureRunning();
    if (this.#stopping === undefined) {
      this.#state = "stopping";
      const client = this.#client;
      this.#stopping = callNative(() => client.stop(t)).then(
        () => this.#finish(),
        (e: unknown) => {
          if (client.closed) {
            // The VM went away on its own meanwhile: stopped is stopped.
            this.#finish();
            return;
          }
          // The VM may still be reachable: the handle stays usable (for kill()).
          if (this.#state === "stopping") this.#state = "running";
          this.#stopping = undefined;
          throw e;
        },
      );
    }
    return this.#stopping;
  }

  /** {@link stop}, then how the VM ended: `code` 0 for a graceful stop (137 when it had to be killed). */
  async stopAndWait(timeoutMs: number = DEFAULT_STOP_TIMEOUT_MS): Promise<ExitStatus> {
    await this.stop(timeoutMs);
    return this.#exitStatus();
  }

  /**
   * Wait until the VM ends on its own (the guest powers off, a drain, the idle timeout or
   * max duration, `kill` from elsewhere, a crash), without stopping it, and resolve to how
   * it ended: `code` 0 for a graceful end, 137 killed, 1 crashed.
   */
  async wait(): Promise<ExitStatus> {
    if (this.#state === "closed") this.#ensureRunning();
    if (this.#state === "running" || this.#state === "stopping") {
      if (this.#waiting === undefined) {
        const client = this.#client;
        this.#waiting = (async () => {
          try {
            await callNative(() => client.wait());
          } catch (e) {
            if (!client.closed) throw e;
          }
          this.#finish();
        })();
        this.#waiting.catch(() => (this.#waiting = undefined));
      }
      await this.#waiting;
    }
    return this.#exitStatus();
  }

  /** Terminate the VM at once, without a graceful shutdown. Does nothing once the sandbox is stopped. */
  async kill(): Promise<void> {
    if (this.#state === "stopped") return;
    if (this.#state === "closed") this.#ensureRunning();
    const client = this.#client;
    try {
      await callNative(() => client.kill());
    } catch (e) {
      // The runtime does not answer: end the VM without it.
      const binding = await callNative(() => native());
      await callNative(() => binding.killSandbox(this.#home, this.name)).catch(() => {
        throw e;
      });
    }
    this.#finish();
  }

  /**
   * Graceful drain: commands already running finish, new ones are rejected with
   * `SandboxDrainingError`, and the sandbox stops once the last one ended (its status is
   * "draining" meanwhile). Resolves when the drain has begun; {@link wait} waits for the end.
   */
  async drain(): Promise<void> {
    this.#ensureRunning();
    const client = this.#client;
    await this.#call(() => client.drain());
    this.#draining = true;
  }

  /**
   * Let the sandbox outlive this process: this handle no longer owns its lifecycle, so
   * neither the end of this process nor `await using` stops it. Reconnect from
   * anywhere with `Sandbox.get(name)`. Does nothing for a sandbox this handle does not own.
   */
  async detach(): Promise<void> {
    if (!this.#ownsLifecycle) return;
    this.#ensureRunning();
    const client = this.#client;
    await this.#call(() => client.detach());
    const binding = await callNative(() => native());
    await callNative(() => binding.releaseAttachment(this.runtimePid));
    this.#ownsLifecycle = false;
  }

  /** Stop the sandbox if it runs, then delete it and all its state from disk. */
  async removePersisted(): Promise<void> {
    if (this.#state !== "stopped") {
      if (this.#state === "closed") {
        const binding = await callNative(() => native());
        await stopByName(binding, this.#home, this.name, DEFAULT_STOP_TIMEOUT_MS);
      } else {
        try {
          await this.stop();
        } catch {
          await this.kill();
        }
      }
    }
    const binding = await callNative(() => native());
    await removeWhenStopped(binding, this.#home, this.name);
  }

  /** A snapshot of the sandbox's resource use (see {@link SandboxMetrics} for each field). */
  async metrics(): Promise<SandboxMetrics> {
    this.#ensureRunning();
    const client = this.#client;
    return toSandboxMetrics(await this.#call(() => client.metrics()));
  }

  /**
   * Metrics every `intervalMs` milliseconds (a positive integer): an RxJS Observable,
   * also usable with `for await`. Sampling starts on subscribe (first sample at once),
   * stops on unsubscribe (or when the `for await` loop ends), and the stream errors
   * with `SandboxNotRunningError` when the sandbox stops.
   */
  metricsStream(intervalMs: number): MetricsStream {
    const t = check(timeoutMsSchema, "intervalMs", intervalMs);
    return new MetricsStream(() => this.metrics(), t);
  }

  /**
   * Leaving an `await using` scope: stops the sandbox when this handle owns its
   * lifecycle; otherwise only closes this handle's connection (the sandbox keeps
   * running). Never rejects.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#state === "stopped" || this.#state === "closed") return;
    if (!this.#ownsLifecycle) {
      this.#state = "closed";
      closeQuietly(this.#client);
      return;
    }
    try {
      await this.stop();
    } catch {
      try {
        await this.kill();
      } catch {
        // Neither path reaches the VM: its runtime is gone already (and an
        // attached runtime ends the VM when this process exits in any case).
        this.#finish();
      }
    }
  }

  /** Run a call on the agent connection; an error after the VM went away says so. */
  async #call<T>(f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      const err = fromNative(e);
      if (this.#client.closed && !(err instanceof SandboxDrainingError)) {
        this.#finish();
        if (!(err instanceof SandboxNotRunningError)) {
          throw new SandboxNotRunningError(`sandbox ${this.name} has stopped`, { cause: err });
        }
      }
      throw err;
    }
  }

  async #exitStatus(): Promise<ExitStatus> {
    const binding = await callNative(() => native());
    return finalExit(binding, this.#home, this.name);
  }

  #finish(): void {
    if (this.#state === "stopped") return;
    this.#state = "stopped";
    this.#stopping = undefined;
    closeQuietly(this.#client);
  }

  #ensureRunning(): void {
    if (this.#state === "running" && this.#client.closed) this.#finish();
    switch (this.#state) {
      case "running":
        return;
      case "closed":
        throw new SandboxNotRunningError(
          `this handle to sandbox ${this.name} was closed (the sandbox may still run: Sandbox.get("${this.name}") reconnects)`,
        );
      default:
        throw new SandboxNotRunningError(`sandbox ${this.name} is ${this.#state === "stopping" ? "stopping" : "stopped"}`);
    }
  }
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
  return new Sandbox(config, { pid, socketPath, sandboxDir: join(home, "sandboxes", name) }, client, false, home);
}
