// anvil train [--config JOB.yaml] [--async] [--workers N ...] [--report F] [job flags...]
// anvil train-async ...   (= anvil train --async)
//
// The single-machine entry point of a training job: `anvil head` with every role (train,
// ref, rollout engines, weight sync) on threads of this one process, the same job flags
// and YAML. Chosen over spawning a local worker because one process needs no token,
// ports or child processes, shares memory between the train role and the engines (weight
// sync through shared memory) and stops with Ctrl-C; the controller, the roles and their
// messages are the same as on a cluster. `--workers N` turns it into the cluster head
// (identical to `anvil head --workers N`).
//
// The loop (actors/controller.cpp) is synchronous by default: generate rollout k, train on
// it, push weight version k+1. --async is slime's train_async.py: rollout k+1 is generated
// while rollout k trains (samples one weight version old; the trainer's off-policy
// correction uses their rollout log-probs), weights pushed every --update-weights-interval.
// --loss-type sft_loss with --debug-train-only trains on the dataset's token-exact SFT
// samples with no rollout or reference role.
#include "launcher/commands.hpp"

#include <CLI/CLI.hpp>

namespace anvil::launcher {

void register_train(CLI::App& app, int& exit_code) {
  add_head_command(app, exit_code, "train",
                   "Train a model (RL or SFT) on this machine: the controller and every role "
                   "in one process (--workers N: on a cluster)",
                   HeadCommandMode::Train);
  add_head_command(app, exit_code, "train-async",
                   "anvil train --async: generation of rollout k+1 overlaps training on k",
                   HeadCommandMode::TrainAsync);
}

}  // namespace anvil::launcher
