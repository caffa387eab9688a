// msb create / start / stop / kill / rm / ls / inspect / exec / metrics through the real
// SDK on the fake native addon (packages/sdk/test/fake-native.ts).
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { setNativeBinding } from "../../sdk/src/native.js";
import { defaultMetrics, fakeNative, run, type FakeNative } from "../../sdk/test/fake-native.js";
import { main, type MainIO } from "../src/main.js";
import { formatDuration, formatMetricsJson, formatMetricsLine, formatSandboxes } from "../src/sandboxes.js";
import { Sandbox, type SandboxMetrics } from "@microsandbox/sdk";

const dec = new TextDecoder();
let fake: FakeNative;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative((req) => {
    if (req.cmd === "missing") return [{ kind: "failed", reason: "missing: not found" }];
    if (req.cmd === "sh") return run("out\n", "err\n", 3);
    return run(`${[req.cmd, ...req.args].join(" ")}\n`);
  });
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-cli-unit";
});
afterEach(() => {
  vi.useRealTimers();
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

function io(opts: { isTTY?: boolean; columns?: number; signal?: AbortSignal } = {}) {
  let out = "";
  let err = "";
  const t: MainIO = {
    out: (s) => void (out += s),
    err: (s) => void (err += s),
    writeOut: async (d) => void (out += dec.decode(d)),
    writeErr: async (d) => void (err += typeof d === "string" ? d : dec.decode(d)),
    isTTY: opts.isTTY ?? false,
  };
  if (opts.columns !== undefined) t.columns = opts.columns;
  if (opts.signal) t.signal = opts.signal;
  return { io: t, out: () => out, err: () => err };
}

async function msb(...argv: string[]) {
  const t = io();
  const code = await main(argv, t.io);
  return { code, out: t.out(), err: t.err() };
}

describe("msb create / start / stop / kill / rm", () => {
  it("create makes a detached sandbox, prints its name and leaves it running", async () => {
    const r = await msb("create", "--name", "w1", "--cpus", "2", "-e", "A=1", "--idle-timeout", "60", "--max-duration", "3600");
    expect(r).toEqual({ code: 0, out: "w1\n", err: "" });
    expect(fake.configs[0]).toMatchObject({ name: "w1", mode: "create", attached: false, cpus: 2, env: [["A", "1"]], idleTimeoutSecs: 60, maxDurationSecs: 3600 });
    expect((await Sandbox.get("w1")).status).toBe("running");
    // msb's own connection is closed; the VM was not stopped
    expect(fake.clients[0]!.calls).toEqual(["close"]);
  });

  it("create without a name picks sb-<hex>; a name in use is an error (exit 1) unless --replace", async () => {
    const r = await msb("create");
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^sb-[0-9a-f]{8}\n$/);
    await msb("create", "--name", "dup");
    const again = await msb("create", "--name", "dup");
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/^msb: .*dup.*already exists/);
    expect((await msb("create", "--name", "dup", "--replace")).code).toBe(0);
  });

  it("invalid options exit 2 naming the field", async () => {
    const r = await msb("create", "--name", "bad/name");
    expect(r.code).toBe(2);
    expect(r.err).toContain("name");
  });

  it("stop, start, kill and rm print each name; unknown names -> not found, exit 1, the others still done", async () => {
    await msb("create", "--name", "a");
    await msb("create", "--name", "b");
    expect(await msb("stop", "a", "nope", "b")).toMatchObject({ code: 1, out: "a\nb\n" });
    expect((await msb("stop", "nope")).err).toMatch(/^msb: .*nope/);
    expect((await Sandbox.get("a")).status).toBe("stopped");
    expect(await msb("start", "a")).toEqual({ code: 0, out: "a\n", err: "" });
    expect(fake.configs.at(-1)).toMatchObject({ name: "a", mode: "start", attached: false });
    expect((await Sandbox.get("a")).status).toBe("running");
    expect(await msb("kill", "a")).toEqual({ code: 0, out: "a\n", err: "" });
    expect((await Sandbox.get("a")).exitCode).toBe(137);
    expect(await msb("rm", "a", "b")).toEqual({ code: 0, out: "a\nb\n", err: "" });
    expect(await Sandbox.list()).toEqual([]);
    for (const cmd of ["start", "stop", "kill", "rm", "inspect", "metrics"]) {
      const r = await msb(cmd, "ghost");
      expect(r.code, cmd).toBe(1);
      expect(r.err, cmd).toContain("ghost");
    }
  });

  it("rm of a running sandbox fails (exit 1) unless -f", async () => {
    await msb("create", "--name", "busy");
    const r = await msb("rm", "busy");
    expect(r.code).toBe(1);
    expect(r.err).toBe("msb: sandbox busy is running; stop it first\n");
    expect(await msb("rm", "-f", "busy")).toEqual({ code: 0, out: "busy\n", err: "" });
  });

  it("stop --timeout passes the timeout through", async () => {
    await msb("create", "--name", "t");
    await msb("stop", "--timeout", "2500", "t");
    expect(fake.clients.at(-1)!.calls).toEqual(["stop:2500", "close"]);
  });
});

