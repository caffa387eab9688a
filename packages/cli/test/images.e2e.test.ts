// End-to-end: msb pull / images / rmi and msb run IMAGE against a local registry.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";
import { pushFixtures, startRegistry, type Registry } from "../../../test-vms/registry/index.js";

const bin = fileURLToPath(new URL("../dist/bin.js", import.meta.url));
let home = "";
let reg: Registry;

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), "msb-"));
  reg = await startRegistry("plain");
  await pushFixtures(reg, ["busybox:latest"]);
});
afterAll(async () => {
  await reg?.stop();
  if (home) rmSync(home, { recursive: true, force: true });
});

function msb(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env: { ...process.env, MSB_HOME: home }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

it("pull, images, run with the image's user, rmi", async () => {
  const ref = `${reg.host}/busybox:latest`;

  const never = await msb(["run", "--pull-policy", "never", ref, "--", "true"]);
  expect(never.code).toBe(1);
  // a progress line ("resolving ..."), then the error
  expect(never.stderr).toMatch(/^resolving \S+\nmsb: image \S+\/busybox:latest \(linux\/amd64\) is not in the cache \(.+\) and the pull policy is "never"; pull it first or use the policy "if-missing"\n$/);

  const pull = await msb(["pull", ref]);
  expect(pull.code, pull.stderr).toBe(0);
  // Not a TTY: plain progress lines.
  expect(pull.stderr).toContain(`resolving ${ref}`);
  expect(pull.stderr).toMatch(/layer 1\/3 [0-9a-f]{12}: downloaded/);
  expect(pull.stderr).toMatch(/pulled .*busybox:latest \(sha256:[0-9a-f]{64}\)/);

  const json = await msb(["images", "--json"]);
  expect(json.code).toBe(0);
  const list = JSON.parse(json.stdout) as { reference: string; digest: string; sizeBytes: number }[];
  expect(list.map((i) => i.reference)).toContain(ref);
  expect(list[0]?.digest).toMatch(/^sha256:/);

  const table = await msb(["images"]);
  expect(table.stdout.split("\n")[0]).toMatch(/^REFERENCE\s+DIGEST\s+SIZE\s+PULLED$/);

  const run = await msb(["run", "--pull-policy", "never", ref, "--", "sh", "-c", "id -u; pwd"]);
  expect(run.code, run.stderr).toBe(0);
  expect(run.stdout).toBe("1000\n/opt/data\n");

  const rmi = await msb(["rmi", ref]);
  expect(rmi.code).toBe(0);
  expect((await msb(["images", "--json"])).stdout.trim()).toBe("[]");
  const again = await msb(["rmi", ref]);
  expect(again.code).toBe(1);
  expect(again.stderr).toContain("busybox");
});
