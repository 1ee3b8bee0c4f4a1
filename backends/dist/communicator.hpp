// Collectives for one training group over c10d: rendezvous through a TCPStore hosted by
// rank 0, ProcessGroupGloo for CPU tensors or ProcessGroupNCCL for CUDA ones (where built).
// Every collective waits with the group's timeout; a peer that died or hangs surfaces as
// an anvil::Error naming this rank, the operation and its size, never as a silent hang.
// A group of one needs no store and does every collective locally.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace anvil::dist {

// Which c10d backend carries the collectives: Gloo (CPU tensors) or NCCL (CUDA tensors; a
// CPU tensor given to an NCCL group is staged through the current CUDA device).
enum class CommBackend { Gloo, Nccl };

struct CommOptions {
  std::string master_addr = "127.0.0.1";  // where rank 0 hosts the TCPStore
  int master_port = 29500;
  int rank = 0;
  int world_size = 1;
  std::chrono::milliseconds timeout{std::chrono::seconds(120)};  // every collective
  CommBackend backend = CommBackend::Gloo;
};

// Whether this build has NCCL groups (LibTorch with CUDA and the NCCL headers found), and
// whether it can create one here (built, and a CUDA device is visible).
bool nccl_built();
bool nccl_available();

// A collective in flight (see Communicator::all_gather_async). wait() blocks until it is
// done, with the group's timeout and error naming; waiting twice is a no-op.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  // Joins the group (blocks until every rank has arrived or the timeout passes).
  static std::shared_ptr<Communicator> create(const CommOptions& options);

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // out = concat over ranks of `in` (out.numel() == size() * in.numel(), both contiguous).
  virtual void all_gather(at::Tensor& out, const at::Tensor& in) = 0;
  // The same, started now and finished by wait() (FSDP's prefetch of the next layer). `out`
  // and `in` must stay alive and untouched until then.
  virtual std::unique_ptr<PendingCollective> all_gather_async(at::Tensor& out,
                                                              const at::Tensor& in) = 0;
  // out = rank's slice of the element-wise SUM over ranks of `in` (in = size() slices).
  virtual void reduce_scatter(at::Tensor& out, const at::Tensor& in) = 0;
  // t = element-wise SUM over ranks, in place.
  virtual void all_reduce(at::Tensor& t) = 0;
  virtual void broadcast(at::Tensor& t, int root) = 0;
  virtual void barrier() = 0;

  // Point to point (pipeline parallelism's activations and their gradients): sends `t` to
  // rank `dst` / receives into `t` from rank `src`, matched by `tag` (>= 0) and, for one
  // (peer, tag), in order. Both start now; `t` must stay alive and untouched until wait().
  // A send may finish before its receive is posted (Gloo) or only together with it (NCCL),
  // so a schedule must never wait for a send before posting the receives it depends on.
  virtual std::unique_ptr<PendingCollective> send_async(const at::Tensor& t, int dst, int tag) = 0;
  virtual std::unique_ptr<PendingCollective> recv_async(at::Tensor& t, int src, int tag) = 0;
  void recv(at::Tensor& t, int src, int tag) { recv_async(t, src, tag)->wait(); }

  // A sub-group of this group (the tensor/data-parallel groups of a process mesh):
  // `ranks` are ranks of this group, ascending, this rank among them; the new group's rank
  // is this rank's index in `ranks`. Every rank of `ranks` calls it with the same ranks and
  // `tag` (unique per sub-group); other ranks do not. The sub-group rendezvouses through
  // this group's store under the prefix `tag` and has its own c10d backend of the same
  // kind, with the same timeout and error naming.
  virtual std::shared_ptr<Communicator> new_group(const std::vector<int>& ranks,
                                                  const std::string& tag);
};

}  // namespace anvil::dist
