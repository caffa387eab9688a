// Local OCI registries for the tests: Debian's `docker-registry` (Distribution 2.8) on
// 127.0.0.1 with a random port, in three setups, plus the fixture images of
// build-images.sh pushed into them with skopeo. Node built-ins only.
//
//   const reg = await startRegistry("token");
//   await pushFixtures(reg);                  // busybox:latest, multi:latest, evil:*, ...
//   ... pull `${reg.host}/busybox:latest` ...
//   await reg.stop();                         // kills by PID, waits, removes the temp dir
//
// Modes (what a client must do):
//   plain      HTTP, no auth. GET /v2/ -> 200.
//   tls-basic  HTTPS with a self-signed certificate (SAN IP:127.0.0.1, DNS:localhost;
//              trust `caFile`, a PEM), htpasswd Basic auth msbuser/msbpass.
//              GET /v2/ -> 401 `WWW-Authenticate: Basic realm="msb-registry"`.
//   token      HTTP registry + a token server in this process (HTTP, 127.0.0.1).
//              GET /v2/ -> 401 `WWW-Authenticate: Bearer realm="http://127.0.0.1:T/token",
//              service="msb-registry"` (plus `scope="repository:NAME:pull"` on repository
//              URLs). The client asks the realm: GET {realm}?service=msb-registry&
//              scope=repository:NAME:pull, with `Authorization: Basic` for msbuser/msbpass
//              or without it (anonymous). Anonymous gets pull on every repository;
//              msbuser gets pull and push; wrong credentials get 401. The answer is
//              {token, access_token, expires_in, issued_at}; the client then sends
//              `Authorization: Bearer <token>` to the registry. POST {realm} with an
//              OAuth2 password grant (form: grant_type=password, username, password,
//              service, scope) works too. Each request is recorded in `tokenRequests`.
//
// Registries never outlive the test process: they run under `setpriv --pdeathsig KILL`
// (killed by the kernel if this process dies, even by SIGKILL) and an 'exit' handler
// kills any still running by PID.

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { createHash, createPrivateKey, randomBytes, sign, X509Certificate, type KeyObject } from "node:crypto";
import { accessSync, constants as fsc, existsSync, readFileSync, rmSync } from "node:fs";
import { mkdir, mkdtemp, open, readFile, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";

export type RegistryMode = "plain" | "tls-basic" | "token";

export interface TokenRequest {
  method: string;
  /** "msbuser", null when anonymous, or the rejected user name */
  account: string | null;
  scopes: string[];
  /** access granted, e.g. [{type:"repository", name:"busybox", actions:["pull"]}] */
  granted: Access[];
  status: number;
}

export interface Access {
  type: string;
  name: string;
  actions: string[];
}

export interface Registry {
  mode: RegistryMode;
  /** "127.0.0.1:PORT": the image reference prefix, e.g. `${host}/busybox:latest` */
  host: string;
  port: number;
  /** "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT" */
  url: string;
  /** PEM of the self-signed certificate (tls-basic) */
  caFile?: string;
  /** credentials of the one user (tls-basic and token): msbuser / msbpass */
  username?: string;
  password?: string;
  /** token mode: the token endpoint and service name the Bearer challenge names */
  tokenRealm?: string;
  tokenService?: string;
  /** token mode: every request the token server answered, in order */
  tokenRequests: TokenRequest[];
  /** registry PID (the token server runs inside this process) */
  pid: number;
  /** working directory: config, certificates, `storage/` (filesystem driver), registry.log */
  dataDir: string;
  /** the registry's log so far (stderr), for failure messages */
  logs(): string;
  /** SIGTERM, SIGKILL after 5 s, wait for exit; stops the token server; removes the temp
   * dir unless `dataDir` was given. Safe to call twice. */
  stop(): Promise<void>;
}

export const USERNAME = "msbuser";
export const PASSWORD = "msbpass";
export const TOKEN_SERVICE = "msb-registry";
export const TOKEN_ISSUER = "msb-test-token-server";
export const BASIC_REALM = "msb-registry";

const HERE = fileURLToPath(new URL(".", import.meta.url));
/** build output of build-images.sh: one OCI layout per repository + facts.json */
export const OCI_DIR = join(HERE, "..", "build", "oci");

// ------------------------------------------------------------------ fixture images
interface Fixture {
  layout: string;
  srcTag: string;
  args: string[];
}
// name:tag in the registry -> where it comes from and how skopeo copies it.
// --preserve-digests: skopeo would otherwise gzip uncompressed layers on the way to a
// registry (busybox:plain, evil:corrupt); it also guarantees registry digests = facts.json.
const KEEP = ["--preserve-digests"];
const FIXTURES: Record<string, Fixture> = {
  "busybox:latest": { layout: "busybox", srcTag: "latest", args: KEEP },
  "busybox:zstd": { layout: "busybox", srcTag: "zstd", args: KEEP },
  "busybox:plain": { layout: "busybox", srcTag: "plain", args: KEEP },
  "multi:latest": { layout: "multi", srcTag: "latest", args: ["--all", ...KEEP] },
  // The same index converted to a Docker v2 manifest list (and v2s2 manifests).
  "multi:v2list": { layout: "multi", srcTag: "latest", args: ["--all", "--format", "v2s2"] },
  "evil:dotdot": { layout: "evil", srcTag: "dotdot", args: KEEP },
  "evil:dotdot-nested": { layout: "evil", srcTag: "dotdot-nested", args: KEEP },
  "evil:abs": { layout: "evil", srcTag: "abs", args: KEEP },
  "evil:symlink": { layout: "evil", srcTag: "symlink", args: KEEP },
  "evil:symlink-abs": { layout: "evil", srcTag: "symlink-abs", args: KEEP },
  "evil:hardlink": { layout: "evil", srcTag: "hardlink", args: KEEP },
  "evil:corrupt": { layout: "evil", srcTag: "corrupt", args: KEEP },
  "debian-python:latest": { layout: "debian-python", srcTag: "latest", args: KEEP },
};
/** What pushFixtures() pushes by default: everything but the slow debian-python tier. */
export const DEFAULT_FIXTURES = Object.keys(FIXTURES).filter((n) => !n.startsWith("debian-python"));
export const ALL_FIXTURES = Object.keys(FIXTURES);

export interface ImageFacts {
  layout: string;
  mediaType: string;
  digest: string;
  size: number;
  /** single-platform images */
  config?: string;
  layers?: { digest: string; size: number; mediaType: string }[];
  diffIds?: string[];
  /** indexes (multi:latest) */
  manifests?: { digest: string; platform: { architecture: string; os: string; variant?: string } }[];
}
export interface FixtureFacts {
  /** sha256 of /bin/busybox in the amd64 and arm64 images ("sha256:<hex>") */
  busyboxSha256: { amd64: string; arm64: string };
  /** per "repo:tag" of the OCI layouts (as built, before any skopeo conversion: the
   * v2list digests exist only in the registry) */
  images: Record<string, ImageFacts>;
}

// ------------------------------------------------------------------ expected content
// What a correct unpack of busybox:latest (= :zstd = :plain = multi's linux/amd64; the
// arm64 member differs only in /bin/busybox) yields; fixtures.py writes it, and the smoke
// test checks this list against `umoci unpack`. Modes include setuid/sticky bits.
export interface TreeEntry {
  path: string;
  type: "file" | "dir" | "symlink" | "chardev";
  mode: number;
  uid: number;
  gid: number;
  content?: string;
  target?: string;
  rdev?: { major: number; minor: number };
}
const f = (path: string, content: string, mode = 0o644, uid = 0, gid = 0): TreeEntry =>
  ({ path, type: "file", mode, uid, gid, content });
const d = (path: string, mode = 0o755, uid = 0, gid = 0): TreeEntry => ({ path, type: "dir", mode, uid, gid });
const l = (path: string, target: string): TreeEntry => ({ path, type: "symlink", mode: 0o777, uid: 0, gid: 0, target });
const c = (path: string): TreeEntry => ({ path, type: "chardev", mode: 0o666, uid: 0, gid: 0, rdev: { major: 1, minor: 3 } });
export const BUSYBOX_TREE: TreeEntry[] = [
  { path: "/bin/busybox", type: "file", mode: 0o755, uid: 0, gid: 0 }, // sha256: fixtureFacts().busyboxSha256
  ...["sh", "cat", "ls", "pwd", "stat", "readlink"].map((a) => l(`/bin/${a}`, "/bin/busybox")),
  ...["env", "id", "wc", "sha256sum"].map((a) => l(`/usr/bin/${a}`, "/bin/busybox")),
  l("/linuxrc", "/bin/busybox"),
  f("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
  f("/etc/group", "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"),
  f("/etc/image-marker", "busybox-fixture\n"),
  d("/tmp", 0o1777), d("/var/tmp", 0o1777), d("/root", 0o700), d("/proc"), d("/sys"), d("/dev"),
  d("/home/app", 0o755, 1000, 1000),
  c("/dev/msbnull"), // hidden inside the VM by the guest's devtmpfs on /dev
  c("/opt/dev/msbnull"), // the same node where the VM can see it
  d("/opt/data"),
  f("/opt/data/keep.txt", "keep\n"),
  f("/opt/data/hard.txt", "keep\n"), // hard link of keep.txt (same inode, 2 links)
  l("/opt/data/link", "keep.txt"),
  f("/opt/data/replaced.txt", "v2\n"), // "v1\n" in layer 2, replaced in layer 3
  f("/opt/data/app-owned.txt", "app\n", 0o600, 1000, 1000),
  d("/opt/opaque"),
  f("/opt/opaque/new.txt", "new\n"),
  f("/usr/bin/suid-file", "#!/bin/sh\necho suid-file\n", 0o4755),
];
/** Hard-link pairs of BUSYBOX_TREE. */
export const BUSYBOX_HARDLINKS: [string, string][] = [["/opt/data/keep.txt", "/opt/data/hard.txt"]];
/** Exact directory listings after whiteouts (layer 3: .wh.gone.txt; /opt/opaque opaque). */
export const BUSYBOX_LISTINGS: Record<string, string[]> = {
  "/opt": ["data", "dev", "opaque"],
  "/opt/data": ["app-owned.txt", "hard.txt", "keep.txt", "link", "replaced.txt"],
  "/opt/opaque": ["new.txt"], // old.txt and sub/old2.txt of layer 2 are hidden
};
/** Paths that must not exist (whited out, or whiteout markers that leaked). */
export const BUSYBOX_ABSENT = [
  "/opt/data/gone.txt", "/opt/data/.wh.gone.txt", "/opt/opaque/old.txt", "/opt/opaque/sub",
  "/opt/opaque/.wh..wh..opq",
];
/** The image config (Entrypoint: none). */
export const BUSYBOX_CONFIG = {
  Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "MSB_IMAGE_ENV=from-image"],
  WorkingDir: "/opt/data",
  User: "1000:1000",
  Cmd: ["sh"],
};
/**
 * evil:* images: each must be rejected; the files named here must not appear anywhere
 * outside the unpack dir (they would land 1-8 levels above it, or at the filesystem
 * root for the absolute variants). Every evil layer starts with a harmless `safe.txt`.
 */
export const EVIL: Record<string, { what: string; escapes: string[] }> = {
  "evil:dotdot": { what: "entry ../escape.txt", escapes: ["escape.txt"] },
  "evil:dotdot-nested": { what: "entry opt/../../escape-nested.txt", escapes: ["escape-nested.txt"] },
  "evil:abs": { what: "entry /../../abs-escape.txt", escapes: ["abs-escape.txt"] },
  "evil:symlink": { what: "symlink opt/esc -> ../../../.., then file opt/esc/pwned.txt (one layer)", escapes: ["pwned.txt"] },
  "evil:symlink-abs": {
    what: "layer 1: symlink opt/esc2 -> /tmp/..//..; layer 2: file opt/esc2/pwned-abs.txt",
    escapes: ["pwned-abs.txt"],
  },
  "evil:hardlink": { what: "hard link hl-passwd -> ../../../../../../../../etc/passwd", escapes: [] },
  "evil:corrupt": { what: "a sound image; corruptBlob(reg, 'evil', 'corrupt') breaks its one (uncompressed) layer", escapes: [] },
};

/** Digests and checksums of the built fixtures (test-vms/build/oci/facts.json). */
export function fixtureFacts(): FixtureFacts {
  return JSON.parse(readFileSync(join(OCI_DIR, "facts.json"), "utf8")) as FixtureFacts;
}

let built: Promise<void> | undefined;
/** Runs build-images.sh once per process (a no-op taking milliseconds when up to date). */
export function buildFixtures(): Promise<void> {
  built ??= run("bash", [join(HERE, "build-images.sh")], { timeoutMs: 600_000 }).then(() => undefined);
  return built;
}

/**
 * Pushes fixture images ("repo:tag", default DEFAULT_FIXTURES) with skopeo. Builds them
 * first if needed; debian-python must have been built by build-debian-python.sh.
 */
export async function pushFixtures(reg: Registry, images: string[] = DEFAULT_FIXTURES): Promise<void> {
  await buildFixtures();
  const auth = reg.username ? ["--dest-creds", `${reg.username}:${reg.password}`] : [];
  const copies = images.map((name) => {
    const f = FIXTURES[name];
    if (!f) throw new Error(`unknown fixture image ${name} (known: ${ALL_FIXTURES.join(", ")})`);
    const layout = join(OCI_DIR, f.layout);
    if (!existsSync(join(layout, "index.json"))) {
      throw new Error(`${layout} is missing: run test-vms/registry/build-debian-python.sh (as root)`);
    }
    return () =>
      run("skopeo", [
        "--insecure-policy", // no /etc/containers/policy.json needed
        "copy", "--quiet", "--retry-times", "2", ...f.args,
        "--dest-tls-verify=false", ...auth,
        `oci:${layout}:${f.srcTag}`, `docker://${reg.host}/${name}`,
      ], { timeoutMs: 300_000 });
  });
  // Copies into one repository run one after another: Distribution 2.8's filesystem
  // driver answers 500 when two uploads of the same blob into one repository race
  // (multi:latest and multi:v2list share their config and layers). Repositories go
  // two at a time: the machines have 2 cores and skopeo is mostly waiting on I/O.
  const byRepo = new Map<string, (() => Promise<string>)[]>();
  images.forEach((name, i) => {
    const repo = name.slice(0, name.lastIndexOf(":"));
    byRepo.set(repo, [...(byRepo.get(repo) ?? []), copies[i]!]);
  });
  const jobs = [...byRepo.values()].map((chain) => async () => {
    for (const copy of chain) await copy();
  });
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) await jobs[next++]!();
  };
  await Promise.all([worker(), worker()]);
}

