// Install test (issue 15 items 4 and 7): the packages as a user gets them, through a real
// npm registry.
//
// 1. Verdaccio 6.8.0 (install-deps.sh) on 127.0.0.1, storage in a temp dir: the
//    @microsandbox scope local only, everything else proxied to the registry npm is
//    configured with; a user created through its REST API, a temp userconfig for it.
// 2. The release flow, dry-run against that registry: the repository's publishable parts
//    (built artifacts included) copied to a temp dir, then the repository's changesets CLI
//    there: `changeset version --snapshot test`, `changeset publish --tag test
//    --no-git-tag`. Every package must be in Verdaccio at the snapshot version, its
//    internal dependencies pinned to it; the size of each tarball is printed (and written
//    to test-vms/build/install-sizes.json).
// 3. An empty project (`npm init -y`) installs @microsandbox/sdk and @microsandbox/cli at
//    that version from that registry alone, then, with a fresh MSB_HOME and no MSB_*
//    path overrides: the README's first example as printed (images swapped for the local
//    test registry's copies), `npx msb run -- echo hi`, `npx msb ls --json`,
//    `npx msb doctor`. Everything it loads must come from its own node_modules.
// 4. Another empty project installs the SDK with `--os=darwin --cpu=arm64`: npm skips the
//    platform packages (optional dependencies) and the install succeeds; the first use
//    must fail with one error naming the missing package and the command that fixes it.
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";
import { execFileSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { removeAllSandboxes } from "../../packages/sdk/test/e2e-helpers.js";
import { BLOCK_ENV, blockToJs, readmeBlocks } from "../../packages/sdk/test/readme-blocks.js";
import { pushFixtures, startRegistry, type Registry } from "../registry/index.js";
import {
  copyRelease,
  describeRun,
  human,
  readJson,
  runCmd,
  tarballStats,
  type PackageJson,
  type RunResult,
  type TarballStats,
} from "./release.js";
import { addUser, envWithoutNpm, getJson, startVerdaccio, upstreamRegistry, writeNpmrc, type Verdaccio } from "./verdaccio.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CHANGESET = join(ROOT, "node_modules", ".bin", "changeset");
const STEP_TIMEOUT_MS = 300_000;
const SCOPE = "@microsandbox/";
const PLATFORM_PACKAGES = ["@microsandbox/core-native-linux-x64-gnu", "@microsandbox/guest-linux-x64"];
/** Variables that point the SDK at files outside its packages: never set for the projects. */
const PATH_OVERRIDES = ["MSB_RUNTIME", "MSB_KERNEL", "MSB_INITRAMFS", "MSB_DEFAULT_IMAGE", "MSB_GUEST_DIR"];

// What the published tarballs must hold (packages of the current layout; checked when the
// package is published).
const MUST_HOLD: Record<string, { files: string[]; executable?: string[]; never?: RegExp }> = {
  "@microsandbox/contract": { files: ["dist/index.js", "dist/index.d.ts"] },
  "@microsandbox/netstack": { files: ["dist/index.js", "dist/index.d.ts"] },
  "@microsandbox/oci": { files: ["dist/index.js", "dist/index.d.ts"] },
  "@microsandbox/sdk": { files: ["dist/index.js", "dist/index.d.ts"] },
  "@microsandbox/cli": { files: ["bin/msb.js", "dist/bin.js", "dist/main.js"] },
  "@microsandbox/core-native": { files: ["main.cjs", "main.d.ts", "index.d.ts"], never: /\.node$|^bin\/|vmlinux|\.cpio$|\.ext4$/ },
  "@microsandbox/core-native-linux-x64-gnu": {
    files: ["core-native.linux-x64-gnu.node", "bin/msb-runtime"],
    executable: ["bin/msb-runtime"],
  },
  // floor.cpio: msb-runtime's KVM probe boots it (it looks next to initramfs.cpio); without
  // it sandboxes never use KVM (doctor: "the KVM probe's initramfs ... is missing").
  "@microsandbox/guest-linux-x64": { files: ["vmlinux", "initramfs.cpio", "rootfs.ext4", "floor.cpio", "manifest.json", "LICENSE", "NOTICE"] },
};

interface Packument {
  name: string;
  "dist-tags": Record<string, string>;
  versions: Record<string, PackageJson & { dist: { tarball: string; integrity?: string; shasum: string } }>;
}

let base = ""; // temp dir: release/, npmrc, npm-cache/, project/, project-darwin/
let home = ""; // MSB_HOME of the projects (short: socket paths must fit 108 bytes)
let verdaccio: Verdaccio | undefined;
let reg: Registry | undefined;
let npmrc = "";
let version = ""; // the snapshot version
let released: PackageJson[] = []; // the non-private packages of the repository (as they were)
const sizes: Record<string, { version: string; size: number; unpackedSize: number; files: number }> = {};
const timings: Record<string, number> = {};

/** PATH without the repository's directories (`npm test` puts node_modules/.bin first). */
function cleanPath(): string {
  return (process.env.PATH ?? "/usr/bin:/bin")
    .split(delimiter)
    .filter((d) => d && !d.startsWith(ROOT) && !/node_modules[\\/]\.bin/.test(d))
    .join(delimiter);
}

/** npm's environment: our userconfig and cache, none of the caller's npm_* settings. */
function npmEnv(): NodeJS.ProcessEnv {
  const env = envWithoutNpm();
  delete env.NODE_PATH;
  delete env.NODE_OPTIONS;
  env.PATH = cleanPath();
  env.npm_config_userconfig = npmrc;
  env.npm_config_cache = join(base, "npm-cache");
  env.npm_config_update_notifier = "false";
  return env;
}

/** A project's environment: npmEnv, a fresh MSB_HOME, no MSB_* path overrides. */
function projectEnv(): NodeJS.ProcessEnv {
  const env = npmEnv();
  for (const k of Object.keys(env)) if (k.startsWith("MSB_") && k !== "MSB_ACCEL" && k !== "MSB_QEMU") delete env[k];
  env.MSB_HOME = home;
  return env;
}

const pkgPath = (name: string) => `/${name.replace("/", "%2f")}`;

async function timed<T>(what: string, f: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  try {
    return await f();
  } finally {
    timings[what] = Date.now() - t0;
  }
}

/** Asserts exit 0; the failure message has the output (and, for npm steps, Verdaccio's log). */
function expectOk(what: string, r: RunResult, withRegistryLog = false): void {
  const log = withRegistryLog && verdaccio ? `\n--- Verdaccio's log (end):\n${verdaccio.logs().slice(-6000)}` : "";
  expect(r.code, describeRun(what, r) + log).toBe(0);
}

beforeAll(async () => {
  base = mkdtempSync(join(tmpdir(), "msb-install-"));
  home = mkdtempSync(join(tmpdir(), "msb-ih-"));
  npmrc = join(base, "npmrc");
  verdaccio = await timed("verdaccio start", () => startVerdaccio({ uplink: upstreamRegistry() }));
  const token = await addUser(verdaccio, "msb-release-test", createHash("sha256").update(base).digest("hex"));
  writeNpmrc(npmrc, verdaccio, token);
  // The README example's image comes from the local OCI test registry.
  execFileSync("bash", [join(ROOT, "test-vms/registry/build-debian-python.sh")], { stdio: "inherit" }); // no-op once built
  reg = await startRegistry("plain");
  await pushFixtures(reg, ["debian-python:latest"]);
}, 600_000);

afterAll(async () => {
  if (home) {
    const saved = process.env.MSB_HOME;
    process.env.MSB_HOME = home;
    await removeAllSandboxes();
    if (saved === undefined) delete process.env.MSB_HOME;
    else process.env.MSB_HOME = saved;
    rmSync(home, { recursive: true, force: true });
  }
  await verdaccio?.stop();
  await reg?.stop();
  if (base) rmSync(base, { recursive: true, force: true });
  console.log(`install test timings (s): ${Object.entries(timings).map(([k, v]) => `${k} ${(v / 1000).toFixed(1)}`).join(", ")}`);
}, 120_000);

describe("install through a registry (Verdaccio)", () => {
  it("publishes every package with the release flow (changeset version --snapshot, changeset publish)", async () => {
    const rel = join(base, "release");
    const copied = copyRelease(ROOT, rel);
    released = copied.map((c) => c.pkg);
    expect(released.map((p) => p.name)).toContain("@microsandbox/sdk");
    expect(released.map((p) => p.name)).toContain("@microsandbox/cli");

    const env = npmEnv();
    const ver = await timed("changeset version", () => runCmd(CHANGESET, ["version", "--snapshot", "test"], { cwd: rel, env, timeoutMs: 120_000 }));
    expectOk("changeset version --snapshot test", ver);
    const versions = new Map(copied.map((c) => [c.pkg.name, readJson<PackageJson>(join(rel, "packages", c.dir, "package.json")).version]));
    version = versions.get("@microsandbox/sdk")!;
    expect(version, "snapshot version").toMatch(/^\d+\.\d+\.\d+-test-\d+$/);
    for (const [name, v] of versions) expect(v, `${name}: every package is in the fixed group`).toBe(version);

    // changesets takes the registry from npm_config_registry (unset: the public npm registry).
    const pub = await timed("changeset publish", () =>
      runCmd(CHANGESET, ["publish", "--tag", "test", "--no-git-tag"], {
        cwd: rel,
        env: { ...env, npm_config_registry: verdaccio!.url },
        timeoutMs: STEP_TIMEOUT_MS - 30_000,
      }),
    );
    expectOk("changeset publish --tag test --no-git-tag", pub, true);
    const said = pub.stdout + pub.stderr;
    expect(said, describeRun("changeset publish", pub)).toMatch(/packages published successfully/);

    for (const p of released) {
      const { status, body } = await getJson(verdaccio!, pkgPath(p.name));
      expect(status, `GET ${pkgPath(p.name)}: ${JSON.stringify(body).slice(0, 300)}`).toBe(200);
      const doc = body as Packument;
      expect(Object.keys(doc.versions), `${p.name}: versions in the registry`).toEqual([version]);
      expect(doc["dist-tags"].test, `${p.name}: dist-tag test`).toBe(version);
      const m = doc.versions[version]!;
      // Internal dependencies point at this very snapshot; no workspace:/file: left.
      for (const field of ["dependencies", "optionalDependencies", "peerDependencies"] as const) {
        for (const [dep, range] of Object.entries(m[field] ?? {})) {
          expect(range, `${p.name} ${field}.${dep}`).not.toMatch(/^(workspace|file|link):/);
          if (dep.startsWith(SCOPE)) expect(range, `${p.name} ${field}.${dep}`).toBe(version);
        }
      }

      // The tarball as served: integrity, sizes, contents.
      const r = await fetch(m.dist.tarball);
      expect(r.status, `GET ${m.dist.tarball}`).toBe(200);
      const tgz = Buffer.from(await r.arrayBuffer());
      if (m.dist.integrity?.startsWith("sha512-")) {
        expect(`sha512-${createHash("sha512").update(tgz).digest("base64")}`, `${p.name}: integrity`).toBe(m.dist.integrity);
      }
      expect(createHash("sha1").update(tgz).digest("hex"), `${p.name}: shasum`).toBe(m.dist.shasum);
      const st: TarballStats = tarballStats(tgz);
      sizes[p.name] = { version, size: st.size, unpackedSize: st.unpackedSize, files: st.entries.filter((e) => e.type === "file").length };
      const paths = st.entries.map((e) => e.path);
      expect(paths, `${p.name}: package.json`).toContain("package.json");
      expect(paths, `${p.name}: LICENSE`).toContain("LICENSE");
      expect(paths.filter((x) => /\.tsbuildinfo$|(^|\/)node_modules\//.test(x)), `${p.name}: build leftovers`).toEqual([]);
      const want = MUST_HOLD[p.name];
      if (want) {
        for (const f of want.files) expect(paths, `${p.name} must hold ${f}`).toContain(f);
        for (const f of want.executable ?? []) {
          const e = st.entries.find((x) => x.path === f);
          expect((e?.mode ?? 0) & 0o111, `${p.name}: ${f} executable (mode ${e?.mode.toString(8)})`).not.toBe(0);
        }
        if (want.never) expect(paths.filter((x) => want.never!.test(x)), `${p.name} must not hold`).toEqual([]);
      }
    }
    // The platform packages are optional dependencies of core-native at that version.
    const core = (await getJson(verdaccio!, pkgPath("@microsandbox/core-native"))).body as Packument;
    for (const name of PLATFORM_PACKAGES) expect(core.versions[version]!.optionalDependencies?.[name], `core-native optionalDependencies.${name}`).toBe(version);

    const table = Object.entries(sizes).map(([name, s]) => `  ${name.padEnd(42)} ${human(s.size).padStart(11)} ${human(s.unpackedSize).padStart(11)} ${String(s.files).padStart(6)}`);
    const total = Object.values(sizes).reduce((a, s) => ({ size: a.size + s.size, unpackedSize: a.unpackedSize + s.unpackedSize }), { size: 0, unpackedSize: 0 });
    console.log(
      `published ${version} to Verdaccio:\n  ${"package".padEnd(42)} ${"tarball".padStart(11)} ${"unpacked".padStart(11)} ${"files".padStart(6)}\n${table.join("\n")}\n  ${"total".padEnd(42)} ${human(total.size).padStart(11)} ${human(total.unpackedSize).padStart(11)}`,
    );
    mkdirSync(join(ROOT, "test-vms", "build"), { recursive: true });
    writeFileSync(join(ROOT, "test-vms", "build", "install-sizes.json"), JSON.stringify({ version, packages: sizes, total }, null, 2) + "\n");
  }, STEP_TIMEOUT_MS);

  describe("an empty project that installs the SDK and the CLI from that registry alone", () => {
    let project = "";
    const npx = (args: string[], timeoutMs = 240_000) => runCmd("npx", ["--no", "msb", ...args], { cwd: project, env: projectEnv(), timeoutMs });

    it("npm install @microsandbox/sdk @microsandbox/cli", async () => {
      expect(version, "published first").not.toBe("");
      project = join(base, "project");
      mkdirSync(project);
      expectOk("npm init -y", await runCmd("npm", ["init", "-y"], { cwd: project, env: npmEnv(), timeoutMs: 60_000 }));
      const inst = await timed("npm install (project)", () =>
        runCmd("npm", ["install", "--no-audit", "--no-fund", `@microsandbox/sdk@${version}`, `@microsandbox/cli@${version}`], {
          cwd: project,
          env: npmEnv(),
          timeoutMs: STEP_TIMEOUT_MS - 30_000,
        }),
      );
      expectOk("npm install", inst, true);

      // Every package of the scope is there at that version, from Verdaccio: the lockfile
      // names where each package came from.
      const lock = readJson<{ packages: Record<string, { version?: string; resolved?: string; link?: boolean }> }>(join(project, "package-lock.json"));
      const entries = Object.entries(lock.packages).filter(([k, e]) => k !== "" && !e.link);
      expect(entries.length).toBeGreaterThan(released.length);
      for (const [k, e] of entries) expect(e.resolved, `${k} resolved`).toMatch(new RegExp(`^${escapeRe(verdaccio!.url)}`));
      for (const p of released) {
        const e = lock.packages[`node_modules/${p.name}`];
        expect(e?.version, `${p.name} installed`).toBe(version);
      }
    }, STEP_TIMEOUT_MS);

    it("resolves the SDK, the addon, msb-runtime and the guest files inside the project's node_modules", async () => {
      const script = [
        'import { createRequire } from "node:module";',
        'import { fileURLToPath } from "node:url";',
        'const sdk = fileURLToPath(import.meta.resolve("@microsandbox/sdk"));',
        "const req = createRequire(sdk);",
        'const core = req.resolve("@microsandbox/core-native");',
        'const native = req("@microsandbox/core-native");',
        "void native.listSandboxes; // loads the platform's addon",
        "const assets = native.assetPaths();",
        "native.verifyGuestAssets();",
        "const creq = createRequire(core);",
        `const platform = Object.fromEntries(${JSON.stringify(PLATFORM_PACKAGES)}.map((n) => [n, creq.resolve(n + "/package.json")]));`,
        'const cli = fileURLToPath(import.meta.resolve("@microsandbox/cli"));',
        "const loaded = Object.keys(req.cache);",
        "console.log(JSON.stringify({ sdk, cli, core, platform, assets, loaded }));",
      ].join("\n");
      writeFileSync(join(project, "resolve.mjs"), script);
      const r = await runCmd(process.execPath, ["resolve.mjs"], { cwd: project, env: projectEnv(), timeoutMs: 60_000 });
      expectOk("node resolve.mjs", r);
      const got = JSON.parse(r.stdout) as { sdk: string; cli: string; core: string; platform: Record<string, string>; assets: Record<string, string>; loaded: string[] };
      const nm = join(realpathSync(project), "node_modules") + "/";
      const inside = (what: string, p: string) => {
        expect(realpathSync(p), `${what}: ${p}`).toMatch(new RegExp(`^${escapeRe(nm)}`));
        expect(realpathSync(p), `${what}: nothing from the repository`).not.toMatch(new RegExp(`^${escapeRe(ROOT)}`));
      };
      inside("@microsandbox/sdk", got.sdk);
      inside("@microsandbox/cli", got.cli);
      inside("@microsandbox/core-native", got.core);
      for (const [n, p] of Object.entries(got.platform)) inside(n, p);
      for (const k of ["runtime", "kernel", "initramfs", "defaultImage"]) {
        expect(got.assets[k], `assetPaths().${k}`).toBeDefined();
        inside(`assetPaths().${k}`, got.assets[k]!);
      }
      const addon = got.loaded.filter((f) => f.endsWith(".node"));
      expect(addon, "the addon loaded").toHaveLength(1);
      for (const f of got.loaded) inside(`loaded module ${f}`, f);
      expect(readlinkBin(project), "node_modules/.bin/msb").toBe(join(realpathSync(project), "node_modules", "@microsandbox", "cli", "bin", "msb.js"));
    }, 60_000);

    it("runs the README's first example as printed", async () => {
      const blocks = readmeBlocks(readFileSync(join(ROOT, "README.md"), "utf8"));
      const first = blocks[0]!;
      expect(first.code, `README.md:${first.line}`).toContain("Sandbox.builder(");
      const js = blockToJs(first, reg!.host);
      writeFileSync(join(project, "readme-first.mjs"), js);
      const env = { ...projectEnv(), ...BLOCK_ENV };
      for (const k of PATH_OVERRIDES) expect(env[k], k).toBeUndefined();
      const r = await timed("README example", () => runCmd(process.execPath, ["readme-first.mjs"], { cwd: project, env, timeoutMs: 240_000 }));
      expectOk(`README.md:${first.line} from the project\n--- as run:\n${js}`, r);
      // console.log(out.code, out.stdout()) with out.stdout() === "42\ntest\n"
      expect(r.stdout, describeRun("README example", r)).toBe("0 42\ntest\n\n");
    }, STEP_TIMEOUT_MS);

    it("npx msb run -- echo hi", async () => {
      const r = await timed("msb run", () => npx(["run", "--", "echo", "hi"]));
      expectOk("npx msb run -- echo hi", r);
      expect(r.stdout).toBe("hi\n");
    }, STEP_TIMEOUT_MS);

    it("npx msb ls --json", async () => {
      const r = await npx(["ls", "--json"], 60_000);
      expectOk("npx msb ls --json", r);
      const list = JSON.parse(r.stdout) as { name: string; status: string; image: string | null }[];
      // The README example's sandbox, stopped (it keeps its name until removed); `msb run`
      // removed its own.
      expect(list.map((s) => [s.name, s.status]), r.stdout).toEqual([["worker-1", "stopped"]]);
      expect(list[0]!.image).toContain(`${reg!.host}/debian-python`);
    }, 60_000);

    it("npx msb doctor exits 0", async () => {
      const r = await npx(["doctor"], 120_000);
      expectOk("npx msb doctor", r);
      expect(r.stdout).toMatch(/^A sandbox can start here \(\d+ warnings?\)\.$/m);
      expect(r.stdout).not.toMatch(/\[FAIL\]/);
      const j = await npx(["doctor", "--json"], 120_000);
      expectOk("npx msb doctor --json", j);
      const report = JSON.parse(j.stdout) as { ok: boolean; checks: { name: string; status: string; path?: string; detail: string }[] };
      expect(report.ok).toBe(true);
      const nm = join(realpathSync(project), "node_modules");
      const addon = report.checks.find((c) => c.name === "native-addon");
      expect(addon?.status, JSON.stringify(addon)).toBe("ok");
      expect(addon?.path && realpathSync(addon.path), JSON.stringify(addon)).toMatch(new RegExp(`^${escapeRe(nm)}/`));
      // Nothing the packages should ship is missing (the KVM probe's floor.cpio included).
      expect(report.checks.filter((c) => /is missing/.test(c.detail)).map((c) => c.detail)).toEqual([]);
      const manifest = report.checks.find((c) => c.name === "guest-manifest");
      expect(manifest?.status, JSON.stringify(report.checks)).toBe("ok");
    }, 300_000);
  });

  it("an install for another platform (--os=darwin --cpu=arm64) succeeds; first use names the missing package", async () => {
    expect(version, "published first").not.toBe("");
    const q = join(base, "project-darwin");
    mkdirSync(q);
    expectOk("npm init -y", await runCmd("npm", ["init", "-y"], { cwd: q, env: npmEnv(), timeoutMs: 60_000 }));
    const inst = await timed("npm install (darwin)", () =>
      runCmd("npm", ["install", "--no-audit", "--no-fund", "--os=darwin", "--cpu=arm64", `@microsandbox/sdk@${version}`], {
        cwd: q,
        env: npmEnv(),
        timeoutMs: STEP_TIMEOUT_MS - 60_000,
      }),
    );
    expectOk("npm install --os=darwin --cpu=arm64", inst, true);
    const nm = join(q, "node_modules", "@microsandbox");
    expect(existsSync(join(nm, "core-native", "package.json")), "core-native installed").toBe(true);
    for (const name of PLATFORM_PACKAGES) expect(existsSync(join(q, "node_modules", name)), `${name} skipped`).toBe(false);

    // As a user sees it: the rejection of create(), uncaught. The loader checks the addon's
    // package first, then the guest's: the message names the first one missing.
    const plain = await runCmd(process.execPath, ["--input-type=module", "-e", 'import { Sandbox } from "@microsandbox/sdk"; await Sandbox.builder("x").create();'], {
      cwd: q,
      env: projectEnv(),
      timeoutMs: 60_000,
    });
    expect(plain.code, describeRun("create() without the platform packages", plain)).toBe(1);
    const named = /(@microsandbox\/[\w-]+) is not installed/.exec(plain.stderr)?.[1];
    expect(PLATFORM_PACKAGES, describeRun("create() without the platform packages", plain)).toContain(named);
    const fix = `npm install ${named}@${version}`;
    expect(plain.stderr).toContain(`Fix: ${fix}`);
    if (named !== PLATFORM_PACKAGES[0]) console.log(`note: the first use named ${named}, not ${PLATFORM_PACKAGES[0]}`);

    // The error itself, and what the SDK's doctor() says.
    const script = [
      'import { Sandbox, doctor } from "@microsandbox/sdk";',
      "const out = {};",
      'try { const sb = await Sandbox.builder("x").create(); out.created = true; await sb.kill(); }',
      "catch (e) { out.error = { name: e.name, code: e.code, message: e.message }; }",
      "const r = await doctor();",
      'out.doctor = { ok: r.ok, addon: r.checks.find((c) => c.name === "native-addon") };',
      "console.log(JSON.stringify(out));",
    ].join("\n");
    writeFileSync(join(q, "first-use.mjs"), script);
    const r = await runCmd(process.execPath, ["first-use.mjs"], { cwd: q, env: projectEnv(), timeoutMs: 60_000 });
    expectOk("node first-use.mjs", r);
    const out = JSON.parse(r.stdout) as {
      created?: boolean;
      error?: { name: string; code: string; message: string };
      doctor: { ok: boolean; addon?: { status: string; detail: string } };
    };
    expect(out.created, r.stdout).toBeUndefined();
    expect(out.error?.code, r.stdout).toBe("runtime");
    const msg = out.error!.message;
    expect(msg).toContain(`${named} is not installed`);
    expect(msg).toContain(`Fix: ${fix}`);
    expect(msg).toMatch(/optional dependency/);
    expect(msg, "one line").not.toContain("\n");
    expect(out.doctor.ok).toBe(false);
    expect(out.doctor.addon?.status).toBe("fail");
    expect(out.doctor.addon?.detail).toContain(`${PLATFORM_PACKAGES[0]} is not installed`);
    expect(out.doctor.addon?.detail).toContain(`npm install ${PLATFORM_PACKAGES[0]}@${version}`);
  }, STEP_TIMEOUT_MS);
});

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function readlinkBin(project: string): string {
  return realpathSync(join(project, "node_modules", ".bin", "msb"));
}
