#!/usr/bin/env bash
# Builds the OCI image layouts the registry tests push (see README.md), offline, from
# Debian's busybox-static (amd64 and arm64):
#
#   test-vms/build/oci/busybox   busybox:latest (3 gzip layers), busybox:zstd, busybox:plain
#   test-vms/build/oci/multi     multi:latest = OCI index of linux/amd64 + linux/arm64/v8
#   test-vms/build/oci/evil      evil:dotdot, dotdot-nested, abs, symlink, symlink-abs,
#                                hardlink, corrupt
#   test-vms/build/oci/facts.json  digests and checksums the tests can compare with
#
# Layer tars are written by fixtures.py (fixed mtimes, numeric owners); umoci assembles
# the images (gzip layers, config); fixtures.py then derives what umoci cannot make
# (zstd and uncompressed layers, the multi-arch index). Every output is reproducible.
# Work files: test-vms/build/oci-work/ (downloaded .debs, private arm64 apt lists, tars).
#
# Idempotent: a no-op when test-vms/build/oci/.stamp is newer than this script and
# fixtures.py. Works as any user (no root needed once install-deps.sh has run).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "$HERE/.." && pwd)/build
OCI=$BUILD/oci
WORK=$BUILD/oci-work
PY=$HERE/fixtures.py
CREATED=2024-01-01T00:00:00Z
export LC_ALL=C TZ=UTC

if [[ -f $OCI/.stamp && $OCI/.stamp -nt $0 && $OCI/.stamp -nt $PY ]]; then exit 0; fi

log() { printf 'build-images.sh: %s\n' "$*" >&2; }
die() { printf 'build-images.sh: error: %s\n' "$*" >&2; exit 1; }
for t in umoci zstd python3 dpkg-deb apt-get; do
  command -v $t >/dev/null || die "$t is missing: run test-vms/registry/install-deps.sh"
done
START=$SECONDS
mkdir -p "$WORK/debs"

# ---------------------------------------------------------------- busybox binaries
# amd64 from the system's apt setup. arm64 through private package lists: APT is told
# its architecture is arm64 and to keep lists/cache in WORK and to read no dpkg status,
# so the system's apt state is never touched.
ARM_APT=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64
         -o Dir::State::Lists="$WORK/apt-arm64/lists" -o Dir::Cache="$WORK/apt-arm64/cache"
         -o Dir::State::status=/dev/null -o Debug::NoLocking=1)
fetch_busybox() { # ARCH -> prints the path of the .deb
  local arch=$1 deb
  deb=$(compgen -G "$WORK/debs/busybox-static_*_$arch.deb" | head -n1 || true)
  if [[ -z $deb ]]; then
    if [[ $arch == arm64 ]]; then
      mkdir -p "$WORK/apt-arm64/lists/partial" "$WORK/apt-arm64/cache/archives/partial"
      log "apt-get update (private arm64 lists)"
      apt-get -q "${ARM_APT[@]}" update >"$WORK/apt-arm64.log" 2>&1 ||
        die "arm64 apt-get update failed (see $WORK/apt-arm64.log)"
      (cd "$WORK/debs" && apt-get -q "${ARM_APT[@]}" download busybox-static) >>"$WORK/apt-arm64.log" 2>&1 ||
        die "arm64 busybox-static download failed (see $WORK/apt-arm64.log)"
    else
      (cd "$WORK/debs" && apt-get -q download busybox-static:amd64) >"$WORK/apt-amd64.log" 2>&1 ||
        die "busybox-static download failed (see $WORK/apt-amd64.log)"
    fi
    deb=$(compgen -G "$WORK/debs/busybox-static_*_$arch.deb" | head -n1) || die "no $arch .deb after download"
  fi
  echo "$deb"
}
for arch in amd64 arm64; do
  deb=$(fetch_busybox $arch)
  rm -rf "$WORK/busybox-$arch"
  dpkg-deb -x "$deb" "$WORK/busybox-$arch"
  [[ -x $WORK/busybox-$arch/bin/busybox ]] || die "no bin/busybox in $deb"
done
# The applet list comes from the amd64 binary (the arm64 one cannot run here); Debian
# builds busybox-static with the same configuration on every architecture.
"$WORK/busybox-amd64/bin/busybox" --list-full >"$WORK/applets.txt"

