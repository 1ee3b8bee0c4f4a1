// Resume of an RL job; see resume_state.hpp.
#include "actors/resume_state.hpp"

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <map>

namespace anvil::actors {

namespace fs = std::filesystem;

namespace {
constexpr const char* kLatest = "latest_checkpointed_iteration.txt";
}  // namespace

ResumePoint find_resume_point(const std::string& load, int64_t ckpt_step) {
  ResumePoint p;
  p.load = load;
  if (load.empty()) fail("--load: no checkpoint directory given");
  if (!fs::is_directory(p.load)) {
    fail("--load {}: no such checkpoint directory{}", load,
         fs::exists(p.load) ? " (it is a file)" : "");
  }
  if (ckpt_step >= 0) {
    p.iteration = ckpt_step;
  } else {
    const fs::path latest = p.load / kLatest;
    if (!fs::exists(latest)) {
      fail(
          "--load {}: no checkpoint there ({} is missing; --save writes it after a complete "
          "checkpoint)",
          load, latest.string());
    }
    std::string text = read_text_file(latest);
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
    int64_t it = -1;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), it);
    if (ec != std::errc() || ptr != text.data() + text.size() || it < 0) {
      fail("{}: expected an iteration number, found '{}'", latest.string(), text);
    }
    p.iteration = it;
  }
  p.dir = p.load / fmt::format("iter_{:07d}", p.iteration);
  if (!fs::is_directory(p.dir)) {
    fail("--load {}: checkpoint directory {} is missing{}", load, p.dir.string(),
         ckpt_step >= 0 ? " (--ckpt-step)" : "");
  }
  const fs::path meta_file = p.dir / "trainer_state.json";
  if (!fs::exists(meta_file))
    fail("{}: incomplete checkpoint, trainer_state.json is missing", p.dir.string());
  nlohmann::json meta = read_json_file(meta_file);
  if (!meta.is_object() || !meta.contains("iteration") || !meta["iteration"].is_number_integer()) {
    fail("{}: key 'iteration' is missing or not an integer", meta_file.string());
  }
  if (meta["iteration"].get<int64_t>() != p.iteration) {
    fail("{}: holds iteration {}, but {} names iteration {}", meta_file.string(),
         meta["iteration"].get<int64_t>(), p.dir.filename().string(), p.iteration);
  }
  p.sharded = meta.contains("world_size");
  if (p.sharded) {
    if (!meta["world_size"].is_number_integer() || meta["world_size"].get<int64_t>() < 1) {
      fail("{}: key 'world_size' must be a positive integer", meta_file.string());
    }
    p.world_size = meta["world_size"].get<int>();
  }
  p.state = meta.value("state", nlohmann::json::object());
  if (!p.state.is_object()) fail("{}: key 'state' must be an object", meta_file.string());
  return p;
}

fs::path checkpoint_model_dir(const ResumePoint& point) {
  const fs::path model = point.dir / "model";
  if (!fs::exists(model / "config.json")) {
    fail("{}: incomplete checkpoint, model/config.json is missing", point.dir.string());
  }
  return model;
}

std::string save_request_text(const SaveRequest& request) {
  return nlohmann::json{
      {"dir", request.dir}, {"iteration", request.iteration}, {"state", request.state}}
      .dump();
}

SaveRequest parse_save_request(const std::string& text) {
  SaveRequest r;
  if (text.empty() || text.front() != '{') {
    r.dir = text;  // a plain directory
  } else {
    nlohmann::json j = parse_json(text, "save request");
    if (!j.contains("dir") || !j["dir"].is_string()) {
      fail("save request: key 'dir' is missing or not a string");
    }
    r.dir = j["dir"].get<std::string>();
    if (j.contains("iteration")) {
      if (!j["iteration"].is_number_integer())
        fail("save request: key 'iteration' must be an integer");
      r.iteration = j["iteration"].get<int64_t>();
    }
    if (j.contains("state")) {
      if (!j["state"].is_object()) fail("save request: key 'state' must be an object");
      r.state = j["state"];
    }
  }
  if (r.dir.empty()) fail("save request: no checkpoint directory");
  return r;
}

nlohmann::json rollout_engine_state(const ResumePoint& point, int rank, int64_t engines) {
  const std::string where = (point.dir / "trainer_state.json").string();
  const auto& all = point.state.value("rollout_engines", nlohmann::json());
  if (!all.is_array() || all.empty()) {
    fail(
        "{}: no rollout state (state.rollout_engines): not a checkpoint of an RL job, so "
        "--load cannot resume its rollouts (--finetune starts from its weights instead)",
        where);
  }
  if (static_cast<int64_t>(all.size()) != engines) {
    fail(
        "{}: written by a job of {} rollout engines, this one has {} (the prompt order is split "
        "by engine)",
        where, all.size(), engines);
  }
  for (const auto& e : all) {
    if (!e.is_object() || !e.contains("rank")) {
      fail("{}: an entry of state.rollout_engines has no 'rank'", where);
    }
    if (e["rank"] != rank) continue;
    for (const char* k : {"prompt_index", "data_cursor", "rollout"}) {
      if (!e.contains(k)) fail("{}: rollout engine {}: key '{}' is missing", where, rank, k);
    }
    if (e["rollout"] != point.iteration) {
      fail("{}: rollout engine {} saved its state for rollout {}, the checkpoint is iteration {}",
           where, rank, e["rollout"].dump(), point.iteration);
    }
    return e;
  }
  fail("{}: state.rollout_engines has no entry for rollout engine {}", where, rank);
}

int64_t resumed_rollout(const std::vector<nlohmann::json>& init_replies) {
  std::map<int64_t, std::string> seen;  // loaded iteration -> a role that loaded it
  bool any_loaded = false;
  std::string not_loaded;
  for (const auto& r : init_replies) {
    const std::string role = r.value("role", "");
    if (role != "train" && role != "rollout") continue;
    const std::string who = role + " rank " + std::to_string(r.value("rank", 0));
    if (r.contains("loaded_iteration") && r["loaded_iteration"].is_number_integer()) {
      any_loaded = true;
      seen.emplace(r["loaded_iteration"].get<int64_t>(), who);
    } else if (not_loaded.empty()) {
      not_loaded = who;
    }
  }
  if (!any_loaded) return 0;
  if (!not_loaded.empty())
    fail("--load: {} did not load the checkpoint the others did", not_loaded);
  if (seen.size() > 1) {
    std::string list;
    for (const auto& [it, who] : seen)
      list += fmt::format("{}{} loaded {}", list.empty() ? "" : ", ", who, it);
    fail("--load: the roles loaded different iterations ({})", list);
  }
  return seen.begin()->first;
}

}  // namespace anvil::actors
