// Hand-built layers and images for the unit tests.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import tar from "tar-stream";

export interface TarEntry {
  name: string;
  type?: "file" | "directory" | "symlink" | "link" | "character-device" | "block-device" | "fifo";
  mode?: number;
  uid?: number;
  gid?: number;
  content?: string | Buffer;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  mtime?: Date;
  pax?: Record<string, string>;
}

export const sha256 = (b: Uint8Array | string): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** An uncompressed tar with exactly these entries, in this order. */
export async function tarOf(entries: TarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    pack.on("data", (c: unknown) => chunks.push(c as Buffer));
    pack.on("end", () => resolve());
    pack.on("error", reject);
  });
  for (const e of entries) {
    const type = e.type ?? "file";
    const body = e.content === undefined ? undefined : Buffer.from(e.content);
    const header: Partial<tar.Header> & { name: string } = {
      name: e.name,
      type,
      mode: e.mode ?? (type === "directory" ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: e.mtime ?? new Date(1_700_000_000_000),
      ...(e.linkname !== undefined ? { linkname: e.linkname } : {}),
      ...(e.devmajor !== undefined ? { devmajor: e.devmajor } : {}),
      ...(e.devminor !== undefined ? { devminor: e.devminor } : {}),
      ...(e.pax ? { pax: e.pax } : {}),
    };
    await new Promise<void>((resolve, reject) => {
      if (type === "file") pack.entry({ ...header, size: body?.length ?? 0 }, body ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve()));
      else pack.entry(header, (err) => (err ? reject(err) : resolve()));
    });
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export type Compression = "gzip" | "zstd" | "none";

export function compress(raw: Buffer, c: Compression): Buffer {
  if (c === "gzip") return gzipSync(raw);
  if (c === "zstd") return execFileSync("zstd", ["-q", "-c", "-3"], { input: raw, maxBuffer: 1 << 30 });
  return raw;
}

export const LAYER_MEDIA: Record<Compression, string> = {
  gzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  zstd: "application/vnd.oci.image.layer.v1.tar+zstd",
  none: "application/vnd.oci.image.layer.v1.tar",
};

export interface BuiltImage {
  manifest: Buffer;
  manifestDigest: string;
  mediaType: string;
  config: Buffer;
  configDigest: string;
  blobs: Map<string, Buffer>;
  layerDigests: string[];
}

export interface ImageSpec {
  layers: { entries: TarEntry[]; compression?: Compression }[];
  config?: Record<string, unknown>;
  architecture?: string;
  variant?: string;
  /** Docker v2 schema 2 media types instead of OCI. */
  docker?: boolean;
}

export async function buildImage(spec: ImageSpec): Promise<BuiltImage> {
  const blobs = new Map<string, Buffer>();
  const diffIds: string[] = [];
  const layers: { mediaType: string; digest: string; size: number }[] = [];
  for (const l of spec.layers) {
    const raw = await tarOf(l.entries);
    const c = l.compression ?? "gzip";
    const blob = compress(raw, c);
    const d = sha256(blob);
    blobs.set(d, blob);
    diffIds.push(sha256(raw));
    layers.push({
      mediaType: spec.docker ? "application/vnd.docker.image.rootfs.diff.tar.gzip" : LAYER_MEDIA[c],
      digest: d,
      size: blob.length,
    });
  }
  const config = Buffer.from(
    JSON.stringify({
      architecture: spec.architecture ?? "amd64",
      ...(spec.variant ? { variant: spec.variant } : {}),
      os: "linux",
      config: spec.config ?? { Env: ["PATH=/usr/bin:/bin"], Cmd: ["sh"] },
      rootfs: { type: "layers", diff_ids: diffIds },
    }),
  );
  const configDigest = sha256(config);
  blobs.set(configDigest, config);
  const mediaType = spec.docker ? "application/vnd.docker.distribution.manifest.v2+json" : "application/vnd.oci.image.manifest.v1+json";
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      config: {
        mediaType: spec.docker ? "application/vnd.docker.container.image.v1+json" : "application/vnd.oci.image.config.v1+json",
        digest: configDigest,
        size: config.length,
      },
      layers,
    }),
  );
  return { manifest, manifestDigest: sha256(manifest), mediaType, config, configDigest, blobs, layerDigests: layers.map((l) => l.digest) };
}

export interface IndexEntry {
  image: BuiltImage;
  platform: { os: string; architecture: string; variant?: string };
}

export function buildIndex(entries: IndexEntry[], docker = false): { body: Buffer; digest: string; mediaType: string } {
  const mediaType = docker ? "application/vnd.docker.distribution.manifest.list.v2+json" : "application/vnd.oci.image.index.v1+json";
  const body = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      manifests: entries.map((e) => ({
        mediaType: e.image.mediaType,
        digest: e.image.manifestDigest,
        size: e.image.manifest.length,
        platform: e.platform,
      })),
    }),
  );
  return { body, digest: sha256(body), mediaType };
}

/** A small busybox-like image: 2 layers, a whiteout, an opaque dir, links, setuid, devices. */
export async function sampleImage(compression: Compression = "gzip"): Promise<BuiltImage> {
  return buildImage({
    layers: [
      {
        compression,
        entries: [
          { name: "bin/", type: "directory" },
          { name: "bin/busybox", content: "#!busybox\n", mode: 0o755 },
          { name: "bin/sh", type: "symlink", linkname: "busybox" },
          { name: "bin/su", type: "link", linkname: "bin/busybox" },
          { name: "etc/", type: "directory" },
          { name: "etc/passwd", content: "root:x:0:0::/root:/bin/sh\n" },
          { name: "etc/old.conf", content: "old\n" },
          { name: "opt/", type: "directory" },
          { name: "opt/data/", type: "directory", uid: 1000, gid: 1000, mode: 0o750 },
          { name: "opt/data/lower.txt", content: "lower\n" },
          { name: "tmp/", type: "directory", mode: 0o1777 },
          { name: "dev/", type: "directory" },
          { name: "dev/null", type: "character-device", devmajor: 1, devminor: 3, mode: 0o666 },
        ],
      },
      {
        compression,
        entries: [
          { name: "etc/.wh.old.conf" },
          { name: "opt/data/", type: "directory", uid: 1000, gid: 1000, mode: 0o750 },
          { name: "opt/data/.wh..wh..opq" },
          { name: "opt/data/upper.txt", content: "upper\n", uid: 1000, gid: 1000 },
          { name: "usr/bin/passwd", content: "setuid\n", mode: 0o4755 },
          { name: "dev/fifo", type: "fifo", mode: 0o600 },
        ],
      },
    ],
    config: {
      Env: ["PATH=/usr/bin:/bin", "GREETING=hello=world"],
      Cmd: ["sh"],
      WorkingDir: "/opt/data",
      User: "1000:1000",
    },
  });
}
