/**
 * Exec, filesystem, error and network-rule shapes of the reference SDK (issue 14), on the
 * fake addon: per-call options objects, the spawn failure as a stream event, takeStdin()
 * null, ExecHandle.id, stat's readonly, FsReadStream.collect(), bare-string destinations.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  Destination,
  ExecFailedError,
  ExecOptionsBuilder,
  ExecOutput,
  ExecTimeoutError,
  FsWriteSink,
  InvalidConfigError,
  LibkrunfwNotFoundError,
  KernelNotFoundError,
  NetworkBuilder,
  NetworkConfigError,
  NetworkPolicy,
  OutputLimitError,
  PortRange,
  Rule,
  Sandbox,
  SandboxFsOpsError,
  Stdin,
  policyFromSpec,
  targetOf,
  type ExecEvent,
} from "../src/index.js";
import { setNativeBinding } from "../src/native.js";
import { catSession, fakeNative, run, type FakeClient, type FakeNative } from "./fake-native.js";

let fake: FakeNative;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative((req) => {
    if (req.cmd === "cat") return catSession();
    if (req.cmd === "missing") return [{ kind: "failed", reason: "command not found: missing" }];
    return run(`${[req.cmd, ...req.args].join(" ")}|${req.cwd ?? ""}|${req.env.map(([k, v]) => `${k}=${v}`).join(",")}\n`);
  });
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-unit-home";
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

const client = (): FakeClient => fake.clients[0]!;
const box = () => Sandbox.builder("p1").create();

async function invalid(p: Promise<unknown> | (() => unknown)): Promise<InvalidConfigError> {
  const e = await (typeof p === "function" ? Promise.resolve().then(p) : p).catch((x: unknown) => x);
  expect(e).toBeInstanceOf(InvalidConfigError);
  return e as InvalidConfigError;
}

describe("per-call options (the reference's ExecOptions shape)", () => {
  it("shell(script, options) runs the script with them; shellStream too", async () => {
    const sb = await box();
    const out = await sb.shell("echo $X", { cwd: "/tmp", env: { X: "1", Y: "2" }, args: ["a0", "a1"] });
    expect(out.stdout()).toBe("/bin/sh -c echo $X a0 a1|/tmp|X=1,Y=2\n");
    const req = client().requests.at(-1)!;
    expect(req.cmd).toBe("/bin/sh");
    expect(req.args).toEqual(["-c", "echo $X", "a0", "a1"]);
    const h = await sb.shellStream("pwd", { cwd: "/srv" });
    expect((await h.collect()).stdout()).toBe("/bin/sh -c pwd|/srv|\n");
    // the callback form is accepted too (as shellWith)
    expect((await sb.shell("pwd", (b) => b.cwd("/opt"))).stdout()).toBe("/bin/sh -c pwd|/opt|\n");
    // and no options: as before
    expect((await sb.shell("pwd")).stdout()).toBe("/bin/sh -c pwd||\n");
    await sb.stop();
  });

  it("exec(cmd, args, options) and execStream: positional args first, then the options' own", async () => {
    const sb = await box();
    expect((await sb.exec("ls", ["-l"], { args: ["/x"], cwd: "/w" })).stdout()).toBe("ls -l /x|/w|\n");
    const h = await sb.execStream("ls", ["-a"], { env: { K: "V" } });
    expect((await h.collect()).stdout()).toBe("ls -a||K=V\n");
    await sb.stop();
  });

  it("args may be any iterable, as the reference's exec(cmd, args?: Iterable<string>); an endless one is refused", async () => {
    const sb = await box();
    expect((await sb.exec("echo", new Set(["a", "b"]) as unknown as string[])).stdout()).toBe("echo a b||\n");
    function* gen() {
      yield "x";
      yield "y";
    }
    expect((await sb.exec("echo", gen() as unknown as string[], { cwd: "/" })).stdout()).toBe("echo x y|/|\n");
    function* endless() {
      for (;;) yield "z";
    }
    expect((await invalid(sb.exec("echo", endless() as unknown as string[]))).field).toBe("args");
    expect((await invalid(sb.exec("echo", "notarray" as unknown as string[]))).field).toBe("args");
    await sb.stop();
  });

  it("stdin from the options: Stdin.bytes(), a string, Stdin.pipe() with takeStdin()", async () => {
    const sb = await box();
    expect((await sb.exec("cat", [], { stdin: Stdin.bytes("in put") })).stdout()).toBe("in put");
    expect((await sb.exec("cat", [], { stdin: "raw" })).stdout()).toBe("raw");
    expect((await sb.exec("cat", [], { stdin: new TextEncoder().encode("u8") })).stdout()).toBe("u8");
    const h = await sb.execStream("cat", [], { stdin: Stdin.pipe() });
    const sink = h.takeStdin();
    expect(sink).not.toBeNull();
    await sink!.write("piped");
    await sink!.close();
    expect((await h.collect()).stdout()).toBe("piped");
    await sb.stop();
  });

  it("bad options are InvalidConfigError naming the field, before anything runs", async () => {
    const sb = await box();
    const before = client().requests.length;
    expect((await invalid(sb.shell("x", { cwdd: "/" } as never))).field).toBe("cwdd");
    expect((await invalid(sb.shell("x", { env: "A=1" } as never))).field).toBe("env");
    expect((await invalid(sb.shell("x", { env: { "A=B": "1" } }))).field).toBe("env");
    expect((await invalid(sb.shell("x", { timeoutMs: -5 }))).field).toBe("timeoutMs");
    expect((await invalid(sb.shell("x", { stdin: { kind: "file" } } as never))).field).toBe("stdin");
    expect((await invalid(sb.shell("x", { cwd: "relative" }))).field).toBe("cwd");
    expect((await invalid(sb.shell("x", { tty: "yes" } as never))).field).toBe("tty");
    expect((await invalid(sb.exec("x", [], { rlimits: [{ resource: "nofile", soft: 10, hard: 20 }] }))).field).toBe("rlimit");
    expect((await invalid(sb.exec("x", [], { rlimits: [{ resource: "bogus" as never, soft: 1, hard: 1 }] }))).field).toBe("rlimit");
    expect((await invalid(sb.exec("x", [], { args: "a" } as never))).field).toBe("args");
    expect((await invalid(sb.exec("x", [], { stdin: "pipe" }))).field).toBe("stdin"); // buffered call: no handle to write to
    expect((await invalid(sb.shell("x", 42 as never))).field).toBe("options");
    expect(client().requests.length).toBe(before);
    await sb.stop();
  });

  it("rlimits with equal soft and hard limits reach the request", async () => {
    const sb = await box();
    await sb.exec("x", [], { rlimits: [{ resource: "nofile", soft: 64, hard: 64 }, { resource: "core", soft: "unlimited", hard: "unlimited" }] });
    expect(client().requests.at(-1)!.rlimits).toEqual([
      ["nofile", 64n],
      ["core", 2n ** 64n - 1n],
    ]);
    await sb.stop();
  });

  it("ExecOptionsBuilder.build() is the reference's ExecOptions; rlimitRange needs soft == hard", async () => {
    const built = new ExecOptionsBuilder().args(["a"]).cwd("/w").env("K", "V").timeout(500).stdinBytes("hi").rlimitRange("nofile", 8, 8).build();
    expect(built).toEqual({
      args: ["a"],
      cwd: "/w",
      env: { K: "V" },
      timeoutMs: 500,
      stdin: { kind: "bytes", data: new TextEncoder().encode("hi") },
      tty: false,
      rlimits: [{ resource: "nofile", soft: 8, hard: 8 }],
    });
    expect(new ExecOptionsBuilder().build()).toEqual({ args: [], env: {}, stdin: { kind: "null" }, tty: false, rlimits: [] });
    const e = await invalid(() => new ExecOptionsBuilder().rlimitRange("nofile", 8, 16).build());
    expect(e.field).toBe("rlimit");
    expect(e.message).toMatch(/soft \(8\) and hard \(16\)/);
  });
});

describe("ExecHandle in the reference's shape", () => {
  it("a spawn failure is the stream's last event: iteration sees it, wait/collect/exec reject ExecFailedError", async () => {
    const sb = await box();
    const h = await sb.execStream("missing");
    const seen: ExecEvent[] = [];
    for await (const ev of h) seen.push(ev);
    expect(seen).toEqual([{ kind: "failed", reason: "command not found: missing" }]);
    expect(await h.recv()).toBeNull();
    const w = await h.wait().catch((x: unknown) => x);
    expect(w).toBeInstanceOf(ExecFailedError);
    expect((w as ExecFailedError).code).toBe("execFailed");
    expect((w as ExecFailedError).reason).toBe("command not found: missing");
    await expect((await sb.execStream("missing")).collect()).rejects.toBeInstanceOf(ExecFailedError);
    await expect(sb.exec("missing")).rejects.toBeInstanceOf(ExecFailedError);
    await expect(sb.shell("x", { cwd: "/" }).then(() => sb.exec("missing", [], { cwd: "/" }))).rejects.toBeInstanceOf(ExecFailedError);
    await sb.stop();
  });

  it("takeStdin() is null without a pipe and on a second take (await works as with the reference's promise)", async () => {
    const sb = await box();
    const plain = await sb.execStream("echo");
    expect(plain.takeStdin()).toBeNull();
    expect(await plain.takeStdin()).toBeNull();
    await plain.wait();
    const bytes = await sb.execStream("cat", [], { stdin: Stdin.bytes("x") });
    expect(bytes.takeStdin()).toBeNull();
    await bytes.wait();
    const piped = await sb.execStreamWith("cat", (b) => b.stdinPipe());
    const first = await piped.takeStdin();
    expect(first).not.toBeNull();
    expect(piped.takeStdin()).toBeNull();
    await first!.close();
    expect(await piped.wait()).toEqual({ code: 0, success: true });
    await sb.stop();
  });

  it("id is the session's number, distinct per command, known at once", async () => {
    const sb = await box();
    const a = await sb.execStream("echo");
    const b = await sb.execStream("echo");
    expect(typeof a.id).toBe("string");
    expect(a.id).toMatch(/^\d+$/);
    expect(b.id).not.toBe(a.id);
    expect(await a.id).toBe(a.id);
    expect([...client().sessions.keys()].map(String)).toEqual(expect.arrayContaining([a.id, b.id]));
    await a.wait();
    await b.wait();
    await sb.stop();
  });

  it("asyncDispose kills a running command; ExecOutput.status", async () => {
    const sb = await box();
    {
      await using h = await sb.execStreamWith("cat", (b) => b.stdinPipe());
      expect(await h.recv()).toEqual({ kind: "started", pid: 77 });
    }
    expect(client().signals.at(-1)?.[1]).toBe(9);
    expect(new ExecOutput(3, new Uint8Array(), new Uint8Array()).status).toEqual({ code: 3, success: false });
    await sb.stop();
  });
});

describe("filesystem in the reference's shape", () => {
  it("stat() and list() give readonly (owner write bit) and path; mode is kept", async () => {
    const sb = await box();
    fake.fsOf("p1").mkdirp("/d");
    fake.fsOf("p1").put("/d/ro.txt", "r", 0o444);
    fake.fsOf("p1").put("/d/rw.txt", "w", 0o640);
    const ro = await sb.fs().stat("/d/ro.txt");
    expect(ro).toMatchObject({ name: "ro.txt", path: "/d/ro.txt", kind: "file", mode: 0o444, readonly: true, size: 1 });
    expect(await sb.fs().stat("/d/rw.txt")).toMatchObject({ mode: 0o640, readonly: false });
    const list = await sb.fs().list("/d");
    expect(list.map((e) => [e.path, e.readonly])).toEqual([
      ["/d/ro.txt", true],
      ["/d/rw.txt", false],
    ]);
    await sb.stop();
  });

  it("FsReadStream.collect() gathers the rest, with a maxBytes limit", async () => {
    const sb = await box();
    const big = new Uint8Array(200_000).map((_, i) => i % 251);
    fake.fsOf("p1").put("/big", big);
    expect(await (await sb.fs().readStream("/big")).collect()).toEqual(big);
    const s = await sb.fs().readStream("/big");
    const e = await s.collect({ maxBytes: 1000 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OutputLimitError);
    expect((e as OutputLimitError).field).toBe("maxBytes");
    expect((await invalid(async () => (await sb.fs().readStream("/big")).collect({ maxBytes: -1 }))).field).toBe("maxBytes");
    await sb.stop();
  });

  it("FsWriteSink is the write stream; asyncDispose finishes the file", async () => {
    const sb = await box();
    {
      await using ws = await sb.fs().writeStream("/out.txt");
      expect(ws).toBeInstanceOf(FsWriteSink);
      await ws.write("hello ");
      await ws.write(new TextEncoder().encode("world"));
    }
    expect(await sb.fs().readToString("/out.txt")).toBe("hello world");
    await sb.stop();
  });
});

describe("errors built the reference's way", () => {
  it("InvalidConfigError(message), ExecTimeoutError(message, ms), SandboxFsOpsError(message)", () => {
    const a = new InvalidConfigError("cpus: must be at least 1");
    expect([a.code, a.field, a.message]).toEqual(["invalidConfig", "cpus", "cpus: must be at least 1"]);
    expect(new InvalidConfigError("bad", { cause: 1 }).field).toBe("config");
    const ours = new InvalidConfigError("memory", "too small");
    expect([ours.field, ours.message]).toEqual(["memory", "too small"]);
    const t = new ExecTimeoutError("timed out after 5s", 5000);
    expect([t.code, t.timeoutMs, t.message]).toEqual(["execTimeout", 5000, "timed out after 5s"]);
    expect(new ExecTimeoutError(250).message).toBe("command did not finish within 250 ms");
    const f = new SandboxFsOpsError("open /x: ENOENT");
    expect([f.code, f.errno, f.path]).toEqual(["sandboxFsOps", "ENOENT", ""]);
    expect(new KernelNotFoundError("k")).toBeInstanceOf(LibkrunfwNotFoundError);
  });
});

describe("network rules with bare-string destinations", () => {
  it("a string is an IPv4 address, a CIDR, a domain or a *.suffix", () => {
    expect(targetOf("1.1.1.1")).toEqual({ ip: "1.1.1.1" });
    expect(targetOf("10.0.0.0/8")).toEqual({ cidr: "10.0.0.0/8" });
    expect(targetOf("API.Example.com.")).toEqual({ domain: "api.example.com" });
    expect(targetOf("*.example.com")).toEqual({ domainSuffix: "example.com" });
    for (const bad of ["1.2.3.999", "10.0.0.0/33", "exa mple.com", "", "::1"]) {
      let e: unknown;
      try {
        targetOf(bad);
      } catch (x) {
        e = x;
      }
      expect(e, bad).toBeInstanceOf(NetworkConfigError);
      expect((e as NetworkConfigError).field, bad).toBe("network.destination");
    }
  });

  it("the reference's factories build a policy that converts to ours", () => {
    const spec = {
      defaultEgress: "deny" as const,
      defaultIngress: "deny" as const,
      rules: [
        Rule.allowDns(),
        Rule.allowEgress("1.1.1.1"),
        { ...Rule.allowEgress("*.example.com"), protocols: ["tcp" as const], ports: [PortRange.single(443), PortRange.range(8000, 8080)] },
        Rule.denyAny(Destination.cidr("10.0.0.0/8")),
        Rule.allowIngress(Destination.any()),
      ],
    };
    const p = policyFromSpec(spec).toJSON();
    expect(p.defaultAction).toBe("deny");
    expect(p.egress).toEqual([
      { action: "allow", target: { ip: "1.1.1.1" } },
      { action: "allow", protocol: "tcp", ports: [443, 443], target: { domainSuffix: "example.com" } },
      { action: "allow", protocol: "tcp", ports: [8000, 8080], target: { domainSuffix: "example.com" } },
      { action: "deny", target: { cidr: "10.0.0.0/8" } },
    ]);
    expect(p.ingress).toEqual([
      { action: "deny", target: { cidr: "10.0.0.0/8" } },
      { action: "allow", target: { group: "any" } },
      { action: "deny", target: { group: "any" } },
    ]);
    // NetworkBuilder.policy() takes the object as it is
    const cfg = new NetworkBuilder().policy(spec).toNativeConfig();
    expect(cfg.policy).toEqual(p);
    // the builder takes bare strings too
    const b = NetworkPolicy.builder().egress((r) => r.tcp().port(443).allow("93.184.216.34").deny("evil.example")).defaultIngress("deny").build().toJSON();
    expect(b.egress).toEqual([
      { action: "allow", protocol: "tcp", ports: [443, 443], target: { ip: "93.184.216.34" } },
      { action: "deny", protocol: "tcp", ports: [443, 443], target: { domain: "evil.example" } },
    ]);
    expect(b.ingress).toEqual([{ action: "deny", target: { group: "any" } }]);
    // the reference's rule() with the direction set inside, and any()
    const r = NetworkPolicy.builder()
      .rule((x) => x.egress().tcp().port(443).allowPublic().ingress().deny("10.0.0.0/8"))
      .any((x) => x.allow("*.internal.example"))
      .build()
      .toJSON();
    expect(r.egress).toEqual([
      { action: "allow", protocol: "tcp", ports: [443, 443], target: { group: "public" } },
      { action: "allow", target: { domainSuffix: "internal.example" } },
    ]);
    expect(r.ingress).toEqual([
      { action: "deny", protocol: "tcp", ports: [443, 443], target: { cidr: "10.0.0.0/8" } },
      { action: "allow", target: { domainSuffix: "internal.example" } },
    ]);
    let e: unknown;
    try {
      NetworkPolicy.builder().rule((x) => x.allowPublic());
    } catch (x) {
      e = x;
    }
    expect((e as NetworkConfigError).field).toBe("network.direction");
  });

  it("bad rules name their field", () => {
    const bad = (spec: unknown) => {
      try {
        policyFromSpec(spec as never);
      } catch (e) {
        expect(e).toBeInstanceOf(NetworkConfigError);
        return (e as NetworkConfigError).field;
      }
      throw new Error("expected NetworkConfigError");
    };
    expect(bad({ defaultEgress: "maybe", rules: [] })).toBe("network.defaultEgress");
    expect(bad({ rules: [{ ...Rule.allowEgress("1.1.1.1"), direction: "up" }] })).toBe("network.direction");
    expect(bad({ rules: [{ ...Rule.allowEgress("1.1.1.1"), protocols: ["icmpv6"] }] })).toBe("network.protocols");
    expect(bad({ rules: [{ ...Rule.allowEgress("1.1.1.1"), ports: [{ start: 90, end: 80 }] }] })).toBe("network.port");
    expect(bad({ rules: [Rule.allowEgress({ kind: "planet" } as never)] })).toBe("network.destination");
    expect(bad({ rules: "all" })).toBe("network.rules");
    expect(bad({ rules: Array.from({ length: 5000 }, () => Rule.allowEgress("1.1.1.1")) })).toBe("network.rules");
    const manyPorts = Array.from({ length: 3000 }, (_, i) => PortRange.single(i + 1));
    expect(bad({ rules: [{ ...Rule.allowAny("1.1.1.1"), ports: manyPorts }] })).toBe("network.rules"); // 6000 once expanded
    expect(bad({ rules: [{ ...Rule.allowEgress("1.1.1.1"), ports: Array.from({ length: 5000 }, () => PortRange.single(1)) }] })).toBe("network.ports");
  });
});
