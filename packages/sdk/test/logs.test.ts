import { appendFileSync, mkdirSync, mkdtempSync, renameSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { InvalidConfigError, InvalidCursorError, LogEntry, MissedRotationError, SandboxNotFoundError } from "@microsandbox/sdk";
import {
  decodeCursor,
  encodeCursor,
  openLogStream,
  parseConsoleLine,
  parseExecLogLine,
  readLogs,
  resolveReadOptions,
  resolveStreamOptions,
} from "../src/logs.js";

const UID = "00112233445566aa";
const GEN1 = "aaaaaaaaaaaaaaaa";
const GEN2 = "bbbbbbbbbbbbbbbb";
const GEN3 = "cccccccccccccccc";

function header(name: string, gen: string, prev = "", uid = UID): string {
  return `${JSON.stringify({ msb: "exec-log", v: 1, sandbox: name, uid, gen, prev, t: "2026-12-03T06:00:00.000Z" })}\n`;
}

function line(ms: number, s: string, d: string, id?: number, b64 = false): string {
  const o: Record<string, unknown> = { t: new Date(ms).toISOString(), s };
  if (id !== undefined) o.id = id;
  o.d = b64 ? Buffer.from(d, "latin1").toString("base64") : d;
  if (b64) o.e = "b64";
  return `${JSON.stringify(o)}\n`;
}

const T0 = Date.parse("2026-12-03T06:00:00.000Z");

let home: string;
let dir: string;
const NAME = "logbox";

beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), "msb-logs-"));
  dir = join(home, "sandboxes", NAME);
  mkdirSync(dir, { recursive: true });
});

afterEach(() => {
  rmSync(home, { recursive: true, force: true });
});

const texts = (es: LogEntry[]) => es.map((e) => e.text());

async function drain(name: string, opts: Parameters<typeof openLogStream>[2]): Promise<LogEntry[]> {
  const s = await openLogStream(join(home, "sandboxes", name), name, opts);
  const out: LogEntry[] = [];
  for await (const e of s) out.push(e);
  return out;
}

/** A typical exec.log: markers, two sessions, stderr, a TTY session, a non-UTF-8 chunk. */
function writeTypical(): void {
  writeFileSync(
    join(dir, "exec.log"),
    header(NAME, GEN1) +
      line(T0 + 1, "system", "--- sandbox started ---\n") +
      line(T0 + 2, "system", "exec: sh -c 'echo one'\n", 1) +
      line(T0 + 3, "stdout", "one\n", 1) +
      line(T0 + 4, "stderr", "oops\n", 1) +
      line(T0 + 5, "system", "exec: exit code 0\n", 1) +
      line(T0 + 6, "output", "$ ", 2) +
      line(T0 + 7, "stdout", "\xff\xfeok", 3, true),
  );
}

