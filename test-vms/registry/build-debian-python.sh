#!/usr/bin/env bash
# The slower fixture tier: a realistic image, Debian minbase + python3 + curl, one gzip layer,
# Cmd ["python3"], as the OCI layout test-vms/build/oci/debian-python (tag latest).
#
#   debootstrap --variant=minbase SUITE test-vms/build/debian-rootfs <mirror>
#   chroot ... apt-get install python3 curl, then caches, docs, man pages, locales, logs and
#   /dev/* removed (real images have an empty /dev)
#
# The mirror is the first one the system's apt sources list for SUITE (default
# bookworm; MSB_DEBIAN_SUITE overrides). Needs root (debootstrap, chroot): it re-runs
# itself through sudo when not root. Takes a few minutes; not part of build-images.sh.
# Idempotent: a no-op when the layout is newer than this script.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "$HERE/.." && pwd)/build
OCI=$BUILD/oci
WORK=$BUILD/oci-work
R=$BUILD/debian-rootfs
OUT=$OCI/debian-python
SUITE=${MSB_DEBIAN_SUITE:-bookworm}
CREATED=2024-01-01T00:00:00Z
export LC_ALL=C TZ=UTC

log() { printf 'build-debian-python.sh: %s\n' "$*" >&2; }
die() { printf 'build-debian-python.sh: error: %s\n' "$*" >&2; exit 1; }

# build-images.sh first (quick when up to date): it makes the oci dir and facts.json.
bash "$HERE/build-images.sh"
if [[ -f $WORK/debian-python.stamp && $WORK/debian-python.stamp -nt $0 && -f $OUT/index.json ]]; then exit 0; fi

if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null || die "root is needed (debootstrap, chroot)"
  exec sudo MSB_DEBIAN_SUITE="$SUITE" bash "$0" "$@"
fi
for t in debootstrap umoci tar python3; do
  command -v $t >/dev/null || die "$t is missing: run test-vms/registry/install-deps.sh"
done

# The mirror: URIs of a deb822 stanza (sources.list.d/*.sources) or the URI of a
# one-line `deb` entry (sources.list, *.list) whose suite is SUITE.
MIRROR=$(python3 - "$SUITE" <<'EOF'
import glob, re, sys
suite = sys.argv[1]
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        f = {}
        for line in stanza.splitlines():
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m:
                f[m.group(1).lower()] = m.group(2).split()
        if ("deb" in f.get("types", []) and suite in f.get("suites", [])
                and f.get("enabled", ["yes"])[0] != "no" and f.get("uris")):
            print(f["uris"][0]); sys.exit(0)
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        w = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(w) >= 3 and w[0] == "deb" and w[2] == suite:
            print(w[1]); sys.exit(0)
sys.exit(1)
EOF
) || die "no apt source for $SUITE in /etc/apt/sources.list{,.d/*}"

# Anything mounted under the rootfs (debootstrap mounts proc/sys while it works) is
# unmounted before the tree is removed, also when this script fails half-way.
unmount_all() {
  local m
  for m in $(awk -v r="$R" 'index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" || true
  done
}
trap unmount_all EXIT

START=$SECONDS
unmount_all
rm -rf --one-file-system "$R"
log "debootstrap --variant=minbase $SUITE (mirror from the apt sources)"
debootstrap --variant=minbase "$SUITE" "$R" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
  die "debootstrap failed (see $WORK/debootstrap.log)"
log "apt-get install python3 curl"
chroot "$R" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get install -y -q --no-install-recommends python3 curl \
  >>"$WORK/debootstrap.log" 2>&1 || die "apt-get install python3 curl failed (see $WORK/debootstrap.log)"
chroot "$R" python3 -c 'import json, sys; print(sys.version)' >/dev/null || die "python3 does not run"
chroot "$R" curl --version >/dev/null || die "curl does not run"
chroot "$R" apt-get clean
unmount_all

# Trim what container images leave out.
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/debconf/*-old \
  "$R"/var/lib/dpkg/*-old "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/* \
  "$R"/tmp/* "$R"/var/tmp/* "$R"/dev/*
find "$R/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
find "$R/var/log" -type f -delete
# debootstrap copied the host's resolv.conf and hostname; an image carries neither. The
# apt source (this machine's mirror) is dropped too: the tests never run apt in it.
: >"$R/etc/resolv.conf"
: >"$R/etc/apt/sources.list"
rm -f "$R/etc/hostname"

# One layer: entries without a "./" prefix, sorted, numeric owners (hard links, device-
# free /dev, setuid bits and modes as they are).
T=$WORK/debian-python
rm -rf "$T" && mkdir -p "$T"
(cd "$R" && find . -mindepth 1 -printf '%P\n' | sort) >"$T/files"
tar -C "$R" --no-recursion --numeric-owner --format=pax --pax-option=delete=atime,delete=ctime \
  --verbatim-files-from -T "$T/files" -cf "$T/layer.tar"

L=$T/layout
umoci init --layout "$L"
umoci new --image "$L:latest"
umoci raw add-layer --image "$L:latest" --history.created "$CREATED" \
  --history.created_by "debootstrap --variant=minbase $SUITE + python3 curl" "$T/layer.tar"
umoci config --image "$L:latest" --no-history --created "$CREATED" --os linux --architecture amd64 \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.env LANG=C.UTF-8 --config.cmd python3
umoci gc --layout "$L"
chmod -R a+rX "$L"
rm -f "$T/layer.tar"
rm -rf "$OUT" && mv "$L" "$OUT"
python3 "$HERE/fixtures.py" facts "$OCI/facts.json" "$OCI" "$WORK/busybox-amd64/bin/busybox" "$WORK/busybox-arm64/bin/busybox"
touch "$WORK/debian-python.stamp"
log "done in $((SECONDS - START)) s: $OUT ($(du -sh "$OUT" | cut -f1), $(wc -l <"$T/files") entries)"
