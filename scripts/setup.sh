#!/usr/bin/env bash
# Installs everything anvil needs on a fresh Debian 12 machine. Idempotent: a second run
# checks and returns in seconds.
#   - Debian packages: compilers, CMake, ccache, CAF 0.17.6, gRPC, protobuf, spdlog, fmt,
#     GoogleTest, nlohmann-json, CLI11, yaml-cpp, cpp-httplib, PCRE2, utf8proc, clang (libFuzzer),
#     chromium (headless, to check the metrics dashboard in the tests)
#   - .venv with torch==2.11.0 (LibTorch comes from this wheel) and the test oracles
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(build-essential cmake ninja-build ccache pkg-config git python3 python3-venv
  clang libclang-rt-14-dev
  libcaf-dev libgloo-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libspdlog-dev libfmt-dev libgtest-dev libgmock-dev nlohmann-json3-dev libcli11-dev
  libyaml-cpp-dev libcpp-httplib-dev libpcre2-dev libutf8proc-dev binutils
  openssl iproute2 chromium)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python: the pip wheel of torch 2.11.0 provides LibTorch and the pyarrow wheel Arrow/Parquet
# C++ (cmake/AnvilArrow.cmake); the rest are test oracles and benchmark peers only.
PY_PKGS=(torch==2.11.0 transformers==5.23.0 tokenizers safetensors jinja2 pytest numpy pyarrow
  tensorboard)
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
need = {"torch": "2.11.0", "transformers": "5.23.0"}
for name, version in need.items():
    if m.version(name) != version:
        sys.exit(1)
for name in ("tokenizers", "safetensors", "jinja2", "pytest", "numpy", "pyarrow",
             "tensorboard"):
    m.version(name)
PY
then
  echo "setup: installing Python packages into .venv: ${PY_PKGS[*]}"
  .venv/bin/pip install -q --disable-pip-version-check "${PY_PKGS[@]}"
fi
echo "setup: ok"
