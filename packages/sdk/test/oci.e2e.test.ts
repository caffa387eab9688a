// End-to-end: sandboxes from OCI images pulled from local registries (test-vms/registry),
// booted as real VMs. The image's Env, WorkingDir and User must be visible inside, and
// builder options must override them.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ImageError,
  ImageInUseError,
  ImageNotFoundError,
  Images,
  RegistryAuthError,
  Sandbox,
  type ImagePullProgress as PullProgress,
} from "@microsandbox/sdk";
import { pushFixtures, startRegistry, type Registry } from "../../../test-vms/registry/index.js";
import { cleanup, removeAllSandboxes, useTempMsbHome } from "./e2e-helpers.js";

const home = useTempMsbHome();

let plain: Registry;
let tls: Registry;

beforeAll(async () => {
  plain = await startRegistry("plain");
  tls = await startRegistry("tls-basic");
  await pushFixtures(plain);
  await pushFixtures(tls, ["busybox:latest"]);
});

afterAll(async () => {
  await plain?.stop();
  await tls?.stop();
});

describe("sandboxes from OCI images", () => {
  it("pull policy never with nothing cached -> ImageNotFoundError saying so", async () => {
    const e = await Sandbox.builder("oci-never")
      .image(`${plain.host}/busybox:latest`)
      .pullPolicy("never")
      .create()
      .catch((x: unknown) => x);
    if (e instanceof Sandbox) await cleanup(e);
    expect(e).toBeInstanceOf(ImageNotFoundError);
    expect((e as Error).message).toMatch(/never/);
  });

  it("boots busybox from a plain registry: image Env, WorkingDir and User apply; layers are applied right", async () => {
    const events: PullProgress[] = [];
    const sb = await Sandbox.builder("oci-plain")
      .image(`${plain.host}/busybox:latest`)
      .onPullProgress((p) => events.push(p))
      .create();
    try {
      expect(events[0]?.phase).toBe("resolving");
      expect(events.at(-1)?.phase).toBe("complete");
      expect(events.some((p) => p.phase === "layer" && p.doneBytes === p.totalBytes)).toBe(true);

      expect((await sb.exec("id", ["-u"])).stdout()).toBe("1000\n");
      expect((await sb.exec("pwd")).stdout()).toBe("/opt/data\n");
      expect((await sb.exec("env")).stdout().split("\n")).toContain("MSB_IMAGE_ENV=from-image");
      expect((await sb.exec("cat", ["/etc/image-marker"])).stdout()).toBe("busybox-fixture\n");
      // Ownership and setuid survive the unpack even though nothing was chowned on the host.
      expect((await sb.exec("stat", ["-c", "%a %u %g", "/usr/bin/suid-file"])).stdout()).toBe("4755 0 0\n");
      expect((await sb.exec("stat", ["-c", "%u:%g", "/home/app"])).stdout()).toBe("1000:1000\n");
      // Whiteout and opaque directory.
      expect((await sb.exec("ls", ["/opt/data"])).stdout().split("\n").filter(Boolean).sort()).toEqual([
        "app-owned.txt",
        "hard.txt",
        "keep.txt",
        "link",
        "replaced.txt",
      ]);
      expect((await sb.exec("ls", ["/opt/opaque"])).stdout()).toBe("new.txt\n");
      // Device node from the image (outside /dev, which the guest mounts over).
      expect((await sb.exec("stat", ["-c", "%F %t,%T", "/opt/dev/msbnull"])).stdout()).toBe("character special file 1,3\n");
    } finally {
      await cleanup(sb);
    }
  });

  it("builder options override the image's defaults; the cached image is reused", async () => {
    const events: PullProgress[] = [];
    const sb = await Sandbox.builder("oci-override")
      .image(`${plain.host}/busybox:latest`)
      .env("MSB_IMAGE_ENV", "override")
      .workdir("/tmp")
      .user("root")
      .onPullProgress((p) => events.push(p))
      .create();
    try {
      // if-missing: nothing downloaded this time.
      expect(events.some((p) => p.phase === "layer" && !p.cached)).toBe(false);
      const out = await sb.shell("id -u; pwd; echo $MSB_IMAGE_ENV");
      expect(out.stdout()).toBe("0\n/tmp\noverride\n");
      expect(sb.config().user).toBe("root");
    } finally {
      await cleanup(sb);
    }
  });

  it("pulls through TLS with Basic auth and an extra CA; a wrong password is an auth error", async () => {
    const ref = `${tls.host}/busybox:latest`;
    const bad = await Sandbox.builder("oci-badpw")
      .image(ref)
      .registryCa(tls.caFile!)
      .registryAuth({ kind: "basic", username: tls.username!, password: "wrong" })
      .create()
      .catch((x: unknown) => x);
    if (bad instanceof Sandbox) await cleanup(bad);
    expect(bad).toBeInstanceOf(RegistryAuthError);
    expect((bad as Error).message).toMatch(/rejected|credentials/i);

    const sb = await Sandbox.builder("oci-tls")
      .image(ref)
      .registryCa(tls.caFile!)
      .registryAuth({ kind: "basic", username: tls.username!, password: tls.password! })
      .create();
    try {
      expect((await sb.exec("cat", ["/etc/image-marker"])).stdout()).toBe("busybox-fixture\n");
      // The password is never stored: not in the record, not anywhere in the database files.
      const h = await Sandbox.get("oci-tls");
      expect(h.configJson).not.toContain(tls.password!);
      expect(h.config().registryAuth).toEqual({ kind: "basic", username: tls.username! });
      const dbDir = join(home(), "db");
      for (const f of readdirSync(dbDir)) {
        expect(readFileSync(join(dbDir, f)).includes(Buffer.from(tls.password!)), f).toBe(false);
      }
    } finally {
      await cleanup(sb);
    }
  });

  it("stop then start: the image comes from the cache (its registry may be gone), the files are kept", async () => {
    const own = await startRegistry("plain");
    let stopped = false;
    try {
      await pushFixtures(own, ["busybox:latest"]);
      const sb = await Sandbox.builder("oci-restart").image(`${own.host}/busybox:latest`).pullPolicy("always").createDetached();
      // (the image's user is 1000, who owns /home/app)
      const w = await sb.shell("echo kept > /home/app/restart.txt");
      expect(w.code, w.stderr()).toBe(0);
      expect((await sb.exec("id", ["-u"])).stdout()).toBe("1000\n");
      await sb.stop();
      await own.stop();
      stopped = true;
      const again = await Sandbox.start("oci-restart");
      try {
        expect((await again.exec("cat", ["/home/app/restart.txt"])).stdout()).toBe("kept\n");
        // the image's defaults still apply (they were stored with the sandbox)
        expect((await again.exec("id", ["-u"])).stdout()).toBe("1000\n");
        expect((await again.exec("pwd")).stdout()).toBe("/opt/data\n");
        expect(again.config().imageDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
      } finally {
        await cleanup(again);
      }
      await Sandbox.remove("oci-restart");
    } finally {
      if (!stopped) await own.stop();
    }
  });

  it("an unknown tag -> ImageNotFoundError; an unsafe layer -> ImageError; nothing boots", async () => {
    const unknown = await Sandbox.builder("oci-unknown").image(`${plain.host}/busybox:nope`).create().catch((x: unknown) => x);
    if (unknown instanceof Sandbox) await cleanup(unknown);
    expect(unknown).toBeInstanceOf(ImageNotFoundError);

    const evil = await Sandbox.builder("oci-evil").image(`${plain.host}/evil:dotdot`).create().catch((x: unknown) => x);
    if (evil instanceof Sandbox) await cleanup(evil);
    expect(evil).toBeInstanceOf(ImageError);
    expect((evil as ImageError).code).toBe("image");
  });

  it("Images.list and Images.remove see what the sandboxes pulled", async () => {
    const refs = (await Images.list()).map((i) => i.reference);
    expect(refs).toContain(`${plain.host}/busybox:latest`);
    // the (stopped) sandboxes of the tests above were made from it
    await expect(Images.remove(`${plain.host}/busybox:latest`)).rejects.toBeInstanceOf(ImageInUseError);
    await removeAllSandboxes();
    await Images.remove(`${plain.host}/busybox:latest`);
    expect((await Images.list()).map((i) => i.reference)).not.toContain(`${plain.host}/busybox:latest`);
    await expect(Images.remove(`${plain.host}/busybox:latest`)).rejects.toBeInstanceOf(ImageNotFoundError);
  });
});
