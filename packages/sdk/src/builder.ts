import "./polyfill.js";
import { parseReference, type PullProgress } from "@microsandbox/oci";
import { NetworkBuilder, type SecretBuilder } from "@microsandbox/netstack";
import { ImageBuilder, MountBuilder, PatchBuilder } from "./builders.js";
import {
  check,
  copyConfig,
  MAX_TIMEOUT_MS,
  validateAll,
  validateConfig,
  type LogLevel,
  type PullPolicy,
  type RawSandboxConfig,
  type RegistryAuth,
  type SandboxConfig,
  type ThpPolicy,
} from "./config.js";
import { z } from "zod";
import { DEFAULT_STOP_TIMEOUT_MS } from "./defaults.js";
import { InvalidConfigError, SnapshotIntegrityError } from "./errors.js";
import { launch } from "./launch.js";
import { defaultImageSha256, Snapshot } from "./snapshot.js";
import { PullProgressCreate } from "./pull-progress.js";
// Type only (erased): sandbox.ts imports this module for Sandbox.builder().
import type { Sandbox } from "./sandbox.js";

const replaceRule = `must be an integer number of milliseconds from 0 to ${MAX_TIMEOUT_MS}`;
const replaceTimeoutSchema = z
  .number({ error: replaceRule })
  .int({ error: replaceRule })
  .min(0, { error: replaceRule })
  .max(MAX_TIMEOUT_MS, { error: replaceRule });

/** The args and env of `.initWith(cmd, i => ...)`. */
export class InitOptionsBuilder {
  /** @internal */
  readonly args_: unknown[] = [];
  /** @internal */
  readonly env_: [unknown, unknown][] = [];

  /** Append one argument. */
  arg(arg: string): this {
    this.args_.push(arg);
    return this;
  }

  /** Append arguments. */
  args(args: readonly string[]): this {
    if (Array.isArray(args)) this.args_.push(...(args as unknown[]));
    else this.args_.push(args);
    return this;
  }

  /** An environment variable of the init process (a later value for the key wins). */
  env(key: string, value: string): this {
    this.env_.push([key, value]);
    return this;
  }

  /** {@link env} for each entry. */
  envs(vars: Record<string, string>): this {
    for (const [k, v] of Object.entries(vars ?? {})) this.env_.push([k, v]);
    return this;
  }
}

/**
 * Configures a sandbox. Setters only record their argument; {@link create}
 * validates the whole configuration (zod) before anything is started, and
 * rejects with {@link InvalidConfigError} naming the first bad field.
 */
export class SandboxBuilder {
  readonly #raw: RawSandboxConfig;
  #fromSnapshot: string | undefined;
  #onPullProgress: ((p: PullProgress) => void) | undefined;
  #replace = false;
  /** `.replaceWithTimeout(ms)`: how long the old sandbox gets to stop (0: killed at once). */
  #replaceTimeoutMs: unknown = DEFAULT_STOP_TIMEOUT_MS;
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

  /**
   * A secret the guest can use but never read, and TLS interception with it:
   * `.secret(s => s.env("API_KEY").value(key).allowHost("api.openai.com"))`. The guest's
   * `$API_KEY` holds a placeholder (default `$MSB_API_KEY`); in HTTPS requests to an
   * allowed host the sandbox's network substitutes the value, and a placeholder headed
   * anywhere else is blocked. The value is never stored, never in `config()`, and must
   * be given again to restart the sandbox (`Sandbox.start(name, { secrets })`).
   * Repeatable. Same as `.network(n => n.secret(...))`; needs the network, and no
   * `.env()` of the same name.
   */
  secret(configure: (s: SecretBuilder) => SecretBuilder | void): this {
    return this.#netCall(() => this.#net.secret(configure));
  }

