// End-to-end: msb create / ls / exec / metrics / stop / start / inspect / kill / rm with
// the built CLI and real VMs. Every msb call is its own process, so the sandbox has to
// outlive each of them (created detached).
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const bin = fileURLToPath(new URL("../dist/bin.js", import.meta.url));
let home = "";

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run msb; with `until`, send SIGINT once its stdout satisfies it. */
function msb(args: string[], opts: { until?: (stdout: string) => boolean } = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { env: { ...process.env, MSB_HOME: home }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let sent = false;
    const guard = opts.until ? setTimeout(() => child.kill("SIGKILL"), 60_000) : undefined;
    child.on("close", () => clearTimeout(guard));
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      if (opts.until && !sent && opts.until(stdout)) {
        sent = true;
        child.kill("SIGINT");
      }
    });
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

interface LsEntry {
  name: string;
  status: string;
  image: string | null;
  createdAt: string;
  runtimePid: number | null;
  exitCode: number | null;
  exitReason: string | null;
}

async function ls(): Promise<LsEntry[]> {
  const r = await msb(["ls", "--json"]);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as LsEntry[];
}

beforeAll(() => {
  home = mkdtempSync(join(tmpdir(), "msb-"));
});
afterAll(async () => {
  // Detached sandboxes outlive msb: kill and remove whatever a failed test left.
  if (home) {
    const left = await ls().catch(() => [] as LsEntry[]);
    if (left.length > 0) await msb(["rm", "-f", ...left.map((e) => e.name)]);
    rmSync(home, { recursive: true, force: true });
  }
});

