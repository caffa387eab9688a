#!/usr/bin/env bash
# One-step, idempotent setup: host packages, Rust and TypeScript builds, the guest kernel,
# initramfs and default image. Quick when everything is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

# --- host packages --------------------------------------------------------------------
# The second line builds the guest kernel (test-vms/kernel/build-kernel.sh checks it too).
APT_PACKAGES=(qemu-system-x86 qemu-utils e2fsprogs cpio kmod xz-utils zstd gcc libc6-dev binutils tmux openssl
  linux-source-6.1 bc flex bison make libelf-dev libssl-dev)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi
command -v cargo >/dev/null || { echo "setup: Rust is required: install it with rustup (https://rustup.rs)" >&2; exit 1; }

# --- npm dependencies -------------------------------------------------------------------
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  npm ci --no-audit --no-fund >/dev/null
fi

# --- Rust: guest agent (static), runtime, addon ---------------------------------------
say "building msb-agent (static)"
# Static and not position-independent (no self-relocation at start), optimised for size
# (profile "agent"): under emulation every instruction the guest runs first costs a
# translation, so less code and fewer pages touched at boot is a faster cold start.
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --quiet --profile agent -p msb-agent --target x86_64-unknown-linux-gnu
say "building msb-runtime"
cargo build --quiet --release -p msb-runtime
# The platform package (@microsandbox/core-native-linux-x64-gnu) holds the addon and a
# stripped msb-runtime; @microsandbox/core-native keeps the loader and index.d.ts.
NATIVE_PKG=packages/core-native-linux-x64-gnu
mkdir -p "$NATIVE_PKG/bin"
strip -o "$NATIVE_PKG/bin/msb-runtime.tmp" target/release/msb-runtime
mv "$NATIVE_PKG/bin/msb-runtime.tmp" "$NATIVE_PKG/bin/msb-runtime"
say "building the Node addon"
NAPI_ARGS=(--platform --release --no-js --output-dir "../${NATIVE_PKG#packages/}" --dts ../core-native/index.d.ts)
(cd packages/core-native && npx napi build "${NAPI_ARGS[@]}" >/dev/null 2>&1) \
  || (cd packages/core-native && npx napi build "${NAPI_ARGS[@]}")
strip --strip-unneeded "$NATIVE_PKG/core-native.linux-x64-gnu.node"

# --- guest kernel, initramfs, default image ---------------------------------------------
say "guest assets (test-vms/build.sh: own kernel, initramfs, default image)"
MSB_AGENT_BIN="$ROOT/target/x86_64-unknown-linux-gnu/agent/msb-agent" bash test-vms/build.sh
# Every published package carries the license (the guest package its own, see its LICENSE).
for d in packages/*/; do
  [[ $d == packages/guest-* ]] || cp -p LICENSE "$d/LICENSE"
done

# --- registry fixtures for the image tests (docker-registry, skopeo, umoci) ------------
say "registry test fixtures (test-vms/registry)"
bash test-vms/registry/install-deps.sh
bash test-vms/registry/build-images.sh
# The slower tier's Debian+python image (debootstrap; ~20 s once, a no-op afterwards).
bash test-vms/registry/build-debian-python.sh
# Verdaccio for the install test (test-vms/install: a no-op once installed).
bash test-vms/install/install-deps.sh

# --- TypeScript ---------------------------------------------------------------------------
say "building TypeScript packages"
NX_DAEMON=false NX_NO_CLOUD=true npx nx run-many -t build --outputStyle=static >/dev/null \
  || NX_DAEMON=false NX_NO_CLOUD=true npx nx run-many -t build --outputStyle=static
say "ready"
