#include "backends/fsdp/fsdp.hpp"

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/common/log.hpp"
#include "backends/train/checkpoint.hpp"
#include "backends/train/state_reader.hpp"
#include "backends/models/dtype.hpp"
#include "backends/models/safetensors.hpp"
#include "backends/models/weights.hpp"

#include <ATen/ATen.h>
#include <c10/core/StorageImpl.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <unordered_map>

namespace anvil::fsdp {

namespace {

// The parameter's storage gives its memory back; shape and autograd identity stay.
void free_storage(const at::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  if (s->nbytes() == 0) return;
  s->set_data_ptr_noswap(at::DataPtr(nullptr, t.device()));
  s->set_nbytes(0);
}

// Memory for the whole tensor again, in the same storage (contents undefined).
void alloc_storage(const at::Tensor& t) {
  c10::StorageImpl* s = t.storage().unsafeGetStorageImpl();
  const size_t n = static_cast<size_t>(t.numel()) * t.element_size();
  if (s->nbytes() == n) return;
  s->set_data_ptr_noswap(s->allocator()->allocate(n));
  s->set_nbytes(n);
}

// Writes into `t` through an alias with its own version counter, so tensors autograd saved
// (the parameter itself) do not look modified in place.
void write_untracked(const at::Tensor& t, const at::Tensor& src) {
  at::NoGradGuard no_grad;
  at::Tensor alias = at::empty({0}, t.options());
  alias.set_(t.storage(), t.storage_offset(), t.sizes(), t.strides());
  alias.copy_(src);
}

}  // namespace

struct Param {
  int index = 0;           // into the model's specs / parameters
  int64_t rows = 0;        // dim 0
  int64_t shard_rows = 0;  // ceil(rows / W)
  int64_t row_numel = 1;   // elements per row
  at::Tensor shard;        // fp32 [shard_rows, ...]: the optimizer's parameter
};

struct FsdpModel::Impl {
  std::shared_ptr<dist::Communicator> comm;
  FsdpOptions options;
  at::Device device{at::kCPU};
  at::ScalarType dtype;
  std::unique_ptr<models::DecoderModel> model;
  std::vector<Param> params;
  std::vector<std::vector<int>> groups;  // per layer, then the root group last: indices into params
  std::vector<bool> gathered;
  std::unordered_map<const c10::TensorImpl*, int> param_of;  // full tensor -> params index

  int W() const { return comm->size(); }
  int R() const { return comm->rank(); }
  at::Device shard_device() const { return options.cpu_offload ? at::Device(at::kCPU) : device; }
  const at::Tensor& full(const Param& p) const { return model->parameters()[p.index]; }
  size_t root() const { return groups.size() - 1; }

  int64_t group_numel(size_t g) const {
    int64_t n = 0;
    for (int i : groups[g]) n += params[i].shard_rows * params[i].row_numel;
    return n;
  }

  // A group's all-gather in flight (prefetch of the layer that runs next).
  struct Gather {
    std::unique_ptr<dist::PendingCollective> work;
    at::Tensor local, out;
  };
  std::vector<std::unique_ptr<Gather>> pending;  // per group

  // Starts all-gathering group g (compute dtype) into a flat buffer.
  std::unique_ptr<Gather> start_gather(size_t g) {
    at::NoGradGuard no_grad;
    const int64_t total = group_numel(g);
    auto opts = at::TensorOptions().dtype(dtype).device(device);
    auto ga = std::make_unique<Gather>();
    ga->local = at::empty({total}, opts);
    int64_t off = 0;
    for (int i : groups[g]) {
      const Param& p = params[i];
      const int64_t m = p.shard_rows * p.row_numel;
      ga->local.narrow(0, off, m).copy_(p.shard.reshape({m}));
      off += m;
    }
    ga->out = at::empty({W() * total}, opts);
    ga->work = comm->all_gather_async(ga->out, ga->local);
    return ga;
  }

  // Prefetch: group g's gather starts now and overlaps the current layer's compute. Every
  // rank prefetches the same groups in the same order, so the collectives still match.
  void prefetch(size_t g) {
    if (g >= root() || gathered[g] || pending[g]) return;
    pending[g] = start_gather(g);
  }

