// Test tool for backends/megatron: one rank of a TP x DP x PP training group (or the
// single-process reference with --single, which runs train::Trainer on the plain
// DecoderModel). Trains on deterministic rollouts, then writes the full weights (rank 0)
// as safetensors and prints {"metrics", "rank", ...} as JSON.
//
//   megatron_tool --model DIR --out DIR [--world W --rank R --port P --tp T --pp S] [--single]
//                 [--rollouts K] [--ckpt] [--bucket-bytes B] [--export-hf DIR]
//                 [--sp] [--logprob-check] [--timeout-ms T] [--cuda] [--nccl] [--bf16]
//                 [--save-ckpt DIR] [--load-ckpt DIR] [--rollout-offset N] [--offload-cycle]
//
// --save-ckpt / --load-ckpt: the sharded Megatron checkpoint after / before training;
// --rollout-offset N: the rollouts start at the N-th (so a resumed run continues them).
//
// --global-batch N (default 4, two optimizer steps per rollout of 8; 8 makes one step,
// where the old log-probs come from the training forward itself).
// --offload-cycle: after every rollout the trainer offloads (compute parameters freed,
// masters and moments to host memory) and onloads again, as the colocated job does.
// --sp: sequence parallelism within the TP group. --cuda: the model on the CUDA device;
// --nccl: the group over NCCL; --bf16: bf16 compute (fp32 masters).
//
// --logprob-check: instead of training, every rank compares the vocab-parallel log-probs,
// entropy and their gradient w.r.t. the hidden states with train::token_logprobs on the
// full model and prints the largest differences.
#include "backends/common/error.hpp"
#include "backends/dist/communicator.hpp"
#include "backends/megatron/megatron.hpp"
#include "backends/models/safetensors.hpp"
#include "backends/train/logprobs.hpp"
#include "backends/train/trainer.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

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

