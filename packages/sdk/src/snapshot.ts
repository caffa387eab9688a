/**
 * Disk snapshots in the reference SDK's shapes: `Snapshot.builder(name).fromSandbox(s)
 * .create()` / `handle.snapshot(name)` of a stopped sandbox, `Snapshot.open/get/list/
 * listDir/remove/reindex`, {@link SnapshotHandle}, `verify()`, and
 * `Sandbox.builder(n).fromSnapshot(name)` (builder.ts) booting a new sandbox on a copy.
 *
 * An artifact is a directory, `$MSB_HOME/snapshots/<name>/` (or `<destDir>/<name>/`):
 *
 * ```
 * snapshot.json   the manifest (schema 1): image (reference, kind, manifest digest),
 *                 the upper disk (file, apparent size, optional integrity), labels,
 *                 source sandbox, creation time
 * upper.ext4      the sandbox's writable disk, copied sparse (reflinked where the
 *                 filesystem can) while the sandbox's lock is held
 * ```
 *
 * The snapshot's identity (`digest`) is the sha256 of its manifest in canonical form
 * (keys sorted, no spaces). The directory is the source of truth: there is no index to
 * go stale, so `list()` reads the directory and `reindex()` only counts. An artifact is
 * built in a temporary directory and renamed into place, so a process dying halfway
 * leaves no half snapshot under the name.
 */
import "./polyfill.js";
import { createHash, randomBytes } from "node:crypto";
import { constants, createReadStream } from "node:fs";
import { lstat, mkdir, open, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { isAbsolute, join, resolve } from "node:path";
import { z } from "zod";
import { check, msbHome, nameSchema, parseStoredConfig } from "./config.js";
import {
  InvalidConfigError,
  MicrosandboxError,
  SandboxStillRunningError,
  SnapshotAlreadyExistsError,
  SnapshotIntegrityError,
  SnapshotNotFoundError,
  UnsupportedError,
} from "./errors.js";
import { loadArchive, saveArchive, type SaveOpts } from "./snapshot-archive.js";
import { isLive, readRecord } from "./lifecycle.js";
import { callNative, native, snapshotNative } from "./native.js";
// Labels follow the volumes' rules.
import { labelKeySchema, labelValueSchema } from "./volume.js";

/** Snapshot payload scope: `"disk"` (the writable disk); `"resumable"` is not supported yet. */
export type SnapshotScope = "disk" | "resumable";

/** Name of the content digest algorithm recorded by `recordIntegrity()`. */
export const SPARSE_SHA256 = "msb-sparse-sha256-v1";
/** Most labels on one snapshot. */
export const MAX_SNAPSHOT_LABELS = 64;
/** Largest manifest read back. */
const MAX_MANIFEST_BYTES = 64 * 1024;
const MANIFEST = "snapshot.json";
const UPPER = "upper.ext4";

/** The manifest's state, as the reference's `SnapshotState` (file state only here). */
export type SnapshotState = {
  readonly kind: "file";
  readonly format: "raw";
  readonly fstype: string;
  readonly upper: {
    readonly file: string;
    readonly sizeBytes: bigint;
    readonly integrity: { readonly algorithm: "msb-sparse-sha256-v1"; readonly digest: string } | null;
  };
};

/** Result of {@link Snapshot.verify}. */
export type SnapshotVerifyReport =
  | { readonly digest: string; readonly path: string; readonly upper: { readonly kind: "notRecorded" } }
  | { readonly digest: string; readonly path: string; readonly upper: { readonly kind: "verified"; readonly algorithm: string; readonly digest: string } };

/** What a {@link SnapshotBuilder} describes (`build()`), as the reference's `SnapshotConfig`. */
export interface SnapshotConfig {
  name: string;
  sourceSandbox: string | null;
  destDir: string | null;
  labels: { key: string; value: string }[];
  force: boolean;
  recordIntegrity: boolean;
  resumable: boolean;
}

const digestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/);
const manifestSchema = z.object({
  schema: z.literal(1),
  name: nameSchema,
  scope: z.literal("disk"),
  parent: digestSchema.nullable(),
  image: z.object({
    ref: z.string().max(4096).nullable(),
    kind: z.enum(["oci", "path"]).nullable(),
    manifestDigest: digestSchema.nullable(),
    /** The embedded default image's sha256 (kind null): fromSnapshot refuses another default image. */
    rootfsSha256: digestSchema.nullable().optional(),
  }),
  state: z.object({
    kind: z.literal("file"),
    format: z.literal("raw"),
    fstype: z.literal("ext4"),
    upper: z.object({
      file: z.literal(UPPER),
      sizeBytes: z.number().int().nonnegative(),
      integrity: z.object({ algorithm: z.literal(SPARSE_SHA256), digest: digestSchema }).nullable(),
    }),
  }),
  createdAt: z.string().max(64),
  labels: z.array(z.tuple([z.string().max(255), z.string().max(4096)])).max(MAX_SNAPSHOT_LABELS),
  sourceSandbox: nameSchema.nullable(),
});
type Manifest = z.infer<typeof manifestSchema>;