  // Waits for every prefetch in flight (before the shards change).
  void drain() {
    for (auto& p : pending) {
      if (p) p->work->wait();
      p.reset();
    }
  }

  // All-gathers group g into the full parameter tensors (compute dtype), using its
  // prefetch when one is in flight.
  void unshard(size_t g) {
    if (gathered[g]) return;
    at::NoGradGuard no_grad;
    std::unique_ptr<Gather> ga = pending[g] ? std::move(pending[g]) : start_gather(g);
    ga->work->wait();
    const int64_t total = group_numel(g);
    at::Tensor grid = ga->out.view({W(), total});
    int64_t off = 0;
    for (int i : groups[g]) {
      const Param& p = params[i];
      const int64_t m = p.shard_rows * p.row_numel;
      const at::Tensor& t = full(p);
      alloc_storage(t);
      at::Tensor src = grid.narrow(1, off, m).reshape({W() * p.shard_rows, p.row_numel});
      write_untracked(t, src.narrow(0, 0, p.rows).view(t.sizes()));
      off += m;
    }
    gathered[g] = true;
  }

  void reshard(size_t g) {
    if (!gathered[g] || g == root()) return;
    for (int i : groups[g]) free_storage(full(params[i]));
    gathered[g] = false;
  }

  // Reduce-scatters full gradients (one per parameter of group g, any float dtype; an
  // undefined one counts as zero) in fp32 and adds this rank's part to the shards' grads.
  void reduce_grads(size_t g, const std::vector<at::Tensor>& grads) {
    at::NoGradGuard no_grad;
    const int64_t total = group_numel(g);
    auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
    at::Tensor in = at::zeros({W(), total}, f32);
    int64_t off = 0;
    for (size_t k = 0; k < groups[g].size(); ++k) {
      const Param& p = params[groups[g][k]];
      const int64_t m = p.shard_rows * p.row_numel;
      if (grads[k].defined()) {
        at::Tensor dst = in.narrow(1, off, m).view({W(), p.shard_rows, p.row_numel});
        at::Tensor src = grads[k].reshape({p.rows, p.row_numel});
        for (int r = 0; r < W(); ++r) {
          const int64_t begin = r * p.shard_rows;
          const int64_t n = std::clamp<int64_t>(p.rows - begin, 0, p.shard_rows);
          if (n > 0) dst.select(0, r).narrow(0, 0, n).copy_(src.narrow(0, begin, n));
        }
      }
      off += m;
    }
    at::Tensor out = at::empty({total}, f32);
    comm->reduce_scatter(out, in.view({-1}));
    off = 0;
    for (int i : groups[g]) {
      Param& p = params[i];
      const int64_t m = p.shard_rows * p.row_numel;
      at::Tensor part = out.narrow(0, off, m).view(p.shard.sizes()).to(p.shard.device());
      if (p.shard.grad().defined()) {
        p.shard.mutable_grad().add_(part);
      } else {
        p.shard.mutable_grad() = part.clone();
      }
      off += m;
    }
  }

