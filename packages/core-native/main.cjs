"use strict";
// Entry point of @microsandbox/core-native: finds this platform's two packages (napi-rs
// layout, both optionalDependencies selected by os/cpu/libc) and says exactly what is
// wrong when one is missing, of another version, or corrupt:
//   @microsandbox/core-native-<platform>  the addon (.node) and bin/msb-runtime
//   @microsandbox/guest-<arch>            vmlinux, initramfs.cpio, rootfs.ext4, manifest.json
// Errors carry `code: "ERR_MSB_INSTALL"` and a message "<contract error code>: <text>",
// the form the SDK maps to its typed errors. Each asset path can be overridden with an
// environment variable (MSB_RUNTIME, MSB_GUEST_DIR, MSB_KERNEL, MSB_INITRAMFS,
// MSB_DEFAULT_IMAGE); an overridden file is the caller's and is not checked. The version
// check is on the packages' package.json (a release rewrites those), the manifest holds
// only sizes and sha256s.
const fs = require("node:fs");
const path = require("node:path");
const crypto = require("node:crypto");

const SELF = require("./package.json");

/** Supported platforms: `<platform>-<arch>-<libc>` -> its packages. */
const PLATFORMS = {
  "linux-x64-gnu": {
    label: "Linux x86_64 with glibc",
    native: "@microsandbox/core-native-linux-x64-gnu",
    addonFile: "core-native.linux-x64-gnu.node",
    guest: "@microsandbox/guest-linux-x64",
  },
};

function installError(code, text) {
  const e = new Error(`${code}: ${text}`);
  e.code = "ERR_MSB_INSTALL";
  return e;
}

// Once per process: a diagnostic report (the only portable way to ask for glibc) takes
// milliseconds, and every create asks for the asset paths.
let libcOfProcess;
function libc() {
  if (libcOfProcess !== undefined) return libcOfProcess;
  if (process.platform !== "linux") libcOfProcess = "";
  else {
    const header = process.report && process.report.getReport().header;
    libcOfProcess = header && header.glibcVersionRuntime ? "gnu" : "musl";
  }
  return libcOfProcess;
}

function platformKey() {
  const l = libc();
  return `${process.platform}-${process.arch}${l ? `-${l}` : ""}`;
}

function platform() {
  const key = platformKey();
  const p = PLATFORMS[key];
  if (!p) {
    const supported = Object.entries(PLATFORMS).map(([k, v]) => `${k} (${v.label})`).join(", ");
    throw installError("runtime", `microsandbox has no native build for ${key}; supported: ${supported}. It needs QEMU and a Linux host (see \`msb doctor\`).`);
  }
  return p;
}

const OPTIONAL_HINT = "it is an optional dependency of @microsandbox/core-native, which npm skips with --omit=optional, --no-optional, or --os/--cpu/--libc naming another platform";

/** Directory of an installed package of this platform, of this package's exact version. */
function packageDir(name) {
  let manifest;
  try {
    manifest = require.resolve(`${name}/package.json`);
  } catch {
    throw installError("runtime", `${name} is not installed (${OPTIONAL_HINT}). Fix: npm install ${name}@${SELF.version}`);
  }
  const { version } = JSON.parse(fs.readFileSync(manifest, "utf8"));
  if (version !== SELF.version) {
    throw installError(
      "runtime",
      `${name} is version ${version}, but @microsandbox/core-native is ${SELF.version}; they must match. Fix: npm install ${name}@${SELF.version}`,
    );
  }
  return path.dirname(manifest);
}

let native;
function loadNative() {
  if (native) return native;
  const p = platform();
  const dir = packageDir(p.native);
  try {
    native = require(path.join(dir, p.addonFile));
  } catch (e) {
    const detail = String((e && e.message) || e).split("\n")[0];
    throw installError("runtime", `cannot load ${p.native}/${p.addonFile} (${detail}). Fix: reinstall it: npm install ${p.native}@${SELF.version}`);
  }
  return native;
}

function guestDir() {
  return process.env.MSB_GUEST_DIR || packageDir(platform().guest);
}

function assetPaths() {
  const guest = guestDir();
  return {
    runtime: process.env.MSB_RUNTIME || path.join(packageDir(platform().native), "bin", "msb-runtime"),
    kernel: process.env.MSB_KERNEL || path.join(guest, "vmlinux"),
    initramfs: process.env.MSB_INITRAMFS || path.join(guest, "initramfs.cpio"),
    defaultImage: process.env.MSB_DEFAULT_IMAGE || path.join(guest, "rootfs.ext4"),
    // msb-runtime's KVM probe (and the bench's floor): it looks for it next to the initramfs.
    floorInitramfs: path.join(guest, "floor.cpio"),
  };
}

