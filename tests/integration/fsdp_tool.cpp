// Test tool for backends/fsdp: one rank of a training group (or the single-process
// reference with --single). Trains on deterministic rollouts, then writes the full
// weights (rank 0) as safetensors and prints {"shard_bytes", "metrics"} as JSON.
//
//   fsdp_tool --model DIR --out DIR [--world W --rank R --port P] [--single]
//             [--rollouts K] [--ckpt] [--offload] [--no-reshard] [--die-at-rollout N]
//             [--timeout-ms T] [--bucket-bytes B] [--nccl] [--cuda] [--offload-cycle]
//             [--save DIR] [--load DIR] [--first-rollout N]
//
// --save DIR / --load DIR: a checkpoint after / before training (an FSDP group's sharded
// one, or with --single train::save_checkpoint's); --load takes any layout (resharded).
// --cuda: the model (single or sharded) on the CUDA device; --offload-cycle: between
// rollouts the training state goes to pinned host memory and back (colocated offload).
#include "backends/common/error.hpp"
#include "backends/dist/communicator.hpp"
#include "backends/fsdp/fsdp.hpp"
#include "backends/models/safetensors.hpp"
#include "backends/train/checkpoint.hpp"
#include "backends/train/trainer.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <iostream>
#include <random>
#include <string>

using namespace anvil;