describe("msb ls / inspect", () => {
  it("ls prints a table NAME STATUS IMAGE CREATED, sorted by name; --json the records", async () => {
    fake.addRecord({ name: "zeta", status: "crashed", createdAt: Date.now() - 120_000, configJson: JSON.stringify({ name: "zeta", cpus: 1, memoryMib: 512, image: "alpine:3.20", imageKind: "oci" }) });
    fake.addRecord({ name: "alpha", status: "running", createdAt: Date.now() - 5_000, configJson: JSON.stringify({ name: "alpha", cpus: 1, memoryMib: 512 }) });
    fake.addRecord({ name: "mid", status: "stopped", configJson: "garbage" });
    const r = await msb("ls");
    expect(r.code).toBe(0);
    const lines = r.out.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^NAME\s+STATUS\s+IMAGE\s+CREATED$/);
    expect(lines[1]).toMatch(/^alpha\s+running\s+\(default\)\s+\d+ seconds ago$/);
    expect(lines[2]).toMatch(/^mid\s+stopped\s+\?\s+/);
    expect(lines[3]).toMatch(/^zeta\s+crashed\s+alpine:3\.20\s+2 minutes ago$/);

    const j = JSON.parse((await msb("ps", "--json")).out) as Record<string, unknown>[];
    expect(j.map((x) => [x.name, x.status, x.image])).toEqual([
      ["alpha", "running", null],
      ["mid", "stopped", null],
      ["zeta", "crashed", "alpine:3.20"],
    ]);
    expect(j[0]).toMatchObject({ runtimePid: 4242, exitCode: null });
    expect(typeof j[0]!.createdAt).toBe("string");
    expect(JSON.parse((await msb("ls", "--json")).out)).toEqual(j);
  });

  it("ls with nothing prints the header only, or []", async () => {
    expect((await msb("ls")).out).toBe("NAME  STATUS  IMAGE  CREATED\n");
    expect(JSON.parse((await msb("ls", "--json")).out)).toEqual([]);
  });

  it("inspect prints the record and the parsed config; a corrupt config is reported, not fatal", async () => {
    await msb("create", "--name", "w1", "-e", "K=V");
    const r = await msb("inspect", "w1");
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out) as Record<string, unknown> & { config: Record<string, unknown> };
    expect(j).toMatchObject({ name: "w1", status: "running", runtimePid: 4242, exitCode: null });
    expect(j.config).toMatchObject({ name: "w1", env: [["K", "V"]], cpus: 1 });

    fake.addRecord({ name: "bad", configJson: "{" });
    const b = JSON.parse((await msb("inspect", "bad")).out) as Record<string, unknown>;
    expect(b.config).toBeNull();
    expect(b.configError).toContain("bad");
  });
});

describe("msb exec", () => {
  it("streams stdout and stderr apart and exits with the command's code", async () => {
    await msb("create", "--name", "w1");
    const r = await msb("exec", "w1", "--", "sh", "-c", "x");
    expect(r).toEqual({ code: 3, out: "out\n", err: "err\n" });
    expect(fake.clients[1]!.requests[0]).toMatchObject({ cmd: "sh", args: ["-c", "x"] });
    // the connection is closed afterwards, the sandbox keeps running
    expect(fake.clients[1]!.calls).toEqual(["exec", "close"]);
    expect((await Sandbox.get("w1")).status).toBe("running");
  });

  it("a command that cannot start exits 127; a stopped sandbox or an unknown one exits 1", async () => {
    await msb("create", "--name", "w1");
    const r = await msb("exec", "w1", "--", "missing");
    expect(r.code).toBe(127);
    expect(r.err).toBe("msb: missing: not found\n");
    await msb("stop", "w1");
    const s = await msb("exec", "w1", "--", "true");
    expect(s.code).toBe(1);
    expect(s.err).toContain("stopped");
    const u = await msb("exec", "ghost", "--", "true");
    expect(u.code).toBe(1);
    expect(u.err).toContain("ghost");
  });

  it("a draining sandbox refuses the command (exit 1, says so)", async () => {
    await msb("create", "--name", "d");
    fake.setStatus("d", "draining");
    const r = await msb("exec", "d", "--", "echo");
    expect(r.code).toBe(1);
    expect(r.err).toContain("draining");
  });
});