// A file checked once per process (by identity: device, inode, size, mtime, ctime).
const verified = new Map();
const identity = (st) => `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;

// Across processes: the identities whose sha256 was checked, in `<cacheDir>/guest-verified.json`
// (hashing the guest files, ~88 MB, takes ~55 ms, paid by every CLI run's first create). Any
// write to a file changes its ctime, so a changed file is hashed again. A cache that cannot
// be read or written only costs the hashing.
const CACHE_FILE = "guest-verified.json";
const MAX_CACHE_BYTES = 64 * 1024;

function readVerifiedCache(cacheDir) {
  if (!cacheDir) return {};
  try {
    const file = path.join(cacheDir, CACHE_FILE);
    if (fs.statSync(file).size > MAX_CACHE_BYTES) return {};
    const parsed = JSON.parse(fs.readFileSync(file, "utf8"));
    return parsed && typeof parsed === "object" && !Array.isArray(parsed) ? parsed : {};
  } catch {
    return {};
  }
}

function writeVerifiedCache(cacheDir, entries) {
  if (!cacheDir) return;
  const file = path.join(cacheDir, CACHE_FILE);
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.mkdirSync(cacheDir, { recursive: true });
    fs.writeFileSync(tmp, JSON.stringify(entries), { mode: 0o644 });
    fs.renameSync(tmp, file);
  } catch {
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      // nothing to clean
    }
  }
}

function sha256File(file) {
  const h = crypto.createHash("sha256");
  const fd = fs.openSync(file, "r");
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    let n;
    while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest("hex");
}

/**
 * Check the guest files the sandbox will boot against the guest package's manifest.json
 * (size, then sha256): a truncated or altered kernel fails here with the file and the fix,
 * never as a boot that hangs. Files given through MSB_KERNEL/MSB_INITRAMFS/
 * MSB_DEFAULT_IMAGE are not checked; a MSB_GUEST_DIR without a manifest.json neither.
 * With `cacheDir` (the SDK passes `$MSB_HOME/cache`), a file whose identity and manifest
 * sha256 were checked by an earlier process is not hashed again.
 */
function verifyGuestAssets(cacheDir) {
  const dir = guestDir();
  const pkg = process.env.MSB_GUEST_DIR ? `the guest directory ${dir} (MSB_GUEST_DIR)` : platform().guest;
  const fix = process.env.MSB_GUEST_DIR
    ? "rebuild it (test-vms/build.sh) or unset MSB_GUEST_DIR"
    : `reinstall it: npm install ${platform().guest}@${SELF.version} --force`;
  const manifestPath = path.join(dir, "manifest.json");
  let manifest;
  try {
    manifest = JSON.parse(fs.readFileSync(manifestPath, "utf8"));
  } catch (e) {
    if (process.env.MSB_GUEST_DIR && e && e.code === "ENOENT") return;
    throw installError("kernelNotFound", `${pkg} has no readable manifest.json (${(e && e.code) || e}). Fix: ${fix}`);
  }
  const overridden = { vmlinux: "MSB_KERNEL", "initramfs.cpio": "MSB_INITRAMFS", "rootfs.ext4": "MSB_DEFAULT_IMAGE" };
  let cache;
  let hashed = false;
  for (const [name, want] of Object.entries(manifest.files || {})) {
    if (process.env[overridden[name]]) continue;
    const file = path.join(dir, name);
    let st;
    try {
      st = fs.statSync(file);
    } catch (e) {
      throw installError("kernelNotFound", `${pkg} is missing ${name} (${(e && e.code) || e}). Fix: ${fix}`);
    }
    const id = identity(st);
    if (verified.get(file) === id) continue;
    if (st.size !== want.size) {
      throw installError("kernelNotFound", `${pkg}: ${name} is ${st.size} bytes, its manifest says ${want.size} (truncated or replaced). Fix: ${fix}`);
    }
    cache = cache || readVerifiedCache(cacheDir);
    const known = cache[file];
    if (!(known && known.id === id && known.sha256 === want.sha256)) {
      const got = sha256File(file);
      if (got !== want.sha256) {
        throw installError("kernelNotFound", `${pkg}: ${name} has sha256 ${got}, its manifest says ${want.sha256} (corrupt). Fix: ${fix}`);
      }
      cache[file] = { id, sha256: got };
      hashed = true;
    }
    verified.set(file, id);
  }
  if (hashed) writeVerifiedCache(cacheDir, cache);
}

// The addon's functions and classes, loaded on first use: requiring this package works on
// any platform (the SDK validates configurations without it); the first call on a
// platform without its package throws the error above.
module.exports = new Proxy(
  { assetPaths, verifyGuestAssets, platformKey, supportedPlatforms: Object.keys(PLATFORMS) },
  {
    get(own, key) {
      if (key in own) return own[key];
      if (typeof key === "symbol" || key === "then" || key === "__esModule") return undefined;
      return loadNative()[key];
    },
    has(own, key) {
      return key in own || key in loadNative();
    },
  },
);
