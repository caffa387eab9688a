// End-to-end (real VMs): the reference SDK's image management and pull progress.
// An image pulled on one MSB_HOME is saved to a tar, the registry is stopped, and the
// archive loads into another MSB_HOME where a sandbox boots from it; removing an image a
// sandbox uses fails with ImageInUseError; createWithPullProgress reports resolving ->
// resolved (manifestDigest, layerCount) -> ... -> complete and awaitSandbox is single use.
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  Image,
  ImageHandle,
  ImageInUseError,
  ImageNotFoundError,
  Images,
  InvalidConfigError,
  Sandbox,
  type PullProgress,
} from "@microsandbox/sdk";
import { pushFixtures, startRegistry, type Registry } from "../../../test-vms/registry/index.js";
import { cleanup, removeAllSandboxes, useTempMsbHome } from "./e2e-helpers.js";

const home = useTempMsbHome();

let reg: Registry | undefined;
let ref = "";
let archive = "";
let digest = "";
let work = "";

beforeAll(async () => {
  reg = await startRegistry("plain");
  await pushFixtures(reg, ["busybox:latest"]);
  ref = `${reg.host}/busybox:latest`;
  work = mkdtempSync(join(tmpdir(), "msb-img-"));
  archive = join(work, "busybox.tar");
});

