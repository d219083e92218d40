#!/usr/bin/env bash
# Configures and builds kiln. usage: tools/build.sh [BUILD_DIR] [extra cmake args...]
# Default: build/ in Release. Incremental (Ninja, ccache when present).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
build_dir="${1:-$KILN_ROOT/build}"
shift || true
launcher=()
# ccache with paths relative to the checkout, so a fresh clone elsewhere still hits.
export CCACHE_BASEDIR="$KILN_ROOT" CCACHE_NOHASHDIR=1
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
if [ ! -f "$build_dir/build.ninja" ]; then
  log "configuring $build_dir"
  cmake -S "$KILN_ROOT" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "$@"
fi
log "building $build_dir"
cmake --build "$build_dir" -j "$KILN_JOBS"
