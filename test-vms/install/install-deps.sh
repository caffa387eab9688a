#!/usr/bin/env bash
# Installs what the install test (install.e2e.test.ts) needs: Verdaccio 6.8.0, the npm
# registry it publishes to, into test-vms/install/verdaccio/node_modules with `npm ci`
# (from verdaccio/package-lock.json, through the npm registry npm is configured with).
# A no-op taking milliseconds when the installed tree matches the lockfile (a stamp in
# node_modules/ holds the sha256 of package.json + package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/verdaccio"

stamp=node_modules/.msb-install-stamp
want=$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" && -f node_modules/verdaccio/package.json ]]; then
  exit 0
fi
command -v npm >/dev/null || { echo "install-deps.sh: npm is needed (Node.js >= 20)" >&2; exit 1; }
echo "install-deps.sh: installing Verdaccio (npm ci in test-vms/install/verdaccio)" >&2
npm ci --no-audit --no-fund --loglevel=error >/dev/null
node -e 'const v = require("./node_modules/verdaccio/package.json").version; if (v !== "6.8.0") { console.error(`install-deps.sh: expected verdaccio 6.8.0, got ${v}`); process.exit(1); }'
echo "$want" >"$stamp"
