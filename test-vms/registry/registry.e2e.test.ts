// Smoke test of the registry fixtures: each of the three setups starts, takes the
// fixture images, answers /v2/ as a client expects, serves busybox:latest to skopeo,
// and stops (its PID gone afterwards).
import { execFile } from "node:child_process";
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  BUSYBOX_ABSENT,
  BUSYBOX_CONFIG,
  BUSYBOX_HARDLINKS,
  BUSYBOX_LISTINGS,
  BUSYBOX_TREE,
  buildFixtures,
  corruptBlob,
  fixtureFacts,
  OCI_DIR,
  pushFixtures,
  sha256,
  startRegistry,
  type Registry,
  type RegistryMode,
} from "./index.js";

const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPT = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, "application/vnd.docker.distribution.manifest.v2+json"].join(", ");

interface Answer {
  status: number;
  headers: Headers;
  body: Buffer;
}

/** GET over http (fetch) or https (node:https trusting only the registry's own CA). */
async function get(reg: Registry, path: string, headers: Record<string, string> = {}): Promise<Answer> {
  const url = path.startsWith("http") ? path : reg.url + path;
  if (url.startsWith("http:")) {
    const res = await fetch(url, { headers });
    return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
  }
  const ca = readFileSync(reg.caFile!, "utf8");
  return new Promise((resolve, reject) => {
    const req = request(url, { headers, ca }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const h = new Headers();
        for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) h.set(k, String(v));
        resolve({ status: res.statusCode ?? 0, headers: h, body: Buffer.concat(chunks) });
      });
    });
    req.on("error", reject);
    req.end();
  });
}

function skopeo(args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile("skopeo", ["--insecure-policy", ...args], (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  );
}

const basic = (u: string, p: string) => "Basic " + Buffer.from(`${u}:${p}`).toString("base64");

function pidGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "ESRCH";
  }
}

const facts = () => fixtureFacts().images;

