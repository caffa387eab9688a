// End-to-end: the userspace network on a real VM. An allowed rule reaches a host
// server on 127.0.0.1 as host.microsandbox.internal; the default policy denies the host
// and fails fast; .disableNetwork() leaves the guest without a NIC; a published port
// carries host connections to a guest HTTP server; without templates the NIC has checksum
// offload (vhost-user) and comes back after the guest resets its driver.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { networkInterfaces } from "node:os";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NetworkPolicy, Sandbox } from "../src/index.js";
import { cleanup, freePort, useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();

const BODY = "hello from the host\n";
let server: Server | undefined;
let serverPort = 0;

beforeAll(async () => {
  server = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(BODY);
  });
  await new Promise<void>((res) => server!.listen(0, "127.0.0.1", res));
  serverPort = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  await new Promise<void>((res) => (server ? server.close(() => res()) : res()));
});

describe("network", () => {
  it("an allowed host rule reaches the host; a published port reaches a guest server", async () => {
    const hostPort = await freePort();
    const policy = NetworkPolicy.builder()
      .egress((r) => r.tcp().port(serverPort).allowHost())
      .egress((r) => r.allowPublic())
      .build();
    const sb = await Sandbox.builder("e2e-net-allow")
      .network((n) => n.policy(policy))
      .port(hostPort, 8080)
      .create();
    try {
      const out = await sb.exec("wget", ["-q", "-O", "-", `http://host.microsandbox.internal:${serverPort}/`]);
      expect(out.stderr()).toBe("");
      expect(out.code).toBe(0);
      expect(out.stdout()).toBe(BODY);

      await sb.fs().mkdir("/www");
      await sb.fs().write("/www/index.html", "hello from the guest\n");
      const httpd = await sb.shell("httpd -p 8080 -h /www");
      expect(httpd.code).toBe(0);
      let text = "";
      let lastError: unknown;
      for (let i = 0; i < 50 && text === ""; i++) {
        try {
          const res = await fetch(`http://127.0.0.1:${hostPort}/`, { signal: AbortSignal.timeout(10_000) });
          expect(res.status).toBe(200);
          text = await res.text();
        } catch (e) {
          lastError = e;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      if (text === "") throw lastError;
      expect(text).toBe("hello from the guest\n");
    } finally {
      await cleanup(sb);
    }
  });

  it("the default policy denies the host, and fails fast", async () => {
    const sb = await Sandbox.builder("e2e-net-default").create();
    try {
      expect(sb.config().network?.policy.egress).toEqual([{ action: "allow", target: { group: "public" } }]);
      const t0 = Date.now();
      const out = await sb.exec("timeout", ["30", "wget", "-q", "-O", "-", `http://host.microsandbox.internal:${serverPort}/`]);
      const ms = Date.now() - t0;
      expect(out.code).toBe(1);
      expect(out.stdout()).toBe("");
      expect(out.stderr()).toBe("wget: can't connect to remote host (10.0.2.254): Connection refused\n");
      // did not hang: refused at once rather than timing out
      expect(ms).toBeLessThan(10_000);
    } finally {
      await cleanup(sb);
    }
  });

  it("ping: an icmp rule lets echo through to a real address; without one it is refused", async () => {
    // The host's own non-loopback address: a real destination the host can ping.
    const target = Object.values(networkInterfaces())
      .flat()
      .find((a) => a && a.family === "IPv4" && !a.internal)?.address;
    if (!target) throw new Error("this test needs a non-loopback IPv4 address on the host");
    const allowed = await Sandbox.builder("e2e-net-ping")
      .network((n) => n.policy(NetworkPolicy.builder().egress((r) => r.icmp().allow((d) => d.ip(target))).build()))
      .create();
    const denied = await Sandbox.builder("e2e-net-noping")
      .network((n) => n.policy(NetworkPolicy.builder().egress((r) => r.tcp().allow((d) => d.ip(target))).build()))
      .create();
    try {
      const ok = await allowed.exec("ping", ["-c", "2", "-W", "5", target]);
      expect(ok.stdout()).toMatch(/2 packets transmitted, 2 packets received/);
      expect(ok.code).toBe(0);
      // the stack's own addresses answer as well
      const gw = await allowed.exec("ping", ["-c", "1", "-W", "5", "host.microsandbox.internal"]);
      expect(gw.stdout()).toMatch(/1 packets received/);

      // Refused by the stack with "destination unreachable" at once; busybox ping ignores
      // it and waits out -W, so the guest kernel's ICMP counters tell.
      const unreach = async () => {
        const snmp = (await denied.exec("cat", ["/proc/net/snmp"])).stdout().split("\n");
        const [names, values] = snmp.filter((l) => l.startsWith("Icmp:")).map((l) => l.split(/\s+/));
        return Number(values![names!.indexOf("InDestUnreachs")]);
      };
      const before = await unreach();
      const no = await denied.exec("ping", ["-c", "1", "-W", "3", target]);
      expect(no.code).toBe(1);
      expect(no.stdout()).toMatch(/0 packets received/);
      expect(await unreach()).toBe(before + 1);
    } finally {
      await cleanup(allowed, denied);
    }
  });

  it("without templates the NIC is served over vhost-user with checksum offload, and survives the guest resetting it", async () => {
    // Templated layouts get a frame stream instead (template.e2e.test.ts): vhost-user
    // needs guest memory shared with the stack.
    const sb = await Sandbox.builder("e2e-net-reset")
      .network((n) => n.policy(NetworkPolicy.builder().egress((r) => r.tcp().port(serverPort).allowHost()).build()))
      .memoryTemplate(false)
      .create();
    try {
      const dev = (await sb.shell("basename $(readlink /sys/class/net/eth0/device)")).stdout().trim();
      expect(dev).toMatch(/^virtio\d+$/);
      // The negotiated virtio feature bits, one character per bit from bit 0.
      const bits = (await sb.exec("cat", [`/sys/bus/virtio/devices/${dev}/features`])).stdout().trim();
      expect(bits[0]).toBe("1"); // CSUM: the guest leaves checksums to msb-runtime
      expect(bits[1]).toBe("1"); // GUEST_CSUM: frames to the guest come marked valid
      expect(bits[15]).toBe("1"); // MRG_RXBUF
      expect(bits[32]).toBe("1"); // VERSION_1
      expect(bits[11]).toBe("0"); // no TSO
      // The network is IPv4-only: eth0 gets no IPv6 (no autoconfiguration work or
      // frames at boot); loopback keeps ::1.
      expect((await sb.exec("cat", ["/proc/sys/net/ipv6/conf/eth0/disable_ipv6"])).stdout()).toBe("1\n");
      const inet6 = (await sb.exec("cat", ["/proc/net/if_inet6"])).stdout();
      expect(inet6).toMatch(/^0{31}1 .* lo$/m);
      expect(inet6).not.toContain("eth0");
      const get = () => sb.exec("wget", ["-q", "-O", "-", `http://host.microsandbox.internal:${serverPort}/`]);
      expect((await get()).stdout()).toBe(BODY);

      // The guest unbinds and rebinds its virtio-net driver: QEMU stops the vhost-user
      // rings and sets them up again; the address setup is the agent's, so redo it.
      const addr = (await sb.shell("ip -o -4 addr show dev eth0 | awk '{print $4}'")).stdout().trim();
      const gw = (await sb.shell("ip route | awk '/^default/ {print $3}'")).stdout().trim();
      expect(addr).toMatch(/^\d+\.\d+\.\d+\.\d+\/\d+$/);
      const reset = await sb.shell(
        `echo ${dev} > /sys/bus/virtio/drivers/virtio_net/unbind && ` +
          `echo ${dev} > /sys/bus/virtio/drivers/virtio_net/bind && ` +
          `ip link set eth0 mtu 65520 up && ip addr add ${addr} dev eth0 && ip route add default via ${gw}`,
      );
      expect(reset.stderr()).toBe("");
      expect(reset.code).toBe(0);
      let out = await get();
      for (let i = 0; i < 20 && out.stdout() !== BODY; i++) {
        await new Promise((r) => setTimeout(r, 250));
        out = await get();
      }
      expect(out.stdout()).toBe(BODY);
    } finally {
      await cleanup(sb);
    }
  });

  it(".disableNetwork() gives the guest no NIC", async () => {
    const sb = await Sandbox.builder("e2e-net-off").disableNetwork().create();
    try {
      expect(sb.config().network).toBeNull();
      const eth0 = await sb.exec("cat", ["/sys/class/net/eth0/address"]);
      expect(eth0.code).toBe(1);
      expect(eth0.stderr()).toBe("cat: can't open '/sys/class/net/eth0/address': No such file or directory\n");
      const ls = await sb.exec("ls", ["/sys/class/net"]);
      expect(ls.code).toBe(0);
      expect(ls.stdout().split(/\s+/).filter(Boolean)).toEqual(["lo"]);
    } finally {
      await cleanup(sb);
    }
  });
});
