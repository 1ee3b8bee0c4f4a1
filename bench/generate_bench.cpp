// Generation throughput of the rollout engine: BATCH random prompts of PROMPT_LEN tokens,
// NEW_TOKENS greedy tokens each (EOS ignored), submitted together; output tokens/s over
// the whole generate() (prefill included), median of ITERS runs after one warm-up.
// Prints JSON; driven by generate_throughput.py. DEVICE (cpu by default) may be cuda.
#include "backends/models/decoder.hpp"
#include "backends/models/dtype.hpp"
#include "rollout/engine/engine.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

int main(int argc, char** argv) {
  if (argc != 8 && argc != 9) {
    std::fprintf(stderr,
                 "usage: %s MODEL_DIR BATCH PROMPT_LEN NEW_TOKENS ITERS THREADS DTYPE [DEVICE]\n",
                 argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const int64_t batch = std::stoll(argv[2]), prompt_len = std::stoll(argv[3]);
  const int64_t new_tokens = std::stoll(argv[4]);
  const int iters = std::stoi(argv[5]);
  at::set_num_threads(std::stoi(argv[6]));
  std::shared_ptr<anvil::models::DecoderModel> model = anvil::models::DecoderModel::from_pretrained(
      dir, anvil::models::parse_dtype_name(argv[7]),
      argc == 9 ? at::Device(std::string(argv[8])) : at::Device(at::kCPU));
  anvil::engine::EngineOptions o;
  o.background = false;
  o.kv_cache_tokens = batch * (prompt_len + new_tokens + 16);
  o.max_batch_tokens = std::max<int64_t>(2048, batch * prompt_len);
  o.prefix_cache = false;  // every run recomputes its prompts
  anvil::engine::Engine engine(model, o);

  std::mt19937_64 rng(1);
  std::vector<anvil::engine::GenerateRequest> requests;
  for (int64_t b = 0; b < batch; ++b) {
    anvil::engine::GenerateRequest r;
    for (int64_t i = 0; i < prompt_len; ++i) {
      r.input_ids.push_back(static_cast<int64_t>(rng() % model->config().vocab_size));
    }
    r.params.temperature = 0;
    r.params.max_new_tokens = new_tokens;
    r.params.ignore_eos = true;
    requests.push_back(std::move(r));
  }
  std::vector<double> rates;
  for (int it = 0; it <= iters; ++it) {
    auto t0 = std::chrono::steady_clock::now();
    auto outs = engine.generate(requests);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t produced = 0;
    for (const auto& out : outs) produced += static_cast<int64_t>(out.output_ids.size());
    if (it > 0) rates.push_back(static_cast<double>(produced) / s);
  }
  std::sort(rates.begin(), rates.end());
  std::printf("{\"output_tokens_per_s_median\": %.3f, \"runs\": %zu}\n", rates[rates.size() / 2],
              rates.size());
  return 0;
}
