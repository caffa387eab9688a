/**
 * How msb reports errors: one line on stderr, `msb: <message>`, whatever raised it
 * (a usage error found by commander or by msb, an SDK error, anything else). With
 * `--json` given (before `--`), the line is a JSON object instead:
 * `{"error":{"code":"...","message":"..."}}` (plus `field` for an invalid option), with
 * the SDK error's stable `code`, or `usage` for a command line msb cannot use.
 */
import { ExecFailedError, InvalidConfigError, MicrosandboxError } from "@microsandbox/sdk";

/** What is reported about one error. */
export interface CliError {
  /** The SDK's error code (`invalidConfig`, `sandboxNotFound`, ...), `usage`, or `internal`. */
  code: string;
  message: string;
  /** The option an `invalidConfig` error is about. */
  field?: string;
}

/** The code of a command line msb cannot use (exit 2). */
export const USAGE = "usage";

/** The code of an error that is not the SDK's (a bug, or a host failure msb did not expect). */
export const INTERNAL = "internal";

/** `--json` among msb's own arguments (not the command's, after `--`). */
export function wantsJson(argv: readonly string[]): boolean {
  const sep = argv.indexOf("--");
  return (sep === -1 ? argv : argv.slice(0, sep)).includes("--json");
}

/** An error as msb reports it. */
export function cliError(e: unknown): CliError {
  if (e instanceof InvalidConfigError) return { code: e.code, message: e.message, field: e.field };
  // "command not found: x" says it all (the message adds "command could not be started: ")
  if (e instanceof ExecFailedError) return { code: e.code, message: e.reason };
  if (e instanceof MicrosandboxError) return { code: e.code, message: e.message };
  return { code: INTERNAL, message: e instanceof Error ? e.message : String(e) };
}

/** A usage error from commander's text (`error: unknown option '--x'\n`, maybe with a hint on more lines). */
export function usageError(text: string): CliError {
  const message = text
    .replace(/^error: /, "")
    .replace(/\s+$/, "")
    .replace(/\n+/g, " ");
  return { code: USAGE, message };
}

/** The line to write to stderr for `e` (newline included). */
export function formatError(e: CliError, json: boolean): string {
  if (!json) return `msb: ${e.message}\n`;
  const error: CliError = { code: e.code, message: e.message };
  if (e.field !== undefined) error.field = e.field;
  return `${JSON.stringify({ error })}\n`;
}