const saveOptsSchema = z
  .object({ withParents: z.boolean().optional(), withImage: z.boolean().optional(), plainTar: z.boolean().optional() }, { error: "must be an object" })
  .strict();

/** sha256 of a file (the default image: 64 MiB, about 0.2 s), cached by path, size and mtime. */
const fileDigests = new Map<string, string>();
async function fileSha256(path: string): Promise<string> {
  const st = await stat(path);
  const key = `${path}\0${st.size}\0${st.mtimeMs}\0${st.ino}`;
  const hit = fileDigests.get(key);
  if (hit !== undefined) return hit;
  const h = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  const d = `sha256:${h.digest("hex")}`;
  fileDigests.set(key, d);
  return d;
}

/** The embedded default image's digest (what a default-image snapshot records and fromSnapshot checks). */
export async function defaultImageSha256(): Promise<string> {
  const binding = await callNative(() => native());
  const assets = await callNative(() => binding.assetPaths());
  return fileSha256(assets.defaultImage);
}

const dirSchema = z
  .string({ error: "must be a path (string)" })
  .min(1, { error: "must not be empty" })
  .refine((p) => !p.includes("\0"), { error: "must not contain NUL" });

/** JSON with keys sorted at every level and no spaces: what the digest is taken of. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v);
}

function manifestDigest(m: Manifest): string {
  return `sha256:${createHash("sha256").update(canonical(m)).digest("hex")}`;
}

/** `$MSB_HOME/snapshots`. */
export function snapshotsDir(home: string = msbHome()): string {
  return join(home, "snapshots");
}

/** A bare name (as a sandbox's) resolves under the snapshots directory; anything else is a path. */
function artifactPath(pathOrName: string): string {
  const given = check(dirSchema, "pathOrName", pathOrName, "snapshot");
  if (nameSchema.safeParse(given).success && !given.startsWith(".")) return join(snapshotsDir(), given);
  if (given.split("/").includes("..") && !isAbsolute(given)) {
    throw new InvalidConfigError("pathOrName", `invalid snapshot ${JSON.stringify(given)}: a name may contain only letters, digits, '_', '.' and '-'; a path must not climb with '..'`);
  }
  return resolve(given);
}

