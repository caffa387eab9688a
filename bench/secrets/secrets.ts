// HTTPS through secret interception against the same requests passed through, on one VM
// in one run (Debian + python3 + curl from the local test registry). Not a pass/fail test.
//
// The upstream is a Node HTTPS server (HTTP/1.1, its own CA) on 127.0.0.1 listening on
// two ports: requests to the first are intercepted (TLS terminated by msb-runtime, the
// placeholder in the Authorization header swapped for the value, a verified TLS
// connection upstream), to the second they go end to end to the upstream untouched
// (passthrough: the port is not intercepted). Interleaved, `runs` times each:
//
//   rps     python in the guest sends 300 GET requests with the header over one
//           keep-alive HTTPS connection (requests per second, guest side)
//   conns   curl in the guest makes 40 requests, a new TLS connection each
//           (connections per second: handshakes on both legs when intercepted)
//   upload  python in the guest POSTs 64 MiB (Content-Length, header substituted) over
//           HTTPS (MiB/s, from the first to the last body byte on the upstream)
//
// Usage: npm run bench:secrets [runs=5]
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NetworkPolicy, Sandbox } from "@microsandbox/sdk";
import { pushFixtures, startRegistry } from "../../test-vms/registry/index.js";

const runs = Number(process.argv[2] ?? 5);
const root = join(import.meta.dirname ?? new URL(".", import.meta.url).pathname, "..", "..");
const MiB = 1 << 20;
const SIZE = 64 * MiB;
const REQUESTS = 300;
const CONNS = 40;
const VALUE = "bench-secret-value-0123456789abcdef";
const HOST = "host.microsandbox.internal";
process.env.MSB_HOME = mkdtempSync(join(tmpdir(), "msb-bench-secrets-"));

const dir = mkdtempSync(join(tmpdir(), "msb-bench-secrets-ca-"));
const openssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=bench upstream CA", "-days", "2");
openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=upstream");
writeFileSync(join(dir, "san.ext"), `subjectAltName=DNS:${HOST}\n`);
openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.crt", "-days", "2", "-extfile", "san.ext");

let upload: { resolve: (ms: number) => void; bytes: number; t0: number | null } | null = null;
let substituted = 0;
const handler = (req: import("node:http").IncomingMessage, res: import("node:http").ServerResponse) => {
  if (req.headers.authorization === `Bearer ${VALUE}`) substituted++;
  if (req.method === "POST") {
    req.on("data", (d: Buffer) => {
      if (!upload) return;
      upload.t0 ??= performance.now();
      upload.bytes += d.length;
      if (upload.bytes >= SIZE) upload.resolve(performance.now() - upload.t0);
    });
    req.on("end", () => res.end("k"));
  } else {
    req.resume();
    req.on("end", () => res.end("ok\n"));
  }
};
const tlsOpts = { key: readFileSync(join(dir, "leaf.key")), cert: readFileSync(join(dir, "leaf.crt")) };
const listen = async (s: Server) => {
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return (s.address() as AddressInfo).port;
};
const servers = [createServer(tlsOpts, handler), createServer(tlsOpts, handler)];
const [interceptedPort, passPort] = [await listen(servers[0]!), await listen(servers[1]!)];

const RPS = `
import http.client, os, ssl, sys, time
ctx = ssl.create_default_context(cafile=sys.argv[3]) if sys.argv[3] != '-' else ssl.create_default_context()
c = http.client.HTTPSConnection(sys.argv[1], int(sys.argv[2]), context=ctx)
h = {'Authorization': 'Bearer ' + os.environ['API_KEY']}
c.request('GET', '/warm', headers=h); c.getresponse().read()
t = time.monotonic()
for i in range(${REQUESTS}):
    c.request('GET', '/r', headers=h); c.getresponse().read()
print(${REQUESTS} / (time.monotonic() - t))
`;
const UPLOAD = `
import http.client, os, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3]) if sys.argv[3] != '-' else ssl.create_default_context()
c = http.client.HTTPSConnection(sys.argv[1], int(sys.argv[2]), context=ctx)
buf = bytes(1 << 20)
def body():
    for _ in range(${SIZE / MiB}):
        yield buf
c.request('POST', '/up', body=body(), headers={'Authorization': 'Bearer ' + os.environ['API_KEY'], 'Content-Length': str(${SIZE})})
print(c.getresponse().read().decode())
`;

