// saveImages / loadImages: round trips between two caches, and hostile archives.
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tar from "tar-stream";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { OciError, getImage, inspectImage, listImages, loadImages, pruneImages, removeImage, saveImages, type PullProgress } from "../src/index.js";
import { catInImage, lsInImage, statInImage } from "./helpers/ext4.js";
import { buildImage, sampleImage, sha256, tarOf, type BuiltImage, type TarEntry } from "./helpers/images.js";

let work: string;
let home: string;
let home2: string;
let img: BuiltImage;

beforeAll(async () => {
  img = await sampleImage();
});
beforeEach(() => {
  work = mkdtempSync(join(tmpdir(), "oci-archive-"));
  home = join(work, "home");
  home2 = join(work, "home2");
  mkdirSync(home);
  mkdirSync(home2);
});
afterEach(() => rmSync(work, { recursive: true, force: true }));

const REF = "registry.example/team/busybox:1.0";
const hex = (d: string) => d.slice(7);

/** An OCI image layout tar of `images` (name -> image), plus extra raw entries. */
async function ociLayout(images: [string | undefined, BuiltImage][], extra: TarEntry[] = [], opts: { skipBlobs?: string[] } = {}): Promise<Buffer> {
  const entries: TarEntry[] = [{ name: "oci-layout", content: '{"imageLayoutVersion":"1.0.0"}' }];
  const seen = new Set<string>();
  for (const [, i] of images) {
    const all: [string, Buffer][] = [[i.manifestDigest, i.manifest], ...i.blobs];
    for (const [d, b] of all) {
      if (seen.has(d) || opts.skipBlobs?.includes(d)) continue;
      seen.add(d);
      entries.push({ name: `blobs/sha256/${hex(d)}`, content: b });
    }
  }
  entries.push({
    name: "index.json",
    content: JSON.stringify({
      schemaVersion: 2,
      manifests: images.map(([name, i]) => ({
        mediaType: i.mediaType,
        digest: i.manifestDigest,
        size: i.manifest.length,
        ...(name ? { annotations: { "io.containerd.image.name": name } } : {}),
      })),
    }),
  });
  return tarOf([...entries, ...extra]);
}

function writeArchive(buf: Buffer, name = "in.tar"): string {
  const p = join(work, name);
  writeFileSync(p, buf);
  return p;
}

async function loadErr(path: string, code: string, re: RegExp, opts: Parameters<typeof loadImages>[2] = {}): Promise<OciError> {
  let err: unknown;
  try {
    await loadImages(home, path, opts);
  } catch (e) {
    err = e;
  }
  expect(err, "the load should have failed").toBeInstanceOf(OciError);
  expect((err as OciError).code).toBe(code);
  expect((err as OciError).message).toMatch(re);
  return err as OciError;
}

/** The cache holds no image, ref, blob, temp file or staging dir. */
function expectCacheEmpty(h = home): void {
  const c = join(h, "cache");
  for (const d of ["images", "refs", "blobs/sha256", "tmp", "staging"]) {
    const p = join(c, d);
    expect(existsSync(p) ? readdirSync(p) : [], d).toEqual([]);
  }
}

