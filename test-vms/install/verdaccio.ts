// Verdaccio 6.8.0 (installed by install-deps.sh into ./verdaccio/) as the npm registry of
// the install test: 127.0.0.1 only, a free port, storage and config in a temp dir.
//
//   const v = await startVerdaccio({ uplink: upstreamRegistry() });
//   const token = await addUser(v, "msb-test", "...");
//   writeNpmrc(file, v.url, token);
//   ...
//   await v.stop();            // SIGTERM to its process group, SIGKILL after 5 s, rm temp dir
//
// Packages: `@microsandbox/*` are served from local storage only (no uplink: the scope
// must never come from upstream), anyone reads, a logged-in user publishes. Everything
// else (`**`) is proxied to `uplink`, the registry npm is configured with, read at test
// time and written into the temp config only.
//
// Verdaccio never outlives the test process: it runs in a process group of its own
// under `setpriv --pdeathsig KILL` (killed by the kernel if this process dies), a failed
// start kills it at once, and an 'exit' handler kills any still running by PID.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants as fsc, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = fileURLToPath(new URL(".", import.meta.url));
export const VERDACCIO_DIR = join(HERE, "verdaccio");
export const VERDACCIO_VERSION = "6.8.0";

export interface Verdaccio {
  /** "http://127.0.0.1:PORT/" (with the trailing slash npm writes) */
  url: string;
  port: number;
  /** PID of Verdaccio, also its process group */
  pid: number;
  /** temp dir: config.yaml, htpasswd, storage/ */
  dir: string;
  /** the uplink `**` is proxied to */
  uplink: string;
  /** Verdaccio's output so far (JSON log lines), for failure messages */
  logs(): string;
  /** SIGTERM to the process group, SIGKILL after 5 s, wait, remove the temp dir. Safe to call twice. */
  stop(): Promise<void>;
}

/** Environment without npm's `npm_*` variables (set when run under `npm test`: a child
 * npm would take npm_config_registry, npm_config_userconfig, ... from them). */
export function envWithoutNpm(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !/^npm_/i.test(k)));
}

function npmConfig(key: string): string | undefined {
  const v = execFileSync("npm", ["config", "get", key], { encoding: "utf8", env: envWithoutNpm() }).trim();
  return v && v !== "undefined" && v !== "null" ? v : undefined;
}

/** The registry npm is configured with (`npm config get registry`), read now. */
export function upstreamRegistry(): string {
  const r = npmConfig("registry");
  if (!r || !/^https?:\/\//.test(r)) throw new Error(`npm config get registry gave ${JSON.stringify(r)}`);
  return r;
}

/** The installed Verdaccio's CLI script; throws naming install-deps.sh when missing. */
export function verdaccioBin(): string {
  const pkg = join(VERDACCIO_DIR, "node_modules", "verdaccio", "package.json");
  let version: string | undefined;
  try {
    version = (JSON.parse(readFileSync(pkg, "utf8")) as { version?: string }).version;
  } catch {
    // not installed
  }
  if (version !== VERDACCIO_VERSION) {
    throw new Error(`Verdaccio ${VERDACCIO_VERSION} is not installed (found ${version ?? "none"}): run bash test-vms/install/install-deps.sh`);
  }
  return join(VERDACCIO_DIR, "node_modules", "verdaccio", "bin", "verdaccio");
}

function onPath(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? "/usr/bin:/bin").split(delimiter).concat("/usr/bin", "/bin")) {
    try {
      accessSync(join(dir, cmd), fsc.X_OK);
      return join(dir, cmd);
    } catch {
      // next
    }
  }
  return undefined;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((res) => s.listen(0, "127.0.0.1", res));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((res) => s.close(() => res()));
  return port;
}

const live = new Map<number, ChildProcess>();
let exitHook = false;
function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}
function hookExit(): void {
  if (exitHook) return;
  exitHook = true;
  process.on("exit", () => {
    for (const pid of live.keys()) killGroup(pid, "SIGKILL");
  });
}

/** YAML double-quoted scalars are JSON strings. */
const q = (s: string) => JSON.stringify(s);

function config(dir: string, port: number, uplink: string): string {
  return [
    `storage: ${q(join(dir, "storage"))}`,
    "auth:",
    "  htpasswd:",
    `    file: ${q(join(dir, "htpasswd"))}`,
    "    max_users: 10",
    "uplinks:",
    "  upstream:",
    `    url: ${q(uplink)}`,
    "    timeout: 120s",
    "    max_fails: 10",
    "    fail_timeout: 30s",
    "packages:",
    "  '@microsandbox/*':", // first match wins: our scope never comes from upstream
    "    access: $all",
    "    publish: $authenticated",
    "    unpublish: $authenticated",
    "  '**':",
    "    access: $all",
    "    proxy: upstream",
    `listen: ${q(`127.0.0.1:${port}`)}`,
    "max_body_size: 1gb", // the guest package is ~100 MB
    "web: {enable: false}",
    "middlewares: {audit: {enabled: false}}",
    "log: {type: stdout, format: json, level: http}",
    "",
  ].join("\n");
}