/**
 * Corrupts one layer blob of repo:tag in the registry's filesystem storage, keeping its
 * length, so the registry serves bytes that do not match the digest (it never re-checks
 * stored blobs). Default layer: the last one. Returns that layer's digest.
 *
 * Uncompressed tar layers (evil:corrupt) get a byte changed inside the first file's data,
 * so the tar still parses and only the digest check can notice; compressed layers get a
 * byte changed in the middle. Every image in this registry that shares the blob is
 * affected (busybox:latest shares its layers 2-3 with multi:latest): corrupt evil:corrupt
 * or use a registry of its own. For an index, the linux/amd64 manifest is used.
 */
export async function corruptBlob(reg: Registry, repo: string, tag: string, opts: { layer?: number } = {}): Promise<string> {
  const v2 = join(reg.dataDir, "storage", "docker", "registry", "v2");
  const blob = (digest: string) => join(v2, "blobs", "sha256", digest.slice(7, 9), digest.slice(7), "data");
  const linkFile = join(v2, "repositories", repo, "_manifests", "tags", tag, "current", "link");
  let manifest = JSON.parse(await readFile(blob((await readFile(linkFile, "utf8")).trim()), "utf8")) as {
    manifests?: { digest: string; platform?: { architecture?: string } }[];
    layers?: { digest: string; mediaType: string; size: number }[];
  };
  if (manifest.manifests) {
    const m = manifest.manifests.find((d) => d.platform?.architecture === "amd64") ?? manifest.manifests[0];
    if (!m) throw new Error(`${repo}:${tag} is an empty index`);
    manifest = JSON.parse(await readFile(blob(m.digest), "utf8"));
  }
  const layers = manifest.layers ?? [];
  const layer = layers[opts.layer ?? layers.length - 1];
  if (!layer) throw new Error(`${repo}:${tag} has no layer ${opts.layer ?? layers.length - 1}`);
  const fh = await open(blob(layer.digest), "r+");
  try {
    const data = await fh.readFile();
    const uncompressed = /\.tar$/.test(layer.mediaType); // OCI ...layer.v1.tar, Docker ...diff.tar
    const at = (uncompressed ? firstFileData(data) : undefined) ?? Math.floor(data.length / 2);
    // XOR 0x20 turns a lower-case letter into upper case: still a text file, other bytes.
    await fh.write(Buffer.from([data[at]! ^ 0x20]), 0, 1, at);
  } finally {
    await fh.close();
  }
  return layer.digest;
}

