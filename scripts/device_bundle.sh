#!/usr/bin/env bash
# Packs what a GPU machine without Debian packages needs to build and test anvil's CUDA
# paths into .devdeps/ (git-ignored through .git/info/exclude; carry it to the machine):
#   usr/        headers, libraries and CMake configs of spdlog, fmt, nlohmann-json, GoogleTest
#               and gloo, for the compute-only build (copy into / there: cp -a .devdeps/usr/. /usr/)
#   bin/anvil   this machine's anvil (stripped) and bin/anvil-gpu, a wrapper that runs it with
#   lib/        its shared libraries (CAF, gRPC, protobuf, ...) and the GPU machine's LibTorch
#   model/      a tiny Qwen3 for the CUDA FSDP checks
# On the GPU machine (repository root):
#   cp -a .devdeps/usr/. /usr/ && ldconfig
#   cmake -S . -B /tmp/b -G Ninja -DANVIL_COMPUTE_ONLY=ON -DANVIL_PYTHON=$(which python3)
#   ninja -C /tmp/b trainer_test fsdp_tool && /tmp/b/trainer_test --gtest_filter='Cuda*'
#   export ANVIL_BIN=$PWD/.devdeps/bin/anvil-gpu ANVIL_TEST_TOOLS=/tmp/b/tests
#   (cd tests/integration && python3 -m pytest test_gpu_job.py test_fsdp.py -k "cuda or gpu")
# Needs a build in build/ (scripts/build.sh) and the Debian packages of scripts/setup.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/.devdeps"
BIN="$ROOT/build/launcher/anvil"
[[ -x "$BIN" ]] || { echo "device_bundle: build anvil first (scripts/build.sh)" >&2; exit 1; }
mkdir -p "$ROOT/.git/info"
grep -qx '/.devdeps/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.devdeps/' >> "$ROOT/.git/info/exclude"
rm -rf "$OUT"
mkdir -p "$OUT/usr/include" "$OUT/usr/lib/x86_64-linux-gnu/cmake" "$OUT/usr/share/cmake" \
  "$OUT/bin" "$OUT/lib"
LIBDIR=/usr/lib/x86_64-linux-gnu
cp -a /usr/include/{spdlog,fmt,nlohmann,gtest,gmock,gloo} "$OUT/usr/include/"
cp -a $LIBDIR/libfmt.so* $LIBDIR/libspdlog.so* $LIBDIR/libgtest* $LIBDIR/libgmock* \
  "$OUT/usr/lib/x86_64-linux-gnu/"
cp -a $LIBDIR/cmake/{fmt,spdlog,GTest} "$OUT/usr/lib/x86_64-linux-gnu/cmake/"
cp -a /usr/share/cmake/nlohmann_json "$OUT/usr/share/cmake/"
strip -o "$OUT/bin/anvil" "$BIN"
if [[ -x "$ROOT/build/bench/generate_bench" ]]; then
  strip -o "$OUT/bin/generate_bench" "$ROOT/build/bench/generate_bench"  # bench/generate_throughput.py --bench
fi
# Every shared library anvil loads except the C/C++ runtime and LibTorch's (the GPU machine
# has its own torch of the same version).
ldd "$BIN" | awk '$3 ~ /^\// {print $3}' |
  grep -v -E 'torch|c10|/\.venv/|/libc\.so|/libm\.so|libstdc\+\+|libgcc_s|libpthread|libdl\.|librt\.' |
  xargs -r -I{} cp -L {} "$OUT/lib/"
cat > "$OUT/bin/anvil-gpu" <<'WRAP'
#!/bin/sh
D=$(dirname "$(readlink -f "$0")")
export LD_LIBRARY_PATH="$D/../lib:$(python3 -c "import torch,os;print(os.path.dirname(torch.__file__))")/lib"
exec "$D/anvil" "$@"
WRAP
chmod +x "$OUT/bin/anvil-gpu"
"$BIN" init-model --arch qwen3 --preset tiny --out "$OUT/model" --seed 5 \
  --override '{"tie_word_embeddings": false}' > /dev/null 2>&1
du -sh "$OUT"