async function ping(url: string): Promise<boolean> {
  try {
    const r = await fetch(new URL("-/ping", url), { signal: AbortSignal.timeout(2_000) });
    await r.arrayBuffer();
    return r.ok;
  } catch {
    return false;
  }
}

async function startOnce(uplink: string, port: number): Promise<Verdaccio> {
  const bin = verdaccioBin();
  hookExit();
  const dir = mkdtempSync(join(tmpdir(), "msb-verdaccio-"));
  writeFileSync(join(dir, "config.yaml"), config(dir, port, uplink));
  const env = envWithoutNpm();
  // The uplink may need the CA npm is configured with (npm's `cafile`).
  const cafile = env.NODE_EXTRA_CA_CERTS ? undefined : npmConfig("cafile");
  if (cafile && existsSync(cafile)) env.NODE_EXTRA_CA_CERTS = cafile;
  const argv = [process.execPath, bin, "--config", join(dir, "config.yaml"), "--listen", `127.0.0.1:${port}`];
  const setpriv = onPath("setpriv");
  // setpriv execs Verdaccio, so the PID stays the same; detached: a process group of its own.
  const cmd = setpriv ? [setpriv, "--pdeathsig", "KILL", "--", ...argv] : argv;
  const child = spawn(cmd[0]!, cmd.slice(1), { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"], detached: true });
  let log = "";
  const onData = (c: Buffer) => (log = (log + c.toString()).slice(-512 * 1024));
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  child.on("error", (e) => (log += `spawn error: ${e.message}\n`));
  const pid = child.pid;
  if (pid === undefined) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`could not spawn ${cmd.join(" ")}`);
  }
  live.set(pid, child);
  let exitedWith: string | undefined;
  const exited = new Promise<void>((resolve) =>
    child.once("exit", (code, signal) => {
      exitedWith = String(code ?? signal);
      live.delete(pid);
      resolve();
    }),
  );
  child.unref();
  (child.stdout as unknown as { unref?: () => void }).unref?.();
  (child.stderr as unknown as { unref?: () => void }).unref?.();

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (live.has(pid)) {
        killGroup(pid, "SIGTERM");
        const t = setTimeout(() => killGroup(pid, "SIGKILL"), 5_000);
        await exited;
        clearTimeout(t);
      }
      killGroup(pid, "SIGKILL"); // anything it started, still in its group
      rmSync(dir, { recursive: true, force: true });
    })());

  const url = `http://127.0.0.1:${port}/`;
  const deadline = Date.now() + 60_000;
  try {
    for (;;) {
      if (exitedWith !== undefined) throw new Error(`Verdaccio exited (${exitedWith}) before listening:\n${log}`);
      if (await ping(url)) break;
      if (Date.now() > deadline) throw new Error(`Verdaccio did not answer ${url}-/ping within 60 s:\n${log}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { url, port, pid, dir, uplink, logs: () => log, stop };
}

/** Starts Verdaccio on a free 127.0.0.1 port (a port taken meanwhile: tried again). */
export async function startVerdaccio(opts: { uplink: string }): Promise<Verdaccio> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(opts.uplink, await freePort());
    } catch (e) {
      if (attempt < 3 && /EADDRINUSE/.test(String(e))) continue;
      throw e;
    }
  }
}

/** Creates a user through Verdaccio's REST API (what `npm adduser` does); returns its token. */
export async function addUser(v: Verdaccio, name: string, password: string): Promise<string> {
  const r = await fetch(new URL(`-/user/org.couchdb.user:${encodeURIComponent(name)}`, v.url), {
    method: "PUT",
    headers: { "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify({ _id: `org.couchdb.user:${name}`, name, password, type: "user", roles: [], date: new Date().toISOString() }),
  });
  const body = (await r.json().catch(() => ({}))) as { ok?: unknown; token?: unknown };
  if (r.status !== 201 || typeof body.token !== "string") {
    throw new Error(`PUT /-/user/org.couchdb.user:${name}: ${r.status} ${JSON.stringify(body)}`);
  }
  return body.token;
}

/** Writes an npm userconfig that points at Verdaccio alone, with the token for it. */
export function writeNpmrc(file: string, v: Verdaccio, token: string): void {
  const hostPath = v.url.replace(/^https?:/, ""); // "//127.0.0.1:PORT/"
  writeFileSync(file, [`registry=${v.url}`, `${hostPath}:_authToken=${token}`, "audit=false", "fund=false", "update-notifier=false", ""].join("\n"), {
    mode: 0o600,
  });
}

/** GET a JSON document from Verdaccio (a packument: `/<name>`); status and body. */
export async function getJson(v: Verdaccio, path: string, token?: string): Promise<{ status: number; body: unknown }> {
  const r = await fetch(new URL(path, v.url), {
    headers: { accept: "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
  });
  const text = await r.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: r.status, body };
}