describe("msb metrics", () => {
  const sample = (over: Partial<ReturnType<typeof defaultMetrics>> = {}) => ({
    ...defaultMetrics(),
    cpuPercent: 37.25,
    memoryBytes: 200 << 20,
    memoryLimitBytes: 512 << 20,
    diskReadBytes: 3 << 20,
    diskWriteBytes: 1536,
    timestampMs: Date.UTC(2026, 0, 2, 3, 4, 5),
    uptimeMs: 65_000,
    ...over,
  });

  it("prints one line, or one JSON object", async () => {
    fake.metricsOf = () => sample();
    await msb("create", "--name", "w1");
    const r = await msb("metrics", "w1");
    expect(r.code).toBe(0);
    expect(r.out).toBe("w1  cpu 37.3%  mem 200 MiB / 512 MiB (39.1%)  disk r 3.0 MiB w 1.5 KiB  net rx 0 B tx 0 B  up 1m05s\n");
    const j = JSON.parse((await msb("metrics", "--json", "w1")).out) as Record<string, unknown>;
    expect(j).toEqual({
      name: "w1",
      cpuPercent: 37.25,
      memoryBytes: 200 << 20,
      memoryLimitBytes: 512 << 20,
      diskReadBytes: 3 << 20,
      diskWriteBytes: 1536,
      netRxBytes: 0,
      netTxBytes: 0,
      timestamp: "2026-01-02T03:04:05.000Z",
      uptime: 65_000,
    });
  });

  it("of a stopped sandbox -> exit 1 saying it is stopped", async () => {
    await msb("create", "--name", "w1");
    await msb("stop", "w1");
    const r = await msb("metrics", "w1");
    expect(r.code).toBe(1);
    expect(r.err).toContain("stopped");
  });

  it("--watch off a terminal: one line per sample at the interval, until Ctrl-C (130)", async () => {
    vi.useFakeTimers();
    let n = 0;
    fake.metricsOf = () => sample({ uptimeMs: 1000 * ++n });
    await msb("create", "--name", "w1");
    const ac = new AbortController();
    const t = io({ signal: ac.signal });
    const done = main(["metrics", "--watch", "--interval", "500", "w1"], t.io);
    await vi.advanceTimersByTimeAsync(1_200); // samples at 0, 500, 1000
    ac.abort("SIGINT");
    expect(await done).toBe(130);
    const lines = t.out().trimEnd().split("\n");
    expect(lines).toHaveLength(3);
    expect(lines.map((l) => /up (\S+)$/.exec(l)?.[1])).toEqual(["1.0s", "2.0s", "3.0s"]);
    // sampling stopped and the connection was closed
    const client = fake.clients.at(-1)!;
    const calls = client.calls.length;
    await vi.advanceTimersByTimeAsync(5_000);
    expect(client.calls.length).toBe(calls);
    expect(client.calls.at(-1)).toBe("close");
  });

  it("--watch on a terminal redraws one line in place, cut to the width", async () => {
    vi.useFakeTimers();
    fake.metricsOf = () => sample();
    await msb("create", "--name", "w1");
    const ac = new AbortController();
    const t = io({ isTTY: true, columns: 40, signal: ac.signal });
    const done = main(["metrics", "--watch", "--interval", "100", "w1"], t.io);
    await vi.advanceTimersByTimeAsync(250);
    ac.abort("SIGINT");
    expect(await done).toBe(130);
    const frames = t.out().split("\r\x1b[2K").filter(Boolean);
    expect(frames).toHaveLength(3);
    expect(frames.slice(0, 2).every((f) => f.length === 39 && !f.includes("\n"))).toBe(true);
    expect(frames[2]!.endsWith("\n")).toBe(true);
  });

  it("--watch ends with exit 0 when the sandbox stops", async () => {
    vi.useFakeTimers();
    await msb("create", "--name", "w1");
    const t = io();
    const done = main(["metrics", "--watch", "--json", "--interval", "100", "w1"], t.io);
    await vi.advanceTimersByTimeAsync(150);
    fake.endVm("w1", { code: 0, reason: "idle timeout" });
    await vi.advanceTimersByTimeAsync(500);
    expect(await done).toBe(0);
    expect(t.out().trimEnd().split("\n")).toHaveLength(2);
    expect(t.err()).toBe("msb: sandbox w1 stopped\n");
  });
});

describe("formatting", () => {
  it("formatDuration", () => {
    expect(formatDuration(0)).toBe("0.0s");
    expect(formatDuration(1234)).toBe("1.2s");
    expect(formatDuration(59_949)).toBe("59.9s");
    expect(formatDuration(60_000)).toBe("1m00s");
    expect(formatDuration(3_723_000)).toBe("1h02m03s");
  });

  it("formatMetricsLine and formatMetricsJson", () => {
    const m: SandboxMetrics = {
      cpuPercent: 0,
      memoryBytes: 0,
      memoryLimitBytes: 0,
      diskReadBytes: 0,
      diskWriteBytes: 0,
      netRxBytes: 10,
      netTxBytes: 2048,
      timestamp: new Date(0),
      uptime: 500,
    };
    expect(formatMetricsLine("x", m)).toBe("x  cpu 0.0%  mem 0 B / 0 B  disk r 0 B w 0 B  net rx 10 B tx 2.0 KiB  up 0.5s");
    expect(JSON.parse(formatMetricsJson("x", m))).toMatchObject({ name: "x", timestamp: "1970-01-01T00:00:00.000Z", uptime: 500 });
  });

  it("formatSandboxes uses relative creation times", () => {
    const now = new Date(1_000_000_000);
    const h = {
      name: "n",
      status: "stopped",
      createdAt: new Date(now.getTime() - 3 * 3600_000),
      config: () => ({ image: "/abs/rootfs" }),
    } as unknown as Parameters<typeof formatSandboxes>[0][number];
    expect(formatSandboxes([h], false, now)).toBe("NAME  STATUS   IMAGE        CREATED\nn     stopped  /abs/rootfs  3 hours ago\n");
  });
});
