#!/usr/bin/env bash
# Configures and builds anvil into build/ (Ninja, ccache, precompiled LibTorch header).
# Usage: scripts/build.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# ccache: rewrite absolute paths under the source root so fresh clones hit the cache;
# the sloppiness settings make precompiled headers cacheable.
export CCACHE_BASEDIR="$ROOT"
export CCACHE_NOHASHDIR=1
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-8G}
JOBS=${ANVIL_BUILD_JOBS:-$(nproc)}
# Always configure (a few seconds): optional per-area test files are picked up.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" > build.configure.log 2>&1 ||
  { cat build.configure.log; exit 1; }
cmake --build build -j "$JOBS"