namespace {

std::vector<train::TrainSample> rollout(uint64_t seed, int64_t vocab) {
  std::mt19937_64 rng(seed);
  std::vector<train::TrainSample> out;
  for (int i = 0; i < 8; ++i) {
    train::TrainSample s;
    const int prompt = 3 + static_cast<int>(rng() % 6), resp = 2 + static_cast<int>(rng() % 9);
    for (int t = 0; t < prompt + resp; ++t) s.tokens.push_back(static_cast<int64_t>(rng() % vocab));
    s.response_length = resp;
    for (int t = 0; t < resp; ++t) s.loss_mask.push_back(t == 0 || rng() % 5 != 0 ? 1.0f : 0.0f);
    s.reward = static_cast<double>(rng() % 2);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, out_dir, save_dir, load_dir, export_dir;
  int first_rollout = 0;
  int world = 1, rank = 0, port = 29500, rollouts = 2, die_at = -1;
  int64_t timeout_ms = 60000, max_tokens = 40;
  bool single = false, ckpt = false, offload = false, reshard = true;
  bool nccl = false;  // --nccl: the group over NCCL (CUDA devices)
  bool cuda = false, offload_cycle = false;
  int64_t bucket_bytes = -1;  // >= 0: write the weights through for_each_full_bucket
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return std::string(argv[++i]); };
    if (a == "--model")
      model_dir = next();
    else if (a == "--out")
      out_dir = next();
    else if (a == "--world")
      world = std::stoi(next());
    else if (a == "--rank")
      rank = std::stoi(next());
    else if (a == "--port")
      port = std::stoi(next());
    else if (a == "--rollouts")
      rollouts = std::stoi(next());
    else if (a == "--die-at-rollout")
      die_at = std::stoi(next());
    else if (a == "--timeout-ms")
      timeout_ms = std::stoll(next());
    else if (a == "--max-tokens")
      max_tokens = std::stoll(next());
    else if (a == "--save")
      save_dir = next();
    else if (a == "--export-hf")
      export_dir = next();
    else if (a == "--load")
      load_dir = next();
    else if (a == "--first-rollout")
      first_rollout = std::stoi(next());
    else if (a == "--single")
      single = true;
    else if (a == "--ckpt")
      ckpt = true;
    else if (a == "--offload")
      offload = true;
    else if (a == "--nccl")
      nccl = true;
    else if (a == "--cuda")
      cuda = true;
    else if (a == "--offload-cycle")
      offload_cycle = true;
    else if (a == "--bucket-bytes")
      bucket_bytes = std::stoll(next());
    else if (a == "--no-reshard")
      reshard = false;
    else {
      std::cerr << "fsdp_tool: unknown argument " << a << "\n";
      return 2;
    }
  }
  try {
    at::set_num_threads(1);
    train::TrainerOptions o;
    o.schedule.global_batch_size = 4;
    o.schedule.use_dynamic_batch_size = true;
    o.schedule.max_tokens_per_gpu = max_tokens;
    o.loss.entropy_coef = 0.01;
    o.loss.use_kl_loss = false;
    // Adam divides by sqrt(v) + eps: with a tiny eps it turns the last-bit differences of a
    // different reduction order into visible weight differences for near-zero gradients
    // (|dw| <= lr * |dg| / eps). lr 1e-3 and eps 1e-6 keep that below 1e-7, so the
    // comparison with one process tests the sharding, not rounding.
    o.optimizer.lr = 1e-3;
    o.optimizer.adam_eps = 1e-6;
    o.optimizer.weight_decay = 0.1;
    o.optimizer.clip_grad = 0.5;
    o.log_probs_chunk_size = 7;
    o.gradient_checkpointing = ckpt;

    const at::Device device = cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
    std::unique_ptr<models::DecoderModel> plain;
    std::unique_ptr<fsdp::FsdpModel> sharded;
    std::unique_ptr<train::Trainer> trainer;
    if (single) {
      plain = models::DecoderModel::from_pretrained(model_dir, at::kFloat, device);
      trainer = std::make_unique<train::Trainer>(*plain, o);
    } else {
      dist::CommOptions co;
      co.rank = rank;
      co.world_size = world;
      co.master_port = port;
      co.timeout = std::chrono::milliseconds(timeout_ms);
      if (nccl) co.backend = dist::CommBackend::Nccl;
      auto comm = dist::Communicator::create(co);
      fsdp::FsdpOptions fo;
      fo.cpu_offload = offload;
      fo.reshard_after_forward = reshard;
      sharded = std::make_unique<fsdp::FsdpModel>(comm, model_dir, at::kFloat, device, fo);
      o.schedule.dp_size = world;
      o.dp_rank = rank;
      trainer = std::make_unique<train::Trainer>(sharded->model(), o, sharded->trainer_hooks());
    }
    models::DecoderModel& model = single ? *plain : sharded->model();
    train::Metrics last;
    if (!load_dir.empty()) {
      const bool loaded =
          single ? train::load_checkpoint(load_dir, *plain, trainer->optimizer()).has_value()
                 : sharded->load_checkpoint(load_dir, trainer->optimizer()).has_value();
      if (!loaded) throw std::runtime_error("--load: no checkpoint in " + load_dir);
    }
    for (int r = first_rollout; r < first_rollout + rollouts; ++r) {
      if (r == die_at) std::raise(SIGKILL);
      auto m = trainer->train_rollout(rollout(1000 + r, model.config().vocab_size));
      last = m.back();
      if (offload_cycle) {
        if (single) {
          trainer->move_state_to(at::kCPU);
          trainer->move_state_to(device);
        } else {
          sharded->offload();
          trainer->optimizer().move_state_to(at::kCPU);
          trainer->optimizer().move_state_to(device);
          sharded->onload();
        }
      }
    }
    if (!save_dir.empty() && single)
      train::save_checkpoint(save_dir, first_rollout + rollouts, *plain, trainer->optimizer(),
                             {{"rollouts", first_rollout + rollouts}}, model_dir);
    else if (!save_dir.empty())
      sharded->save_checkpoint(save_dir, first_rollout + rollouts, trainer->optimizer(),
                               {{"rollouts", first_rollout + rollouts}});
    if (!export_dir.empty() && !single)
      sharded->export_hf(export_dir, model_dir, at::kFloat, /*max_shard_bytes=*/200000);
    // Full weights out (every rank gathers; rank 0 writes).
    models::CheckpointWriter writer(out_dir);
    auto write = [&](const std::string& name, const at::Tensor& t) {
      if (single || rank == 0) writer.add(name, t.cpu());
    };
    if (single) {
      for (size_t i = 0; i < model.specs().size(); ++i)
        write(model.specs()[i].name, model.parameters()[i]);
    } else if (bucket_bytes < 0) {
      sharded->for_each_full_tensor(write);
    }
    int64_t buckets = 0, max_bucket = 0, max_tensor = 0;
    if (!single && bucket_bytes >= 0) {
      sharded->for_each_full_bucket(
          bucket_bytes, at::kFloat, [&](const std::vector<fsdp::FsdpModel::NamedTensor>& b) {
            int64_t bytes = 0;
            for (const auto& [name, t] : b) {
              write(name, t);
              bytes += static_cast<int64_t>(t.nbytes());
              max_tensor = std::max<int64_t>(max_tensor, static_cast<int64_t>(t.nbytes()));
            }
            ++buckets;
            if (b.size() > 1) max_bucket = std::max(max_bucket, bytes);
          });
    }
    if (single || rank == 0) writer.finish();
    nlohmann::json j = {{"metrics", last}, {"rank", rank}};
    if (bucket_bytes >= 0) {
      j["buckets"] = buckets;
      j["max_multi_tensor_bucket_bytes"] = max_bucket;
    }
    if (!single)
      j["shard_bytes"] = sharded->shard_bytes();
    else {
      int64_t n = 0;
      for (auto& p : model.parameters()) n += 2 * p.numel() * 4;
      j["shard_bytes"] = n;
    }
    std::cout << j.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "fsdp_tool: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
