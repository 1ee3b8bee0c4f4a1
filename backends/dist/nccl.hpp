// The NCCL side of the communicator (nccl.cpp), compiled against the CUDA and NCCL headers
// only when the build has them (ANVIL_HAVE_NCCL); otherwise every entry point fails clearly.
// Internal to backends/dist.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

namespace anvil::dist {

// A ProcessGroupNCCL over `store` whose wait() throws after `timeout` (blocking wait) rather
// than letting the watchdog abort the process, so a dead peer becomes an anvil::Error.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    std::chrono::milliseconds timeout);
// The current CUDA device (where CPU tensors are staged for NCCL).
int device_index();

}  // namespace anvil::dist
