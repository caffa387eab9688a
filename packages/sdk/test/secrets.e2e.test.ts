// End-to-end tests of secrets (TLS interception with placeholder substitution) on real
// VMs with the Debian test image's curl and python: an HTTPS upstream on 127.0.0.1 with
// its own CA (trusted by msb-runtime through `upstreamCaCert`) records what it received;
// the guest trusts the installation's interception CA through its trust store.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { createSecureServer, type Http2SecureServer, type Http2ServerRequest } from "node:http2";
import { createServer as createHttpsServer, type Server as HttpsServer } from "node:https";
import type { IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NetworkPolicy, Sandbox } from "@microsandbox/sdk";
import { pushFixtures, startRegistry, type Registry } from "../../../test-vms/registry/index.js";
import { cleanup, useTempMsbHome } from "./e2e-helpers.js";

const msbHome = useTempMsbHome();
const VALUE = `S3cr3t-${randomBytes(12).toString("hex")}`;
const OTHER_VALUE = `0th3r-${randomBytes(12).toString("hex")}`;
const CANARY = `canary-${randomBytes(12).toString("hex")}`;
const HOST = "host.microsandbox.internal";

interface Seen {
  method: string;
  url: string;
  httpVersion: string;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

let reg: Registry;
let dir = "";
let upstream: Http2SecureServer;
let badUpstream: HttpsServer;
let plain: HttpServer;
let port = 0;
let badPort = 0;
let plainPort = 0;
const seen: Seen[] = [];
let badSeen = 0;
const plainSeen: Seen[] = [];

function openssl(...args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
}

function record(into: Seen[]) {
  return (req: IncomingMessage | Http2ServerRequest, res: { writeHead(n: number, h?: Record<string, string>): unknown; end(s: string): unknown }) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      into.push({ method: req.method ?? "", url: req.url ?? "", httpVersion: req.httpVersion, headers: { ...req.headers }, body: Buffer.concat(chunks).toString() });
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`ok ${req.httpVersion}\n`);
    });
  };
}

const listen = (s: { listen(p: number, h: string, cb: () => void): unknown; address(): unknown }) =>
  new Promise<number>((r) => s.listen(0, "127.0.0.1", () => r((s.address() as AddressInfo).port)));

beforeAll(async () => {
  const script = fileURLToPath(new URL("../../../test-vms/registry/build-debian-python.sh", import.meta.url));
  execFileSync("bash", [script], { stdio: "inherit" }); // quick no-op once built
  reg = await startRegistry("plain");
  await pushFixtures(reg, ["debian-python:latest"]);

  // The upstream's own CA and a leaf for both names the tests use.
  dir = mkdtempSync(join(tmpdir(), "msb-secrets-"));
  openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=upstream test CA", "-days", "2");
  openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=upstream");
  writeFileSync(join(dir, "san.ext"), `subjectAltName=DNS:${HOST},DNS:api.allowed.test\n`);
  openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.crt", "-days", "2", "-extfile", "san.ext");
  // A certificate nobody trusts, for the upstream whose identity must fail.
  openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "bad.key", "-out", "bad.crt", "-subj", `/CN=${HOST}`, "-addext", `subjectAltName=DNS:${HOST}`, "-days", "2");
  const file = (n: string) => readFileSync(join(dir, n));

  upstream = createSecureServer({ key: file("leaf.key"), cert: file("leaf.crt"), allowHTTP1: true }, record(seen));
  port = await listen(upstream);
  badUpstream = createHttpsServer({ key: file("bad.key"), cert: file("bad.crt") }, (req, res) => {
    badSeen++;
    res.end("bad\n");
  });
  badPort = await listen(badUpstream);
  plain = createHttpServer(record(plainSeen));
  plainPort = await listen(plain);
}, 600_000);

