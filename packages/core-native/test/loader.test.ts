// The loader (main.cjs) as an installed copy sees it: temp node_modules trees with the
// platform and guest packages present, missing, of another version, or corrupt.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const PKG = fileURLToPath(new URL("..", import.meta.url));
const VERSION = (createRequire(import.meta.url)("../package.json") as { version: string }).version;
const root = mkdtempSync(join(tmpdir(), "msb-loader-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

interface Loader {
  assetPaths(): Record<string, string>;
  verifyGuestAssets(cacheDir?: string): void;
  platformKey(): string;
  supportedPlatforms: readonly string[];
  startSandbox: unknown;
}

let n = 0;
/** A project with @microsandbox/core-native installed, and the given other packages. */
function project(others: Record<string, { version: string; files?: Record<string, string | Buffer> }>): { dir: string; load(): Loader } {
  const dir = join(root, `p${n++}`);
  const nm = join(dir, "node_modules", "@microsandbox");
  mkdirSync(join(nm, "core-native"), { recursive: true });
  copyFileSync(join(PKG, "main.cjs"), join(nm, "core-native", "main.cjs"));
  copyFileSync(join(PKG, "package.json"), join(nm, "core-native", "package.json"));
  for (const [name, p] of Object.entries(others)) {
    const d = join(nm, name);
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, "package.json"), JSON.stringify({ name: `@microsandbox/${name}`, version: p.version }));
    for (const [f, body] of Object.entries(p.files ?? {})) writeFileSync(join(d, f), body);
  }
  return { dir, load: () => createRequire(join(dir, "index.js"))("@microsandbox/core-native") as Loader };
}

