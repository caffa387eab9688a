#!/usr/bin/env bash
# Quick start: set everything up, then run `echo hello` in a sandbox on the default image.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node packages/cli/dist/bin.js run -- echo hello
