import { describe, expect, it } from "vitest";
import { ExecFailedError, ExecHandle, ExecOutput, ProtocolError, RuntimeError, type ExecEvent } from "../src/index.js";
import type { NativeExecEvent } from "../src/native.js";

const enc = new TextEncoder();

function handle(events: (NativeExecEvent | null | Error)[]): ExecHandle {
  const q = [...events];
  return new ExecHandle(async () => {
    const ev = q.shift();
    if (ev === undefined) return null;
    if (ev instanceof Error) throw ev;
    return ev;
  });
}

describe("ExecOutput", () => {
  it("decodes UTF-8 and keeps the raw bytes", () => {
    const out = new ExecOutput(0, enc.encode("héllo ✓\n"), enc.encode("warn\n"));
    expect(out.code).toBe(0);
    expect(out.success).toBe(true);
    expect(out.stdout()).toBe("héllo ✓\n");
    expect(out.stderr()).toBe("warn\n");
    expect(out.stdoutBytes()).toEqual(enc.encode("héllo ✓\n"));
    expect(out.stderrBytes()).toBeInstanceOf(Uint8Array);
  });

  it("success is false for non-zero codes", () => {
    expect(new ExecOutput(1, new Uint8Array(), new Uint8Array()).success).toBe(false);
    expect(new ExecOutput(42, new Uint8Array(), new Uint8Array()).code).toBe(42);
  });

  it("replaces invalid UTF-8 instead of throwing", () => {
    const out = new ExecOutput(0, Uint8Array.of(0x66, 0xff, 0x6f), new Uint8Array());
    expect(out.stdout()).toBe("f\uFFFDo");
    expect(out.stdoutBytes()).toEqual(Uint8Array.of(0x66, 0xff, 0x6f));
  });

  it("code and success are read-only getters", () => {
    const out = new ExecOutput(3, new Uint8Array(), new Uint8Array());
    expect(() => {
      (out as unknown as { code: number }).code = 0;
    }).toThrow(TypeError);
  });
});

describe("ExecHandle", () => {
  const events: NativeExecEvent[] = [
    { kind: "started", pid: 7 },
    { kind: "stdout", data: Buffer.from("a") },
    { kind: "stderr", data: Buffer.from("E") },
    { kind: "stdout", data: Buffer.from("b€") },
    { kind: "exited", code: 3, signal: null },
  ];

  it("iterates events in order with plain Uint8Array data, then ends", async () => {
    const h = handle(events);
    const seen: ExecEvent[] = [];
    for await (const ev of h) seen.push(ev);
    expect(seen.map((e) => e.kind)).toEqual(["started", "stdout", "stderr", "stdout", "exited"]);
    const first = seen[1] as { data: Uint8Array };
    expect(Object.getPrototypeOf(first.data)).toBe(Uint8Array.prototype);
    expect(seen[4]).toEqual({ kind: "exited", code: 3 });
    expect(h.pid).toBe(7);
    expect(await h.recv()).toBeNull();
  });

  it("collect gathers stdout and stderr apart", async () => {
    const out = await handle(events).collect();
    expect(out.code).toBe(3);
    expect(out.success).toBe(false);
    expect(out.stdout()).toBe("ab€");
    expect(out.stderr()).toBe("E");
  });

  it("wait resolves the exit status", async () => {
    expect(await handle(events).wait()).toEqual({ code: 3, success: false });
    expect(await handle([{ kind: "started", pid: 1 }, { kind: "exited", code: 0, signal: null }]).wait()).toEqual({ code: 0, success: true });
  });

  it("collect after recv gathers only what is left", async () => {
    const h = handle(events);
    await h.recv();
    await h.recv();
    const out = await h.collect();
    expect(out.stdout()).toBe("b€");
    expect(out.stderr()).toBe("E");
  });

  it("serializes concurrent recv calls", async () => {
    const h = handle(events);
    const got = await Promise.all([h.recv(), h.recv(), h.recv(), h.recv(), h.recv(), h.recv()]);
    expect(got.map((e) => e?.kind ?? null)).toEqual(["started", "stdout", "stderr", "stdout", "exited", null]);
  });

  it("reports signals on the exited event", async () => {
    const h = handle([{ kind: "exited", code: 137, signal: 9 }]);
    expect(await h.recv()).toEqual({ kind: "exited", code: 137, signal: 9 });
  });

  it("a failed event is the stream's last event; wait and collect reject with ExecFailedError", async () => {
    const failed: NativeExecEvent[] = [{ kind: "failed", reason: "nope: No such file or directory" }];
    const e = await handle(failed).collect().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ExecFailedError);
    expect((e as ExecFailedError).reason).toBe("nope: No such file or directory");
    await expect(handle(failed).wait()).rejects.toBeInstanceOf(ExecFailedError);
    const h = handle(failed);
    expect(await h.recv()).toEqual({ kind: "failed", reason: "nope: No such file or directory" });
    // then the stream has ended
    expect(await h.recv()).toBeNull();
    await expect(h.wait()).rejects.toBeInstanceOf(ExecFailedError);
  });

  it("a session that ends without exit status is an error", async () => {
    await expect(handle([{ kind: "started", pid: 1 }, null]).wait()).rejects.toBeInstanceOf(RuntimeError);
  });

  it("maps native errors and rejects malformed events", async () => {
    await expect(handle([new Error("protocol: bad frame")]).wait()).rejects.toBeInstanceOf(ProtocolError);
    await expect(handle([{ kind: "exited" } as unknown as NativeExecEvent]).wait()).rejects.toBeInstanceOf(ProtocolError);
    await expect(handle([{ kind: "stdout" } as unknown as NativeExecEvent]).wait()).rejects.toBeInstanceOf(ProtocolError);
    await expect(handle([{ kind: "bogus" } as unknown as NativeExecEvent]).wait()).rejects.toBeInstanceOf(ProtocolError);
  });
});
