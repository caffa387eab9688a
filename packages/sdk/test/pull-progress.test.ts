// PullProgressCreate / PullProgressStream / the puller -> reference event translation,
// and the argument checks of Image (no VM).
import { describe, expect, it } from "vitest";
import type { PullProgress as PullerProgress } from "@microsandbox/oci";
import { Image, InvalidConfigError, type Sandbox } from "../src/index.js";
import { PullProgressCreate, PullProgressTranslator, type PullProgressEvent } from "../src/pull-progress.js";

const D = (c: string) => `sha256:${c.repeat(64)}`;

const FRESH: PullerProgress[] = [
  { phase: "resolving", reference: "r/x:1" },
  { phase: "resolved", reference: "r/x:1", digest: D("m"), layerCount: 2, totalBytes: 30 },
  { phase: "layer", digest: D("a"), index: 0, count: 2, doneBytes: 0, totalBytes: 20, cached: false },
  { phase: "layer", digest: D("b"), index: 1, count: 2, doneBytes: 10, totalBytes: 10, cached: true },
  { phase: "layer", digest: D("a"), index: 0, count: 2, doneBytes: 20, totalBytes: 20, cached: false },
  { phase: "unpacking", digest: D("a"), diffId: D("1"), index: 0, count: 2 },
  { phase: "unpacking", digest: D("b"), diffId: D("2"), index: 1, count: 2 },
  { phase: "building", reference: "r/x:1" },
  { phase: "complete", reference: "r/x:1", digest: D("m") },
];

describe("PullProgressTranslator", () => {
  it("gives the reference's sequence: resolving, resolved, downloads of uncached layers, materialize, stitch, complete", () => {
    const t = new PullProgressTranslator();
    expect(FRESH.flatMap((p) => t.translate(p))).toEqual([
      { kind: "resolving", reference: "r/x:1" },
      { kind: "resolved", reference: "r/x:1", manifestDigest: D("m"), layerCount: 2, totalDownloadBytes: 30 },
      { kind: "layerDownloadProgress", layerIndex: 0, digest: D("a"), downloadedBytes: 0, totalBytes: 20 },
      { kind: "layerDownloadProgress", layerIndex: 0, digest: D("a"), downloadedBytes: 20, totalBytes: 20 },
      { kind: "layerDownloadComplete", layerIndex: 0, digest: D("a"), downloadedBytes: 20 },
      { kind: "layerMaterializeStarted", layerIndex: 0, diffId: D("1") },
      { kind: "layerMaterializeComplete", layerIndex: 0, diffId: D("1") },
      { kind: "layerMaterializeStarted", layerIndex: 1, diffId: D("2") },
      { kind: "layerMaterializeComplete", layerIndex: 1, diffId: D("2") },
      { kind: "stitchMergingTrees", layerCount: 2 },
      { kind: "stitchComplete" },
      { kind: "complete", reference: "r/x:1", layerCount: 2 },
    ]);
  });

  it("a cache hit: resolving, resolved, complete", () => {
    const t = new PullProgressTranslator();
    const out = [
      { phase: "resolving", reference: "r/x:1" },
      { phase: "resolved", reference: "r/x:1", digest: D("m"), layerCount: 3, totalBytes: null },
      { phase: "complete", reference: "r/x:1", digest: D("m") },
    ].flatMap((p) => t.translate(p as PullerProgress));
    expect(out.map((e) => e.kind)).toEqual(["resolving", "resolved", "complete"]);
    expect(out[2]).toEqual({ kind: "complete", reference: "r/x:1", layerCount: 3 });
  });
});

describe("PullProgressCreate", () => {
  it("streams events through recv() and for await, closes at complete; awaitSandbox is single use", async () => {
    const s = new PullProgressCreate();
    let resolveSb!: (sb: Sandbox) => void;
    s.start(new Promise<Sandbox>((r) => (resolveSb = r)));
    const got: PullProgressEvent[] = [];
    const reading = (async () => {
      for await (const e of s) got.push(e);
    })();
    for (const p of FRESH) s.listener(p);
    await reading;
    expect(got[0]?.kind).toBe("resolving");
    expect(got.at(-1)?.kind).toBe("complete");
    expect(await s.progress.recv()).toBeNull();
    const fake = { name: "x" } as unknown as Sandbox;
    resolveSb(fake);
    expect(await s.awaitSandbox()).toBe(fake);
    await expect(s.awaitSandbox()).rejects.toThrow(/already called/);
  });

  it("a failed create closes the stream and rejects awaitSandbox (no unhandled rejection before)", async () => {
    const s = new PullProgressCreate();
    s.start(Promise.reject(new Error("pull failed: not in the cache")));
    s.listener({ phase: "resolving", reference: "r/x:1" });
    expect(await s.progress.recv()).toEqual({ kind: "resolving", reference: "r/x:1" });
    expect(await s.progress.recv()).toBeNull();
    await expect(s.awaitSandbox()).rejects.toThrow(/not in the cache/);
  });
});

describe("Image argument checks", () => {
  it("names the bad field", async () => {
    const field = async (p: Promise<unknown>) => {
      const e = await p.catch((x: unknown) => x);
      expect(e).toBeInstanceOf(InvalidConfigError);
      return (e as InvalidConfigError).field;
    };
    expect(await field(Image.save("alpine", { outputPath: "" }))).toBe("outputPath");
    expect(await field(Image.save("alpine", { outputPath: "/tmp/x.tar", format: "zip" as "oci" }))).toBe("format");
    expect(await field(Image.save("alpine", { outputPath: "/tmp/x.tar", overwrite: "yes" as unknown as boolean }))).toBe("overwrite");
    expect(await field(Image.save([], { outputPath: "/tmp/x.tar" }))).toBe("reference");
    expect(await field(Image.load(""))).toBe("inputPath");
    expect(await field(Image.load("/tmp/x.tar", { tag: "" }))).toBe("tag");
    expect(await field(Image.remove("alpine", { force: 1 as unknown as boolean }))).toBe("force");
    expect(await field(Image.get(""))).toBe("reference");
  });
});
