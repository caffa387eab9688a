/**
 * Typed errors. Every error the SDK throws is a {@link MicrosandboxError} with a
 * string `code` that is stable across versions, so callers can branch on
 * `err.code` (or `instanceof`) instead of parsing messages.
 */
import { ERROR_CODES, type ErrorCode } from "@microsandbox/contract";

import { describeBytes } from "./limits.js";

export class MicrosandboxError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/**
 * A builder option or call argument failed validation. `field` names it. Also built the
 * reference SDK's way, `new InvalidConfigError(message, options?)`: `field` is then the
 * message's leading `name: ` if it has one, else `"config"`.
 */
export class InvalidConfigError extends MicrosandboxError {
  readonly field: string;

  constructor(field: string, message: string, options?: { cause?: unknown });
  constructor(message: string, options?: { cause?: unknown });
  constructor(a: string, b?: string | { cause?: unknown }, c?: { cause?: unknown }) {
    const ours = typeof b === "string";
    const message = ours ? b : a;
    super("invalidConfig", message, ours ? c : b);
    this.field = ours ? a : (/^([A-Za-z][A-Za-z0-9_.[\]]*): /.exec(a)?.[1] ?? "config");
  }
}

/** No sandbox with that name exists. */
export class SandboxNotFoundError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("sandboxNotFound", message, options);
  }
}

/** A sandbox with that name already exists (names are unique). */
export class SandboxAlreadyExistsError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("sandboxAlreadyExists", message, options);
  }
}

/** The operation needs a stopped sandbox, and this one is still running. */
export class SandboxStillRunningError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("sandboxStillRunning", message, options);
  }
}

/** The operation needs a running sandbox, and this handle's sandbox was stopped or killed. */
export class SandboxNotRunningError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("sandboxNotRunning", message, options);
  }
}

/** The sandbox is draining: commands already running finish, new ones are refused. */
export class SandboxDrainingError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("sandboxDraining", message, options);
  }
}

/** The sandbox is paused (`pause()`): commands, file operations, pings and metrics are refused until `resume()`. */
export class SandboxPausedError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("sandboxPaused", message, options);
  }
}

/**
 * A sandbox's stored configuration cannot be read back (not JSON, or not a
 * configuration). Only that sandbox's `config()` (and what needs it: `start`,
 * `connect`) fails; listing and removing sandboxes keep working.
 */
export class CorruptConfigError extends MicrosandboxError {
  /** The sandbox whose configuration is unreadable. */
  readonly sandbox: string;

  constructor(sandbox: string, message: string, options?: { cause?: unknown }) {
    super("corruptConfig", message, options);
    this.sandbox = sandbox;
  }
}

/** The root filesystem (directory or disk image) given to `.image()` does not exist or is unusable. */
export class ImageNotFoundError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("imageNotFound", message, options);
  }
}

/** An OCI image could not be pulled or unpacked (bad digest, unsafe layer, registry failure). */
export class ImageError extends MicrosandboxError {
  readonly digest: string | undefined;

  constructor(message: string, options?: { cause?: unknown; digest?: string }) {
    super("image", message, options);
    this.digest = options?.digest;
  }
}

/**
 * A cached image cannot be removed: a sandbox (running or stopped) was made from it.
 * Remove those sandboxes first, or pass `force: true`. `sandboxes` names them.
 */
export class ImageInUseError extends MicrosandboxError {
  readonly sandboxes: string[];

  constructor(message: string, options?: { cause?: unknown; sandboxes?: string[] }) {
    super("imageInUse", message, options);
    this.sandboxes = [...(options?.sandboxes ?? [])];
  }
}

/** A registry rejected the credentials (or demanded some and none were given). */
export class RegistryAuthError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("registryAuth", message, options);
  }
}

/**
 * The reference SDK's error for a missing VM kernel library (`code: "libkrunfwNotFound"`).
 * Ours boots QEMU and throws its subclass {@link KernelNotFoundError}, so
 * `instanceof LibkrunfwNotFoundError` catches it too.
 */
export class LibkrunfwNotFoundError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("libkrunfwNotFound", message, options);
  }
}

/** The guest kernel or initramfs is missing (the guest assets were not built). A {@link LibkrunfwNotFoundError}. */
export class KernelNotFoundError extends LibkrunfwNotFoundError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    (this as { code: string }).code = "kernelNotFound";
  }
}

