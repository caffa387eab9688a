// `msb volume ...`: argument parsing, and the commands on a temporary $MSB_HOME (no VM).
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { parseCli, type ParsedCli } from "../src/args.js";
import { main } from "../src/main.js";
import { parseSizeMiB } from "../src/volumes.js";

function parse(...argv: string[]): { result: ParsedCli; err: string } {
  let err = "";
  const result = parseCli(argv, "1", { out: () => {}, err: (s) => void (err += s) });
  return { result, err };
}

describe("msb volume argument parsing", () => {
  it("create, ls, inspect, rm", () => {
    expect(parse("volume", "create", "data").result).toEqual({ kind: "volumeCreate", name: "data", volumeKind: "dir", labels: [], quiet: false });
    expect(parse("volume", "create", "--name", "d2", "--kind", "disk", "--size", "10G", "--disk-format", "qcow2", "-l", "a=b", "-q").result).toEqual({
      kind: "volumeCreate",
      name: "d2",
      volumeKind: "disk",
      sizeMiB: 10240,
      diskFormat: "qcow2",
      labels: [["a", "b"]],
      quiet: true,
    });
    expect(parse("volume", "create", "q", "--quota", "512M").result).toMatchObject({ quotaMiB: 512 });
    expect(parse("volume", "ls", "--json").result).toEqual({ kind: "volumeLs", json: true, quiet: false });
    expect(parse("volumes", "--format", "json", "-q").result).toEqual({ kind: "volumeLs", json: true, quiet: true });
    expect(parse("volume", "inspect", "x").result).toEqual({ kind: "volumeInspect", name: "x" });
    expect(parse("volume", "rm", "a", "b").result).toEqual({ kind: "volumeRm", names: ["a", "b"], quiet: false });
  });

  it("bad input is a usage error (exit 2)", () => {
    expect(parse("volume", "create").result).toEqual({ kind: "exit", code: 2 });
    expect(parse("volume", "create", "a", "--kind", "tape").result).toEqual({ kind: "exit", code: 2 });
    expect(parse("volume", "create", "a", "--size", "ten").result).toEqual({ kind: "exit", code: 2 });
    expect(parse("volume", "create", "a", "-l", "=x").result).toEqual({ kind: "exit", code: 2 });
    expect(parse("volume", "rm").result).toEqual({ kind: "exit", code: 2 });
    expect(parseSizeMiB("size")("1g")).toBe(1024);
    expect(parseSizeMiB("size")("300")).toBe(300);
  });
});

describe("msb volume commands", () => {
  let home: string;
  const saved = process.env.MSB_HOME;
  beforeEach(() => {
    home = mkdtempSync(join(tmpdir(), "msb-cli-vol-"));
    process.env.MSB_HOME = home;
  });
  afterEach(() => {
    if (saved === undefined) delete process.env.MSB_HOME;
    else process.env.MSB_HOME = saved;
    rmSync(home, { recursive: true, force: true });
  });

  async function msb(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
    let out = "";
    let err = "";
    const w = async (d: Uint8Array | string) => void (out += String(d));
    const code = await main(argv, { out: (s) => void (out += s), err: (s) => void (err += s), writeOut: w, writeErr: w, isTTY: false });
    return { code, out, err };
  }

  it("create, ls, inspect, rm; typed errors with --json", async () => {
    expect(await msb("volume", "create", "data", "-l", "team=web")).toEqual({ code: 0, out: "data\n", err: "" });
    expect(existsSync(join(home, "volumes", "data"))).toBe(true);
    const again = await msb("volume", "create", "data", "--json");
    expect(again.code).toBe(1);
    expect(JSON.parse(again.err).error.code).toBe("volumeAlreadyExists");
    const bad = await msb("volume", "create", "a/b", "--json");
    expect(bad.code).toBe(2);
    expect(JSON.parse(bad.err).error).toMatchObject({ code: "invalidConfig", field: "name" });

    const ls = await msb("volume", "ls", "--json");
    expect(JSON.parse(ls.out)).toMatchObject([{ name: "data", kind: "dir", labels: { team: "web" } }]);
    expect((await msb("volumes", "-q")).out).toBe("data\n");
    expect((await msb("volume", "ls")).out).toMatch(/^NAME\s+KIND.*\ndata\s+dir\s/);
    expect(JSON.parse((await msb("volume", "inspect", "data")).out)).toMatchObject({ name: "data", path: join(home, "volumes", "data") });

    expect(await msb("volume", "rm", "data")).toEqual({ code: 0, out: "removed data\n", err: "" });
    const gone = await msb("volume", "rm", "data", "--json");
    expect(gone.code).toBe(1);
    expect(JSON.parse(gone.err).error.code).toBe("volumeNotFound");
  });
});
