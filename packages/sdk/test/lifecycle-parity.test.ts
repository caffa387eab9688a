// Lifecycle parity with the reference SDK (issue 14), against the fake native: labels and
// paged lists, ping/touch, requestStop/requestKill, maxCpus/maxMemory/thp/init/ephemeral,
// replaceWithTimeout, modify() plans and applies, allSandboxMetrics().
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  allSandboxMetrics,
  InvalidConfigError,
  MAX_LABELS,
  Sandbox,
  SandboxHandle,
  SandboxNotRunningError,
  SandboxStillRunningError,
  type SandboxModificationPlan,
} from "../src/index.js";
import { pageOf } from "../src/list.js";
import { toRecord } from "../src/lifecycle.js";
import { setNativeBinding } from "../src/native.js";
import { fakeNative, run, type FakeNative } from "./fake-native.js";

let fake: FakeNative;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative((req) => run(`${[req.cmd, ...req.args].join(" ")}\n`));
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-unit-home";
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

async function rejection(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error("expected a rejection");
    },
    (e: unknown) => e,
  );
}

/** A stopped sandbox with these labels. */
async function stopped(name: string, labels: Record<string, string> = {}, more: (b: ReturnType<typeof Sandbox.builder>) => void = () => undefined): Promise<void> {
  const b = Sandbox.builder(name).labels(labels);
  more(b);
  const sb = await b.create();
  await sb.stop();
}

describe("labels", () => {
  it("are stored in the configuration and round-trip through config() and configJson", async () => {
    const sb = await Sandbox.builder("l1").label("team", "a").label("env", "").labels({ tier: "gold", team: "b" }).create();
    expect(sb.config().labels).toEqual({ team: "b", env: "", tier: "gold" });
    const h = await Sandbox.get("l1");
    expect(h.config().labels).toEqual({ team: "b", env: "", tier: "gold" });
    expect(JSON.parse(h.configJson).labels).toEqual({ team: "b", env: "", tier: "gold" });
    expect(Sandbox.builder("l2").validate().labels).toEqual({});
  });

  it("with an invalid key are refused before anything starts, naming the field", async () => {
    const bad: [unknown, unknown, RegExp][] = [
      ["", "v", /label key "": label key must not be empty/],
      ["sandbox.id", "v", /reserved prefix \(sandbox\., microsandbox\., service\.\)/],
      ["microsandbox.x", "v", /reserved prefix/],
      ["service.name", "v", /reserved prefix/],
      ["a=b", "v", /must not contain '='/],
      ["a\0b", "v", /NUL/],
      ["k".repeat(254), "v", /at most 253 bytes/],
      [42, "v", /must be a string/],
      ["ok", "v".repeat(4097), /label value of ok .*at most 4096 bytes/],
      ["ok", null, /label value of ok .*must be a string/],
    ];
    for (const [k, v, msg] of bad) {
      const e = await rejection(Sandbox.builder("bad").label(k as string, v as string).create());
      expect(e, String(k)).toBeInstanceOf(InvalidConfigError);
      expect(e).toMatchObject({ field: "label" });
      expect((e as Error).message).toMatch(msg);
    }
    const many = Object.fromEntries(Array.from({ length: MAX_LABELS + 1 }, (_, i) => [`k${i}`, "v"]));
    const e = await rejection(Sandbox.builder("bad").labels(many).create());
    expect(e).toMatchObject({ code: "invalidConfig", field: "label" });
    expect(fake.configs).toHaveLength(0);
  });
});

