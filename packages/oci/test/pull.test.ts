// pullImage against an in-process fake registry (node:http on 127.0.0.1).
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { connect, type AddressInfo, type Socket } from "node:net";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { OciError, listImages, pullImage, removeImage, type PullOptions, type PullProgress } from "../src/index.js";
import { tokenCache } from "../src/auth.js";
import { FakeRegistry } from "./helpers/fake-registry.js";
import { catInImage, lsInImage, statInImage } from "./helpers/ext4.js";
import { buildImage, buildIndex, sampleImage, sha256, type BuiltImage } from "./helpers/images.js";

let home: string;
let reg: FakeRegistry;
let img: BuiltImage;

beforeAll(async () => {
  img = await sampleImage();
});
beforeEach(async () => {
  home = mkdtempSync(join(tmpdir(), "oci-pull-"));
  reg = await new FakeRegistry().start();
  reg.addImage("busybox", "latest", img);
  tokenCache.clear();
});
afterEach(async () => {
  await reg.stop();
  rmSync(home, { recursive: true, force: true });
});

async function pullErr(ref: string, opts: Partial<PullOptions> = {}): Promise<OciError> {
  let err: unknown;
  try {
    await pullImage(ref, { msbHome: home, ...opts });
  } catch (e) {
    err = e;
  }
  expect(err, "the pull should have failed").toBeInstanceOf(OciError);
  return err as OciError;
}

/** Nothing unverified may carry a final name, and no leftovers. */
function expectNothingTrusted(digests: string[]): void {
  const blobs = join(home, "cache/blobs/sha256");
  const have = existsSync(blobs) ? readdirSync(blobs) : [];
  for (const d of digests) expect(have).not.toContain(d.slice(7));
  const tmp = join(home, "cache/tmp");
  expect(existsSync(tmp) ? readdirSync(tmp) : []).toEqual([]);
  const staging = join(home, "cache/staging");
  expect(existsSync(staging) ? readdirSync(staging) : []).toEqual([]);
}

