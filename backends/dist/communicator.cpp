#include "backends/dist/communicator.hpp"

#include "backends/common/error.hpp"
#include "backends/dist/nccl.hpp"

#include <ATen/ATen.h>

#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <fmt/ranges.h>

#include <functional>

namespace anvil::dist {
namespace {

struct Done final : PendingCollective {
  void wait() override {}
};

// Validates a sub-group's ranks (ascending, within [0, world), holding `rank`) and returns
// `rank`'s index among them.
int check_group(const std::vector<int>& ranks, int rank, int world, const std::string& tag) {
  if (ranks.empty()) fail("rank {}: sub-group '{}' has no ranks", rank, tag);
  int index = -1;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i] < 0 || ranks[i] >= world || (i > 0 && ranks[i] <= ranks[i - 1]))
      fail("rank {}: sub-group '{}' ranks must be ascending and within [0, {}), got {}", rank, tag,
           world, fmt::join(ranks, ","));
    if (ranks[i] == rank) index = static_cast<int>(i);
  }
  if (index < 0)
    fail("rank {}: sub-group '{}' [{}] does not include this rank", rank, tag,
         fmt::join(ranks, ","));
  return index;
}

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_gather(at::Tensor& out, const at::Tensor& in) override { out.copy_(in.view_as(out)); }
  std::unique_ptr<PendingCollective> all_gather_async(at::Tensor& out,
                                                      const at::Tensor& in) override {
    all_gather(out, in);
    return std::make_unique<Done>();
  }
  void reduce_scatter(at::Tensor& out, const at::Tensor& in) override {
    out.copy_(in.view_as(out));
  }
  void all_reduce(at::Tensor&) override {}
  void broadcast(at::Tensor&, int) override {}
  void barrier() override {}
  std::unique_ptr<PendingCollective> send_async(const at::Tensor&, int dst, int) override {
    fail("rank 0 of 1: send to rank {}: a group of one has no peer", dst);
  }
  std::unique_ptr<PendingCollective> recv_async(at::Tensor&, int src, int) override {
    fail("rank 0 of 1: receive from rank {}: a group of one has no peer", src);
  }
  std::shared_ptr<Communicator> new_group(const std::vector<int>& ranks,
                                          const std::string& tag) override {
    check_group(ranks, 0, 1, tag);
    return std::make_shared<LocalCommunicator>();
  }
};

