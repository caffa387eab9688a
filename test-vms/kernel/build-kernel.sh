#!/usr/bin/env bash
# Builds our own guest kernel (the default guest kernel: test-vms/build.sh installs it;
# see README.md in this folder): Debian's linux-source-6.1, `make tinyconfig` plus
# guest.fragment, everything built in (no modules), uncompressed vmlinux with the
# PVH entry note, as QEMU boots it with -kernel.
#
# Usage: test-vms/kernel/build-kernel.sh          prints the vmlinux path on stdout
# Env:   MSB_KERNEL_WORK  work folder (default: test-vms/build)
#        JOBS             make -j (default: nproc)
#
# Output: $WORK/kernel-cache/<key>/{vmlinux,bzImage,config,build.log}, where <key> is
# the sha256 of guest.fragment + the linux-source package version + this script: the
# kernel is rebuilt only when one of them changes. Objects live in $WORK/kernel-obj
# (shared between keys), so a changed fragment recompiles only what it touches.
#
# Use it:  MSB_KERNEL=$(test-vms/kernel/build-kernel.sh) <anything using the SDK>
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${MSB_KERNEL_WORK:-$ROOT/test-vms/build}
FRAGMENT=$HERE/guest.fragment
SRCPKG=linux-source-6.1
JOBS=${JOBS:-$(nproc)}
export LC_ALL=C TZ=UTC KBUILD_BUILD_TIMESTAMP='2024-01-01 00:00:00 UTC' \
  KBUILD_BUILD_USER=msb KBUILD_BUILD_HOST=msb

log() { printf 'build-kernel.sh: %s\n' "$*" >&2; }
die() { printf 'build-kernel.sh: error: %s\n' "$*" >&2; exit 1; }
as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "root is needed to run: $*"; fi
}

