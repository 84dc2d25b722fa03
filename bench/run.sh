#!/usr/bin/env bash
# The benchmark in one command: bash bench/run.sh  (about 30 minutes on 2 cores)
# Some sections only: bash bench/run.sh --only pairs,memory  (bench/run.py --help lists them)
# Needs wrk and h2load (Debian: apt-get install wrk nghttp2-client). Reuses the venvs of
# scripts/test-all.sh when they exist and adds the servers compared against (uvicorn-worker,
# granian), FastAPI and matplotlib.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "bench: wrk is needed: apt-get install wrk" >&2; exit 1; }
command -v h2load >/dev/null || { echo "bench: h2load is needed: apt-get install nghttp2-client" >&2; exit 1; }
VENVS="${GILWORKER_VENVS:-$PWD/.venvs}"
if [ ! -x "$VENVS/gil/bin/python" ] || [ ! -x "$VENVS/freethreaded/bin/python" ]; then
    echo "bench: making the venvs first (scripts/test-all.sh does it; this runs only its set-up)" >&2
    FT="$(bash scripts/build-freethreaded-python.sh)"
    python3 -m venv "$VENVS/gil" && "$VENVS/gil/bin/pip" install -q --prefer-binary ".[fast]"
    "$FT" -m venv "$VENVS/freethreaded" && "$VENVS/freethreaded/bin/pip" install -q --prefer-binary ".[fast]"
fi
# The default install on 3.13t, as `pip install gunicorn-gilworker` gives it (h11 + asyncio: no
# httptools or uvloop, see pyproject.toml), editable so that it runs this checkout's code.
if [ ! -x "$VENVS/ft-default/bin/python" ]; then
    "$(bash scripts/build-freethreaded-python.sh)" -m venv "$VENVS/ft-default"
fi
"$VENVS/ft-default/bin/pip" install -q --prefer-binary -e . starlette
# pydantic 2.12+ needs a pydantic-core with no 3.13t wheel (its source build needs the crates registry)
"$VENVS/freethreaded/bin/pip" install -q --prefer-binary uvicorn-worker starlette fastapi "pydantic<2.12" "granian==2.7.9"
"$VENVS/gil/bin/pip" install -q --prefer-binary uvicorn-worker starlette fastapi granian matplotlib
exec "$VENVS/gil/bin/python" bench/run.py --ft "$VENVS/freethreaded" --gil "$VENVS/gil" \
    --ft-default "$VENVS/ft-default" "$@"
