// End-to-end: sb.fs() on a real VM: every operation, errno mapping, a 256 MiB file
// through writeStream/readStream, copyFromHost/copyToHost of a tree.
import { createHash } from "node:crypto";
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidConfigError, Sandbox, SandboxFsOpsError, type SandboxFs } from "../src/index.js";
import { cleanup, useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();

let sb: Sandbox | undefined;
let host = "";
const box = (): Sandbox => {
  if (!sb) throw new Error("sandbox was not created");
  return sb;
};
const fs = (): SandboxFs => box().fs();

beforeAll(async () => {
  host = mkdtempSync(join(tmpdir(), "msb-fs-e2e-"));
  sb = await Sandbox.builder("e2e-fs").memory(768).create();
});
afterAll(async () => {
  await cleanup(sb);
  if (host) rmSync(host, { recursive: true, force: true });
});

async function fsError(p: Promise<unknown>): Promise<SandboxFsOpsError> {
  const e = await p.catch((x: unknown) => x);
  expect(e).toBeInstanceOf(SandboxFsOpsError);
  return e as SandboxFsOpsError;
}

describe("fs operations", () => {
  it("write / read / readToString / append / exists / stat", async () => {
    await fs().write("/tmp/hello.txt", "héllo\n");
    expect(await fs().readToString("/tmp/hello.txt")).toBe("héllo\n");
    expect((await box().exec("cat", ["/tmp/hello.txt"])).stdout()).toBe("héllo\n");
    await fs().write("/tmp/hello.txt", "more\n", { append: true });
    expect(await fs().readToString("/tmp/hello.txt")).toBe("héllo\nmore\n");
    await fs().write("/tmp/bin", Uint8Array.of(0, 1, 254, 255), { mode: 0o700 });
    expect(await fs().read("/tmp/bin")).toEqual(Uint8Array.of(0, 1, 254, 255));
    const st = await fs().stat("/tmp/bin");
    expect(st).toMatchObject({ name: "bin", kind: "file", size: 4, mode: 0o700 });
    expect(Math.abs(st.modified.getTime() - Date.now())).toBeLessThan(5 * 60_000);
    expect((await box().exec("stat", ["-c", "%a", "/tmp/bin"])).stdout()).toBe("700\n");
    expect(await fs().exists("/tmp/bin")).toBe(true);
    expect(await fs().exists("/tmp/nothing-here")).toBe(false);
    expect((await fs().stat("/bin/sh")).kind).toBe("symlink");
    expect((await fs().stat("/tmp")).kind).toBe("dir");
  });

  it("mkdir (recursive, modes) / list / copy / rename / symlink / remove / removeDir", async () => {
    await fs().mkdir("/work/a/b");
    await fs().mkdir("/work/shared", { mode: 0o777 });
    expect((await fs().stat("/work/shared")).mode).toBe(0o777);
    await fs().mkdir("/work/private", { mode: 0o700 });
    expect((await fs().stat("/work/private")).mode).toBe(0o700);
    await fs().write("/work/a/b/f.txt", "F");
    await fs().symlink("b/f.txt", "/work/a/link");
    const entries = await fs().list("/work/a");
    expect(entries.map((e) => [e.name, e.kind])).toEqual([
      ["b", "dir"],
      ["link", "symlink"],
    ]);
    expect(entries[0]!.modified).toBeInstanceOf(Date);
    expect((await box().exec("cat", ["/work/a/link"])).stdout()).toBe("F");
    await fs().copy("/work/a", "/work/a2");
    expect(await fs().readToString("/work/a2/b/f.txt")).toBe("F");
    expect((await fs().stat("/work/a2/link")).kind).toBe("symlink");
    await fs().rename("/work/a2", "/work/a3");
    expect(await fs().exists("/work/a2")).toBe(false);
    await fs().remove("/work/a3/link");
    expect((await fs().list("/work/a3")).map((e) => e.name)).toEqual(["b"]);
    expect((await fsError(fs().removeDir("/work/a3"))).errno).toBe("ENOTEMPTY");
    await fs().removeDir("/work/a3", { recursive: true });
    expect(await fs().exists("/work/a3")).toBe(false);
    await fs().mkdir("/work/empty", { recursive: false });
    await fs().removeDir("/work/empty");
    expect(await fs().exists("/work/empty")).toBe(false);
  });

  it("maps guest errors: ENOENT, EISDIR, ENOTDIR, EEXIST, EACCES-free root, EINVAL-free paths", async () => {
    await fs().write("/tmp/file", "x");
    const cases: [() => Promise<unknown>, string, string][] = [
      [() => fs().read("/no/such/file"), "ENOENT", "/no/such/file"],
      [() => fs().readToString("/tmp"), "EISDIR", "/tmp"],
      [() => fs().list("/tmp/file"), "ENOTDIR", "/tmp/file"],
      [() => fs().list("/no/such/dir"), "ENOENT", "/no/such/dir"],
      [() => fs().remove("/tmp"), "EISDIR", "/tmp"],
      [() => fs().removeDir("/tmp/file"), "ENOTDIR", "/tmp/file"],
      [() => fs().write("/no/such/dir/f", "x"), "ENOENT", "/no/such/dir/f"],
      [() => fs().write("/tmp", "x"), "EISDIR", "/tmp"],
      [() => fs().mkdir("/tmp/file/sub"), "ENOTDIR", "/tmp/file/sub"],
      [() => fs().mkdir("/tmp", { recursive: false }), "EEXIST", "/tmp"],
      [() => fs().symlink("x", "/tmp/file"), "EEXIST", "/tmp/file"],
      [() => fs().rename("/no/such", "/tmp/x"), "ENOENT", "/no/such"],
      [() => fs().stat("/no/such"), "ENOENT", "/no/such"],
    ];
    for (const [p, errno, path] of cases) {
      const e = await fsError(p());
      expect(e.code).toBe("sandboxFsOps");
      expect(e.errno, path).toBe(errno);
      expect(e.path).toBe(path);
      expect(e.message).toContain(path);
    }
    // as another user, permissions apply: nobody cannot write to /root (0700)
    const perm = await box().execWith("sh", (b) => b.args(["-c", "echo x > /root/f"]).user("nobody"));
    expect(perm.code).toBe(1);
    expect(perm.stderr()).toBe("sh: can't create /root/f: Permission denied\n");
    // paths are checked before anything is sent
    await expect(fs().read("relative/path")).rejects.toBeInstanceOf(InvalidConfigError);
    await expect(fs().read("/a/../etc/passwd")).rejects.toBeInstanceOf(InvalidConfigError);
  });
});

describe("large files and host copies", () => {
  it("a 256 MiB file round-trips byte-exact through writeStream / readStream", async () => {
    const chunk = Buffer.alloc(1 << 20);
    const wrote = createHash("sha256");
    const ws = await fs().writeStream("/tmp/big.bin");
    for (let i = 0; i < 256; i++) {
      chunk.fill(i);
      chunk.writeUInt32BE(i * 2654435761 >>> 0, 100);
      wrote.update(chunk);
      await ws.write(chunk);
    }
    await ws.close();
    expect((await fs().stat("/tmp/big.bin")).size).toBe(256 << 20);
    const read = createHash("sha256");
    let n = 0;
    for await (const c of await fs().readStream("/tmp/big.bin")) {
      read.update(c);
      n += c.byteLength;
    }
    expect(n).toBe(256 << 20);
    const digest = wrote.digest("hex");
    expect(read.digest("hex")).toBe(digest);
    expect((await box().exec("sha256sum", ["/tmp/big.bin"])).stdout().split(" ")[0]).toBe(digest);
    await fs().remove("/tmp/big.bin");
  }, 300_000);

  it("copyFromHost / copyToHost: a tree with modes and a symlink, both ways", async () => {
    const src = join(host, "src");
    mkdirSync(join(src, "bin"), { recursive: true });
    mkdirSync(join(src, "data", "deep"), { recursive: true });
    writeFileSync(join(src, "README"), "read me\n");
    writeFileSync(join(src, "bin", "tool"), "#!/bin/sh\necho tool ran\n");
    chmodSync(join(src, "bin", "tool"), 0o755);
    writeFileSync(join(src, "data", "secret"), "s");
    chmodSync(join(src, "data", "secret"), 0o600);
    writeFileSync(join(src, "data", "deep", "big"), Buffer.alloc(3 << 20, 0x5a));
    symlinkSync("../README", join(src, "data", "readme-link"));
    chmodSync(join(src, "data"), 0o750);

    await fs().copyFromHost(src, "/opt/tree");
    expect((await box().exec("/opt/tree/bin/tool")).stdout()).toBe("tool ran\n");
    const modes = await box().shell("stat -c '%n %a' /opt/tree/bin/tool /opt/tree/data /opt/tree/data/secret; readlink /opt/tree/data/readme-link; cat /opt/tree/data/readme-link; wc -c < /opt/tree/data/deep/big");
    expect(modes.stdout()).toBe("/opt/tree/bin/tool 755\n/opt/tree/data 750\n/opt/tree/data/secret 600\n../README\nread me\n3145728\n");

    // changed in the guest, then back to the host
    await box().shell("echo added > /opt/tree/data/new.txt && chmod 640 /opt/tree/data/new.txt && ln -s /etc/passwd /opt/tree/abs-link");
    const back = join(host, "back");
    await fs().copyToHost("/opt/tree", back);
    expect(readdirSync(back).sort()).toEqual(["README", "abs-link", "bin", "data"]);
    expect(readFileSync(join(back, "README"), "utf8")).toBe("read me\n");
    expect(statSync(join(back, "bin", "tool")).mode & 0o777).toBe(0o755);
    expect(statSync(join(back, "data")).mode & 0o777).toBe(0o750);
    expect(statSync(join(back, "data", "secret")).mode & 0o777).toBe(0o600);
    expect(statSync(join(back, "data", "new.txt")).mode & 0o777).toBe(0o640);
    expect(readFileSync(join(back, "data", "new.txt"), "utf8")).toBe("added\n");
    expect(readFileSync(join(back, "data", "deep", "big"))).toEqual(Buffer.alloc(3 << 20, 0x5a));
    // links come back as links, never followed on the host
    expect(lstatSync(join(back, "data", "readme-link")).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(back, "data", "readme-link"))).toBe("../README");
    expect(lstatSync(join(back, "abs-link")).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(back, "abs-link"))).toBe("/etc/passwd");
  });
});