const reg = await startRegistry("plain");
try {
  execFileSync("bash", [join(root, "test-vms/registry/build-debian-python.sh")], { stdio: "inherit" });
  await pushFixtures(reg, ["debian-python:latest"]);
  const policy = NetworkPolicy.builder()
    .defaultDeny()
    .egress((r) => r.tcp().port(interceptedPort).allowHost())
    .egress((r) => r.tcp().port(passPort).allowHost())
    .build();
  const sb = await Sandbox.builder("bench-secrets")
    .image(`${reg.host}/debian-python:latest`)
    .memory(1024)
    .network((n) => n.policy(policy).tls((t) => t.interceptedPorts([interceptedPort]).upstreamCaCert(join(dir, "ca.crt"))))
    .secretEnv("API_KEY", VALUE, HOST)
    .create();
  try {
    // The passthrough leg trusts the upstream's CA directly (it is not intercepted).
    await sb.fs().write("/tmp/upstream-ca.crt", readFileSync(join(dir, "ca.crt")));
    const legs = [
      { name: "intercepted", port: interceptedPort, ca: "-" },
      { name: "passthrough", port: passPort, ca: "/tmp/upstream-ca.crt" },
    ];
    const results: Record<string, { rps: number[]; conns: number[]; upload: number[] }> = {};
    for (const l of legs) results[l.name] = { rps: [], conns: [], upload: [] };
    for (let i = 0; i < runs; i++) {
      for (const l of legs) {
        const r = await sb.exec("python3", ["-c", RPS, HOST, String(l.port), l.ca]);
        if (r.code !== 0) throw new Error(`rps ${l.name}: ${r.stderr()}`);
        results[l.name]!.rps.push(Number(r.stdout().trim()));

        const cacert = l.ca === "-" ? "" : `--cacert ${l.ca}`;
        const urls = Array.from({ length: CONNS }, () => `https://${HOST}:${l.port}/c`).join(" ");
        const t0 = performance.now();
        const c = await sb.shell(`for u in ${urls}; do curl -sS --fail ${cacert} -H "Authorization: Bearer $API_KEY" -o /dev/null $u || exit 1; done`);
        if (c.code !== 0) throw new Error(`conns ${l.name}: ${c.stderr()}`);
        results[l.name]!.conns.push(CONNS / ((performance.now() - t0) / 1000));

        const done = new Promise<number>((resolve) => (upload = { resolve, bytes: 0, t0: null }));
        const u = await sb.exec("python3", ["-c", UPLOAD, HOST, String(l.port), l.ca]);
        if (u.code !== 0) throw new Error(`upload ${l.name}: ${u.stderr()}`);
        const ms = await done;
        upload = null;
        results[l.name]!.upload.push(SIZE / MiB / (ms / 1000));
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const row = (what: keyof (typeof results)[string], unit: string) => {
      const a = median(results.intercepted![what]);
      const b = median(results.passthrough![what]);
      console.log(`${what.padEnd(7)} intercepted ${a.toFixed(1).padStart(7)} ${unit}  passthrough ${b.toFixed(1).padStart(7)} ${unit}  ratio ${(a / b).toFixed(2)}`);
    };
    console.log(`secrets bench: ${runs} runs, medians; ${substituted} requests arrived with the value substituted`);
    row("rps", "req/s");
    row("conns", "conn/s");
    row("upload", "MiB/s");
  } finally {
    await sb.kill().catch(() => undefined);
    await Sandbox.remove("bench-secrets").catch(() => undefined);
  }
} finally {
  await reg.stop();
  for (const s of servers) s.close();
  rmSync(dir, { recursive: true, force: true });
  rmSync(process.env.MSB_HOME!, { recursive: true, force: true });
}
