/** `msb pull`, `msb images`, `msb rmi`, `msb image save|load|inspect|prune|rm`. */
import { InvalidArgumentError, type Command } from "commander";
import { Image, Images, type ImageDetail, type ImageHandle, type ImageInfo, type ImagePruneReport } from "@microsandbox/sdk";
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

export async function rmiCommand(images: string[], io: ImagesIO, force = false): Promise<number> {
  let code = 0;
  for (const image of images) {
    try {
      await Images.remove(image, { force });
      io.out(`removed ${image}\n`);
    } catch (e) {
      const d = describeError(e, io.json);
      io.err(`${d.message}\n`);
      code = d.code;
    }
  }
  return code;
}

/** A parsed `msb image ...` command. */
export type ImageCli =
  | { kind: "imageSave"; images: string[]; output: string; format: "docker" | "oci"; overwrite: boolean }
  | { kind: "imageLoad"; input: string; tag?: string; json: boolean }
  | { kind: "imageInspect"; image: string }
  | { kind: "imagePrune"; json: boolean }
  | { kind: "imageRm"; images: string[]; force: boolean };

const JSON_ERRORS = ["--json", 'report errors as one JSON object on stderr: {"error":{"code","message"}}'] as const;

function archiveFormat(value: string): "docker" | "oci" {
  if (value !== "docker" && value !== "oci") throw new InvalidArgumentError(`format must be docker or oci (got ${JSON.stringify(value)}).`);
  return value;
}

/** `msb image save|load|inspect|prune|rm` on the program. */
export function registerImageCommands(program: Command, on: (r: ImageCli) => void): void {
  const image = program.command("image").description("manage cached images: save, load, inspect, prune, rm");
  image
    .command("save")
    .description("write cached images to a tar archive (docker save format, or an OCI image layout)")
    .argument("<IMAGE...>", "image references (or sha256: digests)")
    .requiredOption("-o, --output <FILE>", "archive to write")
    .option("--format <format>", "docker (default: docker load reads it) or oci", archiveFormat)
    .option("-f, --force", "replace FILE if it exists")
    .option(...JSON_ERRORS)
    .action((images: string[], o: { output: string; format?: "docker" | "oci"; force?: boolean }) =>
      on({ kind: "imageSave", images, output: o.output, format: o.format ?? "docker", overwrite: o.force === true }),
    );
  image
    .command("load")
    .description("load the images of a tar archive (docker save or OCI image layout) into the cache")
    .argument("<FILE>", "archive to read")
    .option("-t, --tag <IMAGE>", "an extra reference for the first image of the archive")
    .option("--json", "print the loaded images as JSON")
    .action((input: string, o: { tag?: string; json?: boolean }) =>
      on({ kind: "imageLoad", input, ...(o.tag !== undefined ? { tag: o.tag } : {}), json: o.json === true }),
    );
  image
    .command("inspect")
    .description("show a cached image's config and layers (JSON)")
    .argument("<IMAGE>", "image reference (or sha256: digest)")
    .option(...JSON_ERRORS)
    .action((img: string) => on({ kind: "imageInspect", image: img }));
  image
    .command("prune")
    .description("remove every cached image no sandbox uses")
    .option("--json", "print the report as JSON")
    .action((o: { json?: boolean }) => on({ kind: "imagePrune", json: o.json === true }));
  image
    .command("rm")
    .description("remove cached images (refused while a sandbox uses one, unless --force)")
    .argument("<IMAGE...>", "image references (or sha256: digests)")
    .option("-f, --force", "remove even when sandboxes use the image")
    .option(...JSON_ERRORS)
    .action((images: string[], o: { force?: boolean }) => on({ kind: "imageRm", images, force: o.force === true }));
}

function handleJson(h: ImageHandle): Record<string, unknown> {
  return {
    reference: h.reference,
    manifestDigest: h.manifestDigest,
    platform: h.platform,
    layerCount: h.layerCount,
    sizeBytes: h.sizeBytes,
    createdAt: h.createdAt?.toISOString() ?? null,
    pulledAt: h.pulledAt?.toISOString() ?? null,
  };
}

export function formatInspect(d: ImageDetail): string {
  return JSON.stringify({ ...handleJson(d.handle), os: d.handle.os, architecture: d.handle.architecture, config: d.config, layers: d.layers }, null, 2) + "\n";
}

export function formatPrune(r: ImagePruneReport, json: boolean): string {
  if (json) return JSON.stringify(r, null, 2) + "\n";
  return (
    `removed ${r.imageRefsRemoved} reference(s), ${r.manifestsRemoved} image(s), ${r.layersRemoved} blob(s); ` +
    `reclaimed ${formatBytes(r.bytesReclaimed ?? 0)}\n`
  );
}

export async function imageCommand(c: ImageCli, io: ImagesIO): Promise<number> {
  if (c.kind === "imageRm") return rmiCommand(c.images, io, c.force);
  try {
    switch (c.kind) {
      case "imageSave":
        await Image.save(c.images, { outputPath: c.output, format: c.format, overwrite: c.overwrite });
        io.out(`saved ${c.images.join(", ")} to ${c.output}\n`);
        break;
      case "imageLoad": {
        const loaded = await Image.load(c.input, c.tag !== undefined ? { tag: c.tag } : {});
        if (c.json) io.out(JSON.stringify(loaded.map(handleJson), null, 2) + "\n");
        else for (const h of loaded) io.out(`loaded ${h.reference} (${h.manifestDigest})\n`);
        break;
      }
      case "imageInspect":
        io.out(formatInspect(await Image.inspect(c.image)));
        break;
      case "imagePrune":
        io.out(formatPrune(await Image.prune(), c.json));
        break;
    }
    return 0;
  } catch (e) {
    const d = describeError(e, io.json);
    io.err(`${d.message}\n`);
    return d.code;
  }
}