describe("msb lifecycle round trip", () => {
  it("create, ls, exec, metrics, stop, start (files kept), inspect, kill, rm", async () => {
    const created = await msb(["create", "--name", "cli-life", "-e", "GREETING=hi", "--idle-timeout", "600"]);
    expect(created.stderr).toBe("");
    expect(created.stdout).toBe("cli-life\n");
    expect(created.code).toBe(0);

    let entries = await ls();
    expect(entries).toHaveLength(1);
    expect(entries[0]).toMatchObject({ name: "cli-life", status: "running", image: null, exitCode: null });
    expect(entries[0]!.runtimePid).toBeGreaterThan(0);
    const table = await msb(["ps"]);
    expect(table.stdout).toMatch(/^NAME\s+STATUS\s+IMAGE\s+CREATED\ncli-life\s+running\s+\(default\)\s+\d+ seconds ago\n$/);

    // exec: output streamed, exit code passed through, env from create
    const ex = await msb(["exec", "cli-life", "--", "sh", "-c", 'echo "$GREETING" > /kept.txt; cat /kept.txt; echo oops >&2; exit 7']);
    expect(ex.stdout).toBe("hi\n");
    expect(ex.stderr).toBe("oops\n");
    expect(ex.code).toBe(7);
    const notFound = await msb(["exec", "cli-life", "--", "definitely-not-a-command"]);
    expect(notFound.code).toBe(127);

    // metrics from another process
    const m = await msb(["metrics", "--json", "cli-life"]);
    expect(m.code, m.stderr).toBe(0);
    const sample = JSON.parse(m.stdout) as { name: string; memoryLimitBytes: number; uptime: number };
    expect(sample.name).toBe("cli-life");
    expect(sample.memoryLimitBytes).toBe(512 * 1024 * 1024);
    expect(sample.uptime).toBeGreaterThan(0);
    // --watch off a terminal: a JSON line per sample until Ctrl-C
    const watch = await msb(["metrics", "--watch", "--interval", "300", "--json", "cli-life"], {
      until: (out) => out.split("\n").length > 3,
    });
    expect(watch.code).toBe(130);
    const lines = watch.stdout.trim().split("\n");
    expect(lines.length).toBeGreaterThanOrEqual(3);
    for (const l of lines) expect((JSON.parse(l) as { name: string }).name).toBe("cli-life");

    // stop: status stopped, exit 0; exec refused
    const stopped = await msb(["stop", "cli-life"]);
    expect(stopped).toMatchObject({ code: 0, stdout: "cli-life\n" });
    entries = await ls();
    expect(entries[0]).toMatchObject({ status: "stopped", exitCode: 0, exitReason: "stopped", runtimePid: null });
    const refused = await msb(["exec", "cli-life", "--", "true"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("stopped");

    // start: the file written before the stop is still there
    const started = await msb(["start", "cli-life"]);
    expect(started).toMatchObject({ code: 0, stdout: "cli-life\n" });
    const cat = await msb(["exec", "cli-life", "--", "cat", "/kept.txt"]);
    expect(cat).toMatchObject({ code: 0, stdout: "hi\n" });

    const inspect = await msb(["inspect", "cli-life"]);
    expect(inspect.code).toBe(0);
    const j = JSON.parse(inspect.stdout) as { status: string; config: { env: [string, string][]; idleTimeoutSecs: number } };
    expect(j.status).toBe("running");
    expect(j.config.env).toContainEqual(["GREETING", "hi"]);
    expect(j.config.idleTimeoutSecs).toBe(600);

    // rm of a running sandbox is refused; kill then rm works
    const busy = await msb(["rm", "cli-life"]);
    expect(busy.code).toBe(1);
    expect(busy.stderr).toMatch(/running/);
    expect(await msb(["kill", "cli-life"])).toMatchObject({ code: 0, stdout: "cli-life\n" });
    expect((await ls())[0]).toMatchObject({ status: "stopped", exitCode: 137 });
    expect(await msb(["rm", "cli-life"])).toMatchObject({ code: 0, stdout: "cli-life\n" });
    expect(await ls()).toEqual([]);
    expect(existsSync(join(home, "sandboxes", "cli-life"))).toBe(false);
  }, 240_000);

  it("unknown names: a not-found message and exit 1", async () => {
    for (const args of [["start", "nobody"], ["stop", "nobody"], ["kill", "nobody"], ["rm", "nobody"], ["inspect", "nobody"], ["exec", "nobody", "--", "true"], ["metrics", "nobody"]]) {
      const r = await msb(args);
      expect(r.code, args.join(" ")).toBe(1);
      expect(r.stderr, args.join(" ")).toMatch(/^msb: .*nobody/);
    }
  });

  it("create --replace replaces; without it a taken name is an error", async () => {
    expect((await msb(["create", "--name", "cli-rep"])).code).toBe(0);
    const taken = await msb(["create", "--name", "cli-rep"]);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/already exists/);
    const first = (await ls()).find((e) => e.name === "cli-rep")!;
    expect((await msb(["create", "--name", "cli-rep", "--replace"])).code).toBe(0);
    const second = (await ls()).find((e) => e.name === "cli-rep")!;
    expect(second.status).toBe("running");
    expect(second.runtimePid).not.toBe(first.runtimePid);
    expect(await msb(["rm", "-f", "cli-rep"])).toMatchObject({ code: 0 });
  }, 180_000);

  it("fork: a detached copy of a running sandbox that outlives msb; a taken name is refused", async () => {
    expect((await msb(["create", "--name", "cli-src"])).code).toBe(0);
    expect((await msb(["exec", "cli-src", "--", "sh", "-c", "echo forked-state > /root/s.txt"])).code).toBe(0);
    const forked = await msb(["fork", "cli-src", "cli-dst", "--json"]);
    expect(forked.stderr).toBe("");
    expect(forked.code).toBe(0);
    const j = JSON.parse(forked.stdout) as { name: string; parent: string; ms: number };
    expect(j).toMatchObject({ name: "cli-dst", parent: "cli-src" });
    expect(j.ms).toBeGreaterThan(0);
    // The msb that forked it has exited: the fork runs on, with the parent's file.
    expect((await ls()).find((e) => e.name === "cli-dst")).toMatchObject({ status: "running" });
    expect(await msb(["exec", "cli-dst", "--", "cat", "/root/s.txt"])).toMatchObject({ code: 0, stdout: "forked-state\n" });
    const taken = await msb(["fork", "cli-src", "cli-dst"]);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/already exists/);
    expect(await msb(["rm", "-f", "cli-src", "cli-dst"])).toMatchObject({ code: 0 });
  }, 180_000);
});