  std::vector<at::Tensor> group_full(size_t g) const {
    std::vector<at::Tensor> out;
    for (int i : groups[g]) out.push_back(full(params[i]));
    return out;
  }
};

namespace {

struct LayerCall : torch::CustomClassHolder {
  FsdpModel::Impl* fsdp = nullptr;
  int layer = 0;
  bool recompute = false;
  std::shared_ptr<const models::DecoderModel::LayerInputs> inputs;
  at::Tensor h_leaf, out_graph;  // the layer's own graph when not recomputing
};

// A decoder layer whose parameters are gathered around its forward and its backward.
struct FsdpLayer : public torch::autograd::Function<FsdpLayer> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& h,
                                                c10::intrusive_ptr<LayerCall> call) {
    FsdpModel::Impl& f = *call->fsdp;
    const size_t g = static_cast<size_t>(call->layer);
    f.unshard(g);
    f.prefetch(g + 1);
    at::Tensor out;
    if (call->recompute) {
      ctx->save_for_backward({h});
      out = f.model->layer_forward(call->layer, h, *call->inputs);
    } else {
      at::AutoGradMode enable(true);
      call->h_leaf = h.detach().requires_grad_(true);
      call->out_graph = f.model->layer_forward(call->layer, call->h_leaf, *call->inputs);
      out = call->out_graph.detach();
    }
    if (f.options.reshard_after_forward) f.reshard(g);
    ctx->saved_data["call"] = c10::IValue::make_capsule(std::move(call));
    return {out};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto call = c10::static_intrusive_pointer_cast<LayerCall>(ctx->saved_data["call"].toCapsule());
    FsdpModel::Impl& f = *call->fsdp;
    const size_t g = static_cast<size_t>(call->layer);
    f.unshard(g);
    if (g > 0) f.prefetch(g - 1);  // backward runs the layers in reverse
    at::Tensor h_leaf = call->h_leaf, out = call->out_graph;
    if (call->recompute) {
      h_leaf = ctx->get_saved_variables()[0].detach().requires_grad_(true);
      at::AutoGradMode enable(true);
      out = f.model->layer_forward(call->layer, h_leaf, *call->inputs);
    }
    std::vector<at::Tensor> wrt{h_leaf};
    std::vector<at::Tensor> params = f.group_full(g);
    wrt.insert(wrt.end(), params.begin(), params.end());
    std::vector<at::Tensor> gr = torch::autograd::grad({out}, wrt, {grads[0]}, false, false, true);
    call->h_leaf = at::Tensor();
    call->out_graph = at::Tensor();
    f.reduce_grads(g, std::vector<at::Tensor>(gr.begin() + 1, gr.end()));
    f.reshard(g);
    return {gr[0], at::Tensor()};
  }
};

}  // namespace

FsdpModel::FsdpModel(std::shared_ptr<dist::Communicator> comm, const std::filesystem::path& dir,
                     at::ScalarType compute_dtype, const at::Device& device, FsdpOptions options)
    : impl_(std::make_unique<Impl>()) {
  Impl& f = *impl_;
  f.comm = std::move(comm);
  f.options = options;
  f.device = device;
  f.dtype = compute_dtype;
  models::ModelConfig config = models::ModelConfig::load(dir);
  auto opts = at::TensorOptions().dtype(compute_dtype).device(device);
  f.model = std::make_unique<models::DecoderModel>(config, opts);
  const auto& specs = f.model->specs();
  auto reader = models::CheckpointReader::open(dir);
  const int W = f.W(), R = f.R();
  // Offloaded shards of a CUDA model live in pinned host memory (fast, async copies).
  auto shard_opts = at::TensorOptions()
                        .dtype(at::kFloat)
                        .device(f.shard_device())
                        .pinned_memory(options.cpu_offload && device.is_cuda());
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& spec = specs[i];
    Param p;
    p.index = static_cast<int>(i);
    p.rows = spec.shape.at(0);
    p.shard_rows = (p.rows + W - 1) / W;
    for (size_t d = 1; d < spec.shape.size(); ++d) p.row_numel *= spec.shape[d];
    std::vector<int64_t> shard_shape = spec.shape;
    shard_shape[0] = p.shard_rows;
    p.shard = at::zeros(shard_shape, shard_opts);
    if (!reader.contains(spec.name)) fail("{}: tensor '{}' is missing", dir.string(), spec.name);
    const auto& info = reader.info(spec.name);
    if (info.shape != spec.shape)
      fail("{}: tensor '{}' has shape [{}], config.json implies [{}]", dir.string(), spec.name,
           fmt::join(info.shape, ", "), fmt::join(spec.shape, ", "));
    const int64_t begin = std::min(p.rows, R * p.shard_rows);
    const int64_t end = std::min(p.rows, (R + 1) * p.shard_rows);
    if (end > begin)
      p.shard.narrow(0, 0, end - begin).copy_(reader.load_rows(spec.name, begin, end));
    // Full-shape parameter that owns memory only while gathered.
    at::Tensor full = at::empty(spec.shape, opts);
    free_storage(full);
    f.model->parameters()[i] = full;
    f.param_of[full.unsafeGetTensorImpl()] = static_cast<int>(f.params.size());
    f.params.push_back(std::move(p));
  }
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    std::vector<int> g;
    for (const at::Tensor& t : f.model->layer_parameters(static_cast<int>(l)))
      g.push_back(f.param_of.at(t.unsafeGetTensorImpl()));
    f.groups.push_back(std::move(g));
  }
  std::vector<bool> in_layer(f.params.size(), false);
  for (const auto& g : f.groups)
    for (int i : g) in_layer[static_cast<size_t>(i)] = true;
  std::vector<int> root;
  for (size_t i = 0; i < f.params.size(); ++i)
    if (!in_layer[i]) root.push_back(static_cast<int>(i));
  f.groups.push_back(std::move(root));
  f.gathered.assign(f.groups.size(), false);
  f.pending.resize(f.groups.size());
  f.unshard(f.root());

  Impl* self = &f;
  f.model->set_layer_runner([self](int layer, const at::Tensor& h,
                                   std::shared_ptr<const models::DecoderModel::LayerInputs> in) {
    if (!at::GradMode::is_enabled()) {  // log-prob passes: gather, run, free
      self->unshard(static_cast<size_t>(layer));
      self->prefetch(static_cast<size_t>(layer) + 1);
      at::Tensor out = self->model->layer_forward(layer, h, *in);
      self->reshard(static_cast<size_t>(layer));
      return out;
    }
    auto call = c10::make_intrusive<LayerCall>();
    call->fsdp = self;
    call->layer = layer;
    call->recompute = self->model->gradient_checkpointing();
    call->inputs = std::move(in);
    return FsdpLayer::apply(h, std::move(call))[0];
  });
}

