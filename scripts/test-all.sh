#!/usr/bin/env bash
# Run the whole test suite on both interpreters: the machine's python3 (a GIL build) and a
# free-threaded CPython 3.13t (built once by build-freethreaded-python.sh, reused afterwards).
#
#   bash scripts/test-all.sh            # what .ci/run runs
#   bash scripts/test-all.sh -k hooks   # extra arguments go to pytest
#
# Each run makes fresh venvs (under .venvs/, pip's cache keeps it quick) and installs the project
# as a user would: `pip install .` on the GIL build, `pip install -e .` on the free-threaded one,
# so both install paths of the start-up hook are exercised. Exits non-zero on any failure.
set -euo pipefail
shopt -s inherit_errexit  # a failing step inside $(...) must fail the run too

cd "$(dirname "$0")/.."
ROOT="$PWD"
VENVS="${GILWORKER_VENVS:-$ROOT/.venvs}"
GIL_PYTHON="${GIL_PYTHON:-python3}"
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
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" || status=$?
    if [ "$status" -ne 0 ]; then
        log "$name: pytest failed (exit $status)"
    fi
    return "$status"
}

ensure_python_tools
FT_PYTHON="$(bash "$ROOT/scripts/build-freethreaded-python.sh")"

GIL_VENV="$(make_venv gil "$GIL_PYTHON" ".[test,fast,check]")" || exit 1
FT_VENV="$(make_venv freethreaded "$FT_PYTHON" -e ".[test,fast]")" || exit 1

failed=0
log "ruff"
"$GIL_VENV/bin/ruff" check . || failed=1
"$GIL_VENV/bin/ruff" format --check . || failed=1
log "mypy"
"$GIL_VENV/bin/mypy" || failed=1
run_suite "GIL build" "$GIL_VENV" "$@" || failed=1
run_suite "free-threaded build" "$FT_VENV" "$@" || failed=1
exit "$failed"