// Error text for a failed collective: names the rank, the operation and its size.
[[noreturn]] void collective_failed(const CommOptions& o, const char* op, size_t bytes,
                                    const std::exception& e) {
  std::string what = e.what();
  if (auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
  fail("rank {} of {}: {} of {} bytes failed (a peer died, hung, or timed out after {} ms): {}",
       o.rank, o.world_size, op, bytes, o.timeout.count(), what);
}

// Work started on a c10d backend, waited for with the group's timeout.
class PendingWork final : public PendingCollective {
 public:
  PendingWork(const CommOptions& o, const char* op, size_t bytes,
              c10::intrusive_ptr<c10d::Work> work, std::function<void()> finish)
      : o_(o), op_(op), bytes_(bytes), work_(std::move(work)), finish_(std::move(finish)) {}
  void wait() override {
    if (!work_) return;
    auto work = std::move(work_);
    try {
      if (!work->wait(o_.timeout)) fail("timed out");
    } catch (const anvil::Error&) {
      throw;
    } catch (const std::exception& e) {
      collective_failed(o_, op_, bytes_, e);
    }
    if (finish_) finish_();
  }

 private:
  CommOptions o_;
  const char* op_;
  size_t bytes_;
  c10::intrusive_ptr<c10d::Work> work_;
  std::function<void()> finish_;
};

// One c10d backend (Gloo or NCCL) behind the Communicator interface. NCCL works on CUDA
// tensors only: a CPU tensor (grad-norm and metric reductions) is staged through the
// current CUDA device and copied back.
class C10dCommunicator final : public Communicator {
 public:
  // A sub-group over `store` (a prefix of the parent's store); o.rank/world_size are the
  // rank and size within the sub-group.
  C10dCommunicator(const CommOptions& o, c10::intrusive_ptr<c10d::Store> store) : o_(o) {
    store_ = std::move(store);
    try {
      make_backend();
    } catch (const std::exception& e) {
      fail("rank {}: creating a sub-group of {} failed: {}", o.rank, o.world_size, e.what());
    }
  }
  explicit C10dCommunicator(const CommOptions& o) : o_(o) {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(o.master_port);
    so.isServer = o.rank == 0;
    so.numWorkers = static_cast<size_t>(o.world_size);
    so.waitWorkers = true;
    so.timeout = o.timeout;
    so.useLibUV = false;
    try {
      store_ = c10::make_intrusive<c10d::TCPStore>(o.master_addr, so);
      make_backend();
    } catch (const anvil::Error& e) {
      fail("rank {}: joining the group of {} at {}:{} failed: {}", o.rank, o.world_size,
           o.master_addr, o.master_port, e.what());
    } catch (const std::exception& e) {
      fail("rank {}: joining the group of {} at {}:{} failed: {}", o.rank, o.world_size,
           o.master_addr, o.master_port, e.what());
    }
  }
  int rank() const override { return o_.rank; }
  int size() const override { return o_.world_size; }

  std::shared_ptr<Communicator> new_group(const std::vector<int>& ranks,
                                          const std::string& tag) override {
    CommOptions so = o_;
    so.rank = check_group(ranks, o_.rank, o_.world_size, tag);
    so.world_size = static_cast<int>(ranks.size());
    if (so.world_size == 1) return Communicator::create(so);
    return std::make_shared<C10dCommunicator>(
        so, c10::make_intrusive<c10d::PrefixStore>("subgroup/" + tag, store_));
  }

  void all_gather(at::Tensor& out, const at::Tensor& in) override {
    all_gather_async(out, in)->wait();
  }
  std::unique_ptr<PendingCollective> all_gather_async(at::Tensor& out,
                                                      const at::Tensor& in) override {
    return start("all_gather", in.nbytes(), {&out}, {in},
                 [this](auto& o, auto& i) { return pg_->_allgather_base(o[0], i[0]); });
  }
  void reduce_scatter(at::Tensor& out, const at::Tensor& in) override {
    start("reduce_scatter", in.nbytes(), {&out}, {in}, [this](auto& o, auto& i) {
      c10d::ReduceScatterOptions ro;
      ro.reduceOp = c10d::ReduceOp::SUM;
      ro.timeout = o_.timeout;
      return pg_->_reduce_scatter_base(o[0], i[0], ro);
    })->wait();
  }
  void all_reduce(at::Tensor& t) override {
    start("all_reduce", t.nbytes(), {&t}, {}, [this](auto& o, auto&) {
      std::vector<at::Tensor> ts{o[0]};
      c10d::AllreduceOptions ao;
      ao.timeout = o_.timeout;
      return pg_->allreduce(ts, ao);
    })->wait();
  }
  void broadcast(at::Tensor& t, int root) override {
    start("broadcast", t.nbytes(), {&t}, {}, [this, root](auto& o, auto&) {
      std::vector<at::Tensor> ts{o[0]};
      c10d::BroadcastOptions bo;
      bo.rootRank = root;
      bo.timeout = o_.timeout;
      return pg_->broadcast(ts, bo);
    })->wait();
  }
  std::unique_ptr<PendingCollective> send_async(const at::Tensor& t, int dst, int tag) override {
    check_peer("send to", dst, tag);
    return start("send", t.nbytes(), {}, {t}, [this, dst, tag](auto&, auto& i) {
      std::vector<at::Tensor> ts{i[0]};
      return pg_->send(ts, dst, tag);
    });
  }
  std::unique_ptr<PendingCollective> recv_async(at::Tensor& t, int src, int tag) override {
    check_peer("receive from", src, tag);
    return start("recv", t.nbytes(), {&t}, {}, [this, src, tag](auto& o, auto&) {
      std::vector<at::Tensor> ts{o[0]};
      return pg_->recv(ts, src, tag);
    });
  }
  void barrier() override {
    start("barrier", 0, {}, {}, [this](auto&, auto&) {
      c10d::BarrierOptions bo;
      bo.timeout = o_.timeout;
      return pg_->barrier(bo);
    })->wait();
  }

 private:
  // Starts a collective on contiguous (and, for NCCL, device) copies of the arguments;
  // outputs that had to be copied are written back when the work is waited for.
  template <typename F>
  std::unique_ptr<PendingCollective> start(const char* op, size_t bytes,
                                           std::vector<at::Tensor*> outs,
                                           std::vector<at::Tensor> ins, F&& run) {
    std::vector<at::Tensor> o, i;
    std::vector<std::pair<at::Tensor*, at::Tensor>> copy_back;
    for (at::Tensor* t : outs) {
      at::Tensor w = *t;
      if (stage_ && !w.is_cuda()) w = w.to(device());
      if (!w.is_contiguous()) w = w.contiguous();
      if (!w.is_same(*t)) {
        w.copy_(*t);  // in-place ops (all_reduce, broadcast) read their output too
        copy_back.emplace_back(t, w);
      }
      o.push_back(w);
    }
    for (const at::Tensor& t : ins) {
      at::Tensor w = stage_ && !t.is_cuda() ? t.to(device()) : t;
      i.push_back(w.contiguous());
    }
    c10::intrusive_ptr<c10d::Work> work;
    try {
      work = run(o, i);
    } catch (const anvil::Error&) {
      throw;
    } catch (const std::exception& e) {
      collective_failed(o_, op, bytes, e);
    }
    auto keep = std::make_shared<std::vector<at::Tensor>>(i);  // inputs live until done
    std::function<void()> finish = [copy_back, keep]() {
      for (const auto& [dst, src] : copy_back) dst->copy_(src);
    };
    return std::make_unique<PendingWork>(o_, op, bytes, std::move(work), std::move(finish));
  }
  at::Device device() const { return at::Device(at::kCUDA, device_index()); }
  void check_peer(const char* what, int peer, int tag) const {
    if (peer < 0 || peer >= o_.world_size || peer == o_.rank || tag < 0)
      fail(
          "rank {} of {}: {} rank {} with tag {}: the peer must be another rank of the group "
          "and the tag >= 0",
          o_.rank, o_.world_size, what, peer, tag);
  }
  void make_backend() {
    if (o_.backend == CommBackend::Nccl) {
      stage_ = true;
      pg_ = make_nccl_backend(store_, o_.rank, o_.world_size, o_.timeout);
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create(o_.timeout);
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(o_.master_addr));
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, o_.rank, o_.world_size, opts);
    }
  }

  CommOptions o_;
  bool stage_ = false;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> pg_;
};

}  // namespace

std::shared_ptr<Communicator> Communicator::new_group(const std::vector<int>& ranks,
                                                      const std::string& tag) {
  (void)ranks;
  fail("rank {}: this communicator cannot create sub-group '{}'", rank(), tag);
}

std::shared_ptr<Communicator> Communicator::create(const CommOptions& o) {
  if (o.world_size < 1) fail("world size must be >= 1, got {}", o.world_size);
  if (o.rank < 0 || o.rank >= o.world_size) fail("rank {} outside [0, {})", o.rank, o.world_size);
  if (o.backend == CommBackend::Nccl && !nccl_built()) {
    fail(
        "rank {}: an NCCL group was asked for, but this build has no NCCL support (LibTorch "
        "with CUDA and the NCCL headers; see backends/dist/README.md)",
        o.rank);
  }
  if (o.backend == CommBackend::Nccl && !nccl_available()) {
    fail("rank {}: an NCCL group was asked for, but no CUDA device is visible", o.rank);
  }
  if (o.world_size == 1) return std::make_shared<LocalCommunicator>();
  return std::make_shared<C10dCommunicator>(o);
}

}  // namespace anvil::dist
