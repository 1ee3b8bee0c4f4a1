// One rank of a Megatron-style training step benchmark (driven by bench/megatron_step.py),
// or the plain single-process train::Trainer with world 0.
//
//   megatron_bench MODEL BATCH SEQ_LEN STEPS THREADS MICRO WORLD RANK PORT TP
//
// Each step is one train_rollout of BATCH samples of SEQ_LEN tokens (half response) as one
// optimizer step over micro-batches of MICRO samples (old log-probs pass included). Prints
// {"step_s_median", "tokens_per_s"} as JSON.
#include "backends/dist/communicator.hpp"
#include "backends/megatron/megatron.hpp"
#include "backends/train/trainer.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <random>

using namespace anvil;

int main(int argc, char** argv) {
  if (argc != 11 && argc != 12) {
    std::cerr << "usage: megatron_bench MODEL BATCH SEQ_LEN STEPS THREADS MICRO WORLD RANK PORT "
                 "TP [PP]\n";
    return 2;
  }
  try {
    const std::string model_dir = argv[1];
    const int batch = std::stoi(argv[2]), seq_len = std::stoi(argv[3]), steps = std::stoi(argv[4]);
    const int threads = std::stoi(argv[5]), micro = std::stoi(argv[6]);
    const int world = std::stoi(argv[7]), rank = std::stoi(argv[8]), port = std::stoi(argv[9]);
    const int tp = std::stoi(argv[10]), pp = argc > 11 ? std::stoi(argv[11]) : 1;
    at::set_num_threads(threads);
    train::TrainerOptions o;
    o.schedule.global_batch_size = batch;
    o.schedule.micro_batch_size = micro;
    o.optimizer.lr = 1e-5;
    o.log_probs_chunk_size = 512;
    std::unique_ptr<models::DecoderModel> plain;
    std::unique_ptr<train::Trainer> trainer;
    std::unique_ptr<megatron::MegatronModel> model;
    std::unique_ptr<megatron::MegatronTrainer> mtrainer;
    int64_t vocab = 0;
    if (world == 0) {
      plain = models::DecoderModel::from_pretrained(model_dir, at::kFloat, at::kCPU);
      trainer = std::make_unique<train::Trainer>(*plain, o);
      vocab = plain->config().vocab_size;
    } else {
      dist::CommOptions co;
      co.rank = rank;
      co.world_size = world;
      co.master_port = port;
      auto mesh = megatron::Mesh::create(dist::Communicator::create(co), tp, pp);
      model = std::make_unique<megatron::MegatronModel>(mesh, model_dir, at::kFloat, at::kCPU);
      mtrainer = std::make_unique<megatron::MegatronTrainer>(*model, o);
      vocab = model->config().vocab_size;
    }
    std::mt19937_64 rng(1);
    std::vector<double> times;
    for (int step = 0; step < steps + 1; ++step) {
      std::vector<train::TrainSample> samples;
      for (int i = 0; i < batch; ++i) {
        train::TrainSample s;
        for (int t = 0; t < seq_len; ++t) s.tokens.push_back(static_cast<int64_t>(rng() % vocab));
        s.response_length = seq_len / 2;
        s.reward = static_cast<double>(rng() % 2);
        samples.push_back(std::move(s));
      }
      auto t0 = std::chrono::steady_clock::now();
      if (trainer)
        trainer->train_rollout(samples);
      else
        mtrainer->train_rollout(samples);
      const double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (step > 0) times.push_back(dt);  // the first step warms up
    }
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    nlohmann::json j = {{"step_s_median", median}, {"tokens_per_s", batch * seq_len / median}};
    std::cout << j.dump() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "megatron_bench: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