describe("parsing", () => {
  it("reads entries, headers and base64 bodies, and skips what is not an entry", () => {
    expect(parseExecLogLine(`{"t":"2026-12-03T06:00:01.500Z","s":"stdout","id":7,"d":"hi\\n"}`)).toEqual({
      kind: "entry",
      timestamp: T0 + 1500,
      source: "stdout",
      sessionId: 7,
      data: Buffer.from("hi\n"),
    });
    const b = parseExecLogLine(`{"t":"2026-12-03T06:00:00Z","s":"stderr","d":"//4h","e":"b64"}`);
    expect(b).toMatchObject({ kind: "entry", sessionId: null, data: Buffer.from([0xff, 0xfe, 0x21]) });
    expect(parseExecLogLine(header(NAME, GEN1).trim())).toEqual({ kind: "header", header: { sandbox: NAME, uid: UID, gen: GEN1, prev: "" } });
    for (const bad of [
      "not json",
      "{",
      "[]",
      "null",
      `{"t":"yesterday","s":"stdout","d":"x"}`,
      `{"t":"2026-12-03T06:00:00Z","s":"alien","d":"x"}`,
      `{"t":"2026-12-03T06:00:00Z","s":"stdout"}`,
      `{"t":"2026-12-03T06:00:00Z","s":"stdout","d":5}`,
      `{"msb":"exec-log","v":2,"sandbox":"x","uid":"${UID}","gen":"${GEN1}"}`,
      `{"msb":"exec-log","v":1,"sandbox":"x","uid":"short","gen":"${GEN1}"}`,
    ]) {
      expect(parseExecLogLine(bad), bad).toEqual({ kind: "skip" });
    }
    // A negative or fractional session id is no id.
    expect(parseExecLogLine(`{"t":"2026-12-03T06:00:00Z","s":"stdout","id":-1,"d":""}`)).toMatchObject({ sessionId: null });
  });

  it("estimates console times from the kernel's prefix and strips what a terminal would run", () => {
    const boot = T0;
    const mtime = T0 + 10_000;
    expect(parseConsoleLine(Buffer.from("[    1.250000] hello\r"), boot, boot, mtime)).toEqual({
      timestamp: T0 + 1250,
      data: Buffer.from("[    1.250000] hello\n"),
    });
    // No prefix: the line before's time. Never later than the file's last write.
    expect(parseConsoleLine(Buffer.from("plain"), boot, T0 + 42, mtime).timestamp).toBe(T0 + 42);
    expect(parseConsoleLine(Buffer.from("[99999.0] guest lies"), boot, boot, mtime).timestamp).toBe(mtime);
    const evil = parseConsoleLine(Buffer.from("\x1b[2J\x1b]0;title\x07red\x1b[31m!\x07\x00"), boot, boot, mtime);
    expect(evil.data.toString()).toBe("red!\n");
  });
});

describe("cursors", () => {
  it("round-trip and refuse anything else as malformed", () => {
    const p = { name: NAME, uid: UID, gen: GEN1, offset: 123, console: "42-1700000000000", consoleOffset: 9 };
    const c = encodeCursor(p);
    expect(c).toMatch(/^msbl1_[A-Za-z0-9_-]+$/);
    expect(decodeCursor(c)).toEqual(p);
    const body = (v: unknown) => `msbl1_${Buffer.from(JSON.stringify(v)).toString("base64url")}`;
    for (const bad of [
      "",
      "hello",
      "msbl1_",
      "msbl1_!!!",
      `msbl1_${Buffer.from("{").toString("base64url")}`,
      body([2, NAME, UID, GEN1, 0, "", 0]),
      body([1, "../etc", UID, GEN1, 0, "", 0]),
      body([1, NAME, "xyz", GEN1, 0, "", 0]),
      body([1, NAME, UID, GEN1, -1, "", 0]),
      body([1, NAME, UID, GEN1, 1.5, "", 0]),
      body([1, NAME, UID, GEN1, 0, "../x", 0]),
      body([1, NAME, UID, GEN1, 0]),
    ]) {
      const err = (() => {
        try {
          decodeCursor(bad);
        } catch (e) {
          return e;
        }
      })();
      expect(err, bad).toBeInstanceOf(InvalidCursorError);
      expect(err).toMatchObject({ code: "invalidCursor", reason: "malformed", field: "fromCursor" });
    }
  });
});

describe("options", () => {
  it("default to the programs' output and name the field of a bad option", () => {
    expect([...resolveReadOptions(undefined).sources]).toEqual(["stdout", "stderr", "output"]);
    expect([...resolveReadOptions({ sources: [] }).sources]).toEqual(["stdout", "stderr", "output"]);
    expect([...resolveReadOptions({ sources: ["all"] }).sources]).toEqual(["stdout", "stderr", "output", "system"]);
    expect(resolveStreamOptions({}).follow).toBe(false);
    const field = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(InvalidConfigError);
        return (e as InvalidConfigError).field;
      }
      return "accepted";
    };
    expect(field(() => resolveReadOptions({ tail: -1 }))).toBe("tail");
    expect(field(() => resolveReadOptions({ tail: 1.5 }))).toBe("tail");
    expect(field(() => resolveReadOptions({ since: "yesterday" }))).toBe("since");
    expect(field(() => resolveReadOptions({ until: new Date(Number.NaN) }))).toBe("until");
    expect(field(() => resolveReadOptions({ sources: ["stdin"] }))).toBe("sources");
    expect(field(() => resolveReadOptions({ sources: "stdout" }))).toBe("sources");
    expect(field(() => resolveReadOptions({ follow: true }))).toBe("follow");
    expect(field(() => resolveReadOptions(5))).toBe("options");
    expect(field(() => resolveStreamOptions({ since: new Date(), fromCursor: "msbl1_x" }))).toBe("fromCursor");
    expect(field(() => resolveStreamOptions({ fromCursor: "x".repeat(2000) }))).toBe("fromCursor");
    expect(field(() => resolveStreamOptions({ follow: "yes" }))).toBe("follow");
  });
});

