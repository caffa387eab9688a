// pullImage against the real fixture registries (Debian's docker-registry, test-vms/registry):
// plain HTTP, TLS + Basic auth, token auth; the busybox, multi-arch and evil images.
import { createHash } from "node:crypto";
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BUSYBOX_ABSENT,
  BUSYBOX_CONFIG,
  BUSYBOX_HARDLINKS,
  BUSYBOX_LISTINGS,
  BUSYBOX_TREE,
  EVIL,
  OCI_DIR,
  PASSWORD,
  USERNAME,
  corruptBlob,
  fixtureFacts,
  pushFixtures,
  startRegistry,
  type Registry,
} from "../../../test-vms/registry/index.js";
import { OciError, listImages, pullImage, removeImage, type PullOptions, type PullProgress } from "../src/index.js";
import { tokenCache } from "../src/auth.js";
import { buildOci } from "./helpers/build.js";
import { spawnPull } from "./helpers/child.js";
import { catInImage, elfMachine, inodeOf, lsInImage, statInImage } from "./helpers/ext4.js";
import { debugfsQuote, findTool } from "../src/rootfs.js";
import { execFileSync } from "node:child_process";

const AMD64 = { os: "linux", architecture: "amd64" };
const ARM64 = { os: "linux", architecture: "arm64" };
const EM_X86_64 = 62;
const EM_AARCH64 = 183;

let plain: Registry;
let tls: Registry;
let token: Registry;
let home: string;

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), "oci-e2e-"));
  chmodSync(home, 0o755); // the non-root test's MSB_HOME lives below
  await buildOci(); // dist/ for the tests that pull in child processes
  [plain, tls, token] = await Promise.all([startRegistry("plain"), startRegistry("tls-basic"), startRegistry("token")]);
  await pushFixtures(plain);
  await Promise.all([pushFixtures(tls, ["busybox:latest"]), pushFixtures(token, ["busybox:latest"])]);
}, 300_000);
afterAll(async () => {
  await Promise.all([plain?.stop(), tls?.stop(), token?.stop()]);
  rmSync(home, { recursive: true, force: true });
});

function freshHome(): string {
  return mkdtempSync(join(home, "h-"));
}

async function pullErr(ref: string, opts: Partial<PullOptions> & { msbHome?: string } = {}): Promise<OciError> {
  let err: unknown;
  try {
    await pullImage(ref, { msbHome: freshHome(), ...opts });
  } catch (e) {
    err = e;
  }
  expect(err, "the pull should have failed").toBeInstanceOf(OciError);
  return err as OciError;
}

function symlinkTarget(image: string, path: string): string | undefined {
  const s = execFileSync(findTool("debugfs"), ["-R", `stat ${debugfsQuote(path)}`, image], { stdio: ["ignore", "pipe", "ignore"] }).toString();
  return /Fast link dest: "(.*)"/.exec(s)?.[1];
}

const TYPES: Record<string, string> = { file: "regular", dir: "directory", symlink: "symlink", chardev: "character special" };

/** The root disk holds exactly what a correct unpack of the busybox fixture gives. */
function expectBusyboxTree(rootfs: string, busyboxSha: string): void {
  for (const e of BUSYBOX_TREE) {
    const st = statInImage(rootfs, e.path);
    expect(st, e.path).toBeDefined();
    expect({ path: e.path, type: st!.type, perm: st!.perm, uid: st!.uid, gid: st!.gid }).toEqual({
      path: e.path,
      type: TYPES[e.type],
      perm: e.mode,
      uid: e.uid,
      gid: e.gid,
    });
    if (e.content !== undefined) expect(catInImage(rootfs, e.path).toString(), e.path).toBe(e.content);
    if (e.target !== undefined) expect(symlinkTarget(rootfs, e.path), e.path).toBe(e.target);
    if (e.rdev) expect({ major: st!.major, minor: st!.minor }, e.path).toEqual(e.rdev);
  }
  for (const [a, b] of BUSYBOX_HARDLINKS) {
    expect(inodeOf(rootfs, a)).toBe(inodeOf(rootfs, b));
    expect(statInImage(rootfs, a)!.links).toBe(2);
  }
  for (const [dir, names] of Object.entries(BUSYBOX_LISTINGS)) expect(lsInImage(rootfs, dir), dir).toEqual([...names].sort());
  for (const p of BUSYBOX_ABSENT) expect(statInImage(rootfs, p), p).toBeUndefined();
  expect(`sha256:${createHash("sha256").update(catInImage(rootfs, "/bin/busybox")).digest("hex")}`).toBe(busyboxSha);
}