  /** `secret(s => s.env(envVar).value(value).allowHost(allowedHost))` (placeholder `$MSB_<envVar>`). */
  secretEnv(envVar: string, value: string, allowedHost: string): this {
    return this.secret((s) => s.env(envVar).value(value).allowHost(allowedHost));
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
    this.#raw.secretValues = this.#net.secretValues();
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
  /**
   * Boot a new sandbox on a copy of a disk snapshot's writable disk (a bare name under
   * `$MSB_HOME/snapshots`, or a path): the image is the snapshot's, pinned to the digest
   * it was made on. Not with {@link image}: `create()` rejects with
   * `InvalidConfigError` (field `fromSnapshot`).
   */
  fromSnapshot(pathOrName: string): this {
    this.#fromSnapshot = pathOrName;
    return this;
  }

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
   * Like {@link replace}, with the time the old sandbox gets to stop gracefully before it
   * is killed, in milliseconds (`0`: killed at once, no graceful stop). Implies
   * `replace()`. An expired timeout kills the old sandbox; `create()` still proceeds.
   */
  replaceWithTimeout(timeoutMs: number): this {
    this.#replace = true;
    this.#replaceTimeoutMs = timeoutMs;
    return this;
  }

  /**
   * A throwaway sandbox: when its VM ends, however it ends (`stop()`, `kill()`, a drain,
   * the idle timeout or max duration, its creator exiting, a guest crash), its runtime
   * removes it (state, disks, logs) instead of leaving it stopped. Attached or detached;
   * `msb run` uses it. (Only a runtime that is itself killed leaves it behind, as
   * "crashed".)
   */
  /**
   * Whether this sandbox may start from a memory template (default `true`): a saved,
   * booted guest of the same shape restored instead of a kernel boot, made by the first
   * cold boot of that shape. `false` always boots cold and makes none. `MSB_TEMPLATES=off`
   * in the environment turns templates off for every sandbox.
   */
  memoryTemplate(enabled = true): this {
    this.#raw.memoryTemplate = enabled;
    return this;
  }

  ephemeral(ephemeral = true): this {
    this.#raw.ephemeral = ephemeral;
    return this;
  }

  /**
   * A label (`key`: 1-253 bytes, no `=`, not starting with `sandbox.`, `microsandbox.` or
   * `service.`; `value`: up to 4096 bytes, may be empty), stored in the sandbox's
   * configuration: `Sandbox.listWith(l => l.label(key, value))` finds it. Repeatable (a
   * later value for the same key wins); at most 64.
   */
  label(key: string, value: string): this {
    this.#raw.labels ??= [];
    this.#raw.labels.push([key, value]);
    return this;
  }

  /** {@link label} for each entry of `labels`. */
  labels(labels: Record<string, string>): this {
    this.#raw.labels ??= [];
    if (labels === null || typeof labels !== "object") {
      this.#raw.labels.push([labels, ""]);
      return this;
    }
    for (const [k, v] of Object.entries(labels)) this.#raw.labels.push([k, v]);
    return this;
  }

  /**
   * Upper bound for the sandbox's vCPUs, 1-255 and at least {@link cpus}: `modify({ cpus })`
   * may raise `cpus` up to it (QEMU's microvm boots a fixed CPU count, so a change applies
   * at the next start). Default: no bound below 255.
   */
  maxCpus(count: number): this {
    this.#raw.maxCpus = count;
    return this;
  }

  /** Upper bound for the guest memory in MiB, at least {@link memory}: `modify({ memory })` may raise memory up to it (at the next start). */
  maxMemory(mib: number): this {
    this.#raw.maxMemory = mib;
    return this;
  }

  /**
   * Transparent huge pages in the guest: `"always"`, `"madvise"` or `"never"`, written to
   * `/sys/kernel/mm/transparent_hugepage/enabled` at every boot before `create()` resolves.
   * Default: the guest kernel's own (`madvise` for the bundled kernel).
   */
  thp(policy: ThpPolicy): this {
    this.#raw.thp = policy;
    return this;
  }

  /**
   * An init for the guest. In this implementation the guest agent is always PID 1 and
   * does an init's work itself (it reaps every orphan and, at shutdown, SIGTERMs every
   * process, waits, SIGKILLs and syncs), so there is no PID 1 handoff: `"auto"` needs
   * nothing more, and an absolute path (e.g. a service supervisor such as `runsvdir`,
   * `s6-svscan` or `supervisord`) is started at every boot, before `create()` resolves, as
   * a background process of the agent (stdio on /dev/null; needs the sandbox's shell, and
   * the program must exist: otherwise `create()` rejects with `InvalidConfigError`,
   * field `init`). An init that insists on being PID 1 (systemd) does not work here.
   */
  init(cmd: string, args: readonly string[] = []): this {
    this.#raw.init = { cmd, args: Array.isArray(args) ? [...args] : args, env: [] };
    return this;
  }

  /** {@link init} with a builder for its args and env: `.initWith("/sbin/runsvdir", i => i.args(["/etc/service"]).env("K", "v"))`. */
  initWith(cmd: string, configure: (i: InitOptionsBuilder) => InitOptionsBuilder | void): this {
    const b = new InitOptionsBuilder();
    if (typeof configure === "function") configure(b);
    this.#raw.init = { cmd, args: [...b.args_], env: [...b.env_] };
    return this;
  }

  /**
   * Validate the configuration without starting anything. Throws {@link InvalidConfigError}.
   * The result is the configuration as `sb.config()` will show it (no secret values).
   */
  validate(): SandboxConfig {
    return copyConfig(validateConfig(this.#raw));
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

  /**
   * Create (attached) with pull progress, as the reference SDK does: iterate the
   * session (or `session.progress.recv()`) for `PullProgress` events, then
   * `await session.awaitSandbox()` (single use). An invalid configuration rejects here.
   */
  async createWithPullProgress(): Promise<PullProgressCreate> {
    return this.#withPullProgress(true);
  }

  /** {@link createWithPullProgress} for a detached sandbox. */
  async createDetachedWithPullProgress(): Promise<PullProgressCreate> {
    return this.#withPullProgress(false);
  }

  #withPullProgress(attached: boolean): PullProgressCreate {
    this.validate();
    const session = new PullProgressCreate();
    const user = this.#onPullProgress;
    // #create reads the listener before its first await
    this.#onPullProgress = (p) => {
      session.listener(p);
      user?.(p);
    };
    try {
      session.start(this.#create(attached));
    } finally {
      this.#onPullProgress = user;
    }
    return session;
  }

  async #create(attached: boolean): Promise<Sandbox> {
    let raw = this.#raw;
    let upperSource: string | undefined;
    if (this.#fromSnapshot !== undefined) {
      if (raw.image !== undefined) {
        throw new InvalidConfigError("fromSnapshot", "invalid fromSnapshot: the snapshot pins its image; do not set image() as well");
      }
      const snap = await Snapshot.open(this.#fromSnapshot);
      const img = snap.image;
      if (img.ref === null && img.rootfsSha256 != null) {
        const now = await defaultImageSha256();
        if (now !== img.rootfsSha256) {
          throw new SnapshotIntegrityError(
            `snapshot ${snap.name} was made on another embedded default image (${img.rootfsSha256}; this install has ${now}): its disk would not match the image; recreate it here or install the @microsandbox/sdk version it was made with`,
          );
        }
      }
      raw = { ...raw, ...(img.ref === null ? {} : { image: img.kind === "oci" && img.manifestDigest !== null ? pinnedImage(img.ref, img.manifestDigest) : img.ref }) };
      upperSource = snap.upperPath;
    }
    const { config, patches } = validateAll(raw);
    const replaceTimeoutMs = this.#replace ? check(replaceTimeoutSchema, "replaceWithTimeout", this.#replaceTimeoutMs, "replace timeout") : 0;
    return launch(config, {
      mode: "create",
      attached,
      ephemeral: config.ephemeral,
      replace: this.#replace,
      replaceTimeoutMs,
      patches,
      ...(upperSource !== undefined ? { upperSource } : {}),
      ...(this.#onPullProgress ? { onPullProgress: this.#onPullProgress } : {}),
    });
  }
}

/** `registry/repository@digest`: a snapshot's image, pinned to what its disk was made on. */
function pinnedImage(ref: string, digest: string): string {
  try {
    const r = parseReference(ref);
    return `${r.registry}/${r.repository}@${digest}`;
  } catch {
    return ref;
  }
}
