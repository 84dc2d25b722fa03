#!/usr/bin/env bash
# Run the whole test suite on every interpreter pyproject.toml admits, as CI does:
#   - the machine's python3 (a GIL build, 3.11): ruff, mypy, then the suite (`pip install .`)
#   - a free-threaded CPython 3.13t (built once by build-freethreaded-python.sh, reused
#     afterwards; `pip install -e .`, so both install paths of the start-up hook are exercised)
#   - Python 3.10 with the lowest versions pyproject admits (gunicorn 27.0.0, uvicorn 0.53.0,
#     httptools 0.6.4, uvloop 0.21.0)
#   - Python 3.12 and 3.13 (GIL builds), newest versions
#   - a free-threaded 3.14 (python3.14t), if one is on the PATH
#
#   bash scripts/test-all.sh            # what .ci/run runs
#   bash scripts/test-all.sh -k hooks   # extra arguments go to pytest
#
# Each leg makes a fresh venv (under .venvs/, pip's cache keeps it quick) and runs pytest in
# three processes (pytest-xdist): the tests mostly wait on real servers. The extra Pythons come
# from pyenv (the machine image carries 3.10, 3.12 and 3.13) or from python3.X on the PATH.
# Exits non-zero on any failure, or if an interpreter is missing.
set -euo pipefail
shopt -s inherit_errexit  # a failing step inside $(...) must fail the run too

cd "$(dirname "$0")/.."
ROOT="$PWD"
VENVS="${GILWORKER_VENVS:-$ROOT/.venvs}"
GIL_PYTHON="${GIL_PYTHON:-python3}"
WORKERS="${GILWORKER_TEST_PROCESSES:-3}"
LOWEST=("gunicorn==27.0.0" "uvicorn==0.53.0" "httptools==0.6.4" "uvloop==0.21.0" "prometheus_client==0.20.0")  # pyproject's floors
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

log() { echo "[test-all] $*" >&2; }

ensure_python_tools() {
    # A bare Debian python3 may lack venv/pip: install them from Debian's packages.
    if ! "$GIL_PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
        log "installing python3-venv"
        apt-get update -qq >&2 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >&2
    fi
    # gcc compiles the test's GIL-enabling extension; openssl makes its TLS certificate
    if ! command -v gcc >/dev/null || ! command -v openssl >/dev/null; then
        apt-get update -qq >&2 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential openssl >&2
    fi
}

find_python() {  # find_python 3.10: pyenv's, else python3.10 on the PATH
    local version="$1" candidate
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version"; do
        [ -x "$candidate" ] && { echo "$candidate"; return; }
    done
    candidate="$(command -v "python$version" || true)"
    [ -n "$candidate" ] && { echo "$candidate"; return; }
    log "no Python $version found (pyenv or python$version on the PATH)"
    return 1
}

make_venv() {  # make_venv NAME PYTHON PIP-INSTALL-ARGS...
    local name="$1" python="$2"; shift 2
    local venv="$VENVS/$name"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    log "$name: pip install $*"
    "$venv/bin/python" -m pip install -q --prefer-binary "$@" >&2
    echo "$venv"
}

run_suite() {  # run_suite NAME VENV PYTEST-ARGS...
    local name="$1" venv="$2"; shift 2
    log "$name: $("$venv/bin/python" -VV)"
    local status=0
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "$WORKERS" "$@" || status=$?
    if [ "$status" -ne 0 ]; then
        log "$name: pytest failed (exit $status)"
    fi
    return "$status"
}

ensure_python_tools
FT_PYTHON="$(bash "$ROOT/scripts/build-freethreaded-python.sh")"
PY310="$(find_python 3.10)"
PY312="$(find_python 3.12)"
PY313="$(find_python 3.13)"

# The frameworks of tests/test_frameworks.py; Litestar's msgspec has no 3.13t wheel
FRAMEWORKS=("litestar" "quart")
GIL_VENV="$(make_venv gil "$GIL_PYTHON" ".[test,fast,check]" "${FRAMEWORKS[@]}")" || exit 1
FT_VENV="$(make_venv freethreaded "$FT_PYTHON" -e ".[test,fast]" "quart")" || exit 1

failed=0
log "ruff"
"$GIL_VENV/bin/ruff" check . || failed=1
"$GIL_VENV/bin/ruff" format --check . || failed=1
log "mypy"
"$GIL_VENV/bin/mypy" || failed=1
run_suite "GIL build" "$GIL_VENV" "$@" || failed=1
run_suite "free-threaded build" "$FT_VENV" "$@" || failed=1

LOW_VENV="$(make_venv py310-lowest "$PY310" ".[test,fast]" "${LOWEST[@]}" "${FRAMEWORKS[@]}")" || exit 1
run_suite "Python 3.10, lowest versions (${LOWEST[*]})" "$LOW_VENV" "$@" || failed=1
for leg in "3.12:$PY312" "3.13:$PY313"; do
    venv="$(make_venv "py${leg%%:*}" "${leg#*:}" ".[test,fast]" "${FRAMEWORKS[@]}")" || exit 1
    run_suite "Python ${leg%%:*}" "$venv" "$@" || failed=1
done
# A free-threaded 3.14 on the PATH (what users deploy) gets the suite too, Litestar included
if PY314T="$(command -v python3.14t)"; then
    venv="$(make_venv py314t "$PY314T" ".[test,fast]" "${FRAMEWORKS[@]}")" || exit 1
    run_suite "free-threaded Python 3.14" "$venv" "$@" || failed=1
fi
exit "$failed"
