// Forward throughput of anvil's decoder: times forward (hidden states + logits) on a
// batch of `batch` sequences of `seq_len` tokens, packed into one row.
// Usage: forward_bench MODEL_DIR BATCH SEQ_LEN ITERS THREADS DTYPE
// Prints one JSON line: {"tokens_per_s_median": ..., "seconds": [...]}.
#include "backends/models/decoder.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: %s MODEL_DIR BATCH SEQ_LEN ITERS THREADS DTYPE\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const int64_t batch = std::stoll(argv[2]), seq_len = std::stoll(argv[3]);
  const int iters = std::stoi(argv[4]);
  at::set_num_threads(std::stoi(argv[5]));
  auto model = anvil::models::DecoderModel::from_pretrained(
      dir, anvil::models::parse_dtype_name(argv[6]), at::kCPU);
  at::Generator gen = at::detail::createCPUGenerator(0);
  std::vector<std::vector<int64_t>> seqs(batch);
  for (auto& s : seqs) {
    at::Tensor t = at::randint(model->config().vocab_size, {seq_len}, gen, at::kLong);
    s.assign(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + seq_len);
  }
  auto packed = anvil::models::PackedBatch::pack(seqs, at::kCPU);
  at::NoGradGuard no_grad;
  std::vector<double> seconds;
  for (int i = 0; i < iters + 1; ++i) {
    auto start = std::chrono::steady_clock::now();
    at::Tensor logits = model->forward(packed);
    (void)logits.sum().item<float>();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (i > 0) seconds.push_back(s);  // first iteration is warm-up
  }
  std::vector<double> sorted = seconds;
  std::sort(sorted.begin(), sorted.end());
  double median = sorted[sorted.size() / 2];
  std::printf("{\"tokens_per_s_median\": %.3f, \"median_s\": %.6f}\n",
              static_cast<double>(batch * seq_len) / median, median);
  return 0;
}