describe.each<RegistryMode>(["plain", "tls-basic", "token"])("registry %s", (mode) => {
  let reg: Registry;

  beforeAll(async () => {
    let t = performance.now();
    reg = await startRegistry(mode);
    const started = performance.now() - t;
    t = performance.now();
    await pushFixtures(reg);
    console.log(`registry ${mode}: start ${started.toFixed(0)} ms, push ${(performance.now() - t).toFixed(0)} ms`);
  }, 300_000);

  afterAll(async () => {
    await reg?.stop();
  });

  it("answers /v2/ as a client expects", async () => {
    const res = await get(reg, "/v2/");
    const challenge = res.headers.get("www-authenticate") ?? "";
    if (mode === "plain") {
      expect(res.status).toBe(200);
    } else if (mode === "tls-basic") {
      expect(res.status).toBe(401);
      expect(challenge).toBe('Basic realm="msb-registry"');
      expect((await get(reg, "/v2/", { authorization: basic("msbuser", "msbpass") })).status).toBe(200);
      expect((await get(reg, "/v2/", { authorization: basic("msbuser", "wrong") })).status).toBe(401);
    } else {
      expect(res.status).toBe(401);
      expect(challenge).toBe(`Bearer realm="${reg.tokenRealm}",service="msb-registry"`);
    }
  });

  it("serves busybox:latest to skopeo", async () => {
    const creds = mode === "tls-basic" ? ["--creds", "msbuser:msbpass"] : []; // token: anonymous pull
    const out = JSON.parse(await skopeo(["inspect", "--tls-verify=false", ...creds, `docker://${reg.host}/busybox:latest`]));
    expect(out.Digest).toBe(facts()["busybox:latest"]!.digest);
    expect(out.Architecture).toBe("amd64");
    expect(out.Env).toContain("MSB_IMAGE_ENV=from-image");
    expect(out.Layers).toHaveLength(3);
  });

  if (mode === "plain") {
    it("has the index, the Docker list, zstd and plain layers, and a corruptible blob", async () => {
      const f = facts();
      const idx = await get(reg, "/v2/multi/manifests/latest", { accept: ACCEPT });
      expect(idx.headers.get("content-type")).toBe(OCI_INDEX);
      expect(idx.headers.get("docker-content-digest")).toBe(f["multi:latest"]!.digest);
      const platforms = JSON.parse(idx.body.toString()).manifests.map((m: { platform: unknown }) => m.platform);
      expect(platforms).toEqual([
        { architecture: "amd64", os: "linux" },
        { architecture: "arm64", os: "linux", variant: "v8" },
      ]);

      const list = await get(reg, "/v2/multi/manifests/v2list", { accept: ACCEPT });
      expect(list.headers.get("content-type")).toBe(DOCKER_LIST);
      expect(JSON.parse(list.body.toString()).manifests).toHaveLength(2);

      for (const [tag, type] of [["zstd", "tar+zstd"], ["plain", "tar"]]) {
        const m = await get(reg, `/v2/busybox/manifests/${tag}`, { accept: ACCEPT });
        const layers = JSON.parse(m.body.toString()).layers as { mediaType: string }[];
        expect(layers.map((l) => l.mediaType)).toEqual(Array(3).fill(`application/vnd.oci.image.layer.v1.${type}`));
      }

      const digest = await corruptBlob(reg, "evil", "corrupt");
      expect(digest).toBe(f["evil:corrupt"]!.layers![0]!.digest);
      const blob = await get(reg, `/v2/evil/blobs/${digest}`);
      expect(blob.status).toBe(200);
      expect(blob.body.length).toBe(f["evil:corrupt"]!.layers![0]!.size);
      expect(sha256(blob.body)).not.toBe(digest);
      // Other images are untouched.
      const layer = f["busybox:latest"]!.layers![0]!;
      expect(sha256((await get(reg, `/v2/busybox/blobs/${layer.digest}`)).body)).toBe(layer.digest);
    });
  }

  if (mode === "plain") {
    it.skipIf(!existsSync(join(OCI_DIR, "debian-python", "index.json")))(
      "takes debian-python (built by build-debian-python.sh)",
      async () => {
        const t = performance.now();
        await pushFixtures(reg, ["debian-python:latest"]);
        console.log(`registry plain: push debian-python ${(performance.now() - t).toFixed(0)} ms`);
        const m = await get(reg, "/v2/debian-python/manifests/latest", { accept: ACCEPT });
        expect(m.headers.get("docker-content-digest")).toBe(facts()["debian-python:latest"]!.digest);
      },
      300_000,
    );
  }

  if (mode === "token") {
    it("token server: anonymous gets pull only, msbuser pull+push, a wrong password 401", async () => {
      const q = `?service=msb-registry&scope=repository:busybox:pull,push`;
      const anon = await get(reg, reg.tokenRealm! + q);
      expect(anon.status).toBe(200);
      expect(reg.tokenRequests.at(-1)!.granted).toEqual([{ type: "repository", name: "busybox", actions: ["pull"] }]);

      const user = await get(reg, reg.tokenRealm! + q, { authorization: basic("msbuser", "msbpass") });
      expect(user.status).toBe(200);
      expect(reg.tokenRequests.at(-1)!.granted[0]!.actions).toEqual(["pull", "push"]);

      expect((await get(reg, reg.tokenRealm! + q, { authorization: basic("msbuser", "nope") })).status).toBe(401);

      // OAuth2 password grant (POST) as some clients use.
      const form = new URLSearchParams({ grant_type: "password", username: "msbuser", password: "msbpass", service: "msb-registry", scope: "repository:multi:pull" });
      const post = await fetch(reg.tokenRealm!, { method: "POST", body: form });
      expect(post.status).toBe(200);
      expect(((await post.json()) as { access_token: string }).access_token).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);

      // The anonymous token opens the manifest.
      const { token } = JSON.parse(anon.body.toString());
      const m = await get(reg, "/v2/busybox/manifests/latest", { authorization: `Bearer ${token}`, accept: ACCEPT });
      expect(m.status).toBe(200);
      expect(m.headers.get("docker-content-digest")).toBe(facts()["busybox:latest"]!.digest);
      const denied = await get(reg, "/v2/busybox/manifests/latest", { accept: ACCEPT });
      expect(denied.status).toBe(401);
      expect(denied.headers.get("www-authenticate")).toBe(
        `Bearer realm="${reg.tokenRealm}",service="msb-registry",scope="repository:busybox:pull"`,
      );
    });
  }

  it("stops: the PID is gone", async () => {
    const { pid } = reg;
    expect(pidGone(pid)).toBe(false);
    await reg.stop();
    expect(pidGone(pid)).toBe(true);
    await expect(fetch(`http://${reg.host}/v2/`)).rejects.toThrow();
  });
});

