#!/usr/bin/env bash
# Builds the guest assets for microsandbox (see README.md), the contents of the
# @microsandbox/guest-linux-x64 package:
#   vmlinux, kernel-version  our own kernel (test-vms/kernel: Debian's linux-source,
#                            everything built in), uncompressed (PVH entry); or, with
#                            MSB_GUEST_KERNEL=debian, Debian's cloud kernel
#   initramfs.cpio           msb-agent as /init (+ the virtio/overlay modules with
#                            Debian's kernel; our own needs none)
#   rootfs.ext4              default image: busybox root filesystem
#   floor.cpio               tiny /init that prints a line and powers off: msb-runtime's
#                            KVM probe (vm.rs pick_accel) and the bench's floor
#   manifest.json            size and sha256 of each file (checked before a boot)
#   NOTICE, licenses/        the exact source packages and their license texts
#
# Usage: test-vms/build.sh [OUT_DIR]   (default: packages/guest-linux-x64)
# Env:   MSB_AGENT_BIN    agent binary (default: target/x86_64-unknown-linux-gnu/agent/msb-agent)
#        MSB_GUEST_KERNEL own (default: test-vms/kernel) | debian (Debian's cloud kernel, the earlier guest)
#        MSB_KERNEL_PKG   with debian: pin a versioned kernel package (default: what linux-image-cloud-amd64 depends on)
#        SOURCE_DATE_EPOCH  timestamp for every file in the outputs
#
# Idempotent: each step records a key (hash of this script + its inputs) under
# build/stamps and is skipped when the key matches and its outputs exist.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT=${1:-$ROOT/packages/guest-linux-x64}
KERNEL_KIND=${MSB_GUEST_KERNEL:-own}
[[ $KERNEL_KIND == own || $KERNEL_KIND == debian ]] || { echo "build.sh: MSB_GUEST_KERNEL must be own or debian" >&2; exit 1; }
WORK=$HERE/build
AGENT=${MSB_AGENT_BIN:-$ROOT/target/x86_64-unknown-linux-gnu/agent/msb-agent}
EPOCH=${SOURCE_DATE_EPOCH:-1704067200} # 2024-01-01, fixed for reproducible outputs
export LC_ALL=C TZ=UTC
PATH=$PATH:/usr/sbin:/sbin # depmod, modprobe, mke2fs, debugfs for non-root users

# Modules the guest needs (each is skipped when the kernel has it built in).
# virtio_net (and its failover deps) joins this list with the networking work; every
# module costs boot time under emulation.
WANT_MODULES=(virtio_mmio virtio_blk virtio_console ext4 overlay)
# Packed too, but loaded by the agent only when a sandbox shares host directories
# (virtiofs volumes or a directory image): listed in /etc/msb/modules.virtiofs.
VIRTIOFS_MODULES=(fuse virtiofs)
# Loaded only for sandboxes with a network (listed in /etc/msb/modules.net).
NET_MODULES=(virtio_net)
# A fixed UUID/hash seed keeps rootfs.ext4 byte-identical between builds.
FS_UUID=6d73622d-6465-4661-b56c-742d726f6f74

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "root is needed to run: $*"; fi
}

