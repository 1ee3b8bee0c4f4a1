#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up, build, then every test (unit, parity
# against Python oracles, fuzz, end-to-end) through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
cd build
# Two cores: run tests two at a time; each test limits its own threads.
ctest --output-on-failure -j "${ANVIL_TEST_JOBS:-2}" --timeout 900 "$@"
