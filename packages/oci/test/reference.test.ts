import { describe, expect, it } from "vitest";
import { OciError, isLoopbackRegistry, looksLikeImageReference, parseReference } from "../src/index.js";
import { apiHost } from "../src/reference.js";

const D = "sha256:" + "ab".repeat(32);

describe("parseReference (Docker's normalisation)", () => {
  const cases: [string, string, Partial<{ registry: string; repository: string; tag: string; digest: string }>][] = [
    ["alpine", "docker.io/library/alpine:latest", { registry: "docker.io", repository: "library/alpine", tag: "latest" }],
    ["alpine:3.19", "docker.io/library/alpine:3.19", { tag: "3.19" }],
    ["user/repo", "docker.io/user/repo:latest", { repository: "user/repo" }],
    ["user/repo/sub:v1", "docker.io/user/repo/sub:v1", { repository: "user/repo/sub" }],
    ["docker.io/alpine", "docker.io/library/alpine:latest", {}],
    ["index.docker.io/library/alpine", "docker.io/library/alpine:latest", {}],
    ["docker.io/library/alpine:edge", "docker.io/library/alpine:edge", {}],
    ["localhost/repo", "localhost/repo:latest", { registry: "localhost", repository: "repo" }],
    ["localhost:5000/repo:tag", "localhost:5000/repo:tag", { registry: "localhost:5000" }],
    ["127.0.0.1:5000/busybox", "127.0.0.1:5000/busybox:latest", { registry: "127.0.0.1:5000", repository: "busybox" }],
    ["host:5000/team/repo", "host:5000/team/repo:latest", { registry: "host:5000", repository: "team/repo" }],
    ["my.registry.example/a/b:1.0", "my.registry.example/a/b:1.0", { registry: "my.registry.example" }],
    ["[::1]:5000/repo", "[::1]:5000/repo:latest", { registry: "[::1]:5000" }],
    [`alpine@${D}`, `docker.io/library/alpine@${D}`, { digest: D, tag: undefined }],
    [`alpine:3.19@${D}`, `docker.io/library/alpine:3.19@${D}`, { digest: D, tag: "3.19" }],
    [`localhost:5000/repo@${D}`, `localhost:5000/repo@${D}`, { registry: "localhost:5000", digest: D }],
    ["a__b/c-d.e_f", "docker.io/a__b/c-d.e_f:latest", {}],
    // a first component with uppercase letters is a host, as in Docker
    ["Registry/repo", "Registry/repo:latest", { registry: "Registry", repository: "repo" }],
  ];
  for (const [input, normalised, parts] of cases) {
    it(`${input} -> ${normalised}`, () => {
      const r = parseReference(input);
      expect(r.toString()).toBe(normalised);
      expect(String(r)).toBe(normalised);
      for (const [k, v] of Object.entries(parts)) expect((r as unknown as Record<string, unknown>)[k]).toBe(v);
    });
  }

  const bad = [
    "",
    "Alpine",
    "docker.io/Library/alpine",
    "alpine:",
    "alpine:tag with space",
    ":tag",
    "alpine@sha256:abc",
    `alpine@sha512:${"ab".repeat(64)}`,
    "a//b",
    "-alpine",
    "alpine-",
    "ab".repeat(32),
    "host:port/repo",
    "a/" + "b".repeat(260),
  ];
  for (const input of bad) {
    it(`rejects ${JSON.stringify(input.length > 40 ? input.slice(0, 40) + "..." : input)}`, () => {
      let err: unknown;
      try {
        parseReference(input);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(OciError);
      expect((err as OciError).code).toBe("invalidConfig");
      expect((err as OciError).field).toBe("image");
      expect((err as OciError).message).toContain("invalid image reference");
    });
  }

  it("requests for docker.io go to its API host", () => {
    expect(apiHost("docker.io")).toBe("registry-1.docker.io");
    expect(apiHost("127.0.0.1:5000")).toBe("127.0.0.1:5000");
  });
});

describe("isLoopbackRegistry", () => {
  it.each([
    ["localhost", true],
    ["localhost:5000", true],
    ["127.0.0.1:5000", true],
    ["127.1.2.3", true],
    ["[::1]:5000", true],
    ["128.0.0.1:5000", false],
    ["127.0.0.1.example:5000", false],
    ["docker.io", false],
    ["10.0.0.1:5000", false],
  ])("%s -> %s", (r, v) => expect(isLoopbackRegistry(r)).toBe(v));
});

describe("looksLikeImageReference", () => {
  it.each([
    ["alpine", true],
    ["python:3.12-slim", true],
    ["127.0.0.1:5000/busybox:latest", true],
    [`alpine@${D}`, true],
    ["ghcr.example/org/img:1", true],
    ["/var/lib/rootfs", false],
    ["./rootfs", false],
    ["../rootfs", false],
    ["~/rootfs", false],
    ["~", false],
    [".", false],
    ["..", false],
    ["rootfs.ext4", false],
    ["disk.img", false],
    ["My Rootfs", false],
    ["", false],
    ["C:\\images\\x", false],
  ])("%s -> %s", (s, v) => expect(looksLikeImageReference(s)).toBe(v));
});
