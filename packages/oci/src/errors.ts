/**
 * The one error type of this package. `code` is stable; the SDK maps it onto its own
 * typed errors (ImageError, ImageNotFoundError, RegistryAuthError, InvalidConfigError).
 */
export type OciErrorCode = "image" | "imageNotFound" | "imageInUse" | "registryAuth" | "invalidConfig";

export class OciError extends Error {
  readonly code: OciErrorCode;
  /** The blob or manifest digest the error is about, when there is one. */
  readonly digest?: string;
  /** For `invalidConfig`: the option that is wrong (e.g. "image", "platform", "caFile"). */
  readonly field?: string;
  /** For `imageInUse`: the sandboxes that use the image. */
  readonly sandboxes?: string[];

  constructor(
    code: OciErrorCode,
    message: string,
    options?: { cause?: unknown; digest?: string; field?: string; sandboxes?: string[] },
  ) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = "OciError";
    this.code = code;
    if (options?.digest !== undefined) this.digest = options.digest;
    if (options?.field !== undefined) this.field = options.field;
    if (options?.sandboxes !== undefined) this.sandboxes = [...options.sandboxes];
  }
}

export function isOciError(e: unknown): e is OciError {
  return e instanceof OciError;
}

/** A short text for an unknown thrown value, with the useful part of Node's network errors. */
export function describeError(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const parts: string[] = [e.message];
  let c: unknown = (e as { cause?: unknown }).cause;
  for (let i = 0; c instanceof Error && i < 4; i++) {
    const code = (c as { code?: unknown }).code;
    const msg = c.message + (typeof code === "string" && !c.message.includes(code) ? ` (${code})` : "");
    if (!parts.some((p) => p.includes(msg))) parts.push(msg);
    c = (c as { cause?: unknown }).cause;
  }
  return parts.join(": ");
}

/** Error `code` of a Node system / network error, following `cause` links. */
export function errorCode(e: unknown): string | undefined {
  for (let i = 0; e instanceof Error && i < 5; i++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

export function abortError(signal: AbortSignal | undefined): Error {
  const r: unknown = signal?.reason;
  if (r instanceof Error) return r;
  const e = new Error("the pull was aborted");
  e.name = "AbortError";
  return e;
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError(signal);
}
