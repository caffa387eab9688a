#!/usr/bin/env bash
# Installs the host tools the registry fixtures need (see README.md), only those that
# are missing. Makes no apt call when everything is present.
#   docker-registry  the registry itself (Distribution 2.8)
#   skopeo, umoci    push images / build OCI layouts
#   apache2-utils    htpasswd (bcrypt) for the TLS + Basic setup
#   openssl          self-signed certificates (TLS, token signing)
#   jq               JSON edits in build-images.sh
#   busybox-static   the amd64 busybox the images are built from
#   debootstrap      the slower Debian + python3 image (build-debian-python.sh)
#   zstd, python3    zstd-compressed layers; hand-made tars (python3's tarfile)
set -euo pipefail

PACKAGES=(docker-registry skopeo umoci apache2-utils openssl jq busybox-static debootstrap zstd python3)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0

SUDO=""
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps.sh: root or sudo is needed to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "install-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale (or absent in a fresh container): update once and retry.
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
  { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