FsdpModel::~FsdpModel() = default;

models::DecoderModel& FsdpModel::model() { return *impl_->model; }
dist::Communicator& FsdpModel::comm() { return *impl_->comm; }

// The root group's gradients accumulate in the full tensors' .grad over the micro-batches
// of a step; they are reduce-scattered right before the update.
static void reduce_root_grads(FsdpModel::Impl& f) {
  std::vector<at::Tensor> grads;
  for (int i : f.groups[f.root()]) {
    at::Tensor& t = f.model->parameters()[static_cast<size_t>(f.params[i].index)];
    grads.push_back(t.grad());
    if (t.grad().defined()) t.mutable_grad() = at::Tensor();
  }
  f.reduce_grads(f.root(), grads);
}

train::TrainerHooks FsdpModel::trainer_hooks() {
  Impl* f = impl_.get();
  train::TrainerHooks h;
  for (Param& p : f->params) h.optimizer_params.push_back(p.shard);
  h.reduce_grad_norm_sq = [f](double local) {
    at::Tensor t = at::full({1}, local, at::kDouble);
    f->comm->all_reduce(t);
    return t.item<double>();
  };
  h.reduce_metrics = [f](train::Metrics& m) {
    // Sums over ranks; extremes by max (min as max of negatives).
    std::vector<double> v;
    for (auto& [name, x] : m) {
      const bool is_min = name.size() > 4 && name.compare(name.size() - 4, 4, "_min") == 0;
      v.push_back(is_min ? -x : x);
    }
    at::Tensor all = at::empty({f->W() * static_cast<int64_t>(v.size())}, at::kDouble);
    at::Tensor mine = at::tensor(v, at::kDouble);
    f->comm->all_gather(all, mine);
    at::Tensor grid = all.view({f->W(), -1});
    size_t k = 0;
    for (auto& [name, x] : m) {
      const bool is_max = name.size() > 4 && name.compare(name.size() - 4, 4, "_max") == 0;
      const bool is_min = name.size() > 4 && name.compare(name.size() - 4, 4, "_min") == 0;
      at::Tensor col = grid.select(1, static_cast<int64_t>(k++));
      if (is_max)
        x = col.max().item<double>();
      else if (is_min)
        x = -col.max().item<double>();
      else
        x = col.sum().item<double>();
    }
  };
  h.all_gather = [f](at::Tensor& out, const at::Tensor& in) {
    // Log-probs are computed on the compute device; the group's tensors live there too.
    at::Tensor src = in.to(f->device);
    at::Tensor dst = at::empty({out.numel()}, src.options());
    f->comm->all_gather(dst, src);
    out.copy_(dst);
  };
  h.before_optimizer_step = [f] {
    f->drain();  // a prefetch of the old values must not outlive the step
    reduce_root_grads(*f);
  };
  h.after_optimizer_step = [f] {
    // New shard values: the root group is gathered again (layers gather on demand).
    f->gathered[f->root()] = false;
    f->unshard(f->root());
  };
  return h;
}

