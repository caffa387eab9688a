// End-to-end: the default user (`.user()`) is resolved when the sandbox is created, on a
// real VM (default busybox image): an unknown user or group fails create() with
// InvalidConfigError("user") and leaves no VM and no sandbox behind.
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { InvalidConfigError, Sandbox } from "../src/index.js";
import { cleanup, qemuProcessesMentioning, useTempMsbHome, waitFor } from "./e2e-helpers.js";

const home = useTempMsbHome();

describe("default user", () => {
  it("an unknown user fails create(): InvalidConfigError user, the VM is stopped, the name is free", async () => {
    const e = await Sandbox.builder("e2e-user")
      .user("nosuchuser")
      .create()
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(InvalidConfigError);
    expect((e as InvalidConfigError).field).toBe("user");
    expect((e as Error).message).toContain("unknown user: nosuchuser");
    await expect(Sandbox.get("e2e-user")).rejects.toMatchObject({ code: "sandboxNotFound" });
    expect(await waitFor(() => qemuProcessesMentioning(join(home(), "sandboxes", "e2e-user")).length === 0, 20_000)).toBe(true);
    // the same name again, with a user the image has
    const sb = await Sandbox.builder("e2e-user").user("nobody").create();
    try {
      expect((await sb.exec("id")).stdout()).toBe("uid=65534(nobody) gid=65534(nogroup)\n");
    } finally {
      await cleanup(sb);
    }
  });

  it("an unknown group fails the same way; numeric ids need no entry", async () => {
    await expect(Sandbox.builder("e2e-group").user("nobody:nosuchgroup").create()).rejects.toMatchObject({
      code: "invalidConfig",
      field: "user",
    });
    await expect(Sandbox.get("e2e-group")).rejects.toMatchObject({ code: "sandboxNotFound" });
    const sb = await Sandbox.builder("e2e-group").user("1234:5678").create();
    try {
      expect((await sb.exec("id")).stdout()).toBe("uid=1234 gid=5678\n");
    } finally {
      await cleanup(sb);
    }
  });
});
