// End-to-end: the Volume API with real VMs. Files written from the host through VolumeFs
// are read in the guest, files the guest writes are read back through VolumeFs, a link
// the guest plants pointing outside is never followed from the host; a disk volume is an
// ext4 virtio disk in the guest whose files outlive the sandbox.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidConfigError, Sandbox, SandboxFsOpsError, Volume } from "../src/index.js";
import { cleanup, useTempMsbHome, waitForAsync } from "./e2e-helpers.js";

useTempMsbHome();
let outside = "";
const made: Sandbox[] = [];

beforeAll(() => {
  outside = mkdtempSync(join(tmpdir(), "msb-vol-out-"));
  writeFileSync(join(outside, "secret"), "host secret\n");
});
afterAll(async () => {
  await cleanup(...made);
  if (outside) rmSync(outside, { recursive: true, force: true });
});

describe("Volume + VolumeFs with a sandbox", () => {
  it("host -> guest -> host through a named volume; guest-made links are not followed", async () => {
    const vol = await Volume.builder("e2e-data").label("suite", "e2e").create();
    const vfs = vol.fs();
    await vfs.write("/in/hello.txt", "from the host\n");
    const sink = await vfs.writeStream("in/big.bin");
    for (let i = 0; i < 8; i++) await sink.write(new Uint8Array(128 * 1024).fill(i));
    await sink.close();

    const sb = await Sandbox.builder("e2e-volfs").volume("/data", (m) => m.named("e2e-data")).create();
    made.push(sb);
    expect((await sb.exec("cat", ["/data/in/hello.txt"])).stdout()).toBe("from the host\n");
    expect((await sb.shell("wc -c < /data/in/big.bin")).stdout().trim()).toBe(String(8 * 128 * 1024));
    expect((await sb.shell("stat -c %a /data/in/hello.txt")).stdout().trim()).toBe("644");

    // guest -> host (a file, a directory, and a link to a host path outside the volume)
    await sb.shell(`mkdir -p /data/out && echo "from the guest" > /data/out/reply.txt && ln -s ${outside} /data/escape && ln -s ${outside}/secret /data/out/secret`);
    expect(await vfs.readToString("out/reply.txt")).toBe("from the guest\n");
    const names = (await vfs.list("/")).map((e) => `${e.name}:${e.kind}`).sort();
    expect(names).toEqual(["escape:symlink", "in:directory", "out:directory"]);
    for (const op of [() => vfs.read("escape/secret"), () => vfs.read("out/secret"), () => vfs.write("escape/planted", "x"), () => vfs.list("escape")]) {
      const e = await op().catch((x: unknown) => x);
      expect(e).toBeInstanceOf(SandboxFsOpsError);
      expect((e as SandboxFsOpsError).errno).toBe("ELOOP");
    }
    // The host's own directory is untouched.
    expect(readdirSync(outside)).toEqual(["secret"]);
    expect(readFileSync(join(outside, "secret"), "utf8")).toBe("host secret\n");

    // A host write while the sandbox runs is seen by the guest (once virtiofs' cache of
    // the old file times out: the new file was renamed over it).
    await vfs.write("in/hello.txt", "changed\n");
    expect(await waitForAsync(async () => (await sb.exec("cat", ["/data/in/hello.txt"])).stdout() === "changed\n", 10_000)).toBe(true);

    // In use: not removable while the sandbox runs.
    expect(await Volume.remove("e2e-data").catch((e: unknown) => e)).toBeInstanceOf(InvalidConfigError);
    const h = await Volume.get("e2e-data");
    expect(h.usedBytes).toBeGreaterThan(1024 * 1024 - 1);
    expect(h.labels).toEqual([["suite", "e2e"]]);

    await sb.stop();
    await sb.removePersisted();
    // The volume outlives its sandbox, then goes (links removed, not followed).
    expect(await vfs.readToString("out/reply.txt")).toBe("from the guest\n");
    await Volume.remove("e2e-data");
    expect((await Volume.list()).map((v) => v.name)).toEqual([]);
    expect(readdirSync(outside)).toEqual(["secret"]);
  });

  it("a disk volume is an ext4 virtio disk in the guest, kept across sandboxes", async () => {
    await Volume.builder("e2e-disk").disk().size(32).create();
    const one = await Sandbox.builder("e2e-disk1").volume("/disk", (m) => m.named("e2e-disk")).create();
    made.push(one);
    const mounts = (await one.exec("cat", ["/proc/mounts"])).stdout();
    expect(mounts).toMatch(/^\/dev\/vd[a-z] \/disk ext4 rw/m);
    expect((await one.shell("df -k /disk | tail -1")).stdout()).toMatch(/\s\/disk$/m);
    await one.shell("echo kept > /disk/state.txt && sync");
    await one.stop();
    await one.removePersisted();

    const two = await Sandbox.builder("e2e-disk2").volume("/ro", (m) => m.named("e2e-disk").readonly()).create();
    made.push(two);
    expect((await two.exec("cat", ["/ro/state.txt"])).stdout()).toBe("kept\n");
    expect((await two.shell("touch /ro/x 2>&1; echo $?")).stdout()).toMatch(/Read-only file system\n1\n$/);
    expect(await Volume.remove("e2e-disk").catch((e: unknown) => e)).toBeInstanceOf(InvalidConfigError);
    await two.stop();
    await two.removePersisted();
    await Volume.remove("e2e-disk");
  });
});
