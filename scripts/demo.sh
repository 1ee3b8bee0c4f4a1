#!/usr/bin/env bash
# The built-in demo (no downloads): set-up and build, then RL post-training of a tiny
# Qwen3-architecture model on multi-digit arithmetic, printing held-out accuracy after each
# phase:
#   1. anvil make-task arithmetic   train / held-out problems ("67+3=" -> "70") from a seed
#   2. anvil init-model             a random tiny Qwen3 (its tokenizer splits digits)
#   3. anvil sft                    a short supervised warm start, stopped part-trained
#   4. anvil train                  GRPO (examples/arithmetic_grpo.yaml), reward exact_match:
#                                   ANVIL_DEMO_MODE=sync runs every role on threads of one
#                                   process; async the same with one-step-off generation
#                                   (--async); processes runs `anvil train --workers 1` as the
#                                   head plus one local anvil worker whose roles are processes
#   5. anvil eval                   after each phase: greedy accuracy, and sampled (T=1)
#                                   accuracy / pass@k over several samples per problem
# Environment (defaults in brackets): ANVIL_DEMO_SEED [0], ANVIL_DEMO_DIR [runs/demo],
# ANVIL_DEMO_TRAIN [800], ANVIL_DEMO_EVAL [200], ANVIL_DEMO_SFT_STEPS [400],
# ANVIL_DEMO_ROLLOUTS [100], ANVIL_DEMO_EVAL_SAMPLES [4], ANVIL_DEMO_THREADS [1],
# ANVIL_DEMO_MODE [sync] (sync | async | processes),
# ANVIL_BIN (skip set-up and build, use this anvil binary).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ -z "${ANVIL_BIN:-}" ]; then
  scripts/setup.sh
  scripts/build.sh
  ANVIL_BIN="$ROOT/build/launcher/anvil"
fi
A=$ANVIL_BIN
SEED=${ANVIL_DEMO_SEED:-0}
RUN=$(realpath -m "${ANVIL_DEMO_DIR:-runs/demo}")
TRAIN=${ANVIL_DEMO_TRAIN:-800}
EVAL=${ANVIL_DEMO_EVAL:-200}
SFT_STEPS=${ANVIL_DEMO_SFT_STEPS:-400}
ROLLOUTS=${ANVIL_DEMO_ROLLOUTS:-100}
EVAL_N=${ANVIL_DEMO_EVAL_SAMPLES:-4}
MODE=${ANVIL_DEMO_MODE:-sync}
export OMP_NUM_THREADS=${ANVIL_DEMO_THREADS:-1}
export ANVIL_LOG_LEVEL=${ANVIL_LOG_LEVEL:-warn}
rm -rf "$RUN"
mkdir -p "$RUN"
start=$SECONDS

echo "== task: 2-digit + 1-digit addition, $TRAIN train / $EVAL held-out problems (seed $SEED)"
"$A" make-task arithmetic --out "$RUN/task" --seed "$SEED" --train "$TRAIN" --eval "$EVAL" \
  --digits 2 --digits2 1 --ops +
"$A" init-model --arch qwen3 --preset tiny --out "$RUN/init" --seed "$SEED"

# Held-out accuracy of a model directory: greedy, then EVAL_N samples at temperature 1.
evaluate() {
  local name=$1 model=$2
  "$A" eval --model "$model" --prompt-data "$RUN/task/eval.jsonl" --rm-type exact_match \
    --apply-chat-template --eval-max-response-len 6 --output "$RUN/eval_${name}_greedy.json" |
    sed "s/^eval: /  $name greedy:  /"
  "$A" eval --model "$model" --prompt-data "$RUN/task/eval.jsonl" --rm-type exact_match \
    --apply-chat-template --eval-max-response-len 6 --n-samples-per-eval-prompt "$EVAL_N" \
    --eval-temperature 1 --eval-seed "$SEED" --output "$RUN/eval_${name}_sampled.json" |
    sed "s/^eval: /  $name sampled: /"
}
acc() { sed -n 's/.*"accuracy": *\([0-9.e-]*\).*/\1/p' "$1" | head -1; }