# ---------------------------------------------------------------- host tools
# Installs the Debian packages whose probe (a command or an absolute path) is
# missing. Does nothing (no apt call at all) when everything is present.
ensure_packages() {
  local -A need=()
  local pair pkg probe
  for pair in dpkg:dpkg-deb apt:apt-get cpio:cpio e2fsprogs:mke2fs e2fsprogs:debugfs \
              kmod:depmod kmod:modprobe xz-utils:xz zstd:zstd lz4:lz4 gzip:gzip \
              binutils:readelf gcc:gcc libc6-dev:/usr/lib/x86_64-linux-gnu/libc.a \
              util-linux:flock coreutils:sha256sum; do
    pkg=${pair%%:*} probe=${pair#*:}
    if [[ $probe == /* ]]; then [[ -e $probe ]] || need[$pkg]=1
    else command -v "$probe" >/dev/null || need[$pkg]=1; fi
  done
  ((${#need[@]})) || return 0
  log "installing: ${!need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y --no-install-recommends "${!need[@]}" ||
    { as_root apt-get update -qq && as_root apt-get install -y --no-install-recommends "${!need[@]}"; }
}

# ---------------------------------------------------------------- apt helpers
APT_UPDATED=
apt_update_once() {
  [[ -z $APT_UPDATED ]] || return 0
  APT_UPDATED=1
  if [[ $(id -u) == 0 ]] || command -v sudo >/dev/null; then
    log "apt-get update"
    as_root apt-get update -qq || log "warning: apt-get update failed"
  fi
}

# Sets KPKG/KPKG_VER (the versioned kernel package behind linux-image-cloud-amd64,
# e.g. linux-image-6.1.0-57-cloud-amd64) and BB_VER (busybox-static). Each
# apt-cache call costs ~0.5 s here (no binary cache in Docker-style images),
# so the answer is cached and reused while the package lists are unchanged.
resolve_packages() {
  local cache=$WORK/stamps/apt-resolved lists info
  lists=$( { stat -c '%n %s %Y' /var/lib/apt/lists/*Packages* /etc/apt/preferences* 2>/dev/null || true; } |
    { cat; echo "${MSB_KERNEL_PKG:-}"; } | sha256sum | cut -c1-16)
  if [[ -f $cache ]] && read -r key KPKG KPKG_VER BB_VER <"$cache" && [[ $key == "$lists" ]]; then return; fi
  KPKG=${MSB_KERNEL_PKG:-} KPKG_VER= BB_VER=
  local try
  for try in 1 2; do
    info=$(apt-cache show --no-all-versions linux-image-cloud-amd64 busybox-static ${KPKG:+"$KPKG"} 2>/dev/null) || true
    # The meta package pins its kernel: "Depends: linux-image-<kver> (= <version>)".
    [[ -n $KPKG ]] || KPKG=$(awk '/^Package:/ {p=$2} p=="linux-image-cloud-amd64" && /^Depends:/ {
        if (match($0, /linux-image-[0-9][^ ,]*/)) { print substr($0, RSTART, RLENGTH); exit } }' <<<"$info")
    [[ -z $KPKG ]] || KPKG_VER=$(awk -v want="$KPKG" '/^Package:/ {p=$2} p==want && /^Version:/ {print $2; exit}' <<<"$info")
    [[ -z $KPKG_VER ]] && KPKG_VER=$(awk -v want="$KPKG" '/^Package:/ {p=$2} p=="linux-image-cloud-amd64" && /^Depends:/ {
        if (match($0, want " \\(= [^)]*\\)")) { v=substr($0, RSTART, RLENGTH); sub(/.*= /, "", v); sub(/\)/, "", v); print v; exit } }' <<<"$info")
    BB_VER=$(awk '/^Package:/ {p=$2} p=="busybox-static" && /^Version:/ {print $2; exit}' <<<"$info")
    [[ -z $KPKG_VER || -z $BB_VER ]] || break
    ((try == 2)) || apt_update_once
  done
  if [[ -z $KPKG && $KERNEL_KIND == debian ]]; then # offline and no lists: fall back to a kernel downloaded earlier
    KPKG=$(cd "$WORK/debs" 2>/dev/null && ls linux-image-[0-9]*.deb 2>/dev/null | sort -V | tail -n1 | cut -d_ -f1) || true
    [[ -n $KPKG ]] || die "cannot resolve the package behind linux-image-cloud-amd64 (no apt lists, no cached .deb)"
  fi
  if [[ -n $KPKG_VER && -n $BB_VER ]]; then
    mkdir -p "$WORK/stamps"
    echo "$lists $KPKG $KPKG_VER $BB_VER" >"$cache"
  fi
}

