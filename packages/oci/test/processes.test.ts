// Pulls in separate processes: two at once, one killed mid-way, one as a non-root user.
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { listImages, pullImage } from "../src/index.js";
import { buildOci } from "./helpers/build.js";
import { spawnPull } from "./helpers/child.js";
import { statInImage, lsInImage, catInImage } from "./helpers/ext4.js";
import { FakeRegistry } from "./helpers/fake-registry.js";
import { buildImage, sampleImage, type BuiltImage } from "./helpers/images.js";

let home: string;
let reg: FakeRegistry;
let big: BuiltImage;
let sample: BuiltImage;

beforeAll(async () => {
  await buildOci();
  sample = await sampleImage();
  big = await buildImage({
    layers: [
      { entries: [{ name: "bin/tool", content: "t", mode: 0o755 }] },
      { compression: "none", entries: [{ name: "data/blob", content: Buffer.alloc(2 << 20, 3) }] },
    ],
  });
}, 120_000);
beforeEach(async () => {
  home = mkdtempSync(join(tmpdir(), "oci-proc-"));
  reg = await new FakeRegistry().start();
  reg.addImage("big", "latest", big);
  reg.addImage("busybox", "latest", sample);
});
afterEach(async () => {
  await reg.stop();
  rmSync(home, { recursive: true, force: true });
});

const layerGets = (d: string) => reg.log.filter((l) => l.url.endsWith(`/blobs/${d}`)).length;

describe("separate processes", () => {
  it("two processes pulling the same image at once both succeed and share one image dir", async () => {
    reg.slow.set(big.layerDigests[1]!, 3); // ~0.4 s of streaming: the pulls overlap
    const a = spawnPull(reg.ref("big"), home);
    const b = spawnPull(reg.ref("big"), home);
    const [ra, rb] = await Promise.all([a.done, b.done]);
    expect(ra.result, ra.stderr).toMatchObject({ ok: true });
    expect(rb.result, rb.stderr).toMatchObject({ ok: true });
    expect(ra.result!.image!.digest).toBe(big.manifestDigest);
    expect(rb.result!.image).toEqual(ra.result!.image);
    expect(readdirSync(join(home, "cache/images"))).toEqual([big.manifestDigest.slice(7)]);
    // the second waited for the first and reused its work
    expect(layerGets(big.layerDigests[1]!)).toBe(1);
    expect(statInImage(ra.result!.image!.rootfs, "/data/blob")!.size).toBe(2 << 20);
    expect(readdirSync(join(home, "cache/tmp"))).toEqual([]);
    expect(readdirSync(join(home, "cache/staging"))).toEqual([]);
  });

  it("a process killed while a layer streams leaves nothing trusted; the next pull succeeds", async () => {
    const c = spawnPull(reg.ref("big"), home, { pauseAt: "streaming" });
    await c.waitFor((l) => l === "STREAMING");
    c.proc.kill("SIGKILL");
    const r = await c.done;
    expect(r.signal).toBe("SIGKILL");
    const blobs = readdirSync(join(home, "cache/blobs/sha256"));
    expect(blobs).not.toContain(big.layerDigests[1]!.slice(7));
    expect(existsSync(join(home, "cache/images", big.manifestDigest.slice(7), "meta.json"))).toBe(false);
    expect(readdirSync(join(home, "cache/tmp")).length).toBeGreaterThan(0); // its partial download
    expect(await listImages(home)).toEqual([]);

    const img = await pullImage(reg.ref("big"), { msbHome: home });
    expect(statInImage(img.rootfs, "/data/blob")!.size).toBe(2 << 20);
    expect(readdirSync(join(home, "cache/tmp"))).toEqual([]); // the dead process's leftovers went
  });

  it("a process killed while building the disk leaves an incomplete image that the next pull rebuilds", async () => {
    const c = spawnPull(reg.ref("big"), home, { pauseAt: "building" });
    await c.waitFor((l) => l === "PHASE building");
    c.proc.kill("SIGKILL");
    await c.done;
    expect(existsSync(join(home, "cache/images", big.manifestDigest.slice(7), "meta.json"))).toBe(false);
    expect(await listImages(home)).toEqual([]);
    const n = reg.log.length;
    const img = await pullImage(reg.ref("big"), { msbHome: home });
    expect(statInImage(img.rootfs, "/bin/tool")).toMatchObject({ perm: 0o755 });
    // verified blobs were kept and reused
    expect(reg.log.slice(n).filter((l) => l.url.includes("/blobs/"))).toEqual([]);
    expect(readdirSync(join(home, "cache/staging"))).toEqual([]);
  });

  const isRoot = process.getuid?.() === 0;
  it.skipIf(!isRoot)("a non-root user gets owners, modes, setuid bits and device nodes right", async () => {
    chownSync(home, 65534, 65534);
    const c = spawnPull(reg.ref("busybox"), home, {}, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
    const r = await c.done;
    expect(r.result, r.stderr).toMatchObject({ ok: true });
    const rootfs = r.result!.image!.rootfs;
    expect(statSync(rootfs).uid).toBe(65534); // really built by that user
    expect(statInImage(rootfs, "/")).toMatchObject({ uid: 0, gid: 0, perm: 0o755 });
    expect(statInImage(rootfs, "/bin/busybox")).toMatchObject({ uid: 0, gid: 0, perm: 0o755, links: 2 });
    expect(statInImage(rootfs, "/usr/bin/passwd")).toMatchObject({ uid: 0, gid: 0, perm: 0o4755 });
    expect(statInImage(rootfs, "/opt/data")).toMatchObject({ uid: 1000, gid: 1000, perm: 0o750 });
    expect(statInImage(rootfs, "/opt/data/upper.txt")).toMatchObject({ uid: 1000, gid: 1000, perm: 0o644 });
    expect(statInImage(rootfs, "/tmp")).toMatchObject({ uid: 0, perm: 0o1777 });
    expect(statInImage(rootfs, "/dev/null")).toMatchObject({ type: "character special", major: 1, minor: 3, perm: 0o666, uid: 0 });
    expect(statInImage(rootfs, "/dev/fifo")).toMatchObject({ type: "FIFO", perm: 0o600 });
    expect(statInImage(rootfs, "/bin/sh")).toMatchObject({ type: "symlink", uid: 0 });
    expect(lsInImage(rootfs, "/etc")).toEqual(["passwd"]);
    expect(catInImage(rootfs, "/etc/passwd").toString()).toContain("root:x:0:0");
  });
});
