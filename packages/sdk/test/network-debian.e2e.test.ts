// End-to-end network tests with the Debian test image's own clients (curl, python3):
// curl through an allowed rule, NXDOMAIN for a denied name read from the raw DNS
// answer, a published UDP port reaching a python server in the guest, and hostile
// frames written straight onto the guest's NIC (AF_PACKET) that must not take
// msb-runtime down or grow its memory without bound.
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { createSocket } from "node:dgram";
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NetworkPolicy, Sandbox } from "@microsandbox/sdk";
import { pushFixtures, startRegistry, type Registry } from "../../../test-vms/registry/index.js";
import { cleanup, DNS_PROBE, freePort, useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();
let reg: Registry;
let http: Server;
let httpPort = 0;
const BLOB = Buffer.alloc(4 << 20);
for (let i = 0; i < BLOB.length; i += 4) BLOB.writeUInt32LE((i * 2654435761) >>> 0, i);
const BLOB_SHA = createHash("sha256").update(BLOB).digest("hex");

beforeAll(async () => {
  const script = fileURLToPath(new URL("../../../test-vms/registry/build-debian-python.sh", import.meta.url));
  execFileSync("bash", [script], { stdio: "inherit" }); // quick no-op once built
  reg = await startRegistry("plain");
  await pushFixtures(reg, ["debian-python:latest"]);
  http = createServer((req, res) => res.end(req.url === "/blob" ? BLOB : `hi ${req.url}\n`));
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
  httpPort = (http.address() as AddressInfo).port;
}, 600_000);

afterAll(async () => {
  await new Promise<void>((r) => (http ? http.close(() => r()) : r()));
  await reg?.stop();
});

const image = () => `${reg.host}/debian-python:latest`;

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}


// Writes hostile frames onto eth0 with AF_PACKET (root in the guest): garbage of every
// length, broken IPv4 headers (lengths, checksums, options), bad TCP/UDP checksums,
// fragments that never complete, IPv6 and junk ARP, then a flood of 10 000 SYNs to an
// allowed host port from distinct source ports. Prints how many frames it sent.
const HOSTILE = `
import os, random, socket, struct, sys
host_ip, port = sys.argv[1], int(sys.argv[2])
random.seed(7)
def csum(b):
    if len(b) % 2: b += b'\\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
ifc = open('/sys/class/net/eth0/address').read().strip()
me_mac = bytes.fromhex(ifc.replace(':', ''))
route = [l.split() for l in open('/proc/net/route').read().splitlines()[1:]]
gw = socket.inet_ntoa(struct.pack('<I', int([r for r in route if r[1] == '00000000'][0][2], 16)))
arp = {l.split()[0]: l.split()[3] for l in open('/proc/net/arp').read().splitlines()[1:]}
gw_mac = bytes.fromhex(arp[gw].replace(':', ''))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect((gw, 9))
src = socket.inet_aton(u.getsockname()[0])
dst = socket.inet_aton(host_ip)
eth = gw_mac + me_mac + b'\\x08\\x00'
def ip(proto, payload, ident=0, frag=0x4000, ihl=5, total=None, bad=False, opts=b''):
    total = 20 + len(opts) + len(payload) if total is None else total
    h = struct.pack('!BBHHHBBH4s4s', 0x40 | ihl, 0, total & 0xffff, ident, frag, 64, proto, 0, src, dst) + opts
    c = csum(h) ^ (0x5555 if bad else 0)
    return h[:10] + struct.pack('!H', c) + h[12:] + payload
def tcp(sport, dport, flags=0x02, seq=1, bad=False):
    t = struct.pack('!HHIIBBHHH', sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    c = csum(src + dst + struct.pack('!BBH', 0, 6, len(t)) + t) ^ (0x0f0f if bad else 0)
    return t[:16] + struct.pack('!H', c) + t[18:]
def udp(sport, dport, data, bad=False):
    u = struct.pack('!HHHH', sport, dport, 8 + len(data), 0) + data
    c = csum(src + dst + struct.pack('!BBH', 0, 17, len(u)) + u) ^ (0x0f0f if bad else 0)
    return u[:6] + struct.pack('!H', c or 0xffff) + u[8:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
sent = 0
def send(f):
    global sent
    try:
        s.send(f); sent += 1
    except OSError:
        pass
for n in list(range(0, 64)) + [random.randrange(64, 1500) for _ in range(1500)]:
    send(gw_mac + me_mac + os.urandom(2) + os.urandom(n))
for n in range(0, 60):
    send(eth + os.urandom(n))
for i in range(300):
    p = tcp(40000 + i, port)
    send(eth + ip(6, p, total=random.choice([0, 1, 19, 20, 21, 39, 41, 1500, 65535])))
    send(eth + ip(6, p, bad=True))
    send(eth + ip(6, p, ihl=random.choice([0, 1, 4, 15])))
    send(eth + ip(6, tcp(41000 + i, port, bad=True)))
    send(eth + ip(17, udp(42000 + i, port, b'x' * 32, bad=True)))
    send(eth + ip(6, p, opts=b'\\x01' * 40, ihl=15))
    send(eth + ip(17, udp(43000 + i, port, b'y' * 64)[:24], ident=i, frag=0x2000))
    send(eth + ip(17, b'z' * 48, ident=i, frag=0x2000 | random.randrange(1, 8000)))
    send(gw_mac + me_mac + b'\\x86\\xdd' + os.urandom(60))
    send(gw_mac + me_mac + b'\\x08\\x06' + os.urandom(random.randrange(0, 60)))
for i in range(10000):
    send(eth + ip(6, tcp(1024 + (i * 7919) % 60000, port, seq=random.randrange(1 << 32)), ident=i))
print(sent)
`;