it("restarts on the same dataDir and port with its content", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "msb-registry-restart-"));
  try {
    const first = await startRegistry("plain", { dataDir });
    await pushFixtures(first, ["busybox:latest"]);
    await first.stop();
    expect(pidGone(first.pid)).toBe(true);
    const second = await startRegistry("plain", { dataDir, port: first.port });
    try {
      expect(second.host).toBe(first.host);
      const m = await get(second, "/v2/busybox/manifests/latest", { accept: ACCEPT });
      expect(m.headers.get("docker-content-digest")).toBe(facts()["busybox:latest"]!.digest);
    } finally {
      await second.stop();
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
});

// The expectations exported for the puller tests, checked against umoci's unpack (as
// root: umoci keeps ownership and makes device nodes only then).
it.skipIf(process.getuid?.() !== 0)("BUSYBOX_* expectations match umoci unpack of busybox:latest", async () => {
  await buildFixtures();
  const dir = mkdtempSync(join(tmpdir(), "msb-umoci-"));
  try {
    await new Promise<void>((resolve, reject) =>
      execFile("umoci", ["unpack", "--image", `${join(OCI_DIR, "busybox")}:latest`, join(dir, "b")], (e) => (e ? reject(e) : resolve())),
    );
    const root = join(dir, "b", "rootfs");
    for (const e of BUSYBOX_TREE) {
      const st = lstatSync(root + e.path);
      const type = st.isFile() ? "file" : st.isDirectory() ? "dir" : st.isSymbolicLink() ? "symlink" : st.isCharacterDevice() ? "chardev" : "other";
      expect({ path: e.path, type, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }).toEqual({
        path: e.path, type: e.type, mode: e.mode, uid: e.uid, gid: e.gid,
      });
      if (e.content !== undefined) expect(readFileSync(root + e.path, "utf8")).toBe(e.content);
      if (e.target !== undefined) expect(readlinkSync(root + e.path)).toBe(e.target);
      if (e.rdev) expect({ major: (st.rdev >> 8) & 0xfff, minor: (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00) }).toEqual(e.rdev);
    }
    for (const [a, b] of BUSYBOX_HARDLINKS) {
      expect(lstatSync(root + a).ino).toBe(lstatSync(root + b).ino);
      expect(lstatSync(root + a).nlink).toBe(2);
    }
    for (const [p, names] of Object.entries(BUSYBOX_LISTINGS)) expect(readdirSync(root + p).sort()).toEqual(names);
    for (const p of BUSYBOX_ABSENT) expect(existsSync(root + p)).toBe(false);
    expect(sha256(readFileSync(join(root, "bin/busybox")))).toBe(fixtureFacts().busyboxSha256.amd64);
    const cfg = JSON.parse(readFileSync(join(dir, "b", "config.json"), "utf8")); // runtime spec made by umoci
    expect(cfg.process.cwd).toBe(BUSYBOX_CONFIG.WorkingDir);
    expect(cfg.process.args).toEqual(BUSYBOX_CONFIG.Cmd);
    expect(cfg.process.user).toMatchObject({ uid: 1000, gid: 1000 });
    for (const v of BUSYBOX_CONFIG.Env) expect(cfg.process.env).toContain(v);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
