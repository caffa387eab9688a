/**
 * `Sandbox.warmup(options)`: make sure a memory template exists for sandboxes of a shape
 * (image, vCPUs, memory, network on or off), so that the next `create()` of that shape is
 * a restore rather than a kernel boot. It creates a throwaway sandbox of that shape (its
 * cold boot saves the template; a template already there is restored and left as is) and
 * removes it again.
 */
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import type { SandboxBuilder } from "./builder.js";
import { check, msbHome } from "./config.js";

/** What to warm up: the shape of the sandboxes that should start from the template. */
export interface WarmupOptions {
  /** The image (as `.image()`); default: the embedded default image. */
  image?: string;
  cpus?: number;
  /** Guest memory in MiB (as `.memory()`). */
  memory?: number;
  /** `false`: the shape of sandboxes made with `.disableNetwork()`. Default `true`. */
  network?: boolean;
}

/** The outcome of {@link warmup}. */
export interface WarmupResult {
  /** The template's key (`$MSB_HOME/templates/<key>`); null when none could be made (see `reason`). */
  template: string | null;
  /** `true` when this call made it; `false` when it existed already. */
  made: boolean;
  /** Why there is no template (templates turned off, a layout never templated, a failed save). */
  reason: string | null;
  /** Time taken, in milliseconds. */
  ms: number;
}

const optionsSchema = z
  .object(
    {
      image: z.string().optional(),
      cpus: z.number().optional(),
      memory: z.number().optional(),
      network: z.boolean({ error: "must be a boolean" }).optional(),
    },
    { error: "must be an object" },
  )
  .strict();

/** @internal `builder` is `Sandbox.builder` (no import cycle). */
export async function warmup(builder: (name: string) => SandboxBuilder, options: WarmupOptions = {}): Promise<WarmupResult> {
  const o = check(optionsSchema, "options", options, "warmup options");
  const t0 = performance.now();
  const b = builder(`warmup-${randomBytes(4).toString("hex")}`).ephemeral().memoryTemplate(true);
  if (o.image !== undefined) b.image(o.image);
  if (o.cpus !== undefined) b.cpus(o.cpus);
  if (o.memory !== undefined) b.memory(o.memory);
  if (o.network === false) b.disableNetwork();
  const sb = await b.create();
  let log = "";
  try {
    log = await readFile(join(msbHome(), "sandboxes", sb.name, "runtime.log"), "utf8").catch(() => "");
  } finally {
    await sb.kill().catch(() => undefined);
  }
  const made = /memory template ([0-9a-f]{16}): made /.exec(log);
  const restored = /memory template ([0-9a-f]{16}): restored /.exec(log);
  const failed = /memory template [0-9a-f]{16}: not made: (.*)$/m.exec(log);
  const key = made?.[1] ?? restored?.[1] ?? null;
  const reason =
    key !== null
      ? null
      : failed !== null
        ? `the template could not be saved: ${failed[1]}`
        : "no template for this shape: templates are off (MSB_TEMPLATES=off), or the layout is never templated";
  return { template: key, made: made !== null, reason, ms: Math.round(performance.now() - t0) };
}
