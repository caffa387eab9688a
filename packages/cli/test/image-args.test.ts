import { describe, expect, it } from "vitest";
import { parseCli, type ParsedCli } from "../src/args.js";
import { formatPrune } from "../src/images.js";

function parse(...argv: string[]): { result: ParsedCli; err: string } {
  let err = "";
  const result = parseCli(argv, "9.8.7", { out: () => undefined, err: (s) => void (err += s) });
  return { result, err };
}

describe("msb image ...", () => {
  it("parses save, load, inspect, prune and rm; rmi --force", () => {
    expect(parse("image", "save", "a:1", "b:2", "-o", "/tmp/x.tar").result).toEqual({
      kind: "imageSave",
      images: ["a:1", "b:2"],
      output: "/tmp/x.tar",
      format: "docker",
      overwrite: false,
    });
    expect(parse("image", "save", "a", "--output", "x.tar", "--format", "oci", "--force").result).toMatchObject({ format: "oci", overwrite: true });
    expect(parse("image", "load", "x.tar", "--tag", "localhost/a:1").result).toEqual({ kind: "imageLoad", input: "x.tar", tag: "localhost/a:1", json: false });
    expect(parse("image", "load", "x.tar", "--json").result).toEqual({ kind: "imageLoad", input: "x.tar", json: true });
    expect(parse("image", "inspect", "alpine").result).toEqual({ kind: "imageInspect", image: "alpine" });
    expect(parse("image", "prune", "--json").result).toEqual({ kind: "imagePrune", json: true });
    expect(parse("image", "rm", "-f", "a", "b").result).toEqual({ kind: "imageRm", images: ["a", "b"], force: true });
    expect(parse("rmi", "--force", "a").result).toEqual({ kind: "rmi", images: ["a"], force: true });
    expect(parse("rmi", "a").result).toEqual({ kind: "rmi", images: ["a"] });
  });

  it("usage errors: a missing -o, a bad format, a missing argument", () => {
    expect(parse("image", "save", "a").result).toEqual({ kind: "exit", code: 2 });
    const bad = parse("image", "save", "a", "-o", "x", "--format", "zip");
    expect(bad.result).toEqual({ kind: "exit", code: 2 });
    expect(bad.err).toMatch(/format must be docker or oci/);
    expect(parse("image", "load").result).toEqual({ kind: "exit", code: 2 });
    expect(parse("image", "inspect").result).toEqual({ kind: "exit", code: 2 });
  });

  it("formats a prune report", () => {
    const r = { imageRefsRemoved: 2, manifestsRemoved: 1, layersRemoved: 3, fsmetaRemoved: 1, vmdkRemoved: 0, bytesReclaimed: 3 * 1024 * 1024 };
    expect(formatPrune(r, false)).toBe("removed 2 reference(s), 1 image(s), 3 blob(s); reclaimed 3.0 MiB\n");
    expect(JSON.parse(formatPrune(r, true))).toEqual(r);
  });
});