function thrown(f: () => unknown): Error & { code?: string } {
  try {
    f();
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error("did not throw");
}

const guestFiles = () => {
  const files: Record<string, Buffer> = {
    vmlinux: Buffer.from("kernel bytes"),
    "initramfs.cpio": Buffer.from("initramfs bytes"),
    "rootfs.ext4": Buffer.alloc(4096, 7),
    "floor.cpio": Buffer.from("floor"),
  };
  const manifest = {
    kernel: "test",
    files: Object.fromEntries(Object.entries(files).map(([k, v]) => [k, { size: v.length, sha256: createHash("sha256").update(v).digest("hex") }])),
  };
  return { ...files, "manifest.json": JSON.stringify(manifest) };
};

describe("core-native loader", () => {
  it("on this host: the key is linux-x64-gnu, and requiring it loads nothing native", () => {
    const p = project({});
    const l = p.load();
    expect(l.platformKey()).toBe("linux-x64-gnu");
    expect(l.supportedPlatforms).toEqual(["linux-x64-gnu"]);
  });

  it("a missing platform package: one error naming it, why npm skipped it, and the command that fixes it", () => {
    const l = project({ "guest-linux-x64": { version: VERSION, files: guestFiles() } }).load();
    const e = thrown(() => l.startSandbox);
    expect(e.code).toBe("ERR_MSB_INSTALL");
    expect(e.message).toMatch(/^runtime: @microsandbox\/core-native-linux-x64-gnu is not installed/);
    expect(e.message).toContain("--omit=optional");
    expect(e.message).toContain(`Fix: npm install @microsandbox/core-native-linux-x64-gnu@${VERSION}`);
    expect(thrown(() => l.assetPaths()).message).toContain("core-native-linux-x64-gnu is not installed");
  });

  it("a missing guest package is named the same way", () => {
    const l = project({ "core-native-linux-x64-gnu": { version: VERSION } }).load();
    const e = thrown(() => l.assetPaths());
    expect(e.message).toContain(`@microsandbox/guest-linux-x64 is not installed`);
    expect(e.message).toContain(`npm install @microsandbox/guest-linux-x64@${VERSION}`);
  });

  it("a platform or guest package of another version is refused, naming both versions", () => {
    const a = project({ "core-native-linux-x64-gnu": { version: "0.0.9" }, "guest-linux-x64": { version: VERSION } }).load();
    expect(thrown(() => a.startSandbox).message).toContain(`@microsandbox/core-native-linux-x64-gnu is version 0.0.9, but @microsandbox/core-native is ${VERSION}`);
    const b = project({ "core-native-linux-x64-gnu": { version: VERSION }, "guest-linux-x64": { version: "9.9.9" } }).load();
    expect(thrown(() => b.assetPaths()).message).toContain(`@microsandbox/guest-linux-x64 is version 9.9.9`);
  });

  it("an addon file that does not load says which file and to reinstall", () => {
    const l = project({ "core-native-linux-x64-gnu": { version: VERSION, files: { "core-native.linux-x64-gnu.node": "not an ELF" } } }).load();
    const e = thrown(() => l.startSandbox);
    expect(e.code).toBe("ERR_MSB_INSTALL");
    expect(e.message).toContain("cannot load @microsandbox/core-native-linux-x64-gnu/core-native.linux-x64-gnu.node");
  });

  it("asset paths point into the two packages (and honour the overrides)", () => {
    const p = project({ "core-native-linux-x64-gnu": { version: VERSION }, "guest-linux-x64": { version: VERSION, files: guestFiles() } });
    const a = p.load().assetPaths();
    const nm = join(p.dir, "node_modules", "@microsandbox");
    expect(a).toEqual({
      runtime: join(nm, "core-native-linux-x64-gnu", "bin", "msb-runtime"),
      kernel: join(nm, "guest-linux-x64", "vmlinux"),
      initramfs: join(nm, "guest-linux-x64", "initramfs.cpio"),
      defaultImage: join(nm, "guest-linux-x64", "rootfs.ext4"),
      floorInitramfs: join(nm, "guest-linux-x64", "floor.cpio"),
    });
  });

  it("an unsupported platform: one error naming the host and the supported platforms", () => {
    const p = project({});
    const script = `Object.defineProperty(process, "platform", { value: "darwin" }); Object.defineProperty(process, "arch", { value: "arm64" });
      const l = require("@microsandbox/core-native");
      try { l.startSandbox; console.log("loaded"); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`;
    const out = JSON.parse(execFileSync(process.execPath, ["-e", script], { cwd: p.dir, encoding: "utf8" })) as { code: string; message: string };
    expect(out.code).toBe("ERR_MSB_INSTALL");
    expect(out.message).toMatch(/^runtime: microsandbox has no native build for darwin-arm64; supported: linux-x64-gnu \(Linux x86_64 with glibc\)/);
  });
});

describe("verifyGuestAssets", () => {
  const setup = () => {
    const p = project({ "core-native-linux-x64-gnu": { version: VERSION }, "guest-linux-x64": { version: VERSION, files: guestFiles() } });
    return { l: p.load(), guest: join(p.dir, "node_modules", "@microsandbox", "guest-linux-x64") };
  };
  it("passes on intact files", () => {
    const { l } = setup();
    expect(l.verifyGuestAssets()).toBeUndefined();
  });
  it("a truncated kernel: its size against the manifest's, the package and the fix", () => {
    const { l, guest } = setup();
    truncateSync(join(guest, "vmlinux"), 3);
    const e = thrown(() => l.verifyGuestAssets());
    expect(e.message).toBe(
      `kernelNotFound: @microsandbox/guest-linux-x64: vmlinux is 3 bytes, its manifest says 12 (truncated or replaced). Fix: reinstall it: npm install @microsandbox/guest-linux-x64@${VERSION} --force`,
    );
  });
  it("a same-size altered initramfs: the sha256 mismatch", () => {
    const { l, guest } = setup();
    writeFileSync(join(guest, "initramfs.cpio"), "initramfs BYTES");
    expect(thrown(() => l.verifyGuestAssets()).message).toMatch(/initramfs\.cpio has sha256 [0-9a-f]{64}, its manifest says [0-9a-f]{64} \(corrupt\)/);
  });
  it("a missing file or manifest", () => {
    const { l, guest } = setup();
    rmSync(join(guest, "rootfs.ext4"));
    expect(thrown(() => l.verifyGuestAssets()).message).toContain("@microsandbox/guest-linux-x64 is missing rootfs.ext4 (ENOENT)");
    rmSync(join(guest, "manifest.json"));
    expect(thrown(() => l.verifyGuestAssets()).message).toContain("@microsandbox/guest-linux-x64 has no readable manifest.json (ENOENT)");
  });
  it("a file given through MSB_KERNEL is the caller's: not checked", () => {
    const { l, guest } = setup();
    truncateSync(join(guest, "vmlinux"), 1);
    process.env.MSB_KERNEL = "/elsewhere/vmlinux";
    try {
      expect(l.verifyGuestAssets()).toBeUndefined();
    } finally {
      delete process.env.MSB_KERNEL;
    }
  });

  describe("with a cache directory (what an earlier process checked)", () => {
    // Each call is a new Node process (the per-process memo would hide the cache); it
    // prints how many files it hashed.
    const hashes = (dir: string, cacheDir: string): number => {
      const script = `const c = require("node:crypto"); let n = 0; const h = c.createHash;
        c.createHash = (...a) => (n++, h(...a));
        require("@microsandbox/core-native").verifyGuestAssets(${JSON.stringify(cacheDir)}); console.log(n);`;
      return Number(execFileSync(process.execPath, ["-e", script], { cwd: dir, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim());
    };
    const setup = () => {
      const p = project({ "core-native-linux-x64-gnu": { version: VERSION }, "guest-linux-x64": { version: VERSION, files: guestFiles() } });
      return { dir: p.dir, guest: join(p.dir, "node_modules", "@microsandbox", "guest-linux-x64"), cache: join(p.dir, "home", "cache") };
    };

    it("hashes each file once, then not again in the next process", () => {
      const { dir, guest, cache } = setup();
      expect(hashes(dir, cache)).toBe(4);
      const entries = JSON.parse(readFileSync(join(cache, "guest-verified.json"), "utf8")) as Record<string, { id: string; sha256: string }>;
      const manifest = JSON.parse(readFileSync(join(guest, "manifest.json"), "utf8")) as { files: Record<string, { sha256: string }> };
      expect(Object.keys(entries).sort()).toEqual(Object.keys(manifest.files).map((f) => join(guest, f)).sort());
      for (const [f, want] of Object.entries(manifest.files)) expect(entries[join(guest, f)]?.sha256).toBe(want.sha256);
      expect(hashes(dir, cache)).toBe(0);
    });

    it("a file written since (same size) is hashed again, and an altered one still fails", () => {
      const { dir, guest, cache } = setup();
      expect(hashes(dir, cache)).toBe(4);
      writeFileSync(join(guest, "vmlinux"), "kernel bytes"); // same bytes: a new ctime
      expect(hashes(dir, cache)).toBe(1);
      expect(hashes(dir, cache)).toBe(0);
      writeFileSync(join(guest, "initramfs.cpio"), "initramfs BYTES");
      expect(() => hashes(dir, cache)).toThrow(/initramfs\.cpio has sha256 [0-9a-f]{64}, its manifest says [0-9a-f]{64} \(corrupt\)/);
    });

    it("an entry for another manifest sha256, or a damaged cache, means hashing again", () => {
      const { dir, guest, cache } = setup();
      expect(hashes(dir, cache)).toBe(4);
      const file = join(cache, "guest-verified.json");
      const entries = JSON.parse(readFileSync(file, "utf8")) as Record<string, { id: string; sha256: string }>;
      entries[join(guest, "rootfs.ext4")]!.sha256 = "0".repeat(64);
      writeFileSync(file, JSON.stringify(entries));
      expect(hashes(dir, cache)).toBe(1);
      writeFileSync(file, "{not json");
      expect(hashes(dir, cache)).toBe(4);
      writeFileSync(file, "[]");
      expect(hashes(dir, cache)).toBe(4);
      expect(hashes(dir, cache)).toBe(0);
    });

    it("a cache directory that cannot be made only costs the hashing", () => {
      const { dir } = setup();
      const blocker = join(dir, "a-file");
      writeFileSync(blocker, "x");
      expect(hashes(dir, join(blocker, "cache"))).toBe(4);
      expect(hashes(dir, join(blocker, "cache"))).toBe(4);
    });
  });
});
