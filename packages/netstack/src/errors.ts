/**
 * The error every network option raises, and the one way options are checked: a zod
 * schema per field, its first issue turned into a {@link NetworkConfigError} naming the
 * field in both `field` and the message. (A module of its own so that index.ts and
 * secrets.ts can both use it without importing each other.)
 */
import type { z } from "zod";

/** A network option failed validation. `field` names it; `code` is always `"invalidConfig"`. */
export class NetworkConfigError extends Error {
  readonly code = "invalidConfig" as const;
  readonly field: string;

  constructor(field: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.field = field;
    this.name = "NetworkConfigError";
  }
}

function show(value: unknown): string {
  const s = typeof value === "string" ? JSON.stringify(value) : typeof value === "number" ? String(value) : value === null || value === undefined ? String(value) : `(${typeof value})`;
  return s.length > 48 ? `${s.slice(0, 45)}...` : s;
}

/** Parse `value` with `schema`, or throw a {@link NetworkConfigError} naming `field`. */
export function check<T>(schema: z.ZodType<T, unknown>, field: string, value: unknown): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const why = r.error.issues[0]?.message ?? "is invalid";
  throw new NetworkConfigError(field, `invalid ${field} ${show(value)}: ${field} ${why}`, { cause: r.error });
}

/**
 * {@link check} for a secret's value: the message never shows the value, and the zod
 * error is not attached (nothing that reaches a log may hold it). `what` names the
 * secret in the message when known (e.g. `of secret API_KEY`).
 */
export function checkHidden<T>(schema: z.ZodType<T, unknown>, field: string, value: unknown, what = ""): T {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const why = r.error.issues[0]?.message ?? "is invalid";
  throw new NetworkConfigError(field, `invalid ${field}${what ? ` ${what}` : ""}: ${field} ${why} (the value is not shown)`);
}
