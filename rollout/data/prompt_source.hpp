// PromptSource: the ordered stream of samples a run consumes, from one or more datasets
// (--prompt-data), over --num-epoch epochs, optionally shuffled (--rollout-shuffle with
// --rollout-seed), with a cursor that a checkpoint saves so a resumed run continues with
// exactly the next sample the uninterrupted run would have seen.
//
// Order: the valid rows of all sources are concatenated in the order the sources are given
// (each in file order) into one pool of N samples. Epoch e visits the pool in the order of a
// permutation: the identity, or with shuffle a Fisher-Yates shuffle driven by
// std::mt19937_64(seed + e) with anvil's own unbiased bounded draw (std::shuffle and
// std::uniform_int_distribution are implementation-defined, so would change the order
// between standard libraries). The cursor is (epoch, offset into that permutation) plus
// per-source counters; it stores each source's name, path and valid-row count, and
// restoring it onto different sources is an error.
#pragma once

#include "rollout/data/dataset.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace anvil::data {

struct SourceSpec {
  std::string name;
  std::string path;
};

// --prompt-data arguments: a single PATH (source named after the file's stem), or pairs
// NAME PATH ... Names must be unique. Throws anvil::Error on an empty or odd-length list.
std::vector<SourceSpec> parse_prompt_data(const std::vector<std::string>& args);

// Every data-pipeline setting, with its default: the one place flags, YAML keys and tests
// take them from (launcher/data_flags.cpp registers the flags).
struct DataOptions {
  std::vector<std::string> prompt_data;  // --prompt-data
  DataKeys keys;                         // --input-key --label-key --metadata-key --tool-key
  bool shuffle = false;                  // --rollout-shuffle
  uint64_t seed = 42;                    // --rollout-seed
  int64_t num_epoch = 1;                 // --num-epoch
  int64_t max_length = 0;                // --max-length (tokens; 0 = no limit)
  bool strict = false;                   // --strict-data
  bool apply_chat_template = false;      // --apply-chat-template (prompt mode)
  int64_t prefetch = 16;                 // --prefetch-depth (samples; 0 = no prefetch thread)
};

struct SourceCounters {
  std::string name;
  std::string path;
  uint64_t rows = 0;      // valid rows loaded from the file
  uint64_t bad_rows = 0;  // rows skipped when loading
  uint64_t consumed = 0;  // samples handed out, over all epochs
  uint64_t skipped = 0;   // samples handed out but then dropped (too long, ...)
};

struct DataCursor {
  uint64_t epoch = 0;    // epochs completed
  uint64_t offset = 0;   // samples of the current epoch already handed out
  bool shuffle = false;  // the order's settings, checked on restore
  uint64_t seed = 0;
  std::vector<SourceCounters> sources;

  nlohmann::json to_json() const;
  // Throws anvil::Error naming `what` (a file, "checkpoint") and the key at fault.
  static DataCursor from_json(const nlohmann::json& j, const std::string& what);
};

class PromptSource {
 public:
  // Loads every source (see load_samples). Throws anvil::Error when a file is bad as a whole,
  // a bad row is found under options.strict, or no source has a valid row.
  explicit PromptSource(const DataOptions& options);

  // The next sample, or nullopt once num_epoch epochs are done. Not thread-safe.
  std::optional<std::shared_ptr<const Sample>> next();

  // Counts a handed-out sample that a later stage dropped (under its source).
  void note_skipped(const Sample& sample);

  // State after the last sample handed out.
  const DataCursor& cursor() const { return cursor_; }
  // Continues from `cursor` (as returned by cursor() in an earlier run with the same
  // sources, seed and shuffle setting). Throws anvil::Error when it does not fit.
  void restore(const DataCursor& cursor);

  uint64_t size() const { return pool_.size(); }  // samples per epoch
  uint64_t num_epoch() const { return num_epoch_; }
  const std::vector<BadRows>& bad_rows() const { return bad_; }

 private:
  void make_order();

  std::vector<std::shared_ptr<const Sample>> pool_;
  std::vector<uint32_t> source_of_;  // pool index -> source index
  std::vector<uint64_t> order_;      // permutation of the current epoch
  std::vector<BadRows> bad_;
  bool shuffle_;
  uint64_t seed_;
  uint64_t num_epoch_;
  DataCursor cursor_;
};

// The permutation of [0, n) for `epoch` (identity without shuffle). Exposed for tests.
std::vector<uint64_t> epoch_order(uint64_t n, bool shuffle, uint64_t seed, uint64_t epoch);

}  // namespace anvil::data
