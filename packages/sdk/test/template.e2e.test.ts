// End-to-end: memory templates on real VMs. The first cold boot of a shape saves the
// guest (after its agent's hello, before anything sandbox-specific) under
// $MSB_HOME/templates/<key>; later sandboxes of that shape are restored from it instead
// of booting a kernel. Restores are independent sandboxes (files, network stack, entropy,
// clock); a template of another shape, another agent build or a damaged one is not used
// (cold boot, one log line); templates can be turned off per sandbox and per process.
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, openSync, closeSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NetworkPolicy, Sandbox } from "../src/index.js";
import { native } from "../src/native.js";
import { cleanup, qemuProcessesMentioning, useTempMsbHome } from "./e2e-helpers.js";

const home = useTempMsbHome();
let server: Server | undefined;
let port = 0;
const live: Sandbox[] = [];
beforeAll(async () => {
  server = createServer((_req, res) => res.end("from the host\n"));
  await new Promise<void>((res) => server!.listen(0, "127.0.0.1", res));
  port = (server.address() as AddressInfo).port;
});
afterAll(async () => {
  await cleanup(...live);
  await new Promise<void>((res) => (server ? server.close(() => res()) : res()));
});

const templateLines = (name: string): string[] =>
  readFileSync(join(home(), "sandboxes", name, "runtime.log"), "utf8")
    .split("\n")
    .filter((l) => l.includes("memory template"));
const templates = (): string[] => (existsSync(join(home(), "templates")) ? readdirSync(join(home(), "templates")).filter((n) => !n.startsWith(".")) : []);
const make = async (name: string, tweak: (b: ReturnType<typeof Sandbox.builder>) => ReturnType<typeof Sandbox.builder> = (b) => b): Promise<Sandbox> => {
  const sb = await tweak(Sandbox.builder(name).network((n) => n.policy(NetworkPolicy.builder().egress((r) => r.tcp().port(port).allowHost()).build()))).create();
  live.push(sb);
  return sb;
};
const out = async (sb: Sandbox, script: string): Promise<string> => (await sb.shell(script)).stdout();
/** A QEMU's mapping of `file` in /proc/<pid>/smaps: its shared pages (Shared_Clean + Shared_Dirty: page-cache pages another process maps too) and Private_Dirty, in KiB (null: not mapped). */
function mappingOf(pid: number, file: string): { shared: number; privateDirty: number } | null {
  const blocks = readFileSync(`/proc/${pid}/smaps`, "utf8").split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/);
  const b = blocks.find((x) => x.split("\n")[0]!.endsWith(` ${file}`));
  if (b === undefined) return null;
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(b)?.[1] ?? "0");
  return { shared: kb("Shared_Clean") + kb("Shared_Dirty"), privateDirty: kb("Private_Dirty") };
}