/** QEMU is not installed on the host. */
export class QemuNotFoundError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("qemuNotFound", message, options);
  }
}

/** The guest agent did not answer in time (the message carries the end of the kernel log). */
export class AgentTimeoutError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("agentTimeout", message, options);
  }
}

/** The sandbox runtime (msb-runtime or the VMM) failed. */
export class RuntimeError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("runtime", message, options);
  }
}

/** The host<->guest channel saw a malformed or unexpected message. */
export class ProtocolError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("protocol", message, options);
  }
}

/** The command could not be started in the guest (for example: not found, not executable). */
export class ExecFailedError extends MicrosandboxError {
  readonly reason: string;

  constructor(reason: string, message?: string, options?: { cause?: unknown }) {
    super("execFailed", message ?? `command could not be started: ${reason}`, options);
    this.reason = reason;
  }
}

/**
 * The command did not finish within its timeout. Also built the reference SDK's way,
 * `new ExecTimeoutError(message, timeoutMs?, options?)` (`timeoutMs` then `null` when not given).
 */
export class ExecTimeoutError extends MicrosandboxError {
  readonly timeoutMs: number;

  constructor(timeoutMs: number, message?: string, options?: { cause?: unknown });
  constructor(message: string, timeoutMs?: number | null, options?: { cause?: unknown });
  constructor(a: number | string, b?: string | number | null, options?: { cause?: unknown }) {
    if (typeof a === "string") {
      super("execTimeout", a, options);
      this.timeoutMs = typeof b === "number" ? b : (null as unknown as number);
    } else {
      super("execTimeout", typeof b === "string" ? b : `command did not finish within ${a} ms`, options);
      this.timeoutMs = a;
    }
  }
}

/**
 * A buffered call (`exec`, `shell`, `execWith`, `collect()`, `fs().read`, ...) received
 * more than its size limit. The guest side was stopped (the command killed, the read
 * ended) as soon as the limit was crossed. `limit` is the limit in bytes and `field` the
 * option that sets it (`maxOutputBytes`); use a stream to read unbounded output.
 */
export class OutputLimitError extends MicrosandboxError {
  readonly limit: number;
  readonly field: string;

  constructor(limit: number, message?: string, options?: { cause?: unknown; field?: string }) {
    const field = options?.field ?? "maxOutputBytes";
    super(
      "outputLimit",
      message ?? `output exceeded the limit of ${describeBytes(limit)} set by ${field}; raise ${field} or read the output as a stream`,
      options,
    );
    this.limit = limit;
    this.field = field;
  }
}

/** `takeStdin()` or a write to stdin could not be served: stdin is not a pipe, was already taken, was closed, or the command has exited. */
export class StdinUnavailableError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("stdinUnavailable", message, options);
  }
}

/**
 * A filesystem operation of `sb.fs()` failed in the guest. `errno` is the symbolic
 * errno the guest reported (`ENOENT`, `EACCES`, `EISDIR`, `ENOTDIR`, `EEXIST`,
 * `ENOTEMPTY`, `EROFS`, `ENOSPC`, ...) and `path` the guest path the operation was
 * called with.
 */
export class SandboxFsOpsError extends MicrosandboxError {
  readonly errno: string;
  readonly path: string;

  constructor(errno: string, path: string, message?: string, options?: { cause?: unknown });
  /** The reference SDK's form: `errno` is then the message's first `E...` word (else `EIO`), `path` empty. */
  constructor(message: string, options?: { cause?: unknown });
  constructor(a: string, b?: string | { cause?: unknown }, message?: string, options?: { cause?: unknown }) {
    if (typeof b === "string") {
      super("sandboxFsOps", message ?? `${b}: ${a}`, options);
      this.errno = a;
      this.path = b;
    } else {
      super("sandboxFsOps", a, b);
      this.errno = /\b(E[A-Z0-9]{1,15})\b/.exec(a)?.[1] ?? "EIO";
      this.path = "";
    }
  }
}

/** No volume of that name exists (`Volume.get`, `Volume.remove`, a volume's `fs()`). */
export class VolumeNotFoundError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("volumeNotFound", message, options);
  }
}