describe("network, Debian guest tools", () => {
  it("curl fetches through an allowed rule, byte-exact; a denied name is NXDOMAIN on the wire (UDP and TCP)", async () => {
    const policy = NetworkPolicy.builder()
      .egress((r) => r.denyDomain("blocked.example.com"))
      .egress((r) => r.tcp().port(httpPort).allowHost())
      .egress((r) => r.allowPublic())
      .build();
    const sb = await Sandbox.builder("deb-curl").image(image()).network((n) => n.policy(policy)).create();
    try {
      const got = await sb.shell(`curl -sS --fail http://host.microsandbox.internal:${httpPort}/blob | sha256sum`);
      expect(got.stderr()).toBe("");
      expect(got.stdout().split(" ")[0]).toBe(BLOB_SHA);

      const denied = await sb.exec("python3", ["-c", DNS_PROBE, "blocked.example.com"]);
      expect(denied.stderr()).toBe("");
      expect(denied.stdout()).toBe("True 3 0\n"); // our id echoed, RCODE 3 = NXDOMAIN, no answers
      const host = await sb.exec("python3", ["-c", DNS_PROBE, "host.microsandbox.internal"]);
      expect(host.stdout()).toBe("True 0 1\n");
      // the same answers over TCP (resolvers fall back to it for truncated answers)
      const deniedTcp = await sb.exec("python3", ["-c", DNS_PROBE, "blocked.example.com", "tcp"]);
      expect(deniedTcp.stderr()).toBe("");
      expect(deniedTcp.stdout()).toBe("True 3 0\n");
      const hostTcp = await sb.exec("python3", ["-c", DNS_PROBE, "host.microsandbox.internal", "tcp"]);
      expect(hostTcp.stdout()).toBe("True 0 1\n");

      // A port the rule does not cover is refused at once (RST), not left to time out.
      const t0 = performance.now();
      const refused = await sb.shell(`curl -sS --max-time 30 http://host.microsandbox.internal:${httpPort + 1}/ ; echo rc=$?`);
      expect(refused.stdout()).toMatch(/rc=7\n$/); // curl: failed to connect
      expect(performance.now() - t0).toBeLessThan(20_000);
    } finally {
      await cleanup(sb);
    }
  });

  it("a published UDP port carries datagrams to a python server in the guest and back", async () => {
    const hostPort = await freePort();
    // MTU 1500 so the 3000-byte datagram is fragmented in both directions.
    const sb = await Sandbox.builder("deb-udp").image(image()).network((n) => n.mtu(1500)).portUdp(hostPort, 5005).create();
    const client = createSocket("udp4");
    try {
      const server = [
        "import socket",
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
        "s.bind(('0.0.0.0', 5005))",
        "open('/tmp/ready', 'w').close()",
        "while True:",
        "    d, a = s.recvfrom(65535)",
        "    s.sendto(b'guest:' + d, a)",
      ].join("\n");
      await sb.fs().write("/tmp/udp.py", server);
      const start = await sb.shell("nohup python3 /tmp/udp.py >/tmp/udp.log 2>&1 & while [ ! -e /tmp/ready ]; do sleep 0.1; done; echo up");
      expect(start.stdout()).toBe("up\n");

      await new Promise<void>((r) => client.bind(0, "127.0.0.1", r));
      const replies: string[] = [];
      client.on("message", (m) => replies.push(m.toString()));
      const big = "b".repeat(3000); // larger than the MTU: fragmented into the guest, reassembled there
      for (let i = 0; i < 100 && replies.length < 2; i++) {
        client.send(`ping${i}`, hostPort, "127.0.0.1");
        client.send(big, hostPort, "127.0.0.1");
        await new Promise((r) => setTimeout(r, 200));
      }
      expect(replies.some((r) => /^guest:ping\d+$/.test(r))).toBe(true);
      expect(replies).toContain(`guest:${big}`);
    } finally {
      client.close();
      await cleanup(sb);
    }
  });

  it("hostile frames from the guest: msb-runtime survives with bounded memory and the network still works", async () => {
    const policy = NetworkPolicy.builder()
      .egress((r) => r.allowHost())
      .build();
    const sb = await Sandbox.builder("deb-hostile").image(image()).memory(512).network((n) => n.policy(policy)).create();
    try {
      const pid = sb.runtimePid;
      expect(pid).toBeGreaterThan(0);
      const warm = await sb.shell(`curl -sS --fail http://host.microsandbox.internal:${httpPort}/warm`);
      expect(warm.stdout()).toBe("hi /warm\n");
      const before = rssKiB(pid);

      const hostIp = (await sb.shell("getent hosts host.microsandbox.internal | cut -d' ' -f1")).stdout().trim();
      const flood = await sb.exec("python3", ["-c", HOSTILE, hostIp, String(httpPort)]);
      expect(flood.stderr()).toBe("");
      expect(Number(flood.stdout())).toBeGreaterThan(12_000);
      const after = rssKiB(pid);
      console.log(`hostile frames: ${flood.stdout().trim()} sent; msb-runtime RSS ${before} -> ${after} KiB`);

      expect(() => process.kill(pid, 0)).not.toThrow();
      expect(after - before).toBeLessThan(64 * 1024);
      const got = await sb.shell(`curl -sS --fail --retry 5 --retry-all-errors http://host.microsandbox.internal:${httpPort}/blob | sha256sum`);
      expect(got.stdout().split(" ")[0]).toBe(BLOB_SHA);
      const m = await sb.metrics();
      expect(m.netRxBytes).toBeGreaterThan(BLOB.length); // guest-received bytes
    } finally {
      await cleanup(sb);
    }
  });
});
