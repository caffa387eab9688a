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

describe("sandbox lifecycle commands", () => {
  it("create takes run's options, lifetime limits and --replace, but no command", () => {
    const { result } = parse(
      "create", "--name", "w1", "--cpus", "2", "--memory", "256", "-e", "A=1", "-w", "/srv", "--pull-policy", "never",
      "--idle-timeout", "30", "--max-duration", "600", "--replace", "--username", "u", "alpine:3.20",
    );
    expect(result).toEqual({
      kind: "create",
      options: {
        name: "w1",
        cpus: 2,
        memory: 256,
        env: [["A", "1"]],
        workdir: "/srv",
        pullPolicy: "never",
        idleTimeoutSecs: 30,
        maxDurationSecs: 600,
        replace: true,
        registry: { username: "u" },
        image: "alpine:3.20",
      },
    });
    expect(parse("create").result).toEqual({ kind: "create", options: { env: [], registry: {} } });
    const withCmd = parse("create", "--", "echo", "hi");
    expect(withCmd.result).toEqual({ kind: "exit", code: 2 });
    expect(withCmd.err).toContain("msb exec");
  });

  it("start, stop, kill and rm take one or more names", () => {
    expect(parse("start", "a").result).toEqual({ kind: "start", names: ["a"] });
    expect(parse("stop", "a", "b").result).toEqual({ kind: "stop", names: ["a", "b"] });
    expect(parse("stop", "--timeout", "2500", "a").result).toEqual({ kind: "stop", names: ["a"], timeoutMs: 2500 });
    expect(parse("stop", "-t", "1", "a").result).toEqual({ kind: "stop", names: ["a"], timeoutMs: 1 });
    expect(parse("kill", "a", "b").result).toEqual({ kind: "kill", names: ["a", "b"] });
    expect(parse("pause", "a", "b").result).toEqual({ kind: "pause", names: ["a", "b"] });
    expect(parse("resume", "a").result).toEqual({ kind: "resume", names: ["a"] });
    expect(parse("warmup").result).toEqual({ kind: "warmup", network: true, json: false });
    expect(parse("fork", "w1", "w2").result).toEqual({ kind: "fork", source: "w1", name: "w2", json: false });
    expect(parse("fork", "w1", "w2", "--json").result).toEqual({ kind: "fork", source: "w1", name: "w2", json: true });
    expect(parse("warmup", "alpine", "--cpus", "2", "--memory", "256", "--no-net", "--json").result).toEqual({ kind: "warmup", image: "alpine", cpus: 2, memory: 256, network: false, json: true });
    expect(parse("run", "--snapshot", "clean", "--", "true").result).toMatchObject({ kind: "run", options: { snapshot: "clean", command: ["true"] } });
    expect(parse("create", "--snapshot", "clean").result).toMatchObject({ kind: "create", options: { snapshot: "clean" } });
    expect(parse("rm", "a", "b").result).toEqual({ kind: "rm", names: ["a", "b"], force: false });
    expect(parse("rm", "-f", "a").result).toEqual({ kind: "rm", names: ["a"], force: true });
  });

  it("ls and its alias ps, with --json", () => {
    expect(parse("ls").result).toEqual({ kind: "ls", json: false });
    expect(parse("ps").result).toEqual({ kind: "ls", json: false });
    expect(parse("ps", "--json").result).toEqual({ kind: "ls", json: true });
  });

  it("inspect NAME; exec NAME -- CMD (everything after -- untouched)", () => {
    expect(parse("inspect", "w1").result).toEqual({ kind: "inspect", name: "w1" });
    expect(parse("exec", "w1", "--", "sh", "-c", "echo $X; exit 3", "--", "--cpus").result).toEqual({
      kind: "exec",
      name: "w1",
      command: ["sh", "-c", "echo $X; exit 3", "--", "--cpus"],
      options: { env: [] },
    });
  });

  it("metrics NAME with --watch, --interval and --json", () => {
    expect(parse("metrics", "w1").result).toEqual({ kind: "metrics", options: { name: "w1", watch: false, json: false, intervalMs: 1000 } });
    expect(parse("metrics", "--watch", "--interval", "250", "--json", "w1").result).toEqual({
      kind: "metrics",
      options: { name: "w1", watch: true, json: true, intervalMs: 250 },
    });
  });

  const bad: [string[], string][] = [
    [["start"], "NAME"],
    [["stop"], "NAME"],
    [["kill"], "NAME"],
    [["pause"], "NAME"],
    [["resume"], "NAME"],
    [["rm"], "NAME"],
    [["inspect"], "NAME"],
    [["inspect", "a", "b"], "too many arguments"],
    [["exec", "w1"], "missing command"],
    [["exec", "w1", "--"], "missing command"],
    [["exec", "--", "true"], "NAME"],
    [["metrics"], "NAME"],
    [["metrics", "--interval", "0", "w1"], "interval"],
    [["metrics", "--interval", "-5", "w1"], "interval"],
    [["metrics", "--interval", "fast", "w1"], "interval"],
    [["stop", "--timeout", "0", "a"], "timeout"],
    [["create", "--idle-timeout", "0"], "idle-timeout"],
    [["create", "--idle-timeout", "-1"], "idle-timeout"],
    [["create", "--max-duration", "0"], "max-duration"],
    [["create", "--max-duration", "1.5"], "max-duration"],
    [["create", "img", "extra"], "too many arguments"],
    [["ls", "--bogus"], "--bogus"],
  ];
  for (const [argv, word] of bad) {
    it(`rejects ${JSON.stringify(argv)} with exit 2, naming ${word}`, () => {
      const { result, err } = parse(...argv);
      expect(result).toEqual({ kind: "exit", code: 2 });
      expect(err).toContain(word);
    });
  }

  it("--help lists the lifecycle commands", () => {
    const { out } = parse("--help");
    for (const cmd of ["create", "start", "stop", "kill", "rm", "ls|ps", "inspect", "exec", "metrics"]) expect(out).toContain(cmd);
    expect(parse("exec", "--help").out).toContain("NAME -- CMD [ARGS...]");
  });
});