const BUSYBOX_IMAGE_CONFIG = {
  entrypoint: null,
  cmd: BUSYBOX_CONFIG.Cmd,
  env: BUSYBOX_CONFIG.Env.map((e) => [e.slice(0, e.indexOf("=")), e.slice(e.indexOf("=") + 1)]),
  workingDir: BUSYBOX_CONFIG.WorkingDir,
  user: BUSYBOX_CONFIG.User,
};

describe("plain HTTP registry", () => {
  it("pulls busybox:latest: every file, owner, mode, link and device as in the image; config applied", async () => {
    const facts = fixtureFacts();
    const events: PullProgress[] = [];
    const t0 = performance.now();
    const img = await pullImage(`${plain.host}/busybox:latest`, { msbHome: freshHome(), onProgress: (p) => events.push(p) });
    const ms = performance.now() - t0;
    console.log(`busybox:latest pull + unpack + ext4: ${ms.toFixed(0)} ms`);
    expect(img.digest).toBe(facts.images["busybox:latest"]!.digest);
    expect(img.reference).toBe(`${plain.host}/busybox:latest`);
    expect(img.config).toEqual(BUSYBOX_IMAGE_CONFIG);
    expectBusyboxTree(img.rootfs, facts.busyboxSha256.amd64);
    expect(events.map((e) => e.phase).filter((p, i, a) => p !== a[i - 1])).toEqual(["resolving", "resolved", "layer", "unpacking", "building", "complete"]);
  });

  it.each(["zstd", "plain"])("busybox:%s (zstd / uncompressed layers) gives the same tree", async (tag) => {
    const facts = fixtureFacts();
    const img = await pullImage(`${plain.host}/busybox:${tag}`, { msbHome: freshHome() });
    expect(img.digest).toBe(facts.images[`busybox:${tag}`]!.digest);
    expect(img.config).toEqual(BUSYBOX_IMAGE_CONFIG);
    expectBusyboxTree(img.rootfs, facts.busyboxSha256.amd64);
  });

  it.each(["latest", "v2list"])("multi:%s picks linux/amd64 by default and linux/arm64 when asked", async (tag) => {
    const facts = fixtureFacts();
    const msbHome = freshHome();
    const amd = await pullImage(`${plain.host}/multi:${tag}`, { msbHome });
    if (tag === "latest") expect(amd.digest).toBe(facts.images["busybox:latest"]!.digest); // the same manifest
    expect(elfMachine(amd.rootfs, "/bin/busybox")).toBe(EM_X86_64);
    expectBusyboxTree(amd.rootfs, facts.busyboxSha256.amd64);
    const arm = await pullImage(`${plain.host}/multi:${tag}`, { msbHome, platform: ARM64 });
    expect(arm.digest).not.toBe(amd.digest);
    if (tag === "latest") expect(arm.digest).toBe(facts.images["multi:latest"]!.manifests!.find((m) => m.platform.architecture === "arm64")!.digest);
    expect(elfMachine(arm.rootfs, "/bin/busybox")).toBe(EM_AARCH64);
    expectBusyboxTree(arm.rootfs, facts.busyboxSha256.arm64);
    const armv8 = await pullImage(`${plain.host}/multi:${tag}`, { msbHome, platform: { ...ARM64, variant: "v8" } });
    expect(armv8.digest).toBe(arm.digest);
    const e = await pullErr(`${plain.host}/multi:${tag}`, { platform: { os: "linux", architecture: "riscv64" } });
    expect(e.code).toBe("imageNotFound");
    expect(e.message).toContain("no linux/riscv64 variant (it has: linux/amd64, linux/arm64/v8)");
    // two platforms of one reference, both listed
    expect((await listImages(msbHome)).map((i) => i.digest).sort()).toEqual([amd.digest, arm.digest].sort());
  });

  it("an explicit platform that a single-platform image does not have -> imageNotFound", async () => {
    const e = await pullErr(`${plain.host}/busybox:latest`, { platform: ARM64 });
    expect(e.code).toBe("imageNotFound");
    expect(e.message).toContain("is linux/amd64 only, not linux/arm64/v8");
  });

  it("unknown tag or repository -> imageNotFound naming the reference", async () => {
    const e = await pullErr(`${plain.host}/busybox:no-such-tag`);
    expect(e.code).toBe("imageNotFound");
    expect(e.message).toContain(`${plain.host}/busybox:no-such-tag not found in registry ${plain.host}`);
    const e2 = await pullErr(`${plain.host}/no-such-repo:latest`);
    expect(e2.code).toBe("imageNotFound");
  });

  it("a corrupt blob is refused with its digest; nothing of it is cached", async () => {
    const msbHome = freshHome();
    const digest = await corruptBlob(plain, "evil", "corrupt");
    const e = await pullErr(`${plain.host}/evil:corrupt`, { msbHome });
    expect(e.code).toBe("image");
    expect(e.digest).toBe(digest);
    expect(e.message).toContain(digest);
    expect(e.message).toContain("does not match its digest");
    expect(readdirSync(join(msbHome, "cache/blobs/sha256"))).not.toContain(digest.slice(7));
    expect(readdirSync(join(msbHome, "cache/tmp"))).toEqual([]);
    expect(readdirSync(join(msbHome, "cache/staging"))).toEqual([]);
    expect(await listImages(msbHome)).toEqual([]);
  });

  describe("evil images are refused and write nothing outside the unpack dir", () => {
    const tags = Object.keys(EVIL).filter((t) => t !== "evil:corrupt");
    it.each(tags)("%s", async (name) => {
      const msbHome = freshHome();
      const e = await pullErr(`${plain.host}/${name}`, { msbHome });
      expect(e.code).toBe("image");
      expect(e.message).toMatch(/layer sha256:[a-f0-9]{64}: entry ".*" .*refused/);
      // every directory from the staging dir up to / (the escapes land 1-8 levels up)
      const dirs: string[] = [];
      for (let d = join(msbHome, "cache/staging/x"); d !== "/"; d = dirname(d)) dirs.push(dirname(d));
      for (const name2 of EVIL[name]!.escapes) for (const d of [...dirs, "/tmp", process.cwd()]) expect(existsSync(join(d, name2)), join(d, name2)).toBe(false);
      expect(readdirSync(join(msbHome, "cache/staging"))).toEqual([]);
      expect(await listImages(msbHome)).toEqual([]);
    });
    it("names what was wrong", async () => {
      expect((await pullErr(`${plain.host}/evil:dotdot`)).message).toContain('"../escape.txt" has a ".." path component');
      expect((await pullErr(`${plain.host}/evil:symlink`)).message).toContain('"opt/esc/pwned.txt" goes through a symlink that leads outside the image root');
      expect((await pullErr(`${plain.host}/evil:symlink-abs`)).message).toMatch(/opt\/esc2\/pwned-abs.txt" goes through the symlink "\/opt\/esc2" -> "\/tmp\/..\/\/..", which leads outside/);
      expect((await pullErr(`${plain.host}/evil:hardlink`)).message).toContain('"hl-passwd" has a ".." path component');
    });
  });

  it("list and remove", async () => {
    const msbHome = freshHome();
    const img = await pullImage(`${plain.host}/busybox:latest`, { msbHome });
    expect((await listImages(msbHome)).map((i) => i.reference)).toEqual([`${plain.host}/busybox:latest`]);
    await removeImage(msbHome, `${plain.host}/busybox`);
    expect(await listImages(msbHome)).toEqual([]);
    expect(existsSync(img.rootfs)).toBe(false);
    expect(readdirSync(join(msbHome, "cache/blobs/sha256"))).toEqual([]);
    await expect(removeImage(msbHome, `${plain.host}/busybox`)).rejects.toMatchObject({ code: "imageNotFound" });
  });
});

describe("TLS + Basic auth registry", () => {
  const auth = { kind: "basic" as const, username: USERNAME, password: PASSWORD };
  it("pulls with the CA file and the right password", async () => {
    const img = await pullImage(`${tls.host}/busybox:latest`, { msbHome: freshHome(), auth, caFile: tls.caFile! });
    expectBusyboxTree(img.rootfs, fixtureFacts().busyboxSha256.amd64);
  });
  it("a wrong password -> registryAuth saying the credentials were rejected by the registry", async () => {
    const e = await pullErr(`${tls.host}/busybox:latest`, { auth: { ...auth, password: "wrong" }, caFile: tls.caFile! });
    expect(e.code).toBe("registryAuth");
    expect(e.message).toContain(`credentials for user "${USERNAME}" were rejected by ${tls.host}`);
  });
  it("no credentials -> registryAuth saying they are needed", async () => {
    const e = await pullErr(`${tls.host}/busybox:latest`, { caFile: tls.caFile! });
    expect(e.code).toBe("registryAuth");
    expect(e.message).toContain(`registry ${tls.host} requires authentication`);
  });
  it("without the CA the certificate is not trusted (no fallback to plain HTTP)", async () => {
    const e = await pullErr(`${tls.host}/busybox:latest`, { auth });
    expect(e.code).toBe("image");
    expect(e.message).toContain(`TLS certificate of registry ${tls.host} is not trusted`);
  });
  it("insecure: unverified TLS", async () => {
    const img = await pullImage(`${tls.host}/busybox:latest`, { msbHome: freshHome(), auth, insecure: true });
    expect(img.digest).toBe(fixtureFacts().images["busybox:latest"]!.digest);
  });
});

describe("token auth registry", () => {
  it("anonymous: pull-only token from the realm", async () => {
    tokenCache.clear();
    const n = token.tokenRequests.length;
    const img = await pullImage(`${token.host}/busybox:latest`, { msbHome: freshHome() });
    expectBusyboxTree(img.rootfs, fixtureFacts().busyboxSha256.amd64);
    const reqs = token.tokenRequests.slice(n);
    expect(reqs.length).toBeGreaterThanOrEqual(1);
    expect(reqs.every((r) => r.account === null && r.status === 200)).toBe(true);
    expect(reqs[0]!.scopes).toEqual(["repository:busybox:pull"]);
  });
  it("with credentials", async () => {
    tokenCache.clear();
    const n = token.tokenRequests.length;
    await pullImage(`${token.host}/busybox:latest`, { msbHome: freshHome(), auth: { kind: "basic", username: USERNAME, password: PASSWORD } });
    expect(token.tokenRequests.slice(n).map((r) => r.account)).toContain(USERNAME);
  });
  it("a wrong password -> registryAuth", async () => {
    tokenCache.clear();
    const e = await pullErr(`${token.host}/busybox:latest`, { auth: { kind: "basic", username: USERNAME, password: "nope" } });
    expect(e.code).toBe("registryAuth");
    expect(e.message).toContain(`credentials for user "${USERNAME}" were rejected by ${token.host}`);
  });
  it("unknown repository -> imageNotFound", async () => {
    const e = await pullErr(`${token.host}/nothing-here:latest`);
    expect(e.code).toBe("imageNotFound");
  });
});

describe("registry stopped mid-pull", () => {
  async function ownRegistry(images: string[]): Promise<{ reg: Registry; dataDir: string }> {
    const dataDir = mkdtempSync(join(home, "regdata-"));
    const reg = await startRegistry("plain", { dataDir });
    await pushFixtures(reg, images);
    return { reg, dataDir };
  }

  it("killed when the layer downloads start: clear error; restarted: the next pull succeeds", async () => {
    const { reg, dataDir } = await ownRegistry(["busybox:latest"]);
    const msbHome = freshHome();
    let killed = false;
    const e = await pullErr(`${reg.host}/busybox:latest`, {
      msbHome,
      onProgress: (p) => {
        if (p.phase === "layer" && !killed) {
          killed = true;
          process.kill(reg.pid, "SIGKILL");
        }
      },
    });
    await reg.stop();
    expect(e.code).toBe("image");
    expect(e.message).toContain(`registry ${reg.host}`);
    expect(e.message).toMatch(/ECONNREFUSED|ECONNRESET|other side closed|socket/i);
    expect(await listImages(msbHome)).toEqual([]);
    const again = await startRegistry("plain", { dataDir, port: reg.port });
    try {
      const img = await pullImage(`${again.host}/busybox:latest`, { msbHome });
      expect(img.digest).toBe(fixtureFacts().images["busybox:latest"]!.digest);
    } finally {
      await again.stop();
    }
  });

  const debian = existsSync(join(OCI_DIR, "debian-python", "index.json"));
  it.skipIf(!debian)("killed while a 45 MB layer streams: clear error naming the blob; the next pull succeeds", async () => {
    const { reg, dataDir } = await ownRegistry(["debian-python:latest"]);
    const msbHome = freshHome();
    const layer = fixtureFacts().images["debian-python:latest"]!.layers![0]!;
    let killed = false;
    const e = await pullErr(`${reg.host}/debian-python:latest`, {
      msbHome,
      onProgress: (p) => {
        if (p.phase === "layer" && p.doneBytes > 0 && !killed) {
          killed = true;
          process.kill(reg.pid, "SIGKILL");
        }
      },
    });
    await reg.stop();
    expect(e.code).toBe("image");
    expect(e.digest).toBe(layer.digest);
    expect(e.message).toMatch(new RegExp(`download of blob ${layer.digest} from registry ${reg.host.replace(/\./g, "\\.")} failed after \\d+ of ${layer.size} bytes`));
    expect(readdirSync(join(msbHome, "cache/blobs/sha256"))).not.toContain(layer.digest.slice(7));
    expect(readdirSync(join(msbHome, "cache/tmp"))).toEqual([]);
    const again = await startRegistry("plain", { dataDir, port: reg.port });
    try {
      const t0 = performance.now();
      const img = await pullImage(`${again.host}/debian-python:latest`, { msbHome });
      console.log(`debian-python pull + unpack + ext4 (cold blobs): ${(performance.now() - t0).toFixed(0)} ms`);
      expect(statInImage(img.rootfs, "/usr/bin/python3.11")).toMatchObject({ type: "regular", perm: 0o755, uid: 0 });
      expect(img.config.cmd).toEqual(["python3"]);
    } finally {
      await again.stop();
    }
  });
});

describe("separate processes", () => {
  it("two processes pulling the same image at once both succeed and share one image dir", async () => {
    const msbHome = freshHome();
    const [a, b] = await Promise.all([spawnPull(`${plain.host}/busybox:zstd`, msbHome).done, spawnPull(`${plain.host}/busybox:zstd`, msbHome).done]);
    expect(a.result, a.stderr).toMatchObject({ ok: true });
    expect(b.result, b.stderr).toMatchObject({ ok: true });
    expect(b.result!.image).toEqual(a.result!.image);
    expect(readdirSync(join(msbHome, "cache/images"))).toEqual([a.result!.image!.digest.slice(7)]);
    expectBusyboxTree(a.result!.image!.rootfs, fixtureFacts().busyboxSha256.amd64);
  });
});

describe("non-root user", () => {
  const isRoot = process.getuid?.() === 0;
  it.skipIf(!isRoot)("pulls busybox:latest as nobody with every owner, mode, setuid bit and device node right", async () => {
    const msbHome = freshHome();
    chownSync(msbHome, 65534, 65534);
    const c = spawnPull(`${plain.host}/busybox:latest`, msbHome, {}, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
    const r = await c.done;
    expect(r.result, r.stderr).toMatchObject({ ok: true });
    const rootfs = r.result!.image!.rootfs;
    expect(statSync(rootfs).uid).toBe(65534);
    expectBusyboxTree(rootfs, fixtureFacts().busyboxSha256.amd64);
  });
});