void FsdpModel::for_each_full_tensor(
    const std::function<void(const std::string&, const at::Tensor&)>& fn) {
  for_each_full_bucket(0, at::kFloat, [&](const std::vector<NamedTensor>& bucket) {
    for (const auto& [name, t] : bucket) fn(name, t);
  });
}

void FsdpModel::for_each_full_bucket(
    int64_t bucket_bytes, at::ScalarType dtype,
    const std::function<void(const std::vector<NamedTensor>&)>& fn) {
  Impl& f = *impl_;
  f.drain();
  at::NoGradGuard no_grad;
  const int64_t elem = static_cast<int64_t>(c10::elementSize(dtype));
  const auto& specs = f.model->specs();
  auto opts = at::TensorOptions().dtype(dtype).device(f.device);
  size_t first = 0;
  while (first < f.params.size()) {
    // The bucket: tensors in HF order while their shards fit (at least one tensor).
    size_t last = first;
    int64_t total = 0;
    do {
      const Param& p = f.params[last];
      total += p.shard_rows * p.row_numel;
      ++last;
    } while (last < f.params.size() &&
             (total + f.params[last].shard_rows * f.params[last].row_numel) * elem * f.W() <=
                 bucket_bytes);
    at::Tensor local = at::empty({total}, opts);
    int64_t off = 0;
    for (size_t k = first; k < last; ++k) {
      const Param& p = f.params[k];
      const int64_t m = p.shard_rows * p.row_numel;
      local.narrow(0, off, m).copy_(p.shard.reshape({m}));
      off += m;
    }
    at::Tensor out = at::empty({f.W() * total}, opts);
    f.comm->all_gather(out, local);
    at::Tensor grid = out.view({f.W(), total});
    std::vector<NamedTensor> bucket;
    off = 0;
    for (size_t k = first; k < last; ++k) {
      const Param& p = f.params[k];
      const int64_t m = p.shard_rows * p.row_numel;
      const auto& spec = specs[static_cast<size_t>(p.index)];
      at::Tensor rows = grid.narrow(1, off, m).reshape({f.W() * p.shard_rows, p.row_numel});
      bucket.emplace_back(spec.name, rows.narrow(0, 0, p.rows).reshape(spec.shape));
      off += m;
    }
    fn(bucket);
    first = last;
  }
}

namespace {
constexpr const char* kLatest = "latest_checkpointed_iteration.txt";
std::string rank_file(int rank, int world) {
  return fmt::format("rank_{}-of-{}.safetensors", rank, world);
}
}  // namespace