# ---------------------------------------------------------------- host packages
ensure_packages() {
  local -A need=()
  local pair pkg probe
  for pair in "$SRCPKG:/usr/src/$SRCPKG.tar.xz" bc:bc flex:flex bison:bison \
              libelf-dev:/usr/include/libelf.h libssl-dev:/usr/include/openssl/ssl.h \
              make:make gcc:gcc xz-utils:xz binutils:readelf; do
    pkg=${pair%%:*} probe=${pair#*:}
    if [[ $probe == /* ]]; then [[ -e $probe ]] || need[$pkg]=1
    else command -v "$probe" >/dev/null || need[$pkg]=1; fi
  done
  ((${#need[@]})) || return 0
  log "installing: ${!need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y --no-install-recommends "${!need[@]}" >&2 ||
    { as_root apt-get update -qq && as_root apt-get install -y --no-install-recommends "${!need[@]}" >&2; }
}

ensure_packages
SRCVER=$(dpkg-query -W -f '${Version}' "$SRCPKG" 2>/dev/null) || die "$SRCPKG is not installed"
KEY=$( { cat "$FRAGMENT"; echo "$SRCPKG $SRCVER"; cat "$0"; } | sha256sum | cut -c1-16)
OUT=$WORK/kernel-cache/$KEY
if [[ -f $OUT/vmlinux ]]; then
  log "up to date: $OUT/vmlinux ($SRCPKG $SRCVER, key $KEY)"
  echo "$OUT/vmlinux"
  exit 0
fi

mkdir -p "$WORK"
exec 9>"$WORK/.kernel.lock"
flock 9 # one kernel build at a time

T0=$(date +%s)
# --- 1. source tree, extracted once per package version
SRC=$WORK/kernel-src/$SRCVER
if [[ ! -f $SRC/.extracted ]]; then
  log "extracting /usr/src/$SRCPKG.tar.xz ($SRCPKG $SRCVER)"
  rm -rf "$SRC"
  mkdir -p "$SRC"
  tar -xJf "/usr/src/$SRCPKG.tar.xz" -C "$SRC" --strip-components=1
  touch "$SRC/.extracted"
  log "  extracted in $(($(date +%s) - T0)) s"
fi

# --- 2. config: tinyconfig + fragment (out of tree, in $WORK/kernel-obj)
OBJ=$WORK/kernel-obj
mkdir -p "$OBJ"
MK=(make -C "$SRC" O="$OBJ" ARCH=x86_64 -j"$JOBS")
log "configuring: tinyconfig + $(basename "$FRAGMENT")"
rm -f "$OBJ/.config"
"${MK[@]}" -s tinyconfig >"$OBJ/config.log" 2>&1 || { cat "$OBJ/config.log" >&2; die "make tinyconfig failed"; }
(cd "$OBJ" && "$SRC/scripts/kconfig/merge_config.sh" -m -O "$OBJ" "$OBJ/.config" "$FRAGMENT") >>"$OBJ/config.log" 2>&1 ||
  { cat "$OBJ/config.log" >&2; die "merge_config.sh failed"; }
"${MK[@]}" -s olddefconfig >>"$OBJ/config.log" 2>&1 || { cat "$OBJ/config.log" >&2; die "make olddefconfig failed"; }
# Every option the fragment sets must have survived (a missing dependency drops it
# silently otherwise).
missing=()
while IFS= read -r line; do
  case $line in
    CONFIG_*=*) grep -qxF "$line" "$OBJ/.config" || missing+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$OBJ/.config" || echo unset))") ;;
    "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}
      ! grep -q "^$opt=" "$OBJ/.config" || missing+=("$line (got: $(grep "^$opt=" "$OBJ/.config"))") ;;
  esac
done <"$FRAGMENT"
((${#missing[@]} == 0)) || die "options of $(basename "$FRAGMENT") not in the final .config:
  $(printf '%s\n  ' "${missing[@]}")"
! grep -q '^CONFIG_MODULES=y' "$OBJ/.config" || die "CONFIG_MODULES=y: everything must be built in"
log "  config: $(grep -c '=y' "$OBJ/.config") options built in, no modules"

# --- 3. build
log "building vmlinux + bzImage with -j$JOBS (about 10-15 min on 2 cores; log: $OBJ/build.log)"
T1=$(date +%s)
set +e
"${MK[@]}" vmlinux bzImage 2>&1 | tee "$OBJ/build.log" |
  awk -v t0="$T1" '/^  [A-Z]/ {n++; if (n % 250 == 0) {printf "build-kernel.sh:   %5d steps, %4d s: %s\n", n, systime() - t0, $0; fflush()}}
                    / error|Error [0-9]/ {print "build-kernel.sh:   " $0; fflush()}' >&2
rc=${PIPESTATUS[0]}
set -e
((rc == 0)) || { tail -n 40 "$OBJ/build.log" >&2; die "make failed (exit $rc), see $OBJ/build.log"; }
# QEMU boots an ELF kernel only through its PVH entry: the Xen ELF note
# XEN_ELFNOTE_PHYS32_ENTRY (type 0x12).
readelf -n "$OBJ/vmlinux" | grep -q 'Xen .*(0x00000012)' || die "vmlinux has no PVH entry note"

# --- 4. into the cache
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
cp "$OBJ/vmlinux" "$OUT.tmp/vmlinux"
cp "$OBJ/arch/x86/boot/bzImage" "$OUT.tmp/bzImage"
cp "$OBJ/.config" "$OUT.tmp/config"
cp "$OBJ/build.log" "$OUT.tmp/build.log"
echo "$SRCPKG $SRCVER" >"$OUT.tmp/source-version"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
log "built in $(($(date +%s) - T1)) s (total $(($(date +%s) - T0)) s): vmlinux $(stat -c %s "$OUT/vmlinux") bytes, bzImage $(stat -c %s "$OUT/bzImage") bytes"
log "use it: MSB_KERNEL=$OUT/vmlinux"
echo "$OUT/vmlinux"
