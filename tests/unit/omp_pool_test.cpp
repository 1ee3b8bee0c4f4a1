// backends/common/omp_pool: a thread that ran a parallel LibTorch op holds OpenMP workers
// until release_omp_pool() ends them; its next parallel op starts them again and computes
// the same result.
#include "backends/common/omp_pool.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

namespace {

int threads_in_process() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// Waits (up to 5 s) until the process has `want` threads; returns the last count.
int settle_at(int want) {
  int n = threads_in_process();
  for (int i = 0; i < 500 && n != want; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    n = threads_in_process();
  }
  return n;
}

}  // namespace

TEST(OmpPool, ReleaseEndsTheCallingThreadsWorkers) {
  at::set_num_threads(2);
  at::Tensor x = at::ones({1 << 22});
  const double want = static_cast<double>(x.numel());
  std::thread([&] {
    const int before = threads_in_process();
    EXPECT_EQ(x.sum().item<double>(), want);  // large enough to open a 2-thread region
    const int with_pool = threads_in_process();
    EXPECT_GT(with_pool, before);
    anvil::release_omp_pool();
    EXPECT_EQ(settle_at(before), before);
    EXPECT_EQ(x.sum().item<double>(), want);  // a new pool, same result
    EXPECT_EQ(threads_in_process(), with_pool);
    anvil::release_omp_pool();
  }).join();
  anvil::release_omp_pool();  // a thread with no pool: nothing to do
}