/** A volume of that name exists already (`Volume.builder(name).create()`). */
export class VolumeAlreadyExistsError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("volumeAlreadyExists", message, options);
  }
}

/** No snapshot of that name, digest or path (`Snapshot.open/get/remove`, `fromSnapshot`). */
export class SnapshotNotFoundError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("snapshotNotFound", message, options);
  }
}

/** A snapshot of that name exists already (`Snapshot.builder(name).create()` without `force()`). */
export class SnapshotAlreadyExistsError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("snapshotAlreadyExists", message, options);
  }
}

/** A snapshot artifact is damaged: its manifest unreadable, its disk missing, truncated, or not what `verify()` recorded. */
export class SnapshotIntegrityError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("snapshotIntegrity", message, options);
  }
}

/**
 * A log cursor given as `fromCursor` that cannot be used here (`field: "fromCursor"`):
 * `reason` is `"malformed"` (not a cursor, or one pointing where no entry starts) or
 * `"otherSandbox"` (taken from another sandbox's logs, or from an earlier sandbox that
 * had the same name).
 */
export class InvalidCursorError extends MicrosandboxError {
  readonly field = "fromCursor";
  readonly reason: "malformed" | "otherSandbox";

  constructor(reason: "malformed" | "otherSandbox", message: string, options?: { cause?: unknown }) {
    super("invalidCursor", message, options);
    this.reason = reason;
  }
}

/**
 * A log position is no longer on disk: the sandbox's exec log rotated past it (one
 * previous file is kept), so a cursor or a follower that fell that far behind cannot
 * resume exactly. Start again without a cursor (or from `since`).
 */
export class MissedRotationError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("missedRotation", message, options);
  }
}

type Ctor = new (message: string, options?: { cause?: unknown }) => MicrosandboxError;

// Every native code but invalidConfig (which carries a field) has its class: the
// generated `ErrorCode` union makes this map exhaustive at compile time.
const NATIVE_CODES: Record<Exclude<ErrorCode, "invalidConfig">, Ctor> = {
  sandboxNotFound: SandboxNotFoundError,
  sandboxAlreadyExists: SandboxAlreadyExistsError,
  sandboxStillRunning: SandboxStillRunningError,
  sandboxNotRunning: SandboxNotRunningError,
  sandboxDraining: SandboxDrainingError,
  sandboxPaused: SandboxPausedError,
  imageNotFound: ImageNotFoundError,
  image: ImageError,
  registryAuth: RegistryAuthError,
  kernelNotFound: KernelNotFoundError,
  qemuNotFound: QemuNotFoundError,
  agentTimeout: AgentTimeoutError,
  runtime: RuntimeError,
  protocol: ProtocolError,
};

const isNativeCode = (s: string): s is ErrorCode => (ERROR_CODES as readonly string[]).includes(s);
// An invalidConfig text from the native side may start with the field: "image: ...".
const FIELD_PREFIX = /^([A-Za-z][A-Za-z0-9_.[\]]*): /;

/**
 * Map an error thrown by the native addon (message `"<code>: <text>"`) to the
 * matching typed error, with the code prefix stripped from the message. An
 * error that already is a {@link MicrosandboxError} is returned as is; anything
 * else becomes a {@link RuntimeError} keeping the original as `cause`.
 */
export function fromNative(e: unknown): MicrosandboxError {
  if (e instanceof MicrosandboxError) return e;
  const message = e instanceof Error ? e.message : String(e);
  // napi's async calls carry only a message: the addon writes "<code>: <text>" with a
  // code of the contract's ErrorCode (packages/core-native/src/lib.rs, `err`).
  const sep = message.indexOf(": ");
  const code = sep > 0 ? message.slice(0, sep) : "";
  if (isNativeCode(code)) {
    const text = message.slice(sep + 2);
    if (code === "invalidConfig") {
      const f = FIELD_PREFIX.exec(text);
      return new InvalidConfigError(f ? (f[1] as string) : "config", text, { cause: e });
    }
    return new NATIVE_CODES[code](text, { cause: e });
  }
  return new RuntimeError(message, { cause: e });
}