/** Offset of the first byte of the first non-empty regular file in a tar, if any. */
function firstFileData(tar: Buffer): number | undefined {
  for (let off = 0; off + 512 <= tar.length; ) {
    const header = tar.subarray(off, off + 512);
    if (header.every((b) => b === 0)) return undefined;
    const size = parseInt(header.subarray(124, 136).toString("latin1").replace(/\0.*$/s, "").trim() || "0", 8);
    const type = String.fromCharCode(header[156]!);
    if ((type === "0" || type === "\0") && size > 0) return off + 512;
    off += 512 + Math.ceil(size / 512) * 512; // pax/GNU extension headers are skipped too
  }
  return undefined;
}

// ------------------------------------------------------------------ processes
const live = new Map<number, { child: ChildProcess; cleanup?: string }>();
let exitHook = false;
function hookExit(): void {
  if (exitHook) return;
  exitHook = true;
  process.on("exit", () => {
    for (const [pid, r] of live) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
      if (r.cleanup) rmSync(r.cleanup, { recursive: true, force: true });
    }
  });
}

function onPath(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(delimiter).concat("/usr/sbin", "/sbin")) {
    try {
      accessSync(join(dir, cmd), fsc.X_OK);
      return join(dir, cmd);
    } catch {
      // next
    }
  }
  return undefined;
}

