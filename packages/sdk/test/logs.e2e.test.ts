// End-to-end: msb-runtime records the commands' output in exec.log, and the SDK reads it
// back (snapshot, follow, resume from a cursor, across a restart), on real VMs (two
// sandboxes of the default busybox image, one restarted), and `msb logs` prints them.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, expect, it } from "vitest";
import { InvalidCursorError, Sandbox, type LogEntry } from "../src/index.js";
import { useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();

const cliBin = fileURLToPath(new URL("../../cli/dist/bin.js", import.meta.url));

let a: Sandbox | undefined;
let b: Sandbox | undefined;
afterAll(async () => {
  await a?.kill().catch(() => undefined);
  await b?.kill().catch(() => undefined);
});

const texts = (es: LogEntry[]) => es.map((e) => e.text());

async function recvMatching(stream: Awaited<ReturnType<Sandbox["logStream"]>>, want: (e: LogEntry) => boolean, ms = 20_000): Promise<LogEntry> {
  const deadline = Date.now() + ms;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error("no matching log entry in time");
    const e = await Promise.race([stream.recv(), new Promise<"timeout">((r) => setTimeout(() => r("timeout"), left))]);
    if (e === "timeout") throw new Error("no matching log entry in time");
    if (e === null) throw new Error("the stream ended");
    if (want(e)) return e;
  }
}

it("records each command's stdout, stderr and TTY output with its session; follows and resumes", async () => {
  a = await Sandbox.builder("logs-a").create();
  const out = await a.shell("echo out-1; echo err-1 >&2; printf 'no newline'");
  expect(out.code).toBe(0);
  const tty = await a.execWith("sh", (x) => x.args(["-c", "echo tty-out"]).tty(true));
  expect(tty.code).toBe(0);

  const es = await a.logs();
  const one = es.find((e) => e.text().includes("out-1"));
  const err = es.find((e) => e.source === "stderr");
  expect(one?.source).toBe("stdout");
  expect(err?.text()).toBe("err-1\n");
  expect(err?.sessionId).toBe(one?.sessionId);
  expect(es.filter((e) => e.sessionId === one?.sessionId && e.source === "stdout").map((e) => e.text()).join("")).toBe("out-1\nno newline");
  const ttyEntries = es.filter((e) => e.source === "output");
  expect(ttyEntries.map((e) => e.text()).join("")).toContain("tty-out");
  expect(ttyEntries[0]?.sessionId).not.toBe(one?.sessionId);
  // Time order, and the defaults leave system entries out.
  const times = es.map((e) => e.timestamp.getTime());
  expect([...times].sort((x, y) => x - y)).toEqual(times);
  expect(es.every((e) => e.source !== "system")).toBe(true);

  // System: the markers, the commands as run, how they ended.
  const sys = texts(await a.logs({ sources: ["system"] }));
  expect(sys).toContain("--- sandbox started ---\n");
  expect(sys).toContain("exec: /bin/sh -c 'echo out-1; echo err-1 >&2; printf '\\''no newline'\\'''\n");
  expect(sys).toContain("exec: exit code 0\n");
  // The console's lines are system entries too (whatever the kernel printed).
  const console = readFileSync(join(a.sandboxDir, "console.log"), "utf8").split("\n").filter((l) => l.trim() !== "");
  const sysAll = texts(await a.logs({ sources: ["all"] }));
  for (const l of console.slice(0, 3)) expect(sysAll).toContain(`${l.replace(/\r$/, "")}\n`);

  // Follow: new output arrives as it is written.
  const last = es.at(-1) as LogEntry;
  const follow = await a.logStream({ follow: true, fromCursor: last.cursor });
  try {
    await a.shell("echo later");
    const later = await recvMatching(follow, () => true);
    expect([later.source, later.text()]).toEqual(["stdout", "later\n"]);

    // Resume from a cursor: exactly the entries after it.
    await a.shell("echo after-1; echo after-2 >&2");
    const after = await recvMatching(follow, (e) => e.source === "stderr");
    expect(after.text()).toBe("after-2\n");
    const all = await a.logs();
    const k = all.findIndex((e) => e.cursor === later.cursor || e.text() === "later\n");
    expect(k).toBeGreaterThan(0);
    const resumed: LogEntry[] = [];
    for await (const e of await a.logStream({ fromCursor: later.cursor })) resumed.push(e);
    expect(texts(resumed)).toEqual(texts(all.slice(k + 1)));
    expect(texts(resumed)).toEqual(["after-1\n", "after-2\n"]);
  } finally {
    await follow.close();
  }

  // Stopped: the logs stay readable through a handle, ending with the stop marker.
  await a.stop();
  const h = await Sandbox.get("logs-a");
  expect(texts(await h.logs({ tail: 2 }))).toEqual(["after-1\n", "after-2\n"]);
  expect(texts(await h.logs({ sources: ["system"] })).at(-1)).toBe("--- sandbox stopped ---\n");
  expect(existsSync(join(a.sandboxDir, "exec.log"))).toBe(true);

  // msb logs, the built CLI, on the stopped sandbox: stdout to stdout, stderr to stderr.
  const cli = spawnSync(process.execPath, [cliBin, "logs", "--tail", "2", "logs-a"], { env: process.env, encoding: "utf8" });
  expect([cli.status, cli.stdout, cli.stderr]).toEqual([0, "after-1\n", "after-2\n"]);

  // A restart appends to the same log: a cursor of before the stop resumes after it.
  const stoppedAt = (await h.logs()).at(-1) as LogEntry;
  a = await Sandbox.start("logs-a");
  await a.shell("echo again");
  const resumed: LogEntry[] = [];
  for await (const e of await a.logStream({ fromCursor: stoppedAt.cursor })) resumed.push(e);
  expect(texts(resumed)).toEqual(["again\n"]);
  expect(texts(await a.logs({ sources: ["system"] })).filter((t) => t === "--- sandbox started ---\n")).toHaveLength(2);
  await a.stop();
});

