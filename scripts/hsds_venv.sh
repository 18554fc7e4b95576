#!/usr/bin/env bash
# Create (idempotently) a separate virtualenv holding real HSDS + h5pyd for
# interop tests.  HSDS pins aiohttp/numcodecs, so it must not share the
# project's main .venv.
#
# usage: scripts/hsds_venv.sh [VENV_DIR]     (default: <repo>/.venv-hsds)
# env:   HSDS_PIP_SPECS  override the pip requirement list
#                        (default "hsds==1.0.2 h5pyd==1.0.0")
#        PYTHON          interpreter used to create the venv (default python3.11,
#                        falling back to python3 if it is >= 3.11)
# Prints the absolute venv path on the last line of stdout; everything else
# goes to stderr.  Exit status: 0 ok, 3 = package registry unreachable,
# other = real failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${1:-$repo/.venv-hsds}"
specs="${HSDS_PIP_SPECS:-hsds==1.0.2 h5pyd==1.0.0}"
stamp_content="specs: $specs"

mkdir -p "$(dirname "$venv")"
venv="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"
stamp="$venv/.hsds-venv-stamp"

log() { echo "hsds_venv: $*" >&2; }

# Fast path: stamp matches and the packages import.
if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$stamp_content" ]] \
   && [[ -x "$venv/bin/python" ]] && [[ -x "$venv/bin/hsds" ]] && [[ -x "$venv/bin/hsds-node" ]] \
   && "$venv/bin/python" -c 'import hsds, h5pyd' >/dev/null 2>&1; then
    echo "$venv"
    exit 0
fi

# Serialise concurrent creators (e.g. parallel test workers).
mkdir -p "$venv"
exec 9>"$venv/.hsds-venv.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
    # Someone else may have finished while we waited.
    if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$stamp_content" ]] \
       && "$venv/bin/python" -c 'import hsds, h5pyd' >/dev/null 2>&1; then
        echo "$venv"
        exit 0
    fi
fi

pick_python() {
    if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
    for c in python3.11 python3.12 python3.13 python3; do
        if command -v "$c" >/dev/null 2>&1 \
           && "$c" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            echo "$c"; return
        fi
    done
    log "no Python >= 3.11 found (hsds 1.0.2 requires it)"
    exit 1
}

py="$(pick_python)"
if [[ ! -x "$venv/bin/python" ]]; then
    log "creating venv $venv with $py"
    "$py" -m venv "$venv" >&2
fi
rm -f "$stamp"

log "pip install $specs"
pip_log="$venv/pip-install.log"
set +e
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --disable-pip-version-check $specs >"$pip_log" 2>&1
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
    tail -n 40 "$pip_log" >&2
    # Was it the network?  pip does not always say so (e.g. with retries=0 a
    # refused connection ends as "No matching distribution"), so probe the
    # configured index for the hsds project page directly.
    index="${PIP_INDEX_URL:-$("$venv/bin/python" -m pip config get global.index-url 2>/dev/null || true)}"
    index="${index:-https://pypi.org/simple}"
    if ! "$venv/bin/python" - "$index" >&2 <<'PY'
import os, ssl, sys, urllib.request
url = sys.argv[1].rstrip("/") + "/hsds/"
cafile = os.environ.get("PIP_CERT") or None
try:
    ctx = ssl.create_default_context(cafile=cafile) if url.startswith("https") else None
    with urllib.request.urlopen(url, timeout=20, context=ctx) as r:
        r.read(1)
except Exception as e:  # noqa: BLE001
    print(f"hsds_venv: registry probe {url} failed: {type(e).__name__}: {e}")
    sys.exit(1)
PY
    then
        log "package registry unreachable (see $pip_log)"
        exit 3
    fi
    log "pip install failed (rc=$rc, see $pip_log)"
    exit 1
fi

"$venv/bin/python" -c 'import hsds, h5pyd' >&2
for exe in hsds hsds-node; do
    [[ -x "$venv/bin/$exe" ]] || { log "missing $venv/bin/$exe after install"; exit 1; }
done
echo "$stamp_content" >"$stamp"
log "ready: $("$venv/bin/python" -m pip list 2>/dev/null | grep -i -E '^(hsds|h5pyd|h5json|aiohttp|numcodecs|numpy) ' | tr -s ' ' | paste -sd ',' -)"
echo "$venv"
