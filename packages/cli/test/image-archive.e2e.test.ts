// End-to-end: msb image save / load / inspect / rm / prune against a local registry,
// the archive loaded into a second MSB_HOME after the registry is gone, and msb run from it.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";
import { pushFixtures, startRegistry, type Registry } from "../../../test-vms/registry/index.js";

const bin = fileURLToPath(new URL("../dist/bin.js", import.meta.url));
let work = "";
let reg: Registry | undefined;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "msb-"));
  reg = await startRegistry("plain");
  await pushFixtures(reg, ["busybox:latest"]);
});
afterAll(async () => {
  await reg?.stop();
  if (work) {
    // a failed run may leave the detached sandbox behind
    await msb(join(work, "b"), ["kill", "from-tar"]).catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  }
});

function msb(home: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
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

it("save on one home, load on another without the registry, run; in-use rm refused; prune", async () => {
  const a = join(work, "a");
  const b = join(work, "b");
  const tarPath = join(work, "bb.tar");
  const ref = `${reg!.host}/busybox:latest`;

  expect((await msb(a, ["pull", ref])).code).toBe(0);
  const ins = await msb(a, ["image", "inspect", ref]);
  expect(ins.code).toBe(0);
  const detail = JSON.parse(ins.stdout) as { manifestDigest: string; layerCount: number; layers: unknown[]; config: { workingDir: string } };
  expect(detail.layers.length).toBe(detail.layerCount);
  expect(detail.config.workingDir).toBe("/opt/data");

  expect((await msb(a, ["image", "save", ref, "-o", tarPath])).code).toBe(0);
  expect(existsSync(tarPath)).toBe(true);
  const again = await msb(a, ["image", "save", ref, "-o", tarPath, "--json"]);
  expect(again.code).toBe(2);
  expect(JSON.parse(again.stderr)).toMatchObject({ error: { code: "invalidConfig", field: "outputPath" } });

  await reg!.stop();
  reg = undefined;
  const load = await msb(b, ["image", "load", tarPath, "--json"]);
  expect(load.code).toBe(0);
  expect(JSON.parse(load.stdout)).toEqual([expect.objectContaining({ reference: ref, manifestDigest: detail.manifestDigest })]);

  const run = await msb(b, ["create", "--name", "from-tar", ref]);
  expect(run.code, run.stderr).toBe(0);
  const out = await msb(b, ["exec", "from-tar", "--", "cat", "/etc/image-marker"]);
  expect(out.stdout).toBe("busybox-fixture\n");

  const rm = await msb(b, ["image", "rm", ref, "--json"]);
  expect(rm.code).toBe(1);
  expect(JSON.parse(rm.stderr)).toMatchObject({ error: { code: "imageInUse" } });
  expect((await msb(b, ["kill", "from-tar"])).code).toBe(0);
  for (let i = 0; i < 50 && (await msb(b, ["rm", "from-tar"])).code !== 0; i++) await new Promise((r) => setTimeout(r, 200));

  const prune = await msb(b, ["image", "prune", "--json"]);
  expect(prune.code).toBe(0);
  expect(JSON.parse(prune.stdout)).toMatchObject({ imageRefsRemoved: 1, manifestsRemoved: 1 });
  expect((await msb(b, ["images", "--json"])).stdout.trim()).toBe("[]");
});