describe("Sandbox.listWith", () => {
  it("filters on labels with AND semantics, newest first", async () => {
    await stopped("a1", { team: "a", env: "ci" });
    await stopped("a2", { team: "a" });
    await stopped("b1", { team: "b", env: "ci" });
    await Sandbox.builder("none").create();
    const names = async (f: (l: import("../src/index.js").SandboxListBuilder) => unknown) =>
      (await Sandbox.listWith((l) => void f(l))).sandboxes.map((h) => h.name).sort();
    expect(await names((l) => l.label("team", "a"))).toEqual(["a1", "a2"]);
    expect(await names((l) => l.label("team", "a").label("env", "ci"))).toEqual(["a1"]);
    expect(await names((l) => l.labels({ env: "ci" }))).toEqual(["a1", "b1"]);
    expect(await names((l) => l.label("team", "c"))).toEqual([]);
    expect(await names((l) => l.label("env", ""))).toEqual([]);
    expect(await names(() => undefined)).toEqual(["a1", "a2", "b1", "none"]);
    const page = await Sandbox.listWith((l) => l.label("team", "a"));
    expect(page.sandboxes[0]).toBeInstanceOf(SandboxHandle);
    expect(page.nextCursor).toBeUndefined();
  });

  it("pages with limit and an opaque cursor; bad ones are InvalidConfigError", async () => {
    const recs = ["s1", "s2", "s3", "s4", "s5"].map((name, i) =>
      toRecord({ name, status: "stopped", configJson: "{}", createdAt: 1000 + (i < 2 ? 0 : i), updatedAt: 1, runtimePid: null, socketPath: null, exitCode: 0, exitReason: "stopped" } as never),
    );
    const all = { limit: 100, cursor: undefined, labels: {} };
    expect(pageOf(recs, all).records.map((r) => r.name)).toEqual(["s5", "s4", "s3", "s1", "s2"]);
    for (const name of ["p1", "p2", "p3", "p4", "p5"]) await Sandbox.builder(name).label("set", "p").create();
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const c = cursor;
      const page = await Sandbox.listWith((l) => (c === undefined ? l.label("set", "p").limit(2) : l.label("set", "p").limit(2).cursor(c)));
      seen.push(...page.sandboxes.map((h) => h.name));
      cursor = page.nextCursor;
      pages++;
    } while (cursor !== undefined);
    expect(pages).toBe(3);
    expect(seen.sort()).toEqual(["p1", "p2", "p3", "p4", "p5"]);
    for (const [f, field] of [
      [(l: import("../src/index.js").SandboxListBuilder) => l.limit(0), "limit"],
      [(l: import("../src/index.js").SandboxListBuilder) => l.limit(101), "limit"],
      [(l: import("../src/index.js").SandboxListBuilder) => l.limit(1.5), "limit"],
      [(l: import("../src/index.js").SandboxListBuilder) => l.cursor("not a cursor!"), "cursor"],
      [(l: import("../src/index.js").SandboxListBuilder) => l.cursor(Buffer.from("[1]").toString("base64url")), "cursor"],
      [(l: import("../src/index.js").SandboxListBuilder) => l.label("sandbox.x", "1"), "label"],
    ] as const) {
      const e = await rejection(Sandbox.listWith(f));
      expect(e).toBeInstanceOf(InvalidConfigError);
      expect(e).toMatchObject({ field });
    }
  });

  it("Sandbox.list() is still an array, and also a SandboxPage", async () => {
    await Sandbox.builder("x1").create();
    const list = await Sandbox.list();
    expect(Array.isArray(list)).toBe(true);
    expect(list.map((h) => h.name)).toEqual(["x1"]);
    expect(list.sandboxes.map((h) => h.name)).toEqual(["x1"]);
    expect(list.nextCursor).toBeUndefined();
    expect(JSON.stringify(Object.keys(list))).toBe('["0"]');
  });
});

describe("ping, touch, requestStop, requestKill", () => {
  it("ping and touch go to the runtime, on a Sandbox and on a handle", async () => {
    const sb = await Sandbox.builder("p").create();
    const ping = await sb.ping();
    expect(ping.name).toBe("p");
    expect(ping.latencyMs).toBeGreaterThanOrEqual(0);
    expect(await sb.touch()).toEqual({ name: "p", activitySeq: 1 });
    expect(await sb.touch()).toEqual({ name: "p", activitySeq: 2 });
    const h = await Sandbox.get("p");
    expect((await h.ping()).name).toBe("p");
    expect(await h.touch()).toEqual({ name: "p", activitySeq: 1 });
    expect(fake.clients[0]?.calls).toEqual(["ping", "touch", "touch"]);
    await sb.stop();
    await expect(sb.ping()).rejects.toBeInstanceOf(SandboxNotRunningError);
    await expect(h.touch()).rejects.toBeInstanceOf(SandboxNotRunningError);
  });

  it("requestStop and requestKill return before the VM ends", async () => {
    const sb = await Sandbox.builder("r").create();
    await sb.requestStop(2500);
    expect(fake.clients[0]?.calls).toEqual(["requestStop:2500"]);
    expect(fake.records.get("r")?.status).toBe("running");
    const waited = sb.wait();
    fake.endVm("r", { code: 0, reason: "stopped" });
    expect(await waited).toEqual({ code: 0, success: true });
    await sb.requestStop(); // stopped: nothing to do
    expect(fake.clients[0]?.calls).toEqual(["requestStop:2500", "wait", "close"]);

    await Sandbox.builder("k").createDetached();
    const h = await Sandbox.get("k");
    await h.requestKill();
    expect(fake.clients.at(-1)?.calls).toEqual(["requestKill", "close"]);
    expect(fake.clients.at(-1)?.closedByUs).toBe(true);
    expect(fake.records.get("k")?.status).toBe("running");
    await expect(h.requestStop(0)).rejects.toMatchObject({ code: "invalidConfig", field: "timeoutMs" });
  });
});