echo "== held-out accuracy of the random model"
evaluate init "$RUN/init"

echo "== SFT warm start: $SFT_STEPS steps of 32 problems (stopped part-trained)"
"$A" sft --model "$RUN/init" --prompt-data "$RUN/task/train.jsonl" --input-key prompt \
  --label-key label --rollout-shuffle --rollout-seed "$SEED" --num-epoch 1000 \
  --global-batch-size 32 --lr 3e-3 --num-steps "$SFT_STEPS" --seed "$SEED" \
  --save-hf "$RUN/sft" --metrics-jsonl "$RUN/sft_metrics.jsonl"
evaluate sft "$RUN/sft"

echo "== GRPO from the SFT model ($MODE): $ROLLOUTS rollouts of 32 prompts x 8 samples (examples/arithmetic_grpo.yaml)"
GRPO=(--config examples/arithmetic_grpo.yaml --model "$RUN/sft"
  --prompt-data "$RUN/task/train.jsonl" --rollout-seed "$SEED" --rollout-sampling-seed "$SEED"
  --num-rollout "$ROLLOUTS" --save "$RUN/grpo_ckpt" --save-interval "$ROLLOUTS"
  --metrics-jsonl "$RUN/grpo_metrics.jsonl" --report "$RUN/grpo_report.json")
case $MODE in
  sync) "$A" train "${GRPO[@]}" ;;
  async) "$A" train --async "${GRPO[@]}" ;;
  processes)
    # The head listens on a free local port; one worker offers two CPU slots (train rank,
    # rollout engine) and runs every role as an `anvil actor` process of its own.
    "$A" train --listen 127.0.0.1:0 --workers 1 --token-file "$RUN/job.token" \
      --port-file "$RUN/head.port" "${GRPO[@]}" &
    head_pid=$!
    for _ in $(seq 600); do
      [ -s "$RUN/head.port" ] || ! kill -0 "$head_pid" 2>/dev/null && break
      sleep 0.1
    done
    [ -s "$RUN/head.port" ] || { wait "$head_pid" || true; echo "demo: the head did not start" >&2; exit 1; }
    "$A" worker --head "127.0.0.1:$(cat "$RUN/head.port")" --token-file "$RUN/job.token" \
      --node-id demo --devices 2 --log-dir "$RUN/worker_logs" &
    worker_pid=$!
    status=0
    wait "$head_pid" || status=$?
    wait "$worker_pid" || true
    [ "$status" -eq 0 ] || { echo "demo: anvil train failed ($status); role logs in $RUN/worker_logs" >&2; exit "$status"; }
    ;;
  *) echo "demo: ANVIL_DEMO_MODE must be sync, async or processes, got '$MODE'" >&2; exit 2 ;;
esac
# The checkpoint's model/ holds config and weights; add the tokenizer files for a complete
# HuggingFace directory.
ITER=$(cat "$RUN/grpo_ckpt/latest_checkpointed_iteration.txt")
rm -rf "$RUN/grpo"
cp -r "$RUN/grpo_ckpt/iter_$(printf %07d "$ITER")/model" "$RUN/grpo"
cp "$RUN/sft/tokenizer.json" "$RUN/sft/tokenizer_config.json" "$RUN/sft/generation_config.json" \
  "$RUN/grpo/"
evaluate grpo "$RUN/grpo"

echo "== held-out accuracy ($EVAL problems; greedy | sampled T=1, $EVAL_N per problem)"
printf '  initial model: %.3f | %.3f\n' "$(acc "$RUN/eval_init_greedy.json")" \
  "$(acc "$RUN/eval_init_sampled.json")"
printf '  after SFT:     %.3f | %.3f\n' "$(acc "$RUN/eval_sft_greedy.json")" \
  "$(acc "$RUN/eval_sft_sampled.json")"
printf '  after GRPO:    %.3f | %.3f\n' "$(acc "$RUN/eval_grpo_greedy.json")" \
  "$(acc "$RUN/eval_grpo_sampled.json")"
echo "== done in $((SECONDS - start)) s; models in $RUN/{init,sft,grpo}"
