#include "backends/dist/communicator.hpp"

#include "backends/common/error.hpp"

#include <ATen/ATen.h>

#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace anvil::dist {
namespace {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_gather(at::Tensor& out, const at::Tensor& in) override { out.copy_(in.view_as(out)); }
  void reduce_scatter(at::Tensor& out, const at::Tensor& in) override {
    out.copy_(in.view_as(out));
  }
  void all_reduce(at::Tensor&) override {}
  void broadcast(at::Tensor&, int) override {}
  void barrier() override {}
};

class C10dCommunicator final : public Communicator {
 public:
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
      auto opts = c10d::ProcessGroupGloo::Options::create(o.timeout);
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(o.master_addr));
      gloo_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, o.rank, o.world_size, opts);
    } catch (const std::exception& e) {
      fail("rank {}: joining the group of {} at {}:{} failed: {}", o.rank, o.world_size,
           o.master_addr, o.master_port, e.what());
    }
  }
  int rank() const override { return o_.rank; }
  int size() const override { return o_.world_size; }

  void all_gather(at::Tensor& out, const at::Tensor& in) override {
    run("all_gather", in.nbytes(), [&] {
      at::Tensor src = in.contiguous();
      return gloo_->_allgather_base(out, src);
    });
  }
  void reduce_scatter(at::Tensor& out, const at::Tensor& in) override {
    run("reduce_scatter", in.nbytes(), [&] {
      at::Tensor src = in.contiguous();
      c10d::ReduceScatterOptions ro;
      ro.reduceOp = c10d::ReduceOp::SUM;
      ro.timeout = o_.timeout;
      return gloo_->_reduce_scatter_base(out, src, ro);
    });
  }
  void all_reduce(at::Tensor& t) override {
    run("all_reduce", t.nbytes(), [&] {
      std::vector<at::Tensor> ts{t};
      c10d::AllreduceOptions ao;
      ao.timeout = o_.timeout;
      return gloo_->allreduce(ts, ao);
    });
  }
  void broadcast(at::Tensor& t, int root) override {
    run("broadcast", t.nbytes(), [&] {
      std::vector<at::Tensor> ts{t};
      c10d::BroadcastOptions bo;
      bo.rootRank = root;
      bo.timeout = o_.timeout;
      return gloo_->broadcast(ts, bo);
    });
  }
  void barrier() override {
    run("barrier", 0, [&] {
      c10d::BarrierOptions bo;
      bo.timeout = o_.timeout;
      return gloo_->barrier(bo);
    });
  }

 private:
  template <typename F>
  void run(const char* op, size_t bytes, F&& start) {
    try {
      auto work = start();
      if (!work->wait(o_.timeout)) fail("timed out");
    } catch (const anvil::Error&) {
      throw;
    } catch (const std::exception& e) {
      std::string what = e.what();
      if (auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
      fail("rank {} of {}: {} of {} bytes failed (a peer died, hung, or timed out after {} ms): {}",
           o_.rank, o_.world_size, op, bytes, o_.timeout.count(), what);
    }
  }

  CommOptions o_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo_;
};

}  // namespace

std::shared_ptr<Communicator> Communicator::create(const CommOptions& o) {
  if (o.world_size < 1) fail("world size must be >= 1, got {}", o.world_size);
  if (o.rank < 0 || o.rank >= o.world_size) fail("rank {} outside [0, {})", o.rank, o.world_size);
  if (o.world_size == 1) return std::make_shared<LocalCommunicator>();
  return std::make_shared<C10dCommunicator>(o);
}

}  // namespace anvil::dist