# fetch_deb PKG VERSION -> prints the path of PKG's .deb in build/debs,
# downloading it only when that version is not there yet. An empty VERSION
# (apt could not tell) uses whatever is cached.
fetch_deb() {
  local pkg=$1 ver=$2 deb
  mkdir -p "$WORK/debs"
  for deb in "$WORK/debs/${pkg}_"*.deb; do
    [[ -f $deb ]] || continue
    if [[ -z $ver ]]; then log "warning: apt does not know $pkg, using cached $(basename "$deb")"; echo "$deb"; return; fi
    # Debian writes the epoch's ":" as "%3a" in file names.
    [[ $(basename "$deb") == "${pkg}_${ver/:/%3a}_"* ]] && { echo "$deb"; return; }
  done
  [[ -n $ver ]] || die "apt knows no package $pkg"
  rm -f "$WORK/debs/${pkg}_"*.deb
  log "downloading $pkg $ver"
  local sandbox=()
  # As root, apt drops to user _apt, which cannot write into our folder.
  [[ $(id -u) != 0 ]] || sandbox=(-o APT::Sandbox::User=root)
  (cd "$WORK/debs" && apt-get download -q "${sandbox[@]}" "$pkg=$ver" >&2) || die "apt-get download $pkg=$ver failed"
  for deb in "$WORK/debs/${pkg}_"*.deb; do [[ -f $deb ]] && { echo "$deb"; return; }; done
  die "download of $pkg produced no .deb"
}

# ---------------------------------------------------------------- stamps
hash_files() { sha256sum "$@" | awk '{print $1}' | sha256sum | cut -c1-16; }
# is_fresh NAME KEY OUTPUT...: the step ran with this key and its outputs exist.
is_fresh() {
  local name=$1 key=$2 f; shift 2
  [[ -f $WORK/stamps/$name && $(<"$WORK/stamps/$name") == "$key" ]] || return 1
  for f; do [[ -e $f ]] || return 1; done
}
mark() { mkdir -p "$WORK/stamps"; echo "$2" >"$WORK/stamps/$1"; }

# ---------------------------------------------------------------- cpio
# make_cpio DIR OUT (needs EPOCH): see cpio.sh
source "$HERE/cpio.sh"

# ---------------------------------------------------------------- kernel
# scripts/extract-vmlinux logic: find each compression magic in the bzImage,
# decompress from there, keep the first result that is an ELF file.
extract_vmlinux() {
  local img=$1 out=$2 tmp=$2.tmp
  try_decompress() { # MAGIC MARKER CMD...
    local pos
    command -v "$3" >/dev/null || return 1
    # tr maps the magic's 1st byte to "\n" and the rest to MARKER, so
    # "^MARKER" lines start one byte after the magic: tail -c+N is 1-based.
    for pos in $(tr "$1\n$2" "\n$2=" <"$img" | grep -abo "^$2" | cut -d: -f1); do
      tail -c+"$pos" "$img" | "${@:3}" >"$tmp" 2>/dev/null || true
      if readelf -h "$tmp" >/dev/null 2>&1; then mv "$tmp" "$out"; return 0; fi
    done
    return 1
  }
  try_decompress '\037\213\010' xy gzip -dc ||
    try_decompress '\3757zXZ\000' abcde xz -dc ||
    try_decompress 'BZh' xy bzip2 -dc ||
    try_decompress '\135\0\0\0' xxx xz --format=lzma -dc ||
    try_decompress '\211\114\132' xy lzop -dc ||
    try_decompress '\002!L\030' xxx lz4 -dc ||
    try_decompress '(\265/\375' xxx zstd -dc ||
    { rm -f "$tmp"; die "no compressed vmlinux found in $img"; }
}