# ---------------------------------------------------------------- layer tars
T=$WORK/tars
rm -rf "$T" && mkdir -p "$T"
python3 "$PY" layer base "$T/base-amd64.tar" "$WORK/busybox-amd64/bin/busybox" "$WORK/applets.txt"
python3 "$PY" layer base "$T/base-arm64.tar" "$WORK/busybox-arm64/bin/busybox" "$WORK/applets.txt"
python3 "$PY" layer data "$T/data.tar"
python3 "$PY" layer whiteouts "$T/whiteouts.tar"
for k in dotdot dotdot-nested abs symlink symlink-abs-1 symlink-abs-2 hardlink corrupt; do
  python3 "$PY" layer "evil-$k" "$T/evil-$k.tar"
done

# ---------------------------------------------------------------- images
NEW=$WORK/oci-new
rm -rf "$NEW" && mkdir -p "$NEW"

# image LAYOUT TAG ARCH TAR... -- CONFIG_FLAGS...: a umoci image, one gzip layer per tar.
image() {
  local layout=$NEW/$1 tag=$2 arch=$3 tar
  shift 3
  [[ -d $layout ]] || umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  while (($#)) && [[ $1 != -- ]]; do
    tar=$1; shift
    umoci raw add-layer --image "$layout:$tag" --history.created "$CREATED" \
      --history.created_by "fixture layer $(basename "$tar" .tar)" "$tar"
  done
  shift # --
  umoci config --image "$layout:$tag" --no-history --created "$CREATED" \
    --os linux --architecture "$arch" "$@"
}
BUSYBOX_CONFIG=(--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
                --config.env MSB_IMAGE_ENV=from-image --config.workingdir /opt/data
                --config.user 1000:1000 --config.cmd sh)

log "assembling images"
image busybox latest amd64 "$T/base-amd64.tar" "$T/data.tar" "$T/whiteouts.tar" -- "${BUSYBOX_CONFIG[@]}"
python3 "$PY" recompress "$NEW/busybox" latest zstd zstd
python3 "$PY" recompress "$NEW/busybox" latest plain plain

# multi: the amd64 member is byte-for-byte busybox:latest (same tars, same config, and
# umoci's gzip is deterministic); arm64 differs only in layer 1 and the architecture.
image multi amd64 amd64 "$T/base-amd64.tar" "$T/data.tar" "$T/whiteouts.tar" -- "${BUSYBOX_CONFIG[@]}"
image multi arm64 arm64 "$T/base-arm64.tar" "$T/data.tar" "$T/whiteouts.tar" -- "${BUSYBOX_CONFIG[@]}"
python3 "$PY" index "$NEW/multi" latest amd64 arm64/v8

for k in dotdot dotdot-nested abs symlink hardlink; do
  image evil "$k" amd64 "$T/evil-$k.tar" -- --config.cmd sh
done
image evil symlink-abs amd64 "$T/evil-symlink-abs-1.tar" "$T/evil-symlink-abs-2.tar" -- --config.cmd sh
# evil:corrupt has an uncompressed layer (see fixtures.py); the bytes are corrupted in
# the registry's storage by corruptBlob() in index.ts, the layout itself is sound.
image evil corrupt-gz amd64 "$T/evil-corrupt.tar" -- --config.cmd sh
python3 "$PY" recompress "$NEW/evil" corrupt-gz corrupt plain
umoci rm --image "$NEW/evil:corrupt-gz"

for l in "$NEW"/*/; do umoci gc --layout "$l"; done # drop the blobs umoci superseded
chmod -R a+rX "$NEW" # umoci writes blobs 0600; tests may run as another user

# Sanity: the multi amd64 member must be busybox:latest itself.
bb=$(jq -r '.manifests[0].digest' "$NEW/busybox/index.json")
idx=$(jq -r '.manifests[0].digest' "$NEW/multi/index.json")
[[ $(jq -r '.manifests[] | select(.platform.architecture=="amd64") | .digest' "$NEW/multi/blobs/sha256/${idx#sha256:}") == "$bb" ]] ||
  die "multi's amd64 manifest differs from busybox:latest (umoci output not deterministic?)"

# Swap in the new layouts; keep a built debian-python (build-debian-python.sh) as it is.
if [[ -d $OCI/debian-python ]]; then mv "$OCI/debian-python" "$NEW/"; fi
rm -rf "$OCI" && mv "$NEW" "$OCI"
python3 "$PY" facts "$OCI/facts.json" "$OCI" "$WORK/busybox-amd64/bin/busybox" "$WORK/busybox-arm64/bin/busybox"
touch "$OCI/.stamp"
log "done in $((SECONDS - START)) s: $OCI"
