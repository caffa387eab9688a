// Network throughput and connection rate of our userspace stack against QEMU's user
// networking (-netdev user) and passt, on the same VM and image (Debian + python3 +
// curl from the local test registry), interleaved in one run. Not a pass/fail test.
//
// msb-runtime swaps in a baseline when MSB_NET_BACKEND is "user" or "passt" (bench only;
// the guest then reaches the host at 10.0.2.2). passt gets the same MTU as our stack;
// QEMU's user networking has no MTU setting and stays at 1500.
//
// The baselines are not in the product build: they sit behind msb-runtime's cargo
// feature `bench-backends` (crates/runtime/src/bench_backends.rs), and a runtime built
// without it refuses MSB_NET_BACKEND=user|passt at start. Before this bench, build it with
// the feature and put it where the addon finds it (as scripts/setup.sh does):
//
//   cargo build --release -p msb-runtime --features bench-backends
//   cp target/release/msb-runtime packages/core-native-linux-x64-gnu/bin/msb-runtime
//
// and afterwards rebuild the product runtime (npm run setup, or the same two commands
// without --features).
//
//   down  curl in the guest fetches 64 MiB from a host HTTP server (curl's own figure)
//   up    python in the guest sends 64 MiB to a host TCP sink (first to last byte, host side)
//   cps   python in the guest opens 300 connections one after another to a host server
//         that answers one byte and closes (connect + first byte + close)
//
// Usage: npm run bench:net [runs=5]   (needs passt: apt-get install passt)
// MSB_BENCH_MTU overrides the MTU (default: the SDK's default).
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createTcpServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NetworkPolicy, Sandbox } from "@microsandbox/sdk";
import { pushFixtures, startRegistry } from "../../test-vms/registry/index.js";

const runs = Number(process.argv[2] ?? 5);
const root = join(import.meta.dirname ?? new URL(".", import.meta.url).pathname, "..", "..");
const MiB = 1 << 20;
const SIZE = 64 * MiB;
const CONNS = 300;
const mtu = process.env.MSB_BENCH_MTU ? Number(process.env.MSB_BENCH_MTU) : undefined;
const BIG = Buffer.alloc(SIZE, 7);
process.env.MSB_HOME = mkdtempSync(join(tmpdir(), "msb-bench-net-"));

const http = createServer((req, res) => res.end(req.url === "/big" ? BIG : "ok\n"));
await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
const httpPort = (http.address() as AddressInfo).port;

let upload: { resolve: (ms: number) => void; bytes: number; t0: number | null } | null = null;
const sink = createTcpServer((sock) => {
  sock.on("data", (d) => {
    if (!upload) return;
    upload.t0 ??= performance.now();
    upload.bytes += d.length;
    if (upload.bytes >= SIZE) {
      upload.resolve(performance.now() - upload.t0);
      sock.end("k");
    }
  });
  sock.on("error", () => {});
});
await new Promise<void>((r) => sink.listen(0, "127.0.0.1", r));
const sinkPort = (sink.address() as AddressInfo).port;

const oneByte = createTcpServer((sock) => {
  sock.on("error", () => {});
  sock.end("x");
});
await new Promise<void>((r) => oneByte.listen(0, "127.0.0.1", r));
const oneBytePort = (oneByte.address() as AddressInfo).port;

const UPLOAD = `
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
buf = bytes(1 << 20)
for _ in range(${SIZE / MiB}):
    s.sendall(buf)
s.shutdown(socket.SHUT_WR)
s.recv(1)
`;
const CONNECT = `
import socket, sys, time
# resolved once: the loop measures connections, not /etc/hosts lookups
h, p, n = socket.gethostbyname(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t = time.monotonic()
for _ in range(n):
    s = socket.create_connection((h, p))
    assert s.recv(1) == b'x'
    s.close()
print(n / (time.monotonic() - t))
`;

type Backend = "msb" | "user" | "passt";
const backends: Backend[] = ["msb", "user", "passt"];
const results = Object.fromEntries(backends.map((b) => [b, { down: [] as number[], up: [] as number[], cps: [] as number[] }])) as Record<
  Backend,
  { down: number[]; up: number[]; cps: number[] }
>;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1] ?? NaN;

async function measure(image: string, backend: Backend): Promise<void> {
  process.env.MSB_NET_BACKEND = backend === "msb" ? "" : backend;
  const host = backend === "msb" ? "host.microsandbox.internal" : "10.0.2.2";
  const name = `bench-net-${backend}`;
  const sb = await Sandbox.builder(name)
    .image(image)
    .memory(512)
    .replace()
    .network((n) => {
      n.policy(NetworkPolicy.builder().egress((r) => r.allowHost()).build());
      if (mtu) n.mtu(mtu);
      return n;
    })
    .create();
  try {
    const d = await sb.exec("curl", ["-sS", "-o", "/dev/null", "-w", "%{speed_download}", `http://${host}:${httpPort}/big`]);
    if (d.code !== 0) throw new Error(`${backend}: download failed: ${d.stderr()}`);
    results[backend].down.push(Number(d.stdout()) / MiB);

    const done = new Promise<number>((resolve) => (upload = { resolve, bytes: 0, t0: null }));
    const up = await sb.exec("python3", ["-c", UPLOAD, host, String(sinkPort)]);
    if (up.code !== 0) throw new Error(`${backend}: upload failed: ${up.stderr()}`);
    const ms = await done;
    upload = null;
    results[backend].up.push(SIZE / MiB / (ms / 1000));

    const c = await sb.exec("python3", ["-c", CONNECT, host, String(oneBytePort), String(CONNS)]);
    if (c.code !== 0) throw new Error(`${backend}: connections failed: ${c.stderr()}`);
    results[backend].cps.push(Number(c.stdout()));
  } finally {
    await sb.stop();
    await Sandbox.remove(name);
  }
}

try {
  execFileSync("passt", ["--version"], { stdio: "ignore" });
} catch {
  console.error("bench:net compares against passt: install it first (apt-get install passt)");
  process.exit(1);
}
execFileSync("bash", [join(root, "test-vms/registry/build-debian-python.sh")], { stdio: "inherit" });
const reg = await startRegistry("plain");
try {
  await pushFixtures(reg, ["debian-python:latest"]);
  const image = `${reg.host}/debian-python:latest`;
  for (let i = 0; i < runs; i++) {
    for (const b of backends) await measure(image, b);
    process.stderr.write(`run ${i + 1}/${runs} done\n`);
  }
  const row = (k: "down" | "up" | "cps", unit: string) => {
    const m = Object.fromEntries(backends.map((b) => [b, median(results[b][k])])) as Record<Backend, number>;
    const best = Math.max(m.user, m.passt);
    const all = (b: Backend) => results[b][k].map((x) => x.toFixed(0)).join(" ");
    console.log(
      `${k.padEnd(5)} msb ${m.msb.toFixed(1)} ${unit} [${all("msb")}]  user ${m.user.toFixed(1)} [${all("user")}]  passt ${m.passt.toFixed(1)} [${all("passt")}]  msb/best ${(m.msb / best).toFixed(2)}`,
    );
  };
  console.log(`net bench: ${runs} runs, medians; ${SIZE / MiB} MiB each way, ${CONNS} sequential connections; MTU ${mtu ?? "default"} (user: 1500)`);
  row("down", "MiB/s");
  row("up", "MiB/s");
  row("cps", "conn/s");
} finally {
  http.close();
  sink.close();
  oneByte.close();
  await reg.stop();
  rmSync(process.env.MSB_HOME!, { recursive: true, force: true });
}
