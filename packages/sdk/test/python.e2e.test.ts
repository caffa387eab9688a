// Slower tier: a realistic image (Debian minbase + python3, built with debootstrap by
// test-vms/registry/build-debian-python.sh) pulled from a local registry, then Python
// run in a sandbox from it.
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Sandbox } from "@microsandbox/sdk";
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
