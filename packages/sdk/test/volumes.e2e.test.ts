// End-to-end: volumes: tmpfs with a size cap, read-only mounts, host directories shared
// both ways while running (virtiofs), named volumes that outlive their sandbox.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidConfigError, Sandbox, SandboxFsOpsError } from "../src/index.js";
import { cleanup, useTempMsbHome, waitForAsync } from "./e2e-helpers.js";

const home = useTempMsbHome();
let host = "";
const made: Sandbox[] = [];

beforeAll(() => {
  host = mkdtempSync(join(tmpdir(), "msb-vol-e2e-"));
});
afterAll(async () => {
  await cleanup(...made);
  if (host) rmSync(host, { recursive: true, force: true });
});

async function create(b: ReturnType<typeof Sandbox.builder>): Promise<Sandbox> {
  const sb = await b.create();
  made.push(sb);
  return sb;
}

async function fsError(p: Promise<unknown>): Promise<SandboxFsOpsError> {
  const e = await p.catch((x: unknown) => x);
  expect(e).toBeInstanceOf(SandboxFsOpsError);
  return e as SandboxFsOpsError;
}

describe("tmpfs and read-only", () => {
  it("a tmpfs is capped at its size (ENOSPC past it); a read-only mount refuses writes (EROFS)", async () => {
    const sb = await create(
      Sandbox.builder("e2e-tmpfs")
        .volume("/scratch", (m) => m.tmpfs({ sizeMiB: 8 }))
        .volume("/frozen", (m) => m.tmpfs().readonly()),
    );
    const mounts = (await sb.exec("cat", ["/proc/mounts"])).stdout();
    expect(mounts).toMatch(/^tmpfs \/scratch tmpfs rw\S*size=8192k/m);
    expect(mounts).toMatch(/^tmpfs \/frozen tmpfs ro/m);
    await sb.fs().write("/scratch/small", new Uint8Array(1 << 20));
    expect((await fsError(sb.fs().write("/scratch/big", new Uint8Array(9 << 20)))).errno).toBe("ENOSPC");
    expect((await sb.shell("dd if=/dev/zero of=/scratch/dd bs=1M count=16 2>&1")).stdout()).toMatch(/No space left/);
    const ro = await fsError(sb.fs().write("/frozen/x", "no"));
    expect(ro.errno).toBe("EROFS");
    expect(ro.path).toBe("/frozen/x");
    expect((await fsError(sb.fs().mkdir("/frozen/d"))).errno).toBe("EROFS");
    expect((await sb.shell("touch /frozen/y 2>&1; echo $?")).stdout()).toMatch(/Read-only file system\n1\n$/);
    expect(sb.config().volumes).toEqual([
      { guestPath: "/scratch", kind: "tmpfs", source: null, readonly: false, sizeMiB: 8 },
      { guestPath: "/frozen", kind: "tmpfs", source: null, readonly: true, sizeMiB: null },
    ]);
  });
});

describe("bind mounts", () => {
  it("a host directory is shared both ways while the sandbox runs; read-only binds refuse writes", async () => {
    const shared = join(host, "shared");
    const ro = join(host, "ro");
    mkdirSync(shared);
    mkdirSync(ro);
    writeFileSync(join(shared, "from-host-before.txt"), "before\n");
    writeFileSync(join(ro, "keep.txt"), "keep\n");
    const sb = await create(
      Sandbox.builder("e2e-bind")
        .volume("/mnt/shared", (m) => m.bind(shared))
        .volume("/mnt/ro", (m) => m.bind(ro).readonly()),
    );
    expect((await sb.exec("cat", ["/mnt/shared/from-host-before.txt"])).stdout()).toBe("before\n");
    // host -> guest while running
    writeFileSync(join(shared, "from-host.txt"), "hello guest\n");
    expect(await waitForAsync(async () => (await sb.shell("cat /mnt/shared/from-host.txt 2>/dev/null")).stdout() === "hello guest\n", 10_000)).toBe(true);
    // guest -> host while running (shell and fs API)
    await sb.shell("echo hello host > /mnt/shared/from-guest.txt");
    await sb.fs().write("/mnt/shared/from-fs.txt", "via fs\n");
    expect(readFileSync(join(shared, "from-guest.txt"), "utf8")).toBe("hello host\n");
    expect(readFileSync(join(shared, "from-fs.txt"), "utf8")).toBe("via fs\n");
    // read-only
    expect((await sb.exec("cat", ["/mnt/ro/keep.txt"])).stdout()).toBe("keep\n");
    expect((await fsError(sb.fs().write("/mnt/ro/new.txt", "x"))).errno).toBe("EROFS");
    expect((await sb.shell("rm /mnt/ro/keep.txt 2>&1; echo $?")).stdout()).toMatch(/Read-only file system\n1\n$/);
    expect(existsSync(join(ro, "new.txt"))).toBe(false);
    expect(readFileSync(join(ro, "keep.txt"), "utf8")).toBe("keep\n");
  });
});

describe("named volumes", () => {
  it("keep their data under $MSB_HOME/volumes and into a second sandbox", async () => {
    const first = await create(Sandbox.builder("e2e-named-1").volume("/data", (m) => m.named("e2e-vol")));
    await first.shell("echo persisted > /data/note.txt; mkdir -p /data/sub && echo deep > /data/sub/f");
    await first.stop();
    expect(existsSync(join(home(), "volumes", "e2e-vol"))).toBe(true);
    const second = await create(Sandbox.builder("e2e-named-2").volume("/restored", (m) => m.named("e2e-vol").readonly()));
    expect((await second.shell("cat /restored/note.txt /restored/sub/f")).stdout()).toBe("persisted\ndeep\n");
    expect((await fsError(second.fs().write("/restored/x", "x"))).errno).toBe("EROFS");
  });
});

describe("bad volumes", () => {
  it("a relative guest path or a missing bind source is an InvalidConfigError naming it, before anything boots", async () => {
    const rel = await Sandbox.builder("e2e-badvol")
      .volume("data", (m) => m.tmpfs())
      .create()
      .catch((x: unknown) => x);
    if (rel instanceof Sandbox) made.push(rel);
    expect(rel).toBeInstanceOf(InvalidConfigError);
    expect((rel as InvalidConfigError).field).toBe("volume");
    expect((rel as Error).message).toContain('"data"');
    const missing = join(host, "does-not-exist");
    const src = await Sandbox.builder("e2e-badvol")
      .volume("/data", (m) => m.bind(missing))
      .create()
      .catch((x: unknown) => x);
    if (src instanceof Sandbox) made.push(src);
    expect(src).toBeInstanceOf(InvalidConfigError);
    expect((src as Error).message).toContain(missing);
    expect(existsSync(join(home(), "sandboxes", "e2e-badvol"))).toBe(false);
  });
});
