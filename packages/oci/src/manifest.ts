/** Manifest, index and image config documents (validated with zod) and ImageConfig. */
import { z } from "zod";
import { OciError } from "./errors.js";
import { MEDIA } from "./registry.js";

const digest = z.string().regex(/^sha256:[a-f0-9]{64}$/, "must be a sha256 digest (sha256:<64 lowercase hex>)");

export const descriptorSchema = z.object({
  mediaType: z.string().optional(),
  digest,
  size: z.number().int().nonnegative(),
  urls: z.array(z.string()).optional(),
  annotations: z.record(z.string(), z.string()).optional(),
  platform: z
    .object({
      os: z.string(),
      architecture: z.string(),
      variant: z.string().optional(),
      "os.version": z.string().optional(),
    })
    .optional(),
});
export type Descriptor = z.infer<typeof descriptorSchema>;

export const indexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(descriptorSchema),
});
export type ImageIndex = z.infer<typeof indexSchema>;

export const manifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: descriptorSchema,
  layers: z.array(descriptorSchema),
});
export type ImageManifest = z.infer<typeof manifestSchema>;

export const configSchema = z.object({
  architecture: z.string().optional(),
  os: z.string().optional(),
  variant: z.string().optional(),
  config: z
    .object({
      Entrypoint: z.array(z.string()).nullish(),
      Cmd: z.array(z.string()).nullish(),
      Env: z.array(z.string()).nullish(),
      WorkingDir: z.string().nullish(),
      User: z.string().nullish(),
      // read only by inspect; never a reason to refuse an image
      Labels: z.unknown().optional(),
      StopSignal: z.unknown().optional(),
    })
    .nullish(),
  created: z.unknown().optional(),
  rootfs: z.object({
    type: z.string(),
    diff_ids: z.array(digest),
  }),
});
export type ImageConfigDoc = z.infer<typeof configSchema>;

export interface ImageConfig {
  entrypoint: string[] | null;
  cmd: string[] | null;
  env: [string, string][];
  workingDir: string | null;
  user: string | null;
}

export function isIndex(mediaType: string): boolean {
  return mediaType === MEDIA.ociIndex || mediaType === MEDIA.dockerList;
}

export function isImageManifest(mediaType: string): boolean {
  return mediaType === MEDIA.ociManifest || mediaType === MEDIA.dockerManifest;
}

function parseJson<T>(schema: z.ZodType<T>, body: Uint8Array | string, what: string, dg?: string): T {
  let raw: unknown;
  try {
    raw = JSON.parse(typeof body === "string" ? body : Buffer.from(body).toString("utf8"));
  } catch (e) {
    throw new OciError("image", `${what} is not valid JSON: ${(e as Error).message}`, dg ? { digest: dg } : undefined);
  }
  const r = schema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    const where = issue ? `${issue.path.join(".") || "(top)"}: ${issue.message}` : "invalid";
    throw new OciError("image", `${what} is not valid: ${where}`, dg ? { digest: dg } : undefined);
  }
  return r.data;
}

export const parseIndex = (b: Uint8Array | string, what: string, dg?: string): ImageIndex => parseJson(indexSchema, b, what, dg);
export const parseManifest = (b: Uint8Array | string, what: string, dg?: string): ImageManifest =>
  parseJson(manifestSchema, b, what, dg);
export const parseConfig = (b: Uint8Array | string, what: string, dg?: string): ImageConfigDoc => parseJson(configSchema, b, what, dg);

/** The runtime defaults of an image config ("K=V" env entries become pairs). */
export function imageConfigOf(doc: ImageConfigDoc): ImageConfig {
  const c = doc.config ?? {};
  const env: [string, string][] = [];
  for (const e of c.Env ?? []) {
    const i = e.indexOf("=");
    if (i > 0) env.push([e.slice(0, i), e.slice(i + 1)]);
    else if (i < 0 && e) env.push([e, ""]);
  }
  return {
    entrypoint: c.Entrypoint && c.Entrypoint.length ? [...c.Entrypoint] : null,
    cmd: c.Cmd && c.Cmd.length ? [...c.Cmd] : null,
    env,
    workingDir: c.WorkingDir ? c.WorkingDir : null,
    user: c.User ? c.User : null,
  };
}
