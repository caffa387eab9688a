// End-to-end: real traffic through the userspace network with busybox clients in the
// guest: 64 MiB each way checksum-exact, 50 concurrent connections, and two sandboxes
// with different policies side by side. (UDP needs a client busybox lacks: python.e2e.)
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import { createServer as createTcpServer, type AddressInfo, type Server as TcpServer } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NetworkPolicy, Sandbox } from "../src/index.js";
import { cleanup, useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();

const BIG = Buffer.alloc(64 << 20);
for (let i = 0; i < BIG.length; i += 4) BIG.writeUInt32LE((i * 2654435761) >>> 0, i);
const BIG_SHA = createHash("sha256").update(BIG).digest("hex");

let http: Server;
let httpPort = 0;
let tcp: TcpServer;
let tcpPort = 0;
const uploads: { bytes: number; sha: string }[] = [];

beforeAll(async () => {
  http = createServer((req, res) => {
    if (req.method === "POST") {
      const h = createHash("sha256");
      let bytes = 0;
      req.on("data", (d: Buffer) => {
        h.update(d);
        bytes += d.length;
      });
      req.on("end", () => {
        uploads.push({ bytes, sha: h.digest("hex") });
        res.end("ok\n");
      });
      return;
    }
    if (req.url === "/big") {
      res.writeHead(200, { "content-length": String(BIG.length) });
      res.end(BIG);
      return;
    }
    res.end(`hi ${req.url}\n`);
  });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
  httpPort = (http.address() as AddressInfo).port;
  // A raw TCP sink for uploads: hashes what arrives until the guest closes.
  tcp = createTcpServer((sock) => {
    const h = createHash("sha256");
    let bytes = 0;
    sock.on("data", (d: Buffer) => {
      h.update(d);
      bytes += d.length;
    });
    sock.on("end", () => {
      uploads.push({ bytes, sha: h.digest("hex") });
      sock.end();
    });
    sock.on("error", () => undefined);
  });
  await new Promise<void>((r) => tcp.listen(0, "127.0.0.1", r));
  tcpPort = (tcp.address() as AddressInfo).port;
});

afterAll(async () => {
  await new Promise<void>((r) => http.close(() => r()));
  await new Promise<void>((r) => tcp.close(() => r()));
});

const allowHost = () =>
  NetworkPolicy.builder()
    .egress((r) => r.allowHost())
    .build();

describe("network traffic", () => {
  it("64 MiB down and 64 MiB up arrive checksum-exact; 50 concurrent connections", async () => {
    const sb = await Sandbox.builder("e2e-net-traffic").memory(512).network((n) => n.policy(allowHost())).create();
    uploads.length = 0;
    try {
      const host = `host.microsandbox.internal`;
      const down = await sb.shell(`wget -q -O - http://${host}:${httpPort}/big | sha256sum`);
      expect(down.stderr()).toBe("");
      expect(down.stdout().split(" ")[0]).toBe(BIG_SHA);

      const up = await sb.shell(
        `dd if=/dev/urandom of=/tmp/up bs=1M count=64 2>/dev/null && sha256sum /tmp/up && nc -w 3 ${host} ${tcpPort} < /tmp/up`,
      );
      const guestSha = up.stdout().split(" ")[0];
      for (let i = 0; i < 50 && uploads.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
      expect(uploads.at(-1)).toEqual({ bytes: 64 << 20, sha: guestSha });

      const many = await sb.shell(
        `for i in $(seq 50); do wget -q -O /tmp/c$i http://${host}:${httpPort}/c$i & done; wait; cat /tmp/c* | sort | uniq | wc -l`,
      );
      expect(many.stdout().trim()).toBe("50");


      const m = await sb.metrics();
      expect(m.netRxBytes).toBeGreaterThan(64 << 20);
      expect(m.netTxBytes).toBeGreaterThan(64 << 20);
    } finally {
      await cleanup(sb);
    }
  });

  it("two sandboxes with different policies at once", async () => {
    const open = await Sandbox.builder("e2e-net-open").network((n) => n.policy(allowHost())).create();
    const closed = await Sandbox.builder("e2e-net-closed").create(); // default policy: the host is denied
    try {
      const url = `http://host.microsandbox.internal:${httpPort}/x`;
      const [a, b] = await Promise.all([open.exec("wget", ["-q", "-O", "-", url]), closed.exec("wget", ["-q", "-T", "5", "-O", "-", url])]);
      expect(a.stdout()).toBe("hi /x\n");
      expect(b.stdout()).toBe("");
      expect(b.success).toBe(false);
    } finally {
      await cleanup(open, closed);
    }
  });
});