double max_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, out_dir, export_dir, save_ckpt, load_ckpt;
  int rollout_offset = 0;
  int world = 1, rank = 0, port = 29500, rollouts = 2, tp = 1, pp = 1;
  int64_t timeout_ms = 60000, max_tokens = 40, bucket_bytes = -1, global_batch = 4;
  bool single = false, ckpt = false, logprob_check = false, sp = false;
  bool cuda = false, nccl = false, bf16 = false, offload_cycle = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] {
      if (i + 1 >= argc) throw std::runtime_error("missing value after " + a);
      return std::string(argv[++i]);
    };
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
    else if (a == "--tp")
      tp = std::stoi(next());
    else if (a == "--pp")
      pp = std::stoi(next());
    else if (a == "--rollouts")
      rollouts = std::stoi(next());
    else if (a == "--timeout-ms")
      timeout_ms = std::stoll(next());
    else if (a == "--max-tokens")
      max_tokens = std::stoll(next());
    else if (a == "--global-batch")
      global_batch = std::stoll(next());
    else if (a == "--bucket-bytes")
      bucket_bytes = std::stoll(next());
    else if (a == "--save-ckpt")
      save_ckpt = next();
    else if (a == "--load-ckpt")
      load_ckpt = next();
    else if (a == "--rollout-offset")
      rollout_offset = std::stoi(next());
    else if (a == "--export-hf")
      export_dir = next();
    else if (a == "--single")
      single = true;
    else if (a == "--ckpt")
      ckpt = true;
    else if (a == "--sp")
      sp = true;
    else if (a == "--cuda")
      cuda = true;
    else if (a == "--nccl")
      nccl = true;
    else if (a == "--bf16")
      bf16 = true;
    else if (a == "--offload-cycle")
      offload_cycle = true;
    else if (a == "--logprob-check")
      logprob_check = true;
    else {
      std::cerr << "megatron_tool: unknown argument " << a << "\n";
      return 2;
    }
  }
  try {
    at::set_num_threads(1);
    train::TrainerOptions o;
    o.schedule.global_batch_size = global_batch;
    o.schedule.use_dynamic_batch_size = true;
    o.schedule.max_tokens_per_gpu = max_tokens;
    o.loss.entropy_coef = 0.01;
    // As fsdp_tool: lr 1e-3 and eps 1e-6 keep Adam from amplifying last-bit differences of
    // another reduction order into visible weight differences.
    o.optimizer.lr = 1e-3;
    o.optimizer.adam_eps = 1e-6;
    o.optimizer.weight_decay = 0.1;
    o.optimizer.clip_grad = 0.5;
    o.log_probs_chunk_size = 7;
    o.gradient_checkpointing = ckpt;
    nlohmann::json j = {{"rank", rank}};
    const at::Device device = cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
    const at::ScalarType dtype = bf16 ? at::kBFloat16 : at::kFloat;

    if (single) {
      auto model = models::DecoderModel::from_pretrained(model_dir, dtype, device);
      train::Trainer trainer(*model, o);
      train::Metrics last;
      for (int r = 0; r < rollouts; ++r)
        last = trainer.train_rollout(rollout(1000 + r, model->config().vocab_size)).back();
      models::CheckpointWriter writer(out_dir);
      for (size_t i = 0; i < model->specs().size(); ++i)
        writer.add(model->specs()[i].name, model->parameters()[i].to(at::kCPU, at::kFloat));
      writer.finish();
      j["metrics"] = last;
      std::cout << j.dump() << std::endl;
      return 0;
    }

    dist::CommOptions co;
    co.rank = rank;
    co.world_size = world;
    co.master_port = port;
    co.timeout = std::chrono::milliseconds(timeout_ms);
    if (nccl) co.backend = dist::CommBackend::Nccl;
    megatron::Mesh mesh = megatron::Mesh::create(dist::Communicator::create(co), tp, pp);
    j["tp_rank"] = mesh.tp_rank;
    j["dp_rank"] = mesh.dp_rank;
    j["pp_rank"] = mesh.pp_rank;
    megatron::MegatronModel model(mesh, model_dir, dtype, device);
    model.set_sequence_parallel(sp);

    if (logprob_check) {
      // The same hidden states on every rank; the full model's head as the oracle.
      auto full = models::DecoderModel::from_pretrained(model_dir, at::kFloat, at::kCPU);
      const int64_t V = full->config().vocab_size, H = full->config().hidden_size;
      at::manual_seed(7);
      at::Tensor hidden = at::randn({23, H}) * 3.0;
      at::Tensor targets = at::randint(V, {23}, at::kLong);
      double worst_lp = 0, worst_ent = 0, worst_grad = 0;
      // Only the last pipeline stage holds the head.
      for (double temperature : {1.0, 0.7}) {
        if (!mesh.last_stage()) break;
        train::LogProbOptions lo{temperature, 5, true};
        at::Tensor h1 = hidden.clone().requires_grad_(true);
        train::LogProbResult a = train::token_logprobs(h1, full->lm_head_weight(), targets, lo);
        (a.logprobs.sum() + 0.3 * a.entropy.sum()).backward();
        at::Tensor h2 = hidden.clone().requires_grad_(true);
        train::LogProbResult b = model.token_logprobs(h2, targets, lo);
        (b.logprobs.sum() + 0.3 * b.entropy.sum()).backward();
        worst_lp = std::max(worst_lp, max_diff(a.logprobs, b.logprobs));
        worst_ent = std::max(worst_ent, max_diff(a.entropy, b.entropy));
        worst_grad = std::max(worst_grad, max_diff(h1.grad(), h2.grad()));
      }
      // And the whole forward: hidden states of a packed batch.
      auto batch =
          models::PackedBatch::pack({{1, 2, 3, 4, 5}, {6, 7, 8}, {9, 10, 11, 12}}, at::kCPU);
      at::NoGradGuard no_grad;
      j["hidden_diff"] = max_diff(full->forward_hidden(batch), model.forward_hidden(batch));
      j["logprob_diff"] = worst_lp;
      j["entropy_diff"] = worst_ent;
      j["grad_diff"] = worst_grad;
      std::cout << j.dump() << std::endl;
      return 0;
    }

    megatron::MegatronTrainer trainer(model, o);
    if (!load_ckpt.empty()) {
      auto loaded = trainer.load_checkpoint(load_ckpt);
      if (!loaded) throw std::runtime_error("no checkpoint in " + load_ckpt);
      j["loaded_iteration"] = loaded->first;
    }
    train::Metrics last;
    for (int r = 0; r < rollouts; ++r) {
      last = trainer.train_rollout(rollout(1000 + rollout_offset + r, model.config().vocab_size))
                 .back();
      if (offload_cycle) {  // as the colocated job does around generation
        trainer.offload();
        trainer.onload();
      }
    }
    if (!save_ckpt.empty())
      trainer.save_checkpoint(save_ckpt, rollout_offset + rollouts, {{"note", "tool"}}, model_dir,
                              at::kFloat);
    if (!export_dir.empty())
      model.export_hf(export_dir, model_dir, at::kFloat, /*max_shard_bytes=*/200000);
    models::CheckpointWriter writer(out_dir);
    int64_t buckets = 0, max_bucket = 0;
    auto write = [&](const std::string& name, const at::Tensor& t) {
      if (rank == 0) writer.add(name, t.cpu());
    };
    if (bucket_bytes < 0) {
      model.for_each_full_tensor(write);
    } else {
      model.for_each_full_bucket(bucket_bytes, at::kFloat,
                                 [&](const std::vector<megatron::MegatronModel::NamedTensor>& b) {
                                   int64_t bytes = 0;
                                   for (const auto& [name, t] : b) {
                                     write(name, t);
                                     bytes += static_cast<int64_t>(t.nbytes());
                                   }
                                   ++buckets;
                                   if (b.size() > 1) max_bucket = std::max(max_bucket, bytes);
                                 });
      j["buckets"] = buckets;
      j["max_multi_tensor_bucket_bytes"] = max_bucket;
    }
    if (rank == 0) writer.finish();
    j["metrics"] = last;
    j["shard_bytes"] = trainer.shard_bytes();
    std::cout << j.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "megatron_tool: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