void FsdpModel::save_checkpoint(const std::filesystem::path& save, int64_t iteration,
                                const train::AdamW& optimizer, const nlohmann::json& state,
                                const std::filesystem::path& source) {
  namespace fs = std::filesystem;
  Impl& f = *impl_;
  const fs::path dest = train::iteration_dir(save, iteration);
  fs::path tmp = dest;
  tmp += ".tmp";
  if (f.R() == 0) {
    fs::remove_all(tmp);
    fs::create_directories(tmp / "fsdp");
  }
  f.comm->barrier();
  // Every rank: its shards, their moments, its RNG.
  {
    models::CheckpointWriter writer(tmp / "fsdp" / "tmp-rank" / std::to_string(f.R()), 5ull << 30,
                                    {{"format", "anvil-fsdp"},
                                     {"world_size", std::to_string(f.W())},
                                     {"rank", std::to_string(f.R())}});
    const auto& specs = f.model->specs();
    const auto& opt_params = optimizer.parameters();
    for (size_t i = 0; i < f.params.size(); ++i) {
      const std::string& name = specs[static_cast<size_t>(f.params[i].index)].name;
      if (!opt_params[i].is_same(f.params[i].shard))
        fail("FSDP checkpoint: the optimizer does not hold this model's shards");
      writer.add(name, f.params[i].shard);
      writer.add(name + ".exp_avg", optimizer.exp_avg()[i]);
      writer.add(name + ".exp_avg_sq", optimizer.exp_avg_sq()[i]);
    }
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      writer.add("__rng__.cpu", gen.get_state());
    }
    writer.finish();
    fs::rename(tmp / "fsdp" / "tmp-rank" / std::to_string(f.R()) / "model.safetensors",
               tmp / "fsdp" / rank_file(f.R(), f.W()));
  }
  // The full model as an HF directory (rank 0 writes; every rank gathers).
  {
    std::unique_ptr<models::CheckpointWriter> writer;
    if (f.R() == 0) {
      fs::create_directories(tmp / "model");
      writer = std::make_unique<models::CheckpointWriter>(tmp / "model");
    }
    for_each_full_tensor([&](const std::string& name, const at::Tensor& t) {
      if (writer) writer->add(name, t.to(f.dtype));
    });
    if (writer) {
      writer->finish();
      nlohmann::json config = f.model->config().to_json();
      config["dtype"] = f.dtype == at::kBFloat16 ? "bfloat16"
                        : f.dtype == at::kHalf   ? "float16"
                                                 : "float32";
      write_json_file_atomic(tmp / "model" / "config.json", config);
      train::copy_hf_side_files(source, tmp / "model");
    }
  }
  f.comm->barrier();
  if (f.R() == 0) {
    fs::remove_all(tmp / "fsdp" / "tmp-rank");
    write_json_file_atomic(tmp / "trainer_state.json", {{"format_version", 1},
                                                        {"iteration", iteration},
                                                        {"optimizer_steps", optimizer.steps()},
                                                        {"world_size", f.W()},
                                                        {"state", state}});
    sync_directory(tmp);
    sync_directory(tmp / "fsdp");
    fs::remove_all(dest);
    fs::rename(tmp, dest);
    sync_directory(save);
    write_text_file_atomic(save / kLatest, std::to_string(iteration) + "\n");
    log::get("fsdp")->info("saved sharded checkpoint {} ({} ranks)", dest.string(), f.W());
  }
  f.comm->barrier();
}

std::optional<std::pair<int64_t, nlohmann::json>> FsdpModel::load_checkpoint(
    const std::filesystem::path& load, train::AdamW& optimizer, std::optional<int64_t> iteration) {
  namespace fs = std::filesystem;
  Impl& f = *impl_;
  if (!iteration) {
    if (!fs::exists(load / kLatest)) return std::nullopt;
    std::string text = read_text_file(load / kLatest);
    try {
      iteration = std::stoll(text);
    } catch (const std::exception&) {
      fail("{}: expected an iteration number, found '{}'", (load / kLatest).string(), text);
    }
  }
  const fs::path dir = train::iteration_dir(load, *iteration);
  if (!fs::is_directory(dir)) fail("{}: checkpoint directory is missing", dir.string());
  // Any layout loads: an FSDP group of any size, a Megatron mesh or a single rank; each
  // rank reads the stored boxes its rows overlap.
  train::StateReader reader(dir);
  train::StateLayout mine;
  mine.kind = train::StateLayout::Kind::kFsdp;
  mine.world_size = mine.dp = f.W();
  const bool same = reader.layout() == mine;
  if (!same && f.R() == 0)
    log::get("fsdp")->info("resharding {} (written by {}) onto {}", dir.string(),
                           reader.layout().describe(), mine.describe());
  at::NoGradGuard no_grad;
  const auto& specs = f.model->specs();
  std::vector<at::Tensor> master, m1, m2;
  for (const Param& p : f.params) {
    const auto& spec = specs[static_cast<size_t>(p.index)];
    train::Box box = train::Box::whole(spec.shape);
    box.offset[0] = std::min(p.rows, f.R() * p.shard_rows);
    box.size[0] = std::min(p.rows, (f.R() + 1) * p.shard_rows) - box.offset[0];
    auto parts = reader.read_shard(spec.name, spec.shape, box, p.shard);
    master.push_back(parts[0]);
    m1.push_back(parts[1]);
    m2.push_back(parts[2]);
  }
  optimizer.load_state(reader.optimizer_steps(), master, m1, m2);
  if (auto rng = same ? reader.rng(f.R(), "__rng__.cpu") : std::nullopt) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(*rng);
  }
  f.gathered[f.root()] = false;
  f.unshard(f.root());
  return std::make_pair(*iteration,
                        reader.trainer_state().value("state", nlohmann::json::object()));
}

