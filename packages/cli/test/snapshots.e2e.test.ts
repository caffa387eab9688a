// End-to-end: msb snapshot create / ls / inspect / verify / save / load / rm, and
// msb run --snapshot, on a real VM.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { open } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";

const bin = fileURLToPath(new URL("../dist/bin.js", import.meta.url));
let home = "";

function msb(args: string[], msbHome = home): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env: { ...process.env, MSB_HOME: msbHome }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

beforeAll(() => {
  home = mkdtempSync(join(tmpdir(), "msb-"));
});
afterAll(async () => {
  await msb(["rm", "--force", "snap-cli"]);
  if (home) rmSync(home, { recursive: true, force: true });
});

it("create from a stopped sandbox, list as JSON, inspect, verify, detect a changed byte, remove", async () => {
  expect((await msb(["create", "--name", "snap-cli"])).code).toBe(0);
  expect((await msb(["exec", "snap-cli", "--", "sh", "-c", "echo marked > /root/mark.txt"])).code).toBe(0);
  const running = await msb(["snapshot", "create", "s1", "--from", "snap-cli"]);
  expect([running.code, running.stderr]).toEqual([1, expect.stringContaining("stop it first")]);
  expect((await msb(["stop", "snap-cli"])).code).toBe(0);

  const made = await msb(["snapshot", "create", "s1", "--from", "snap-cli", "--integrity", "-l", "team=a"]);
  expect(made.code, made.stderr).toBe(0);
  expect(made.stdout).toMatch(/^s1 sha256:[0-9a-f]{64}\n$/);
  const digest = made.stdout.trim().split(" ")[1];

  const again = await msb(["snapshot", "create", "s1", "--from", "snap-cli", "--json"]);
  expect(again.code).toBe(1);
  expect(JSON.parse(again.stderr)).toMatchObject({ error: { code: "snapshotAlreadyExists" } });

  const ls = await msb(["snapshot", "ls", "--json"]);
  expect(ls.code).toBe(0);
  expect((JSON.parse(ls.stdout) as { name: string; digest: string; sizeBytes: number }[]).map((s) => [s.name, s.digest, s.sizeBytes])).toEqual([["s1", digest, 4 * 2 ** 30]]);
  expect((await msb(["snapshots"])).stdout.split("\n")[0]).toMatch(/^NAME\s+DIGEST\s+IMAGE\s+SIZE\s+CREATED$/);

  const inspect = await msb(["snapshot", "inspect", "s1"]);
  expect(JSON.parse(inspect.stdout)).toMatchObject({ name: "s1", digest, sourceSandbox: "snap-cli", labels: { team: "a" }, integrity: { algorithm: "msb-sparse-sha256-v1" } });

  const ok = await msb(["snapshot", "verify", "s1"]);
  expect([ok.code, ok.stdout]).toEqual([0, expect.stringMatching(/^s1: verified sha256:[0-9a-f]{64}\n$/)]);
  // save, then load on another MSB_HOME and boot on it there.
  const arc = join(home, "s1.tar");
  const saved = await msb(["snapshot", "save", "s1", arc]);
  expect([saved.code, saved.stderr, saved.stdout]).toEqual([0, "", expect.stringMatching(/^saved s1 to .*s1\.tar \([0-9.]+ [KMG]i?B\)\n$/)]);
  const exists = await msb(["snapshot", "save", "s1", arc, "--json"]);
  expect([exists.code, JSON.parse(exists.stderr)]).toEqual([2, { error: expect.objectContaining({ code: "invalidConfig" }) }]);
  const home2 = join(home, "home2");
  const loaded = await msb(["snapshot", "load", arc, "--json"], home2);
  expect(loaded.code, loaded.stderr).toBe(0);
  expect(JSON.parse(loaded.stdout)).toMatchObject({ name: "s1", digest, path: join(home2, "snapshots", "s1") });
  const twice = await msb(["snapshot", "load", arc], home2);
  expect([twice.code, twice.stderr]).toEqual([1, expect.stringContaining("exists")]);
  expect((await msb(["snapshot", "verify", "s1"], home2)).code).toBe(0);
  expect((await msb(["exec", "snap-cli", "--", "true"])).code).not.toBe(0); // the source is stopped
  const ran = await msb(["run", "--snapshot", "s1", "--", "cat", "/root/mark.txt"], home2);
  expect([ran.code, ran.stdout]).toEqual([0, "marked\n"]);
  const both = await msb(["run", "--snapshot", "s1", "alpine", "--", "true"], home2);
  expect([both.code, both.stderr]).toEqual([2, expect.stringContaining("fromSnapshot")]);

  const fh = await open(join(home, "snapshots", "s1", "upper.ext4"), "r+");
  await fh.write(Buffer.from([1]), 0, 1, 0);
  await fh.close();
  const bad = await msb(["snapshot", "verify", "s1", "--json"]);
  expect(bad.code).toBe(1);
  expect(JSON.parse(bad.stderr)).toMatchObject({ error: { code: "snapshotIntegrity" } });

  expect(await msb(["snapshot", "rm", "s1"])).toMatchObject({ code: 0, stdout: "removed s1\n" });
  expect((await msb(["snapshot", "ls", "--json"])).stdout).toBe("[]\n");
});