describe("loadImages and saveImages", () => {
  it("loads an OCI layout, saves it, and loads the archive into another home with the same digest", async () => {
    const events: PullProgress[] = [];
    const loaded = await loadImages(home, writeArchive(await ociLayout([[REF, img]])), { onProgress: (p) => events.push(p) });
    expect(loaded).toEqual([{ reference: REF, digest: img.manifestDigest, platform: "linux/amd64", layerCount: 2, sizeBytes: expect.any(Number) }]);
    expect(events.map((e) => e.phase).filter((p, i, a) => p !== a[i - 1])).toEqual(["resolving", "resolved", "layer", "unpacking", "building", "complete"]);
    expect(events[1]).toEqual({ phase: "resolved", reference: REF, digest: img.manifestDigest, layerCount: 2, totalBytes: null });
    const rootfs = join(home, "cache/images", hex(img.manifestDigest), "rootfs.ext4");
    expect(lsInImage(rootfs, "/opt/data")).toEqual(["upper.txt"]);
    expect(statInImage(rootfs, "/usr/bin/passwd")).toMatchObject({ perm: 0o4755, uid: 0 });

    const out = join(work, "saved.tar");
    await saveImages(home, [REF], out);
    // docker save layout: OCI layout + manifest.json, the image's own blobs
    const names = await tarNames(readFileSync(out));
    expect(names).toEqual(
      expect.arrayContaining(["oci-layout", "index.json", "manifest.json", `blobs/sha256/${hex(img.manifestDigest)}`, ...img.layerDigests.map((d) => `blobs/sha256/${hex(d)}`)]),
    );
    const dm = JSON.parse((await tarFile(readFileSync(out), "manifest.json")).toString()) as { Config: string; RepoTags: string[]; Layers: string[] }[];
    expect(dm).toEqual([{ Config: `blobs/sha256/${hex(img.configDigest)}`, RepoTags: [REF], Layers: img.layerDigests.map((d) => `blobs/sha256/${hex(d)}`) }]);

    const again = await loadImages(home2, out, { tag: "localhost/copy:v2" });
    expect(again.map((l) => [l.reference, l.digest])).toEqual([
      [REF, img.manifestDigest],
      ["localhost/copy:v2", img.manifestDigest],
    ]);
    const rootfs2 = join(home2, "cache/images", hex(img.manifestDigest), "rootfs.ext4");
    expect(catInImage(rootfs2, "/opt/data/upper.txt").toString()).toBe("upper\n");
    expect((await listImages(home2)).map((i) => i.reference)).toEqual(["localhost/copy:v2", REF]);
    const g = await getImage(home2, "localhost/copy:v2");
    expect(g).toMatchObject({ digest: img.manifestDigest, layerCount: 2, os: "linux", architecture: "amd64", platform: "linux/amd64" });
    const d = await inspectImage(home2, REF);
    expect(d.config).toMatchObject({ digest: img.configDigest, env: ["PATH=/usr/bin:/bin", "GREETING=hello=world"], cmd: ["sh"], workingDir: "/opt/data", user: "1000:1000" });
    expect(d.layers.map((l) => [l.position, l.blobDigest])).toEqual(img.layerDigests.map((dg, i) => [i, dg]));
    expect(d.layers.every((l) => /^sha256:[a-f0-9]{64}$/.test(l.diffId))).toBe(true);
    expectNoLeftovers(home2);
  });

  it("oci format has no manifest.json; an existing destination needs overwrite", async () => {
    await loadImages(home, writeArchive(await ociLayout([[REF, img]])));
    const out = join(work, "oci.tar");
    await saveImages(home, [REF], out, { format: "oci" });
    expect(await tarNames(readFileSync(out))).not.toContain("manifest.json");
    const before = readFileSync(out);

    let err: unknown;
    try {
      await saveImages(home, [REF], out);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(OciError);
    expect(err).toMatchObject({ code: "invalidConfig", field: "outputPath" });
    expect(readFileSync(out).equals(before)).toBe(true);
    expect(readdirSync(work).filter((n) => n.endsWith(".tmp"))).toEqual([]);

    await saveImages(home, [REF], out, { overwrite: true });
    expect(await tarNames(readFileSync(out))).toContain("manifest.json");
    await expect(saveImages(home, ["registry.example/none:1"], join(work, "x.tar"))).rejects.toMatchObject({ code: "imageNotFound" });
    expect(existsSync(join(work, "x.tar"))).toBe(false);
  });

  it("loads a docker save archive (layer.tar paths, a symlinked shared layer, RepoTags)", async () => {
    const layerTar = await tarOf([{ name: "hello.txt", content: "hi\n" }]);
    const config = Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux", config: { Cmd: ["sh"] }, rootfs: { type: "layers", diff_ids: [sha256(layerTar), sha256(layerTar)] } }));
    const archive = await tarOf([
      { name: "aaa/layer.tar", content: layerTar },
      { name: "bbb/", type: "directory" },
      { name: "bbb/layer.tar", type: "symlink", linkname: "../aaa/layer.tar" },
      { name: "cfg.json", content: config },
      { name: "manifest.json", content: JSON.stringify([{ Config: "cfg.json", RepoTags: ["hello:latest"], Layers: ["aaa/layer.tar", "bbb/layer.tar"] }]) },
    ]);
    const loaded = await loadImages(home, writeArchive(archive));
    expect(loaded.map((l) => [l.reference, l.layerCount])).toEqual([["docker.io/library/hello:latest", 2]]);
    const rootfs = join(home, "cache/images", hex(loaded[0]!.digest), "rootfs.ext4");
    expect(catInImage(rootfs, "/hello.txt").toString()).toBe("hi\n");
  });

  it("an unnamed image needs a tag", async () => {
    const p = writeArchive(await ociLayout([[undefined, img]]));
    const e = await loadErr(p, "invalidConfig", /has no name; pass tag/);
    expect(e.field).toBe("tag");
    expectCacheEmpty();
    const l = await loadImages(home, p, { tag: "localhost/named:1" });
    expect(l[0]).toMatchObject({ reference: "localhost/named:1", digest: img.manifestDigest });
  });

  it("prune keeps what is in use and removes the rest; remove asks who uses an image", async () => {
    const other = await buildImage({ layers: [{ entries: [{ name: "x", content: "x" }] }] });
    await loadImages(home, writeArchive(await ociLayout([[REF, img], ["localhost/other:1", other]])));
    let asked: string[] = [];
    await expect(
      removeImage(home, REF, {
        inUse: (d) => {
          asked = [...d];
          return ["sb-1"];
        },
      }),
    ).rejects.toMatchObject({ code: "imageInUse", sandboxes: ["sb-1"] });
    expect(asked).toEqual([img.manifestDigest]);
    expect((await listImages(home)).length).toBe(2);

    const r = await pruneImages(home, new Set([img.manifestDigest]));
    expect(r).toMatchObject({ imageRefsRemoved: 1, manifestsRemoved: 1, rootDisksRemoved: 1, layersRemoved: 2 });
    expect(r.bytesReclaimed).toBeGreaterThan(0);
    expect((await listImages(home)).map((i) => i.reference)).toEqual([REF]);
    expect(readdirSync(join(home, "cache/blobs/sha256")).sort()).toEqual([...img.blobs.keys()].map(hex).sort());
  });
});

describe("hostile archives", () => {
  it("refuses entry names that escape the archive", async () => {
    for (const name of ["../evil", "blobs/../../evil", "/etc/evil"]) {
      const p = writeArchive(await ociLayout([[REF, img]], [{ name, content: "x" }]));
      await loadErr(p, "image", /escapes the archive/);
    }
    expect(existsSync(join(work, "evil"))).toBe(false);
    expectCacheEmpty();
  });

  it("refuses links that lead outside the archive", async () => {
    const target = join(work, "secret");
    writeFileSync(target, "secret");
    for (const e of [
      { name: "blobs/sha256/x", type: "symlink" as const, linkname: target },
      { name: "blobs/sha256/x", type: "symlink" as const, linkname: "../../../secret" },
      { name: "blobs/sha256/x", type: "link" as const, linkname: "../secret" },
    ]) {
      await loadErr(writeArchive(await ociLayout([[REF, img]], [e])), "image", /outside the archive|escapes the archive/);
    }
    // a blob that is a link to a host file is never read
    const m = img.layerDigests[0]!;
    const p = writeArchive(await ociLayout([[REF, img]], [{ name: `blobs/sha256/${hex(m)}`, type: "symlink", linkname: target }], { skipBlobs: [m] }));
    await loadErr(p, "image", /outside the archive/);
    expect(readFileSync(target, "utf8")).toBe("secret");
    expectCacheEmpty();
  });

  it("a docker manifest.json naming host paths reads nothing from the host", async () => {
    const secret = join(work, "secret.tar");
    writeFileSync(secret, await tarOf([{ name: "stolen", content: "host file" }]));
    for (const [config, layer] of [
      ["cfg.json", secret],
      ["cfg.json", "../secret.tar"],
      [join(work, "cfg.json"), "l.tar"],
    ]) {
      writeFileSync(join(work, "cfg.json"), "{}");
      const archive = await tarOf([
        { name: "cfg.json", content: JSON.stringify({ os: "linux", rootfs: { type: "layers", diff_ids: [sha256("x")] } }) },
        { name: "l.tar", content: "x" },
        { name: "manifest.json", content: JSON.stringify([{ Config: config, RepoTags: ["a:1"], Layers: [layer] }]) },
      ]);
      await loadErr(writeArchive(archive), "image", /missing from the archive/);
    }
    expectCacheEmpty();
  });

  it("refuses huge headers, special files and too many entries", async () => {
    const pack = async (extra: TarEntry[]) => writeArchive(await ociLayout([[REF, img]], extra));
    await loadErr(await pack([{ name: "big", content: "x", pax: { comment: "c".repeat(2 << 20) } }]), "image", /pax header of \d+ bytes is larger than the limit/);
    await loadErr(await pack([{ name: "dev/null", type: "character-device", devmajor: 1, devminor: 3 }]), "image", /special files are not allowed/);
    await loadErr(await pack([{ name: "fifo", type: "fifo" }]), "image", /special files are not allowed/);
    await loadErr(await pack([]), "image", /more than 3 entries/, { limits: { maxEntries: 3 } });
    await loadErr(await pack([]), "image", /larger than the limit of 10 bytes/, { limits: { maxEntryBytes: 10 } });
    // a header claiming a size larger than the file
    const buf = await tarOf([{ name: "oci-layout", content: "{}" }]);
    buf.write("77777777777\0", 124, "latin1"); // size field
    fixChecksum(buf, 0);
    await loadErr(writeArchive(buf), "image", /truncated/);
    expectCacheEmpty();
  });

  it("refuses truncated and corrupt archives", async () => {
    const full = await ociLayout([[REF, img]]);
    for (const cut of [full.length - 1024, Math.floor(full.length / 2), 700, 100]) {
      const p = writeArchive(full);
      truncateSync(p, cut);
      await loadErr(p, "image", /truncated|corrupt/);
    }
    const bad = Buffer.from(full);
    bad[10] = bad[10]! ^ 0x55; // the first header's name, checksum now wrong
    await loadErr(writeArchive(bad), "image", /corrupt \(checksum mismatch\)/);
    await loadErr(writeArchive(Buffer.alloc(0)), "image", /truncated/);
    await loadErr(writeArchive(await tarOf([{ name: "hello", content: "x" }])), "image", /neither an OCI layout/);
    await expect(loadImages(home, join(work, "missing.tar"))).rejects.toMatchObject({ code: "invalidConfig", field: "inputPath" });
    expectCacheEmpty();
  });

  it("refuses blobs that do not match their digest, and leaves no partial image", async () => {
    // a layer blob replaced by other bytes under the same name
    const [l0] = img.layerDigests;
    const p = writeArchive(await ociLayout([[REF, img]], [{ name: `blobs/sha256/${hex(l0!)}`, content: "tampered" }]));
    await loadErr(p, "image", /does not match its digest|not the \d+ its manifest says/);
    expectCacheEmpty();

    // a layer whose blob digest is right but whose content is not what the config's diff_id says
    const evil = await buildImage({ layers: [{ entries: [{ name: "a", content: "a" }] }] });
    const cfg = JSON.parse(evil.config.toString()) as { rootfs: { diff_ids: string[] } };
    cfg.rootfs.diff_ids = [sha256("something else")];
    const config = Buffer.from(JSON.stringify(cfg));
    const manifest = JSON.parse(evil.manifest.toString()) as { config: { digest: string; size: number } };
    manifest.config = { ...manifest.config, digest: sha256(config), size: config.length };
    const mbody = Buffer.from(JSON.stringify(manifest));
    const forged: BuiltImage = {
      ...evil,
      manifest: mbody,
      manifestDigest: sha256(mbody),
      config,
      configDigest: sha256(config),
      blobs: new Map([...[...evil.blobs].filter(([d]) => d !== evil.configDigest), [sha256(config), config]]),
    };
    await loadErr(writeArchive(await ociLayout([[REF, forged]])), "image", /diff_id/);
    expectCacheEmpty();

    // a layer that escapes the image root
    const escaping = await buildImage({ layers: [{ entries: [{ name: "../../outside", content: "x" }] }] });
    await loadErr(writeArchive(await ociLayout([[REF, escaping]])), "image", /escape/);
    expectCacheEmpty();

    // a missing blob
    await loadErr(writeArchive(await ociLayout([[REF, img]], [], { skipBlobs: [img.layerDigests[1]!] })), "image", /missing from the archive/);
    expectCacheEmpty();
  });

  it("does not disturb an image already in the cache", async () => {
    await loadImages(home, writeArchive(await ociLayout([[REF, img]])));
    const disk = join(home, "cache/images", hex(img.manifestDigest), "rootfs.ext4");
    const ino = statSync(disk).ino;
    await loadErr(writeArchive(await ociLayout([[REF, img]], [{ name: "../x", content: "" }])), "image", /escapes/);
    const again = await loadImages(home, writeArchive(await ociLayout([["localhost/again:1", img]])));
    expect(again[0]?.digest).toBe(img.manifestDigest);
    expect(statSync(disk).ino).toBe(ino);
    expect((await listImages(home)).map((i) => i.reference)).toEqual(["localhost/again:1", REF]);
  });
});

function expectNoLeftovers(h: string): void {
  for (const d of ["tmp", "staging"]) expect(readdirSync(join(h, "cache", d))).toEqual([]);
}

function fixChecksum(buf: Buffer, at: number): void {
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : buf[at + i]!;
  buf.write(sum.toString(8).padStart(6, "0") + "\0 ", at + 148, "latin1");
}

async function tarEntries(buf: Buffer): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const ex = tar.extract();
  await new Promise<void>((resolve, reject) => {
    ex.on("entry", (h, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on("data", (c: unknown) => chunks.push(c as Buffer));
      stream.on("end", () => {
        out.set(h.name, Buffer.concat(chunks));
        next();
      });
    });
    ex.on("finish", () => resolve());
    ex.on("error", reject);
    ex.end(buf);
  });
  return out;
}

async function tarNames(buf: Buffer): Promise<string[]> {
  return [...(await tarEntries(buf)).keys()];
}

async function tarFile(buf: Buffer, name: string): Promise<Buffer> {
  const b = (await tarEntries(buf)).get(name);
  if (!b) throw new Error(`no ${name} in the archive`);
  return b;
}
