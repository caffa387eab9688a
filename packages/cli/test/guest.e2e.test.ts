// End-to-end: msb exec with stdin (piped, and an interactive shell on a pseudo-terminal
// under tmux), msb cp both ways, msb run -v / --tmpfs / --script, with real VMs.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const bin = fileURLToPath(new URL("../dist/bin.js", import.meta.url));
let home = "";
let host = "";

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function msb(args: string[], opts: { input?: string } = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], {
      env: { ...process.env, MSB_HOME: home },
      stdio: [opts.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function hasTmux(): boolean {
  return spawnSync("tmux", ["-V"]).status === 0;
}

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), "msb-"));
  host = mkdtempSync(join(tmpdir(), "msb-cli-guest-e2e-"));
  // tmux drives the interactive test; scripts/setup.sh installs it. Install it if missing.
  if (!hasTmux()) {
    const root = process.getuid?.() === 0;
    const argv = ["apt-get", "install", "-y", "--no-install-recommends", "tmux"];
    spawnSync(root ? argv[0]! : "sudo", root ? argv.slice(1) : argv, { stdio: "ignore" });
  }
  const r = await msb(["create", "--name", "cli-guest"]);
  expect(r.code, r.stderr).toBe(0);
});
afterAll(async () => {
  if (home) {
    await msb(["rm", "-f", "cli-guest"]);
    rmSync(home, { recursive: true, force: true });
  }
  if (host) rmSync(host, { recursive: true, force: true });
});