describe("memory templates", () => {
  it("the first boot makes the template; restores are sandboxes of their own (files, network, entropy, clock)", async () => {
    const first = await make("tpl-first");
    expect(templateLines("tpl-first")).toEqual([
      expect.stringMatching(/memory template [0-9a-f]{16}: none made yet: cold boot, making it meanwhile$/),
      expect.stringMatching(/memory template [0-9a-f]{16}: made \(\d+ bytes of memory, \d+ with the root mounted\) in \d+ ms$/),
    ]);
    const [key] = templates();
    expect(templates()).toEqual([key]);
    const dir = join(home(), "templates", key!);
    // Two saves: the image disk mounted (for restarts), and the root mounted too (for new
    // sandboxes, each on a copy of `root/upper`).
    expect(readdirSync(dir).sort()).toEqual(["meta.json", "ram", "root", "state"]);
    expect(readdirSync(join(dir, "root")).sort()).toEqual(["ram", "state", "upper"]);
    // `ram` is sparse: the guest's used memory, not its 512 MiB; `upper` a formatted 4 GiB disk of a few MB.
    for (const ram of [join(dir, "ram"), join(dir, "root", "ram")]) {
      expect(statSync(ram).size).toBe(512 * 1024 * 1024);
      expect(statSync(ram).blocks * 512).toBeLessThan(200 * 1024 * 1024);
    }
    expect(statSync(join(dir, "root", "upper")).size).toBe(4 * 1024 ** 3);
    expect(statSync(join(dir, "root", "upper")).blocks * 512).toBeLessThan(32 * 1024 * 1024);
    const upperStat = (): [number, number] => {
      const st = statSync(join(dir, "root", "upper"));
      return [st.mtimeMs, st.blocks];
    };
    const upperBefore = upperStat();
    await first.stop();

    // Two restores at once (two msb-runtime processes reading one template).
    const [a, b] = await Promise.all([make("tpl-a"), make("tpl-b")]);
    for (const n of ["tpl-a", "tpl-b"]) {
      expect(templateLines(n)).toEqual([expect.stringMatching(new RegExp(`memory template ${key}: restored \\(memory mapped copy-on-write from .*/${key}/root/ram\\) in \\d+ ms \\(devices \\d+ ms\\)$`))]);
      // Its root was assembled and its NIC configured in the template: the bootstrap did neither.
      expect(readFileSync(join(home(), "sandboxes", n, "console.log"), "utf8")).toMatch(/bootstrap in \d+ ms: .*network \(prepared\) \d+, disks \(prepared\) \d+/);
    }
    // Their memory is the template's `ram` mapped private: the pages neither wrote are
    // the same page-cache pages in both (shared), the written ones each its own.
    const ram = join(dir, "root", "ram");
    const maps = ["tpl-a", "tpl-b"].map((n) => {
      const [q] = qemuProcessesMentioning(`sandboxes/${n}/`);
      expect(q, n).toBeDefined();
      return mappingOf(q!.pid, ram);
    });
    for (const m of maps) {
      expect(m).not.toBeNull();
      expect(m!.shared).toBeGreaterThan(4 * 1024);
      expect(m!.privateDirty).toBeGreaterThan(0);
    }
    await a.fs().write("/root/mine.txt", "a\n");
    expect(await out(b, "cat /root/mine.txt 2>/dev/null || echo none")).toBe("none\n");
    await b.fs().write("/root/theirs.txt", "b\n");
    expect(await out(a, "cat /root/theirs.txt 2>/dev/null || echo none")).toBe("none\n");
    // Each wrote its own copy of the disk: the template's is as it was saved.
    await a.shell("sync");
    await b.shell("sync");
    expect(upperStat()).toEqual(upperBefore);
    expect(await out(a, "hostname")).toBe("tpl-a\n");
    expect(await out(b, "hostname")).toBe("tpl-b\n");
    // A templated layout's NIC is a frame stream (no vhost-user: the memory is private),
    // so the guest checksums itself (feature bit 0, CSUM, not negotiated).
    const dev = (await out(a, "basename $(readlink /sys/class/net/eth0/device)")).trim();
    expect((await out(a, `cat /sys/bus/virtio/devices/${dev}/features`))[0]).toBe("0");
    // Each reaches the host through its own network stack.
    const get = `wget -q -O - http://host.microsandbox.internal:${port}/`;
    expect([await out(a, get), await out(b, get)]).toEqual(["from the host\n", "from the host\n"]);
    // Reseeded at bootstrap: the two guests' random streams differ.
    const rnd = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
    const [ra, rb] = [await out(a, rnd), await out(b, rnd)];
    expect(ra).toMatch(/^[0-9a-f]{64}$/);
    expect(ra).not.toBe(rb);
    const uuid = "cat /proc/sys/kernel/random/uuid";
    expect(await out(a, uuid)).not.toBe(await out(b, uuid));
    // The clock is the host's, not the template's.
    for (const sb of [a, b]) {
      const guest = Number((await out(sb, "date +%s")).trim());
      expect(Math.abs(guest - Date.now() / 1000)).toBeLessThan(2);
    }
    // Stop and start a restored sandbox: its files are kept (the start restores too, from
    // the save with only the image mounted: its own disk is mounted at its bootstrap).
    await a.stop();
    const again = await Sandbox.start("tpl-a");
    live.push(again);
    expect(await out(again, "cat /root/mine.txt")).toBe("a\n");
    expect(templateLines("tpl-a")).toEqual([expect.stringMatching(new RegExp(`: restored \\(memory mapped copy-on-write from .*/${key}/ram\\)`))]);
    expect(readFileSync(join(home(), "sandboxes", "tpl-a", "console.log"), "utf8")).toMatch(/bootstrap in \d+ ms: .*disks \(image prepared\)/);
    expect(await out(again, "echo more > /root/mine.txt && cat /root/mine.txt /root/theirs.txt 2>&1 | head -2")).toMatch(/^more\n.*No such file/);
    // The template deleted while restored sandboxes run: they do not use it any more.
    rmSync(join(home(), "templates"), { recursive: true });
    expect(await out(b, "echo still here")).toBe("still here\n");
    // ...and touch memory they never touched before: it comes from the deleted file, still mapped.
    expect(await out(b, "dd if=/dev/zero of=/root/big bs=1M count=48 2>/dev/null && md5sum /root/big | cut -c1-8 && rm /root/big")).toBe("f6a7b2f7\n");
    await again.stop();
    await b.stop();
  });

  it("another shape, another agent build, a damaged template: not used (cold boot, one log line); off per sandbox and per process", async () => {
    const base = await make("tpl-base");
    await base.stop();
    const [key] = templates();
    expect(key).toMatch(/^[0-9a-f]{16}$/);

    // Another memory size: a template of its own.
    const big = await make("tpl-mem", (b) => b.memory(384));
    expect(templateLines("tpl-mem")[0]).toMatch(/none made yet: cold boot/);
    await big.stop();
    expect(templates().length).toBe(2);

    // Another build of the initramfs (with the agent): its own key; the old one is not used.
    const work = mkdtempSync(join(tmpdir(), "msb-tpl-"));
    try {
      const initramfs = join(work, "initramfs.cpio");
      copyFileSync(native().assetPaths().initramfs, initramfs);
      process.env.MSB_INITRAMFS = initramfs;
      const other = await make("tpl-agent");
      expect(templateLines("tpl-agent")[0]).toMatch(/none made yet: cold boot/);
      expect(await out(other, "echo ok")).toBe("ok\n");
      await other.stop();
    } finally {
      delete process.env.MSB_INITRAMFS;
      rmSync(work, { recursive: true, force: true });
    }

    // Another image (a copy of the default one with a marker file): a template of its own.
    // The image is mounted in its template, so the same file rewritten is another one too.
    const imgDir = mkdtempSync(join(tmpdir(), "msb-tpl-img-"));
    try {
      const img = join(imgDir, "rootfs.ext4");
      copyFileSync(native().assetPaths().defaultImage, img);
      const mark = (text: string) => {
        writeFileSync(join(imgDir, "marker"), text);
        execFileSync(["/usr/sbin/debugfs", "/sbin/debugfs"].find((p) => existsSync(p)) ?? "debugfs", ["-w", "-f", "-", img], { input: `rm /marker\nwrite ${join(imgDir, "marker")} /marker\n`, stdio: ["pipe", "ignore", "ignore"] });
      };
      const fromImage = (name: string) => make(name, (b) => b.imageWith((i) => i.disk(img)));
      mark("one\n");
      const i1 = await fromImage("tpl-img1");
      expect(templateLines("tpl-img1")[0]).toMatch(/none made yet: cold boot/);
      expect(await out(i1, "cat /marker")).toBe("one\n");
      await i1.stop();
      const i2 = await fromImage("tpl-img2");
      expect(templateLines("tpl-img2")).toEqual([expect.stringMatching(/: restored /)]);
      expect(await out(i2, "cat /marker; hostname")).toBe("one\ntpl-img2\n");
      // The image disk (its common files read) and the root were mounted in the template.
      expect(readFileSync(join(home(), "sandboxes", "tpl-img2", "console.log"), "utf8")).toMatch(/bootstrap in \d+ ms: .*disks \(prepared\)/);
      await i2.stop();
      mark("two\n");
      const i3 = await fromImage("tpl-img3");
      expect(templateLines("tpl-img3")[0]).toMatch(/none made yet: cold boot/);
      expect(await out(i3, "cat /marker")).toBe("two\n");
      await i3.stop();
    } finally {
      rmSync(imgDir, { recursive: true, force: true });
    }

    // A truncated state file: removed, cold boot, made again.
    truncateSync(join(home(), "templates", key!, "state"), 100);
    const damaged = await make("tpl-damaged");
    const lines = templateLines("tpl-damaged");
    expect(lines[0]).toMatch(/was damaged: its state is 100 bytes, \d+ recorded \(truncated or replaced\); removed: cold boot/);
    expect(lines[1]).toMatch(/: made /);
    expect(await out(damaged, "echo ok")).toBe("ok\n");
    await damaged.stop();
    // The root save's disk truncated: the same.
    truncateSync(join(home(), "templates", key!, "root", "upper"), 4096);
    const noDisk = await make("tpl-no-disk");
    const nl = templateLines("tpl-no-disk");
    expect(nl[0]).toMatch(/was damaged: its upper is 4096 bytes, \d+ recorded \(truncated or replaced\); removed: cold boot/);
    expect(nl[1]).toMatch(/: made /);
    expect(await out(noDisk, "echo ok > /root/f && cat /root/f")).toBe("ok\n");
    await noDisk.stop();

    // A state file of the right size whose content is garbage: QEMU cannot load it; the
    // template is removed and that create boots cold instead of failing.
    const fd = openSync(join(home(), "templates", key!, "root", "state"), "r+");
    try {
      writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, 0);
    } finally {
      closeSync(fd);
    }
    const garbled = await make("tpl-garbled");
    const gl = templateLines("tpl-garbled");
    expect(gl[0]).toMatch(new RegExp(`memory template ${key}: .*; removed: cold boot instead$`));
    expect(gl[1]).toMatch(/: made /);
    expect(await out(garbled, "echo ok")).toBe("ok\n");
    await garbled.stop();
    expect(templateLines("tpl-damaged").length).toBe(2);

    // warmup(): makes the template of a shape ahead of time (here 256 MiB, no network),
    // or says it is there already; the next sandbox of that shape is a restore.
    const w1 = await Sandbox.warmup({ memory: 256, network: false });
    expect([w1.made, w1.reason]).toEqual([true, null]);
    expect(w1.template).toMatch(/^[0-9a-f]{16}$/);
    expect(templates()).toContain(w1.template);
    const w2 = await Sandbox.warmup({ memory: 256, network: false });
    expect([w2.template, w2.made]).toEqual([w1.template, false]);
    const warm = await Sandbox.builder("tpl-warm").memory(256).disableNetwork().create();
    live.push(warm);
    expect(templateLines("tpl-warm")).toEqual([expect.stringMatching(new RegExp(`memory template ${w1.template}: restored `))]);
    expect(await out(warm, "ip -o link show 2>/dev/null | grep -c eth || true")).toBe("0\n");
    await warm.stop();
    // A shape that is never templated: no template, and why.
    await expect(Sandbox.warmup({ memory: "lots" as never })).rejects.toMatchObject({ code: "invalidConfig" });

    // Off for one sandbox, and for the process.
    const off = await make("tpl-off", (b) => b.memoryTemplate(false));
    expect(templateLines("tpl-off")).toEqual([]);
    expect(off.config().memoryTemplate).toBe(false);
    await off.stop();
    process.env.MSB_TEMPLATES = "off";
    try {
      const envOff = await make("tpl-env-off");
      expect(templateLines("tpl-env-off")).toEqual([]);
      await envOff.stop();
      const w = await Sandbox.warmup();
      expect([w.template, w.made, w.reason]).toEqual([null, false, expect.stringContaining("MSB_TEMPLATES=off")]);
    } finally {
      delete process.env.MSB_TEMPLATES;
    }
  });
});
