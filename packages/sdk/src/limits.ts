/**
 * Size limits the SDK enforces at its boundary, in one place (documented in the README).
 */

/**
 * Default limit of a buffered call's output (`sb.exec`, `sb.shell`, `execWith`,
 * `shellWith`, `collect()`): stdout and stderr together, in bytes (64 MiB). Beyond it
 * the command is killed and the call rejects with `OutputLimitError`. Streams
 * (iterating an `ExecHandle`, `recv()`) are not limited.
 */
export const DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024;

/** A byte count for messages: "67108864 bytes (64 MiB)". */
export function describeBytes(n: number): string {
  const units: [number, string][] = [
    [1024 * 1024 * 1024, "GiB"],
    [1024 * 1024, "MiB"],
    [1024, "KiB"],
  ];
  for (const [size, unit] of units) {
    if (n >= size && n % size === 0) return `${n} bytes (${n / size} ${unit})`;
  }
  return `${n} bytes`;
}

/**
 * Largest payload of one host<->guest frame (crates/protocol/src/frame.rs). A command's
 * request and a sandbox's bootstrap each travel in one frame; the limits below keep them
 * well under it.
 */
export const MAX_FRAME_PAYLOAD_BYTES = 1024 * 1024;

/**
 * Largest argument (and command) of one command, and largest environment entry
 * (`KEY=value`), in UTF-8 bytes: Linux's MAX_ARG_STRLEN (128 KiB) less the terminating
 * NUL. The guest kernel refuses anything longer at execve.
 */
export const MAX_ARG_BYTES = 128 * 1024 - 1;

/** Largest environment entry, `KEY=value`, in UTF-8 bytes (the same kernel limit). */
export const MAX_ENV_ENTRY_BYTES = 128 * 1024 - 1;

/** Largest guest path (workdir, cwd, volume and patch paths, symlink targets), in bytes: PATH_MAX less the NUL. */
export const MAX_PATH_BYTES = 4095;

/** Largest user (`name`, `uid`, `uid:gid`, `name:group`), in bytes. */
export const MAX_USER_BYTES = 256;

/**
 * Largest request of one command (command, arguments, environment, cwd, user) and
 * largest sandbox bootstrap (environment, workdir, user, hostname, volumes), as
 * encoded on the wire (estimated from above): half a frame. Together they also fit the
 * guest's default ARG_MAX (2 MiB: a quarter of the 8 MiB stack limit), which the
 * sandbox's environment, the command's environment and its arguments share at execve.
 */
export const MAX_REQUEST_BYTES = 512 * 1024;
