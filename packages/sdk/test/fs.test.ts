import { lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync, chmodSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DEFAULT_MAX_OUTPUT_BYTES, InvalidConfigError, OutputLimitError, ProtocolError, Sandbox, SandboxFsOpsError, SandboxNotRunningError } from "../src/index.js";
import { checkEntryName } from "../src/fs.js";
import { setNativeBinding, type NativeFsEntry } from "../src/native.js";
import { EventQueue, fakeNative, type FakeNative } from "./fake-native.js";

let fake: FakeNative;
let host: string;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative();
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-unit-home";
  host = mkdtempSync(join(tmpdir(), "msb-fs-unit-"));
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
  rmSync(host, { recursive: true, force: true });
});

async function box(): Promise<Sandbox> {
  return Sandbox.builder("f1").create();
}

async function fsErr(p: Promise<unknown>): Promise<SandboxFsOpsError> {
  const e = await p.catch((x: unknown) => x);
  expect(e).toBeInstanceOf(SandboxFsOpsError);
  return e as SandboxFsOpsError;
}

describe("sb.fs() operations", () => {
  it("write, read, readToString, exists, stat", async () => {
    const fs = (await box()).fs();
    await fs.write("/tmp/a.txt", "héllo");
    expect(await fs.readToString("/tmp/a.txt")).toBe("héllo");
    await fs.write("/tmp/b.bin", Uint8Array.of(0, 255, 1), { mode: 0o600 });
    expect(await fs.read("/tmp/b.bin")).toEqual(Uint8Array.of(0, 255, 1));
    await fs.write("/tmp/a.txt", " more", { append: true });
    expect(await fs.readToString("/tmp/a.txt")).toBe("héllo more");
    await fs.write("/tmp/empty", "");
    expect(await fs.read("/tmp/empty")).toEqual(new Uint8Array());
    expect(await fs.exists("/tmp/a.txt")).toBe(true);
    expect(await fs.exists("/tmp/nope")).toBe(false);
    const st = await fs.stat("/tmp/b.bin");
    expect(st).toMatchObject({ name: "b.bin", kind: "file", size: 3, mode: 0o600 });
    expect(st.modified).toBeInstanceOf(Date);
    expect(fake.clients[0]!.fsOps[0]).toEqual({ write: { path: "/tmp/a.txt", mode: null, append: false } });
  });

  it("list, mkdir (recursive by default), removeDir, remove, copy, rename, symlink", async () => {
    const fs = (await box()).fs();
    await fs.mkdir("/d/e/f");
    await fs.mkdir("/d/e/f"); // existing is fine
    await fs.write("/d/e/f/x", "1");
    await fs.symlink("x", "/d/e/f/l");
    const list = await fs.list("/d/e/f");
    expect(list.map((e) => [e.name, e.kind])).toEqual([
      ["l", "symlink"],
      ["x", "file"],
    ]);
    expect(list[1]!.modified).toBeInstanceOf(Date);
    await fs.copy("/d", "/d2");
    expect(await fs.readToString("/d2/e/f/x")).toBe("1");
    await fs.rename("/d2", "/d3");
    expect(await fs.exists("/d2")).toBe(false);
    expect(await fs.exists("/d3/e/f/l")).toBe(true);
    await fs.remove("/d3/e/f/l");
    expect((await fs.list("/d3/e/f")).map((e) => e.name)).toEqual(["x"]);
    expect((await fsErr(fs.removeDir("/d3"))).errno).toBe("ENOTEMPTY");
    await fs.removeDir("/d3", { recursive: true });
    expect(await fs.exists("/d3")).toBe(false);
    expect((await fsErr(fs.mkdir("/d", { recursive: false }))).errno).toBe("EEXIST");
  });

  it("maps guest errors to SandboxFsOpsError with errno and path", async () => {
    const fs = (await box()).fs();
    await fs.write("/tmp/f", "x");
    const cases: [() => Promise<unknown>, string, string][] = [
      [() => fs.read("/nope"), "ENOENT", "/nope"],
      [() => fs.read("/tmp"), "EISDIR", "/tmp"],
      [() => fs.list("/tmp/f"), "ENOTDIR", "/tmp/f"],
      [() => fs.remove("/tmp"), "EISDIR", "/tmp"],
      [() => fs.removeDir("/tmp/f"), "ENOTDIR", "/tmp/f"],
      [() => fs.write("/missing/dir/f", "x"), "ENOENT", "/missing/dir/f"],
      [() => fs.mkdir("/tmp/f/sub"), "ENOTDIR", "/tmp/f/sub"],
      [() => fs.symlink("x", "/tmp/f"), "EEXIST", "/tmp/f"],
      [() => fs.stat("/nope"), "ENOENT", "/nope"],
    ];
    for (const [p, errno, path] of cases) {
      const e = await fsErr(p());
      expect(e.code).toBe("sandboxFsOps");
      expect(e.errno).toBe(errno);
      expect(e.path).toBe(path);
      expect(e.message).toContain(path);
      expect(e.message).toContain(errno);
    }
    fake.fsOf("f1").readonly.push("/ro");
    fake.fsOf("f1").mkdirp("/ro");
    expect((await fsErr(fs.write("/ro/x", "1"))).errno).toBe("EROFS");
    fake.fsOf("f1").capped = { prefix: "/small", capacity: 10 };
    fake.fsOf("f1").mkdirp("/small");
    expect((await fsErr(fs.write("/small/x", "0123456789AB"))).errno).toBe("ENOSPC");
  });

  it("validates paths before asking the guest (absolute, no NUL, no ..)", async () => {
    const fs = (await box()).fs();
    for (const [f, field] of [
      [() => fs.read("relative"), "path"],
      [() => fs.write("/a\0b", "x"), "path"],
      [() => fs.list("/a/../etc"), "path"],
      [() => fs.copy("rel", "/x"), "src"],
      [() => fs.rename("/x", "rel"), "dst"],
      [() => fs.symlink("", "/l"), "target"],
      [() => fs.mkdir("/x", { mode: 0o10000 }), "mode"],
      [() => fs.write("/x", 5 as unknown as string), "data"],
    ] as const) {
      const e = await (f as () => Promise<unknown>)().catch((x: unknown) => x);
      expect(e).toBeInstanceOf(InvalidConfigError);
      expect((e as InvalidConfigError).field).toBe(field);
    }
    expect(fake.clients[0]!.fsOps).toEqual([]);
  });

  it("a path longer than PATH_MAX is InvalidConfigError naming the field, before the guest is asked", async () => {
    const fs = (await box()).fs();
    const long = "/" + "a".repeat(5000);
    const before = fake.clients[0]!.fsOps.length;
    await expect(fs.read(long)).rejects.toMatchObject({ code: "invalidConfig", field: "path" });
    await expect(fs.rename("/x", long)).rejects.toMatchObject({ code: "invalidConfig", field: "dst" });
    await expect(fs.symlink(long, "/l")).rejects.toMatchObject({ code: "invalidConfig", field: "target" });
    expect(fake.clients[0]!.fsOps.length).toBe(before);
  });

  it("mkdir sets modes the guest's umask removed, but leaves an existing directory alone", async () => {
    const fs = (await box()).fs();
    await fs.mkdir("/shared", { mode: 0o777 });
    expect((await fs.stat("/shared")).mode).toBe(0o777);
    await fs.mkdir("/sticky", { mode: 0o1777 });
    expect((await fs.stat("/sticky")).mode).toBe(0o1777);
    fake.fsOf("f1").mkdirp("/old", 0o700);
    await fs.mkdir("/old", { mode: 0o777 });
    expect((await fs.stat("/old")).mode).toBe(0o700);
    await fs.mkdir("/plain", { mode: 0o750 });
    expect(fake.clients[0]!.requests.map((r) => [r.cmd, ...r.args, r.user])).toEqual([
      ["chmod", "777", "/shared", "0"],
      ["chmod", "1777", "/sticky", "0"],
    ]);
  });

  it("an fs call on a stopped sandbox is SandboxNotRunningError", async () => {
    const sb = await box();
    await sb.stop();
    await expect(sb.fs().read("/tmp/x")).rejects.toBeInstanceOf(SandboxNotRunningError);
  });
});

