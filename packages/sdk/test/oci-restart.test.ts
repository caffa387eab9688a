// Sandboxes from OCI images: the image is resolved once at create (with its policy) and
// again at start (from the cache, pinned to the digest the sandbox's disk was made on).
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { PulledImage, PullOptions } from "@microsandbox/oci";
import { ImageNotFoundError, Sandbox } from "../src/index.js";
import { setNativeBinding } from "../src/native.js";
import { fakeNative, type FakeNative } from "./fake-native.js";

const pulls: { ref: string; opts: PullOptions }[] = [];
let images: Record<string, Omit<PulledImage, "reference" | "fstype" | "sizeBytes">> = {};

vi.mock("@microsandbox/oci", async (importOriginal) => {
  const actual = await importOriginal<typeof import("@microsandbox/oci")>();
  return {
    ...actual,
    pullImage: vi.fn(async (ref: string, opts: PullOptions): Promise<PulledImage> => {
      pulls.push({ ref, opts });
      const img = images[ref];
      if (!img) throw new actual.OciError("imageNotFound", `image ${ref} not found`);
      return { ...img, reference: ref, fstype: "ext4", sizeBytes: 1 };
    }),
  };
});

const D1 = `sha256:${"1".repeat(64)}`;
const D2 = `sha256:${"2".repeat(64)}`;
const imageConfig = { entrypoint: null, cmd: ["sh"], env: [["PATH", "/bin"]] as [string, string][], workingDir: "/srv", user: "1000" };

let fake: FakeNative;
const savedHome = process.env.MSB_HOME;
beforeEach(() => {
  pulls.length = 0;
  images = { "alpine:3.20": { digest: D1, rootfs: "/cache/1/rootfs.ext4", config: imageConfig } };
  fake = fakeNative();
  setNativeBinding(fake);
  process.env.MSB_HOME = "/tmp/msb-unit-home";
});
afterEach(() => {
  setNativeBinding(undefined);
  if (savedHome === undefined) delete process.env.MSB_HOME;
  else process.env.MSB_HOME = savedHome;
});

describe("OCI images across stop and start", () => {
  it("create pulls with the builder's policy and auth; the stored config has the image's defaults and digest", async () => {
    await Sandbox.builder("o")
      .image("alpine:3.20")
      .pullPolicy("always")
      .env("A", "1")
      .registryAuth({ kind: "basic", username: "u", password: "pw" })
      .createDetached();
    expect(pulls).toHaveLength(1);
    expect(pulls[0]!.opts).toMatchObject({ policy: "always", auth: { kind: "basic", username: "u", password: "pw" } });
    expect(fake.configs[0]!.image).toBe("/cache/1/rootfs.ext4");
    const stored = (await Sandbox.get("o")).config();
    expect(stored).toMatchObject({
      image: "alpine:3.20",
      imageKind: "oci",
      imageDigest: D1,
      env: [
        ["PATH", "/bin"],
        ["A", "1"],
      ],
      workdir: "/srv",
      user: "1000",
      cmd: ["sh"],
      registryAuth: { kind: "basic", username: "u" },
    });
  });

  it("start finds the same image in the cache (if-missing, no password) and boots the stored config as is", async () => {
    const sb = await Sandbox.builder("o").image("alpine:3.20").pullPolicy("always").registryAuth({ kind: "basic", username: "u", password: "pw" }).create();
    await sb.stop();
    const again = await Sandbox.start("o");
    expect(pulls).toHaveLength(2);
    expect(pulls[1]!.ref).toBe("alpine:3.20");
    expect(pulls[1]!.opts.policy).toBe("if-missing");
    expect(pulls[1]!.opts.auth).toBeUndefined();
    expect(fake.configs[1]).toMatchObject({ mode: "start", image: "/cache/1/rootfs.ext4", workdir: "/srv", user: "1000" });
    expect(again.config().env).toEqual(sb.config().env);
  });

  it("when the tag moved since create, start pins the digest the sandbox was made from", async () => {
    const sb = await Sandbox.builder("o").image("alpine:3.20").create();
    await sb.stop();
    images["alpine:3.20"] = { digest: D2, rootfs: "/cache/2/rootfs.ext4", config: imageConfig };
    images[`docker.io/library/alpine@${D1}`] = { digest: D1, rootfs: "/cache/1/rootfs.ext4", config: imageConfig };
    await Sandbox.start("o");
    expect(pulls.map((p) => p.ref)).toEqual(["alpine:3.20", "alpine:3.20", `docker.io/library/alpine@${D1}`]);
    expect(fake.configs[1]!.image).toBe("/cache/1/rootfs.ext4");
  });

  it("when the tag cannot be resolved any more, the pinned digest is tried; if neither works, the tag's error", async () => {
    const sb = await Sandbox.builder("o").image("alpine:3.20").create();
    await sb.stop();
    delete images["alpine:3.20"];
    images[`docker.io/library/alpine@${D1}`] = { digest: D1, rootfs: "/cache/1/rootfs.ext4", config: imageConfig };
    await (await Sandbox.start("o")).stop();
    expect(fake.configs[1]!.image).toBe("/cache/1/rootfs.ext4");

    images = {};
    const e = await Sandbox.start("o").catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ImageNotFoundError);
    expect((e as Error).message).toContain("alpine:3.20");
  });
});
