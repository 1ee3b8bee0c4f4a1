#!/usr/bin/env bash
# The main job on its built-in default: set-up, build, make a tiny Qwen3 model and generate
# from it. (The RL demo replaces this once the training loop lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
MODEL=${ANVIL_DEMO_MODEL:-runs/demo/tiny-qwen3}
./build/launcher/anvil init-model --arch qwen3 --preset tiny --out "$MODEL" --seed 0 --force
./build/launcher/anvil generate --model "$MODEL" --prompt "Hello, anvil" --max-new-tokens 16 --temperature 0
