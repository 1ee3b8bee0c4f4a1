#include "backends/dist/nccl.hpp"

#include "backends/common/error.hpp"
#include "backends/dist/communicator.hpp"

#ifdef ANVIL_HAVE_NCCL
#define USE_C10D_NCCL 1
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <cstdlib>
#endif

namespace anvil::dist {

#ifdef ANVIL_HAVE_NCCL

bool nccl_built() { return true; }

bool nccl_available() { return c10::cuda::device_count() > 0; }

int device_index() { return c10::cuda::current_device(); }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int rank, int world_size,
                                                    std::chrono::milliseconds timeout) {
  // Read by the ProcessGroupNCCL constructor: Work::wait blocks the host and throws on
  // timeout (a user's own setting wins).
  ::setenv("TORCH_NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0);
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, opts);
}

#else

bool nccl_built() { return false; }

bool nccl_available() { return false; }

int device_index() { return 0; }

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>&,
                                                    int rank, int, std::chrono::milliseconds) {
  fail("rank {}: this build has no NCCL support", rank);
}

#endif

}  // namespace anvil::dist