/** Map an error of the image puller (`@microsandbox/oci`, which has `code`, maybe `digest`/`field`). */
export function fromOci(e: unknown): MicrosandboxError {
  if (e instanceof MicrosandboxError) return e;
  const err = e as { code?: unknown; message?: unknown; digest?: unknown; field?: unknown };
  const message = typeof err?.message === "string" ? err.message : String(e);
  switch (err?.code) {
    case "imageNotFound":
      return new ImageNotFoundError(message, { cause: e });
    case "imageInUse": {
      const users = (e as { sandboxes?: unknown }).sandboxes;
      return new ImageInUseError(message, { cause: e, sandboxes: Array.isArray(users) ? users.filter((u): u is string => typeof u === "string") : [] });
    }
    case "registryAuth":
      return new RegistryAuthError(message, { cause: e });
    case "invalidConfig":
      return new InvalidConfigError(typeof err.field === "string" ? err.field : "image", message, { cause: e });
    case "image":
      return new ImageError(message, { cause: e, digest: typeof err.digest === "string" ? err.digest : undefined });
    default:
      return fromNative(e);
  }
}

// ---- the reference SDK's other error classes (npm `microsandbox` 0.6, src/errors.ts) ----
// Same names and codes, so code written for it can `instanceof` / branch on `code`.
// Where ours has its own class for the same failure, that one is thrown (see each).

/** Every `code` a {@link MicrosandboxError} may carry: the reference SDK's and ours. */
export type MicrosandboxErrorCode =
  | "io"
  | "http"
  | "cloudHttp"
  | "libkrunfwNotFound"
  | "database"
  | "invalidConfig"
  | "noDefaultCommand"
  | "sandboxNotFound"
  | "sandboxAlreadyExists"
  | "sandboxStillRunning"
  | "runtime"
  | "json"
  | "protocol"
  | "nix"
  | "execTimeout"
  | "terminal"
  | "sandboxFsOps"
  | "imageNotFound"
  | "imageInUse"
  | "volumeNotFound"
  | "volumeAlreadyExists"
  | "image"
  | "patchFailed"
  | "metricsDisabled"
  | "metricsUnavailable"
  | "unsupportedOperation"
  | "unsupported"
  | "custom"
  // ours
  | ErrorCode
  | "corruptConfig"
  | "execFailed"
  | "outputLimit"
  | "stdinUnavailable"
  | "invalidCursor"
  | "missedRotation"
  | "snapshotNotFound"
  | "snapshotAlreadyExists"
  | "snapshotIntegrity";

/** A host I/O operation failed (the reference's `io`; ours mostly reports `runtime` or `sandboxFsOps`). */
export class IoError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("io", message, options);
  }
}

/** An HTTP request failed (the reference's `http`; registry failures are ours {@link ImageError} / {@link RegistryAuthError}). */
export class HttpError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("http", message, options);
  }
}

/** The reference's cloud backend HTTP error. There is no cloud backend here: never thrown, defined for `instanceof`. */
export class CloudHttpError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("cloudHttp", message, options);
  }
}

/** The reference's state-database error (ours: {@link CorruptConfigError} for an unreadable record, else `runtime`). */
export class DatabaseError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("database", message, options);
  }
}

/** The image defines no entrypoint or command to run by default. */
export class NoDefaultCommandError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("noDefaultCommand", message, options);
  }
}

/** A JSON document could not be parsed or produced. */
export class JsonError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("json", message, options);
  }
}

/** A host system call failed (the reference's `nix`). */
export class NixError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("nix", message, options);
  }
}

/** The host terminal could not be set up for an attached session. */
export class TerminalError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("terminal", message, options);
  }
}

/** A rootfs patch could not be applied. */
export class PatchFailedError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("patchFailed", message, options);
  }
}

/** Metrics were asked for a sandbox that has them turned off. */
export class MetricsDisabledError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("metricsDisabled", message, options);
  }
}

/** Metrics could not be read (the sandbox is not running, or its runtime did not answer). */
export class MetricsUnavailableError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("metricsUnavailable", message, options);
  }
}

/** The guest agent does not support this operation. */
export class UnsupportedOperationError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("unsupportedOperation", message, options);
  }
}

/** The operation is not supported on this host or backend. */
export class UnsupportedError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("unsupported", message, options);
  }
}

/** Any other error (the reference's `custom`). */
export class CustomError extends MicrosandboxError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("custom", message, options);
  }
}
