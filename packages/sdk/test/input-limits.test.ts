// Oversized input is refused at the API boundary with InvalidConfigError naming the
// option, before a VM is booted (create) or a request is sent (exec), instead of a
// ProtocolError from the 1 MiB frame limit.
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { InvalidConfigError, Sandbox } from "../src/index.js";
import { checkBootstrapSizes } from "../src/input-limits.js";
import {
  MAX_ARG_BYTES,
  MAX_ENV_ENTRY_BYTES,
  MAX_FRAME_PAYLOAD_BYTES,
  MAX_PATH_BYTES,
  MAX_REQUEST_BYTES,
  MAX_USER_BYTES,
} from "../src/index.js";
import { setNativeBinding } from "../src/native.js";
import { fakeNative, type FakeClient, type FakeNative } from "./fake-native.js";

let fake: FakeNative;
const savedHome = process.env.MSB_HOME;

beforeEach(() => {
  fake = fakeNative();
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-unit-home";
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

const MiB = 1024 * 1024;
const client = (): FakeClient => fake.clients[0]!;

async function rejection(p: Promise<unknown>): Promise<InvalidConfigError> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(InvalidConfigError);
  return e as InvalidConfigError;
}

describe("limits", () => {
  it("are the documented values, under the protocol's frame", () => {
    expect(MAX_ARG_BYTES).toBe(131071);
    expect(MAX_ENV_ENTRY_BYTES).toBe(131071);
    expect(MAX_PATH_BYTES).toBe(4095);
    expect(MAX_USER_BYTES).toBe(256);
    expect(MAX_REQUEST_BYTES).toBe(512 * 1024);
    expect(MAX_REQUEST_BYTES).toBeLessThan(MAX_FRAME_PAYLOAD_BYTES);
  });
});

describe("create: sizes are checked before anything boots", () => {
  it("a 1 MiB env value is InvalidConfigError env.MODE, and startSandbox is never called", async () => {
    const b = Sandbox.builder("w1").env("MODE", "x".repeat(MiB));
    const e = await rejection(b.create());
    expect(e.field).toBe("env.MODE");
    expect(e.message).toContain("env.MODE");
    expect(e.message).toContain("1048581 bytes"); // MODE= and the value
    expect(e.message).toContain("131071 bytes");
    expect(fake.configs).toEqual([]);
    expect(fake.records.size).toBe(0);
    expect(() => b.validate()).toThrow(InvalidConfigError);
    await expect(b.createDetached()).rejects.toMatchObject({ field: "env.MODE" });
    expect(fake.configs).toEqual([]);
  });

  it("the largest entry passes (KEY=value = 131071 bytes); one byte more fails; UTF-8 bytes count, not characters", async () => {
    const fits = "v".repeat(MAX_ENV_ENTRY_BYTES - "K=".length);
    const sb = await Sandbox.builder("w1").env("K", fits).create();
    expect(fake.configs[0]!.env).toEqual([["K", fits]]);
    await sb.stop();
    await expect(Sandbox.builder("w2").env("K", fits + "v").create()).rejects.toMatchObject({ field: "env.K" });
    // 50 000 characters, 100 000 bytes: fits; 70 000 characters, 140 000 bytes: does not
    expect(() => Sandbox.builder("w3").env("K", "é".repeat(50_000)).validate()).not.toThrow();
    expect(() => Sandbox.builder("w3").env("K", "é".repeat(70_000)).validate()).toThrow(/env\.K/);
    expect(fake.configs).toHaveLength(1);
  });

  it("many env values that are each fine but together exceed the bootstrap limit: field env", async () => {
    const b = Sandbox.builder("w1");
    for (let i = 0; i < 6; i++) b.env(`V${i}`, "x".repeat(100 * 1024));
    const e = await rejection(b.create());
    expect(e.field).toBe("env");
    expect(e.message).toContain("524288 bytes (512 KiB)");
    expect(fake.configs).toEqual([]);
  });

  const cases: [string, (b: ReturnType<typeof Sandbox.builder>) => unknown][] = [
    ["workdir", (b) => b.workdir("/" + "d".repeat(MAX_PATH_BYTES))],
    ["user", (b) => b.user("u".repeat(MAX_USER_BYTES + 1))],
    ["volume", (b) => b.volume("/" + "v".repeat(MAX_PATH_BYTES), (m) => m.tmpfs())],
    ["patch", (b) => b.patch((p) => p.mkdir("/" + "p".repeat(MAX_PATH_BYTES)))],
    ["patch", (b) => b.patch((p) => p.symlink("/" + "t".repeat(MAX_PATH_BYTES), "/link"))],
    ["entrypoint[1]", (b) => b.entrypoint(["/bin/sh", "a".repeat(MAX_ARG_BYTES + 1)])],
  ];
  for (const [field, f] of cases) {
    it(`an oversized ${field} is InvalidConfigError ${field}, before boot`, async () => {
      const b = Sandbox.builder("w1");
      f(b);
      const e = await rejection(b.create());
      expect(e.field).toBe(field);
      expect(fake.configs).toEqual([]);
    });
  }

  it("an image's environment merged in at create is checked too (before boot)", () => {
    expect(() =>
      checkBootstrapSizes({ name: "w1", env: [["FROM_IMAGE", "x".repeat(2 * MiB)]], workdir: null, user: null, hostname: null, volumes: [] }),
    ).toThrow(expect.objectContaining({ code: "invalidConfig", field: "env.FROM_IMAGE" }));
    const many: [string, string][] = Array.from({ length: 10_000 }, (_, i) => [`K${i}`, "y".repeat(60)]);
    expect(() => checkBootstrapSizes({ name: "w1", env: many, workdir: null, user: null, hostname: null, volumes: [] })).toThrow(
      expect.objectContaining({ field: "env" }),
    );
  });
});

describe("exec: sizes are checked before the request is sent", () => {
  it("a 1 MiB argument is InvalidConfigError args[1], and nothing reaches the guest", async () => {
    const sb = await Sandbox.builder("w1").create();
    const e = await rejection(sb.exec("echo", ["small", "a".repeat(MiB)]));
    expect(e.field).toBe("args[1]");
    expect(e.message).toContain("args[1]");
    expect(client().requests).toEqual([]);
    expect(client().calls).not.toContain("exec");
    // the sandbox is fine
    expect((await sb.exec("echo", ["ok"])).stdout()).toBe("echo ok\n");
    await sb.stop();
  });

  it("each option names itself: env.KEY, cmd, script, cwd, user; the total names its biggest part", async () => {
    const sb = await Sandbox.builder("w1").create();
    const big = "z".repeat(MiB);
    await expect(sb.execWith("env", (b) => b.env("MODE", big))).rejects.toMatchObject({ code: "invalidConfig", field: "env.MODE" });
    await expect(sb.execWith("env", (b) => b.envs({ A: "1", BIG: big }))).rejects.toMatchObject({ field: "env.BIG" });
    await expect(sb.exec(big)).rejects.toMatchObject({ field: "cmd" });
    await expect(sb.shell(big)).rejects.toMatchObject({ field: "script" });
    await expect(sb.shellStream(big)).rejects.toMatchObject({ field: "script" });
    await expect(sb.shellWith(big, (b) => b)).rejects.toMatchObject({ field: "script" });
    await expect(sb.execWith("pwd", (b) => b.cwd("/" + "c".repeat(5000)))).rejects.toMatchObject({ field: "cwd" });
    await expect(sb.execWith("id", (b) => b.user("u".repeat(300)))).rejects.toMatchObject({ field: "user" });
    await expect(sb.execStreamWith("echo", (b) => b.arg(big))).rejects.toMatchObject({ field: "args[0]" });
    // five arguments of 120 KiB: each fine, together over 512 KiB
    const five = Array.from({ length: 5 }, () => "a".repeat(120 * 1024));
    await expect(sb.exec("echo", five)).rejects.toMatchObject({ field: "args" });
    const envs = Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`E${i}`, "b".repeat(120 * 1024)]));
    await expect(sb.execWith("env", (b) => b.envs(envs))).rejects.toMatchObject({ field: "env" });
    expect(client().requests).toEqual([]);
    // the largest argument that fits is sent
    const fits = "f".repeat(MAX_ARG_BYTES);
    await sb.exec("echo", [fits]);
    expect(client().requests[0]!.args).toEqual([fits]);
    await sb.stop();
  });
});
