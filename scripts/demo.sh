#!/usr/bin/env bash
# Quick start: a venv with gunicorn-gilworker, then `gunicorn -k gilworker` serving a demo app.
# Uses the free-threaded CPython (built once by build-freethreaded-python.sh, about 3 minutes,
# reused afterwards) and falls back to python3 if it cannot be built. GILWORKER_PYTHON=python3
# skips the build. The start-up log says which mode was chosen and why; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${GILWORKER_PYTHON:-}"
if [ -z "$PYTHON" ]; then
    PYTHON="$(bash scripts/build-freethreaded-python.sh)" || {
        echo "[demo] no free-threaded Python could be built: using python3" >&2
        PYTHON=python3
    }
fi
VENV="${GILWORKER_VENVS:-$PWD/.venvs}/demo"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --prefer-binary ".[fast]"
PORT="${PORT:-8000}"
echo "[demo] $("$VENV/bin/python" -VV): try  curl http://127.0.0.1:$PORT/" >&2
exec "$VENV/bin/gunicorn" -k gilworker -w "${WORKERS:-4}" -b "127.0.0.1:$PORT" \
    --chdir examples hello:app
