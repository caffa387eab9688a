// Slower tier: a realistic image (Debian minbase + python3, built with debootstrap by
// test-vms/registry/build-debian-python.sh) pulled from a local registry, then Python
// run in a sandbox from it.
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createSocket } from "node:dgram";
import { NetworkPolicy, Sandbox } from "@microsandbox/sdk";
import { pushFixtures, startRegistry, type Registry } from "../../../test-vms/registry/index.js";
import { cleanup, useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();
let reg: Registry;

beforeAll(async () => {
  const script = fileURLToPath(new URL("../../../test-vms/registry/build-debian-python.sh", import.meta.url));
  execFileSync("bash", [script], { stdio: "inherit" }); // quick no-op once built
  reg = await startRegistry("plain");
  await pushFixtures(reg, ["debian-python:latest"]);
}, 600_000);

afterAll(async () => {
  await reg?.stop();
});

it("runs Python in a sandbox from a Debian image", async () => {
  const sb = await Sandbox.builder("py").image(`${reg.host}/debian-python:latest`).memory(512).create();
  try {
    const out = await sb.exec("python3", ["-c", "import json, sys; print(json.dumps({'answer': 6*7, 'v': sys.version_info[0]}))"]);
    expect(out.stderr()).toBe("");
    expect(JSON.parse(out.stdout())).toEqual({ answer: 42, v: 3 });
    expect(sb.config().cmd).toEqual(["python3"]);
    const os = await sb.exec("cat", ["/etc/os-release"]);
    expect(os.stdout()).toMatch(/ID=debian/);
  } finally {
    await cleanup(sb);
  }
});

it("UDP to the host and back through the network stack (python client in the guest)", async () => {
  const udp = createSocket("udp4");
  udp.on("message", (m, r) => udp.send(Buffer.from(`echo:${m.toString()}`), r.port, r.address));
  await new Promise<void>((r) => udp.bind(0, "127.0.0.1", r));
  const port = udp.address().port;
  const sb = await Sandbox.builder("py-udp")
    .image(`${reg.host}/debian-python:latest`)
    .network((n) => n.policy(NetworkPolicy.builder().egress((r) => r.allowHost()).build()))
    .create();
  try {
    const script = [
      "import socket",
      "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)",
      "s.settimeout(10)",
      `s.sendto(b'ping', ('host.microsandbox.internal', ${port}))`,
      "print(s.recvfrom(100)[0].decode())",
    ].join("\n");
    const out = await sb.exec("python3", ["-c", script]);
    expect(out.stderr()).toBe("");
    expect(out.stdout()).toBe("echo:ping\n");
  } finally {
    await cleanup(sb);
    udp.close();
  }
});
