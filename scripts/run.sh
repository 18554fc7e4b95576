#!/usr/bin/env bash
# One entry point for users and CI: sets up .venv (idempotently), then runs a job.
#   bash scripts/run.sh demo [ARGS...]   write a sample domain and read it through every installed backend
#   bash scripts/run.sh test [PYTEST ARGS...]   run the test suite (starts moto server and real HSDS itself)
#   bash scripts/run.sh bench [ARGS...]  run the benchmark script
#   bash scripts/run.sh bench-front [ARGS...]  h5pyd through HSDS with fronts per backend vs plain HSDS
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV="$ROOT/.venv"
job=${1:-demo}; shift || true

extras="test"
[ "$job" = "bench" ] && extras="test,bench"
[ "$job" = "bench-front" ] && extras="test,bench"
# every distribution in this repository: the core plus backends/* that exist
pkgs=("-e" "$ROOT[$extras]")
for d in "$ROOT"/backends/*/; do
  if [ -f "$d/pyproject.toml" ]; then pkgs+=("-e" "$d"); fi
done
stamp="$VENV/.installed-$("$PY" -c 'import hashlib,sys; print(hashlib.sha1(b"".join(open(p,"rb").read() for p in sys.argv[1:])).hexdigest()[:12])' "$ROOT"/pyproject.toml "$ROOT"/backends/*/pyproject.toml 2>/dev/null || echo none)-$extras"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "${pkgs[@]}"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

case "$job" in
  demo)  exec "$VENV/bin/hsds-backends" demo "$@" ;;
  test)  exec "$VENV/bin/python" -m pytest "$@" ;;
  bench) exec "$VENV/bin/python" benchmarks/bench.py "$@" ;;
  bench-front) exec "$VENV/bin/python" benchmarks/front_bench.py "$@" ;;
  *) echo "usage: bash scripts/run.sh demo|test|bench|bench-front [ARGS...]" >&2; exit 2 ;;
esac
