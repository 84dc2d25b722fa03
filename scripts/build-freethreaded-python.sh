#!/usr/bin/env bash
# Build a free-threaded (PEP 703, "nogil") CPython 3.13 from Debian's source package
# and print the path of its interpreter. Idempotent: a finished build is reused.
#
#   PY_FT=$(../shared/tools/build-freethreaded-python.sh)   # -> .../bin/python3.13t
#
# Needs root for apt-get (build dependencies, source download). About 3 minutes on 2 cores.
# Debian ships no free-threaded 3.14 source yet; 3.13t is the free-threaded build we can test on.
set -euo pipefail

PREFIX="${FT_PREFIX:-$HOME/.cache/freethreaded-python/3.13t}"
PY="$PREFIX/bin/python3.13t"
SRC_VERSION="${FT_DEBIAN_VERSION:-}"   # empty: whatever trixie currently serves

if [ -x "$PY" ] && "$PY" -c 'import sys, ssl; sys.exit(sys._is_gil_enabled())' 2>/dev/null; then
    echo "$PY"; exit 0
fi

log() { echo "[build-freethreaded-python] $*" >&2; }
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT

log "installing build dependencies"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2 || true
apt-get install -y -qq build-essential pkg-config xz-utils libssl-dev zlib1g-dev libffi-dev \
    libbz2-dev liblzma-dev libsqlite3-dev libreadline-dev uuid-dev >&2

log "downloading python3.13 source from Debian trixie"
APT="$WORK/apt"; mkdir -p "$APT/lists/partial" "$APT/archives/partial"
# Reuse the Debian mirror this machine's apt is already configured with, for the trixie suite.
MIRROR="$(grep -hoE '^(URIs:|deb) +[^ ]+/debian( |$)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
          | head -1 | awk '{print $2}' || true)"   # a missing sources file must not end the script (pipefail)
[ -n "$MIRROR" ] || { log "no Debian mirror found in the apt sources"; exit 1; }
echo "deb-src $MIRROR trixie main" > "$APT/sources.list"
APT_OPTS=(-o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$APT/lists" -o Dir::Cache::Archives="$APT/archives"
          -o APT::Sandbox::User=root)
apt-get "${APT_OPTS[@]}" update -qq >&2
cd "$WORK"
if [ -n "$SRC_VERSION" ]; then
    apt-get "${APT_OPTS[@]}" source --download-only "python3.13=$SRC_VERSION" >&2
else
    apt-get "${APT_OPTS[@]}" source --download-only python3.13 >&2
fi
TARBALL="$(ls "$WORK"/python3.13_*.orig.tar.xz | head -1)"
tar -xf "$TARBALL" -C "$WORK"
SRCDIR="$(find "$WORK" -maxdepth 1 -type d -name 'Python-3.13*' | head -1)"

log "configuring and building $(basename "$SRCDIR") with --disable-gil into $PREFIX"
cd "$SRCDIR"
./configure --disable-gil --prefix="$PREFIX" --with-ensurepip=install >"$WORK/configure.log" 2>&1 \
    || { tail -40 "$WORK/configure.log" >&2; exit 1; }
make -j"$(nproc)" >"$WORK/make.log" 2>&1 || { tail -60 "$WORK/make.log" >&2; exit 1; }
make install >"$WORK/install.log" 2>&1 || { tail -40 "$WORK/install.log" >&2; exit 1; }

"$PY" -c 'import sys, ssl, ctypes, sqlite3; assert not sys._is_gil_enabled(), "GIL is on"' >&2
log "done: $("$PY" -VV)"
echo "$PY"