# Kernel options this guest cannot do without (y = must be built in).
check_kernel_config() {
  local cfg=$1 opt
  for opt in PVH=y BLK_DEV_INITRD=y DEVTMPFS=y SERIAL_8250_CONSOLE=y VIRTIO_MMIO=ym \
             VIRTIO_BLK=ym VIRTIO_CONSOLE=ym EXT4_FS=ym OVERLAY_FS=ym; do
    local name=${opt%=*} allowed=${opt#*=} val
    val=$(sed -n "s/^CONFIG_$name=//p" "$cfg")
    [[ -n $val && $allowed == *"$val"* ]] || die "kernel config: CONFIG_$name=${val:-unset}, need ${allowed//ym/y or m}"
  done
}

# ================================================================= main
ensure_packages
mkdir -p "$WORK" "$OUT"
OUT=$(cd "$OUT" && pwd)
exec 9>"$WORK/.lock"
flock 9 # one build at a time per work folder
SELF=$(hash_files "$0" "$HERE/cpio.sh") # editing the scripts rebuilds everything
OID=out-$(echo "$OUT" | sha256sum | cut -c1-8) # per-output-dir stamps

# --- 1. kernel
resolve_packages # busybox-static's version (and the Debian kernel package's)
if [[ $KERNEL_KIND == own ]]; then
  # test-vms/kernel/build-kernel.sh: cached by the hash of its config, so this is a
  # no-op unless guest.fragment, the linux-source version or that script changed.
  VMLINUX=$(bash "$HERE/kernel/build-kernel.sh")
  KDIR=$(dirname "$VMLINUX")
  KVER="$(sed -n 's/^# Linux\/[^ ]* \([^ ]*\) Kernel Configuration$/\1/p' "$KDIR/config") (own: $(cat "$KDIR/source-version"), config $(basename "$KDIR"))"
  KKEY="$SELF own $(basename "$KDIR")"
  if ! is_fresh "$OID-vmlinux" "$KKEY" "$OUT/vmlinux" "$OUT/kernel-version"; then
    log "installing vmlinux from $KDIR"
    # Symbols are not needed to boot: strip them (the PVH note is an allocated section).
    objcopy --strip-all "$VMLINUX" "$OUT/.vmlinux"
    readelf -n "$OUT/.vmlinux" | grep -q 'Xen .*(0x00000012)' || die "stripped vmlinux lost its PVH entry note"
    mv "$OUT/.vmlinux" "$OUT/vmlinux"
    echo "$KVER" >"$OUT/kernel-version"
    mark "$OID-vmlinux" "$KKEY"
  fi
else
  # Debian's cloud kernel package -> build/kernel (extracted, depmod'ed; never /boot)
  KVER=${KPKG#linux-image-}
  KDEB=$(fetch_deb "$KPKG" "$KPKG_VER")
  KTREE=$WORK/kernel
  KKEY="$SELF $(basename "$KDEB")"
  if ! is_fresh kernel-tree "$KKEY" "$KTREE/boot/vmlinuz-$KVER" "$KTREE/lib/modules/$KVER/modules.dep"; then
    log "extracting $(basename "$KDEB")"
    rm -rf "$KTREE"
    dpkg-deb -x "$KDEB" "$KTREE"
    # depmod/modprobe -b/-d expect <tree>/lib/modules; newer packages use /usr/lib.
    if [[ ! -d $KTREE/lib/modules && -d $KTREE/usr/lib/modules ]]; then ln -s usr/lib "$KTREE/lib"; fi
    depmod -b "$KTREE" "$KVER"
    mark kernel-tree "$KKEY"
  fi
  check_kernel_config "$KTREE/boot/config-$KVER"

  if ! is_fresh "$OID-vmlinux" "$KKEY" "$OUT/vmlinux" "$OUT/kernel-version"; then
    log "extracting vmlinux from vmlinuz-$KVER"
    extract_vmlinux "$KTREE/boot/vmlinuz-$KVER" "$OUT/.vmlinux"
    # QEMU boots an ELF kernel only through its PVH entry: the Xen ELF note
    # XEN_ELFNOTE_PHYS32_ENTRY (type 0x12).
    readelf -n "$OUT/.vmlinux" | grep -q 'Xen .*(0x00000012)' || die "vmlinux has no PVH entry note"
    mv "$OUT/.vmlinux" "$OUT/vmlinux"
    echo "$KVER" >"$OUT/kernel-version"
    mark "$OID-vmlinux" "$KKEY"
  fi
fi

# --- 2. default image: busybox root filesystem as ext4
BDEB=$(fetch_deb busybox-static "$BB_VER")
RKEY="$SELF $(basename "$BDEB")"
if ! is_fresh "$OID-rootfs" "$RKEY" "$OUT/rootfs.ext4"; then
  log "building rootfs.ext4 from $(basename "$BDEB")"
  rm -rf "$WORK/busybox-pkg" "$WORK/rootfs-root"
  dpkg-deb -x "$BDEB" "$WORK/busybox-pkg"
  R=$WORK/rootfs-root
  mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,mnt,run,home,var/tmp}
  chmod 0700 "$R/root"
  chmod 1777 "$R/tmp" "$R/var/tmp"
  install -m0755 "$WORK/busybox-pkg/bin/busybox" "$R/bin/busybox"
  # One absolute symlink per applet (bin/sh among them).
  for p in $("$R/bin/busybox" --list-full); do
    [[ $p != bin/busybox ]] || continue
    mkdir -p "$R/$(dirname "$p")"
    ln -sfn /bin/busybox "$R/$p"
  done
  [[ -L $R/bin/sh ]] || ln -sfn /bin/busybox "$R/bin/sh"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$R/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$R/etc/group"
  echo msb >"$R/etc/hostname"
  printf '%s\n' '127.0.0.1 localhost' '::1 localhost ip6-localhost ip6-loopback' >"$R/etc/hosts"
  chmod 0644 "$R"/etc/{passwd,group,hostname,hosts}
  find "$R" -exec touch -h -d "@$EPOCH" {} +
  rm -f "$WORK/rootfs.ext4"
  truncate -s 64M "$WORK/rootfs.ext4" # pre-created: mke2fs stays quiet
  E2FSPROGS_FAKE_TIME=$EPOCH mke2fs -q -t ext4 -d "$R" -L msb-default -U "$FS_UUID" \
    -E "hash_seed=$FS_UUID,root_owner=0:0" "$WORK/rootfs.ext4" 64M
  # mke2fs -d copies the builder's uid/gid and each file's ctime (which touch
  # cannot set): make everything root-owned with a fixed ctime, so that any
  # build, root or not, gives the same bytes.
  (cd "$R" && find . -printf '/%P\n' | sort |
    awk -v t="@$EPOCH" '{print "sif " $0 " uid 0"; print "sif " $0 " gid 0"; print "sif " $0 " ctime " t}') \
    >"$WORK/rootfs-fixup.debugfs"
  E2FSPROGS_FAKE_TIME=$EPOCH debugfs -w -f "$WORK/rootfs-fixup.debugfs" "$WORK/rootfs.ext4" >/dev/null 2>"$WORK/rootfs-fixup.log" ||
    die "debugfs failed on rootfs.ext4 (see $WORK/rootfs-fixup.log)"
  ! grep -v '^debugfs [0-9]' "$WORK/rootfs-fixup.log" | grep -q . ||
    die "debugfs reported errors (see $WORK/rootfs-fixup.log)"
  mv "$WORK/rootfs.ext4" "$OUT/rootfs.ext4"
  mark "$OID-rootfs" "$RKEY"
fi

# --- 3. bench floor initramfs
FKEY="$SELF $(hash_files "$HERE/floor-init.c")"
if ! is_fresh "$OID-floor" "$FKEY" "$OUT/floor.cpio"; then
  log "building floor.cpio"
  rm -rf "$WORK/floor-root"
  mkdir -p "$WORK/floor-root/dev"
  gcc -static -Os -s -Wall -o "$WORK/floor-root/init" "$HERE/floor-init.c"
  make_cpio "$WORK/floor-root" "$OUT/floor.cpio"
  mark "$OID-floor" "$FKEY"
fi

# --- 4. initramfs: agent as /init, modules in load order (last, so that
# everything else is built even before the agent exists)
[[ -f $AGENT ]] || die "agent binary not found: $AGENT
  build it first (crates/agent), or point MSB_AGENT_BIN at it"
# A dynamically linked /init fails in the guest with a bare "error -2".
readelf -l "$AGENT" 2>/dev/null | grep -q 'Requesting program interpreter' &&
  die "agent binary must be statically linked: $AGENT"
IKEY="$KKEY $(hash_files "$AGENT")"
if ! is_fresh "$OID-initramfs" "$IKEY" "$OUT/initramfs.cpio"; then
  log "building initramfs.cpio (kernel $KVER)"
  IROOT=$WORK/initramfs-root
  rm -rf "$IROOT"
  mkdir -p "$IROOT"/{dev,proc,sys,mnt,newroot,tmp,lib/modules,etc/msb}
  chmod 1777 "$IROOT/tmp"
  install -m0755 "$AGENT" "$IROOT/init"
  # Load order: each module's dependencies first, duplicates dropped;
  # "builtin" lines (e.g. ext4 in the cloud kernel) need nothing.
  declare -A seen=()
  # add_modules LIST_FILE MODULE...: copy each module with its dependencies (in load
  # order, each once across both lists) and list them in LIST_FILE.
  add_modules() {
    local list=$1; shift
    : >"$list"
    for m in "$@"; do
      deps=$(modprobe -d "$KTREE" -S "$KVER" --show-depends "$m") || die "module $m not found for $KVER"
      while read -r kind path _; do
        case $kind in
          builtin) log "  $m: built in" ;;
          insmod)
            [[ -z ${seen[$path]:-} ]] || continue
            seen[$path]=1
            base=$(basename "$path"); base=${base%%.ko*}
            dst=$IROOT/lib/modules/$base.ko
            [[ ! -e $dst ]] || die "two modules named $base.ko"
            case $path in
              *.ko) cp "$path" "$dst" ;;
              *.ko.xz) xz -dc "$path" >"$dst" ;;
              *.ko.zst) zstd -qdc "$path" >"$dst" ;;
              *.ko.gz) gzip -dc "$path" >"$dst" ;;
              *) die "unknown module format: $path" ;;
            esac
            chmod 0644 "$dst"
            echo "/lib/modules/$base.ko" >>"$list"
            ;;
        esac
      done <<<"$deps"
    done
  }
  if [[ $KERNEL_KIND == own ]]; then
    # Everything is built in: no module lists, so the agent loads none.
    log "  no modules (own kernel, everything built in)"
  else
    add_modules "$IROOT/etc/msb/modules" "${WANT_MODULES[@]}"
    add_modules "$IROOT/etc/msb/modules.virtiofs" "${VIRTIOFS_MODULES[@]}"
    add_modules "$IROOT/etc/msb/modules.net" "${NET_MODULES[@]}"
    log "  modules: $(xargs -n1 basename <"$IROOT/etc/msb/modules" | tr '\n' ' ')"
    log "  on demand (virtiofs): $(xargs -n1 basename <"$IROOT/etc/msb/modules.virtiofs" | tr '\n' ' ')"
    log "  on demand (network): $(xargs -n1 basename <"$IROOT/etc/msb/modules.net" | tr '\n' ' ')"
  fi
  make_cpio "$IROOT" "$OUT/initramfs.cpio"
  mark "$OID-initramfs" "$IKEY"
