// End-to-end (one busybox VM): the reference SDK's exec and filesystem shapes on a real
// guest: a spawn failure as the stream's last event, shell/exec with per-call options,
// takeStdin() null, ExecHandle.id, stat()'s readonly, FsReadStream.collect().
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExecFailedError, InvalidConfigError, OutputLimitError, Sandbox, Stdin, type ExecEvent } from "../src/index.js";
import { cleanup, useTempMsbHome } from "./e2e-helpers.js";

useTempMsbHome();

let sb: Sandbox | undefined;
const box = (): Sandbox => {
  if (!sb) throw new Error("sandbox was not created");
  return sb;
};

beforeAll(async () => {
  sb = await Sandbox.builder("e2e-parity").env("BASE", "sandbox").create();
});
afterAll(async () => {
  await cleanup(sb);
});

describe("exec in the reference SDK's shape", () => {
  it("a program that does not exist: the stream's last event is failed; wait and exec reject ExecFailedError", async () => {
    const h = await box().execStream("no-such-binary-parity");
    const seen: ExecEvent[] = [];
    for await (const ev of h) seen.push(ev);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toMatchObject({ kind: "failed" });
    expect((seen[0] as { reason: string }).reason).toMatch(/no-such-binary-parity/);
    await expect(h.wait()).rejects.toBeInstanceOf(ExecFailedError);
    const e = await box()
      .exec("no-such-binary-parity", [], { cwd: "/" })
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ExecFailedError);
    expect((e as ExecFailedError).reason).toMatch(/command not found: no-such-binary-parity/);
    // the sandbox keeps serving commands
    expect((await box().exec("echo", ["still", "here"])).stdout()).toBe("still here\n");
  });

  it("shell(script, options) and shellStream(script, options): cwd, env over the sandbox's, user, args, stdin", async () => {
    const out = await box().shell('pwd; echo "$BASE $K $0 $1"; id -u', { cwd: "/etc", env: { K: "v" }, user: "nobody", args: ["zero", "one"] });
    expect(out.code).toBe(0);
    expect(out.stdout()).toBe("/etc\nsandbox v zero one\n65534\n");
    expect(out.status).toEqual({ code: 0, success: true });
    const h = await box().shellStream("cat; exit 3", { stdin: Stdin.bytes("fed in") });
    const got = await h.collect();
    expect([got.stdout(), got.code, got.success]).toEqual(["fed in", 3, false]);
    expect((await box().exec("sh", ["-c", 'echo "$0"'], { args: ["after"] })).stdout()).toBe("after\n");
    await expect(box().shell("true", { cwd: "relative" })).rejects.toBeInstanceOf(InvalidConfigError);
  });

  it("takeStdin() is null without a pipe and on a second take; id is a distinct string per command", async () => {
    const plain = await box().execStream("true");
    expect(plain.takeStdin()).toBeNull();
    expect(await plain.wait()).toEqual({ code: 0, success: true });
    const piped = await box().execStream("cat", [], { stdin: Stdin.pipe() });
    const sink = await piped.takeStdin();
    expect(sink).not.toBeNull();
    expect(piped.takeStdin()).toBeNull();
    await sink!.write("through the pipe");
    await sink!.close();
    expect((await piped.collect()).stdout()).toBe("through the pipe");
    expect(plain.id).toMatch(/^\d+$/);
    expect(piped.id).toMatch(/^\d+$/);
    expect(piped.id).not.toBe(plain.id);
  });
});

describe("filesystem in the reference SDK's shape", () => {
  it("stat() gives readonly from the owner's write bit (mode kept)", async () => {
    await box().shell("printf ro > /tmp/ro.txt && chmod 0444 /tmp/ro.txt && printf rw > /tmp/rw.txt && chmod 0600 /tmp/rw.txt");
    expect(await box().fs().stat("/tmp/ro.txt")).toMatchObject({ kind: "file", mode: 0o444, readonly: true, size: 2, path: "/tmp/ro.txt" });
    expect(await box().fs().stat("/tmp/rw.txt")).toMatchObject({ mode: 0o600, readonly: false });
  });

  it("FsReadStream.collect() reads a file whole; past maxBytes it rejects OutputLimitError", async () => {
    await box().shell("head -c 1048576 /dev/urandom > /tmp/blob && md5sum /tmp/blob > /tmp/blob.md5");
    const data = await (await box().fs().readStream("/tmp/blob")).collect();
    expect(data.byteLength).toBe(1 << 20);
    const { createHash } = await import("node:crypto");
    const md5 = (await box().fs().readToString("/tmp/blob.md5")).split(" ")[0];
    expect(createHash("md5").update(data).digest("hex")).toBe(md5);
    const e = await (await box().fs().readStream("/tmp/blob")).collect({ maxBytes: 4096 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OutputLimitError);
    // the cancelled transfer left the connection usable
    expect((await box().exec("echo", ["ok"])).stdout()).toBe("ok\n");
  });
});
