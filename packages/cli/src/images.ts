/** `msb pull`, `msb images`, `msb rmi`. */
import { Images, type ImageInfo } from "@microsandbox/sdk";
import type { RegistryFlags } from "./args.js";
import { PullProgressView, formatBytes, type ProgressSink } from "./progress.js";
import { describeError } from "./run.js";

export interface ImagesIO {
  out(text: string): void;
  err(text: string): void;
  progress: ProgressSink;
  /** Report errors as JSON objects (`--json`). */
  json?: boolean;
}

export async function pullCommand(image: string, r: RegistryFlags, io: ImagesIO): Promise<number> {
  const view = new PullProgressView(io.progress);
  try {
    await Images.pull(image, {
      pullPolicy: "always",
      ...(r.username !== undefined ? { registryAuth: { kind: "basic" as const, username: r.username, password: r.password ?? "" } } : {}),
      ...(r.insecure ? { insecureRegistry: true } : {}),
      ...(r.caFile !== undefined ? { registryCa: r.caFile } : {}),
      onProgress: (p) => view.update(p),
    });
    return 0;
  } catch (e) {
    const d = describeError(e, io.json);
    io.err(`${d.message}\n`);
    return d.code;
  }
}

/** "12 seconds ago", "3 minutes ago", ... */
export function ago(d: Date, now: Date): string {
  const s = Math.max(0, Math.round((now.getTime() - d.getTime()) / 1000));
  if (s < 60) return `${s} seconds ago`;
  if (s < 3600) return `${Math.round(s / 60)} minutes ago`;
  if (s < 86400) return `${Math.round(s / 3600)} hours ago`;
  return `${Math.round(s / 86400)} days ago`;
}

/** A plain text table: columns padded to their widest cell. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join("  ");
  return [line(header), ...rows.map(line)].join("\n") + "\n";
}

export function formatImages(images: ImageInfo[], json: boolean, now = new Date()): string {
  if (json) {
    return JSON.stringify(images.map((i) => ({ ...i, pulledAt: i.pulledAt.toISOString() })), null, 2) + "\n";
  }
  return table(
    ["REFERENCE", "DIGEST", "SIZE", "PULLED"],
    images.map((i) => [i.reference, i.digest.replace(/^sha256:/, "").slice(0, 12), formatBytes(i.sizeBytes), ago(i.pulledAt, now)]),
  );
}

export async function imagesCommand(json: boolean, io: ImagesIO): Promise<number> {
  try {
    io.out(formatImages(await Images.list(), json));
    return 0;
  } catch (e) {
    const d = describeError(e, io.json);
    io.err(`${d.message}\n`);
    return d.code;
  }
}

export async function rmiCommand(images: string[], io: ImagesIO): Promise<number> {
  let code = 0;
  for (const image of images) {
    try {
      await Images.remove(image);
      io.out(`removed ${image}\n`);
    } catch (e) {
      const d = describeError(e, io.json);
      io.err(`${d.message}\n`);
      code = d.code;
    }
  }
  return code;
}