void FsdpModel::export_hf(const std::filesystem::path& out, const std::filesystem::path& source,
                          at::ScalarType dtype, uint64_t max_shard_bytes) {
  namespace fs = std::filesystem;
  Impl& f = *impl_;
  fs::path tmp = out;
  tmp += ".tmp";
  std::unique_ptr<models::StreamingCheckpointWriter> writer;
  std::string error;
  if (f.R() == 0) {
    try {
      if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
      fs::remove_all(tmp);
      std::vector<models::TensorInfo> layout;
      for (const auto& spec : f.model->specs()) {
        models::TensorInfo t;
        t.name = spec.name;
        t.dtype = models::from_scalar_type(dtype);
        t.shape = spec.shape;
        layout.push_back(std::move(t));
      }
      writer = std::make_unique<models::StreamingCheckpointWriter>(tmp, layout, max_shard_bytes);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  // Every rank takes part in every gather, even after rank 0 failed, so none hangs.
  for_each_full_tensor([&](const std::string& name, const at::Tensor& t) {
    if (!writer || !error.empty()) return;
    try {
      writer->write(name, t.to(dtype));
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  if (f.R() == 0) {
    try {
      if (!error.empty()) fail("{}", error);
      writer->finish();
      nlohmann::json config = f.model->config().to_json();
      config["dtype"] = dtype == at::kBFloat16 ? "bfloat16"
                        : dtype == at::kHalf   ? "float16"
                                               : "float32";
      write_json_file_atomic(tmp / "config.json", config);
      train::copy_hf_side_files(source, tmp);
      sync_directory(tmp);
      fs::remove_all(out);
      fs::rename(tmp, out);
      if (!out.parent_path().empty()) sync_directory(out.parent_path());
      log::get("fsdp")->info("exported HuggingFace model to {}", out.string());
    } catch (const std::exception& e) {
      std::error_code ignored;
      writer.reset();
      fs::remove_all(tmp, ignored);
      error = e.what();
    }
  }
  // Everyone learns whether rank 0 succeeded.
  at::Tensor ok = at::full({1}, error.empty() ? 0.0 : 1.0, at::kDouble);
  f.comm->all_reduce(ok);
  if (ok.item<double>() != 0)
    fail("--save-hf {}: {}", out.string(), f.R() == 0 ? error : "failed on rank 0");
}

void FsdpModel::offload() {
  Impl& f = *impl_;
  f.drain();
  at::NoGradGuard no_grad;
  for (size_t g = 0; g < f.groups.size(); ++g) {
    if (!f.gathered[g]) continue;
    for (int i : f.groups[g]) free_storage(f.full(f.params[static_cast<size_t>(i)]));
    f.gathered[g] = false;
  }
  for (Param& p : f.params) {
    p.shard.mutable_grad() = at::Tensor();
    if (p.shard.is_cpu()) continue;
    p.shard.set_data(train::offload_copy(p.shard, at::kCPU));
  }
}

void FsdpModel::onload() {
  Impl& f = *impl_;
  at::NoGradGuard no_grad;
  for (Param& p : f.params) {
    if (p.shard.device() == f.shard_device()) continue;
    p.shard.set_data(p.shard.to(f.shard_device()));
  }
  f.unshard(f.root());
}

int64_t FsdpModel::shard_bytes() const {
  int64_t n = 0;
  for (const Param& p : impl_->params) n += 2 * p.shard.numel() * 4;  // shard + its gradient
  return n;
}

}  // namespace anvil::fsdp