describe("pullImage", () => {
  it("pulls, unpacks and builds the root disk, with progress in order", async () => {
    const events: PullProgress[] = [];
    const r = await pullImage(reg.ref("busybox"), { msbHome: home, onProgress: (p) => events.push(p) });
    expect(r.reference).toBe(`${reg.host}/busybox:latest`);
    expect(r.digest).toBe(img.manifestDigest);
    expect(r.fstype).toBe("ext4");
    expect(r.rootfs).toBe(join(home, "cache/images", img.manifestDigest.slice(7), "rootfs.ext4"));
    expect(r.config).toEqual({
      entrypoint: null,
      cmd: ["sh"],
      env: [
        ["PATH", "/usr/bin:/bin"],
        ["GREETING", "hello=world"],
      ],
      workingDir: "/opt/data",
      user: "1000:1000",
    });
    expect(r.sizeBytes).toBeGreaterThan(0);

    // content: whiteout and opaque dir applied, links, setuid, devices
    expect(lsInImage(r.rootfs, "/etc")).toEqual(["passwd"]);
    expect(lsInImage(r.rootfs, "/opt/data")).toEqual(["upper.txt"]);
    expect(statInImage(r.rootfs, "/opt/data")).toMatchObject({ uid: 1000, gid: 1000, perm: 0o750 });
    expect(statInImage(r.rootfs, "/usr/bin/passwd")).toMatchObject({ perm: 0o4755, uid: 0 });
    expect(statInImage(r.rootfs, "/bin/su")).toMatchObject({ links: 2 });
    expect(statInImage(r.rootfs, "/bin/sh")).toMatchObject({ type: "symlink" });
    expect(statInImage(r.rootfs, "/dev/null")).toMatchObject({ type: "character special", major: 1, minor: 3, perm: 0o666 });
    expect(statInImage(r.rootfs, "/dev/fifo")).toMatchObject({ type: "FIFO", perm: 0o600 });
    expect(statInImage(r.rootfs, "/tmp")).toMatchObject({ perm: 0o1777 });
    expect(catInImage(r.rootfs, "/bin/busybox").toString()).toBe("#!busybox\n");

    // events: resolving, resolved (digest, layer count), layers (0..done), unpacking 0..n-1, building, complete
    const phases = events.map((e) => e.phase);
    expect(phases[0]).toBe("resolving");
    expect(events[1]).toEqual({
      phase: "resolved",
      reference: r.reference,
      digest: r.digest,
      layerCount: 2,
      totalBytes: img.layerDigests.reduce((n, d) => n + img.blobs.get(d)!.length, 0),
    });
    expect(phases.at(-1)).toBe("complete");
    expect(phases.at(-2)).toBe("building");
    const firstUnpack = phases.indexOf("unpacking");
    expect(phases.slice(2, firstUnpack).every((p) => p === "layer")).toBe(true);
    expect(events.filter((e) => e.phase === "unpacking").map((e) => (e as { index: number }).index)).toEqual([0, 1]);
    for (const [i, d] of img.layerDigests.entries()) {
      const le = events.filter((e) => e.phase === "layer" && e.index === i) as Extract<PullProgress, { phase: "layer" }>[];
      expect(le[0]!.doneBytes).toBe(0);
      expect(le.at(-1)!).toMatchObject({ digest: d, doneBytes: le[0]!.totalBytes, count: 2, cached: false });
    }
    expect(events.at(-1)).toEqual({ phase: "complete", reference: r.reference, digest: r.digest });

    // manifests were asked for with every supported media type
    const mreq = reg.log.find((l) => l.url.includes("/manifests/"))!;
    for (const t of [
      "application/vnd.oci.image.index.v1+json",
      "application/vnd.docker.distribution.manifest.list.v2+json",
      "application/vnd.oci.image.manifest.v1+json",
      "application/vnd.docker.distribution.manifest.v2+json",
    ])
      expect(mreq.accept).toContain(t);

    // cache layout
    const dir = join(home, "cache/images", img.manifestDigest.slice(7));
    expect(readdirSync(dir).sort()).toEqual(["config.json", "manifest.json", "meta.json", "rootfs.ext4"]);
    const meta = JSON.parse(readFileSync(join(dir, "meta.json"), "utf8"));
    expect(meta).toMatchObject({ digest: img.manifestDigest, references: [r.reference], platform: "linux/amd64" });
    expect(readdirSync(join(home, "cache/blobs/sha256")).sort()).toEqual([...img.blobs.keys()].map((d) => d.slice(7)).sort());
    const refs = readdirSync(join(home, "cache/refs"));
    expect(refs).toHaveLength(1);
    expect(JSON.parse(readFileSync(join(home, "cache/refs", refs[0]!), "utf8"))).toMatchObject({
      reference: r.reference,
      platforms: { "linux/amd64": { digest: img.manifestDigest } },
    });
    expectNothingTrusted([]);
  });

  it("handles zstd, uncompressed and Docker v2 images", async () => {
    const z = await sampleImage("zstd");
    const n = await sampleImage("none");
    const d = await buildImage({ docker: true, layers: [{ entries: [{ name: "hello", content: "docker" }] }] });
    reg.addImage("busybox", "zstd", z);
    reg.addImage("busybox", "plain", n);
    reg.addImage("dockerv2", "latest", d);
    for (const tag of ["zstd", "plain"]) {
      const r = await pullImage(reg.ref("busybox", tag), { msbHome: home });
      expect(lsInImage(r.rootfs, "/opt/data")).toEqual(["upper.txt"]);
      expect(statInImage(r.rootfs, "/usr/bin/passwd")).toMatchObject({ perm: 0o4755 });
    }
    const r = await pullImage(reg.ref("dockerv2"), { msbHome: home });
    expect(catInImage(r.rootfs, "/hello").toString()).toBe("docker");
  });

  it("picks the platform from an OCI index or a Docker manifest list", async () => {
    const amd = await buildImage({ layers: [{ entries: [{ name: "arch", content: "amd64" }] }] });
    const arm = await buildImage({ architecture: "arm64", variant: "v8", layers: [{ entries: [{ name: "arch", content: "arm64" }] }] });
    const attest = await buildImage({ layers: [{ entries: [{ name: "x", content: "attestation" }] }] });
    for (const [tag, docker] of [
      ["latest", false],
      ["v2list", true],
    ] as const) {
      const idx = buildIndex(
        [
          { image: attest, platform: { os: "unknown", architecture: "unknown" } },
          { image: arm, platform: { os: "linux", architecture: "arm64", variant: "v8" } },
          { image: amd, platform: { os: "linux", architecture: "amd64" } },
        ],
        docker,
      );
      for (const i of [amd, arm, attest]) reg.addImage("multi", undefined, i);
      reg.addManifest("multi", tag, { body: idx.body, mediaType: idx.mediaType }, idx.digest);
      const a = await pullImage(reg.ref("multi", tag), { msbHome: home, platform: { os: "linux", architecture: "amd64" } });
      expect(a.digest).toBe(amd.manifestDigest);
      expect(catInImage(a.rootfs, "/arch").toString()).toBe("amd64");
      const b = await pullImage(reg.ref("multi", tag), { msbHome: home, platform: { os: "linux", architecture: "arm64" } });
      expect(b.digest).toBe(arm.manifestDigest);
      expect(catInImage(b.rootfs, "/arch").toString()).toBe("arm64");
      const e = await pullErr(reg.ref("multi", tag), { platform: { os: "linux", architecture: "s390x" } });
      expect(e.code).toBe("imageNotFound");
      expect(e.message).toContain("has no linux/s390x variant (it has: linux/arm64/v8, linux/amd64)");
      // pinned by the index digest
      const c = await pullImage(`${reg.host}/multi@${idx.digest}`, { msbHome: home, platform: { os: "linux", architecture: "amd64" } });
      expect(c.digest).toBe(amd.manifestDigest);
    }
    // both platforms of one reference are listed
    const list = await listImages(home);
    expect(list.filter((i) => i.reference === `${reg.host}/multi:latest`).map((i) => i.digest).sort()).toEqual(
      [amd.manifestDigest, arm.manifestDigest].sort(),
    );
  });

  it("pulls by digest and refuses a manifest whose digest does not match", async () => {
    const r = await pullImage(`${reg.host}/busybox@${img.manifestDigest}`, { msbHome: home });
    expect(r.digest).toBe(img.manifestDigest);
    expect(r.reference).toBe(`${reg.host}/busybox@${img.manifestDigest}`);
    const other = await buildImage({ layers: [{ entries: [{ name: "x", content: "x" }] }] });
    const fake = "sha256:" + "0".repeat(64);
    reg.addManifest("busybox", undefined, { body: other.manifest, mediaType: other.mediaType }, fake);
    const e = await pullErr(`${reg.host}/busybox@${fake}`);
    expect(e.code).toBe("image");
    expect(e.message).toContain(fake);
  });

  it("unknown repository or tag -> imageNotFound", async () => {
    const e1 = await pullErr(reg.ref("busybox", "nope"));
    expect(e1.code).toBe("imageNotFound");
    expect(e1.message).toContain(`${reg.host}/busybox:nope not found in registry ${reg.host}`);
    expect(e1.message).toContain("MANIFEST_UNKNOWN");
    const e2 = await pullErr(reg.ref("nothere"));
    expect(e2.code).toBe("imageNotFound");
    expect(e2.message).toContain("NAME_UNKNOWN");
  });

  it("pull policies: if-missing uses the cache offline, never needs it, always re-resolves", async () => {
    const e = await pullErr(reg.ref("busybox"), { policy: "never" });
    expect(e.code).toBe("imageNotFound");
    expect(e.message).toMatch(/is not in the cache .* the pull policy is "never"/);

    const first = await pullImage(reg.ref("busybox"), { msbHome: home });
    const n = reg.log.length;
    const cached = await pullImage(reg.ref("busybox"), { msbHome: home });
    expect(cached).toEqual(first);
    expect(reg.log.length).toBe(n); // no request at all
    const never = await pullImage(reg.ref("busybox"), { msbHome: home, policy: "never" });
    expect(never.digest).toBe(first.digest);

    const events: PullProgress[] = [];
    const again = await pullImage(reg.ref("busybox"), { msbHome: home, policy: "always", onProgress: (p) => events.push(p) });
    expect(again.digest).toBe(first.digest);
    const newReqs = reg.log.slice(n);
    expect(newReqs.some((l) => l.url.includes("/manifests/latest"))).toBe(true);
    expect(newReqs.some((l) => l.url.includes("/blobs/"))).toBe(false); // nothing re-downloaded
    expect(events.filter((e) => e.phase === "layer").every((e) => (e as { cached: boolean }).cached)).toBe(true);

    // a new version of the tag shares the lower layer: only the new blobs are fetched
    const v2 = await buildImage({
      layers: [
        { entries: [{ name: "a", content: "same" }] },
        { entries: [{ name: "b", content: "new" }] },
      ],
    });
    const v1 = await buildImage({ layers: [{ entries: [{ name: "a", content: "same" }] }] });
    reg.addImage("shared", "latest", v1);
    await pullImage(reg.ref("shared"), { msbHome: home });
    reg.addImage("shared", "latest", v2);
    const m = reg.log.length;
    const upd = await pullImage(reg.ref("shared"), { msbHome: home, policy: "always" });
    expect(upd.digest).toBe(v2.manifestDigest);
    const blobReqs = reg.log.slice(m).filter((l) => l.url.includes("/blobs/")).map((l) => l.url.split("/").pop());
    expect(blobReqs.sort()).toEqual([v2.layerDigests[1], v2.configDigest].sort());
    expect(catInImage(upd.rootfs, "/b").toString()).toBe("new");
  });

  it("rejects a blob that does not match its digest, and caches nothing of it", async () => {
    const bad = img.layerDigests[1]!;
    const good = img.blobs.get(bad)!;
    const corrupt = Buffer.from(good);
    corrupt[corrupt.length - 5]! ^= 0xff;
    reg.corrupt.set(bad, corrupt);
    const e = await pullErr(reg.ref("busybox"));
    expect(e.code).toBe("image");
    expect(e.digest).toBe(bad);
    expect(e.message).toContain(`blob ${bad} from registry ${reg.host}`);
    expect(e.message).toContain("does not match its digest");
    expectNothingTrusted([bad]);
    expect(existsSync(join(home, "cache/images", img.manifestDigest.slice(7), "meta.json"))).toBe(false);
    expect(await listImages(home)).toEqual([]);
    // the registry is fixed: the next pull succeeds
    reg.corrupt.delete(bad);
    const r = await pullImage(reg.ref("busybox"), { msbHome: home });
    expect(r.digest).toBe(img.manifestDigest);
  });

  it("a cached blob that went bad on disk is noticed, removed and downloaded again", async () => {
    const base = { entries: [{ name: "base", content: "b".repeat(5000) }] };
    const a = await buildImage({ layers: [base] });
    const b = await buildImage({ layers: [base, { entries: [{ name: "top", content: "t" }] }] });
    reg.addImage("a", "latest", a);
    reg.addImage("b", "latest", b);
    await pullImage(reg.ref("a"), { msbHome: home });
    const shared = a.layerDigests[0]!;
    const path = join(home, "cache/blobs/sha256", shared.slice(7));
    const bytes = readFileSync(path);
    bytes[bytes.length - 3]! ^= 0x55;
    writeFileSync(path, bytes);
    const n = reg.log.length;
    const r = await pullImage(reg.ref("b"), { msbHome: home });
    expect(catInImage(r.rootfs, "/base").toString()).toBe("b".repeat(5000));
    expect(reg.log.slice(n).filter((l) => l.url.endsWith(shared))).toHaveLength(1);
    expect(readFileSync(path)).toEqual(a.blobs.get(shared));
  });

  it("rejects a layer whose content does not match the config's diff_id", async () => {
    const i = await buildImage({ layers: [{ entries: [{ name: "x", content: "x" }] }] });
    const cfg = JSON.parse(i.config.toString());
    cfg.rootfs.diff_ids = ["sha256:" + "1".repeat(64)];
    const config = Buffer.from(JSON.stringify(cfg));
    const man = JSON.parse(i.manifest.toString());
    man.config.digest = sha256(config);
    man.config.size = config.length;
    const manifest = Buffer.from(JSON.stringify(man));
    const blobs = new Map(i.blobs);
    blobs.set(sha256(config), config);
    reg.addImage("diffid", "latest", { ...i, manifest, manifestDigest: sha256(manifest), config, configDigest: sha256(config), blobs });
    const e = await pullErr(reg.ref("diffid"));
    expect(e.code).toBe("image");
    expect(e.message).toContain("does not match the image config's diff_id");
    expect(e.digest).toBe(i.layerDigests[0]);
    expectNothingTrusted([]);
  });

  it("an aborted pull leaves nothing a later pull would trust", async () => {
    const big = await buildImage({
      layers: [{ compression: "none", entries: [{ name: "big", content: Buffer.alloc(3 << 20, 7) }] }],
    });
    reg.addImage("big", "latest", big);
    reg.slow.set(big.layerDigests[0]!, 5);
    const ac = new AbortController();
    let err: unknown;
    await pullImage(reg.ref("big"), {
      msbHome: home,
      signal: ac.signal,
      onProgress: (p) => {
        if (p.phase === "layer" && p.doneBytes > 0) ac.abort();
      },
    }).catch((e: unknown) => (err = e));
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).name).toBe("AbortError");
    expectNothingTrusted([big.layerDigests[0]!]);
    expect(existsSync(join(home, "cache/images", big.manifestDigest.slice(7), "meta.json"))).toBe(false);
    reg.slow.clear();
    const r = await pullImage(reg.ref("big"), { msbHome: home });
    expect(statInImage(r.rootfs, "/big")!.size).toBe(3 << 20);
  });

  it("a registry that drops the connection mid-blob gives a clear error; the next pull succeeds", async () => {
    const big = await buildImage({ layers: [{ compression: "none", entries: [{ name: "big", content: Buffer.alloc(1 << 20, 1) }] }] });
    reg.addImage("big", "latest", big);
    const d = big.layerDigests[0]!;
    reg.cutAfter.set(d, 300_000);
    const e = await pullErr(reg.ref("big"));
    expect(e.code).toBe("image");
    expect(e.digest).toBe(d);
    expect(e.message).toMatch(new RegExp(`download of blob ${d} from registry ${reg.host.replace(/\./g, "\\.")} failed after \\d+ of \\d+ bytes`));
    expectNothingTrusted([d]);
    reg.cutAfter.clear();
    await pullImage(reg.ref("big"), { msbHome: home });
  });

  it("a registry that is down gives a clear error", async () => {
    const host = reg.host;
    await reg.stop();
    const e = await pullErr(`${host}/busybox`);
    expect(e.code).toBe("image");
    expect(e.message).toContain(`cannot reach registry ${host}`);
    expect(e.message).toContain("ECONNREFUSED");
    reg = await new FakeRegistry().start(); // for afterEach
  });

  it("follows blob redirects, and sends credentials only to the registry's origin", async () => {
    const cdn = await new FakeRegistry().start();
    try {
      cdn.addImage("busybox", "latest", img);
      reg.auth = { kind: "basic", username: "u", password: "p" };
      reg.redirect.set(img.layerDigests[0]!, ""); // same origin
      reg.redirect.set(img.layerDigests[1]!, `http://${cdn.host}`); // elsewhere
      const r = await pullImage(reg.ref("busybox"), { msbHome: home, auth: { kind: "basic", username: "u", password: "p" } });
      expect(r.digest).toBe(img.manifestDigest);
      const same = reg.log.find((l) => l.url === `/redirected/${img.layerDigests[0]}`)!;
      expect(same.authorization).toMatch(/^Basic /);
      const other = cdn.log.find((l) => l.url === `/redirected/${img.layerDigests[1]}`)!;
      expect(other.authorization).toBeUndefined();
    } finally {
      await cdn.stop();
    }
  });
});

