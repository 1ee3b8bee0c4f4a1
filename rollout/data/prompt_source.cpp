#include "rollout/data/prompt_source.hpp"

#include "backends/common/error.hpp"
#include "backends/common/log.hpp"

#include <filesystem>
#include <random>
#include <set>

namespace anvil::data {

std::vector<SourceSpec> parse_prompt_data(const std::vector<std::string>& args) {
  if (args.empty()) fail("--prompt-data: no dataset given (PATH, or NAME PATH ...)");
  std::vector<SourceSpec> out;
  if (args.size() == 1) {
    out.push_back({std::filesystem::path(args[0]).stem().string(), args[0]});
    return out;
  }
  if (args.size() % 2 != 0) {
    fail("--prompt-data: expected PATH or NAME PATH pairs, got {} values", args.size());
  }
  std::set<std::string> names;
  for (size_t i = 0; i < args.size(); i += 2) {
    if (args[i].empty()) fail("--prompt-data: empty source name for {}", args[i + 1]);
    if (!names.insert(args[i]).second) fail("--prompt-data: source name '{}' given twice", args[i]);
    out.push_back({args[i], args[i + 1]});
  }
  return out;
}

nlohmann::json DataCursor::to_json() const {
  nlohmann::json srcs = nlohmann::json::array();
  for (const auto& s : sources) {
    srcs.push_back({{"name", s.name},
                    {"path", s.path},
                    {"rows", s.rows},
                    {"bad_rows", s.bad_rows},
                    {"consumed", s.consumed},
                    {"skipped", s.skipped}});
  }
  return {{"version", 1},       {"epoch", epoch}, {"offset", offset},
          {"shuffle", shuffle}, {"seed", seed},   {"sources", srcs}};
}

namespace {

uint64_t get_u64(const nlohmann::json& j, const char* key, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end()) fail("{}: data cursor has no '{}'", what, key);
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0)) {
    fail("{}: data cursor key '{}' must be a non-negative integer", what, key);
  }
  return it->get<uint64_t>();
}

std::string get_str(const nlohmann::json& j, const char* key, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string())
    fail("{}: data cursor key '{}' must be a string", what, key);
  return it->get<std::string>();
}

