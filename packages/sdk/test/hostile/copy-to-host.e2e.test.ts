// Hostile guest: links a root guest makes in a bind volume, aimed at host files and
// directories outside the destination, against copyToHost / copyFromHost. Nothing is
// ever written, chmod-ed or read outside what the caller named.
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Sandbox } from "../../src/index.js";
import { cleanup, useTempMsbHome } from "../e2e-helpers.js";

useTempMsbHome();
let host = "";
let vol = "";
let outside = "";
let victim = "";
let sb: Sandbox | undefined;

beforeAll(async () => {
  host = mkdtempSync(join(tmpdir(), "msb-hostile-cp-"));
  vol = join(host, "vol");
  outside = join(host, "outside");
  victim = join(host, "victim.txt");
  mkdirSync(vol);
  mkdirSync(outside);
  chmodSync(outside, 0o700);
  writeFileSync(victim, "precious");
  chmodSync(victim, 0o600);
  sb = await Sandbox.builder("hostile-cp").volume("/data", (m) => m.bind(vol)).create();
  // Something to copy out: a file, and a tree with a subdirectory of many files.
  await sb.shell("mkdir -p /tmp/g/sub && echo guest > /tmp/f && for i in $(seq 1 200); do echo $i > /tmp/g/sub/f$i; done");
});
afterAll(async () => {
  await cleanup(sb);
  if (host) rmSync(host, { recursive: true, force: true });
});

function untouched(): void {
  expect(readdirSync(outside)).toEqual([]);
  expect(statSync(outside).mode & 0o7777).toBe(0o700);
  expect(readFileSync(victim, "utf8")).toBe("precious");
  expect(statSync(victim).mode & 0o7777).toBe(0o600);
}

describe("copyToHost into a directory the guest can write", () => {
  it("a guest link at the destination to a host directory is replaced, not followed", async () => {
    expect((await sb!.shell(`ln -s ${outside} /data/outdir && echo ok`)).stdout()).toBe("ok\n");
    expect(lstatSync(join(vol, "outdir")).isSymbolicLink()).toBe(true);
    await sb!.fs().copyToHost("/tmp/g", join(vol, "outdir"));
    untouched();
    expect(lstatSync(join(vol, "outdir")).isDirectory()).toBe(true);
    expect(readdirSync(join(vol, "outdir", "sub"))).toHaveLength(200);
  });

  it("a guest link at the destination to a host file is replaced, not written through", async () => {
    expect((await sb!.shell(`ln -s ${victim} /data/outfile && echo ok`)).stdout()).toBe("ok\n");
    await sb!.fs().copyToHost("/tmp/f", join(vol, "outfile"));
    untouched();
    expect(lstatSync(join(vol, "outfile")).isFile()).toBe(true);
    expect(readFileSync(join(vol, "outfile"), "utf8")).toBe("guest\n");
  });

  it("a guest swapping a just-made directory for a link (the race) never gets a write outside: 10 of 10", async () => {
    // The guest watches for out/sub and swaps it for a link to the host directory.
    const racer = await sb!.shellStream(
      `while :; do if [ -d /data/out/sub ] && [ ! -L /data/out/sub ]; then mv /data/out/sub /data/out/moved$$RANDOM 2>/dev/null; ln -s ${outside} /data/out/sub 2>/dev/null; fi; done`,
    );
    let swapped = 0;
    try {
      for (let i = 0; i < 10; i++) {
        rmSync(join(vol, "out"), { recursive: true, force: true });
        await sb!.fs().copyToHost("/tmp/g", join(vol, "out")).catch((e: unknown) => {
          // Losing the race may fail the copy (ELOOP/ENOTDIR/ENOENT on a swapped name); it never escapes.
          expect((e as { code?: string }).code).toBe("sandboxFsOps");
        });
        untouched();
        if (readdirSync(join(vol, "out")).some((n) => n.startsWith("moved"))) swapped++;
      }
    } finally {
      await racer.kill().catch(() => undefined);
    }
    // The guest really did race (otherwise this test proves nothing).
    expect(swapped).toBeGreaterThan(0);
  });
});

describe("copyFromHost out of a directory the guest can write", () => {
  it("a guest link to a host file is copied as a link, never read through", async () => {
    expect((await sb!.shell(`ln -s ${victim} /data/steal && echo ok`)).stdout()).toBe("ok\n");
    await sb!.fs().copyFromHost(join(vol, "steal"), "/tmp/stolen");
    expect((await sb!.exec("readlink", ["/tmp/stolen"])).stdout()).toBe(`${victim}\n`);
    // The guest's own view of that path: a dangling link (the host file is not in the guest).
    expect((await sb!.shell("cat /tmp/stolen 2>&1; echo $?")).stdout()).not.toContain("precious");
    expect(existsSync(victim)).toBe(true);
  });
});