/** Reads and checks `<dir>/snapshot.json`; the upper disk must be a regular file of the recorded size. */
async function readArtifact(dir: string): Promise<Manifest> {
  const missing = () => new SnapshotNotFoundError(`no snapshot at ${dir}`);
  const st = await lstat(dir).catch(() => null);
  if (st === null || !st.isDirectory()) throw missing();
  let text: string;
  try {
    // Never through a link: an artifact may come from elsewhere.
    const fh = await open(join(dir, MANIFEST), constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      const m = await fh.stat();
      if (!m.isFile() || m.size > MAX_MANIFEST_BYTES) throw new SnapshotIntegrityError(`${join(dir, MANIFEST)} is not a manifest (not a file, or over 64 KiB)`);
      text = await fh.readFile("utf8");
    } finally {
      await fh.close();
    }
  } catch (e) {
    if (e instanceof MicrosandboxError) throw e;
    throw missing();
  }
  let parsed: z.ZodSafeParseResult<Manifest>;
  try {
    parsed = manifestSchema.safeParse(JSON.parse(text));
  } catch {
    throw new SnapshotIntegrityError(`${join(dir, MANIFEST)} is not valid JSON`);
  }
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new SnapshotIntegrityError(`${join(dir, MANIFEST)} is not a snapshot manifest (${issue?.path.join(".") ?? "?"}: ${issue?.message ?? "invalid"})`);
  }
  const upper = await lstat(join(dir, UPPER)).catch(() => null);
  if (upper === null || !upper.isFile()) throw new SnapshotIntegrityError(`${join(dir, UPPER)} is missing or not a regular file`);
  if (upper.size !== parsed.data.state.upper.sizeBytes) {
    throw new SnapshotIntegrityError(`${join(dir, UPPER)} is ${upper.size} bytes, the manifest says ${parsed.data.state.upper.sizeBytes} (truncated or replaced)`);
  }
  return parsed.data;
}

/** A snapshot artifact on disk. */
export class Snapshot {
  readonly #path: string;
  readonly #m: Manifest;
  readonly #digest: string;

  /** @internal Use `Snapshot.open`, `Snapshot.builder(...).create()` or `handle.snapshot(name)`. */
  constructor(path: string, manifest: Manifest) {
    this.#path = path;
    this.#m = manifest;
    this.#digest = manifestDigest(manifest);
  }

  /** Begin building a snapshot named `name` (see {@link SnapshotBuilder}). */
  static builder(name: string): SnapshotBuilder {
    return new SnapshotBuilder(name);
  }

  /** Open an artifact: a bare name under the snapshots directory, anything else a path. Checks the manifest and the upper file's size, not its content (`verify()` does). */
  static async open(pathOrName: string): Promise<Snapshot> {
    const dir = artifactPath(pathOrName);
    return new Snapshot(dir, await readArtifact(dir));
  }

  /** A snapshot by name, digest (`sha256:...`) or path. */
  static async get(nameOrDigest: string): Promise<SnapshotHandle> {
    if (typeof nameOrDigest === "string" && nameOrDigest.startsWith("sha256:")) {
      const found = (await Snapshot.listDir(snapshotsDir())).find((s) => s.digest === nameOrDigest);
      if (found === undefined) throw new SnapshotNotFoundError(`no snapshot with digest ${nameOrDigest}`);
      return new SnapshotHandle(found);
    }
    return new SnapshotHandle(await Snapshot.open(nameOrDigest));
  }

  /** Every snapshot under the snapshots directory, by name. */
  static async list(): Promise<SnapshotHandle[]> {
    return (await Snapshot.listDir(snapshotsDir())).map((s) => new SnapshotHandle(s));
  }

  /** The artifacts directly under `dir`, by name; entries that are not snapshots are skipped. */
  static async listDir(dir: string): Promise<Snapshot[]> {
    const base = resolve(check(dirSchema, "dir", dir, "directory"));
    let names: string[];
    try {
      names = await readdir(base);
    } catch {
      return [];
    }
    const out: Snapshot[] = [];
    for (const n of names.sort()) {
      if (n.startsWith(".") || !nameSchema.safeParse(n).success) continue;
      try {
        out.push(new Snapshot(join(base, n), await readArtifact(join(base, n))));
      } catch {
        // not a snapshot (or a damaged one): open() by name says why
      }
    }
    return out;
  }

  /**
   * Remove an artifact by path, name or digest, damaged ones included (anything that
   * has a `snapshot.json` file). Snapshots have no children here, so `force` changes
   * nothing.
   */
  static async remove(pathOrName: string, opts?: { force?: boolean }): Promise<void> {
    void opts;
    const dir = typeof pathOrName === "string" && pathOrName.startsWith("sha256:") ? (await Snapshot.get(pathOrName)).path : artifactPath(pathOrName);
    const st = await lstat(dir).catch(() => null);
    const manifest = st?.isDirectory() ? await lstat(join(dir, MANIFEST)).catch(() => null) : null;
    if (manifest === null || !manifest.isFile()) throw new SnapshotNotFoundError(`no snapshot at ${dir}`);
    await removeArtifact(dir);
  }

