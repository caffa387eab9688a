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
