// The OpenMP thread pool that LibTorch's intra-op parallelism keeps per calling thread.
//
// libgomp gives every thread that opens a parallel region its own pool of workers, and
// those workers stay (asleep) after the region ends. While more pool threads exist in the
// process than it has CPUs, libgomp spins only ~100 iterations at each barrier before
// sleeping on a futex (gomp_throttled_spin_count_var), so every parallel region pays a
// futex wake and a sleep per worker. Two roles in one process (the engine's thread and the
// trainer's, each with OMP_NUM_THREADS workers) cross that line even though only one of
// them computes at a time: on two cores the in-process RL step ran 1.8x slower with two
// intra-op threads than with one. A thread that is done computing for a while (a role
// between requests, the engine with nothing to run) hands its workers back with
// release_omp_pool(), so the thread that computes next has the CPUs' worth of spinning
// workers to itself; its next parallel region starts new workers (a few tens of
// microseconds).
#pragma once

namespace anvil {

// Ends the calling thread's OpenMP workers (OpenMP 5.0's omp_pause_resource_all, soft,
// found in the process at run time; nothing when no libgomp is loaded). Cheap when the
// thread has no workers; refused (a no-op) inside a parallel region.
void release_omp_pool();

}  // namespace anvil