  /** The number of artifacts under `dir` (default: the snapshots directory). There is no index to rebuild: the directory is read each time. */
  static async reindex(dir?: string): Promise<number> {
    return (await Snapshot.listDir(dir ?? snapshotsDir())).length;
  }

  /**
   * Write a snapshot (by name, digest or path) to a portable archive at `out` (a plain
   * tar; `out` must not exist). Only the writable disk's data is written, not its holes.
   * `withImage` adds its OCI image so that `load` on a host without the registry boots
   * it. The manifest travels as is: record integrity at create time if receivers must
   * `verify()` the content.
   */
  static async save(nameOrPath: string, out: string, opts?: SaveOpts): Promise<void> {
    const dest = check(dirSchema, "out", out, "archive path");
    const o = check(saveOptsSchema, "opts", opts ?? {}, "save options");
    const snap = typeof nameOrPath === "string" && nameOrPath.startsWith("sha256:") ? await (await Snapshot.get(nameOrPath)).open() : await Snapshot.open(nameOrPath);
    await saveArchive(msbHome(), { manifest: snap.#m, upperPath: snap.upperPath, image: snap.image }, dest, o);
  }

  /**
   * Unpack an archive made by `save` into the snapshots directory (or `dest`), under the
   * name its manifest records; a snapshot of that name there already is
   * `SnapshotAlreadyExistsError`. The archive is checked before anything is written, and
   * the artifact appears whole or not at all. An image in the archive goes to the image
   * cache (each blob's digest checked).
   */
  static async load(archive: string, dest?: string): Promise<SnapshotHandle> {
    const file = check(dirSchema, "archive", archive, "archive path");
    const parent = dest === undefined ? snapshotsDir() : resolve(check(dirSchema, "dest", dest, "directory"));
    const dir = await loadArchive(msbHome(), file, parent, manifestSchema);
    return new SnapshotHandle(await Snapshot.open(dir));
  }

  /** The artifact directory. */
  get path(): string {
    return this.#path;
  }
  /** The manifest's canonical digest (`sha256:<hex>`): the snapshot's identity. */
  get digest(): string {
    return this.#digest;
  }
  /** The snapshot's name (its directory's). */
  get name(): string {
    return this.#m.name;
  }
  /** Apparent size of the captured writable disk (sparse on the host). */
  get sizeBytes(): bigint {
    return BigInt(this.#m.state.upper.sizeBytes);
  }
  get state(): SnapshotState {
    const u = this.#m.state.upper;
    return { kind: "file", format: "raw", fstype: this.#m.state.fstype, upper: { file: u.file, sizeBytes: BigInt(u.sizeBytes), integrity: u.integrity } };
  }
  /** The image reference the sandbox was created from (`""` for the embedded default image). */
  get imageRef(): string {
    return this.#m.image.ref ?? "";
  }
  /** Manifest digest of the pinned OCI image (`""` when the image was a local path or the default). */
  get imageManifestDigest(): string {
    return this.#m.image.manifestDigest ?? "";
  }
  get format(): "raw" {
    return "raw";
  }
  get fstype(): string {
    return this.#m.state.fstype;
  }
  /** Always `null` here: snapshots are not chained. */
  get parent(): string | null {
    return this.#m.parent;
  }
  get scope(): SnapshotScope {
    return "disk";
  }
  /** RFC 3339 creation time. */
  get createdAt(): string {
    return this.#m.createdAt;
  }
  /** Labels, sorted by key, as `[key, value]` pairs. */
  get labels(): ReadonlyArray<readonly [string, string]> {
    return this.#m.labels.map(([k, v]) => [k, v] as const);
  }
  get sourceSandbox(): string | null {
    return this.#m.sourceSandbox;
  }
  /** @internal The writable disk's path (what `fromSnapshot` copies). */
  get upperPath(): string {
    return join(this.#path, UPPER);
  }
  /** @internal What `fromSnapshot` boots: the image as recorded. */
  get image(): Manifest["image"] {
    return { ...this.#m.image };
  }

  /**
   * Recompute the writable disk's content digest and compare it with the recorded one.
   * `notRecorded` (without reading the disk) when the snapshot was made without
   * `recordIntegrity()`; a mismatch is {@link SnapshotIntegrityError}.
   */
  async verify(): Promise<SnapshotVerifyReport> {
    const m = await readArtifact(this.#path);
    if (manifestDigest(m) !== this.#digest) throw new SnapshotIntegrityError(`${join(this.#path, MANIFEST)} changed since the snapshot was opened`);
    const rec = m.state.upper.integrity;
    if (rec === null) return { digest: this.#digest, path: this.#path, upper: { kind: "notRecorded" } };
    const now = await callNative(() => snapshotNative().sparseSha256(this.upperPath));
    if (now !== rec.digest) throw new SnapshotIntegrityError(`${this.upperPath}: content digest ${now}, the manifest records ${rec.digest}`);
    return { digest: this.#digest, path: this.#path, upper: { kind: "verified", algorithm: rec.algorithm, digest: now } };
  }
}

/** A snapshot as listed (`Snapshot.list()`, `Snapshot.get()`), in the reference's shape. */
export class SnapshotHandle {
  readonly digest: string;
  readonly name: string | null;
  readonly parentDigest: string | null;
  readonly scope: SnapshotScope;
  readonly imageRef: string;
  readonly stateKind: "file" | "checkpoint";
  readonly format: "raw" | "qcow2" | null;
  readonly fstype: string | null;
  readonly checkpointManifestDigest: string | null;
  readonly sizeBytes: bigint | null;
  /** Always `"embedded"`: the payload is in the artifact directory. */
  readonly locality: string;
  /** Always `"available"` for a listed snapshot (damaged ones are not listed). */
  readonly availability: string;
  /** Always `"current"`: there is one artifact format. */
  readonly migrationState: string;
  readonly migrationErrorCode: string | null;
  readonly createdAt: Date;
  readonly path: string;

  /** @internal */
  constructor(s: Snapshot) {
    this.digest = s.digest;
    this.name = s.name;
    this.parentDigest = s.parent;
    this.scope = s.scope;
    this.imageRef = s.imageRef;
    this.stateKind = "file";
    this.format = s.format;
    this.fstype = s.fstype;
    this.checkpointManifestDigest = null;
    this.sizeBytes = s.sizeBytes;
    this.locality = "embedded";
    this.availability = "available";
    this.migrationState = "current";
    this.migrationErrorCode = null;
    this.createdAt = new Date(s.createdAt);
    this.path = s.path;
  }

  /** Open (and check the metadata of) the artifact again. */
  async open(): Promise<Snapshot> {
    return Snapshot.open(this.path);
  }

  /** Remove the artifact. */
  async remove(opts?: { force?: boolean }): Promise<void> {
    void opts;
    await Snapshot.open(this.path);
    await removeArtifact(this.path);
  }
}

/** Moves the directory aside (atomic), then deletes it: a crash never leaves half an artifact under its name. */
async function removeArtifact(dir: string): Promise<void> {
  const trash = `${dir}.removing-${randomBytes(4).toString("hex")}`.replace(/\/([^/]+)$/, "/.$1");
  await rename(dir, trash);
  await rm(trash, { recursive: true, force: true });
}

/** Fluent builder for a snapshot: `Snapshot.builder("clean").fromSandbox("box").create()`. */
export class SnapshotBuilder {
  readonly #name: string;
  #source: string | null = null;
  #destDir: string | null = null;
  readonly #labels: [string, string][] = [];
  #force = false;
  #integrity = false;
  #resumable = false;

  /** @internal Use `Snapshot.builder(name)`. */
  constructor(name: string) {
    this.#name = name;
  }

  /** The stopped sandbox to capture (required). */
  fromSandbox(sourceSandbox: string): this {
    this.#source = sourceSandbox;
    return this;
  }
  /** Create the artifact at `<destDir>/<name>` instead of under the snapshots directory (not listed by `list()`; open it by path). */
  destDir(destDir: string): this {
    this.#destDir = destDir;
    return this;
  }
  label(key: string, value: string): this {
    this.#labels.push([key, value]);
    return this;
  }
  /** Replace an artifact of the same name instead of failing. */
  force(): this {
    this.#force = true;
    return this;
  }
  /** Record the writable disk's content digest (`msb-sparse-sha256-v1`) for `verify()`. */
  recordIntegrity(): this {
    this.#integrity = true;
    return this;
  }
  /** A disk-plus-memory snapshot: not supported yet (`create()` rejects with `UnsupportedError`). */
  resumable(): this {
    this.#resumable = true;
    return this;
  }

  build(): SnapshotConfig {
    return {
      name: this.#name,
      sourceSandbox: this.#source,
      destDir: this.#destDir,
      labels: this.#labels.map(([key, value]) => ({ key, value })),
      force: this.#force,
      recordIntegrity: this.#integrity,
      resumable: this.#resumable,
    };
  }

  /** Capture the stopped sandbox's writable disk. */
  async create(): Promise<Snapshot> {
    const name = check(nameSchema, "name", this.#name, "snapshot name");
    if (this.#source === null) throw new InvalidConfigError("fromSandbox", "invalid snapshot: fromSandbox(name) is required");
    const source = check(nameSchema, "fromSandbox", this.#source, "sandbox name");
    const parent = this.#destDir === null ? snapshotsDir() : resolve(check(dirSchema, "destDir", this.#destDir, "directory"));
    if (this.#labels.length > MAX_SNAPSHOT_LABELS) throw new InvalidConfigError("labels", `invalid labels: at most ${MAX_SNAPSHOT_LABELS}`);
    const labels = new Map<string, string>();
    for (const [k, v] of this.#labels) labels.set(check(labelKeySchema, "label", k, "label key"), check(labelValueSchema, `label.${k}`, v, "label value"));
    if (this.#resumable) throw new UnsupportedError("resumable snapshots (disk plus memory) are not supported yet: create a disk snapshot without resumable()");

    const home = msbHome();
    const binding = await callNative(() => native());
    const rec = await readRecord(binding, home, source);
    if (isLive(rec.status)) throw new SandboxStillRunningError(`sandbox ${source} is ${rec.status}: a snapshot needs a stopped sandbox; stop it first`);
    const config = parseStoredConfig(rec.configJson, source);
    const final = join(parent, name);
    if (!this.#force && (await lstat(final).catch(() => null)) !== null) {
      throw new SnapshotAlreadyExistsError(`a snapshot named ${name} exists at ${final} (force() replaces it)`);
    }
    await mkdir(parent, { recursive: true, mode: 0o700 });
    const tmp = join(parent, `.${name}.tmp-${randomBytes(4).toString("hex")}`);
    await mkdir(tmp, { mode: 0o700 });
    try {
      const upper = join(tmp, UPPER);
      // Under the sandbox's lock: a start meanwhile cannot change the disk being copied.
      const size = await callNative(() => snapshotNative().copySandboxUpper(home, source, upper));
      const digest = this.#integrity ? await callNative(() => snapshotNative().sparseSha256(upper)) : null;
      const manifest: Manifest = {
        schema: 1,
        name,
        scope: "disk",
        parent: null,
        image: {
          ref: config.image,
          kind: config.imageKind,
          manifestDigest: config.imageDigest ?? null,
          ...(config.image === null ? { rootfsSha256: await defaultImageSha256() } : {}),
        },
        state: { kind: "file", format: "raw", fstype: "ext4", upper: { file: UPPER, sizeBytes: size, integrity: digest === null ? null : { algorithm: SPARSE_SHA256, digest } } },
        createdAt: new Date().toISOString(),
        labels: [...labels.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
        sourceSandbox: source,
      };
      await writeFile(join(tmp, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600, flag: "wx" });
      if (this.#force && (await lstat(final).catch(() => null)) !== null) await removeArtifact(final);
      await rename(tmp, final);
      return new Snapshot(final, manifest);
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
  }
}
