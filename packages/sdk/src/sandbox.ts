import "./polyfill.js";
import {
  argsSchema,
  bootTimeoutMs,
  check,
  cmdSchema,
  msbHome,
  nameSchema,
  timeoutMsSchema,
  validateConfig,
  type PullPolicy,
  type RawSandboxConfig,
  type RegistryAuth,
  type SandboxConfig,
} from "./config.js";
import { fromOci, SandboxNotRunningError } from "./errors.js";
import { pullImage, type ImageConfig, type PulledImage, type PullProgress } from "@microsandbox/oci";
import { ExecHandle, type ExecOutput } from "./exec.js";
import {
  callNative,
  native,
  type NativeAgentClient,
  type NativeExecRequest,
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

  /** @internal Use {@link Sandbox.builder}. */
  constructor(name: string) {
    this.#raw = { name, env: [] };
  }

  /**
   * Root filesystem: an OCI image reference (`alpine`, `python:3.12-slim`,
   * `127.0.0.1:5000/team/app@sha256:...`), a local directory, or a disk image file
   * (ext4). Paths start with `/`, `./`, `../` or `~`, or name something that exists on
   * the host; anything else is pulled from its registry. Default: the embedded busybox image.
   */
  image(image: string): this {
    this.#raw.image = image;
    return this;
  }

  /** When to pull an OCI image: `"if-missing"` (default), `"always"` or `"never"` (cached only). */
  pullPolicy(policy: PullPolicy): this {
    this.#raw.pullPolicy = policy;
    return this;
  }

  /** Credentials for the image's registry: `{ kind: "basic", username, password }`. */
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

  /** Guest memory in MiB, at least 64. Default 512. */
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

  /** Validate the configuration without starting anything. Throws {@link InvalidConfigError}. */
  validate(): SandboxConfig {
    return validateConfig(this.#raw);
  }

  /**
   * Boot the sandbox in attached mode: it is stopped when this process exits,
   * however it exits. Resolves once the guest agent is ready for commands.
   */
  async create(): Promise<Sandbox> {
    let config = this.validate();
    const home = msbHome();
    const binding = await callNative(() => native());
    const assets = await callNative(() => binding.assetPaths());
    let rootfs = config.image ?? assets.defaultImage;
    if (config.imageKind === "oci" && config.image !== null) {
      const pulled = await pull(config, home, this.#onPullProgress);
      rootfs = pulled.rootfs;
      config = applyImageConfig(config, pulled.config);
    }
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
      attached: true,
      bootTimeoutMs: bootTimeoutMs(),
    };
    const info = await callNative(() => binding.startSandbox(JSON.stringify(nativeConfig)));
    let client: NativeAgentClient;
    try {
      client = await callNative(() => binding.AgentClient.connect(info.socketPath));
    } catch (e) {
      // The VM is up but unreachable: end its runtime rather than leave it running.
      try {
        process.kill(info.pid, "SIGTERM");
      } catch {
        // already gone
      }
      throw e;
    }
    return new Sandbox(config, info, client, true);
  }
}

/** Pull (or find in the cache) the OCI image of `config`. */
async function pull(config: SandboxConfig, home: string, onProgress?: (p: PullProgress) => void): Promise<PulledImage> {
  try {
    return await pullImage(config.image as string, {
      msbHome: home,
      policy: config.pullPolicy,
      ...(config.registryAuth ? { auth: config.registryAuth } : {}),
      insecure: config.insecureRegistry,
      ...(config.registryCa ? { caFile: config.registryCa } : {}),
      ...(onProgress ? { onProgress } : {}),
    });
  } catch (e) {
    throw fromOci(e);
  }
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

type State = "running" | "stopping" | "stopped";

/**
 * A running sandbox: a microVM with its own kernel, reached through its guest
 * agent. Supports `await using`: leaving the scope stops the VM when this
 * handle owns its lifecycle.
 */
export class Sandbox implements AsyncDisposable {
  /** The sandbox's unique name. */
  readonly name: string;
  /** `true` when this handle owns the VM's lifecycle (attached mode: the VM stops with this process). */
  readonly ownsLifecycle: boolean;
  /** @internal Process id of this sandbox's msb-runtime (tests and tooling). */
  readonly runtimePid: number;
  /** @internal Host directory of this sandbox's state (`$MSB_HOME/sandboxes/<name>`). */
  readonly sandboxDir: string;

  readonly #config: SandboxConfig;
  readonly #client: NativeAgentClient;
  #state: State = "running";
  #stopping: Promise<void> | undefined;

  /** @internal Use {@link Sandbox.builder}. */
  constructor(config: SandboxConfig, info: NativeRuntimeInfo, client: NativeAgentClient, ownsLifecycle: boolean) {
    this.name = config.name;
    this.ownsLifecycle = ownsLifecycle;
    this.runtimePid = info.pid;
    this.sandboxDir = info.sandboxDir;
    this.#config = config;
    this.#client = client;
  }

  /** Start configuring a sandbox called `name` (unique; 1-63 of `[A-Za-z0-9_.-]`, starting with a letter or digit). */
  static builder(name: string): SandboxBuilder {
    return new SandboxBuilder(name);
  }

  /** Delete a stopped sandbox's state from disk. Rejects with `sandboxStillRunning` while it runs. */
  static async remove(name: string): Promise<void> {
    const n = check(nameSchema, "name", name);
    const home = msbHome();
    const binding = await callNative(() => native());
    await callNative(() => binding.removeSandbox(home, n));
  }

  /** The validated configuration the sandbox was created with. */
  config(): SandboxConfig {
    return { ...this.#config, env: this.#config.env.map(([k, v]): [string, string] => [k, v]) };
  }

  /** `true` until {@link stop} or {@link kill} has been called. */
  get running(): boolean {
    return this.#state === "running";
  }

  /** Run `cmd` with `args` and wait for it to finish. */
  async exec(cmd: string, args: readonly string[] = []): Promise<ExecOutput> {
    return (await this.execStream(cmd, args)).collect();
  }

  /** Run `script` with the sandbox's shell (`/bin/sh -c script`) and wait for it to finish. */
  async shell(script: string): Promise<ExecOutput> {
    const s = check(cmdSchema, "script", script);
    return this.exec(DEFAULT_SHELL, ["-c", s]);
  }

  /** Start `cmd` with `args` and return a handle that streams its events as they come. */
  async execStream(cmd: string, args: readonly string[] = []): Promise<ExecHandle> {
    const request: NativeExecRequest = {
      cmd: check(cmdSchema, "cmd", cmd),
      args: check(argsSchema, "args", args),
      env: [],
      cwd: null,
      user: null,
    };
    this.#ensureRunning();
    const client = this.#client;
    const session = await callNative(() => client.exec(JSON.stringify(request)));
    return new ExecHandle(() => client.next(session));
  }

  /**
   * Shut the VM down gracefully (guest processes are asked to end, then the VM
   * powers off) and resolve once it is gone. After `timeoutMs` the VM is
   * killed. Calling it again, or after {@link kill}, does nothing.
   */
  async stop(timeoutMs: number = DEFAULT_STOP_TIMEOUT_MS): Promise<void> {
    const t = check(timeoutMsSchema, "timeoutMs", timeoutMs);
    if (this.#state === "stopped") return;
    if (this.#stopping === undefined) {
      this.#state = "stopping";
      const client = this.#client;
      this.#stopping = callNative(() => client.stop(t)).then(
        () => this.#finish(),
        (e: unknown) => {
          // The VM may still be reachable: the handle stays usable (for kill()).
          if (this.#state === "stopping") this.#state = "running";
          this.#stopping = undefined;
          throw e;
        },
      );
    }
    return this.#stopping;
  }

  /** Terminate the VM at once, without a graceful shutdown. Does nothing once the sandbox is stopped. */
  async kill(): Promise<void> {
    if (this.#state === "stopped") return;
    const client = this.#client;
    await callNative(() => client.kill());
    this.#finish();
  }

  /** Stop the sandbox if this handle owns its lifecycle and it is still running. Never rejects when it already stopped. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.ownsLifecycle || this.#state === "stopped") return;
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

  #finish(): void {
    if (this.#state === "stopped") return;
    this.#state = "stopped";
    this.#stopping = undefined;
    try {
      this.#client.close();
    } catch {
      // closing an already closed client is fine
    }
  }

  #ensureRunning(): void {
    if (this.#state !== "running") {
      throw new SandboxNotRunningError(`sandbox ${this.name} is ${this.#state === "stopping" ? "stopping" : "stopped"}`);
    }
  }
}
