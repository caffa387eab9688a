// End-to-end: the built CLI (packages/cli/dist/bin.js) boots a real microVM.
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const bin = fileURLToPath(new URL("../dist/bin.js", import.meta.url));
let home = "";

beforeAll(() => {
  home = mkdtempSync(join(tmpdir(), "msb-"));
});
afterAll(() => {
  if (home) rmSync(home, { recursive: true, force: true });
});

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function msb(args: string[], opts: { onStdout?: (all: string, kill: (s: NodeJS.Signals) => void) => void; env?: Record<string, string> } = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], {
      env: { ...process.env, ...opts.env, MSB_HOME: home },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
      opts.onStdout?.(stdout, (s) => child.kill(s));
    });
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

const sandboxesLeft = (): string[] => {
  const dir = join(home, "sandboxes");
  return existsSync(dir) ? readdirSync(dir) : [];
};

describe("msb run", () => {
  it("streams stdout and stderr apart, passes the exit code through, removes the sandbox", async () => {
    const r = await msb(["run", "--name", "cli-e2e", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    expect(r.stdout).toBe("out\n");
    expect(r.stderr).toContain("err");
    expect(r.code).toBe(3);
    expect(existsSync(join(home, "sandboxes", "cli-e2e"))).toBe(false);
  });

  it("uses a run-<hex> name by default and leaves nothing behind; honours -e and -w", async () => {
    const r = await msb(["run", "-e", "GREETING=hi", "-w", "/tmp", "--", "sh", "-c", 'echo "$GREETING"; pwd']);
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("hi\n/tmp\n");
    expect(r.code).toBe(0);
    expect(sandboxesLeft()).toEqual([]);
  });

  it("a command that does not exist exits 127", async () => {
    const r = await msb(["run", "--", "definitely-not-a-command"]);
    expect(r.code).toBe(127);
    expect(r.stderr).toMatch(/not found|No such file/i);
    expect(sandboxesLeft()).toEqual([]);
  });

  it("SIGINT stops the run, removes the sandbox and exits 130", async () => {
    let sent = false;
    const r = await msb(["run", "--name", "cli-sigint", "--", "sh", "-c", "echo started; sleep 100"], {
      onStdout: (all, kill) => {
        if (!sent && all.includes("started\n")) {
          sent = true;
          kill("SIGINT");
        }
      },
    });
    expect(sent).toBe(true);
    expect(r.code).toBe(130);
    expect(existsSync(join(home, "sandboxes", "cli-sigint"))).toBe(false);
  });

  it("SIGKILL of msb run: the sandbox's runtime removes it (nothing left, no VM)", async () => {
    let sent = false;
    const r = await msb(["run", "--name", "cli-sigkill", "--", "sh", "-c", "echo started; sleep 100"], {
      onStdout: (all, kill) => {
        if (!sent && all.includes("started\n")) {
          sent = true;
          kill("SIGKILL");
        }
      },
    });
    expect(sent).toBe(true);
    expect(r.signal).toBe("SIGKILL");
    const gone = async () => !existsSync(join(home, "sandboxes", "cli-sigkill"));
    for (let i = 0; i < 100 && !(await gone()); i++) await new Promise((res) => setTimeout(res, 100));
    expect(await gone(), "the sandbox of a SIGKILLed msb run is still there").toBe(true);
    const ls = await msb(["ls", "--json"]);
    expect(JSON.parse(ls.stdout)).toEqual([]);
  });

  it("invalid options exit 2 with a message naming the field", async () => {
    const r = await msb(["run", "--cpus", "0", "--", "true"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("cpus");
    expect(sandboxesLeft()).toEqual([]);
  });
});

describe("msb run, network flags", () => {
  it("--net-rule lets the guest reach a host server; without it the default policy denies it", async () => {
    const server = createServer((_req, res) => res.end("from the host\n"));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as AddressInfo).port;
    try {
      const url = `http://host.microsandbox.internal:${port}/`;
      const allowed = await msb(["run", "--net-rule", `allow:host:tcp:${port}`, "--", "wget", "-q", "-O", "-", url]);
      expect(allowed.stderr).toBe("");
      expect(allowed.stdout).toBe("from the host\n");
      expect(allowed.code).toBe(0);
      // (no -T: busybox's wget crashes with SIGSEGV when given a timeout, which "not 0" hid)
      const denied = await msb(["run", "--", "wget", "-q", "-O", "-", url]);
      expect(denied.stdout).toBe("");
      expect(denied.stderr).toBe("wget: can't connect to remote host (10.0.2.254): Connection refused\n");
      expect(denied.code).toBe(1);
      const offline = await msb(["run", "--no-net", "--", "ls", "/sys/class/net"]);
      expect(offline.stdout.split(/\s+/).filter(Boolean)).toEqual(["lo"]);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it("--secret ENV@HOST and --secret-file: the guest sees placeholders, the values come from msb's environment and a file", async () => {
    const value = `S3cr3t-cli-${process.pid}-${Date.now()}`;
    const file = join(home, "other-key");
    writeFileSync(file, `file-${value}\n`);
    const r = await msb(
      ["run", "--secret", "API_KEY@api.example.com", "--secret-file", `OTHER@*.example.com=${file}`, "--", "sh", "-c", "echo $API_KEY $OTHER; env | grep -c S3cr3t-cli- || true"],
      { env: { API_KEY: value } },
    );
    expect(r.stderr).toBe("");
    expect(r.stdout).toBe("$MSB_API_KEY $MSB_OTHER\n0\n");
    expect(r.code).toBe(0);
    const unset = await msb(["run", "--secret", "NOT_SET_ANYWHERE@api.example.com", "--", "true"]);
    expect(unset.code).toBe(2);
    expect(unset.stderr).toContain("the environment variable NOT_SET_ANYWHERE is not set");
  });

  it("-p HOST:GUEST publishes a guest server on 127.0.0.1", async () => {
    const probe = createNetServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
    const hostPort = (probe.address() as AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    let body = "";
    let sent = false;
    const r = await msb(["run", "-p", `${hostPort}:8080`, "--", "sh", "-c", "echo hi from the guest > /tmp/index.html; echo serving; exec httpd -f -p 8080 -h /tmp"], {
      onStdout: (all, kill) => {
        if (sent || !all.includes("serving\n")) return;
        sent = true;
        void (async () => {
          for (let i = 0; i < 50 && body === ""; i++) {
            try {
              body = await (await fetch(`http://127.0.0.1:${hostPort}/`, { signal: AbortSignal.timeout(5000) })).text();
            } catch {
              await new Promise((res) => setTimeout(res, 200));
            }
          }
          kill("SIGINT");
        })();
      },
    });
    expect(sent).toBe(true);
    expect(body).toBe("hi from the guest\n");
    expect(r.code).toBe(130);
  });
});