fi

# --- 5. NOTICE, license texts, manifest.json (what the package ships, and the sizes
# and sha256s the loader checks before a boot: packages/core-native/main.cjs)
AGENT_VER=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/crates/agent/Cargo.toml" | head -n1)
GLIBC_VER=$(dpkg-query -W -f '${Version}' libc6-dev 2>/dev/null || echo unknown)
if [[ $KERNEL_KIND == own ]]; then
  KSRC="Debian source package linux, binary package $(cat "$KDIR/source-version") (/usr/src/linux-source-6.1.tar.xz), configured with test-vms/kernel/guest.fragment on top of tinyconfig, built without modules; config hash $(basename "$KDIR")"
  KCOPY=/usr/share/doc/linux-source-6.1/copyright
else
  KSRC="Debian binary package $KPKG $KPKG_VER (vmlinux extracted from its vmlinuz; modules in initramfs.cpio)"
  KCOPY=$KTREE/usr/share/doc/$KPKG/copyright
fi
mkdir -p "$OUT/licenses"
cp /usr/share/common-licenses/GPL-2 "$OUT/licenses/GPL-2.0.txt"
cp /usr/share/common-licenses/LGPL-2.1 "$OUT/licenses/LGPL-2.1.txt"
cp /usr/share/common-licenses/Apache-2.0 "$OUT/licenses/Apache-2.0.txt"
[[ ! -f $KCOPY ]] || cp "$KCOPY" "$OUT/licenses/linux.copyright"
dpkg-deb --fsys-tarfile "$BDEB" | tar -xO ./usr/share/doc/busybox-static/copyright >"$OUT/licenses/busybox.copyright" 2>/dev/null ||
  rm -f "$OUT/licenses/busybox.copyright"