// A uniform draw from [0, bound) with no modulo bias: rejection of the low remainder.
uint64_t bounded(std::mt19937_64& rng, uint64_t bound) {
  uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
  while (true) {
    uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

}  // namespace

DataCursor DataCursor::from_json(const nlohmann::json& j, const std::string& what) {
  if (!j.is_object()) fail("{}: data cursor must be a JSON object", what);
  if (get_u64(j, "version", what) != 1) fail("{}: data cursor 'version' must be 1", what);
  DataCursor c;
  c.epoch = get_u64(j, "epoch", what);
  c.offset = get_u64(j, "offset", what);
  auto shuffle = j.find("shuffle");
  if (shuffle == j.end() || !shuffle->is_boolean()) {
    fail("{}: data cursor key 'shuffle' must be true or false", what);
  }
  c.shuffle = shuffle->get<bool>();
  c.seed = get_u64(j, "seed", what);
  auto it = j.find("sources");
  if (it == j.end() || !it->is_array()) fail("{}: data cursor key 'sources' must be a list", what);
  for (const auto& s : *it) {
    if (!s.is_object()) fail("{}: data cursor 'sources' entries must be objects", what);
    c.sources.push_back({get_str(s, "name", what), get_str(s, "path", what),
                         get_u64(s, "rows", what), get_u64(s, "bad_rows", what),
                         get_u64(s, "consumed", what), get_u64(s, "skipped", what)});
  }
  return c;
}

std::vector<uint64_t> epoch_order(uint64_t n, bool shuffle, uint64_t seed, uint64_t epoch) {
  std::vector<uint64_t> order(n);
  for (uint64_t i = 0; i < n; ++i) order[i] = i;
  if (!shuffle || n < 2) return order;
  std::mt19937_64 rng(seed + epoch);
  for (uint64_t i = n - 1; i > 0; --i) std::swap(order[i], order[bounded(rng, i + 1)]);
  return order;
}

PromptSource::PromptSource(const DataOptions& options)
    : shuffle_(options.shuffle), seed_(options.seed) {
  cursor_.shuffle = shuffle_;
  cursor_.seed = seed_;
  if (options.num_epoch < 1) fail("--num-epoch must be at least 1, got {}", options.num_epoch);
  num_epoch_ = static_cast<uint64_t>(options.num_epoch);
  auto specs = parse_prompt_data(options.prompt_data);
  auto log = anvil::log::get("data");
  for (uint32_t i = 0; i < specs.size(); ++i) {
    bad_.emplace_back(specs[i].name, options.strict);
    auto samples = load_samples(specs[i].name, specs[i].path, options.keys, bad_.back());
    SourceCounters c;
    c.name = specs[i].name;
    c.path = specs[i].path;
    c.rows = samples.size();
    c.bad_rows = bad_.back().total();
    if (c.bad_rows > 0) {
      std::string reasons;
      for (const auto& [r, n] : bad_.back().by_reason()) reasons += fmt::format(" {}={}", r, n);
      log->warn("source '{}' ({}): {} rows loaded, {} bad rows skipped:{}", c.name, c.path, c.rows,
                c.bad_rows, reasons);
    } else {
      log->info("source '{}' ({}): {} rows loaded", c.name, c.path, c.rows);
    }
    cursor_.sources.push_back(c);
    for (auto& s : samples) {
      pool_.push_back(std::move(s));
      source_of_.push_back(i);
    }
  }
  if (pool_.empty()) fail("--prompt-data: no valid rows in any source ({})", specs[0].path);
  make_order();
}

void PromptSource::make_order() {
  order_ = epoch_order(pool_.size(), shuffle_, seed_, cursor_.epoch);
}

std::optional<std::shared_ptr<const Sample>> PromptSource::next() {
  if (cursor_.epoch >= num_epoch_) return std::nullopt;
  uint64_t index = order_[cursor_.offset];
  ++cursor_.sources[source_of_[index]].consumed;
  if (++cursor_.offset == pool_.size()) {
    cursor_.offset = 0;
    ++cursor_.epoch;
    if (cursor_.epoch < num_epoch_) make_order();
  }
  return pool_[index];
}

void PromptSource::note_skipped(const Sample& sample) {
  for (auto& c : cursor_.sources) {
    if (c.name == sample.source) {
      ++c.skipped;
      return;
    }
  }
  ANVIL_CHECK(false, "sample from unknown source '{}'", sample.source);
}

void PromptSource::restore(const DataCursor& cursor) {
  if (cursor.sources.size() != cursor_.sources.size()) {
    fail("data cursor was saved with {} sources, this run has {}", cursor.sources.size(),
         cursor_.sources.size());
  }
  for (size_t i = 0; i < cursor.sources.size(); ++i) {
    const auto& a = cursor.sources[i];
    const auto& b = cursor_.sources[i];
    if (a.name != b.name || a.rows != b.rows) {
      fail(
          "data cursor was saved for source '{}' with {} valid rows, this run has source '{}' "
          "({}) with {} valid rows",
          a.name, a.rows, b.name, b.path, b.rows);
    }
  }
  if (cursor.shuffle != shuffle_ || (shuffle_ && cursor.seed != seed_)) {
    fail(
        "data cursor was saved with --rollout-shuffle={} --rollout-seed={}, this run has "
        "--rollout-shuffle={} --rollout-seed={}",
        cursor.shuffle, cursor.seed, shuffle_, seed_);
  }
  if (cursor.offset >= pool_.size()) {
    fail("data cursor offset {} is past the epoch size {}", cursor.offset, pool_.size());
  }
  cursor_.epoch = cursor.epoch;
  cursor_.offset = cursor.offset;
  for (size_t i = 0; i < cursor.sources.size(); ++i) {
    cursor_.sources[i].consumed = cursor.sources[i].consumed;
    cursor_.sources[i].skipped = cursor.sources[i].skipped;
  }
  if (cursor_.epoch < num_epoch_) make_order();
}

}  // namespace anvil::data
