import { describe, expect, it } from "vitest";
import { hostPlatform, parsePlatform } from "../src/index.js";
import { describePlatforms, normalizePlatform, selectPlatform, type Platform } from "../src/platform.js";

const c = (p: Platform | undefined, item: string) => ({ platform: p, item });

describe("selectPlatform", () => {
  const typical = [
    c({ os: "linux", architecture: "amd64" }, "amd64"),
    c({ os: "linux", architecture: "arm", variant: "v6" }, "armv6"),
    c({ os: "linux", architecture: "arm", variant: "v7" }, "armv7"),
    c({ os: "linux", architecture: "arm64", variant: "v8" }, "arm64v8"),
    c({ os: "linux", architecture: "ppc64le" }, "ppc"),
    c({ os: "unknown", architecture: "unknown" }, "attestation"),
  ];

  it("picks linux/amd64", () => expect(selectPlatform(typical, { os: "linux", architecture: "amd64" })).toBe("amd64"));
  it("picks arm64 v8 when asked for arm64", () => expect(selectPlatform(typical, { os: "linux", architecture: "arm64" })).toBe("arm64v8"));
  it("picks arm64 v8 when asked for arm64/v8", () =>
    expect(selectPlatform(typical, { os: "linux", architecture: "arm64", variant: "v8" })).toBe("arm64v8"));
  it("picks the exact arm variant", () =>
    expect(selectPlatform(typical, { os: "linux", architecture: "arm", variant: "v6" })).toBe("armv6"));
  it("accepts arm64 without a variant", () => {
    const l = [c({ os: "linux", architecture: "amd64" }, "amd64"), c({ os: "linux", architecture: "arm64" }, "arm64")];
    expect(selectPlatform(l, { os: "linux", architecture: "arm64", variant: "v8" })).toBe("arm64");
  });
  it("prefers v8 over a missing variant for arm64", () => {
    const l = [c({ os: "linux", architecture: "arm64" }, "bare"), c({ os: "linux", architecture: "arm64", variant: "v8" }, "v8")];
    expect(selectPlatform(l, { os: "linux", architecture: "arm64" })).toBe("v8");
  });
  it("does not take another arm64 variant", () => {
    const l = [c({ os: "linux", architecture: "arm64", variant: "v9" }, "v9")];
    expect(selectPlatform(l, { os: "linux", architecture: "arm64" })).toBeUndefined();
  });
  it("prefers plain amd64 over amd64/v3 when no variant is asked", () => {
    const l = [c({ os: "linux", architecture: "amd64", variant: "v3" }, "v3"), c({ os: "linux", architecture: "amd64" }, "plain")];
    expect(selectPlatform(l, { os: "linux", architecture: "amd64" })).toBe("plain");
  });
  it("normalises aliases and case", () => {
    const l = [c({ os: "Linux", architecture: "x86_64" }, "x")];
    expect(selectPlatform(l, { os: "linux", architecture: "amd64" })).toBe("x");
  });
  it("returns undefined when nothing matches, ignoring entries without a platform", () => {
    expect(selectPlatform([c(undefined, "none"), ...typical], { os: "linux", architecture: "s390x" })).toBeUndefined();
    expect(selectPlatform(typical, { os: "windows", architecture: "amd64" })).toBeUndefined();
  });
  it("describes the platforms an index has (attestations left out)", () => {
    expect(describePlatforms(typical.map((x) => x.platform))).toBe("linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64/v8, linux/ppc64le");
  });
});

describe("host platform", () => {
  it("is linux and the host architecture in OCI terms", () => {
    const p = hostPlatform();
    expect(p.os).toBe("linux");
    expect(p.architecture).toBe(process.arch === "x64" ? "amd64" : process.arch === "arm64" ? "arm64" : p.architecture);
    if (p.architecture === "arm64") expect(p.variant).toBe("v8");
  });
  it("normalises arm64 to variant v8", () => expect(normalizePlatform({ os: "linux", architecture: "aarch64" })).toEqual({ os: "linux", architecture: "arm64", variant: "v8" }));
  it("parses os/arch[/variant]", () => {
    expect(parsePlatform("linux/arm64/v8")).toEqual({ os: "linux", architecture: "arm64", variant: "v8" });
    expect(parsePlatform("linux/amd64")).toEqual({ os: "linux", architecture: "amd64" });
    expect(() => parsePlatform("amd64")).toThrow(/os\/architecture/);
  });
});
