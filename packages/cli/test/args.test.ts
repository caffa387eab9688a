import { describe, expect, it } from "vitest";
import { parseCli, type ParsedCli } from "../src/args.js";

function parse(...argv: string[]): { result: ParsedCli; out: string; err: string } {
  let out = "";
  let err = "";
  const result = parseCli(argv, "9.8.7", { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { result, out, err };
}

describe("msb run argument parsing", () => {
  it("takes everything after -- as the command, untouched", () => {
    const { result } = parse("run", "--", "sh", "-c", "echo out; exit 3", "--", "--cpus", "9");
    expect(result).toEqual({ kind: "run", options: { env: [], registry: {}, command: ["sh", "-c", "echo out; exit 3", "--", "--cpus", "9"] } });
  });

  it("parses every option and the image", () => {
    const { result } = parse(
      "run", "--name", "w1", "--cpus", "2", "--memory", "1024", "-e", "A=1", "-e", "B=x=y", "--env", "EMPTY=",
      "-w", "/app", "./rootfs", "--", "echo", "hi",
    );
    expect(result).toEqual({
      kind: "run",
      options: {
        name: "w1",
        cpus: 2,
        memory: 1024,
        env: [["A", "1"], ["B", "x=y"], ["EMPTY", ""]],
        workdir: "/app",
        image: "./rootfs",
        registry: {},
        command: ["echo", "hi"],
      },
    });
  });

  it("accepts short -n and option=value forms", () => {
    const { result } = parse("run", "-n", "x", "--cpus=3", "--", "true");
    expect(result).toEqual({ kind: "run", options: { name: "x", cpus: 3, env: [], registry: {}, command: ["true"] } });
  });

  it("takes an image without a command (the image's default command runs), and image options", () => {
    const { result } = parse("run", "--pull-policy", "never", "--username", "u", "--insecure", "--ca-file", "/ca.pem", "alpine");
    expect(result).toEqual({
      kind: "run",
      options: { env: [], image: "alpine", pullPolicy: "never", registry: { username: "u", insecure: true, caFile: "/ca.pem" }, command: [] },
    });
  });

  it("takes the registry password from MSB_REGISTRY_PASSWORD", () => {
    const result = parseCli(["pull", "--username", "u", "reg.example/x"], "1", { out: () => {}, err: () => {} }, { MSB_REGISTRY_PASSWORD: "pw" });
    expect(result).toEqual({ kind: "pull", image: "reg.example/x", registry: { username: "u", password: "pw" } });
  });

  it("parses images --json and rmi with several images", () => {
    expect(parse("images", "--json").result).toEqual({ kind: "images", json: true });
    expect(parse("images").result).toEqual({ kind: "images", json: false });
    expect(parse("rmi", "a", "b:1").result).toEqual({ kind: "rmi", images: ["a", "b:1"] });
  });

  const bad: [string[], string][] = [
    [["run", "--pull-policy", "sometimes", "x"], "pull-policy"],
    [["pull"], "IMAGE"],
    [["rmi"], "IMAGE"],
    [["run", "--cpus", "abc", "--", "true"], "cpus"],
    [["run", "--cpus", "1.5", "--", "true"], "cpus"],
    [["run", "--memory", "-1", "--", "true"], "memory"],
    [["run", "--memory", "", "--", "true"], "memory"],
    [["run", "-e", "NOEQUALS", "--", "true"], "env"],
    [["run", "-e", "=v", "--", "true"], "env"],
    [["run", "--bogus", "--", "true"], "--bogus"],
    [["run", "img", "extra", "--", "true"], "too many arguments"],
    [["run", "--cpus"], "--cpus"],
  ];
  for (const [argv, word] of bad) {
    it(`rejects ${JSON.stringify(argv)} with exit 2, naming ${word}`, () => {
      const { result, err } = parse(...argv);
      expect(result).toEqual({ kind: "exit", code: 2 });
      expect(err).toContain(word);
    });
  }

  it("a missing command is a usage error", () => {
    for (const argv of [["run"], ["run", "--"], ["run", "--", ""]]) {
      const { result, err } = parse(...argv);
      expect(result).toEqual({ kind: "exit", code: 2 });
      expect(err).toContain("missing command");
    }
  });
});

describe("msb global options", () => {
  it("--version prints the version, exit 0", () => {
    for (const flag of ["--version", "-V"]) {
      const { result, out } = parse(flag);
      expect(result).toEqual({ kind: "exit", code: 0 });
      expect(out.trim()).toBe("9.8.7");
    }
  });

  it("--help prints usage, exit 0", () => {
    const { result, out } = parse("--help");
    expect(result).toEqual({ kind: "exit", code: 0 });
    expect(out).toContain("Usage: msb");
    expect(out).toContain("run");
  });

  it("run --help shows the -- CMD form", () => {
    const { result, out } = parse("run", "--help");
    expect(result).toEqual({ kind: "exit", code: 0 });
    expect(out).toContain("-- CMD [ARGS...]");
    expect(out).toContain("--memory");
  });

  it("no arguments prints help to stderr, exit 2; unknown commands exit 2", () => {
    const none = parse();
    expect(none.result).toEqual({ kind: "exit", code: 2 });
    expect(none.err).toContain("Usage: msb");
    const unknown = parse("frobnicate");
    expect(unknown.result).toEqual({ kind: "exit", code: 2 });
    expect(unknown.err).toContain("frobnicate");
  });
});