describe("create options", () => {
  it("maxCpus, maxMemory, thp, init and ephemeral are validated and round-trip", async () => {
    fake.fsOf("o").mkdirp("/sys/kernel/mm/transparent_hugepage");
    fake.fsOf("o").put("/sbin/runsvdir", "#!/bin/sh\n", 0o755);
    const sb = await Sandbox.builder("o")
      .cpus(2)
      .maxCpus(4)
      .memory(256)
      .maxMemory(1024)
      .thp("never")
      .initWith("/sbin/runsvdir", (i) => i.args(["/etc/service"]).env("K", "v"))
      .ephemeral()
      .createDetached();
    const want = { maxCpus: 4, maxMemoryMib: 1024, thp: "never", init: { cmd: "/sbin/runsvdir", args: ["/etc/service"], env: [["K", "v"]] }, ephemeral: true };
    expect(sb.config()).toMatchObject(want);
    expect((await Sandbox.get("o")).config()).toMatchObject(want);
    expect(fake.configs[0]).toMatchObject({ ephemeral: true, attached: false });
    // thp written at boot; init started in the background through the shell, as root, with its env.
    expect(fake.fsOf("o").text("/sys/kernel/mm/transparent_hugepage/enabled")).toBe("never\n");
    const init = fake.clients[0]?.requests.find((r) => r.cmd === "/bin/sh");
    expect(init).toMatchObject({ args: ["-c", 'exec "$0" "$@" </dev/null >/dev/null 2>&1 &', "/sbin/runsvdir", "/etc/service"], user: "0" });
    expect(init?.env).toContainEqual(["K", "v"]);
    // A missing init program: create() rejects, the sandbox is gone.
    const missing = await rejection(Sandbox.builder("o2").init("/sbin/nope").create());
    expect(missing).toMatchObject({ code: "invalidConfig", field: "init" });
    expect(fake.records.has("o2")).toBe(false);
    expect(Sandbox.builder("d").validate()).toMatchObject({ maxCpus: null, maxMemoryMib: null, thp: null, init: null, ephemeral: false });
    expect(Sandbox.builder("a").init("auto").validate().init).toEqual({ cmd: "auto", args: [], env: [] });
    const bad: [() => ReturnType<typeof Sandbox.builder>, string][] = [
      [() => Sandbox.builder("b").cpus(4).maxCpus(2), "maxCpus"],
      [() => Sandbox.builder("b").maxCpus(256), "maxCpus"],
      [() => Sandbox.builder("b").memory(512).maxMemory(256), "maxMemory"],
      [() => Sandbox.builder("b").thp("sometimes" as never), "thp"],
      [() => Sandbox.builder("b").init("sbin/init"), "init"],
      [() => Sandbox.builder("b").init("auto", ["x"]), "init"],
      [() => Sandbox.builder("b").initWith("/init", (i) => i.env("A=B", "x")), "init"],
      [() => Sandbox.builder("b").replaceWithTimeout(-1), "replaceWithTimeout"],
    ];
    for (const [make, field] of bad) {
      const e = await rejection(make().create());
      expect(e, field).toBeInstanceOf(InvalidConfigError);
      expect(e).toMatchObject({ field });
    }
  });

  it("replaceWithTimeout(0) kills the old sandbox at once; a timeout is the stop's grace", async () => {
    await Sandbox.builder("rep").createDetached();
    await Sandbox.builder("rep").replaceWithTimeout(0).createDetached();
    expect(fake.killed).toEqual(["rep"]);
    await Sandbox.builder("rep").replaceWithTimeout(1500).createDetached();
    expect(fake.clients.some((c) => c.calls.includes("stop:1500"))).toBe(true);
    expect(fake.removed.map(([, n]) => n)).toEqual(["rep", "rep"]);
  });
});

