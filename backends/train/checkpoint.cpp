#include "backends/train/checkpoint.hpp"

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/common/log.hpp"
#include "backends/models/safetensors.hpp"
#include "backends/models/weights.hpp"
#include "backends/train/state_reader.hpp"

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <unistd.h>

#include <charconv>

namespace fs = std::filesystem;
using nlohmann::json;

namespace anvil::train {
namespace {

constexpr int kFormatVersion = 1;
constexpr const char* kLatest = "latest_checkpointed_iteration.txt";

std::string tmp_suffix() { return ".tmp." + std::to_string(::getpid()); }

// Generators whose state a checkpoint keeps: the CPU one, and each CUDA device's.
std::vector<std::pair<std::string, at::Generator>> generators() {
  std::vector<std::pair<std::string, at::Generator>> out;
  out.emplace_back("__rng__.cpu", at::detail::getDefaultCPUGenerator());
  if (at::hasCUDA()) {
    for (c10::DeviceIndex i = 0; i < static_cast<c10::DeviceIndex>(at::getNumGPUs()); ++i)
      out.emplace_back(fmt::format("__rng__.cuda{}", i),
                       at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, i)));
  }
  return out;
}

// Renames `tmp` to `dest`, replacing an existing `dest`, and makes it durable.
void publish_directory(const fs::path& tmp, const fs::path& dest) {
  sync_directory(tmp);
  if (fs::exists(dest)) {
    fs::path old = dest;
    old += ".old" + tmp_suffix();
    fs::remove_all(old);
    fs::rename(dest, old);
    fs::rename(tmp, dest);
    fs::remove_all(old);
  } else {
    fs::rename(tmp, dest);
  }
  sync_directory(dest.parent_path());
}

void write_model_dir(const fs::path& dir, const models::DecoderModel& model, at::ScalarType dtype,
                     uint64_t max_shard_bytes) {
  fs::create_directories(dir);
  models::save_parameters(dir, model.specs(), model.parameters(), dtype, max_shard_bytes);
  json config = model.config().to_json();
  config["dtype"] = dtype == at::kBFloat16 ? "bfloat16"
                    : dtype == at::kHalf   ? "float16"
                                           : "float32";
  write_json_file_atomic(dir / "config.json", config);
}

int64_t read_latest(const fs::path& load) {
  std::string text = read_text_file(load / kLatest);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  int64_t it = -1;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), it);
  if (ec != std::errc() || ptr != text.data() + text.size() || it < 0)
    fail("{}: expected an iteration number, found '{}'", (load / kLatest).string(), text);
  return it;
}

}  // namespace

fs::path iteration_dir(const fs::path& save, int64_t iteration) {
  return save / fmt::format("iter_{:07d}", iteration);
}

void copy_hf_side_files(const fs::path& source, const fs::path& dir) {
  if (source.empty()) return;
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                        "special_tokens_map.json", "chat_template.jinja"}) {
    if (fs::exists(source / f))
      fs::copy_file(source / f, dir / f, fs::copy_options::overwrite_existing);
  }
}

void save_checkpoint(const fs::path& save, int64_t iteration, const models::DecoderModel& model,
                     const AdamW& optimizer, const json& state, const fs::path& source) {
  if (iteration < 0) fail("checkpoint iteration {} is negative", iteration);
  const fs::path dest = iteration_dir(save, iteration);
  fs::path tmp = dest;
  tmp += tmp_suffix();
  fs::create_directories(save);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    write_model_dir(tmp / "model", model, model.dtype(), 5ull << 30);
    copy_hf_side_files(source, tmp / "model");

    const auto& specs = model.specs();
    const auto& params = optimizer.parameters();
    if (params.size() != specs.size())
      fail("save_checkpoint: the optimizer holds {} parameters, the model {}", params.size(),
           specs.size());
    models::CheckpointWriter writer(tmp, 5ull << 30, {{"format", "anvil-optimizer"}});
    for (size_t i = 0; i < specs.size(); ++i) {
      writer.add(specs[i].name + ".exp_avg", optimizer.exp_avg()[i]);
      writer.add(specs[i].name + ".exp_avg_sq", optimizer.exp_avg_sq()[i]);
      if (params[i].scalar_type() != at::kFloat)
        writer.add(specs[i].name + ".master", optimizer.master_weights()[i]);
    }
    for (auto& [name, gen] : generators()) {
      std::lock_guard<std::mutex> lock(gen.mutex());
      writer.add(name, gen.get_state());
    }
    writer.finish();
    fs::rename(tmp / "model.safetensors", tmp / "optimizer.safetensors");
    if (fs::exists(tmp / "model.safetensors.index.json"))
      fail("save_checkpoint: optimizer state above 5 GiB per rank is not supported yet");

    json meta = {{"format_version", kFormatVersion},
                 {"iteration", iteration},
                 {"optimizer_steps", optimizer.steps()},
                 {"state", state}};
    write_json_file_atomic(tmp / "trainer_state.json", meta);
    publish_directory(tmp, dest);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  write_text_file_atomic(save / kLatest, std::to_string(iteration) + "\n");
  log::get("train")->info("saved checkpoint {}", dest.string());
}