describe("streams", () => {
  it("readStream yields the file in chunks; a missing file rejects when opened", async () => {
    const fs = (await box()).fs();
    const data = new Uint8Array(200_000).map((_, i) => i % 251);
    fake.fsOf("f1").put("/big", data);
    const rs = await fs.readStream("/big");
    const chunks: Uint8Array[] = [];
    for await (const c of rs) chunks.push(c);
    expect(chunks.length).toBe(4);
    expect(Object.getPrototypeOf(chunks[0]!)).toBe(Uint8Array.prototype);
    expect(Buffer.concat(chunks)).toEqual(Buffer.from(data));
    expect(await rs.recv()).toBeNull();
    expect((await fsErr(fs.readStream("/none"))).errno).toBe("ENOENT");
    expect((await fsErr(fs.readStream("/tmp"))).errno).toBe("EISDIR");
  });

  it("leaving a for-await loop early drains the rest of the file", async () => {
    const fs = (await box()).fs();
    fake.fsOf("f1").put("/big", new Uint8Array(300_000));
    const rs = await fs.readStream("/big");
    for await (const c of rs) {
      expect(c.byteLength).toBe(65536);
      break;
    }
    await rs.cancel();
    expect(fake.clients[0]!.sessions.size).toBe(0);
  });

  it("read stops at maxBytes: the guest is told to stop and the call rejects with OutputLimitError", async () => {
    const fs = (await box()).fs();
    let sent = 0;
    let cancelled = false;
    // An endless file (/dev/zero): chunks until the SDK signals the session.
    fake.fsHook = (op) => {
      if (!("read" in op) || op.read.path !== "/dev/zero") return undefined;
      return {
        next: async () => {
          if (cancelled) return { kind: "fsError", errno: "ECANCELED", message: "read cancelled by the host" };
          sent += 65536;
          return { kind: "fsData", data: Buffer.alloc(65536) };
        },
        signal: () => {
          cancelled = true;
        },
      };
    };
    const e = await fs.read("/dev/zero", { maxBytes: 1 << 20 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OutputLimitError);
    expect(e).toMatchObject({ code: "outputLimit", limit: 1 << 20, field: "maxBytes" });
    expect(cancelled).toBe(true);
    expect(sent).toBe((1 << 20) + 65536);
    // readToString takes the same option, and a bad one is InvalidConfigError naming it.
    cancelled = false;
    await expect(fs.readToString("/dev/zero", { maxBytes: 65536 })).rejects.toBeInstanceOf(OutputLimitError);
    await expect(fs.read("/dev/zero", { maxBytes: -1 })).rejects.toMatchObject({ code: "invalidConfig", field: "maxBytes" });
    // A file within the limit is read whole; the default is 64 MiB.
    fake.fsOf("f1").put("/small", "x".repeat(1000));
    expect((await fs.read("/small", { maxBytes: 1000 })).byteLength).toBe(1000);
    expect(DEFAULT_MAX_OUTPUT_BYTES).toBe(64 * 1024 * 1024);
  });

  it("writeStream writes chunks in order; an open error rejects the first write and the close", async () => {
    const fs = (await box()).fs();
    const ws = await fs.writeStream("/tmp/w", { mode: 0o640 });
    await ws.write("ab");
    void ws.write(Uint8Array.of(99));
    await ws.write("d");
    await ws.close();
    await ws.close();
    expect(fake.fsOf("f1").text("/tmp/w")).toBe("abcd");
    expect((await fs.stat("/tmp/w")).mode).toBe(0o640);
    await expect(ws.write("more")).rejects.toBeInstanceOf(InvalidConfigError);

    const bad = await fs.writeStream("/no/such/dir/f");
    expect((await fsErr(bad.write("x"))).errno).toBe("ENOENT");
    const bad2 = await fs.writeStream("/no/such/dir/f");
    expect((await fsErr(bad2.close())).errno).toBe("ENOENT");
  });

  it("a write that fails in the guest mid-way rejects the close", async () => {
    const fs = (await box()).fs();
    fake.fsHook = (op) => {
      if (!("write" in op)) return undefined;
      const q = new EventQueue();
      return { next: () => q.next(), stdin: () => undefined, close: () => q.end({ kind: "fsError", errno: "ENOSPC", message: "disk full" }) };
    };
    const ws = await fs.writeStream("/tmp/x");
    await ws.write("data");
    const e = await fsErr(ws.close());
    expect(e.errno).toBe("ENOSPC");
    expect(e.message).toContain("disk full");
  });
});

describe("copyFromHost / copyToHost", () => {
  function hostTree(root: string): void {
    mkdirSync(join(root, "sub", "deep"), { recursive: true });
    writeFileSync(join(root, "a.txt"), "AAA");
    writeFileSync(join(root, "sub", "run.sh"), "#!/bin/sh\n");
    chmodSync(join(root, "sub", "run.sh"), 0o750);
    writeFileSync(join(root, "sub", "deep", "z"), Buffer.alloc(70_000, 7));
    symlinkSync("../a.txt", join(root, "sub", "link"));
    chmodSync(join(root, "sub"), 0o775);
  }

  it("round-trips a tree with modes and a symlink", async () => {
    const fs = (await box()).fs();
    const src = join(host, "src");
    hostTree(src);
    await fs.copyFromHost(src, "/srv/tree");
    const g = fake.fsOf("f1");
    expect(g.text("/srv/tree/a.txt")).toBe("AAA");
    expect((await fs.stat("/srv/tree/sub/run.sh")).mode).toBe(0o750);
    expect((await fs.stat("/srv/tree/sub")).mode).toBe(0o775);
    expect(g.readlink("/srv/tree/sub/link")).toBe("../a.txt");
    expect((await fs.read("/srv/tree/sub/deep/z")).byteLength).toBe(70_000);

    const back = join(host, "back");
    await fs.copyToHost("/srv/tree", back);
    expect(readFileSync(join(back, "a.txt"), "utf8")).toBe("AAA");
    expect(statSync(join(back, "sub", "run.sh")).mode & 0o7777).toBe(0o750);
    expect(statSync(join(back, "sub")).mode & 0o7777).toBe(0o775);
    expect(lstatSync(join(back, "sub", "link")).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(back, "sub", "link"))).toBe("../a.txt");
    expect(readFileSync(join(back, "sub", "deep", "z"))).toEqual(Buffer.alloc(70_000, 7));
    // a single file, too
    await fs.copyToHost("/srv/tree/a.txt", join(host, "one.txt"));
    expect(readFileSync(join(host, "one.txt"), "utf8")).toBe("AAA");
    await fs.copyFromHost(join(host, "one.txt"), "/one.txt");
    expect(g.text("/one.txt")).toBe("AAA");
  });

  it("a missing host source is a SandboxFsOpsError naming the host path", async () => {
    const fs = (await box()).fs();
    const e = await fsErr(fs.copyFromHost(join(host, "nope"), "/x"));
    expect(e.errno).toBe("ENOENT");
    expect(e.path).toBe(join(host, "nope"));
  });

  it("does not copy setuid/setgid bits to the host", async () => {
    const fs = (await box()).fs();
    fake.fsOf("f1").put("/suid", "x", 0o4755);
    await fs.copyToHost("/suid", join(host, "suid"));
    expect(statSync(join(host, "suid")).mode & 0o7777).toBe(0o755);
  });

  it("replaces a host symlink in the way instead of writing through it", async () => {
    const fs = (await box()).fs();
    const outside = join(host, "outside.txt");
    writeFileSync(outside, "precious");
    const dst = join(host, "dst");
    mkdirSync(dst);
    symlinkSync(outside, join(dst, "a.txt"));
    mkdirSync(join(host, "elsewhere"));
    symlinkSync(join(host, "elsewhere"), join(dst, "sub"));
    fake.fsOf("f1").put("/t/a.txt", "guest data");
    fake.fsOf("f1").put("/t/sub/f", "guest sub");
    await fs.copyToHost("/t", dst);
    expect(readFileSync(outside, "utf8")).toBe("precious");
    expect(lstatSync(join(dst, "a.txt")).isSymbolicLink()).toBe(false);
    expect(readFileSync(join(dst, "a.txt"), "utf8")).toBe("guest data");
    expect(lstatSync(join(dst, "sub")).isDirectory()).toBe(true);
    expect(readdirSync(join(host, "elsewhere"))).toEqual([]);
  });

  describe("links a guest made in a shared host directory (bind volume)", () => {
    it("a link at hostPath to a host directory is replaced, the directory untouched", async () => {
      const fs = (await box()).fs();
      const outside = join(host, "outside");
      mkdirSync(outside, { mode: 0o700 });
      chmodSync(outside, 0o700);
      const vol = join(host, "vol");
      mkdirSync(vol);
      symlinkSync(outside, join(vol, "outdir"));
      fake.fsOf("f1").mkdirp("/tmp/g", 0o777);
      fake.fsOf("f1").put("/tmp/g/x", "guest");
      await fs.copyToHost("/tmp/g", join(vol, "outdir"));
      expect(readdirSync(outside)).toEqual([]);
      expect(statSync(outside).mode & 0o7777).toBe(0o700);
      expect(lstatSync(join(vol, "outdir")).isDirectory()).toBe(true);
      expect(readFileSync(join(vol, "outdir", "x"), "utf8")).toBe("guest");
    });

    it("a link at hostPath to a host file is replaced, the file untouched", async () => {
      const fs = (await box()).fs();
      const victim = join(host, "victim");
      writeFileSync(victim, "precious");
      chmodSync(victim, 0o600);
      symlinkSync(victim, join(host, "outfile"));
      fake.fsOf("f1").put("/tmp/f", "guest", 0o777);
      await fs.copyToHost("/tmp/f", join(host, "outfile"));
      expect(readFileSync(victim, "utf8")).toBe("precious");
      expect(statSync(victim).mode & 0o7777).toBe(0o600);
      expect(lstatSync(join(host, "outfile")).isFile()).toBe(true);
      expect(readFileSync(join(host, "outfile"), "utf8")).toBe("guest");
    });

    it("a directory swapped for a link mid-copy is still the one written (the race)", async () => {
      const fs = (await box()).fs();
      const outside = join(host, "outside");
      mkdirSync(outside);
      const dst = join(host, "out");
      const g = fake.fsOf("f1");
      g.put("/src/sub/a", "A");
      g.put("/src/sub/b", "B");
      // When the SDK lists /src/sub, it has just made out/sub: the guest swaps it for a link.
      fake.fsHook = (op) => {
        if ("list" in op && op.list.path === "/src/sub") {
          renameSync(join(dst, "sub"), join(dst, "moved"));
          symlinkSync(outside, join(dst, "sub"));
        }
        return undefined;
      };
      await fs.copyToHost("/src", dst);
      expect(readdirSync(outside)).toEqual([]);
      expect(readdirSync(join(dst, "moved")).sort()).toEqual(["a", "b"]);
    });

    it("copyFromHost: a directory swapped for a link after it was opened is not followed", async () => {
      const fs = (await box()).fs();
      const secret = join(host, "secret");
      mkdirSync(secret);
      writeFileSync(join(secret, "key"), "s3cret");
      const src = join(host, "src");
      mkdirSync(join(src, "sub"), { recursive: true });
      writeFileSync(join(src, "sub", "ok"), "ok");
      fake.fsHook = (op) => {
        if ("mkdir" in op && op.mkdir.path === "/dst/sub") {
          renameSync(join(src, "sub"), join(src, "moved"));
          symlinkSync(secret, join(src, "sub"));
        }
        return undefined;
      };
      await fs.copyFromHost(src, "/dst");
      const g = fake.fsOf("f1");
      expect(g.text("/dst/sub/ok")).toBe("ok");
      expect(g.nodes.has("/dst/sub/key")).toBe(false);
    });

    it("copyFromHost copies a link at hostPath as a link", async () => {
      const fs = (await box()).fs();
      writeFileSync(join(host, "secret"), "s3cret");
      symlinkSync(join(host, "secret"), join(host, "l"));
      await fs.copyFromHost(join(host, "l"), "/l");
      expect(fake.fsOf("f1").readlink("/l")).toBe(join(host, "secret"));
    });
  });

  describe("a hostile guest listing", () => {
    const entry = (name: string, kind = "file"): NativeFsEntry => ({ name, kind: kind as NativeFsEntry["kind"], size: 1, mode: 0o644, modifiedMs: 0 });

    function hostileList(entries: NativeFsEntry[]): void {
      fake.fsHook = (op) => {
        if (!("list" in op) || op.list.path !== "/evil") return undefined;
        const q = new EventQueue();
        q.end({ kind: "fsEntries", entries });
        return { next: () => q.next() };
      };
      fake.fsOf("f1").mkdirp("/evil");
    }

    for (const name of ["..", ".", "", "../../escape", "a/b", "/abs", "x\0y"]) {
      it(`rejects the name ${JSON.stringify(name)} and writes nothing outside`, async () => {
        const fs = (await box()).fs();
        hostileList([entry(name)]);
        const dst = join(host, "in", "dst");
        mkdirSync(join(host, "in"));
        const e = await fs.copyToHost("/evil", dst).catch((x: unknown) => x);
        expect(e).toBeInstanceOf(ProtocolError);
        expect(readdirSync(join(host, "in"))).toEqual(["dst"]);
        expect(readdirSync(dst)).toEqual([]);
        expect(existsSync(join(host, "escape"))).toBe(false);
      });
    }

    it("rejects a name listed twice (a link, then a directory through it)", async () => {
      const fs = (await box()).fs();
      hostileList([entry("a", "symlink"), entry("a", "dir")]);
      fake.fsOf("f1").symlink("/etc", "/evil/a");
      const e = await fs.copyToHost("/evil", join(host, "dst")).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(ProtocolError);
    });
  });

  it("checkEntryName accepts plain names only", () => {
    expect(checkEntryName("ok.txt")).toBe("ok.txt");
    expect(checkEntryName("..x")).toBe("..x");
    for (const bad of ["", ".", "..", "a/b", "a\0", 5]) expect(() => checkEntryName(bad)).toThrow(ProtocolError);
  });
});
