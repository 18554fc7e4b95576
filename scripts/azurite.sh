#!/usr/bin/env bash
# Install (idempotently) Azurite, the Azure Storage emulator, from the npm registry, for tests.
#
# usage: scripts/azurite.sh [DIR]     (default: <repo>/.azurite)
# env:   AZURITE_SPEC  the npm package spec (default azurite@3.37.0)
# Prints the absolute path of azurite-blob on the last line of stdout; everything else goes to
# stderr. Exit status: 0 ok, 3 = npm or its registry unavailable, other = real failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${1:-$repo/.azurite}"
spec="${AZURITE_SPEC:-azurite@3.37.0}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
bin="$dir/node_modules/.bin/azurite-blob"
stamp="$dir/.azurite-stamp"

if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$spec" ]]; then
    echo "$bin"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    echo "azurite: node and npm are needed to install $spec" >&2
    exit 3
fi
exec 9>"$dir/.lock"
command -v flock >/dev/null 2>&1 && flock 9
if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$spec" ]]; then
    echo "$bin"
    exit 0
fi
echo "azurite: npm install $spec into $dir" >&2
set +e
npm install --prefix "$dir" --no-audit --no-fund --silent "$spec" >"$dir/npm-install.log" 2>&1
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
    tail -n 20 "$dir/npm-install.log" >&2
    if ! npm view "$spec" version >/dev/null 2>&1; then
        echo "azurite: the npm registry is unreachable" >&2
        exit 3
    fi
    exit 1
fi
[[ -x "$bin" ]] || { echo "azurite: $bin missing after install" >&2; exit 1; }
echo "$spec" >"$stamp"
echo "$bin"