it("refuses a cursor of another sandbox with InvalidCursorError", async () => {
  b = await Sandbox.builder("logs-b").create();
  await b.shell("echo from-b");
  const theirs = (await b.logs()).at(-1) as LogEntry;
  expect(theirs.text()).toBe("from-b\n");
  const h = await Sandbox.get("logs-a");
  await expect(h.logStream({ fromCursor: theirs.cursor })).rejects.toBeInstanceOf(InvalidCursorError);
  await expect(h.logStream({ fromCursor: theirs.cursor })).rejects.toMatchObject({ code: "invalidCursor", reason: "otherSandbox", field: "fromCursor" });
  // Its own cursor is fine (nothing after the last entry).
  const mine = (await h.logs()).at(-1) as LogEntry;
  const rest: LogEntry[] = [];
  for await (const e of await h.logStream({ fromCursor: mine.cursor })) rest.push(e);
  expect(rest).toEqual([]);

  // A flood of output is recorded without slowing the command down much, and read back.
  const t0 = Date.now();
  const big = await b.shell("dd if=/dev/zero bs=65536 count=256 2>/dev/null | tr '\\0' x");
  const execMs = Date.now() - t0;
  expect(big.stdout().length).toBe(16 * 1024 * 1024);
  await b.stop();
  const t1 = Date.now();
  const logged = await (await Sandbox.get("logs-b")).logs({ sources: ["stdout"] });
  const readMs = Date.now() - t1;
  const bytes = logged.reduce((n, e) => n + e.data.length, 0);
  const dropped = texts(await (await Sandbox.get("logs-b")).logs({ sources: ["system"] })).filter((t) => t.startsWith("exec log: "));
  // Every byte either recorded or counted as dropped (16 MiB crosses one rotation at most).
  if (dropped.length === 0) expect(bytes).toBeGreaterThanOrEqual(16 * 1024 * 1024);
  console.log(`[logs figures] 16 MiB exec: ${execMs} ms; read back ${logged.length} entries (${bytes} bytes) in ${readMs} ms; drops reported: ${dropped.length}`);
});