describe("modify", () => {
  it("plans a dry run on a stopped sandbox with the reference's shape, changing nothing", async () => {
    await stopped("m", { team: "a" }, (b) => b.cpus(1).maxCpus(4).memory(512).env("A", "1").workdir("/w").idleTimeout(30));
    const before = (await Sandbox.get("m")).configJson;
    const plan = await (await Sandbox.get("m")).modify({
      cpus: 2,
      memory: 1024,
      env: { A: "2", B: "x" },
      envRemove: ["A", "NOPE"],
      labels: { tier: "gold", team: "a" },
      labelsRemove: ["team"],
      workdir: "/srv",
      idleTimeout: 60,
      dryRun: true,
    });
    expect(plan).toEqual<SandboxModificationPlan>({
      sandbox: "m",
      status: "stopped",
      applied: false,
      policy: "no_restart",
      changes: [
        { kind: "config", field: "cpus", change: "updated", before: "1", after: "2", disposition: "next start" },
        { kind: "config", field: "memory", change: "updated", before: "512 MiB", after: "1 GiB", disposition: "next start" },
        { kind: "config", field: "env", change: "updated", before: "A=1", after: "A=2", disposition: "next start" },
        { kind: "config", field: "env", change: "added", after: "B=x", disposition: "next start" },
        { kind: "config", field: "env", change: "removed", before: "A=1", disposition: "next start" },
        { kind: "config", field: "label", change: "added", after: "tier=gold", disposition: "next start" },
        { kind: "config", field: "label", change: "removed", before: "team=a", disposition: "next start" },
        { kind: "config", field: "workdir", change: "updated", before: "/w", after: "/srv", disposition: "next start" },
        { kind: "config", field: "idle_timeout", change: "updated", before: "30s", after: "60s", disposition: "next start" },
      ],
      conflicts: [
        { field: "env", message: "env A is both set and removed in the same modification" },
        { field: "label", message: "label team is both set and removed in the same modification" },
      ],
      warnings: [],
      resizeStatus: [],
    });
    expect((await Sandbox.get("m")).configJson).toBe(before);
    // Applying it is refused: the conflict names the option.
    const e = await rejection(Sandbox.get("m").then((h) => h.modify({ env: { A: "2" }, envRemove: ["A"] })));
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect(e).toMatchObject({ field: "env" });
    expect((await Sandbox.get("m")).configJson).toBe(before);
  });

  it("applies to a stopped sandbox: config() and configJson show it, the next start boots with it", async () => {
    await stopped("m2", { team: "a" }, (b) => b.cpus(1).maxCpus(2).memory(256).maxMemory(512));
    const h = await Sandbox.get("m2");
    const plan = await h.modify({ cpus: 2, memory: 512, env: { MODE: "x" }, labels: { tier: "gold" }, labelsRemove: ["team"], idleTimeout: 5 });
    expect(plan.applied).toBe(true);
    expect(h.config()).toMatchObject({ cpus: 2, memoryMib: 512, env: [["MODE", "x"]], labels: { tier: "gold" }, idleTimeoutSecs: 5 });
    expect(JSON.parse(h.configJson)).toMatchObject({ cpus: 2, memoryMib: 512, labels: { tier: "gold" } });
    expect((await Sandbox.listWith((l) => l.label("tier", "gold"))).sandboxes.map((s) => s.name)).toEqual(["m2"]);
    const sb = await Sandbox.start("m2");
    expect(fake.configs.at(-1)).toMatchObject({ cpus: 2, memoryMib: 512, idleTimeoutSecs: 5, env: [["MODE", "x"]] });
    expect(sb.config().labels).toEqual({ tier: "gold" });
    // Beyond the bounds: a conflict, nothing applied.
    await sb.stop();
    const e = await rejection(h.modify({ cpus: 3 }));
    expect(e).toMatchObject({ code: "invalidConfig", field: "cpus" });
    expect((e as Error).message).toMatch(/cpus 3 exceeds the sandbox's max_cpus 2/);
    expect(await h.modify({ cpus: 3, maxCpus: 3 })).toMatchObject({ applied: true });
    expect((await h.refresh()).config()).toMatchObject({ cpus: 3, maxCpus: 3 });
    const e2 = await rejection(h.modify({ memory: 2048, maxMemory: 1024 }));
    expect(e2).toMatchObject({ code: "invalidConfig", field: "maxMemory" });
    // Nothing to change: applied, no write.
    const updated = (await h.refresh()).updatedAt;
    expect(await h.modify({ cpus: 3 })).toMatchObject({ applied: true, changes: [] });
    expect((await h.refresh()).updatedAt).toEqual(updated);
  });

  it("on a running sandbox: requires restart (refused), next_start stores it, restart restarts it", async () => {
    const sb = await Sandbox.builder("m3").env("A", "1").createDetached();
    const dry = await sb.modify({ env: { A: "2" }, cpus: 2, dryRun: true });
    expect(dry.status).toBe("running");
    expect(dry.changes.map((c) => [c.field, c.disposition])).toEqual([
      ["cpus", "requires restart"],
      ["env", "requires restart"],
    ]);
    expect(dry.warnings).toEqual([{ field: "cpus", message: "live CPU and memory resize are not available in this runtime" }]);
    const e = await rejection(sb.modify({ env: { A: "2" } }));
    expect(e).toBeInstanceOf(SandboxStillRunningError);
    expect((e as Error).message).toMatch(/env requires restart/);
    expect((await Sandbox.get("m3")).config().env).toEqual([["A", "1"]]);

    const next = await sb.modify({ env: { A: "2" }, policy: "next_start" });
    expect(next).toMatchObject({ applied: true, policy: "next_start", changes: [{ field: "env", disposition: "next start" }] });
    expect((await Sandbox.get("m3")).config().env).toEqual([["A", "2"]]);
    expect(sb.config().env).toEqual([["A", "1"]]); // what this VM booted with
    expect(fake.records.get("m3")?.status).toBe("running");

    const restarted = await sb.modify({ cpus: 2, policy: "restart" });
    expect(restarted.applied).toBe(true);
    expect(fake.configs.at(-1)).toMatchObject({ name: "m3", mode: "start", attached: false, cpus: 2, env: [["A", "2"]] });
    expect(fake.records.get("m3")?.status).toBe("running");
    expect(sb.running).toBe(false);
  });

  it("checks its options at the boundary", async () => {
    await stopped("m4");
    const h = await Sandbox.get("m4");
    for (const [opts, field] of [
      [{ cpus: 0 }, "cpus"],
      [{ memory: 64 }, "memory"],
      [{ labels: { "sandbox.x": "1" } }, "labels"],
      [{ labels: { k: 1 } }, "labels"],
      [{ env: { "A=B": "1" } }, "env"],
      [{ workdir: "rel" }, "workdir"],
      [{ idleTimeout: 0 }, "idleTimeout"],
      [{ policy: "now" }, "policy"],
      [{ bogus: 1 }, "options"],
      [{ rootDiskSize: 8192 }, "rootDiskSize"],
      [{ secrets: { K: { value: "v" } } }, "secrets"],
    ] as const) {
      const e = await rejection(h.modify(opts as never));
      expect(e, JSON.stringify(opts)).toBeInstanceOf(InvalidConfigError);
      expect(e).toMatchObject({ field });
    }
  });
});

describe("allSandboxMetrics", () => {
  it("samples every running sandbox by name, each from its runtime", async () => {
    await Sandbox.builder("r1").create();
    await Sandbox.builder("r2").createDetached();
    await stopped("s1");
    fake.metricsOf = (name) => ({ ...fakeMetrics(), cpuPercent: name === "r1" ? 10 : 20 });
    const all = await allSandboxMetrics();
    expect(Object.keys(all)).toEqual(["r1", "r2"]);
    expect(all.r1?.cpuPercent).toBe(10);
    expect(all.r2?.cpuPercent).toBe(20);
    expect(all.r2?.timestamp).toBeInstanceOf(Date);
  });
});

function fakeMetrics() {
  return { cpuPercent: 0, memoryBytes: 1, memoryLimitBytes: 2, diskReadBytes: 3, diskWriteBytes: 4, netRxBytes: 5, netTxBytes: 6, timestampMs: Date.now(), uptimeMs: 7 };
}