afterAll(async () => {
  for (const s of [upstream, badUpstream, plain]) await new Promise<void>((r) => (s ? s.close(() => r()) : r()));
  await reg?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const image = () => `${reg.host}/debian-python:latest`;
const policy = () =>
  NetworkPolicy.builder()
    .defaultDeny()
    .egress((r) => r.tcp().port(port).allowHost())
    .egress((r) => r.tcp().port(badPort).allowHost())
    .egress((r) => r.tcp().port(plainPort).allowHost())
    .build();

/** Requests the upstream received whose path starts with `prefix`. */
const at = (prefix: string) => seen.filter((s) => s.url.startsWith(prefix));

/** Occurrences of `needle` in a file (0 when it does not exist), read in chunks. */
function countInFile(path: string, needle: string): number {
  if (!existsSync(path)) return 0;
  const n = Buffer.from(needle);
  const fd = openSync(path, "r");
  const buf = Buffer.alloc(8 << 20);
  let carry = Buffer.alloc(0);
  let count = 0;
  try {
    for (;;) {
      const got = readSync(fd, buf, 0, buf.length, null);
      if (got === 0) break;
      const hay = Buffer.concat([carry, buf.subarray(0, got)]);
      for (let i = hay.indexOf(n); i !== -1; i = hay.indexOf(n, i + 1)) count++;
      // Keep a tail shorter than the needle: a match across the boundary is found once.
      carry = hay.subarray(Math.max(0, hay.length - (n.length - 1)));
    }
  } finally {
    closeSync(fd);
  }
  return count;
}

/** The guest RAM's memfd of a QEMU process, as a path readable from the host. */
function guestRamPath(qemuPid: number): string {
  const fdDir = `/proc/${qemuPid}/fd`;
  for (const fd of readdirSync(fdDir)) {
    try {
      if (readlinkSync(join(fdDir, fd)).startsWith("/memfd:mem")) return join(fdDir, fd);
    } catch {
      // closed meanwhile
    }
  }
  throw new Error(`no guest RAM memfd in ${fdDir}`);
}

function qemuPidOf(runtimePid: number): number {
  const children = readFileSync(`/proc/${runtimePid}/task/${runtimePid}/children`, "utf8").trim().split(/\s+/).map(Number);
  const q = children.find((c) => readFileSync(`/proc/${c}/cmdline`, "utf8").includes("qemu"));
  if (q === undefined) throw new Error("no QEMU child");
  return q;
}

// Python that reports, for every process, whether its environ or cmdline holds the
// value. The value arrives in two halves so that this command's own argv never holds it.
const PROC_SCAN = `
import glob, sys
v = (sys.argv[1] + sys.argv[2]).encode()
hits = []
for p in glob.glob('/proc/[0-9]*'):
    for f in ('environ', 'cmdline'):
        try:
            if v in open(p + '/' + f, 'rb').read(): hits.append(p + '/' + f)
        except OSError:
            pass
print(len(glob.glob('/proc/[0-9]*')), hits)
`;

// Python: a TLS client whose ClientHello goes out one byte per segment (TCP_NODELAY, a
// pause between bytes), then one HTTP/1.1 request with the placeholder; prints the
// status line.
const SPLIT_HELLO = `
import os, socket, ssl, sys, time
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context()
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname=host)
s = socket.create_connection((host, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def flush(one_byte=False):
    data = out.read()
    if one_byte:
        for b in data:
            s.send(bytes([b])); time.sleep(0.001)
    else:
        s.sendall(data)
first = True
while True:
    try:
        tls.do_handshake(); flush(); break
    except ssl.SSLWantReadError:
        flush(first); first = False
        d = s.recv(65536)
        if not d: sys.exit('eof during handshake')
        inc.write(d)
req = 'GET /split HTTP/1.1\\r\\nHost: %s:%d\\r\\nAuthorization: Bearer %s\\r\\nConnection: close\\r\\n\\r\\n' % (host, port, os.environ['API_KEY'])
tls.write(req.encode()); flush()
resp = b''
while b'\\r\\n' not in resp:
    try:
        resp += tls.read(65536)
    except ssl.SSLWantReadError:
        d = s.recv(65536)
        if not d: break
        inc.write(d)
print(resp.split(b'\\r\\n')[0].decode())
`;

describe("secrets: the guest holds a placeholder, the upstream receives the value", () => {
  it("substitutes in headers over HTTP/1.1 and HTTP/2, through curl and python, and never lets the value into the guest", async () => {
    const sb = await Sandbox.builder("sec-main")
      .image(image())
      .env("CANARY", CANARY)
      .network((n) => n.policy(policy()).tls((t) => t.interceptedPorts([port, badPort]).upstreamCaCert(join(dir, "ca.crt"))))
      .secret((s) => s.env("API_KEY").value(VALUE).allowHost(HOST).injectBody(true).injectQuery(true))
      .secret((s) => s.env("OTHER").value(OTHER_VALUE).allowHost("api.allowed.test"))
      .create();
    try {
      const url = `https://${HOST}:${port}`;
      // The guest sees the placeholder, and no process there holds the value.
      expect((await sb.shell("echo $API_KEY")).stdout()).toBe("$MSB_API_KEY\n");
      const scan = await sb.exec("python3", ["-c", PROC_SCAN, VALUE.slice(0, 9), VALUE.slice(9)]);
      expect(scan.stdout()).toMatch(/^\d+ \[\]\n$/);

      // curl without -k, HTTP/1.1: trusted through the guest's bundle, substituted.
      const h1 = await sb.shell(`curl -sS --fail --http1.1 -H "Authorization: Bearer $API_KEY" ${url}/h1`);
      expect(h1.stderr()).toBe("");
      expect(h1.stdout()).toBe("ok 1.1\n");
      expect(at("/h1")).toHaveLength(1);
      expect(at("/h1")[0]!.headers.authorization).toBe(`Bearer ${VALUE}`);
      expect(at("/h1")[0]!.httpVersion).toBe("1.1");

      // HTTP/2, negotiated end to end through ALPN; the certificate is our CA's.
      const h2 = await sb.shell(`curl -sS -v --fail --http2 -H "Authorization: Bearer $API_KEY" ${url}/h2 2>&1`);
      expect(h2.stdout()).toContain("ok 2.0");
      expect(h2.stdout()).toMatch(/issuer: CN\s*=\s*microsandbox interception CA/);
      expect(at("/h2")[0]!.headers.authorization).toBe(`Bearer ${VALUE}`);
      expect(at("/h2")[0]!.httpVersion).toBe("2.0");

      // python's urllib (through SSL_CERT_FILE).
      const py = await sb.exec("python3", [
        "-c",
        `import os, urllib.request as u; r = u.Request('${url}/py', headers={'X-Api-Key': os.environ['API_KEY']}); print(u.urlopen(r).read().decode(), end='')`,
      ]);
      expect(py.stderr()).toBe("");
      expect(py.stdout()).toBe("ok 1.1\n");
      expect(at("/py")[0]!.headers["x-api-key"]).toBe(VALUE);

      // Basic credentials, the query and bodies (Content-Length and chunked).
      await sb.shell(`curl -sS --fail -u "user:$API_KEY" ${url}/basic`);
      expect(at("/basic")[0]!.headers.authorization).toBe(`Basic ${Buffer.from(`user:${VALUE}`).toString("base64")}`);
      await sb.shell(`curl -sS --fail "${url}/query?key=$API_KEY&x=1"`);
      expect(at("/query")[0]!.url).toBe(`/query?key=${VALUE}&x=1`);
      await sb.shell(`curl -sS --fail --http1.1 --data-binary "key=$API_KEY" ${url}/body`);
      expect(at("/body")[0]!.body).toBe(`key=${VALUE}`);
      expect(at("/body")[0]!.headers["content-length"]).toBe(String(`key=${VALUE}`.length));
      await sb.shell(`printf 'a=%s' "$API_KEY" > /tmp/b; curl -sS --fail --http1.1 -H "Transfer-Encoding: chunked" --data-binary @/tmp/b ${url}/chunked`);
      expect(at("/chunked")[0]!.body).toBe(`a=${VALUE}`);

      // Plain HTTP to the allowed host: not intercepted, the placeholder goes as is.
      await sb.shell(`curl -sS --fail -H "Authorization: Bearer $API_KEY" http://${HOST}:${plainPort}/plain`);
      expect(plainSeen.find((s) => s.url === "/plain")!.headers.authorization).toBe("Bearer $MSB_API_KEY");

      // The guest RAM holds no copy of the value while the placeholder and an env
      // canary are found in it (positive controls); msb-runtime's and QEMU's argv and
      // environment never held it.
      const runtimePid = sb.runtimePid;
      const qemuPid = qemuPidOf(runtimePid);
      const ram = guestRamPath(qemuPid);
      expect(countInFile(ram, "$MSB_API_KEY")).toBeGreaterThan(0);
      expect(countInFile(ram, CANARY)).toBeGreaterThan(0);
      expect(countInFile(ram, VALUE)).toBe(0);
      for (const pid of [runtimePid, qemuPid]) {
        for (const f of ["cmdline", "environ"]) expect(readFileSync(`/proc/${pid}/${f}`).includes(VALUE)).toBe(false);
      }
    } finally {
      await cleanup(sb);
    }
    // Nothing at rest holds the value: the upper disk, the logs, the store, the config.
    const sbDir = join(msbHome(), "sandboxes", "sec-main");
    for (const f of ["upper.ext4", "console.log", "runtime.log", "qemu.log"]) expect(countInFile(join(sbDir, f), VALUE), f).toBe(0);
    for (const f of ["msb.sqlite", "msb.sqlite-wal"]) expect(countInFile(join(msbHome(), "db", f), VALUE), f).toBe(0);
    const handle = await Sandbox.get("sec-main");
    expect(handle.configJson).not.toContain(VALUE);
    expect(handle.configJson).not.toContain(OTHER_VALUE);
    // $MSB_HOME/tls holds the CA (and its lock file) and nothing else: no leaf, no value.
    expect(readdirSync(join(msbHome(), "tls")).filter((f) => !f.startsWith(".")).sort()).toEqual(["ca.crt", "ca.key"]);
    expect(readFileSync(join(msbHome(), "tls", "ca.key")).length).toBeGreaterThan(0);
  }, 600_000);

  it("blocks a placeholder headed anywhere it may not go, and tells runtime.log which secret without its value", async () => {
    const sb = await Sandbox.builder("sec-block")
      .image(image())
      .network((n) => n.policy(policy()).tls((t) => t.interceptedPorts([port, badPort]).upstreamCaCert(join(dir, "ca.crt"))))
      .secret((s) => s.env("API_KEY").value(VALUE).allowHost(HOST))
      .secret((s) => s.env("OTHER").value(OTHER_VALUE).allowHost("api.allowed.test"))
      .create();
    try {
      const url = `https://${HOST}:${port}`;
      // A secret allowed for another host: blocked (403), the upstream gets nothing.
      const wrong = await sb.shell(`curl -sS -o /dev/null -w '%{http_code}' -H "X-Key: $OTHER" ${url}/wrong-host`);
      expect(wrong.stdout()).toMatch(/^(403|000)$/);
      // The name is allowed and the certificate valid for it, but this sandbox never
      // resolved it to that address: no DNS pin, blocked.
      const pin = await sb.shell(
        `curl -sS -o /dev/null -w '%{http_code}' --resolve api.allowed.test:${port}:$(getent hosts ${HOST} | cut -d' ' -f1) -H "X-Key: $OTHER" https://api.allowed.test:${port}/no-pin`,
      );
      expect(pin.stdout()).toMatch(/^(403|000)$/);
      // Host different from the SNI.
      const mismatch = await sb.shell(`curl -sS -o /dev/null -w '%{http_code}' --http1.1 -H "Host: api.allowed.test" -H "Authorization: Bearer $API_KEY" ${url}/host-mismatch`);
      expect(mismatch.stdout()).toMatch(/^(403|000)$/);
      // Percent-encoded in the query of a secret without query scope, to another host.
      const enc = await sb.shell(`curl -sS -o /dev/null -w '%{http_code}' "${url}/encoded?k=%24MSB_OTHER"`);
      expect(enc.stdout()).toMatch(/^(403|000)$/);
      // Keep-alive: the first request is substituted, a second one on the same
      // connection naming another host is refused.
      const ka = await sb.exec("python3", [
        "-c",
        `import http.client, os
c = http.client.HTTPSConnection('${HOST}', ${port})
c.request('GET', '/ka1', headers={'Authorization': 'Bearer ' + os.environ['API_KEY']})
r = c.getresponse(); print(r.status, r.read().decode().strip())
try:
    c.request('GET', '/ka2', headers={'Host': 'api.allowed.test', 'Authorization': 'Bearer ' + os.environ['API_KEY']})
    r = c.getresponse(); print(r.status)
except Exception as e:
    print('closed', type(e).__name__)`,
      ]);
      expect(ka.stdout().split("\n")[0]).toBe("200 ok 1.1");
      expect(ka.stdout().split("\n")[1]).toMatch(/^(403|closed)/);
      expect(at("/ka1")[0]!.headers.authorization).toBe(`Bearer ${VALUE}`);
      for (const p of ["/wrong-host", "/no-pin", "/host-mismatch", "/encoded", "/ka2"]) expect(at(p), p).toHaveLength(0);
      // A bad upstream certificate fails the guest's handshake; no request is sent.
      const bad = await sb.shell(`curl -sS -o /dev/null https://${HOST}:${badPort}/ ; echo rc=$?`);
      expect(bad.stdout()).toMatch(/rc=(35|56|60)\n$/);
      expect(badSeen).toBe(0);
    } finally {
      await cleanup(sb);
    }
    const log = readFileSync(join(msbHome(), "sandboxes", "sec-block", "runtime.log"), "utf8");
    expect(log).toMatch(/secret violation.*OTHER/);
    expect(log).not.toContain(VALUE);
    expect(log).not.toContain(OTHER_VALUE);
  }, 600_000);

  it("hostile TLS on the wire: a ClientHello in 1-byte segments, TLS 1.2 and 1.3 only, no SNI, a silent client; msb-runtime keeps serving", async () => {
    const sb = await Sandbox.builder("sec-wire")
      .image(image())
      .network((n) => n.policy(policy()).tls((t) => t.interceptedPorts([port]).upstreamCaCert(join(dir, "ca.crt"))))
      .secretEnv("API_KEY", VALUE, HOST)
      .create();
    try {
      const url = `https://${HOST}:${port}`;
      const split = await sb.exec("python3", ["-c", SPLIT_HELLO, HOST, String(port)]);
      expect(split.stderr()).toBe("");
      expect(split.stdout()).toBe("HTTP/1.1 200 OK\n");
      expect(at("/split")[0]!.headers.authorization).toBe(`Bearer ${VALUE}`);
      for (const [flag, path] of [["--tls-max 1.2", "/tls12"], ["--tlsv1.3", "/tls13"]] as const) {
        const r = await sb.shell(`curl -sS --fail --http1.1 ${flag} -H "Authorization: Bearer $API_KEY" ${url}${path}`);
        expect(r.stdout(), flag).toBe("ok 1.1\n");
        expect(at(path)[0]!.headers.authorization, flag).toBe(`Bearer ${VALUE}`);
      }
      // No SNI (an address): spliced untouched to the upstream, which sees the placeholder.
      const ip = (await sb.shell(`getent hosts ${HOST} | cut -d' ' -f1`)).stdout().trim();
      const nosni = await sb.shell(`curl -sS -k --fail --http1.1 -H "Authorization: Bearer $API_KEY" https://${ip}:${port}/nosni`);
      expect(nosni.stdout()).toBe("ok 1.1\n");
      expect(at("/nosni")[0]!.headers.authorization).toBe("Bearer $MSB_API_KEY");
      // A client that connects and says nothing is closed after the ClientHello timeout.
      const silent = await sb.exec("python3", [
        "-c",
        `import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2]))); s.settimeout(30)
t = time.monotonic(); d = s.recv(1); print(repr(d), round(time.monotonic() - t))`,
        HOST,
        String(port),
      ]);
      const [got, secs] = silent.stdout().trim().split(" ");
      expect(got).toBe("b''");
      expect(Number(secs)).toBeGreaterThanOrEqual(9);
      expect(Number(secs)).toBeLessThan(30);
      // Still serving.
      const after = await sb.shell(`curl -sS --fail -H "Authorization: Bearer $API_KEY" ${url}/after`);
      expect(after.stdout()).toBe("ok 2.0\n");
      expect(at("/after")[0]!.headers.authorization).toBe(`Bearer ${VALUE}`);
    } finally {
      await cleanup(sb);
    }
  }, 600_000);

  it("a restarted sandbox takes its values again; without them its placeholders are blocked and the log says so", async () => {
    const first = await Sandbox.builder("sec-restart")
      .image(image())
      .network((n) => n.policy(policy()).tls((t) => t.interceptedPorts([port]).upstreamCaCert(join(dir, "ca.crt"))))
      .secretEnv("API_KEY", VALUE, HOST)
      .create();
    await first.stop();
    const url = `https://${HOST}:${port}`;
    const without = await Sandbox.start("sec-restart");
    try {
      const r = await without.shell(`curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $API_KEY" ${url}/restart-without`);
      expect(r.stdout()).toMatch(/^(403|000)$/);
      expect(at("/restart-without")).toHaveLength(0);
    } finally {
      await without.stop();
    }
    const log = readFileSync(join(msbHome(), "sandboxes", "sec-restart", "runtime.log"), "utf8");
    expect(log).toContain("secrets without a value");
    expect(log).toContain("API_KEY");
    const again = await Sandbox.start("sec-restart", { secrets: { API_KEY: VALUE } });
    try {
      // The CA is not appended twice to the bundle on the second boot.
      expect((await again.shell("grep -c 'microsandbox-ca begin' /etc/ssl/certs/ca-certificates.crt")).stdout()).toBe("1\n");
      const r = await again.shell(`curl -sS --fail -H "Authorization: Bearer $API_KEY" ${url}/restart-with`);
      expect(r.stdout()).toBe("ok 2.0\n");
      expect(at("/restart-with")[0]!.headers.authorization).toBe(`Bearer ${VALUE}`);
    } finally {
      await cleanup(again);
    }
    expect((await Sandbox.get("sec-restart")).configJson).not.toContain(VALUE);
  }, 600_000);
});
