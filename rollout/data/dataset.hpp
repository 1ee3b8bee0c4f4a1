// Datasets: JSONL and Parquet files of samples, read into memory and validated row by row.
//
// A row is a JSON object (a JSONL line, or a Parquet row with one key per column). The
// sample's fields come from keys the user names (slime's flags):
//   --input-key    (default "prompt")  a string, or an OpenAI messages list: a non-empty
//                  list of objects with a string "role" and a "content" that is a string,
//                  a list of parts, or null (an assistant turn with "tool_calls")
//   --label-key    (optional) any JSON value except null; required in every row when set
//   --metadata-key (optional) an object; a missing key or null reads as {}
//   --tool-key     (optional) a list of tool schemas, or a string holding one as JSON (how
//                  slime stores tools in Parquet); a missing key or null reads as no tools
// A row that breaks these rules (or is malformed JSON, or holds invalid UTF-8) is a bad row:
// under strict mode an anvil::Error "<file>:<line>: key '<key>': <what>"; otherwise it is
// skipped, counted by reason, and logged (the first kLoggedBadRows per file at warn level).
// For Parquet, <line> is the 1-based row number.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace anvil::data {

struct DataKeys {
  std::string input = "prompt";
  std::string label;     // "" = no label
  std::string metadata;  // "" = no metadata
  std::string tool;      // "" = no tools
};

enum class FileFormat { Jsonl, Parquet };

// The format of `path`: by extension (.jsonl, .json -> JSONL; .parquet -> Parquet), else by
// content (the "PAR1" magic, or a first non-blank byte '{'). Throws anvil::Error naming the
// file when it does not exist, is not a regular file, or is neither format.
FileFormat detect_format(const std::filesystem::path& path);

// One valid row. Shared by reference between the source and the samples it hands out.
struct Sample {
  std::string source;               // source name (--prompt-data NAME)
  std::string file;                 // path as given
  uint64_t line = 0;                // 1-based JSONL line, or 1-based Parquet row
  nlohmann::ordered_json input;     // string, or messages list (validated)
  nlohmann::ordered_json label;     // null when no --label-key
  nlohmann::ordered_json metadata;  // object ({} when absent)
  nlohmann::ordered_json tools;     // null, or a list of tool schemas
};

// Counts and reports bad rows for one source. Not thread-safe.
class BadRows {
 public:
  static constexpr int kLoggedBadRows = 20;
  BadRows(std::string source, bool strict) : source_(std::move(source)), strict_(strict) {}

  // Strict: throws anvil::Error "<file>:<line>: key '<key>': <what>" (without the key part
  // when `key` is empty). Otherwise counts the row under `reason` and logs it.
  void report(const std::string& file, uint64_t line, const std::string& key,
              const std::string& reason, const std::string& what);

  uint64_t total() const { return total_; }
  // reason -> count; reasons: "malformed_json", "invalid_utf8", "missing_key",
  // "wrong_type", "too_long", "template_error", ...
  const std::map<std::string, uint64_t>& by_reason() const { return by_reason_; }

 private:
  std::string source_;
  bool strict_;
  uint64_t total_ = 0;
  std::map<std::string, uint64_t> by_reason_;
};

// Reads every row of `path` (JSONL or Parquet), validates it against `keys` and returns the
// valid rows in file order. Bad rows go to `bad`. Throws anvil::Error naming the file when it
// is missing or unreadable as a whole.
std::vector<std::shared_ptr<const Sample>> load_samples(const std::string& source,
                                                        const std::filesystem::path& path,
                                                        const DataKeys& keys, BadRows& bad);

// True when `s` is valid UTF-8 (no overlong forms, surrogates or values past U+10FFFF).
bool is_valid_utf8(std::string_view s);

}  // namespace anvil::data
