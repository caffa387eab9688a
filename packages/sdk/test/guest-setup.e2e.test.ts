// End-to-end: what shapes the guest before any command runs: the shell, scripts in
// /.msb/scripts, guest defaults (hostname, workdir, env, user, entrypoint, log level)
// and patches (applied to this sandbox's writable layer only).
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidConfigError, Sandbox } from "../src/index.js";
import { native } from "../src/native.js";
import { cleanup, useTempMsbHome } from "./e2e-helpers.js";

const home = useTempMsbHome();
let host = "";
const made: Sandbox[] = [];

beforeAll(() => {
  host = mkdtempSync(join(tmpdir(), "msb-setup-e2e-"));
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

describe("shell and scripts", () => {
  it("sb.shell() runs the configured shell; scripts are on PATH for exec and shell", async () => {
    const sb = await create(
      Sandbox.builder("e2e-scripts")
        .shell("/bin/ash")
        .script("greet", '#!/bin/sh\necho "hello, ${1:-world}"\n')
        .script("count", "#!/bin/sh\nwc -l\n"),
    );
    expect((await sb.shell('echo "$0"')).stdout()).toBe("/bin/ash\n");
    const h = await sb.shellStream("echo streamed; exit 4");
    expect((await h.collect()).code).toBe(4);
    expect((await sb.exec("greet", ["exec"])).stdout()).toBe("hello, exec\n");
    expect((await sb.shell("greet shell | tr a-z A-Z")).stdout()).toBe("HELLO, SHELL\n");
    expect((await sb.execWith("count", (b) => b.stdinBytes("a\nb\nc\n"))).stdout().trim()).toBe("3");
    expect((await sb.shell("ls -l /.msb/scripts/greet | cut -c1-10; command -v greet")).stdout()).toBe("-rwxr-xr-x\n/.msb/scripts/greet\n");
    expect(sb.config().scripts.map(([n]) => n)).toEqual(["greet", "count"]);
    expect(sb.config().shell).toBe("/bin/ash");
  });

  it("the default shell is /bin/sh", async () => {
    const sb = await create(Sandbox.builder("e2e-defshell"));
    expect((await sb.shell('echo "$0"')).stdout()).toBe("/bin/sh\n");
  });
});

describe("guest defaults", () => {
  it("hostname, workdir, env, user, entrypoint and logLevel take effect and show in config()", async () => {
    const sb = await create(
      Sandbox.builder("e2e-defaults")
        .hostname("box-7")
        .workdir("/srv/app")
        .env("MODE", "test")
        .env("MODE", "prod")
        .user("nobody")
        .entrypoint(["/bin/echo", "entry"])
        .logLevel("error"),
    );
    const out = await sb.shell('hostname; pwd; echo "$MODE"; id -un');
    expect(out.stdout()).toBe("box-7\n/srv/app\nprod\nnobody\n");
    const c = sb.config();
    expect(c).toMatchObject({ hostname: "box-7", workdir: "/srv/app", env: [["MODE", "prod"]], user: "nobody", entrypoint: ["/bin/echo", "entry"], logLevel: "error" });
    const stored = (await Sandbox.get("e2e-defaults")).config();
    expect(stored).toMatchObject({ hostname: "box-7", workdir: "/srv/app", user: "nobody", entrypoint: ["/bin/echo", "entry"], logLevel: "error" });
    // the runtime logs at the requested level: at "error" its info lines are gone
    const log = (name: string) => readFileSync(join(home(), "sandboxes", name, "runtime.log"), "utf8");
    expect(log("e2e-defaults")).not.toContain("msb-runtime: starting");
    expect(log("e2e-defshell")).toContain("msb-runtime: starting");
  });
});

describe("patches", () => {
  it("are in place before the first command, in order; a second sandbox of the same image does not see them", async () => {
    const tool = join(host, "tool.sh");
    writeFileSync(tool, "#!/bin/sh\necho tool\n");
    chmodSync(tool, 0o750);
    const tree = join(host, "tree");
    mkdirSync(join(tree, "conf.d"), { recursive: true });
    writeFileSync(join(tree, "conf.d", "a.conf"), "a=1\n");
    symlinkSync("conf.d/a.conf", join(tree, "current"));
    const sb = await create(
      Sandbox.builder("e2e-patched").patch((p) =>
        p
          .text("/etc/motd", "welcome\n", { mode: 0o600 })
          .append("/etc/motd", "second line\n")
          .file("/opt/data.bin", Uint8Array.of(1, 2, 3, 4))
          .copyFile(tool, "/usr/local/bin/tool")
          .copyDir(tree, "/etc/app")
          .symlink("/etc/motd", "/etc/motd.link")
          .mkdir("/var/spool/x", { mode: 0o1777 })
          .remove("/etc/hostname"),
      ),
    );
    // the very first command of the sandbox sees everything
    const first = await sb.shell(
      "cat /etc/motd; stat -c %a /etc/motd; wc -c < /opt/data.bin; tool; stat -c %a /usr/local/bin/tool; cat /etc/app/current; readlink /etc/motd.link; stat -c %a /var/spool/x; test -e /etc/hostname && echo has-hostname || echo no-hostname",
    );
    expect(first.stdout()).toBe("welcome\nsecond line\n600\n4\ntool\n750\na=1\n/etc/motd\n1777\nno-hostname\n");
    expect(sb.config().patches.map((p) => p.kind)).toEqual(["text", "append", "file", "copyFile", "copyDir", "symlink", "mkdir", "remove"]);

    const other = await create(Sandbox.builder("e2e-unpatched"));
    const o = await other.shell("test -e /etc/motd && echo motd; test -e /usr/local/bin/tool && echo tool; test -e /etc/app && echo app; cat /etc/hostname");
    expect(o.stdout()).toBe("msb\n");
  });

  it("are kept across a restart, and not applied again", async () => {
    const sb = await create(
      Sandbox.builder("e2e-patch-restart")
        .patch((p) => p.text("/patched.txt", "v1\n"))
        .script("s", "#!/bin/sh\necho s\n"),
    );
    await sb.shell("echo v2 > /patched.txt");
    await sb.stop();
    const again = await Sandbox.start("e2e-patch-restart");
    made.push(again);
    expect((await again.exec("cat", ["/patched.txt"])).stdout()).toBe("v2\n");
    expect((await again.exec("s")).stdout()).toBe("s\n");
  });

  it("a patch whose host source is missing fails before anything boots", async () => {
    const missing = join(host, "not-there.txt");
    const e = await Sandbox.builder("e2e-badpatch")
      .patch((p) => p.copyFile(missing, "/x"))
      .create()
      .catch((x: unknown) => x);
    if (e instanceof Sandbox) made.push(e);
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect((e as InvalidConfigError).field).toBe("patch");
    expect((e as Error).message).toContain(missing);
    expect(existsSync(join(home(), "sandboxes", "e2e-badpatch"))).toBe(false);
  });
});

describe("root filesystem given explicitly", () => {
  it("imageWith(i => i.disk(path).fstype(\"ext4\")) boots a disk image whatever its name", async () => {
    const disk = join(host, "rootfs.disk");
    copyFileSync(native().assetPaths().defaultImage, disk);
    const sb = await create(Sandbox.builder("e2e-imagewith").imageWith((i) => i.disk(disk).fstype("ext4")));
    expect((await sb.exec("cat", ["/etc/hostname"])).stdout()).toBe("msb\n");
    expect(sb.config()).toMatchObject({ image: disk, imageKind: "path", imageFstype: "ext4" });
    expect((await Sandbox.get("e2e-imagewith")).config().imageFstype).toBe("ext4");
  });

  it("boots a qcow2 disk image, with the filesystem named or found by the guest", async () => {
    const qcow = join(host, "rootfs.qcow2");
    execFileSync("qemu-img", ["convert", "-O", "qcow2", native().assetPaths().defaultImage, qcow]);
    const named = await create(Sandbox.builder("e2e-qcow-named").imageWith((i) => i.disk(qcow).fstype("ext4")));
    expect((await named.exec("cat", ["/etc/hostname"])).stdout()).toBe("msb\n");
    const auto = await create(Sandbox.builder("e2e-qcow-auto").image(qcow));
    expect((await auto.shell("echo auto ok")).stdout()).toBe("auto ok\n");
  });
});