describe("guest surface options", () => {
  it("run takes -v (bind and named), --tmpfs, --script, -t and -i", () => {
    const { result } = parse(
      "run", "-v", "./data:/data", "-v", "/abs:/ro:ro", "-v", "cache:/cache", "--volume", "vol.1:/v:rw",
      "--tmpfs", "/scratch:size=64", "--tmpfs", "/t:ro", "--script", "greet=./greet.sh", "-t", "-i", "--", "sh",
    );
    expect(result).toEqual({
      kind: "run",
      options: {
        env: [],
        registry: {},
        command: ["sh"],
        tty: true,
        interactive: true,
        volumes: [
          { kind: "bind", source: "./data", guestPath: "/data", readonly: false },
          { kind: "bind", source: "/abs", guestPath: "/ro", readonly: true },
          { kind: "named", source: "cache", guestPath: "/cache", readonly: false },
          { kind: "named", source: "vol.1", guestPath: "/v", readonly: false },
          { kind: "tmpfs", guestPath: "/scratch", sizeMiB: 64, readonly: false },
          { kind: "tmpfs", guestPath: "/t", readonly: true },
        ],
        scripts: [["greet", "./greet.sh"]],
      },
    });
  });

  it("create takes -v, --tmpfs and --script too", () => {
    const { result } = parse("create", "--name", "w", "-v", "n:/n", "--tmpfs", "/t", "--script", "a=/x");
    expect(result).toMatchObject({
      kind: "create",
      options: { volumes: [{ kind: "named", source: "n", guestPath: "/n", readonly: false }, { kind: "tmpfs", guestPath: "/t", readonly: false }], scripts: [["a", "/x"]] },
    });
  });

  it("exec takes -t, -i, -e, -w, -u and --timeout before NAME", () => {
    const { result } = parse("exec", "-t", "-i", "-e", "A=1", "-e", "B=2", "-w", "/tmp", "-u", "nobody", "--timeout", "500", "w1", "--", "sh");
    expect(result).toEqual({
      kind: "exec",
      name: "w1",
      command: ["sh"],
      options: { env: [["A", "1"], ["B", "2"]], tty: true, interactive: true, workdir: "/tmp", user: "nobody", timeoutMs: 500 },
    });
  });

  it("cp: exactly one side is NAME:/path", () => {
    expect(parse("cp", "./a", "w1:/tmp/a").result).toEqual({ kind: "cp", src: { kind: "host", path: "./a" }, dst: { kind: "sandbox", name: "w1", path: "/tmp/a" } });
    expect(parse("cp", "w1:/etc", "/tmp/etc").result).toEqual({ kind: "cp", src: { kind: "sandbox", name: "w1", path: "/etc" }, dst: { kind: "host", path: "/tmp/etc" } });
    // a host path with a colon: write it as ./a:b
    expect(parse("cp", "./a:/b", "w1:/x").result).toMatchObject({ src: { kind: "host", path: "./a:/b" } });
    for (const argv of [["cp", "a", "b"], ["cp", "w1:/a", "w2:/b"], ["cp", "w1:rel", "b"]]) {
      const { result, err } = parse(...argv);
      expect(result).toEqual({ kind: "exit", code: 2 });
      expect(err).toContain("NAME:/");
    }
    expect(parse("cp", "a").result).toEqual({ kind: "exit", code: 2 });
  });

  const bad: [string[], string][] = [
    [["run", "-v", "/only", "--", "true"], "volume"],
    [["run", "-v", "/a:rel", "--", "true"], "absolute"],
    [["run", "-v", "/a:/b:rx", "--", "true"], "volume"],
    [["run", "-v", "a:b:c:d", "--", "true"], "volume"],
    [["run", "--tmpfs", "rel", "--", "true"], "tmpfs"],
    [["run", "--tmpfs", "/t:size=0", "--", "true"], "size"],
    [["run", "--tmpfs", "/t:big", "--", "true"], "tmpfs"],
    [["run", "--script", "noequals", "--", "true"], "script"],
    [["run", "--script", "a/b=/x", "--", "true"], "script"],
    [["run", "--script", "a=", "--", "true"], "script"],
    [["exec", "--timeout", "0", "w1", "--", "true"], "timeout"],
    [["exec", "-e", "X", "w1", "--", "true"], "env"],
  ];
  for (const [argv, word] of bad) {
    it(`rejects ${JSON.stringify(argv)} with exit 2, naming ${word}`, () => {
      const { result, err } = parse(...argv);
      expect(result).toEqual({ kind: "exit", code: 2 });
      expect(err).toContain(word);
    });
  }
});
