// Training-step throughput and peak memory of anvil's Trainer (driven by
// bench/train_step.py, which runs PyTorch + transformers on the same model and batch).
//
//   train_bench MODEL_DIR BATCH SEQ_LEN STEPS THREADS DTYPE DEVICE CKPT [MICRO_BATCH
//               [WORLD RANK PORT]]
//
// With WORLD RANK PORT (builds with distributed support), the process is one rank of an
// FSDP group on localhost (WORLD 1 runs the sharded code path alone): BATCH is the global
// batch, each rank runs its share of it; bf16 means bf16 compute over fp32 shards.
//
// One step = an SFT step over BATCH sequences of SEQ_LEN random tokens (loss on every
// next token, per-token mean, as transformers' labels=input_ids), AdamW lr 1e-5, clip 1.0,
// gradient accumulation over micro-batches of MICRO_BATCH sequences (default BATCH). The
// first step is warm-up. Prints one JSON line: median step seconds, tokens/s, peak memory.
#include "backends/models/decoder.hpp"
#include "backends/models/weights.hpp"
#include "backends/train/trainer.hpp"
#if defined(ANVIL_BENCH_FSDP)
#include "backends/fsdp/fsdp.hpp"
#endif

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#if defined(ANVIL_WITH_CUDA) && __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#define ANVIL_BENCH_CUDA_STATS 1
#endif

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <random>
#include <string>

namespace {

// Peak resident set size of this process (VmHWM), bytes.
int64_t peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 9) {
    std::cerr << "usage: train_bench MODEL_DIR BATCH SEQ_LEN STEPS THREADS DTYPE DEVICE CKPT "
                 "[MICRO_BATCH]\n";
    return 2;
  }
  try {
    const std::string dir = argv[1];
    const int64_t batch = std::stoll(argv[2]), seq = std::stoll(argv[3]);
    const int steps = std::stoi(argv[4]);
    at::set_num_threads(std::stoi(argv[5]));
    const at::ScalarType dtype = anvil::models::parse_dtype_name(argv[6]);
    const at::Device device{std::string(argv[7])};
    const bool ckpt = std::string(argv[8]) == "1";
    const int64_t micro = argc > 9 ? std::stoll(argv[9]) : batch;

    const int world = argc > 12 ? std::stoi(argv[10]) : 1;
    const int rank = argc > 12 ? std::stoi(argv[11]) : 0;
    std::unique_ptr<anvil::models::DecoderModel> owned;
    anvil::models::DecoderModel* model = nullptr;
    anvil::train::TrainerHooks hooks;
#if defined(ANVIL_BENCH_FSDP)
    std::unique_ptr<anvil::fsdp::FsdpModel> sharded;
    if (argc > 12) {  // an FSDP rank (also for WORLD = 1: the sharded code path alone)
      anvil::dist::CommOptions co;
      co.world_size = world;
      co.rank = rank;
      co.master_port = std::stoi(argv[12]);
      sharded = std::make_unique<anvil::fsdp::FsdpModel>(anvil::dist::Communicator::create(co),
                                                         dir, dtype, device,
                                                         anvil::fsdp::FsdpOptions{});
      model = &sharded->model();
      hooks = sharded->trainer_hooks();
    }
#endif
    if (model == nullptr) {
      if (world > 1) throw std::runtime_error("built without distributed support");
      owned = anvil::models::DecoderModel::from_pretrained(dir, dtype, device);
      model = owned.get();
    }
    const int64_t vocab = model->config().vocab_size;
    anvil::train::TrainerOptions o;
    o.loss.loss_type = "sft_loss";
    o.loss.calculate_per_token_loss = true;
    o.schedule.global_batch_size = batch;
    o.schedule.micro_batch_size = micro;
    o.optimizer.lr = 1e-5;
    o.optimizer.clip_grad = 1.0;
    o.gradient_checkpointing = ckpt;
    o.log_probs_chunk_size = 1024;
    o.schedule.dp_size = world;
    o.dp_rank = rank;
    anvil::train::Trainer trainer(*model, o, hooks);

    std::mt19937_64 rng(1234);
    std::vector<double> times;
    double loss = 0;
    for (int s = 0; s < steps + 1; ++s) {
      std::vector<anvil::train::TrainSample> samples(static_cast<size_t>(batch));
      for (auto& smp : samples) {
        for (int64_t t = 0; t < seq; ++t) smp.tokens.push_back(static_cast<int64_t>(rng() % vocab));
        smp.response_length = seq - 1;
      }
      auto t0 = std::chrono::steady_clock::now();
      auto metrics = trainer.train_rollout(samples);
      // Waits for the device: the update's kernels are queued on the same stream.
      (void)model->parameters()[0].sum().item().toDouble();
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      loss = metrics[0].at("loss");
      if (s > 0) times.push_back(dt);
    }
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    nlohmann::json out = {{"step_s_median", median},
                          {"tokens_per_s", static_cast<double>(batch * seq) / median},
                          {"loss", loss},
                          {"peak_rss_bytes", peak_rss_bytes()}};
#if defined(ANVIL_BENCH_CUDA_STATS)
    if (device.is_cuda()) {
      auto stats =
          c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
      out["peak_device_bytes"] = stats.allocated_bytes[0].peak;
    }
#endif
    std::cout << out.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "train_bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
