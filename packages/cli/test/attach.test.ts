import { describe, expect, it } from "vitest";
import type { ExecEvent } from "@microsandbox/sdk";
import { attach, attachPlan, type AttachableCommand } from "../src/attach.js";
import { fakeTerminal } from "./fake-terminal.js";

const enc = new TextEncoder();
const dec = new TextDecoder();

describe("attachPlan", () => {
  const t = (stdinIsTTY: boolean) => fakeTerminal({ stdinIsTTY }).term;
  it("forwards stdin with -i, -t, or when stdin is not a terminal; raw mode only for -t on a terminal", () => {
    expect(attachPlan({}, t(true))).toEqual({ tty: false, forwardStdin: false, raw: false });
    expect(attachPlan({}, t(false))).toEqual({ tty: false, forwardStdin: true, raw: false });
    expect(attachPlan({ interactive: true }, t(true))).toEqual({ tty: false, forwardStdin: true, raw: false });
    expect(attachPlan({ tty: true }, t(true))).toEqual({ tty: true, forwardStdin: true, raw: true });
    expect(attachPlan({ tty: true }, t(false))).toEqual({ tty: true, forwardStdin: true, raw: false });
    expect(attachPlan({ tty: true, interactive: true }, undefined)).toEqual({ tty: true, forwardStdin: false, raw: false });
  });
});

/** A command that echoes its stdin and exits 0 at EOF. */
function echoCommand() {
  const written: string[] = [];
  const resizes: string[] = [];
  let push: ((ev: ExecEvent | null) => void) | undefined;
  const queue: (ExecEvent | null)[] = [{ kind: "started", pid: 1 }];
  const emit = (ev: ExecEvent | null) => (push ? (push(ev), (push = undefined)) : queue.push(ev));
  const cmd: AttachableCommand = {
    async *[Symbol.asyncIterator]() {
      for (;;) {
        const ev = queue.length > 0 ? queue.shift()! : await new Promise<ExecEvent | null>((r) => (push = r));
        if (ev === null) return;
        yield ev;
        if (ev.kind === "exited") return;
      }
    },
    takeStdin: () => ({
      async write(d) {
        written.push(dec.decode(d));
        emit({ kind: "stdout", data: d });
      },
      async close() {
        written.push("<EOF>");
        emit({ kind: "exited", code: 3 });
      },
    }),
    resize: async (r, c) => void resizes.push(`${r}x${c}`),
  };
  return { cmd, written, resizes, emit };
}

describe("attach", () => {
  it("forwards piped stdin, streams output, passes the exit code", async () => {
    const { term } = fakeTerminal({ input: ["hel", "lo\n"] });
    const c = echoCommand();
    let out = "";
    const code = await attach(c.cmd, attachPlan({}, term), term, {
      writeOut: async (d) => void (out += dec.decode(d)),
      writeErr: async () => undefined,
    });
    expect(code).toBe(3);
    expect(out).toBe("hello\n");
    expect(c.written).toEqual(["hel", "lo\n", "<EOF>"]);
  });

  it("-t on a terminal: raw mode while it runs (restored after), resizes forwarded", async () => {
    const t = fakeTerminal({ stdinIsTTY: true, endless: true, size: { rows: 30, cols: 100 } });
    const c = echoCommand();
    const done = attach(c.cmd, attachPlan({ tty: true }, t.term), t.term, { writeOut: async () => undefined, writeErr: async () => undefined });
    await new Promise((r) => setTimeout(r, 10));
    t.resizeTo(40, 120);
    await new Promise((r) => setTimeout(r, 10));
    c.emit({ kind: "exited", code: 0 });
    expect(await done).toBe(0);
    expect(c.resizes).toEqual(["40x120"]);
    expect(t.log).toEqual(["raw true", "watch resize", "unwatch resize", "raw false"]);
  });

  it("restores the terminal when the command fails", async () => {
    const t = fakeTerminal({ stdinIsTTY: true, endless: true });
    const cmd: AttachableCommand = {
      // eslint-disable-next-line require-yield
      async *[Symbol.asyncIterator]() {
        throw new Error("boom");
      },
      takeStdin: () => ({ write: async () => undefined, close: async () => undefined }),
    };
    await expect(attach(cmd, attachPlan({ tty: true }, t.term), t.term, { writeOut: async () => undefined, writeErr: async () => undefined })).rejects.toThrow("boom");
    expect(t.log.at(-1)).toBe("raw false");
  });
});
