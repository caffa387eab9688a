import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { InvalidConfigError, Sandbox } from "../src/index.js";
import { validateConfig, msbHome, bootTimeoutMs } from "../src/config.js";
import { setNativeBinding } from "../src/native.js";
import { fakeNative, type FakeNative } from "./fake-native.js";
import { defaultNetConfig } from "@microsandbox/netstack";

let fake: FakeNative;
beforeEach(() => {
  fake = fakeNative();
  setNativeBinding(fake);
});
afterEach(() => setNativeBinding(undefined));

async function rejection(p: Promise<unknown>): Promise<InvalidConfigError> {
  const e = await p.then(
    () => {
      throw new Error("expected a rejection");
    },
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(InvalidConfigError);
  return e as InvalidConfigError;
}

describe("SandboxBuilder validation", () => {
  const cases: [string, () => ReturnType<typeof Sandbox.builder>, string][] = [
    ["cpus(0)", () => Sandbox.builder("ok").cpus(0), "cpus"],
    ["cpus(256)", () => Sandbox.builder("ok").cpus(256), "cpus"],
    ["cpus(1.5)", () => Sandbox.builder("ok").cpus(1.5), "cpus"],
    ["cpus(NaN)", () => Sandbox.builder("ok").cpus(Number.NaN), "cpus"],
    ["memory(-1)", () => Sandbox.builder("ok").memory(-1), "memory"],
    ["memory(63)", () => Sandbox.builder("ok").memory(63), "memory"],
    ["memory(64): too small to boot", () => Sandbox.builder("ok").memory(64), "memory"],
    ["memory(127)", () => Sandbox.builder("ok").memory(127), "memory"],
    ["memory(100.5)", () => Sandbox.builder("ok").memory(100.5), "memory"],
    ["memory(too big)", () => Sandbox.builder("ok").memory(1024 * 1024 + 1), "memory"],
    ["empty name", () => Sandbox.builder(""), "name"],
    ["64-char name", () => Sandbox.builder("a".repeat(64)), "name"],
    ["name with a slash", () => Sandbox.builder("a/b"), "name"],
    ["name starting with '-'", () => Sandbox.builder("-a"), "name"],
    ["relative workdir", () => Sandbox.builder("ok").workdir("app"), "workdir"],
    ["env key with '='", () => Sandbox.builder("ok").env("A=B", "x"), "env"],
    ["empty env key", () => Sandbox.builder("ok").env("", "x"), "env"],
    ["env key with NUL", () => Sandbox.builder("ok").env("A\0", "x"), "env"],
    ["env value with NUL", () => Sandbox.builder("ok").env("A", "x\0y"), "env"],
    ["empty image", () => Sandbox.builder("ok").image(""), "image"],
    ["bad hostname", () => Sandbox.builder("ok").hostname("-bad-"), "hostname"],
    ["non-number cpus", () => Sandbox.builder("ok").cpus("2" as unknown as number), "cpus"],
  ];

  for (const [what, make, field] of cases) {
    it(`${what} rejects with InvalidConfigError naming ${field}`, async () => {
      const e = await rejection(make().create());
      expect(e.code).toBe("invalidConfig");
      expect(e.field).toBe(field);
      expect(e.message).toContain(field);
      // nothing was started
      expect(fake.configs).toHaveLength(0);
    });
  }

  it("63-char names and all allowed characters are accepted", () => {
    expect(validateConfig({ name: "a".repeat(63), env: [] }).name).toBe("a".repeat(63));
    expect(validateConfig({ name: "Ab0_.-z", env: [] }).name).toBe("Ab0_.-z");
  });

  it("reports the first bad field in a fixed order", async () => {
    const e = await rejection(Sandbox.builder("").cpus(0).create());
    expect(e.field).toBe("name");
  });

  it("applies defaults and resolves the image to an absolute path", () => {
    const c = validateConfig({ name: "w1", env: [] }, "/home/u");
    expect(c).toEqual({
      name: "w1",
      image: null,
      imageKind: null,
      cpus: 1,
      memoryMib: 512,
      env: [],
      workdir: null,
      hostname: null,
      entrypoint: null,
      user: null,
      pullPolicy: "if-missing",
      registryAuth: null,
      insecureRegistry: false,
      registryCa: null,
      idleTimeoutSecs: null,
      maxDurationSecs: null,
      imageFstype: null,
      shell: null,
      scripts: [],
      patches: [],
      volumes: [],
      logLevel: null,
      network: defaultNetConfig(),
      labels: {},
      maxCpus: null,
      maxMemoryMib: null,
      thp: null,
      init: null,
      ephemeral: false,
      memoryTemplate: true,
    });
    expect(validateConfig({ name: "w1", image: "./rootfs", env: [] }, "/home/u").image).toBe("/home/u/rootfs");
    expect(validateConfig({ name: "w1", image: "/abs/disk.ext4", env: [] }, "/home/u").image).toBe("/abs/disk.ext4");
  });

  it("tells OCI references from host paths", () => {
    const kind = (image: string, cwd = "/nonexistent-cwd") => validateConfig({ name: "w1", image, env: [] }, cwd).imageKind;
    expect(kind("alpine")).toBe("oci");
    expect(kind("python:3.12-slim")).toBe("oci");
    expect(kind("127.0.0.1:5000/team/app@sha256:" + "a".repeat(64))).toBe("oci");
    expect(kind("some/rootfs")).toBe("oci");
    expect(kind("/abs/dir")).toBe("path");
    expect(kind("./rel")).toBe("path");
    expect(kind("../up")).toBe("path");
    expect(kind("~/images/x.ext4")).toBe("path");
    // An existing relative path is a path, even where it could also be a reference.
    expect(kind("packages", process.cwd())).toBe("path");
    expect(validateConfig({ name: "w1", image: "alpine", env: [] }, "/x").image).toBe("alpine");
  });

  it("validates the image-related options, naming the field", () => {
    const bad: [Record<string, unknown>, string][] = [
      [{ entrypoint: [] }, "entrypoint"],
      [{ entrypoint: "sh" }, "entrypoint"],
      [{ user: "a b" }, "user"],
      [{ user: "" }, "user"],
      [{ pullPolicy: "sometimes" }, "pullPolicy"],
      [{ registryAuth: { kind: "token", username: "u", password: "p" } }, "registryAuth"],
      [{ registryAuth: { kind: "basic", username: "", password: "p" } }, "registryAuth"],
      [{ insecureRegistry: "yes" }, "insecureRegistry"],
    ];
    for (const [extra, field] of bad) {
      let err: unknown;
      try {
        validateConfig({ name: "w1", env: [], ...extra });
      } catch (e) {
        err = e;
      }
      expect(err, field).toBeInstanceOf(InvalidConfigError);
      expect((err as InvalidConfigError).field).toBe(field);
      expect((err as Error).message).toContain(field);
    }
    const ok = validateConfig({ name: "w1", env: [], entrypoint: ["/bin/sh", "-c"], user: "1000:1000", pullPolicy: "never" });
    expect(ok.entrypoint).toEqual(["/bin/sh", "-c"]);
    expect(ok.user).toBe("1000:1000");
    expect(ok.pullPolicy).toBe("never");
  });

  it("keeps env order and lets a later value win", () => {
    const c = validateConfig({ name: "w1", env: [["A", "1"], ["B", "2"], ["A", "3"], ["E", ""]] });
    expect(c.env).toEqual([["A", "3"], ["B", "2"], ["E", ""]]);
  });
});

describe("environment", () => {
  it("MSB_HOME wins over ~/.microsandbox and is made absolute", () => {
    expect(msbHome({ MSB_HOME: "/srv/msb" })).toBe("/srv/msb");
    expect(msbHome({ MSB_HOME: "rel" })).toBe(`${process.cwd()}/rel`);
    expect(msbHome({})).toMatch(/\/\.microsandbox$/);
    expect(msbHome({ MSB_HOME: "" })).toMatch(/\/\.microsandbox$/);
  });

  it("boot timeout defaults to 60 s and accepts MSB_BOOT_TIMEOUT_MS", () => {
    expect(bootTimeoutMs({})).toBe(60_000);
    expect(bootTimeoutMs({ MSB_BOOT_TIMEOUT_MS: "5000" })).toBe(5000);
    expect(bootTimeoutMs({ MSB_BOOT_TIMEOUT_MS: "nope" })).toBe(60_000);
  });
});