describe("msb exec", () => {
  it("forwards piped stdin: echo hi | msb exec NAME -- cat", async () => {
    const r = await msb(["exec", "cli-guest", "--", "cat"], { input: "hi\n" });
    expect(r).toEqual({ code: 0, stdout: "hi\n", stderr: "" });
    const big = "x".repeat(200_000) + "\n";
    const w = await msb(["exec", "cli-guest", "--", "wc", "-c"], { input: big });
    expect(w.stdout.trim()).toBe(String(big.length));
  });

  it("passes -e, -w, -u and --timeout (exit 124)", async () => {
    const r = await msb(["exec", "-e", "K=v", "-w", "/tmp", "-u", "nobody", "cli-guest", "--", "sh", "-c", 'echo "$K"; pwd; id -un']);
    expect(r).toEqual({ code: 0, stdout: "v\n/tmp\nnobody\n", stderr: "" });
    const t = await msb(["exec", "--timeout", "1000", "cli-guest", "--", "sleep", "60"]);
    expect(t.code).toBe(124);
    expect(t.stderr).toContain("1000 ms");
  });

  it("an interactive shell on a pseudo-terminal (tmux): keys in, output out, exit code through", async () => {
    expect(hasTmux()).toBe(true);
    const session = `msb-e2e-${process.pid}`;
    const marker = join(host, "tmux-exit");
    const cmd = `MSB_HOME='${home}' '${process.execPath}' '${bin}' exec -t cli-guest -- sh; echo "exit=$?" > '${marker}'; sleep 60`;
    execFileSync("tmux", ["new-session", "-d", "-s", session, "-x", "100", "-y", "30", cmd]);
    const capture = () => execFileSync("tmux", ["capture-pane", "-p", "-t", session]).toString();
    const waitFor = async (re: RegExp) => {
      for (let i = 0; i < 150; i++) {
        if (re.test(capture())) return;
        await sleep(200);
      }
      throw new Error(`the pane never showed ${re}:\n${capture()}`);
    };
    try {
      await waitFor(/^\/ #\s*$/m);
      execFileSync("tmux", ["send-keys", "-t", session, "echo $((6*7))", "Enter"]);
      await waitFor(/^42\s*$/m);
      execFileSync("tmux", ["send-keys", "-t", session, "stty size; tty", "Enter"]);
      await waitFor(/^30 100\s*$/m);
      await waitFor(/^\/dev\/pts\/\d+\s*$/m);
      // the local terminal's size follows
      execFileSync("tmux", ["resize-window", "-t", session, "-x", "120", "-y", "40"]);
      await sleep(500);
      execFileSync("tmux", ["send-keys", "-t", session, "stty size", "Enter"]);
      await waitFor(/^40 120\s*$/m);
      // Ctrl-C reaches the remote foreground command, not msb
      execFileSync("tmux", ["send-keys", "-t", session, "sleep 100", "Enter"]);
      await sleep(500);
      execFileSync("tmux", ["send-keys", "-t", session, "C-c"]);
      execFileSync("tmux", ["send-keys", "-t", session, "echo still-here", "Enter"]);
      await waitFor(/^still-here\s*$/m);
      execFileSync("tmux", ["send-keys", "-t", session, "exit 7", "Enter"]);
      for (let i = 0; i < 100 && !statSync(marker, { throwIfNoEntry: false }); i++) await sleep(200);
      expect(readFileSync(marker, "utf8")).toBe("exit=7\n");
    } finally {
      spawnSync("tmux", ["kill-session", "-t", session]);
    }
  });
});

describe("msb cp", () => {
  it("copies a tree into the sandbox and back (modes and links kept)", async () => {
    const src = join(host, "proj");
    mkdirSync(join(src, "bin"), { recursive: true });
    writeFileSync(join(src, "bin", "run"), "#!/bin/sh\necho ran\n");
    chmodSync(join(src, "bin", "run"), 0o755);
    writeFileSync(join(src, "notes.txt"), "notes\n");
    symlinkSync("notes.txt", join(src, "link"));
    // into an existing guest directory: lands as /tmp/proj
    const up = await msb(["cp", src, "cli-guest:/tmp"]);
    expect(up).toEqual({ code: 0, stdout: "", stderr: "" });
    const check = await msb(["exec", "cli-guest", "--", "sh", "-c", "/tmp/proj/bin/run; cat /tmp/proj/link; stat -c %a /tmp/proj/bin/run"]);
    expect(check.stdout).toBe("ran\nnotes\n755\n");
    // a single file to a new name
    expect((await msb(["cp", join(src, "notes.txt"), "cli-guest:/root/n.txt"])).code).toBe(0);
    expect((await msb(["exec", "cli-guest", "--", "cat", "/root/n.txt"])).stdout).toBe("notes\n");
    // back to the host, into an existing directory
    await msb(["exec", "cli-guest", "--", "sh", "-c", "echo guest-made > /tmp/proj/new.txt"]);
    const back = join(host, "back");
    mkdirSync(back);
    const down = await msb(["cp", "cli-guest:/tmp/proj", back]);
    expect(down).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(readFileSync(join(back, "proj", "new.txt"), "utf8")).toBe("guest-made\n");
    expect(statSync(join(back, "proj", "bin", "run")).mode & 0o777).toBe(0o755);
    expect(lstatSync(join(back, "proj", "link")).isSymbolicLink()).toBe(true);
    expect(readlinkSync(join(back, "proj", "link"))).toBe("notes.txt");
    expect((await msb(["cp", "cli-guest:/etc/passwd", join(host, "passwd")])).code).toBe(0);
    expect(readFileSync(join(host, "passwd"), "utf8")).toContain("root:x:0:0");
  });

  it("a missing guest path exits 1 naming it", async () => {
    const r = await msb(["cp", "cli-guest:/no/such/file", join(host, "x")]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/\/no\/such\/file.*ENOENT/);
  });
});

describe("msb run guest options", () => {
  it("-v HOST:GUEST[:ro], -v name:GUEST, --tmpfs GUEST:size=N, --script NAME=FILE", async () => {
    const data = join(host, "data");
    mkdirSync(data);
    writeFileSync(join(data, "in.txt"), "from host\n");
    const script = join(host, "greet.sh");
    writeFileSync(script, '#!/bin/sh\necho "greetings $1"\n');
    const r = await msb([
      "run", "-v", `${data}:/data`, "-v", `${data}:/data-ro:ro`, "-v", "cli-vol:/vol", "--tmpfs", "/scratch:size=4", "--script", `greet=${script}`,
      "--", "sh", "-c",
      "greet you; cat /data/in.txt; echo out > /data/out.txt; echo kept > /vol/kept; touch /data-ro/x 2>/dev/null || echo ro-refused; grep ' /scratch ' /proc/mounts | grep -o 'size=[0-9]*k'",
    ]);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("greetings you\nfrom host\nro-refused\nsize=4096k\n");
    expect(r.code).toBe(0);
    expect(readFileSync(join(data, "out.txt"), "utf8")).toBe("out\n");
    // the named volume outlives that sandbox
    const again = await msb(["run", "-v", "cli-vol:/v", "--", "cat", "/v/kept"]);
    expect(again).toEqual({ code: 0, stdout: "kept\n", stderr: "" });
  });

  it("piped stdin reaches msb run's command", async () => {
    const r = await msb(["run", "--", "tr", "a-z", "A-Z"], { input: "shout\n" });
    expect(r).toEqual({ code: 0, stdout: "SHOUT\n", stderr: "" });
  });

  it("a missing bind source exits 2 naming it", async () => {
    const missing = join(host, "nope");
    const r = await msb(["run", "-v", `${missing}:/x`, "--", "true"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(missing);
  });
});