describe("registry auth", () => {
  it("Basic: right credentials work, wrong ones and none are registryAuth errors", async () => {
    reg.auth = { kind: "basic", username: "alice", password: "s3cret" };
    const r = await pullImage(reg.ref("busybox"), { msbHome: home, auth: { kind: "basic", username: "alice", password: "s3cret" } });
    expect(r.digest).toBe(img.manifestDigest);
    const wrong = await pullErr(reg.ref("busybox"), { policy: "always", auth: { kind: "basic", username: "alice", password: "nope" } });
    expect(wrong.code).toBe("registryAuth");
    expect(wrong.message).toContain(`credentials for user "alice" were rejected by ${reg.host}`);
    const none = await pullErr(reg.ref("busybox"), { policy: "always" });
    expect(none.code).toBe("registryAuth");
    expect(none.message).toContain(`registry ${reg.host} requires authentication`);
  });

  it("Bearer: anonymous token, cached per scope", async () => {
    reg.auth = { kind: "bearer", anonymous: true };
    await pullImage(reg.ref("busybox"), { msbHome: home });
    expect(reg.tokensIssued).toBe(1);
    const tokenReq = reg.log.find((l) => l.url.startsWith("/token"))!;
    expect(tokenReq.url).toContain("service=fake-registry");
    expect(tokenReq.url).toContain(`scope=${encodeURIComponent("repository:busybox:pull")}`);
    expect(tokenReq.authorization).toBeUndefined();
    expect(reg.log.filter((l) => l.url.includes("/blobs/")).every((l) => l.authorization === "Bearer good-token")).toBe(true);
    await pullImage(reg.ref("busybox"), { msbHome: home, policy: "always" });
    expect(reg.tokensIssued).toBe(1);
  });

  it("Bearer: credentials go to the token server; wrong ones are rejected; anonymous refused", async () => {
    reg.auth = { kind: "bearer", username: "bob", password: "pw" };
    const r = await pullImage(reg.ref("busybox"), { msbHome: home, auth: { kind: "basic", username: "bob", password: "pw" } });
    expect(r.digest).toBe(img.manifestDigest);
    expect(reg.log.find((l) => l.url.startsWith("/token"))!.authorization).toMatch(/^Basic /);
    tokenCache.clear();
    const wrong = await pullErr(reg.ref("busybox"), { policy: "always", auth: { kind: "basic", username: "bob", password: "bad" } });
    expect(wrong.code).toBe("registryAuth");
    expect(wrong.message).toContain(`credentials for user "bob" were rejected by ${reg.host}`);
    const anon = await pullErr(reg.ref("busybox"), { policy: "always" });
    expect(anon.code).toBe("registryAuth");
    expect(anon.message).toContain("does not allow anonymous pulls");
  });
});

