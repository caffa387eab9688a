// Defaults shared by Sandbox, SandboxHandle and launch (a module of their own so that
// none of them has to import another for a constant).

/** Default graceful-stop timeout of {@link Sandbox.stop}, in milliseconds. */
export const DEFAULT_STOP_TIMEOUT_MS = 10_000;

/** The shell {@link Sandbox.shell} runs scripts with. */
export const DEFAULT_SHELL = "/bin/sh";
