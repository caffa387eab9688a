// Builder options that shape the guest: shell, scripts, patches, volumes, imageWith,
// logLevel; how they reach msb-runtime, the stored configuration and the guest.
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { InvalidConfigError, Sandbox, SandboxFsOpsError, type SandboxBuilder } from "../src/index.js";
import { parseStoredConfig, validateConfig } from "../src/config.js";
import { setNativeBinding } from "../src/native.js";
import { EventQueue, fakeNative, type FakeNative } from "./fake-native.js";

let fake: FakeNative;
let host: string;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative();
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-unit-home";
  host = mkdtempSync(join(tmpdir(), "msb-guest-unit-"));
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
  rmSync(host, { recursive: true, force: true });
});

function invalid(b: SandboxBuilder): InvalidConfigError {
  try {
    b.validate();
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidConfigError);
    return e as InvalidConfigError;
  }
  throw new Error("expected InvalidConfigError");
}

const B = (name = "g1") => Sandbox.builder(name);

describe("validation", () => {
  it("shell, scripts, logLevel", () => {
    const c = B().shell("/bin/bash").script("a", "1").script("b", "2").script("a", "3").logLevel("debug").validate();
    expect(c.shell).toBe("/bin/bash");
    expect(c.scripts).toEqual([
      ["a", "3"],
      ["b", "2"],
    ]);
    expect(c.logLevel).toBe("debug");
    for (const name of ["", "a/b", ".", "..", "x\0"]) {
      const e = invalid(B().script(name, "x"));
      expect(e.field).toBe("script");
      expect(e.message).toContain("script name");
    }
    expect(invalid(B().script("ok", 5 as unknown as string)).field).toBe("script");
    expect(invalid(B().shell("")).field).toBe("shell");
    expect(invalid(B().logLevel("loud" as "info")).field).toBe("logLevel");
  });

  it("imageWith: a disk path whatever it looks like, with an fstype", () => {
    const c = validateConfig({ name: "g1", env: [], image: "disk.qcow2", imageIsDisk: true, imageFstype: "ext4" }, "/home/u");
    expect(c.image).toBe("/home/u/disk.qcow2");
    expect(c.imageKind).toBe("path");
    expect(c.imageFstype).toBe("ext4");
    const b = B().imageWith((i) => i.disk("/d/disk.img").fstype("xfs")).validate();
    expect([b.image, b.imageKind, b.imageFstype]).toEqual(["/d/disk.img", "path", "xfs"]);
    expect(B().imageWith((i) => i.disk("/d/disk.img")).validate().imageFstype).toBeNull();
    // a later .image() replaces it
    expect(B().imageWith((i) => i.disk("/d/x").fstype("ext4")).image("alpine").validate()).toMatchObject({ imageKind: "oci", imageFstype: null });
    expect(invalid(B().imageWith((i) => i.fstype("ext4"))).field).toBe("image");
    expect(invalid(B().imageWith((i) => i.disk("/d/x").fstype("EXT4;rm"))).field).toBe("imageFstype");
  });

  it("volumes: kinds, readonly, names, tmpfs sizes", () => {
    const dir = join(host, "share");
    mkdirSync(dir);
    const c = B()
      .volume("/data/", (m) => m.bind(dir).readonly())
      .volume("/cache", (m) => m.named("cache-1"))
      .volume("/scratch", (m) => m.tmpfs({ sizeMiB: 16 }))
      .volume("/t2", (m) => m.tmpfs())
      .validate();
    expect(c.volumes).toEqual([
      { guestPath: "/data", kind: "bind", source: dir, readonly: true, sizeMiB: null },
      { guestPath: "/cache", kind: "named", source: "cache-1", readonly: false, sizeMiB: null },
      { guestPath: "/scratch", kind: "tmpfs", source: null, readonly: false, sizeMiB: 16 },
      { guestPath: "/t2", kind: "tmpfs", source: null, readonly: false, sizeMiB: null },
    ]);
  });

  it("bad volumes are InvalidConfigError (field volume) naming the path", () => {
    const file = join(host, "file");
    writeFileSync(file, "x");
    const cases: [SandboxBuilder, string][] = [
      [B().volume("relative/dir", (m) => m.tmpfs()), "relative/dir"],
      [B().volume("/a/../b", (m) => m.tmpfs()), "/a/../b"],
      [B().volume("/", (m) => m.tmpfs()), "/"],
      [B().volume("/x", (m) => m.tmpfs()).volume("/x/", (m) => m.tmpfs()), "/x"],
      [B().volume("/x", () => undefined), "/x"],
      [B().volume("/x", (m) => m.tmpfs().named("n")), "/x"],
      [B().volume("/x", (m) => m.bind(join(host, "missing"))), join(host, "missing")],
      [B().volume("/x", (m) => m.bind(file)), file],
      [B().volume("/x", (m) => m.named("bad/name")), "bad/name"],
      [B().volume("/x", (m) => m.tmpfs({ sizeMiB: 0 })), "/x"],
      [B().volume("/x", (m) => m.tmpfs().readonly("yes" as unknown as boolean)), "/x"],
    ];
    for (const [b, named] of cases) {
      const e = invalid(b);
      expect(e.field).toBe("volume");
      expect(e.message).toContain(named);
    }
  });

  it("patches: absolute guest paths, modes, host sources that exist", () => {
    const f = join(host, "f.txt");
    writeFileSync(f, "x");
    const c = B()
      .patch((p) => p.text("/etc/motd", "hi\n", { mode: 0o600 }).file("/bin/tool", Uint8Array.of(1, 2)).copyFile(f, "/f"))
      .patch((p) => p.copyDir(host, "/h").symlink("/f", "/l").mkdir("/d", { mode: 0o700 }).remove("/etc/issue").append("/etc/motd", "more"))
      .validate();
    expect(c.patches).toEqual([
      { kind: "text", path: "/etc/motd", source: null, target: null, mode: 0o600, bytes: 3 },
      { kind: "file", path: "/bin/tool", source: null, target: null, mode: null, bytes: 2 },
      { kind: "copyFile", path: "/f", source: f, target: null, mode: null, bytes: null },
      { kind: "copyDir", path: "/h", source: host, target: null, mode: null, bytes: null },
      { kind: "symlink", path: "/l", source: null, target: "/f", mode: null, bytes: null },
      { kind: "mkdir", path: "/d", source: null, target: null, mode: 0o700, bytes: null },
      { kind: "remove", path: "/etc/issue", source: null, target: null, mode: null, bytes: null },
      { kind: "append", path: "/etc/motd", source: null, target: null, mode: null, bytes: 4 },
    ]);
    const missing = join(host, "not-there");
    const cases: [SandboxBuilder, string][] = [
      [B().patch((p) => p.copyFile(missing, "/x")), missing],
      [B().patch((p) => p.copyDir(missing, "/x")), missing],
      [B().patch((p) => p.copyDir(f, "/x")), f],
      [B().patch((p) => p.copyFile(host, "/x")), host],
      [B().patch((p) => p.text("etc/motd", "x")), "etc/motd"],
      [B().patch((p) => p.text("/x", "x", { mode: 0o20000 })), "mode"],
      [B().patch((p) => p.file("/x", "str" as unknown as Uint8Array).text("/y", 5 as unknown as string)), "/y"],
      [B().patch((p) => p.symlink("", "/l")), "target"],
    ];
    for (const [b, named] of cases) {
      const e = invalid(b);
      expect(e.field).toBe("patch");
      expect(e.message).toContain(named);
    }
  });

  it("a missing patch source fails create() before anything boots", async () => {
    const e = await B()
      .patch((p) => p.copyFile(join(host, "gone"), "/x"))
      .create()
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect(fake.configs).toEqual([]);
  });
});

