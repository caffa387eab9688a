#!/usr/bin/env bash
# The full test suite: setup (idempotent), Rust tests, then every vitest test (unit and
# end-to-end with real VMs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: cargo test" >&2
cargo test --quiet --workspace --exclude msb-core-native
echo "test: vitest" >&2
npx vitest run "$@"