function run(cmd: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(" ")} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

// Key material is made once per process (the RSA key costs ~0.5 s) and copied into each
// registry's directory.
let tlsPair: Promise<{ cert: string; key: string }> | undefined;
let tokenPair: Promise<{ cert: string; key: string }> | undefined;
async function selfSigned(kind: "ec" | "rsa"): Promise<{ cert: string; key: string }> {
  const dir = await mkdtemp(join(tmpdir(), "msb-registry-cert-"));
  try {
    const keyArgs = kind === "ec" ? ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] : ["-newkey", "rsa:2048"];
    await run("openssl", [
      "req", "-x509", ...keyArgs, "-nodes", "-days", "30",
      "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
      "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ]);
    return { cert: await readFile(join(dir, "cert.pem"), "utf8"), key: await readFile(join(dir, "key.pem"), "utf8") };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** YAML double-quoted scalars are JSON strings. */
const q = (s: string) => JSON.stringify(s);

/**
 * Starts a registry (see the top of this file for the modes).
 * - `dataDir`: use this directory (created if needed, kept at stop) instead of a fresh
 *   temp dir; a registry started again on the same dataDir serves what was pushed before.
 * - `port`: listen on this port instead of a free one (e.g. restart on the port of a
 *   stopped registry to test "registry down mid-pull, next pull succeeds").
 */
export async function startRegistry(mode: RegistryMode, opts: { dataDir?: string; port?: number } = {}): Promise<Registry> {
  if (!onPath("docker-registry")) throw new Error("docker-registry is missing: run test-vms/registry/install-deps.sh");
  hookExit();
  const dir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), `msb-registry-${mode}-`)));
  await mkdir(join(dir, "storage"), { recursive: true });
  const tokenRequests: TokenRequest[] = [];
  let token: { server: Server; realm: string } | undefined;
  const reg: Partial<Registry> = { mode, dataDir: dir, tokenRequests };

  const config = [
    "version: 0.1",
    "log: {level: info, formatter: text}",
    "storage:",
    `  filesystem: {rootdirectory: ${q(join(dir, "storage"))}}`,
    "  delete: {enabled: true}",
    "  maintenance: {uploadpurging: {enabled: false}}",
    "http:",
    `  addr: 127.0.0.1:${opts.port ?? 0}`, // 0: a free port, logged as "listening on 127.0.0.1:PORT"
    `  secret: ${q(randomBytes(16).toString("hex"))}`,
  ];
  try {
    if (mode === "tls-basic") {
      const { cert, key } = await (tlsPair ??= selfSigned("ec"));
      await writeFile(join(dir, "cert.pem"), cert);
      await writeFile(join(dir, "key.pem"), key, { mode: 0o600 });
      // bcrypt is the only hash docker-registry accepts.
      await writeFile(join(dir, "htpasswd"), await run("htpasswd", ["-Bbn", USERNAME, PASSWORD]));
      config.push(
        `  tls: {certificate: ${q(join(dir, "cert.pem"))}, key: ${q(join(dir, "key.pem"))}}`,
        "auth:",
        `  htpasswd: {realm: ${q(BASIC_REALM)}, path: ${q(join(dir, "htpasswd"))}}`,
      );
      Object.assign(reg, { caFile: join(dir, "cert.pem"), username: USERNAME, password: PASSWORD });
    } else if (mode === "token") {
      const { cert, key } = await (tokenPair ??= selfSigned("rsa"));
      await writeFile(join(dir, "token-cert.pem"), cert);
      token = await startTokenServer(tokenRequests, createPrivateKey(key), new X509Certificate(cert));
      config.push(
        "auth:",
        "  token:",
        `    realm: ${q(token.realm)}`,
        `    service: ${q(TOKEN_SERVICE)}`,
        `    issuer: ${q(TOKEN_ISSUER)}`,
        // The registry trusts tokens whose x5c certificate chains to this bundle; the
        // token server signs with this very (self-signed) certificate.
        `    rootcertbundle: ${q(join(dir, "token-cert.pem"))}`,
      );
      Object.assign(reg, { username: USERNAME, password: PASSWORD, tokenRealm: token.realm, tokenService: TOKEN_SERVICE });
    }
    await writeFile(join(dir, "config.yml"), config.join("\n") + "\n");
  } catch (e) {
    token?.server.close();
    if (!opts.dataDir) rmSync(dir, { recursive: true, force: true });
    throw e;
  }

  // The registry reads REGISTRY_* variables as config overrides: keep ours only.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("REGISTRY_")));
  const logFile = await open(join(dir, "registry.log"), "a");
  const setpriv = onPath("setpriv");
  const argv = ["docker-registry", "serve", join(dir, "config.yml")];
  // setpriv execs the registry, so the PID stays the same.
  const cmd = setpriv ? [setpriv, "--pdeathsig", "KILL", "--", ...argv] : argv;
  const child = spawn(cmd[0]!, cmd.slice(1), { env, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  child.on("error", (e) => (log += `spawn error: ${e.message}\n`)); // else an 'error' would throw
  const pid = child.pid;
  if (pid === undefined) {
    token?.server.close();
    await logFile.close();
    if (!opts.dataDir) rmSync(dir, { recursive: true, force: true });
    throw new Error(`could not spawn ${cmd.join(" ")}`);
  }
  live.set(pid, { child, cleanup: opts.dataDir ? undefined : dir });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  exited.then(() => live.delete(pid));

  // Keep the last 256 KiB of the log in memory and all of it in registry.log.
  let port = 0;
  const ready = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`docker-registry did not start in 15 s:\n${log}`)), 15_000);
    child.stderr!.on("data", (chunk: Buffer) => {
      const text = chunk.toString();
      log = (log + text).slice(-256 * 1024);
      void logFile.write(text).catch(() => undefined);
      const m = !port && /listening on [^\s"]*?:(\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`docker-registry exited (${code ?? signal}) before listening:\n${log}`));
    });
  });
  exited.then(() => logFile.close().catch(() => undefined));
  // Do not keep the test process alive because of the registry; stop() or the exit
  // handler ends it.
  child.unref();
  (child.stderr as unknown as { unref?: () => void }).unref?.();

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (live.has(pid)) {
        child.kill("SIGTERM");
        const t = setTimeout(() => child.kill("SIGKILL"), 5_000);
        await exited;
        clearTimeout(t);
      }
      if (token) {
        token.server.closeAllConnections();
        await new Promise<void>((r) => token!.server.close(() => r()));
      }
      if (!opts.dataDir) rmSync(dir, { recursive: true, force: true });
    })());

  try {
    port = await ready;
  } catch (e) {
    await stop();
    throw e;
  }
  const scheme = mode === "tls-basic" ? "https" : "http";
  return Object.assign(reg, {
    host: `127.0.0.1:${port}`,
    port,
    url: `${scheme}://127.0.0.1:${port}`,
    pid,
    logs: () => log,
    stop,
  }) as Registry;
}