namespace {

// A checkpoint written by an FSDP group or a Megatron mesh, gathered onto this one rank:
// every tensor's fp32 master and moments read whole from the ranks' stored boxes. The RNG
// states stay as they are (another world's ranks drew from their own).
LoadedCheckpoint load_sharded_checkpoint(const fs::path& dir, int64_t iteration,
                                         models::DecoderModel& model, AdamW& optimizer) {
  StateReader reader(dir);
  log::get("train")->info("resharding {} (written by {}) onto one rank", dir.string(),
                          reader.layout().describe());
  const auto& specs = model.specs();
  std::vector<at::Tensor> master, m1, m2;
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < specs.size(); ++i) {
    auto parts = reader.read_shard(specs[i].name, specs[i].shape, Box::whole(specs[i].shape),
                                   model.parameters()[i]);
    master.push_back(parts[0]);
    m1.push_back(parts[1]);
    m2.push_back(parts[2]);
  }
  optimizer.load_state(reader.optimizer_steps(), master, m1, m2);
  log::get("train")->info("loaded checkpoint {}", dir.string());
  return LoadedCheckpoint{iteration, reader.trainer_state().value("state", json::object())};
}

}  // namespace

std::optional<LoadedCheckpoint> load_checkpoint(const fs::path& load, models::DecoderModel& model,
                                                AdamW& optimizer,
                                                std::optional<int64_t> iteration) {
  if (!iteration) {
    if (!fs::exists(load / kLatest)) return std::nullopt;
    iteration = read_latest(load);
  }
  const fs::path dir = iteration_dir(load, *iteration);
  if (!fs::is_directory(dir)) fail("{}: checkpoint directory is missing", dir.string());
  if (!fs::exists(dir / "optimizer.safetensors") && fs::exists(dir / "trainer_state.json") &&
      read_json_file(dir / "trainer_state.json").contains("world_size"))
    return load_sharded_checkpoint(dir, *iteration, model, optimizer);
  for (const char* f : {"trainer_state.json", "optimizer.safetensors", "model/config.json"})
    if (!fs::exists(dir / f)) fail("{}: incomplete checkpoint, {} is missing", dir.string(), f);
  json meta = read_json_file(dir / "trainer_state.json");
  if (meta.value("format_version", 0) != kFormatVersion)
    fail("{}: unsupported format_version {}", (dir / "trainer_state.json").string(),
         meta.value("format_version", 0));

  // Model weights, copied into the existing parameters (the optimizer holds them).
  const auto& specs = model.specs();
  std::vector<at::Tensor> loaded =
      models::load_parameters(dir / "model", specs, at::TensorOptions().dtype(model.dtype()));
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < specs.size(); ++i) model.parameters()[i].copy_(loaded[i]);

  auto reader = models::CheckpointReader::open(dir / "optimizer.safetensors");
  auto get = [&](const std::string& name, const at::Tensor& like) {
    if (!reader.contains(name))
      fail("{}: tensor '{}' is missing", (dir / "optimizer.safetensors").string(), name);
    at::Tensor t = reader.load(name);
    if (t.sizes() != like.sizes())
      fail("{}: tensor '{}' has shape [{}], the model expects [{}]",
           (dir / "optimizer.safetensors").string(), name, fmt::join(t.sizes(), ", "),
           fmt::join(like.sizes(), ", "));
    return t.to(like.device(), at::kFloat);
  };
  const auto& params = optimizer.parameters();
  std::vector<at::Tensor> master, m1, m2;
  for (size_t i = 0; i < specs.size(); ++i) {
    m1.push_back(get(specs[i].name + ".exp_avg", params[i]));
    m2.push_back(get(specs[i].name + ".exp_avg_sq", params[i]));
    master.push_back(params[i].scalar_type() == at::kFloat
                         ? params[i].detach().to(at::kFloat)
                         : get(specs[i].name + ".master", params[i]));
  }
  optimizer.load_state(meta.at("optimizer_steps").get<int64_t>(), master, m1, m2);
  for (auto& [name, gen] : generators()) {
    if (!reader.contains(name)) continue;  // e.g. saved on a machine without this GPU
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(reader.load(name));
  }
  log::get("train")->info("loaded checkpoint {}", dir.string());
  return LoadedCheckpoint{*iteration, meta.value("state", json::object())};
}

void export_hf(const fs::path& out, const models::DecoderModel& model, const fs::path& source,
               at::ScalarType dtype, uint64_t max_shard_bytes) {
  fs::path tmp = out;
  tmp += tmp_suffix();
  if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
  fs::remove_all(tmp);
  try {
    write_model_dir(tmp, model, dtype, max_shard_bytes);
    copy_hf_side_files(source, tmp);
    publish_directory(tmp, out);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  log::get("train")->info("exported HuggingFace model to {}", out.string());
}

}  // namespace anvil::train