describe("readLogs", () => {
  it("gives the programs' output by default, in order, with sources, session ids and exact bytes", async () => {
    writeTypical();
    const es = await readLogs(dir, NAME, undefined);
    expect(es.map((e) => [e.source, e.sessionId, e.timestamp.getTime()])).toEqual([
      ["stdout", 1, T0 + 3],
      ["stderr", 1, T0 + 4],
      ["output", 2, T0 + 6],
      ["stdout", 3, T0 + 7],
    ]);
    expect(texts(es).slice(0, 3)).toEqual(["one\n", "oops\n", "$ "]);
    expect([...(es[3] as LogEntry).data]).toEqual([0xff, 0xfe, 0x6f, 0x6b]);
    expect((es[3] as LogEntry).text()).toBe("\ufffd\ufffdok");
    expect(es.every((e) => e instanceof LogEntry && e.cursor.startsWith("msbl1_"))).toBe(true);
  });

  it("filters by source, time and count", async () => {
    writeTypical();
    expect(texts(await readLogs(dir, NAME, { sources: ["stderr"] }))).toEqual(["oops\n"]);
    const sys = await readLogs(dir, NAME, { sources: ["system"] });
    expect(sys.map((e) => [e.sessionId, e.text()])).toEqual([
      [null, "--- sandbox started ---\n"],
      [1, "exec: sh -c 'echo one'\n"],
      [1, "exec: exit code 0\n"],
    ]);
    expect(await readLogs(dir, NAME, { sources: ["all"] })).toHaveLength(7);
    expect(texts(await readLogs(dir, NAME, { since: new Date(T0 + 4), until: new Date(T0 + 7) }))).toEqual(["oops\n", "$ "]);
    expect(texts(await readLogs(dir, NAME, { tail: 2 }))).toEqual(["$ ", "\ufffd\ufffdok"]);
    expect(await readLogs(dir, NAME, { tail: 0 })).toEqual([]);
    expect(await readLogs(dir, NAME, { tail: 100 })).toHaveLength(4);
  });

  it("leaves a partial last line for later and skips malformed lines", async () => {
    writeTypical();
    appendFileSync(join(dir, "exec.log"), "garbage\n\n" + line(T0 + 8, "stdout", "done\n", 3) + `{"t":"2026-12-03T06:00:09.000Z","s":"stdout","d":"half`);
    expect(texts(await readLogs(dir, NAME, {})).at(-1)).toBe("done\n");
    appendFileSync(join(dir, "exec.log"), `-written\\n"}\n`);
    expect(texts(await readLogs(dir, NAME, {})).at(-1)).toBe("half-written\n");
  });

  it("reads the previous file first, merges the console with system, and needs no exec log", async () => {
    expect(await readLogs(dir, NAME, { sources: ["all"] })).toEqual([]);
    writeFileSync(join(dir, "exec.log.1"), header(NAME, GEN1) + line(T0 + 1, "stdout", "old\n", 1));
    writeFileSync(join(dir, "exec.log"), header(NAME, GEN2, GEN1) + line(T0 + 5000, "stdout", "new\n", 2));
    writeFileSync(join(dir, "console.log"), "[    0.001000] Linux version\r\n[    2.000000] booted\r\n");
    // The console was born at T0 and last written at T0 + 3 s.
    utimesSync(join(dir, "console.log"), new Date(T0 + 3000), new Date(T0 + 3000));
    expect(texts(await readLogs(dir, NAME, {}))).toEqual(["old\n", "new\n"]);
    const all = await readLogs(dir, NAME, { sources: ["all"] });
    expect(all.map((e) => e.source)).toContain("system");
    const consoleLines = all.filter((e) => e.source === "system").map((e) => e.text());
    expect(consoleLines).toEqual(["[    0.001000] Linux version\n", "[    2.000000] booted\n"]);
    // Time order across files; a console line is never later than the file's last write.
    const times = all.map((e) => e.timestamp.getTime());
    expect([...times].sort((a, b) => a - b)).toEqual(times);
    expect(times.every((t) => t <= T0 + 5000)).toBe(true);
  });

  it("reads at most the last 16 MiB of a huge console, and a snapshot ends though the log grows", async () => {
    const lineOf = (i: number) => `[    1.000000] console line ${String(i).padStart(8, "0")} ${"x".repeat(990)}\n`;
    const n = 17 * 1024; // 17 MiB of 1 KiB lines
    writeFileSync(join(dir, "console.log"), Array.from({ length: n }, (_, i) => lineOf(i)).join(""));
    const sys = await readLogs(dir, NAME, { sources: ["system"] });
    const fit = Math.floor((16 * 1024 * 1024) / lineOf(0).length);
    expect(sys.length).toBeGreaterThanOrEqual(fit - 1);
    expect(sys.length).toBeLessThanOrEqual(fit);
    expect(sys.at(-1)?.text()).toBe(lineOf(n - 1));
    expect(sys[0]?.text()).toMatch(/^\[    1\.000000\] console line \d{8} x+\n$/);

    // Not following: what was there when it began, plus at most 1 MiB written meanwhile.
    writeFileSync(join(dir, "exec.log"), header(NAME, GEN1) + line(T0, "stdout", "first\n", 1));
    const s = await openLogStream(dir, NAME, {});
    const chunk = Array.from({ length: 1024 }, (_, i) => line(T0 + 1, "stdout", `${"y".repeat(1000)}${i}\n`, 1)).join("");
    for (let i = 0; i < 3; i++) appendFileSync(join(dir, "exec.log"), chunk);
    const got: LogEntry[] = [];
    for await (const e of s) got.push(e);
    expect(got[0]?.text()).toBe("first\n");
    expect(got.length).toBeLessThan(3 * 1024);
  });

  it("does not follow a link in place of a log file", async () => {
    const outside = join(home, "secret.txt");
    writeFileSync(outside, header(NAME, GEN1) + line(T0, "stdout", "outside\n", 1));
    symlinkSync(outside, join(dir, "exec.log"));
    symlinkSync(outside, join(dir, "console.log"));
    expect(await readLogs(dir, NAME, { sources: ["all"] })).toEqual([]);
  });

  it("rejects an unknown sandbox with SandboxNotFoundError", async () => {
    await expect(readLogs(join(home, "sandboxes", "nope"), "nope", {})).rejects.toBeInstanceOf(SandboxNotFoundError);
  });
});