describe("create", () => {
  it("sends mounts, imageFstype and logLevel to the runtime, and keeps them in the stored configuration", async () => {
    const dir = join(host, "share");
    mkdirSync(dir);
    const sb = await B()
      .volume("/data", (m) => m.bind(dir))
      .volume("/t", (m) => m.tmpfs({ sizeMiB: 8 }).readonly())
      .imageWith((i) => i.disk(join(host, "disk.img")).fstype("ext4"))
      .logLevel("trace")
      .hostname("h1")
      .workdir("/w")
      .env("A", "1")
      .user("nobody")
      .entrypoint(["/bin/app"])
      .create();
    const cfg = fake.configs[0]!;
    expect(cfg.mounts).toEqual([
      { guestPath: "/data", kind: "bind", source: dir, readonly: false, sizeMiB: null },
      { guestPath: "/t", kind: "tmpfs", source: null, readonly: true, sizeMiB: 8 },
    ]);
    expect(cfg.imageFstype).toBe("ext4");
    expect(cfg.image).toBe(join(host, "disk.img"));
    expect(cfg.logLevel).toBe("trace");
    const c = sb.config();
    expect(c).toMatchObject({ hostname: "h1", workdir: "/w", env: [["A", "1"]], user: "nobody", entrypoint: ["/bin/app"], logLevel: "trace", imageFstype: "ext4" });
    expect(c.volumes).toHaveLength(2);
    const stored = (await Sandbox.get("g1")).config();
    expect(stored).toEqual(c);
    // config() is a copy
    c.volumes.pop();
    c.env.push(["B", "2"]);
    expect(sb.config().volumes).toHaveLength(2);
    expect(sb.config().env).toHaveLength(1);
    await sb.stop();
  });

  it("installs scripts, then applies patches in order, before create() resolves", async () => {
    const f = join(host, "tool.sh");
    writeFileSync(f, "#!/bin/sh\necho tool\n");
    chmodSync(f, 0o751);
    const tree = join(host, "tree");
    mkdirSync(join(tree, "sub"), { recursive: true });
    writeFileSync(join(tree, "sub", "x"), "X");
    fake.fsOf("g1").put("/etc/issue", "old");
    fake.fsOf("g1").put("/etc/link", "old link place");
    const sb = await B()
      .script("hello", "#!/bin/sh\necho hello\n")
      .patch((p) =>
        p
          .text("/etc/motd", "hi\n", { mode: 0o600 })
          .append("/etc/motd", "more\n")
          .file("/opt/bin/blob", Uint8Array.of(1, 2, 3), { mode: 0o755 })
          .copyFile(f, "/usr/local/bin/tool")
          .copyDir(tree, "/srv/tree")
          .symlink("/etc/motd", "/etc/link")
          .mkdir("/shared", { mode: 0o777 })
          .remove("/etc/issue")
          .remove("/does/not/exist"),
      )
      .create();
    const g = fake.fsOf("g1");
    const fs = sb.fs();
    expect(g.text("/.msb/scripts/hello")).toBe("#!/bin/sh\necho hello\n");
    expect((await fs.stat("/.msb/scripts/hello")).mode).toBe(0o755);
    expect(g.text("/etc/motd")).toBe("hi\nmore\n");
    expect((await fs.stat("/etc/motd")).mode).toBe(0o600);
    expect((await fs.stat("/opt/bin/blob")).mode).toBe(0o755);
    expect(g.text("/usr/local/bin/tool")).toBe("#!/bin/sh\necho tool\n");
    expect((await fs.stat("/usr/local/bin/tool")).mode).toBe(0o751);
    expect(g.text("/srv/tree/sub/x")).toBe("X");
    expect(g.readlink("/etc/link")).toBe("/etc/motd");
    expect((await fs.stat("/shared")).mode).toBe(0o777);
    expect(await fs.exists("/etc/issue")).toBe(false);
    // the scripts came first: the first fs operations made /.msb/scripts
    expect(fake.clients[0]!.fsOps[0]).toEqual({ mkdir: { path: "/.msb/scripts", mode: 0o755, recursive: true } });
    await sb.stop();
  });

  it("a restart installs the scripts again but does not apply the patches again", async () => {
    const sb = await B()
      .script("s", "#!/bin/sh\n")
      .patch((p) => p.text("/p", "once"))
      .create();
    await sb.fs().remove("/p");
    await sb.stop();
    const again = await Sandbox.start("g1");
    const ops = fake.clients[1]!.fsOps;
    expect(ops.some((o) => "write" in o && o.write.path === "/.msb/scripts/s")).toBe(true);
    expect(ops.some((o) => "write" in o && o.write.path === "/p")).toBe(false);
    expect(await again.fs().exists("/p")).toBe(false);
    await again.stop();
  });

  it("a patch the guest refuses fails create(): the sandbox is killed and removed", async () => {
    fake.fsHook = (op) => {
      if (!("write" in op) || op.write.path !== "/ro/file") return undefined;
      const q = new EventQueue();
      q.end({ kind: "fsError", errno: "EROFS", message: "read-only" });
      return { next: () => q.next() };
    };
    const e = await B()
      .patch((p) => p.text("/ro/file", "x"))
      .create()
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SandboxFsOpsError);
    expect((e as SandboxFsOpsError).errno).toBe("EROFS");
    expect((e as SandboxFsOpsError).path).toBe("/ro/file");
    expect(fake.records.has("g1")).toBe(false);
  });

  it("a bind source that disappeared fails a restart before it boots", async () => {
    const dir = join(host, "share");
    mkdirSync(dir);
    const sb = await B()
      .volume("/data", (m) => m.bind(dir))
      .create();
    await sb.stop();
    rmSync(dir, { recursive: true });
    const e = await Sandbox.start("g1").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect((e as InvalidConfigError).field).toBe("volume");
    expect((e as Error).message).toContain(dir);
    expect(fake.configs).toHaveLength(1);
  });

  it("reads configurations stored before these options existed", () => {
    const c = parseStoredConfig(JSON.stringify({ name: "old", cpus: 1, memoryMib: 512 }), "old");
    expect(c).toMatchObject({ shell: null, scripts: [], patches: [], volumes: [], imageFstype: null, logLevel: null });
  });
});
