/**
 * Listing sandboxes a page at a time, filtered by labels: `Sandbox.listWith(l => ...)`
 * returns a {@link SandboxPage} (the reference SDK's shape).
 */
import "./polyfill.js";
import { z } from "zod";
import { check, checkLabels, msbHome, parseStoredConfig } from "./config.js";
import { InvalidConfigError } from "./errors.js";
import { SandboxHandle } from "./handle.js";
import { toRecord, type SandboxRecord } from "./lifecycle.js";
import { callNative, native } from "./native.js";

/** Sandboxes per page when no `limit()` is given, and the most one page may hold (the reference's). */
export const DEFAULT_SANDBOX_LIST_LIMIT = 20;
export const MAX_SANDBOX_LIST_LIMIT = 100;
/** Longest cursor accepted (a cursor we make is far shorter). */
const MAX_CURSOR_LENGTH = 512;

/** One page of `Sandbox.listWith()`: newest first; `nextCursor` is absent on the last page. */
export interface SandboxPage {
  sandboxes: SandboxHandle[];
  nextCursor?: string;
}

const limitRule = `must be an integer from 1 to ${MAX_SANDBOX_LIST_LIMIT}`;
const limitSchema = z
  .number({ error: limitRule })
  .int({ error: limitRule })
  .min(1, { error: limitRule })
  .max(MAX_SANDBOX_LIST_LIMIT, { error: limitRule });

/**
 * Options of one `Sandbox.listWith()` request: `l.label("team", "a").label("env", "ci")`
 * keeps the sandboxes that carry every one of these labels (AND), `limit(n)` (1-100,
 * default 20) sizes the page, `cursor(c)` continues after a previous page's `nextCursor`.
 */
export class SandboxListBuilder {
  #limit: unknown = DEFAULT_SANDBOX_LIST_LIMIT;
  #cursor: unknown;
  readonly #labels: [unknown, unknown][] = [];

  /** At most `limit` sandboxes in the page (1-100; default 20). */
  limit(limit: number): this {
    this.#limit = limit;
    return this;
  }

  /** Continue after the page that returned this `nextCursor`. */
  cursor(cursor: string): this {
    this.#cursor = cursor;
    return this;
  }

  /** Only sandboxes with label `key` = `value` (repeatable: all must match). */
  label(key: string, value: string): this {
    this.#labels.push([key, value]);
    return this;
  }

  /** {@link label} for each entry. */
  labels(labels: Record<string, string>): this {
    if (labels === null || typeof labels !== "object") this.#labels.push([labels, ""]);
    else for (const [k, v] of Object.entries(labels)) this.#labels.push([k, v]);
    return this;
  }

  /** @internal The checked options. */
  resolve(): { limit: number; cursor: Cursor | undefined; labels: Record<string, string> } {
    const limit = check(limitSchema, "limit", this.#limit, "list limit");
    const labels = checkLabels(this.#labels);
    const cursor = this.#cursor === undefined ? undefined : decodeCursor(this.#cursor);
    return { limit, cursor, labels };
  }
}

/** Where a page ended: the last sandbox's creation time and name. */
interface Cursor {
  createdAt: number;
  name: string;
}

function encodeCursor(r: SandboxRecord): string {
  return Buffer.from(JSON.stringify([r.createdAt.getTime(), r.name]), "utf8").toString("base64url");
}

function decodeCursor(c: unknown): Cursor {
  const bad = (): never => {
    throw new InvalidConfigError("cursor", "invalid cursor: not a nextCursor of Sandbox.listWith()");
  };
  if (typeof c !== "string" || c.length === 0 || c.length > MAX_CURSOR_LENGTH || !/^[A-Za-z0-9_-]+$/.test(c)) return bad();
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(c, "base64url").toString("utf8"));
  } catch {
    return bad();
  }
  if (!Array.isArray(v) || v.length !== 2 || typeof v[0] !== "number" || !Number.isFinite(v[0]) || typeof v[1] !== "string") return bad();
  return { createdAt: v[0] as number, name: v[1] as string };
}

/** Newest first; sandboxes created in the same millisecond by name. */
function order(a: { createdAt: number; name: string }, b: { createdAt: number; name: string }): number {
  if (a.createdAt !== b.createdAt) return b.createdAt - a.createdAt;
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/**
 * The labels a stored configuration carries (`{}` for one that cannot be read: it
 * matches no label filter, and it is still listed without one).
 */
export function recordLabels(r: SandboxRecord): Record<string, string> {
  try {
    return parseStoredConfig(r.configJson, r.name).labels;
  } catch {
    return {};
  }
}

/** `true` when `labels` has every `want` pair (AND). */
export function matchesLabels(labels: Record<string, string>, want: Record<string, string>): boolean {
  return Object.entries(want).every(([k, v]) => Object.prototype.hasOwnProperty.call(labels, k) && labels[k] === v);
}

/** One page of records, filtered and ordered (pure: the unit tests drive it). */
export function pageOf(
  records: readonly SandboxRecord[],
  o: { limit: number; cursor: Cursor | undefined; labels: Record<string, string> },
): { records: SandboxRecord[]; nextCursor?: string } {
  const filtered = (Object.keys(o.labels).length === 0 ? [...records] : records.filter((r) => matchesLabels(recordLabels(r), o.labels)))
    .map((r) => ({ r, key: { createdAt: r.createdAt.getTime(), name: r.name } }))
    .sort((a, b) => order(a.key, b.key));
  const cursor = o.cursor;
  const after = cursor === undefined ? filtered : filtered.filter((e) => order(e.key, cursor) > 0);
  const page = after.slice(0, o.limit).map((e) => e.r);
  const last = page[page.length - 1];
  return after.length > o.limit && last !== undefined ? { records: page, nextCursor: encodeCursor(last) } : { records: page };
}

/** `Sandbox.listWith()`. */
export async function listSandboxPage(configure: (l: SandboxListBuilder) => SandboxListBuilder | void): Promise<SandboxPage> {
  const b = new SandboxListBuilder();
  if (typeof configure === "function") configure(b);
  const o = b.resolve();
  const home = msbHome();
  const binding = await callNative(() => native());
  const records = (await callNative(() => binding.listSandboxes(home))).map(toRecord);
  const page = pageOf(records, o);
  const sandboxes = page.records.map((r) => new SandboxHandle(r, home));
  return page.nextCursor === undefined ? { sandboxes } : { sandboxes, nextCursor: page.nextCursor };
}

/**
 * What `Sandbox.list()` returns: every sandbox, as an array (this SDK's shape, kept) that
 * is also a {@link SandboxPage} (`sandboxes`, no `nextCursor`: it is the only page), so
 * code written for the reference SDK's `(await Sandbox.list()).sandboxes` runs too.
 */
export type SandboxList = SandboxHandle[] & SandboxPage;

/** @internal */
export function asSandboxList(handles: SandboxHandle[]): SandboxList {
  const list = handles as SandboxList;
  Object.defineProperty(list, "sandboxes", { value: handles, enumerable: false });
  return list;
}
