// End-to-end: msb volume create / ls / rm with msb run -v NAME:/path, for a directory and
// a disk volume (the default image, two VMs each).
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";

const bin = fileURLToPath(new URL("../dist/bin.js", import.meta.url));
let home = "";

beforeAll(() => {
  home = mkdtempSync(join(tmpdir(), "msb-"));
});
afterAll(() => {
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

it.each([
  ["dir", "cli-dir", []],
  ["disk", "cli-disk", ["--kind", "disk", "--size", "32M"]],
] as const)("a %s volume: create, write in one run, read in the next, ls, rm", async (kind, name, flags) => {
  expect(await msb(["volume", "create", name, ...flags])).toMatchObject({ code: 0, stdout: `${name}\n` });
  const w = await msb(["run", "-v", `${name}:/data`, "--", "sh", "-c", "echo persisted > /data/x.txt"]);
  expect(w.stderr).toBe("");
  expect(w.code).toBe(0);
  expect(await msb(["run", "-v", `${name}:/data`, "--", "cat", "/data/x.txt"])).toMatchObject({ code: 0, stdout: "persisted\n" });
  const ls = JSON.parse((await msb(["volume", "ls", "--json"])).stdout) as { name: string; kind: string }[];
  expect(ls.find((v) => v.name === name)?.kind).toBe(kind);
  expect(await msb(["volume", "rm", name])).toMatchObject({ code: 0, stdout: `removed ${name}\n` });
  expect((await msb(["volumes", "-q"])).stdout).not.toContain(name);
});
