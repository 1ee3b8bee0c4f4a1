#include "backends/common/omp_pool.hpp"

#include <dlfcn.h>

namespace anvil {

namespace {

using PauseResourceAll = int (*)(int);
constexpr int kOmpPauseSoft = 1;  // omp_pause_soft (OpenMP 5.0)

PauseResourceAll find_pause() {
  // The libgomp LibTorch loaded (the process's only one). Looked up rather than linked so
  // that this library needs no OpenMP flags and can never bring a second libgomp.
  return reinterpret_cast<PauseResourceAll>(dlsym(RTLD_DEFAULT, "omp_pause_resource_all"));
}

}  // namespace

void release_omp_pool() {
  static const PauseResourceAll pause = find_pause();
  // libgomp's soft pause frees the calling thread's pool: its workers exit and stop
  // counting as managed threads (a team of one would leave them docked). Inside a
  // parallel region it refuses (returns -1) and nothing happens.
  if (pause) pause(kOmpPauseSoft);
}

}  // namespace anvil