describe("logStream", () => {
  it("resumes right after the entry of a cursor, with exactly the entries after it", async () => {
    writeTypical();
    const all = await drain(NAME, {});
    expect(texts(all)).toEqual(["one\n", "oops\n", "$ ", "\ufffd\ufffdok"]);
    for (let i = 0; i < all.length; i++) {
      const rest = await drain(NAME, { fromCursor: (all[i] as LogEntry).cursor });
      expect(texts(rest)).toEqual(texts(all.slice(i + 1)));
    }
    // A snapshot's cursors resume the same way.
    const snap = await readLogs(dir, NAME, {});
    expect(texts(await drain(NAME, { fromCursor: (snap[1] as LogEntry).cursor }))).toEqual(["$ ", "\ufffd\ufffdok"]);
    // A cursor taken with other sources still places the stream.
    const sys = await drain(NAME, { sources: ["system"] });
    expect(texts(await drain(NAME, { fromCursor: (sys[1] as LogEntry).cursor }))).toEqual(["one\n", "oops\n", "$ ", "\ufffd\ufffdok"]);
    expect(texts(await drain(NAME, { since: new Date(T0 + 6) }))).toEqual(["$ ", "\ufffd\ufffdok"]);
    expect(texts(await drain(NAME, { until: new Date(T0 + 5) }))).toEqual(["one\n", "oops\n"]);
  });

  it("a snapshot's cursor, with the console interleaved, resumes with exactly the entries after it", async () => {
    writeFileSync(join(dir, "console.log"), "[    0.000000] c0\n[    1.000000] c1\n[    2.000000] c2\n");
    const c = statSync(join(dir, "console.log"));
    const B = c.birthtimeMs > 0 ? Math.floor(c.birthtimeMs) : T0;
    utimesSync(join(dir, "console.log"), c.atime, new Date(B + 10_000));
    writeFileSync(join(dir, "exec.log"), header(NAME, GEN1) + line(B + 500, "stdout", "e1\n", 1) + line(B + 1500, "stdout", "e2\n", 1) + line(B + 2500, "stdout", "e3\n", 2));
    const all = await readLogs(dir, NAME, { sources: ["all"] });
    const order = all.map((e) => e.text().trim().split(" ").at(-1));
    if (c.birthtimeMs > 0) expect(order).toEqual(["c0", "e1", "c1", "e2", "c2", "e3"]);
    for (let i = 0; i < all.length; i++) {
      const rest = texts(await drain(NAME, { sources: ["all"], fromCursor: (all[i] as LogEntry).cursor }));
      expect(rest.sort(), `after entry ${i} (${order[i]})`).toEqual(texts(all.slice(i + 1)).sort());
    }
  });

  it("refuses a cursor of another sandbox, of an earlier sandbox of the name, or pointing nowhere", async () => {
    writeTypical();
    const otherDir = join(home, "sandboxes", "other");
    mkdirSync(otherDir);
    writeFileSync(join(otherDir, "exec.log"), header("other", GEN3, "", "ffffffffffffffff") + line(T0, "stdout", "x\n", 1));
    const theirs = (await drain("other", {}))[0] as LogEntry;
    await expect(drain(NAME, { fromCursor: theirs.cursor })).rejects.toMatchObject({ code: "invalidCursor", reason: "otherSandbox", field: "fromCursor" });
    await expect(drain(NAME, { fromCursor: theirs.cursor })).rejects.toBeInstanceOf(InvalidCursorError);

    const ours = (await drain(NAME, {}))[0] as LogEntry;
    const p = decodeCursor(ours.cursor);
    await expect(drain(NAME, { fromCursor: encodeCursor({ ...p, uid: "ffffffffffffffff" }) })).rejects.toMatchObject({ reason: "otherSandbox" });
    await expect(drain(NAME, { fromCursor: encodeCursor({ ...p, offset: p.offset - 3 }) })).rejects.toMatchObject({ reason: "malformed" });
    await expect(drain(NAME, { fromCursor: encodeCursor({ ...p, offset: 1 << 30 }) })).rejects.toMatchObject({ reason: "malformed" });
    await expect(drain(NAME, { fromCursor: encodeCursor({ ...p, gen: GEN3 }) })).rejects.toBeInstanceOf(MissedRotationError);
    await expect(drain(NAME, { fromCursor: "msbl1_bm9wZQ" })).rejects.toMatchObject({ reason: "malformed" });
  });

  it("follows: new entries, a line completed later, a rotation", async () => {
    writeFileSync(join(dir, "exec.log"), header(NAME, GEN1) + line(T0, "stdout", "a\n", 1));
    const s = await openLogStream(dir, NAME, { follow: true });
    try {
      expect((await s.recv())?.text()).toBe("a\n");
      const next = s.recv();
      const half = line(T0 + 1, "stdout", "b\n", 1);
      appendFileSync(join(dir, "exec.log"), half.slice(0, 10));
      await new Promise((r) => setTimeout(r, 300));
      appendFileSync(join(dir, "exec.log"), half.slice(10));
      expect((await next)?.text()).toBe("b\n");
      // Rotation as msb-runtime does it: rename, then a new file naming the one before.
      appendFileSync(join(dir, "exec.log"), line(T0 + 2, "stderr", "c\n", 1));
      renameSync(join(dir, "exec.log"), join(dir, "exec.log.1"));
      writeFileSync(join(dir, "exec.log"), header(NAME, GEN2, GEN1) + line(T0 + 3, "stdout", "d\n", 2));
      const c = await s.recv();
      expect([c?.source, c?.text()]).toEqual(["stderr", "c\n"]);
      const d = await s.recv();
      expect(d?.text()).toBe("d\n");
      // Resuming from an entry of the rotated file goes on into the new one.
      expect(texts(await drain(NAME, { fromCursor: (c as LogEntry).cursor }))).toEqual(["d\n"]);
      expect(texts(await drain(NAME, { fromCursor: (d as LogEntry).cursor }))).toEqual([]);
    } finally {
      await s.close();
    }
    expect(await s.recv()).toBeNull();
  });

  it("ends a follower that fell two rotations behind with MissedRotationError", async () => {
    writeFileSync(join(dir, "exec.log"), header(NAME, GEN1) + line(T0, "stdout", "a\n", 1));
    const s = await openLogStream(dir, NAME, { follow: true });
    expect((await s.recv())?.text()).toBe("a\n");
    renameSync(join(dir, "exec.log"), join(dir, "exec.log.1"));
    writeFileSync(join(dir, "exec.log"), header(NAME, GEN2, GEN1) + line(T0 + 1, "stdout", "lost\n", 1));
    renameSync(join(dir, "exec.log"), join(dir, "exec.log.1"));
    writeFileSync(join(dir, "exec.log"), header(NAME, GEN3, GEN2) + line(T0 + 2, "stdout", "c\n", 1));
    // GEN2 is still there as exec.log.1: nothing lost yet.
    expect(texts([(await s.recv()) as LogEntry, (await s.recv()) as LogEntry])).toEqual(["lost\n", "c\n"]);
    const s2 = await openLogStream(dir, NAME, { follow: true, sources: ["stdout"] });
    // Skip to the end, then two more rotations while it waits.
    expect((await s2.recv())?.text()).toBe("lost\n");
    expect((await s2.recv())?.text()).toBe("c\n");
    // Three rotations while it waits: the file after the one it read (dddd) is gone.
    renameSync(join(dir, "exec.log"), join(dir, "exec.log.1"));
    writeFileSync(join(dir, "exec.log"), header(NAME, "dddddddddddddddd", GEN3) + line(T0 + 3, "stdout", "gone\n", 1));
    renameSync(join(dir, "exec.log"), join(dir, "exec.log.1"));
    writeFileSync(join(dir, "exec.log"), header(NAME, "eeeeeeeeeeeeeeee", "dddddddddddddddd"));
    renameSync(join(dir, "exec.log"), join(dir, "exec.log.1"));
    writeFileSync(join(dir, "exec.log"), header(NAME, "ffffffffffffffff", "eeeeeeeeeeeeeeee") + line(T0 + 4, "stdout", "f\n", 1));
    await expect(s2.recv()).rejects.toBeInstanceOf(MissedRotationError);
    await s.close();
    expect(await s2.recv()).toBeNull();
  });

  it("a pending follow ends when closed, and with the sandbox's removal", async () => {
    const s = await openLogStream(dir, NAME, { follow: true, sources: ["all"] });
    const pending = s.recv();
    await s.close();
    expect(await pending).toBeNull();
    const s2 = await openLogStream(dir, NAME, { follow: true });
    const p2 = s2.recv();
    rmSync(dir, { recursive: true });
    expect(await p2).toBeNull();
  });

  it("follows a console that is recreated by a restart", async () => {
    writeFileSync(join(dir, "console.log"), "[    0.100000] first boot\n");
    const s = await openLogStream(dir, NAME, { follow: true, sources: ["system"] });
    try {
      expect((await s.recv())?.text()).toBe("[    0.100000] first boot\n");
      rmSync(join(dir, "console.log"));
      writeFileSync(join(dir, "console.log"), "[    0.200000] second boot\n");
      expect((await s.recv())?.text()).toBe("[    0.200000] second boot\n");
    } finally {
      await s.close();
    }
  });
});
