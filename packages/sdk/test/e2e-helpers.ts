// Helpers shared by the SDK's end-to-end tests (real microVMs).
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";
import { Sandbox } from "../src/index.js";

/**
 * Kill and remove every sandbox of the current MSB_HOME (detached ones outlive the
 * test process otherwise). Never throws.
 */
export async function removeAllSandboxes(): Promise<void> {
  let all: Awaited<ReturnType<typeof Sandbox.list>>[number][] = [];
  try {
    all = await Sandbox.list();
  } catch {
    return;
  }
  await Promise.all(
    all.map(async (h) => {
      if (h.status === "starting" || h.status === "running" || h.status === "draining") await h.kill().catch(() => undefined);
      await waitForAsync(async () => {
        try {
          await Sandbox.remove(h.name);
          return true;
        } catch (e) {
          return (e as { code?: string }).code === "sandboxNotFound";
        }
      }, 10_000);
    }),
  );
}

/**
 * Give this test file a fresh, empty MSB_HOME (short path: socket paths under it
 * must stay within the 108-byte limit), restored and deleted after the file, once
 * every sandbox left in it was killed. Returns a getter for the path.
 */
export function useTempMsbHome(): () => string {
  let home = "";
  const saved = process.env.MSB_HOME;
  beforeAll(() => {
    home = mkdtempSync(join(tmpdir(), "msb-"));
    process.env.MSB_HOME = home;
  });
  afterAll(async () => {
    if (home) await removeAllSandboxes();
    if (saved === undefined) delete process.env.MSB_HOME;
    else process.env.MSB_HOME = saved;
    if (home) rmSync(home, { recursive: true, force: true });
  });
  return () => home;
}

/** Process state letter from /proc (R, S, Z, ...), or undefined when there is no such process. */
export function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // "pid (comm) S ..." - comm may contain spaces and parentheses
    return stat.slice(stat.lastIndexOf(")") + 2).charAt(0);
  } catch {
    return undefined;
  }
}

/** A process that no longer exists, or is only a zombie waiting to be reaped, is gone. */
export function isGone(pid: number): boolean {
  const s = procState(pid);
  return s === undefined || s === "Z" || s === "X";
}

/** Live processes whose command line contains `needle` and `qemu`. */
export function qemuProcessesMentioning(needle: string): { pid: number; cmdline: string }[] {
  const found: { pid: number; cmdline: string }[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8").replaceAll("\0", " ");
    } catch {
      continue;
    }
    if (cmdline.includes("qemu") && cmdline.includes(needle) && !isGone(pid)) found.push({ pid, cmdline });
  }
  return found;
}

/** Poll `cond` every 100 ms until it holds or `timeoutMs` passes; returns whether it held. */
export async function waitFor(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (cond()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Poll async `cond` every 200 ms until it holds or `timeoutMs` passes; returns whether it held. */
export async function waitForAsync(cond: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Resolve to `p`'s value, or reject after `ms` with a message saying what did not happen. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

/** Stop (or failing that kill) every sandbox given; never throws. For afterAll / finally. */
export async function cleanup(...sandboxes: ({ stop(): Promise<void>; kill(): Promise<void> } | undefined)[]): Promise<void> {
  await Promise.all(
    sandboxes.map(async (sb) => {
      if (!sb) return;
      try {
        await sb.stop();
      } catch {
        await sb.kill().catch(() => undefined);
      }
    }),
  );
}

/**
 * Read a command's events until its stdout (everything received so far, decoded) matches
 * `re`; returns that text. Rejects after `ms`, or if the command exits first.
 */
export async function readUntil(
  h: { recv(): Promise<{ kind: string; data?: Uint8Array } | null> },
  re: RegExp,
  ms = 30_000,
  sofar = { text: "" },
): Promise<string> {
  const dec = new TextDecoder();
  const deadline = Date.now() + ms;
  while (!re.test(sofar.text)) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`output never matched ${re}: ${JSON.stringify(sofar.text.slice(-300))}`);
    const ev = await within(h.recv(), left, `output matching ${re} (so far ${JSON.stringify(sofar.text.slice(-300))})`);
    if (ev === null) throw new Error(`the command ended before its output matched ${re}: ${JSON.stringify(sofar.text.slice(-300))}`);
    if (ev.kind === "stdout" && ev.data) sofar.text += dec.decode(ev.data, { stream: true });
  }
  return sofar.text;
}

/** A TCP port on 127.0.0.1 that was free a moment ago (for published ports). */
export async function freePort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((res) => s.listen(0, "127.0.0.1", res));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((res) => s.close(() => res()));
  return port;
}

/**
 * A python3 script for the guest: one DNS query for argv[1] to the resolver in
 * /etc/resolv.conf (over TCP when argv[2] is "tcp"); prints whether the id matched, the
 * answer's RCODE and its answer count, so a test sees NXDOMAIN itself, not a libc summary.
 */
export const DNS_PROBE = `
import random, socket, struct, sys
ns = [l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver')][0]
qid = random.randrange(65536)
q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0)
q += b''.join(bytes([len(p)]) + p.encode() for p in sys.argv[1].split('.')) + b'\\0' + struct.pack('>HH', 1, 1)
if sys.argv[2:] == ['tcp']:
    s = socket.create_connection((ns, 53), timeout=10)
    s.sendall(struct.pack('>H', len(q)) + q)
    r = b''
    while len(r) < 2 or len(r) < 2 + struct.unpack('>H', r[:2])[0]:
        r += s.recv(4096)
    r = r[2:]
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    s.sendto(q, (ns, 53))
    r = s.recv(4096)
rid, flags, qd, an = struct.unpack('>HHHH', r[:8])
print(rid == qid, flags & 0xf, an)
`;
