/**
 * Size checks at the API boundary: what goes to the guest in one frame (a command's
 * request, a sandbox's bootstrap) is checked here, before anything is sent or booted,
 * so that an oversized input is an InvalidConfigError naming it rather than a
 * ProtocolError from the wire (or E2BIG from the guest's execve).
 */
import { InvalidConfigError } from "./errors.js";
import {
  describeBytes,
  MAX_ARG_BYTES,
  MAX_ENV_ENTRY_BYTES,
  MAX_PATH_BYTES,
  MAX_REQUEST_BYTES,
  MAX_USER_BYTES,
} from "./limits.js";

/** UTF-8 length of `s` (lone surrogates count as the 3-byte replacement they become). */
export function byteLength(s: string): number {
  return Buffer.byteLength(s, "utf8");
}

/** Upper bound of a string's CBOR encoding: its bytes and a header of at most 9. */
function encoded(bytes: number): number {
  return bytes + 9;
}

/** A field name for an environment key: `env.KEY`, or `env` when the key itself is unreasonably long. */
export function envField(key: string): string {
  return key.length <= 256 ? `env.${key}` : "env";
}

function tooLong(field: string, what: string, bytes: number, max: number, why: string): InvalidConfigError {
  return new InvalidConfigError(field, `invalid ${field}: ${what} is ${describeBytes(bytes)}, more than the ${describeBytes(max)} ${why}`);
}

/** One string of at most `max` bytes; returns its byte length. */
export function checkBytes(field: string, what: string, s: string, max: number, why: string): number {
  const n = byteLength(s);
  if (n > max) throw tooLong(field, what, n, max, why);
  return n;
}

const ARG_WHY = "an argument may have (Linux's MAX_ARG_STRLEN)";
const ENV_WHY = "an environment entry KEY=value may have (Linux's MAX_ARG_STRLEN)";
const PATH_WHY = "a path may have (PATH_MAX)";
const USER_WHY = "a user may have";

/** Bytes of an environment entry `KEY=value` (checked). */
function envEntry(key: string, value: string): number {
  const n = byteLength(key) + 1 + byteLength(value);
  if (n > MAX_ENV_ENTRY_BYTES) throw tooLong(envField(key), `the entry ${key.length > 40 ? key.slice(0, 37) + "..." : key}=...`, n, MAX_ENV_ENTRY_BYTES, ENV_WHY);
  return n;
}

export function checkPath(field: string, path: string): number {
  return checkBytes(field, "the path", path, MAX_PATH_BYTES, PATH_WHY);
}

/** A shell script (it is one argument of the shell). */
export function checkScript(script: string): void {
  checkBytes("script", "the script", script, MAX_ARG_BYTES, "a script may have (it is one argument of the shell: Linux's MAX_ARG_STRLEN)");
}

export function checkUser(field: string, user: string): number {
  return checkBytes(field, "the user", user, MAX_USER_BYTES, USER_WHY);
}

function checkTotal(parts: [field: string, bytes: number][], what: string): void {
  let total = 0;
  for (const [, n] of parts) total += n;
  if (total <= MAX_REQUEST_BYTES) return;
  // Name the part that weighs most.
  let [field, most] = parts[0] ?? ["config", 0];
  for (const [f, n] of parts) if (n > most) [field, most] = [f, n];
  throw new InvalidConfigError(
    field,
    `invalid ${field}: ${what} would be about ${describeBytes(total)} (${field}: ${describeBytes(most)}), more than the ${describeBytes(MAX_REQUEST_BYTES)} allowed`,
  );
}

/** What one command's request carries. */
export interface ExecSizeInput {
  cmd: string;
  args: readonly string[];
  env: readonly [string, string][];
  cwd: string | null;
  user: string | null;
  rlimits: number;
}

/** Check the sizes of one command's request; throws InvalidConfigError naming the bad field. */
export function checkExecSizes(r: ExecSizeInput): void {
  const cmd = checkBytes("cmd", "the command", r.cmd, MAX_ARG_BYTES, ARG_WHY);
  let args = 0;
  r.args.forEach((a, i) => {
    args += encoded(checkBytes(`args[${i}]`, "the argument", a, MAX_ARG_BYTES, ARG_WHY));
  });
  let env = 0;
  for (const [k, v] of r.env) env += encoded(envEntry(k, v)) + 9;
  const cwd = r.cwd === null ? 0 : checkPath("cwd", r.cwd);
  const user = r.user === null ? 0 : checkUser("user", r.user);
  checkTotal(
    [
      ["args", args],
      ["env", env],
      ["cmd", encoded(cmd) + encoded(cwd) + encoded(user) + r.rlimits * 32 + 256],
    ],
    "the command's request",
  );
}

/** What a sandbox's bootstrap carries. */
export interface BootstrapSizeInput {
  name: string;
  env: readonly [string, string][];
  workdir: string | null;
  user: string | null;
  hostname: string | null;
  volumes: readonly { guestPath: string; source: string | null }[];
}

/** Check the sizes of what a sandbox's bootstrap carries (before boot); throws InvalidConfigError. */
export function checkBootstrapSizes(c: BootstrapSizeInput): void {
  let env = 0;
  for (const [k, v] of c.env) env += encoded(envEntry(k, v)) + 9;
  const workdir = c.workdir === null ? 0 : checkPath("workdir", c.workdir);
  const user = c.user === null ? 0 : checkUser("user", c.user);
  let volumes = 0;
  for (const v of c.volumes) volumes += encoded(checkPath("volume", v.guestPath)) + encoded(byteLength(v.source ?? "")) + 64;
  checkTotal(
    [
      ["env", env],
      ["volume", volumes],
      // root disks, entropy, clock, network, hostname (at most 253)
      ["config", encoded(workdir) + encoded(user) + 2048],
    ],
    "the sandbox's bootstrap",
  );
}
