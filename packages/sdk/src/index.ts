// Must stay the first import: installs Symbol.asyncDispose on Node 20.
import "./polyfill.js";

export { Sandbox, SandboxBuilder, DEFAULT_SHELL, DEFAULT_STOP_TIMEOUT_MS } from "./sandbox.js";
export { ExecHandle, ExecOutput, type ExecEvent, type ExitStatus } from "./exec.js";
export type { SandboxConfig } from "./config.js";
export {
  MicrosandboxError,
  InvalidConfigError,
  SandboxNotFoundError,
  SandboxAlreadyExistsError,
  SandboxStillRunningError,
  SandboxNotRunningError,
  ImageNotFoundError,
  KernelNotFoundError,
  QemuNotFoundError,
  AgentTimeoutError,
  RuntimeError,
  ProtocolError,
  ExecFailedError,
  ExecTimeoutError,
  fromNative,
} from "./errors.js";