afterAll(async () => {
  await reg?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("Image and pull progress (reference parity)", () => {
  it("createWithPullProgress: resolving, resolved with manifestDigest and layerCount, complete; awaitSandbox once", async () => {
    const session = await Sandbox.builder("img-progress").image(ref).pullPolicy("always").createWithPullProgress();
    const events: PullProgress[] = [];
    let ev = await session.progress.recv();
    while (ev !== null) {
      events.push(ev);
      ev = await session.progress.recv();
    }
    const sb = await session.awaitSandbox();
    try {
      expect(events[0]).toEqual({ kind: "resolving", reference: ref });
      const resolved = events.find((e) => e.kind === "resolved");
      if (resolved?.kind !== "resolved") throw new Error("no resolved event");
      expect(resolved.manifestDigest).toMatch(/^sha256:[a-f0-9]{64}$/);
      expect(resolved.layerCount).toBeGreaterThan(0);
      digest = resolved.manifestDigest;
      const last = events.at(-1);
      expect(last).toEqual({ kind: "complete", reference: ref, layerCount: resolved.layerCount });
      const idx = (k: PullProgress["kind"]) => events.findIndex((e) => e.kind === k);
      expect(idx("resolved")).toBeLessThan(idx("complete"));
      const kinds = events.map((e) => e.kind);
      expect(kinds.indexOf("resolving")).toBeLessThan(kinds.indexOf("resolved"));
      // a fresh pull downloads and materializes every layer, then stitches the root disk
      expect(kinds.filter((k) => k === "layerDownloadComplete").length).toBe(resolved.layerCount);
      expect(kinds.filter((k) => k === "layerMaterializeComplete").length).toBe(resolved.layerCount);
      expect(kinds.slice(-3)).toEqual(["stitchMergingTrees", "stitchComplete", "complete"]);
      await expect(session.awaitSandbox()).rejects.toThrow(/already called/);

      expect((await sb.exec("cat", ["/etc/image-marker"])).stdout()).toBe("busybox-fixture\n");

      // in use while running, and while stopped: ImageInUseError naming the sandbox
      const running = await Image.remove(ref).catch((e: unknown) => e);
      expect(running).toBeInstanceOf(ImageInUseError);
      expect(running).toMatchObject({ code: "imageInUse", sandboxes: ["img-progress"] });
      await sb.stop();
      const stopped = await Images.remove(ref).catch((e: unknown) => e);
      expect(stopped).toBeInstanceOf(ImageInUseError);
      // prune keeps it too
      const report = await Image.prune();
      expect(report.manifestsRemoved).toBe(0);
      expect((await Image.get(ref)).manifestDigest).toBe(digest);
    } finally {
      await cleanup(sb);
    }
  });

  it("get / list / inspect; save to a tar (an existing file needs overwrite)", async () => {
    const h = await Image.get(ref);
    expect(h).toBeInstanceOf(ImageHandle);
    expect(h).toMatchObject({ reference: ref, manifestDigest: digest, os: "linux" });
    expect(h.layerCount).toBeGreaterThan(0);
    expect(h.lastUsedAt).toBeInstanceOf(Date); // the stopped img-progress sandbox
    expect((await Image.list()).map((i) => i.reference)).toContain(ref);
    const d = await Image.inspect(ref);
    expect(d.handle.layerCount).toBe(h.layerCount);
    expect(d.layers.length).toBe(h.layerCount);
    expect(d.layers.every((l) => l.diffId.startsWith("sha256:") && l.blobDigest.startsWith("sha256:"))).toBe(true);
    expect(d.config).toMatchObject({ workingDir: "/opt/data", user: "1000:1000", cmd: ["sh"] });
    expect(d.config?.env).toContain("MSB_IMAGE_ENV=from-image");
    await expect(Image.get("localhost:1/missing:none")).rejects.toBeInstanceOf(ImageNotFoundError);

    await Image.save(ref, { outputPath: archive });
    const size = statSync(archive).size;
    expect(size).toBeGreaterThan(1024);
    const again = await Image.save(ref, { outputPath: archive }).catch((e: unknown) => e);
    expect(again).toBeInstanceOf(InvalidConfigError);
    expect(again).toMatchObject({ field: "outputPath" });
    await Image.save([ref], { outputPath: archive, overwrite: true, format: "docker" });
    expect(statSync(archive).size).toBe(size);
  });

  it("the archive loads into another MSB_HOME with the registry gone, and a detached sandbox boots from it", async () => {
    await reg?.stop();
    reg = undefined;
    const first = home();
    const second = mkdtempSync(join(tmpdir(), "msb-"));
    process.env.MSB_HOME = second;
    try {
      const loaded = await Image.load(archive, { tag: "localhost/copied:v1" });
      expect(loaded.map((l) => [l.reference, l.manifestDigest])).toEqual([
        [ref, digest],
        ["localhost/copied:v1", digest],
      ]);
      expect(loaded.every((l) => l.layerCount > 0)).toBe(true);
      expect(existsSync(join(second, "cache/images", digest.slice(7), "rootfs.ext4"))).toBe(true);

      const session = await Sandbox.builder("img-loaded").image("localhost/copied:v1").pullPolicy("never").createDetachedWithPullProgress();
      const kinds: string[] = [];
      for await (const e of session) kinds.push(e.kind);
      expect(kinds).toEqual(["resolving", "resolved", "complete"]);
      const sb = await session.awaitSandbox();
      try {
        expect((await sb.exec("cat", ["/opt/data/keep.txt"])).stdout()).toBe("keep\n");
        expect((await sb.shell("id -u; echo $MSB_IMAGE_ENV")).stdout()).toBe("1000\nfrom-image\n");
      } finally {
        await cleanup(sb);
      }
      // used by the stopped sandbox: refused; forced: removed
      await expect(Image.remove("localhost/copied:v1")).rejects.toBeInstanceOf(ImageInUseError);
      await Image.remove("localhost/copied:v1", { force: true });
      await expect(Image.get("localhost/copied:v1")).rejects.toBeInstanceOf(ImageNotFoundError);
      await removeAllSandboxes();
      const report = await Image.prune();
      expect(report).toMatchObject({ imageRefsRemoved: 1, manifestsRemoved: 1, fsmetaRemoved: 1, vmdkRemoved: 0 });
      expect(report.layersRemoved).toBeGreaterThan(0);
      expect(await Image.list()).toEqual([]);
    } finally {
      await removeAllSandboxes();
      process.env.MSB_HOME = first;
      rmSync(second, { recursive: true, force: true });
    }
    // the archive itself is untouched by loading
    expect(readFileSync(archive).length).toBeGreaterThan(1024);
  });
});
