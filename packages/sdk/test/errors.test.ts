import { describe, expect, it } from "vitest";
import {
  AgentTimeoutError,
  ExecFailedError,
  ExecTimeoutError,
  ImageNotFoundError,
  InvalidConfigError,
  KernelNotFoundError,
  MicrosandboxError,
  ProtocolError,
  QemuNotFoundError,
  RuntimeError,
  SandboxAlreadyExistsError,
  SandboxNotFoundError,
  SandboxNotRunningError,
  SandboxStillRunningError,
  SandboxDrainingError,
  CorruptConfigError,
  OutputLimitError,
  DEFAULT_MAX_OUTPUT_BYTES,
  fromNative,
} from "../src/index.js";

describe("fromNative", () => {
  const cases: [string, new (...a: never[]) => MicrosandboxError][] = [
    ["sandboxAlreadyExists", SandboxAlreadyExistsError],
    ["sandboxStillRunning", SandboxStillRunningError],
    ["sandboxNotFound", SandboxNotFoundError],
    ["sandboxNotRunning", SandboxNotRunningError],
    ["sandboxDraining", SandboxDrainingError],
    ["imageNotFound", ImageNotFoundError],
    ["kernelNotFound", KernelNotFoundError],
    ["qemuNotFound", QemuNotFoundError],
    ["agentTimeout", AgentTimeoutError],
    ["runtime", RuntimeError],
    ["protocol", ProtocolError],
  ];
  for (const [code, cls] of cases) {
    it(`maps "${code}: ..." to ${cls.name} with the prefix stripped`, () => {
      const native = new Error(`${code}: something went wrong: details`);
      const e = fromNative(native);
      expect(e).toBeInstanceOf(cls);
      expect(e).toBeInstanceOf(MicrosandboxError);
      expect(e).toBeInstanceOf(Error);
      expect(e.code).toBe(code);
      expect(e.message).toBe("something went wrong: details");
      expect(e.name).toBe(cls.name);
      expect(e.cause).toBe(native);
    });
  }

  it("keeps multi-line texts (kernel log tails) whole", () => {
    const e = fromNative(new Error("agentTimeout: no answer after 60 s\n[ 1.0] line one\n[ 1.1] line two"));
    expect(e).toBeInstanceOf(AgentTimeoutError);
    expect(e.message).toBe("no answer after 60 s\n[ 1.0] line one\n[ 1.1] line two");
  });

  it("maps invalidConfig, taking the field from the text when present", () => {
    const a = fromNative(new Error("invalidConfig: image: not a directory or disk image"));
    expect(a).toBeInstanceOf(InvalidConfigError);
    expect((a as InvalidConfigError).field).toBe("image");
    expect(a.message).toBe("image: not a directory or disk image");
    const b = fromNative(new Error("invalidConfig: bad configuration"));
    expect((b as InvalidConfigError).field).toBe("config");
  });

  it("turns unknown codes and plain errors into RuntimeError, keeping the message", () => {
    expect(fromNative(new Error("whatever: odd")).message).toBe("whatever: odd");
    expect(fromNative(new Error("whatever: odd"))).toBeInstanceOf(RuntimeError);
    expect(fromNative(new Error("no code here"))).toBeInstanceOf(RuntimeError);
    expect(fromNative("a string").message).toBe("a string");
  });

  it("returns MicrosandboxErrors unchanged", () => {
    const e = new SandboxNotRunningError("stopped");
    expect(fromNative(e)).toBe(e);
  });
});

describe("error classes", () => {
  it("carry stable codes and their extra fields", () => {
    const f = new ExecFailedError("sh: nope: not found");
    expect(f.code).toBe("execFailed");
    expect(f.reason).toBe("sh: nope: not found");
    expect(f.message).toContain("not found");
    const t = new ExecTimeoutError(1500);
    expect(t.code).toBe("execTimeout");
    expect(t.timeoutMs).toBe(1500);
    expect(t.message).toContain("1500");
    const i = new InvalidConfigError("cpus", "invalid cpus");
    expect(i.code).toBe("invalidConfig");
    expect(i.field).toBe("cpus");
    expect(new SandboxNotRunningError("x").code).toBe("sandboxNotRunning");
    expect(new SandboxDrainingError("x").code).toBe("sandboxDraining");
    const c = new CorruptConfigError("w1", "bad");
    expect(c.code).toBe("corruptConfig");
    expect(c.sandbox).toBe("w1");
  });
});

describe("OutputLimitError", () => {
  it("has code outputLimit, the limit in bytes and the option's name", () => {
    const e = new OutputLimitError(1 << 20);
    expect(e).toBeInstanceOf(MicrosandboxError);
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe("OutputLimitError");
    expect(e.code).toBe("outputLimit");
    expect(e.limit).toBe(1048576);
    expect(e.field).toBe("maxOutputBytes");
    expect(e.message).toBe(
      "output exceeded the limit of 1048576 bytes (1 MiB) set by maxOutputBytes; raise maxOutputBytes or read the output as a stream",
    );
  });

  it("names another option when given one, and keeps a custom message", () => {
    const e = new OutputLimitError(1000, undefined, { field: "maxBytes" });
    expect(e.field).toBe("maxBytes");
    expect(e.message).toContain("1000 bytes set by maxBytes");
    const cause = new Error("x");
    const f = new OutputLimitError(5, "read too much", { cause });
    expect(f.message).toBe("read too much");
    expect(f.cause).toBe(cause);
    expect(f.field).toBe("maxOutputBytes");
  });

  it("the default limit is 64 MiB", () => {
    expect(DEFAULT_MAX_OUTPUT_BYTES).toBe(64 * 1024 * 1024);
  });
});
