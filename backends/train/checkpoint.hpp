// Training checkpoints and HuggingFace export.
//
// Layout (Megatron's names, which slime users know):
//   <save>/iter_0000012/model/           HF directory: config.json + safetensors, model dtype
//   <save>/iter_0000012/optimizer.safetensors   per parameter: <name>.exp_avg,
//                                        <name>.exp_avg_sq, and <name>.master when the
//                                        parameter is not fp32; RNG states as uint8
//   <save>/iter_0000012/trainer_state.json      iteration, optimizer steps, caller state
//                                        (data cursor, rollout id, ...)
//   <save>/latest_checkpointed_iteration.txt    the newest complete iteration
// A step directory is written under a temporary name, fsynced and renamed, and only then
// does the `latest` file (itself replaced atomically) point to it, so a crash at any
// moment leaves the previous checkpoint loadable and never a partial one.
#pragma once

#include "backends/models/decoder.hpp"
#include "backends/train/optimizer.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>

namespace anvil::train {

std::filesystem::path iteration_dir(const std::filesystem::path& save, int64_t iteration);

// Writes iteration `iteration` under `save` and points `latest` at it. `state` is stored
// verbatim in trainer_state.json under "state". An existing directory for the same
// iteration is replaced. `source` (the HF directory the model came from): its tokenizer
// and generation files are copied into model/, so that directory loads on its own
// (`anvil eval`, `--ref-load`, transformers).
void save_checkpoint(const std::filesystem::path& save, int64_t iteration,
                     const models::DecoderModel& model, const AdamW& optimizer,
                     const nlohmann::json& state, const std::filesystem::path& source = {});

// Copies the tokenizer, chat-template and generation files that exist in `source` into
// `dir` (nothing when `source` is empty).
void copy_hf_side_files(const std::filesystem::path& source, const std::filesystem::path& dir);

struct LoadedCheckpoint {
  int64_t iteration = 0;
  nlohmann::json state;
};
// Loads the iteration named by `latest` (or `iteration` when given) into `model` and
// `optimizer` (in place) and restores the RNG states. A checkpoint sharded by an FSDP group
// or a Megatron mesh loads too, gathered onto this rank (state_reader.hpp; the RNG states
// are then left as they are). Returns nullopt when `load` holds no
// checkpoint (no `latest` file). Throws anvil::Error naming the file and tensor for a
// missing, partial or mismatching checkpoint.
std::optional<LoadedCheckpoint> load_checkpoint(const std::filesystem::path& load,
                                                models::DecoderModel& model, AdamW& optimizer,
                                                std::optional<int64_t> iteration = std::nullopt);

// --save-hf: writes `model` as a HuggingFace directory at `out` (config.json with the
// dtype, safetensors sharded above `max_shard_bytes`), copying tokenizer and generation
// files from `source` (the model it was loaded from) when present. Written under a
// temporary name and renamed.
void export_hf(const std::filesystem::path& out, const models::DecoderModel& model,
               const std::filesystem::path& source, at::ScalarType dtype,
               uint64_t max_shard_bytes = 5ull << 30);

}  // namespace anvil::train