[[ ! -f /usr/share/doc/libc6/copyright ]] || cp /usr/share/doc/libc6/copyright "$OUT/licenses/glibc.copyright"
cat >"$OUT/NOTICE" <<NOTICE
@microsandbox/guest-linux-x64: the files a microsandbox guest boots. Each file, what it
is built from, and its license (texts in licenses/):

vmlinux          Linux $KVER
                 $KSRC.
                 License: GPL-2.0-only (licenses/GPL-2.0.txt, licenses/linux.copyright).
                 Source: Debian's linux source package of that version.
rootfs.ext4      The default image: BusyBox from Debian binary package busybox-static $BB_VER.
                 License: GPL-2.0-only (licenses/GPL-2.0.txt, licenses/busybox.copyright).
                 Source: Debian's busybox source package of that version.
initramfs.cpio   msb-agent $AGENT_VER (crates/agent of microsandbox for TypeScript) as /init,
                 statically linked with the GNU C Library from Debian's libc6-dev $GLIBC_VER
                 and Rust crates under MIT or Apache-2.0 (their Cargo.lock entries).
$( [[ $KERNEL_KIND == own ]] && echo "                 No kernel modules (everything is built into vmlinux)." || echo "                 Kernel modules of the kernel above (GPL-2.0-only)." )
                 License: Apache-2.0 (licenses/Apache-2.0.txt); the C library LGPL-2.1-or-later
                 (licenses/LGPL-2.1.txt, licenses/glibc.copyright).
floor.cpio       A static /init of test-vms/floor-init.c (Apache-2.0) with the same C library:
                 msb-runtime boots it once per host boot to check that KVM works.
NOTICE
( cd "$OUT"
  first=1
  printf '{\n  "kernel": "%s",\n  "files": {' "$KVER"
  for f in vmlinux initramfs.cpio rootfs.ext4 floor.cpio; do
    ((first)) || printf ','
    first=0
    printf '\n    "%s": { "size": %s, "sha256": "%s" }' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)"
  done
  printf '\n  }\n}\n'
) >"$OUT/.manifest.json"
mv "$OUT/.manifest.json" "$OUT/manifest.json"

log "up to date: $OUT (kernel $KVER)"