// ------------------------------------------------------------------ token server
const b64url = (b: Buffer | string) => Buffer.from(b).toString("base64url");

/** Parses "repository:NAME:pull,push" (NAME may contain ':' only in exotic types). */
function parseScope(s: string): Access | undefined {
  const first = s.indexOf(":");
  const last = s.lastIndexOf(":");
  if (first < 0 || last === first) return undefined;
  return { type: s.slice(0, first), name: s.slice(first + 1, last), actions: s.slice(last + 1).split(",").filter(Boolean) };
}

function grant(account: string | null, wanted: Access[]): Access[] {
  const out: Access[] = [];
  for (const a of wanted) {
    let allowed: string[] = [];
    if (a.type === "repository") allowed = account === USERNAME ? ["pull", "push", "delete", "*"] : ["pull"];
    else if (a.type === "registry" && a.name === "catalog" && account === USERNAME) allowed = ["*"];
    const actions = a.actions.filter((x) => allowed.includes(x));
    if (actions.length) out.push({ type: a.type, name: a.name, actions });
  }
  return out;
}

async function startTokenServer(
  requests: TokenRequest[],
  key: KeyObject,
  cert: X509Certificate,
): Promise<{ server: Server; realm: string }> {
  const x5c = [cert.raw.toString("base64")];
  const issue = (account: string | null, access: Access[]) => {
    const now = Math.floor(Date.now() / 1000);
    const header = b64url(JSON.stringify({ typ: "JWT", alg: "RS256", x5c }));
    const claims = b64url(JSON.stringify({
      iss: TOKEN_ISSUER, sub: account ?? "", aud: TOKEN_SERVICE,
      exp: now + 300, nbf: now - 10, iat: now, jti: randomBytes(12).toString("hex"), access,
    }));
    const sig = sign("sha256", Buffer.from(`${header}.${claims}`), key); // RSASSA-PKCS1-v1_5
    return `${header}.${claims}.${b64url(sig)}`;
  };
  const send = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    res.writeHead(status, { "content-type": "application/json", ...headers });
    res.end(JSON.stringify(body));
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const record = (r: Omit<TokenRequest, "method">) => requests.push({ method: req.method ?? "", ...r });
    if (url.pathname !== "/token") return send(res, 404, { errors: [{ code: "NOT_FOUND", message: "no such endpoint" }] });

    let user: string | undefined, pass: string | undefined, scopes: string[], service: string | null;
    if (req.method === "GET") {
      scopes = url.searchParams.getAll("scope").flatMap((s) => s.split(" ")).filter(Boolean);
      service = url.searchParams.get("service");
      const m = /^Basic\s+(\S+)/i.exec(req.headers.authorization ?? "");
      if (m) {
        const [u, ...p] = Buffer.from(m[1]!, "base64").toString().split(":");
        user = u;
        pass = p.join(":");
      }
    } else if (req.method === "POST") {
      let body = "";
      for await (const c of req) body += c;
      const form = new URLSearchParams(body);
      if (form.get("grant_type") !== "password") {
        record({ account: null, scopes: [], granted: [], status: 400 });
        return send(res, 400, { error: "unsupported_grant_type" });
      }
      user = form.get("username") ?? "";
      pass = form.get("password") ?? "";
      scopes = (form.get("scope") ?? "").split(" ").filter(Boolean);
      service = form.get("service");
    } else {
      return send(res, 405, { errors: [{ code: "UNSUPPORTED", message: "GET or POST" }] });
    }
    if (service !== TOKEN_SERVICE) {
      record({ account: user ?? null, scopes, granted: [], status: 400 });
      return send(res, 400, { errors: [{ code: "INVALID_REQUEST", message: `unknown service ${service}` }] });
    }
    if (user !== undefined && (user !== USERNAME || pass !== PASSWORD)) {
      record({ account: user, scopes, granted: [], status: 401 });
      return send(res, 401, { errors: [{ code: "UNAUTHORIZED", message: "invalid username or password" }] },
        { "www-authenticate": 'Basic realm="msb-token"' });
    }
    const account = user ?? null;
    const granted = grant(account, scopes.map(parseScope).filter((a): a is Access => !!a));
    const tok = issue(account, granted);
    record({ account, scopes, granted, status: 200 });
    send(res, 200, { token: tok, access_token: tok, expires_in: 300, issued_at: new Date().toISOString() });
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => send(res, 500, { errors: [{ code: "UNKNOWN", message: String(e) }] }));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  server.unref();
  return { server, realm: `http://127.0.0.1:${(server.address() as AddressInfo).port}/token` };
}

/** sha256 of a buffer as "sha256:<hex>" (handy in tests). */
export function sha256(data: Buffer | string): string {
  return "sha256:" + createHash("sha256").update(data).digest("hex");
}
