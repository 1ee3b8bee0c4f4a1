// Resume of an RL job (--save / --load): where a checkpoint is and what goes into it
// besides the train ranks' weights and optimizer.
//
// A checkpoint is the train group's step directory (backends/train/checkpoint.hpp,
// backends/fsdp): <save>/iter_NNNNNNN/{model/, optimizer.safetensors | fsdp/,
// trainer_state.json} and <save>/latest_checkpointed_iteration.txt. Iteration N means N
// rollouts trained (the weight version). The rollout roles' state for rollout N (each
// engine's data cursor and prompt index) travels through the controller into the train
// ranks' save request and is stored in trainer_state.json's "state":
//   {"weight_version": N, "rollout_id": N,
//    "rollout_engines": [{"rank": e, "engines": E, "rollout": N, "prompt_index": i,
//                         "data_cursor": {...}}, ...]}
// so the one step directory, written under a temporary name and renamed before `latest`
// moves, holds everything: a run killed at any moment resumes from a complete checkpoint.
//
// On --load every role reads the same iteration: train ranks load weights, AdamW state,
// the LR schedule's step and the RNG; rollout engines load the checkpoint's weights
// (model/), their cursor and prompt index; the controller starts at rollout N. Sampling of
// a prompt depends only on (--rollout-sampling-seed, its index in the prompt order), so a
// resumed run draws what the uninterrupted run drew. No LibTorch here.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace anvil::actors {

struct ResumePoint {
  std::filesystem::path load;  // --load
  std::filesystem::path dir;   // <load>/iter_NNNNNNN
  int64_t iteration = 0;       // rollouts trained
  int world_size = 1;          // train ranks that wrote it (1 for a single-rank checkpoint)
  bool sharded = false;        // written by an FSDP group (fsdp/rank_R-of-W.safetensors)
  nlohmann::json state;        // trainer_state.json "state"
};

// The checkpoint --load DIR names: the iteration of DIR/latest_checkpointed_iteration.txt,
// or `ckpt_step` when it is >= 0. Throws anvil::Error naming the path when DIR does not
// exist, holds no `latest` file, names a missing or incomplete step directory, or its
// trainer_state.json is malformed.
ResumePoint find_resume_point(const std::string& load, int64_t ckpt_step);

// The checkpoint's HF model directory (its model/, which every checkpoint has: the weights
// in the model's dtype). Throws anvil::Error naming it when config.json is missing.
std::filesystem::path checkpoint_model_dir(const ResumePoint& point);

// The argument of a save request: a plain directory (what older heads send), or
// {"dir", "iteration", "state"} (the iteration the checkpoint will be, the state to store).
struct SaveRequest {
  std::string dir;
  int64_t iteration = -1;  // -1: not given
  nlohmann::json state = nlohmann::json::object();
};
std::string save_request_text(const SaveRequest& request);
// Throws anvil::Error for a malformed request.
SaveRequest parse_save_request(const std::string& text);

// This engine's entry of the checkpoint's "rollout_engines". Throws anvil::Error naming
// the checkpoint when it has none (not written by an RL job), or when it was written with
// another number of engines (the prompt order is split by engine count).
nlohmann::json rollout_engine_state(const ResumePoint& point, int rank, int64_t engines);

// The rollout index a job starts at, from every role's init reply ({"role", "rank",
// "loaded_iteration"?}): 0 without --load, else the iteration the train ranks and the
// engines loaded. Throws anvil::Error naming the roles when they disagree.
int64_t resumed_rollout(const std::vector<nlohmann::json>& init_replies);

}  // namespace anvil::actors