describe("transport", () => {
  let certDir: string;
  let tls: { key: string; cert: string };
  beforeAll(() => {
    certDir = mkdtempSync(join(tmpdir(), "oci-cert-"));
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
      "-keyout", join(certDir, "key.pem"), "-out", join(certDir, "cert.pem"),
      "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ], { stdio: "ignore" });
    tls = { key: readFileSync(join(certDir, "key.pem"), "utf8"), cert: readFileSync(join(certDir, "cert.pem"), "utf8") };
  });
  afterAll(() => rmSync(certDir, { recursive: true, force: true }));

  it("HTTPS with an extra CA; untrusted without it; insecure skips verification", async () => {
    const sreg = await new FakeRegistry({ tls, auth: { kind: "basic", username: "u", password: "p" } }).start();
    try {
      sreg.addImage("busybox", "latest", img);
      const auth = { kind: "basic" as const, username: "u", password: "p" };
      const r = await pullImage(sreg.ref("busybox"), { msbHome: home, auth, caFile: join(certDir, "cert.pem") });
      expect(r.digest).toBe(img.manifestDigest);
      const e = await pullErr(sreg.ref("busybox"), { policy: "always", auth });
      expect(e.code).toBe("image");
      expect(e.message).toContain(`TLS certificate of registry ${sreg.host} is not trusted`);
      expect(e.message).toContain("caFile");
      await pullImage(sreg.ref("busybox"), { msbHome: home, policy: "always", auth, insecure: true });
      const bad = await pullErr(sreg.ref("busybox"), { policy: "always", caFile: join(certDir, "missing.pem") });
      expect(bad).toMatchObject({ code: "invalidConfig", field: "caFile" });
    } finally {
      await sreg.stop();
    }
  });

  const external = Object.values(networkInterfaces())
    .flat()
    .find((i) => i && i.family === "IPv4" && !i.internal)?.address;

  it.skipIf(!external)("plain HTTP only for loopback, insecure or configured registries", async () => {
    const ext = await new FakeRegistry({ listen: external! }).start();
    try {
      ext.addImage("busybox", "latest", img);
      const e = await pullErr(ext.ref("busybox"));
      expect(e.code).toBe("image");
      expect(e.message).toContain(`cannot reach registry ${ext.host} over HTTPS`);
      expect(ext.log.filter((l) => l.url.startsWith("/v2/"))).toEqual([]); // never asked over HTTP
      const r = await pullImage(ext.ref("busybox"), { msbHome: home, insecure: true });
      expect(r.digest).toBe(img.manifestDigest);
      writeFileSync(join(home, "config.json"), JSON.stringify({ insecureRegistries: [ext.host] }));
      await pullImage(ext.ref("busybox"), { msbHome: home, policy: "always" });
    } finally {
      await ext.stop();
    }
  });

  it.skipIf(!external)("goes through HTTP(S)_PROXY, except for loopback registries", async () => {
    const ext = await new FakeRegistry({ listen: external! }).start();
    const tunnels: string[] = [];
    const proxy = createHttpServer();
    proxy.on("connect", (req, client: Socket, head: Buffer) => {
      tunnels.push(req.url ?? "");
      const [h, p] = (req.url ?? "").split(":");
      const up = connect(Number(p), h!, () => {
        client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
        up.write(head);
        up.pipe(client).pipe(up);
      });
      up.on("error", () => client.destroy());
      client.on("error", () => up.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    const saved = { h: process.env.HTTP_PROXY, s: process.env.HTTPS_PROXY };
    process.env.HTTP_PROXY = process.env.HTTPS_PROXY = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    try {
      ext.addImage("busybox", "latest", img);
      const r = await pullImage(ext.ref("busybox"), { msbHome: home, insecure: true });
      expect(r.digest).toBe(img.manifestDigest);
      expect(tunnels).toContain(ext.host);
      const n = tunnels.length;
      await pullImage(reg.ref("busybox"), { msbHome: home });
      expect(tunnels.length).toBe(n);
    } finally {
      if (saved.h === undefined) delete process.env.HTTP_PROXY;
      else process.env.HTTP_PROXY = saved.h;
      if (saved.s === undefined) delete process.env.HTTPS_PROXY;
      else process.env.HTTPS_PROXY = saved.s;
      proxy.closeAllConnections();
      proxy.close();
      await ext.stop();
    }
  });
});

describe("listImages / removeImage", () => {
  it("lists, removes references, deletes unreferenced images and their blobs", async () => {
    const other = await buildImage({ layers: [{ entries: [{ name: "o", content: "o" }] }] });
    reg.addImage("other", "latest", other);
    expect(await listImages(home)).toEqual([]);
    const a = await pullImage(reg.ref("busybox"), { msbHome: home });
    await pullImage(reg.ref("busybox", img.manifestDigest).replace(":sha256", "@sha256"), { msbHome: home });
    reg.addImage("busybox", "alias", img);
    await pullImage(reg.ref("busybox", "alias"), { msbHome: home });
    const o = await pullImage(reg.ref("other"), { msbHome: home });
    const list = await listImages(home);
    expect(list.map((i) => i.reference)).toEqual(
      [`${reg.host}/busybox:alias`, `${reg.host}/busybox:latest`, `${reg.host}/busybox@${img.manifestDigest}`, `${reg.host}/other:latest`].sort(),
    );
    expect(list[0]!.pulledAt).toBeInstanceOf(Date);
    expect(list[0]!.sizeBytes).toBe(a.sizeBytes);

    await removeImage(home, reg.ref("busybox", "alias"));
    expect(existsSync(a.rootfs)).toBe(true); // still referenced
    await removeImage(home, reg.ref("busybox"));
    expect(existsSync(a.rootfs)).toBe(true);
    await removeImage(home, `${reg.host}/busybox@${img.manifestDigest}`);
    expect(existsSync(join(home, "cache/images", a.digest.slice(7)))).toBe(false);
    // busybox blobs collected, the other image's kept
    expect(readdirSync(join(home, "cache/blobs/sha256")).sort()).toEqual([...other.blobs.keys()].map((d) => d.slice(7)).sort());
    expect((await listImages(home)).map((i) => i.reference)).toEqual([`${reg.host}/other:latest`]);

    const e = await removeImage(home, reg.ref("busybox")).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OciError);
    expect(e).toMatchObject({ code: "imageNotFound" });
    expect((e as Error).message).toContain(`${reg.host}/busybox:latest is not in the cache`);

    await removeImage(home, o.digest); // by digest
    expect(await listImages(home)).toEqual([]);
    expect(readdirSync(join(home, "cache/blobs/sha256"))).toEqual([]);
  });

  it("never (after removal) -> imageNotFound; the ref of an incomplete image is not listed", async () => {
    await pullImage(reg.ref("busybox"), { msbHome: home });
    rmSync(join(home, "cache/images", img.manifestDigest.slice(7), "meta.json"));
    expect(await listImages(home)).toEqual([]);
    const e = await pullErr(reg.ref("busybox"), { policy: "never" });
    expect(e.code).toBe("imageNotFound");
    // if-missing rebuilds it
    const r = await pullImage(reg.ref("busybox"), { msbHome: home });
    expect(existsSync(r.rootfs)).toBe(true);
  });
});

describe("option validation", () => {
  it.each([
    [{ policy: "sometimes" }, "pullPolicy"],
    [{ msbHome: "" }, "msbHome"],
    [{ auth: { kind: "token", token: "x" } }, "registryAuth"],
    [{ platform: { os: "linux" } }, "platform"],
  ])("%j -> invalidConfig %s", async (opts, field) => {
    const e = await pullErr(reg.ref("busybox"), opts as Partial<PullOptions>);
    expect(e).toMatchObject({ code: "invalidConfig", field });
  });
  it("bad references are invalidConfig", async () => {
    const e = await pullErr("bad//ref");
    expect(e).toMatchObject({ code: "invalidConfig", field: "image" });
  });
});
