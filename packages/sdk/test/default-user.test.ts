// The sandbox's default user (builder or image) is resolved at create: an unknown one is
// InvalidConfigError("user"), and the sandbox is killed and removed (its name free again).
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ExecFailedError, InvalidConfigError, Sandbox } from "../src/index.js";
import { setNativeBinding, type NativeExecEvent, type NativeExecRequest } from "../src/native.js";
import { fakeNative, run, type FakeNative } from "./fake-native.js";

let fake: FakeNative;
/** How the guest answers `true` run as the default user (null: it runs). */
let trueFails: string | null = null;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  trueFails = null;
  fake = fakeNative((req: NativeExecRequest): NativeExecEvent[] => {
    if (req.cmd === "true" && trueFails !== null) return [{ kind: "failed", reason: trueFails }];
    return run(`${[req.cmd, ...req.args].join(" ")}\n`);
  });
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-unit-home";
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

describe("default user at create", () => {
  it("an unknown user rejects create() with InvalidConfigError user; the VM is killed and the sandbox removed", async () => {
    trueFails = "unknown user: nosuchuser";
    const e = await Sandbox.builder("w1")
      .user("nosuchuser")
      .create()
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect(e).toMatchObject({ code: "invalidConfig", field: "user" });
    expect((e as Error).message).toContain('"nosuchuser"');
    expect((e as Error).message).toContain("unknown user: nosuchuser");
    expect((e as Error).cause).toBeInstanceOf(ExecFailedError);
    // the check ran the default user's path: `true`, naming no user
    expect(fake.clients[0]!.requests).toEqual([expect.objectContaining({ cmd: "true", args: [], user: null })]);
    expect(fake.clients[0]!.calls).toContain("kill");
    expect(fake.records.has("w1")).toBe(false);
    expect(fake.removed.map(([, n]) => n)).toEqual(["w1"]);
    // the name is free again
    trueFails = null;
    const sb = await Sandbox.builder("w1").create();
    expect(sb.name).toBe("w1");
    await sb.stop();
  });

  it("an unknown group (name:group) is the same error", async () => {
    trueFails = "unknown group: nogrp";
    await expect(Sandbox.builder("w1").user("nobody:nogrp").createDetached()).rejects.toMatchObject({ field: "user" });
    expect(fake.records.has("w1")).toBe(false);
  });

  it("a known user passes: one `true` before the scripts, then create() resolves", async () => {
    const sb = await Sandbox.builder("w1").user("nobody").script("hello", "#!/bin/sh\necho hi\n").create();
    const c = fake.clients[0]!;
    expect(c.requests[0]).toMatchObject({ cmd: "true", user: null });
    expect(c.calls.indexOf("exec")).toBeLessThan(c.calls.indexOf("fs"));
    expect(fake.configs[0]!.user).toBe("nobody");
    await sb.stop();
  });

  it("no configured user: no check", async () => {
    const sb = await Sandbox.builder("w1").create();
    expect(fake.clients[0]!.requests).toEqual([]);
    await sb.stop();
  });

  it("an image without `true` cannot be checked: create() resolves", async () => {
    trueFails = "command not found: true";
    const sb = await Sandbox.builder("w1").user("app").create();
    expect(sb.config().user).toBe("app");
    await sb.stop();
  });

  it("another failure of the check fails create() as it is, and cleans up", async () => {
    trueFails = "working directory /srv does not exist";
    const e = await Sandbox.builder("w1")
      .user("app")
      .create()
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ExecFailedError);
    expect(fake.records.has("w1")).toBe(false);
  });

  it("a restart does not check again", async () => {
    const sb = await Sandbox.builder("w1").user("nobody").create();
    await sb.stop();
    trueFails = "unknown user: nobody";
    const again = await Sandbox.start("w1");
    expect(fake.clients[1]!.requests).toEqual([]);
    await again.stop();
  });
});
