#include "backends/megatron/megatron.hpp"

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/common/log.hpp"
#include "backends/models/dtype.hpp"
#include "backends/models/rope.hpp"
#include "backends/models/safetensors.hpp"
#include "backends/models/weights.hpp"
#include "backends/train/checkpoint.hpp"
#include "backends/train/state_reader.hpp"

#include <ATen/ATen.h>
#include <fmt/ranges.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <numeric>
#include <unordered_map>

namespace anvil::megatron {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ---------------------------------------------------------------------------------------
// Mesh

Mesh Mesh::create(std::shared_ptr<dist::Communicator> world, int tp_size, int pp_size) {
  const int W = world->size();
  const bool bad = tp_size < 1 || pp_size < 1 || W % (static_cast<int64_t>(tp_size) * pp_size);
  if (bad) world->barrier();  // every rank has joined: they all fail alike, none hangs
  if (pp_size == 1 && (tp_size < 1 || W % tp_size != 0))
    fail("--tensor-model-parallel-size {} must be >= 1 and divide the world size {}", tp_size, W);
  if (bad)
    fail(
        "--tensor-model-parallel-size {} x --pipeline-model-parallel-size {}: both must be >= 1 "
        "and their product divide the world size {}",
        tp_size, pp_size, W);
  Mesh m;
  m.tp_size = tp_size;
  m.pp_size = pp_size;
  m.dp_size = W / (tp_size * pp_size);
  const int stage_ranks = m.dp_size * tp_size, r = world->rank();
  m.tp_rank = r % tp_size;
  m.dp_rank = r % stage_ranks / tp_size;
  m.pp_rank = r / stage_ranks;
  auto rank_of = [&](int pp, int dp, int tp) { return pp * stage_ranks + dp * tp_size + tp; };
  std::vector<int> tp_ranks, dp_ranks, pp_ranks;
  for (int t = 0; t < tp_size; ++t) tp_ranks.push_back(rank_of(m.pp_rank, m.dp_rank, t));
  for (int d = 0; d < m.dp_size; ++d) dp_ranks.push_back(rank_of(m.pp_rank, d, m.tp_rank));
  for (int p = 0; p < pp_size; ++p) pp_ranks.push_back(rank_of(p, m.dp_rank, m.tp_rank));
  // Group tags name the fixed coordinates, so the groups of one dimension differ.
  m.tp =
      world->new_group(tp_ranks, fmt::format("tp-pp{}-dp{}-of-{}", m.pp_rank, m.dp_rank, tp_size));
  m.dp =
      world->new_group(dp_ranks, fmt::format("dp-pp{}-tp{}-of-{}", m.pp_rank, m.tp_rank, tp_size));
  m.pp =
      world->new_group(pp_ranks, fmt::format("pp-dp{}-tp{}-of-{}", m.dp_rank, m.tp_rank, tp_size));
  if (pp_size == 2) {
    m.embed = m.pp;
  } else if (pp_size > 2 && (m.first_stage() || m.last_stage())) {
    m.embed = world->new_group({pp_ranks.front(), pp_ranks.back()},
                               fmt::format("embed-dp{}-tp{}-of-{}", m.dp_rank, m.tp_rank, tp_size));
  }
  m.world = std::move(world);
  return m;
}

std::pair<int64_t, int64_t> stage_layers(int64_t layers, int stages, int stage) {
  const int64_t base = layers / stages, extra = layers % stages;
  const int64_t begin = stage * base + std::min<int64_t>(stage, extra);
  return {begin, begin + base + (stage < extra ? 1 : 0)};
}

// ---------------------------------------------------------------------------------------
// Tensor-parallel autograd functions (Megatron's f and g operators)

namespace {

struct CommRef : torch::CustomClassHolder {
  dist::Communicator* comm = nullptr;
};

c10::intrusive_ptr<CommRef> ref(dist::Communicator& c) {
  auto r = c10::make_intrusive<CommRef>();
  r->comm = &c;
  return r;
}

dist::Communicator& comm_of(AutogradContext* ctx) {
  return *c10::static_intrusive_pointer_cast<CommRef>(ctx->saved_data["comm"].toCapsule())->comm;
}

// f: identity forward, all-reduce of the gradient over TP in backward (the input of a
// column-parallel layer).
struct CopyToTp : public torch::autograd::Function<CopyToTp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<CommRef> c) {
    ctx->saved_data["comm"] = c10::IValue::make_capsule(std::move(c));
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor g = grads[0].contiguous().clone();
    comm_of(ctx).all_reduce(g);
    return {g, at::Tensor()};
  }
};

// g: all-reduce (sum) over TP forward, identity backward (the output of a row-parallel
// layer, the vocab-parallel embedding).
struct ReduceFromTp : public torch::autograd::Function<ReduceFromTp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<CommRef> c) {
    (void)ctx;
    at::Tensor out = x.contiguous().clone();
    c->comm->all_reduce(out);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    (void)ctx;
    return {grads[0], at::Tensor()};
  }
};

// Sequence parallel: all-gather along the tokens forward (every rank's [n, H] block ->
// [TP * n, H]). Backward: the gradient is reduce-scattered when each rank's is a partial
// sum (the input of a column-parallel layer), or this rank's block is taken when it is
// already the full gradient on every rank (`reduce` false: the final hidden states, whose
// consumer all-reduces their gradient itself).
struct GatherFromSp : public torch::autograd::Function<GatherFromSp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<CommRef> c, bool reduce) {
    dist::Communicator& tp = *c->comm;
    ctx->saved_data["comm"] = c10::IValue::make_capsule(std::move(c));
    ctx->saved_data["reduce"] = reduce;
    at::Tensor in = x.contiguous();
    at::Tensor out = at::empty({tp.size() * x.numel()}, x.options());
    tp.all_gather(out, in.view({-1}));
    return out.view({tp.size() * x.size(0), x.size(1)});
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    dist::Communicator& tp = comm_of(ctx);
    at::Tensor g = grads[0].contiguous();
    const int64_t n = g.size(0) / tp.size();
    if (!ctx->saved_data["reduce"].toBool())
      return {g.narrow(0, tp.rank() * n, n).clone(), at::Tensor(), at::Tensor()};
    at::Tensor out = at::empty({g.numel() / tp.size()}, g.options());
    tp.reduce_scatter(out, g.view({-1}));
    return {out.view({n, g.size(1)}), at::Tensor(), at::Tensor()};
  }
};

// Sequence parallel: reduce-scatter along the tokens forward (partial sums [TP * n, H] ->
// this rank's summed [n, H] block), all-gather of the gradient backward.
struct ScatterToSp : public torch::autograd::Function<ScatterToSp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<CommRef> c) {
    dist::Communicator& tp = *c->comm;
    ctx->saved_data["comm"] = c10::IValue::make_capsule(std::move(c));
    at::Tensor in = x.contiguous();
    at::Tensor out = at::empty({x.numel() / tp.size()}, x.options());
    tp.reduce_scatter(out, in.view({-1}));
    return out.view({x.size(0) / tp.size(), x.size(1)});
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    dist::Communicator& tp = comm_of(ctx);
    at::Tensor g = grads[0].contiguous();
    at::Tensor out = at::empty({tp.size() * g.numel()}, g.options());
    tp.all_gather(out, g.view({-1}));
    return {out.view({tp.size() * g.size(0), g.size(1)}), at::Tensor()};
  }
};

// Rows [0, n) of x followed by zero rows up to `rows`.
at::Tensor pad_rows(const at::Tensor& x, int64_t rows) {
  if (x.size(0) == rows) return x;
  return at::constant_pad_nd(x, {0, 0, 0, rows - x.size(0)}, 0);
}

at::Tensor copy_to_tp(const at::Tensor& x, dist::Communicator& tp) {
  if (tp.size() == 1) return x;
  return CopyToTp::apply(x, ref(tp));
}

at::Tensor reduce_from_tp(const at::Tensor& x, dist::Communicator& tp) {
  if (tp.size() == 1) return x;
  return ReduceFromTp::apply(x, ref(tp));
}

// Per-row maximum over the TP group of `local` ([n]): all-gather, then max.
at::Tensor tp_max(const at::Tensor& local, dist::Communicator& tp) {
  if (tp.size() == 1) return local;
  at::Tensor all = at::empty({tp.size() * local.numel()}, local.options());
  tp.all_gather(all, local.contiguous());
  return std::get<0>(all.view({tp.size(), local.numel()}).max(0));
}

// Vocab-parallel log-probs / entropy (Megatron's VocabParallelCrossEntropy, with entropy
// and chunking as train::token_logprobs). Each rank holds head rows [vb, vb + Vl). With z
// the scaled logits of a row: lse = m + log(sum exp(z - m)), lp = z[y] - lse,
// H = lse - E_p[z]; the statistics are reduced over TP chunk by chunk. The gradient of
// hidden is this rank's partial sum (the caller's CopyToTp all-reduces it).
struct VocabParallelLogProb : public torch::autograd::Function<VocabParallelLogProb> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden,
                               const at::Tensor& head, const at::Tensor& targets,
                               double temperature, int64_t chunk, bool with_entropy,
                               int64_t vocab_begin, c10::intrusive_ptr<CommRef> c) {
    dist::Communicator& tp = *c->comm;
    const int64_t T = hidden.size(0), Vl = head.size(0);
    auto f32 = hidden.options().dtype(at::kFloat);
    at::Tensor logprobs = at::empty({T}, f32), lse = at::empty({T}, f32);
    at::Tensor entropy = with_entropy ? at::empty({T}, f32) : at::empty({0}, f32);
    at::Tensor mean_z = with_entropy ? at::empty({T}, f32) : at::empty({0}, f32);
    at::Tensor local_t = targets - vocab_begin;
    at::Tensor in_range = (local_t >= 0) & (local_t < Vl);
    at::Tensor safe_t = at::where(in_range, local_t, at::zeros_like(local_t));
    for (int64_t start = 0; start < T; start += chunk) {
      const int64_t n = std::min(chunk, T - start);
      at::Tensor z = at::linear(hidden.narrow(0, start, n), head).to(at::kFloat);  // [n, Vl]
      if (temperature != 1.0) z = z / temperature;
      at::Tensor m = tp_max(std::get<0>(z.max(-1)), tp);  // [n]
      at::Tensor e = (z - m.unsqueeze(1)).exp();
      at::Tensor zy = z.gather(1, safe_t.narrow(0, start, n).unsqueeze(1)).squeeze(1) *
                      in_range.narrow(0, start, n).to(at::kFloat);
      std::vector<at::Tensor> parts{e.sum(-1), zy};
      if (with_entropy) parts.push_back((e * z).sum(-1));
      at::Tensor stats = at::stack(parts, 0);  // [2 or 3, n]
      if (tp.size() > 1) tp.all_reduce(stats);
      at::Tensor l = m + stats[0].log();
      lse.narrow(0, start, n).copy_(l);
      logprobs.narrow(0, start, n).copy_(stats[1] - l);
      if (with_entropy) {
        at::Tensor ez = stats[2] / stats[0];
        mean_z.narrow(0, start, n).copy_(ez);
        entropy.narrow(0, start, n).copy_(l - ez);
      }
    }
    ctx->save_for_backward({hidden, head, safe_t, in_range, lse, mean_z});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["chunk"] = chunk;
    ctx->set_materialize_grads(false);
    return {logprobs, entropy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &hidden = saved[0], &head = saved[1], &safe_t = saved[2];
    const at::Tensor &in_range = saved[3], &lse = saved[4], &mean_z = saved[5];
    const double temperature = ctx->saved_data["temperature"].toDouble();
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const at::Tensor& g_lp = grads[0];
    const at::Tensor& g_ent = grads[1];
    const bool want_h = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1);
    const int64_t T = hidden.size(0);
    at::Tensor grad_h, grad_w;
    if (want_h) grad_h = at::empty_like(hidden);
    if (want_w) grad_w = at::zeros(head.sizes(), head.options().dtype(at::kFloat));
    for (int64_t start = 0; start < T; start += chunk) {
      const int64_t n = std::min(chunk, T - start);
      at::Tensor z = at::linear(hidden.narrow(0, start, n), head).to(at::kFloat);
      if (temperature != 1.0) z = z / temperature;
      at::Tensor p = (z - lse.narrow(0, start, n).unsqueeze(1)).exp_();  // [n, Vl]
      at::Tensor gz = at::zeros_like(z);
      if (g_lp.defined()) {
        at::Tensor g = g_lp.narrow(0, start, n).unsqueeze(1);  // [n, 1]
        gz.sub_(p * g);
        gz.scatter_add_(1, safe_t.narrow(0, start, n).unsqueeze(1),
                        g * in_range.narrow(0, start, n).unsqueeze(1).to(at::kFloat));
      }
      if (g_ent.defined() && g_ent.numel() > 0) {
        at::Tensor g = g_ent.narrow(0, start, n).unsqueeze(1);
        gz.add_(p * (mean_z.narrow(0, start, n).unsqueeze(1) - z) * g);
      }
      if (temperature != 1.0) gz.div_(temperature);
      at::Tensor gl = gz.to(head.scalar_type());
      if (want_h) grad_h.narrow(0, start, n).copy_(at::matmul(gl, head));
      if (want_w) grad_w.add_(at::matmul(gl.t(), hidden.narrow(0, start, n)).to(at::kFloat));
    }
    if (want_w) grad_w = grad_w.to(head.scalar_type());
    return {grad_h,       grad_w,       at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// MegatronModel

struct LayerInputs {
  models::PackedBatch batch;
  at::Tensor cos, sin;  // [T, D]
};

struct MegatronModel::Impl {
  Mesh mesh;
  models::ModelConfig config;
  at::ScalarType dtype = at::kFloat;
  at::Device device{at::kCPU};
  std::unique_ptr<models::Rope> rope;
  std::vector<ShardSpec> specs;
  std::vector<at::Tensor> params;
  std::unordered_map<std::string, int> index;
  bool checkpointing = false;
  bool sequence_parallel = false;
  int64_t nq = 0, nkv = 0;  // local heads

  struct Layer {
    int input_norm, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, q_norm, k_norm, post_norm, gate_w,
        gate_b, up_w, up_b, down_w, down_b;
  };
  std::vector<Layer> layers;  // this stage's layers
  // Indices into params: the embedding (first stage), the final norm and the LM head (last
  // stage: lm_head.weight, the embedding itself with PP = 1 and tied embeddings, or the
  // tied copy); -1 where this stage has none.
  int embed = -1, final_norm = -1, head = -1;
  int tied_copy = -1;  // the last stage's tied copy of the embedding (PP > 1)

  // Every HF tensor in HF order: the stage that holds it and its index in params there.
  struct Owned {
    std::string name;
    std::vector<int64_t> full;
    int stage = 0;
    int local = -1;  // on this stage
  };
  std::vector<Owned> all;

  dist::Communicator& tp() const { return *mesh.tp; }
  bool first() const { return mesh.first_stage(); }
  bool last() const { return mesh.last_stage(); }
  int64_t activation_rows(int64_t T) const {
    return sequence_parallel ? (T + mesh.tp_size - 1) / mesh.tp_size : T;
  }
  const at::Tensor& p(int i) const {
    static const at::Tensor kUndefined;
    return i < 0 ? kUndefined : params[static_cast<size_t>(i)];
  }
  int find(const std::string& name) const {
    auto it = index.find(name);
    return it == index.end() ? -1 : it->second;
  }

  std::vector<at::Tensor> layer_parameters(int l) const {
    const Layer& w = layers[static_cast<size_t>(l)];
    std::vector<at::Tensor> out;
    for (int i : {w.input_norm, w.q_w, w.q_b, w.k_w, w.k_b, w.v_w, w.v_b, w.o_w, w.o_b, w.q_norm,
                  w.k_norm, w.post_norm, w.gate_w, w.gate_b, w.up_w, w.up_b, w.down_w, w.down_b})
      if (i >= 0) out.push_back(params[static_cast<size_t>(i)]);
    return out;
  }

  // Self-attention of this rank's heads over a packed batch (no KV cache); returns the
  // row-parallel o_proj's partial output [T, H] (before the TP reduction).
  at::Tensor attention(const Layer& w, const at::Tensor& x, const LayerInputs& in) const {
    const int64_t T = x.size(0), D = config.head_dim;
    at::Tensor q = at::linear(x, p(w.q_w), p(w.q_b)).view({T, nq, D});
    at::Tensor k = at::linear(x, p(w.k_w), p(w.k_b)).view({T, nkv, D});
    at::Tensor v = at::linear(x, p(w.v_w), p(w.v_b)).view({T, nkv, D});
    if (config.qk_norm) {
      q = models::rms_norm(q, p(w.q_norm), config.rms_norm_eps);
      k = models::rms_norm(k, p(w.k_norm), config.rms_norm_eps);
    }
    q = models::apply_rotary(q, in.cos, in.sin);
    k = models::apply_rotary(k, in.cos, in.sin);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    at::Tensor attn = models::causal_packed_attention(q, k, v, in.batch.seq_lens, scale);
    return at::linear(attn, p(w.o_w));
  }

  // The column-parallel input from the (normed) residual stream: the replicated [T, H]
  // itself, or under sequence parallelism this rank's [Tp / TP, H] block all-gathered.
  at::Tensor to_column(const at::Tensor& x) const {
    return sequence_parallel ? GatherFromSp::apply(x, ref(tp()), true) : copy_to_tp(x, tp());
  }
  // The row-parallel partial output [rows, H] summed over TP: replicated, or under
  // sequence parallelism this rank's block of the zero-padded [Tp, H] sum.
  at::Tensor from_row(const at::Tensor& y, int64_t padded) const {
    return sequence_parallel ? ScatterToSp::apply(pad_rows(y, padded), ref(tp()))
                             : reduce_from_tp(y, tp());
  }

  at::Tensor layer_forward(int l, const at::Tensor& h, const LayerInputs& in) const {
    const Layer& w = layers[static_cast<size_t>(l)];
    dist::Communicator& c = tp();
    if (sequence_parallel) {
      // h is this rank's block of the padded tokens; attention needs the real T rows.
      const int64_t T = in.batch.tokens.size(0), padded = h.size(0) * c.size();
      at::Tensor x = to_column(models::rms_norm(h, p(w.input_norm), config.rms_norm_eps));
      at::Tensor a = from_row(attention(w, x.narrow(0, 0, T), in), padded);
      if (w.o_b >= 0) a = a + p(w.o_b);
      at::Tensor out = h + a;
      x = to_column(models::rms_norm(out, p(w.post_norm), config.rms_norm_eps));
      at::Tensor gate = at::silu(at::linear(x, p(w.gate_w), p(w.gate_b)));
      at::Tensor up = at::linear(x, p(w.up_w), p(w.up_b));
      at::Tensor m = from_row(at::linear(gate * up, p(w.down_w)), padded);
      if (w.down_b >= 0) m = m + p(w.down_b);
      return out + m;
    }
    at::Tensor x = copy_to_tp(models::rms_norm(h, p(w.input_norm), config.rms_norm_eps), c);
    at::Tensor a = reduce_from_tp(attention(w, x, in), c);
    if (w.o_b >= 0) a = a + p(w.o_b);
    at::Tensor out = h + a;
    x = copy_to_tp(models::rms_norm(out, p(w.post_norm), config.rms_norm_eps), c);
    at::Tensor gate = at::silu(at::linear(x, p(w.gate_w), p(w.gate_b)));
    at::Tensor up = at::linear(x, p(w.up_w), p(w.up_b));
    at::Tensor m = reduce_from_tp(at::linear(gate * up, p(w.down_w)), c);
    if (w.down_b >= 0) m = m + p(w.down_b);
    return out + m;
  }
};

namespace {

// Per-layer recomputation (--gradient-checkpointing) with the layer's TP collectives run
// again in backward (every TP rank recomputes the same layers in the same order).
struct LayerCall : torch::CustomClassHolder {
  const MegatronModel::Impl* model = nullptr;
  int layer = 0;
  std::shared_ptr<const LayerInputs> inputs;
};

struct RecomputedLayer : public torch::autograd::Function<RecomputedLayer> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h, at::TensorList params,
                            c10::intrusive_ptr<LayerCall> call) {
    (void)params;
    ctx->save_for_backward({h});
    at::Tensor out = call->model->layer_forward(call->layer, h, *call->inputs);
    ctx->saved_data["call"] = c10::IValue::make_capsule(std::move(call));
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto call = c10::static_intrusive_pointer_cast<LayerCall>(ctx->saved_data["call"].toCapsule());
    std::vector<at::Tensor> wrt{ctx->get_saved_variables()[0].detach().requires_grad_(true)};
    for (const at::Tensor& t : call->model->layer_parameters(call->layer)) wrt.push_back(t);
    at::Tensor out;
    {
      at::AutoGradMode enable(true);
      out = call->model->layer_forward(call->layer, wrt[0], *call->inputs);
    }
    std::vector<at::Tensor> g = torch::autograd::grad({out}, wrt, {grads[0]}, false, false, true);
    g.push_back(at::Tensor());
    return g;
  }
};

}  // namespace

MegatronModel::MegatronModel(Mesh mesh, const std::filesystem::path& dir,
                             at::ScalarType compute_dtype, const at::Device& device)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.mesh = std::move(mesh);
  m.config = models::ModelConfig::load(dir);
  m.dtype = compute_dtype;
  m.device = device;
  m.rope = std::make_unique<models::Rope>(m.config);
  const auto& c = m.config;
  const int64_t T = m.mesh.tp_size, r = m.mesh.tp_rank;
  const std::string cfg = (dir / "config.json").string();
  if (c.num_attention_heads % T != 0)
    fail("{}: num_attention_heads {} does not divide by --tensor-model-parallel-size {}", cfg,
         c.num_attention_heads, T);
  if (c.num_key_value_heads % T != 0)
    fail(
        "{}: num_key_value_heads {} does not divide by --tensor-model-parallel-size {} "
        "(replicating key-value heads is not implemented)",
        cfg, c.num_key_value_heads, T);
  if (c.intermediate_size % T != 0)
    fail("{}: intermediate_size {} does not divide by --tensor-model-parallel-size {}", cfg,
         c.intermediate_size, T);
  const int64_t vocab_part = (c.vocab_size + T - 1) / T;
  if ((T - 1) * vocab_part >= c.vocab_size)
    fail("{}: vocab_size {} is too small for --tensor-model-parallel-size {}", cfg, c.vocab_size,
         T);
  m.nq = c.num_attention_heads / T;
  m.nkv = c.num_key_value_heads / T;

  const int P = m.mesh.pp_size;
  if (c.num_hidden_layers < P)
    fail("{}: num_hidden_layers {} is fewer than --pipeline-model-parallel-size {}", cfg,
         c.num_hidden_layers, P);
  const auto [layer_begin, layer_end] = stage_layers(c.num_hidden_layers, P, m.mesh.pp_rank);
  // The stage holding a tensor: the embedding on the first, its layer's, the final norm
  // and LM head on the last.
  auto stage_of = [&](const std::string& n) {
    static const std::string kLayers = "model.layers.";
    if (n == "model.embed_tokens.weight") return 0;
    if (n.compare(0, kLayers.size(), kLayers) != 0) return P - 1;
    const int64_t l = std::stoll(n.substr(kLayers.size()));
    for (int st = 0; st < P; ++st)
      if (l < stage_layers(c.num_hidden_layers, P, st).second) return st;
    return P - 1;
  };

  auto reader = models::CheckpointReader::open(dir);
  auto opts = at::TensorOptions().dtype(compute_dtype).device(device);
  auto load = [&](const models::ParamSpec& ps, bool tied_copy) {
    ShardSpec s;
    s.name = ps.name;
    s.full = ps.shape;
    s.tied_copy = tied_copy;
    const std::string& n = ps.name;
    if (n == "model.embed_tokens.weight" || n == "lm_head.weight") {
      s.split = Split::kVocab;
    } else if (n.find(".q_proj.") != std::string::npos || n.find(".k_proj.") != std::string::npos ||
               n.find(".v_proj.") != std::string::npos ||
               n.find(".gate_proj.") != std::string::npos ||
               n.find(".up_proj.") != std::string::npos) {
      s.split = Split::kColumn;
    } else if (ends_with(n, "o_proj.weight") || ends_with(n, "down_proj.weight")) {
      s.split = Split::kRow;
    } else {
      s.split = Split::kReplicated;
      s.reduce_grad_over_tp = ends_with(n, "q_norm.weight") || ends_with(n, "k_norm.weight");
    }
    s.local = s.full;
    if (T > 1 && s.split != Split::kReplicated) {
      const size_t d = s.split == Split::kRow ? 1 : 0;
      const int64_t part = s.split == Split::kVocab ? vocab_part : s.full[d] / T;
      s.begin = std::min(s.full[d], r * part);
      s.end = std::min(s.full[d], (r + 1) * part);
      s.local[d] = s.end - s.begin;
    } else {
      s.end = s.full.empty() ? 0 : s.full[s.split == Split::kRow ? 1 : 0];
    }
    if (!reader.contains(n)) fail("{}: tensor '{}' is missing", dir.string(), n);
    const auto& info = reader.info(n);
    if (info.shape != s.full)
      fail("{}: tensor '{}' has shape [{}], config.json implies [{}]", dir.string(), n,
           fmt::join(info.shape, ", "), fmt::join(s.full, ", "));
    at::Tensor t;
    if (T == 1 || s.split == Split::kReplicated)
      t = reader.load(n);
    else if (s.split == Split::kRow)
      t = reader.load(n).narrow(1, s.begin, s.end - s.begin);
    else
      t = reader.load_rows(n, s.begin, s.end);
    const int index = static_cast<int>(m.specs.size());
    if (!tied_copy) m.index[n] = index;
    m.params.push_back(t.to(opts).contiguous().clone());
    m.specs.push_back(std::move(s));
    return index;
  };
  const std::vector<models::ParamSpec> all_specs = models::parameter_specs(c);
  bool tied = true;
  for (const models::ParamSpec& ps : all_specs) {
    Impl::Owned o{ps.name, ps.shape, stage_of(ps.name), -1};
    if (o.stage == m.mesh.pp_rank) o.local = load(ps, false);
    tied &= ps.name != "lm_head.weight";
    m.all.push_back(std::move(o));
  }
  if (tied && P > 1 && m.last()) m.tied_copy = load(all_specs.front(), true);
  if (m.first()) m.embed = m.find("model.embed_tokens.weight");
  if (m.last()) {
    m.final_norm = m.find("model.norm.weight");
    m.head = m.find("lm_head.weight");
    if (m.head < 0) m.head = tied && P > 1 ? m.tied_copy : m.embed;
  }
  for (int64_t l = layer_begin; l < layer_end; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    m.layers.push_back(Impl::Layer{
        m.find(p + "input_layernorm.weight"), m.find(p + "self_attn.q_proj.weight"),
        m.find(p + "self_attn.q_proj.bias"), m.find(p + "self_attn.k_proj.weight"),
        m.find(p + "self_attn.k_proj.bias"), m.find(p + "self_attn.v_proj.weight"),
        m.find(p + "self_attn.v_proj.bias"), m.find(p + "self_attn.o_proj.weight"),
        m.find(p + "self_attn.o_proj.bias"), m.find(p + "self_attn.q_norm.weight"),
        m.find(p + "self_attn.k_norm.weight"), m.find(p + "post_attention_layernorm.weight"),
        m.find(p + "mlp.gate_proj.weight"), m.find(p + "mlp.gate_proj.bias"),
        m.find(p + "mlp.up_proj.weight"), m.find(p + "mlp.up_proj.bias"),
        m.find(p + "mlp.down_proj.weight"), m.find(p + "mlp.down_proj.bias")});
  }
  ANVIL_CHECK(m.first() == (m.embed >= 0));
  ANVIL_CHECK(!m.last() || (m.final_norm >= 0 && m.head >= 0));
}

MegatronModel::~MegatronModel() = default;

const models::ModelConfig& MegatronModel::config() const { return impl_->config; }
const Mesh& MegatronModel::mesh() const { return impl_->mesh; }
const std::vector<ShardSpec>& MegatronModel::shard_specs() const { return impl_->specs; }
std::vector<at::Tensor>& MegatronModel::parameters() { return impl_->params; }
at::ScalarType MegatronModel::dtype() const { return impl_->dtype; }
at::Device MegatronModel::device() const { return impl_->device; }
void MegatronModel::set_gradient_checkpointing(bool on) { impl_->checkpointing = on; }
void MegatronModel::set_sequence_parallel(bool on) {
  impl_->sequence_parallel = on && impl_->mesh.tp_size > 1;
  // Each rank's replicated parameters (norms, row-parallel biases) then see only its block
  // of tokens: their gradients are summed over TP.
  for (ShardSpec& s : impl_->specs)
    if (s.split == Split::kReplicated)
      s.reduce_grad_over_tp = impl_->sequence_parallel || ends_with(s.name, "q_norm.weight") ||
                              ends_with(s.name, "k_norm.weight");
}
bool MegatronModel::sequence_parallel() const { return impl_->sequence_parallel; }

namespace {

// The rotary tables and batch a stage's layers need (checked as DecoderModel checks it).
std::shared_ptr<LayerInputs> layer_inputs(const MegatronModel::Impl& m,
                                          const models::PackedBatch& batch) {
  const int64_t T = batch.tokens.size(0);
  const int64_t total = std::accumulate(batch.seq_lens.begin(), batch.seq_lens.end(), int64_t{0});
  if (total != T || batch.positions.size(0) != T)
    fail("PackedBatch: {} tokens, {} positions, sequence lengths summing to {}", T,
         batch.positions.size(0), total);
  if (T > 0) {
    const int64_t lo = batch.tokens.min().item<int64_t>(), hi = batch.tokens.max().item<int64_t>();
    if (lo < 0 || hi >= m.config.vocab_size)
      fail("token id out of range [0, {}): found {}", m.config.vocab_size, lo < 0 ? lo : hi);
  }
  // Rotary tables as DecoderModel::forward_hidden builds them.
  auto in = std::make_shared<LayerInputs>();
  in->batch = batch;
  at::Tensor pos_cpu = batch.positions.to(at::kCPU);
  const int64_t* pos = pos_cpu.data_ptr<int64_t>();
  std::vector<at::Tensor> cos_parts, sin_parts;
  if (m.config.rope.type == "dynamic") {
    int64_t off = 0;
    for (int64_t n : batch.seq_lens) {
      const int64_t max_pos = *std::max_element(pos + off, pos + off + n);
      auto [c, s] = m.rope->cos_sin(batch.positions.narrow(0, off, n), m.dtype, max_pos + 1);
      cos_parts.push_back(c);
      sin_parts.push_back(s);
      off += n;
    }
  } else if (T > 0) {
    auto [c, s] = m.rope->cos_sin(batch.positions, m.dtype, *std::max_element(pos, pos + T) + 1);
    cos_parts.push_back(c);
    sin_parts.push_back(s);
  }
  in->cos = cos_parts.size() == 1 ? cos_parts[0] : at::cat(cos_parts, 0);
  in->sin = sin_parts.size() == 1 ? sin_parts[0] : at::cat(sin_parts, 0);
  return in;
}

// Vocab-parallel embedding: rows outside this rank's slice contribute zero.
at::Tensor embed_forward(const MegatronModel::Impl& m, const models::PackedBatch& batch) {
  const ShardSpec& es = m.specs[static_cast<size_t>(m.embed)];
  const at::Tensor& E = m.p(m.embed);
  if (m.mesh.tp_size == 1) return at::embedding(E, batch.tokens);
  at::Tensor local = batch.tokens - es.begin;
  at::Tensor ok = (local >= 0) & (local < es.end - es.begin);
  at::Tensor emb = at::embedding(E, at::where(ok, local, at::zeros_like(local)));
  emb = emb * ok.unsqueeze(1).to(emb.scalar_type());
  if (m.sequence_parallel) {
    const int64_t tp = m.mesh.tp_size, T = batch.tokens.size(0);
    return ScatterToSp::apply(pad_rows(emb, (T + tp - 1) / tp * tp), ref(m.tp()));
  }
  return reduce_from_tp(emb, m.tp());
}

at::Tensor run_stage(const MegatronModel::Impl& m, const std::shared_ptr<LayerInputs>& in,
                     const at::Tensor& input) {
  const int64_t T = in->batch.tokens.size(0);
  at::Tensor h;
  if (m.first()) {
    h = embed_forward(m, in->batch);
  } else {
    const std::vector<int64_t> want{m.activation_rows(T), m.config.hidden_size};
    if (!input.defined() || input.sizes().vec() != want)
      fail("pipeline stage {}: the input activation must be [{}] for {} tokens", m.mesh.pp_rank,
           fmt::join(want, ", "), T);
    h = input;
  }
  const bool recompute = m.checkpointing && at::GradMode::is_enabled();
  for (size_t l = 0; l < m.layers.size(); ++l) {
    if (recompute) {
      auto call = c10::make_intrusive<LayerCall>();
      call->model = &m;
      call->layer = static_cast<int>(l);
      call->inputs = in;
      std::vector<at::Tensor> ps = m.layer_parameters(static_cast<int>(l));
      h = RecomputedLayer::apply(h, at::TensorList(ps), std::move(call));
    } else {
      h = m.layer_forward(static_cast<int>(l), h, *in);
    }
  }
  if (!m.last()) return h;
  at::Tensor out = models::rms_norm(h, m.p(m.final_norm), m.config.rms_norm_eps);
  // Sequence parallel: the head needs every token; the gradient is reduce-scattered back.
  if (m.sequence_parallel) out = GatherFromSp::apply(out, ref(m.tp()), false).narrow(0, 0, T);
  return out;
}

}  // namespace

at::Tensor MegatronModel::stage_forward(const models::PackedBatch& batch,
                                        const at::Tensor& input) const {
  return run_stage(*impl_, layer_inputs(*impl_, batch), input);
}

int64_t MegatronModel::activation_rows(int64_t tokens) const {
  return impl_->activation_rows(tokens);
}

at::Tensor MegatronModel::forward_hidden(const models::PackedBatch& batch) const {
  const Impl& m = *impl_;
  auto in = layer_inputs(m, batch);
  if (m.mesh.pp_size == 1) return run_stage(m, in, at::Tensor());
  if (at::GradMode::is_enabled())
    fail(
        "forward_hidden under pipeline parallelism runs without gradients (MegatronTrainer "
        "trains through the 1F1B schedule)");
  const int64_t T = batch.tokens.size(0), H = m.config.hidden_size;
  auto opts = at::TensorOptions().dtype(m.dtype).device(m.device);
  dist::Communicator& pp = *m.mesh.pp;
  at::Tensor x;
  if (!m.first()) {
    x = at::empty({m.activation_rows(T), H}, opts);
    pp.recv(x, m.mesh.pp_rank - 1, 0);
  }
  at::Tensor y = run_stage(m, in, x);
  // The next stage posts its receive without waiting for anything of ours.
  if (!m.last()) pp.send_async(y.contiguous(), m.mesh.pp_rank + 1, 0)->wait();
  at::Tensor out = m.last() ? y.contiguous() : at::empty({T, H}, opts);
  pp.broadcast(out, m.mesh.pp_size - 1);
  return out;
}

train::LogProbResult MegatronModel::token_logprobs(const at::Tensor& hidden,
                                                   const at::Tensor& targets,
                                                   const train::LogProbOptions& options) const {
  const Impl& m = *impl_;
  if (!m.last())
    fail("token_logprobs: pipeline stage {} of {} holds no LM head (only the last does)",
         m.mesh.pp_rank, m.mesh.pp_size);
  const at::Tensor& head = m.p(m.head);
  if (hidden.dim() != 2 || hidden.size(1) != head.size(1))
    fail("token_logprobs: hidden [{}] and the head slice [{}] do not match",
         fmt::join(hidden.sizes(), ", "), fmt::join(head.sizes(), ", "));
  if (targets.dim() != 1 || targets.size(0) != hidden.size(0))
    fail("token_logprobs: {} targets for {} hidden rows", targets.numel(), hidden.size(0));
  if (!(options.temperature > 0))
    fail("token_logprobs: temperature must be > 0, got {}", options.temperature);
  if (hidden.size(0) > 0) {
    const int64_t lo = targets.min().item<int64_t>(), hi = targets.max().item<int64_t>();
    if (lo < 0 || hi >= m.config.vocab_size)
      fail("token_logprobs: target id {} outside [0, {})", lo < 0 ? lo : hi, m.config.vocab_size);
  }
  const ShardSpec& hs = m.specs[static_cast<size_t>(m.head)];
  at::Tensor t = targets.to(hidden.device(), at::kLong);
  at::Tensor h = copy_to_tp(hidden, m.tp());
  variable_list out = VocabParallelLogProb::apply(h, head, t, options.temperature,
                                                  std::max<int64_t>(1, options.chunk_tokens),
                                                  options.with_entropy, hs.begin, ref(m.tp()));
  train::LogProbResult r;
  r.logprobs = out[0];
  if (options.with_entropy) r.entropy = out[1];
  return r;
}

// ---------------------------------------------------------------------------------------
// MegatronTrainer: distributed optimizer and the training loop

namespace {

struct Shard {
  int64_t rows = 0, shard_rows = 0, row_numel = 1;
  at::Tensor master;  // fp32 [shard_rows, ...]: the optimizer's parameter
};

at::Tensor mask_of(const train::TrainSample& s) {
  if (s.loss_mask.empty()) return at::ones({s.response_length}, at::kFloat);
  return at::tensor(s.loss_mask, at::kFloat);
}

at::Tensor gather_rows(const std::vector<at::Tensor>& per_sample, const std::vector<int64_t>& idx,
                       const at::Device& device) {
  if (per_sample.empty()) return at::Tensor();
  std::vector<at::Tensor> parts;
  for (int64_t i : idx) parts.push_back(per_sample[static_cast<size_t>(i)]);
  return at::cat(parts, 0).to(device, at::kFloat);
}

void add_metric(train::Metrics& m, const std::string& name, double v) {
  auto it = m.find(name);
  if (it == m.end())
    m[name] = v;
  else if (ends_with(name, "_max"))
    it->second = std::max(it->second, v);
  else if (ends_with(name, "_min"))
    it->second = std::min(it->second, v);
  else
    it->second += v;
}

std::vector<std::vector<int64_t>> token_bounded_batches(
    const std::vector<train::TrainSample>& samples, int64_t max_tokens) {
  std::vector<std::vector<int64_t>> batches;
  int64_t used = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const int64_t n = static_cast<int64_t>(samples[i].tokens.size());
    if (batches.empty() || used + n > max_tokens) {
      batches.emplace_back();
      used = 0;
    }
    batches.back().push_back(static_cast<int64_t>(i));
    used += n;
  }
  return batches;
}

// One micro-batch as every stage sees it: the packed tokens, and the hidden rows whose
// next tokens are response tokens (the last stage's log-prob targets).
struct MicroBatch {
  models::PackedBatch batch;
  at::Tensor rows, targets;
  std::vector<int64_t> response_lengths;
};

MicroBatch prepare_micro_batch(const std::vector<train::TrainSample>& samples,
                               const std::vector<int64_t>& indices, const at::Device& device) {
  std::vector<std::vector<int64_t>> seqs;
  std::vector<int64_t> rows, targets;
  MicroBatch out;
  int64_t offset = 0;
  for (int64_t i : indices) {
    const train::TrainSample& s = samples[static_cast<size_t>(i)];
    const int64_t L = static_cast<int64_t>(s.tokens.size());
    for (int64_t t = L - s.response_length; t < L; ++t) {
      rows.push_back(offset + t - 1);
      targets.push_back(s.tokens[static_cast<size_t>(t)]);
    }
    out.response_lengths.push_back(s.response_length);
    seqs.push_back(s.tokens);
    offset += L;
  }
  out.batch = models::PackedBatch::pack(seqs, device);
  out.rows = at::tensor(rows, at::kLong).to(device);
  out.targets = at::tensor(targets, at::kLong);
  return out;
}

struct MicroBatchForward {
  at::Tensor logprobs, entropy;
  std::vector<int64_t> response_lengths;
};

// The last stage's head over the final hidden states of a micro-batch.
MicroBatchForward head_forward(const MegatronModel& model, const MicroBatch& mb,
                               const at::Tensor& hidden, double temperature, int64_t chunk,
                               bool with_entropy) {
  MicroBatchForward out;
  out.response_lengths = mb.response_lengths;
  train::LogProbResult r = model.token_logprobs(hidden.index_select(0, mb.rows), mb.targets,
                                                {temperature, chunk, with_entropy});
  out.logprobs = r.logprobs;
  out.entropy = r.entropy;
  return out;
}

// The point-to-point traffic of one pass over micro-batches: receives block, sends run in
// the background and are all waited for in finish() (a send may wait for its receive, so
// no stage waits for a send before it has posted the receives its peers need). Micro-batch
// i's activation travels with tag 2i, its gradient with tag 2i + 1. Without pipeline
// parallelism every call is a no-op.
class StagePipe {
 public:
  // Sends still pending at destruction (an error is unwinding) are dropped unwaited: c10d's
  // work keeps their tensors alive.
  explicit StagePipe(const MegatronModel& model) : model_(model), mesh_(model.mesh()) {}

  // The previous stage's activation for micro-batch i (undefined on the first stage).
  at::Tensor receive_input(int64_t i, int64_t tokens, bool requires_grad) {
    if (mesh_.first_stage()) return at::Tensor();
    at::Tensor x = at::empty({model_.activation_rows(tokens), model_.config().hidden_size},
                             at::TensorOptions().dtype(model_.dtype()).device(model_.device()));
    mesh_.pp->recv(x, mesh_.pp_rank - 1, static_cast<int>(2 * i));
    return requires_grad ? x.requires_grad_(true) : x;
  }
  void send_output(int64_t i, const at::Tensor& y) {
    if (mesh_.last_stage()) return;
    sends_.push_back(
        mesh_.pp->send_async(y.detach().contiguous(), mesh_.pp_rank + 1, static_cast<int>(2 * i)));
  }
  // The next stage's gradient of this stage's output `y` of micro-batch i.
  at::Tensor receive_output_grad(int64_t i, const at::Tensor& y) {
    at::Tensor g = at::empty(y.sizes(), y.options());
    mesh_.pp->recv(g, mesh_.pp_rank + 1, static_cast<int>(2 * i + 1));
    return g;
  }
  void send_input_grad(int64_t i, const at::Tensor& x) {
    if (mesh_.first_stage()) return;
    at::Tensor g = x.grad().defined() ? x.grad().contiguous() : at::zeros_like(x);
    sends_.push_back(mesh_.pp->send_async(g, mesh_.pp_rank - 1, static_cast<int>(2 * i + 1)));
  }
  void finish() {
    auto sends = std::move(sends_);
    sends_.clear();
    for (auto& s : sends) s->wait();
  }

 private:
  const MegatronModel& model_;
  const Mesh& mesh_;
  std::vector<std::unique_ptr<dist::PendingCollective>> sends_;
};

// The last stage's metrics to every stage of the pipeline (as JSON bytes).
void broadcast_metrics(const Mesh& me, train::Metrics& m) {
  if (me.pp_size == 1) return;
  const std::string text = me.last_stage() ? nlohmann::json(m).dump() : std::string();
  at::Tensor n = at::full({1}, static_cast<int64_t>(text.size()), at::kLong);
  me.pp->broadcast(n, me.pp_size - 1);
  at::Tensor bytes = at::empty({n.item<int64_t>()}, at::kByte);
  if (me.last_stage()) std::memcpy(bytes.data_ptr(), text.data(), text.size());
  me.pp->broadcast(bytes, me.pp_size - 1);
  if (!me.last_stage())
    m = nlohmann::json::parse(std::string(static_cast<const char*>(bytes.data_ptr()),
                                          static_cast<size_t>(bytes.numel())))
            .get<train::Metrics>();
}

}  // namespace

struct MegatronTrainer::State {
  MegatronModel* model = nullptr;
  train::TrainerOptions options;
  std::vector<Shard> shards;  // per model parameter
  std::unique_ptr<train::AdamW> optimizer;
  bool offloaded = false;  // offload(): compute parameters freed, masters and moments on the host
  // This rank's squared gradients counted by another rank too: TP-replicated shards on
  // tp_rank > 0 and the last stage's tied copy of the embedding.
  double duplicate_sq = 0;

  const Mesh& mesh() const { return model->mesh(); }
  int64_t chunk() const {
    return options.log_probs_chunk_size < 0 ? INT64_MAX : options.log_probs_chunk_size;
  }

  // Gradients of the step: q/k-norm all-reduced over TP, a tied embedding's two copies
  // summed over the embedding group, then every parameter's gradient reduce-scattered
  // (fp32, summed) over DP into its shard's gradient, in one collective.
  void reduce_grads() {
    at::NoGradGuard no_grad;
    auto& params = model->parameters();
    const auto& specs = model->shard_specs();
    const Mesh& me = mesh();
    sum_tied_embedding_grads();
    for (size_t i = 0; i < params.size(); ++i) {
      if (specs[i].reduce_grad_over_tp && me.tp_size > 1 && params[i].grad().defined()) {
        at::Tensor g = params[i].grad().to(at::kFloat).contiguous();
        me.tp->all_reduce(g);
        params[i].mutable_grad() = g.to(params[i].scalar_type());
      }
    }
    const int64_t D = me.dp_size;
    int64_t total = 0;
    for (const Shard& s : shards) total += s.shard_rows * s.row_numel;
    auto f32 = at::TensorOptions().dtype(at::kFloat).device(model->device());
    at::Tensor in = at::zeros({D, total}, f32);
    int64_t off = 0;
    for (size_t i = 0; i < params.size(); ++i) {
      const Shard& s = shards[i];
      const int64_t n = s.shard_rows * s.row_numel;
      if (params[i].grad().defined()) {
        at::Tensor src = params[i].grad().reshape({s.rows, s.row_numel});
        at::Tensor dst = in.narrow(1, off, n).view({D, s.shard_rows, s.row_numel});
        for (int64_t r = 0; r < D; ++r) {
          const int64_t b = r * s.shard_rows;
          const int64_t k = std::clamp<int64_t>(s.rows - b, 0, s.shard_rows);
          if (k > 0) dst.select(0, r).narrow(0, 0, k).copy_(src.narrow(0, b, k));
        }
      }
      params[i].mutable_grad() = at::Tensor();
      off += n;
    }
    at::Tensor out = at::empty({total}, f32);
    if (D > 1)
      me.dp->reduce_scatter(out, in.view({-1}));
    else
      out.copy_(in.view({-1}));
    off = 0;
    duplicate_sq = 0;
    for (size_t i = 0; i < shards.size(); ++i) {
      Shard& s = shards[i];
      const int64_t n = s.shard_rows * s.row_numel;
      at::Tensor g = out.narrow(0, off, n).view(s.master.sizes()).to(s.master.device()).clone();
      s.master.mutable_grad() = g;
      if ((me.tp_rank > 0 && specs[i].split == Split::kReplicated) || specs[i].tied_copy)
        duplicate_sq += g.pow(2).sum().item<double>();
      off += n;
    }
  }

  // Tied embeddings under PP: the first stage's embedding and the last stage's copy (its
  // head) get the sum of both gradients, so their updates, and so they, stay equal.
  void sum_tied_embedding_grads() {
    const Mesh& me = mesh();
    const auto& specs = model->shard_specs();
    if (!me.embed || !model->config().tie_word_embeddings) return;  // the same on every rank
    int index = -1;
    for (size_t i = 0; i < specs.size(); ++i)
      if (me.first_stage() ? specs[i].name == "model.embed_tokens.weight" : specs[i].tied_copy)
        index = static_cast<int>(i);
    ANVIL_CHECK(index >= 0);
    at::Tensor& p = model->parameters()[static_cast<size_t>(index)];
    at::Tensor g = p.grad().defined() ? p.grad().to(at::kFloat).contiguous()
                                      : at::zeros(p.sizes(), p.options().dtype(at::kFloat));
    me.embed->all_reduce(g);
    p.mutable_grad() = g.to(p.scalar_type());
  }

  // New master values into the compute parameters: all-gather over DP (one collective).
  void gather_params() {
    at::NoGradGuard no_grad;
    auto& params = model->parameters();
    const Mesh& me = mesh();
    const int64_t D = me.dp_size;
    int64_t total = 0;
    for (const Shard& s : shards) total += s.shard_rows * s.row_numel;
    auto f32 = at::TensorOptions().dtype(at::kFloat).device(model->device());
    at::Tensor local = at::empty({total}, f32);
    int64_t off = 0;
    for (const Shard& s : shards) {
      const int64_t n = s.shard_rows * s.row_numel;
      local.narrow(0, off, n).copy_(s.master.reshape({n}));
      off += n;
    }
    at::Tensor all = local;
    if (D > 1) {
      all = at::empty({D * total}, f32);
      me.dp->all_gather(all, local);
    }
    at::Tensor grid = all.view({D, total});
    off = 0;
    for (size_t i = 0; i < shards.size(); ++i) {
      const Shard& s = shards[i];
      const int64_t n = s.shard_rows * s.row_numel;
      at::Tensor rows = grid.narrow(1, off, n).reshape({D * s.shard_rows, s.row_numel});
      params[i].copy_(rows.narrow(0, 0, s.rows).view(params[i].sizes()));
      off += n;
    }
  }

  void reduce_metrics(train::Metrics& m) {
    const Mesh& me = mesh();
    if (me.dp_size == 1) return;
    std::vector<double> v;
    for (auto& [name, x] : m) v.push_back(ends_with(name, "_min") ? -x : x);
    at::Tensor all = at::empty({me.dp_size * static_cast<int64_t>(v.size())}, at::kDouble);
    me.dp->all_gather(all, at::tensor(v, at::kDouble));
    at::Tensor grid = all.view({me.dp_size, -1});
    int64_t k = 0;
    for (auto& [name, x] : m) {
      at::Tensor col = grid.select(1, k++);
      if (ends_with(name, "_max"))
        x = col.max().item<double>();
      else if (ends_with(name, "_min"))
        x = -col.max().item<double>();
      else
        x = col.sum().item<double>();
    }
  }
};

MegatronTrainer::MegatronTrainer(MegatronModel& model, train::TrainerOptions options)
    : s_(std::make_unique<State>()) {
  State& s = *s_;
  s.model = &model;
  s.options = std::move(options);
  s.options.schedule.dp_size = model.mesh().dp_size;
  s.options.dp_rank = model.mesh().dp_rank;
  train::validate(s.options.loss);
  if (!(s.options.temperature > 0))
    fail("--rollout-temperature must be > 0, got {}", s.options.temperature);
  if (s.options.log_probs_chunk_size == 0 || s.options.log_probs_chunk_size < -1)
    fail("--log-probs-chunk-size must be positive or -1, got {}", s.options.log_probs_chunk_size);
  model.set_gradient_checkpointing(s.options.gradient_checkpointing);
  const int64_t D = model.mesh().dp_size, r = model.mesh().dp_rank;
  std::vector<at::Tensor> masters;
  at::NoGradGuard no_grad;
  for (at::Tensor& p : model.parameters()) {
    Shard sh;
    sh.rows = p.size(0);
    sh.shard_rows = (sh.rows + D - 1) / D;
    for (int64_t d = 1; d < p.dim(); ++d) sh.row_numel *= p.size(d);
    std::vector<int64_t> shape = p.sizes().vec();
    shape[0] = sh.shard_rows;
    sh.master = at::zeros(shape, p.options().dtype(at::kFloat));
    const int64_t b = std::min(sh.rows, r * sh.shard_rows);
    const int64_t e = std::min(sh.rows, (r + 1) * sh.shard_rows);
    if (e > b) sh.master.narrow(0, 0, e - b).copy_(p.narrow(0, b, e - b));
    sh.master.requires_grad_(true);
    masters.push_back(sh.master);
    s.shards.push_back(std::move(sh));
    p.requires_grad_(true);
  }
  s.optimizer = std::make_unique<train::AdamW>(masters, s.options.optimizer);
  State* self = &s;
  s.optimizer->set_grad_norm_reducer([self](double local) {
    at::Tensor t = at::full({1}, local - self->duplicate_sq, at::kDouble);
    self->mesh().world->all_reduce(t);
    return t.item<double>();
  });
}

MegatronTrainer::~MegatronTrainer() = default;

void MegatronTrainer::offload() {
  State& s = *s_;
  if (s.offloaded) return;
  at::NoGradGuard no_grad;
  for (at::Tensor& p : s.model->parameters()) {
    p.mutable_grad() = at::Tensor();
    p.set_data(at::empty({0}, p.options()));  // rebuilt from the masters by onload()
  }
  for (Shard& sh : s.shards) {
    sh.master.mutable_grad() = at::Tensor();
    sh.master.set_data(train::offload_copy(sh.master, at::kCPU));
  }
  s.optimizer->move_state_to(at::kCPU);
  s.offloaded = true;
}

void MegatronTrainer::onload() {
  State& s = *s_;
  if (!s.offloaded) return;
  at::NoGradGuard no_grad;
  const at::Device device = s.model->device();
  for (Shard& sh : s.shards)
    if (sh.master.device() != device) sh.master.set_data(sh.master.to(device));
  s.optimizer->move_state_to(device);
  auto& params = s.model->parameters();
  const auto& specs = s.model->shard_specs();
  for (size_t i = 0; i < params.size(); ++i)
    params[i].set_data(at::empty(specs[i].local, params[i].options().device(device)));
  s.gather_params();
  s.offloaded = false;
}

train::AdamW& MegatronTrainer::optimizer() { return *s_->optimizer; }
int64_t MegatronTrainer::steps() const { return s_->optimizer->steps(); }
int64_t MegatronTrainer::shard_bytes() const {
  int64_t n = 0;
  for (const Shard& s : s_->shards) n += 2 * s.master.numel() * 4;
  return n;
}

train::ResponseLogProbs MegatronTrainer::response_logprobs(
    const std::vector<train::TrainSample>& samples, bool with_entropy) {
  State& s = *s_;
  at::NoGradGuard no_grad;
  const int64_t cap = s.options.schedule.use_dynamic_batch_size
                          ? std::max<int64_t>(s.options.schedule.max_tokens_per_gpu, 1)
                          : INT64_MAX;
  train::ResponseLogProbs out;
  out.logprobs.resize(samples.size());
  if (with_entropy) out.entropy.resize(samples.size());
  const Mesh& me = s.mesh();
  const at::Device device = s.model->device();
  StagePipe pipe(*s.model);
  const auto batches = token_bounded_batches(samples, cap);
  for (size_t k = 0; k < batches.size(); ++k) {
    const auto& idx = batches[k];
    MicroBatch mb = prepare_micro_batch(samples, idx, device);
    const int64_t i = static_cast<int64_t>(k);
    at::Tensor y = s.model->stage_forward(
        mb.batch, pipe.receive_input(i, mb.batch.tokens.size(0), /*requires_grad=*/false));
    if (!me.last_stage()) {
      pipe.send_output(i, y);
      continue;
    }
    MicroBatchForward f =
        head_forward(*s.model, mb, y, s.options.temperature, s.chunk(), with_entropy);
    auto lps = f.logprobs.to(at::kCPU).split_with_sizes(f.response_lengths, 0);
    for (size_t j = 0; j < idx.size(); ++j) out.logprobs[static_cast<size_t>(idx[j])] = lps[j];
    if (with_entropy) {
      auto ents = f.entropy.to(at::kCPU).split_with_sizes(f.response_lengths, 0);
      for (size_t j = 0; j < idx.size(); ++j) out.entropy[static_cast<size_t>(idx[j])] = ents[j];
    }
  }
  pipe.finish();
  if (me.pp_size > 1) {
    // The last stage's values, in sample order, to every stage.
    std::vector<int64_t> lengths;
    for (const auto& x : samples) lengths.push_back(x.response_length);
    auto share = [&](std::vector<at::Tensor>& per_sample) {
      at::Tensor flat =
          me.last_stage() ? at::cat(per_sample, 0).to(at::kFloat).contiguous()
                          : at::empty({std::accumulate(lengths.begin(), lengths.end(), int64_t{0})},
                                      at::kFloat);
      me.pp->broadcast(flat, me.pp_size - 1);
      per_sample = flat.split_with_sizes(lengths, 0);
    };
    if (!samples.empty()) {
      share(out.logprobs);
      if (with_entropy) share(out.entropy);
    }
  }
  return out;
}

std::vector<train::Metrics> MegatronTrainer::train_rollout(
    const std::vector<train::TrainSample>& samples, const std::vector<at::Tensor>& ref_logprobs) {
  State& s = *s_;
  const train::TrainerOptions& o = s.options;
  train::validate_samples(samples, s.model->config().vocab_size);
  if (!ref_logprobs.empty() && ref_logprobs.size() != samples.size())
    fail("{} reference log-prob tensors for {} samples", ref_logprobs.size(), samples.size());
  for (size_t i = 0; i < ref_logprobs.size(); ++i)
    if (ref_logprobs[i].numel() != samples[i].response_length)
      fail("sample {}: {} reference log-probs for response_length {}", i, ref_logprobs[i].numel(),
           samples[i].response_length);
  const bool sft = o.loss.loss_type == "sft_loss";
  const bool needs_ref = !sft && (o.loss.use_kl_loss || o.advantage.kl_coef != 0);
  if (needs_ref && ref_logprobs.empty())
    fail("--use-kl-loss / --kl-coef need reference log-probs for every sample");

  std::vector<int64_t> lengths, rollout_ids;
  bool any_rollout_id = false;
  for (const auto& x : samples) {
    lengths.push_back(static_cast<int64_t>(x.tokens.size()));
    any_rollout_id |= x.rollout_id >= 0;
  }
  if (any_rollout_id)
    for (size_t i = 0; i < samples.size(); ++i)
      rollout_ids.push_back(samples[i].rollout_id >= 0 ? samples[i].rollout_id
                                                       : -1 - static_cast<int64_t>(i));
  train::Schedule schedule = train::build_schedule(lengths, rollout_ids, o.schedule);

  std::vector<at::Tensor> loss_masks, rollout_lp, old_lp, advantages;
  for (const auto& x : samples) loss_masks.push_back(mask_of(x));
  const bool have_rollout_lp = std::all_of(
      samples.begin(), samples.end(), [](const auto& x) { return !x.rollout_logprobs.empty(); });
  if (have_rollout_lp)
    for (const auto& x : samples) rollout_lp.push_back(at::tensor(x.rollout_logprobs, at::kFloat));
  // As train::Trainer: one optimizer step and no KL reward shaping -> the old log-probs are
  // the step's own forward's, detached, and the pipelined pass over the rollout is skipped
  // (the same decision on every rank: it depends only on the schedule and the options).
  const bool old_from_forward = !sft && !o.loss.use_rollout_logprobs && !o.recompute_old_logprobs &&
                                schedule.steps.size() == 1 && o.advantage.kl_coef == 0;
  if (!sft) {
    if (o.loss.use_rollout_logprobs && !have_rollout_lp)
      fail("--use-rollout-logprobs: not every sample carries rollout log-probs");
    if (!o.loss.use_rollout_logprobs && !old_from_forward)
      old_lp = response_logprobs(samples).logprobs;
    train::AdvantageInputs ai;
    for (const auto& x : samples) ai.rewards.push_back(x.reward);
    ai.logprobs = o.loss.use_rollout_logprobs ? rollout_lp : old_lp;
    ai.ref_logprobs = ref_logprobs;
    ai.loss_masks = loss_masks;
    advantages = train::compute_advantages(o.advantage, ai).advantages;
  }

  const at::Device device = s.model->device();
  const Mesh& me = s.mesh();
  std::vector<train::Metrics> out;
  for (const train::StepSchedule& step : schedule.steps) {
    std::vector<at::Tensor> masks;
    std::vector<int64_t> ids;
    for (int64_t i : step.samples) {
      masks.push_back(loss_masks[static_cast<size_t>(i)]);
      if (!rollout_ids.empty()) ids.push_back(rollout_ids[static_cast<size_t>(i)]);
    }
    std::vector<at::Tensor> w =
        train::reducer_weights(masks, ids, step.num_rollouts, o.loss.calculate_per_token_loss);
    std::vector<at::Tensor> weights(samples.size());
    for (size_t k = 0; k < step.samples.size(); ++k)
      weights[static_cast<size_t>(step.samples[k])] = w[k];

    train::Metrics metrics;
    double tokens = 0, total_tokens = 0;
    // 1F1B over this replica's micro-batches (PP = 1: forward then backward of each).
    const auto& mbs = step.micro_batches[static_cast<size_t>(o.dp_rank)];
    const int64_t M = static_cast<int64_t>(mbs.size());
    struct Live {
      at::Tensor input, output;  // output: the stage's activation, or the loss on the last
    };
    std::vector<Live> live(static_cast<size_t>(M));
    StagePipe pipe(*s.model);
    auto forward = [&](int64_t i) {
      const auto& idx = mbs[static_cast<size_t>(i)];
      MicroBatch mb = prepare_micro_batch(samples, idx, device);
      Live& l = live[static_cast<size_t>(i)];
      l.input = pipe.receive_input(i, mb.batch.tokens.size(0), /*requires_grad=*/true);
      at::Tensor y = s.model->stage_forward(mb.batch, l.input);
      if (!me.last_stage()) {
        pipe.send_output(i, y);
        l.output = y;
        return;
      }
      MicroBatchForward f = head_forward(*s.model, mb, y, o.temperature, s.chunk(), !sft);
      train::LossInputs li;
      li.logprobs = f.logprobs;
      li.response_lengths = f.response_lengths;
      li.loss_mask = gather_rows(loss_masks, idx, device);
      li.weights = gather_rows(weights, idx, device);
      if (!sft) {
        li.entropy = o.loss.entropy_coef != 0 ? f.entropy : f.entropy.detach();
        li.advantages = gather_rows(advantages, idx, device);
        li.old_logprobs = old_from_forward ? f.logprobs.detach() : gather_rows(old_lp, idx, device);
        li.ref_logprobs = needs_ref ? gather_rows(ref_logprobs, idx, device) : at::Tensor();
        li.rollout_logprobs = gather_rows(rollout_lp, idx, device);
      }
      train::LossOutput lo = train::compute_loss(o.loss, li);
      l.output = lo.loss;
      for (auto& [name, v] : lo.metrics) add_metric(metrics, name, v.item<double>());
      tokens += li.loss_mask.sum().item<double>();
      for (int64_t k : idx)
        total_tokens += static_cast<double>(samples[static_cast<size_t>(k)].tokens.size());
    };
    auto backward = [&](int64_t i) {
      Live& l = live[static_cast<size_t>(i)];
      if (me.last_stage())
        l.output.backward();
      else
        torch::autograd::backward({l.output}, {pipe.receive_output_grad(i, l.output)});
      pipe.send_input_grad(i, l.input);
      l = Live{};  // this micro-batch's activations are freed
    };
    const int64_t warmup = std::min<int64_t>(me.pp_size - me.pp_rank - 1, M);
    for (int64_t i = 0; i < warmup; ++i) forward(i);
    for (int64_t i = 0; i < M - warmup; ++i) {
      forward(warmup + i);
      backward(i);
    }
    for (int64_t i = M - warmup; i < M; ++i) backward(i);
    pipe.finish();
    metrics["tokens"] = tokens;
    metrics["total_tokens"] = total_tokens;
    broadcast_metrics(me, metrics);
    s.reduce_metrics(metrics);
    s.reduce_grads();
    train::StepStats st = s.optimizer->step();
    s.optimizer->zero_grad();
    s.gather_params();
    metrics["grad_norm"] = st.grad_norm;
    metrics["lr"] = st.lr;
    out.push_back(std::move(metrics));
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Sharded checkpoints

namespace {

constexpr const char* kLatest = "latest_checkpointed_iteration.txt";

std::string rank_file(int rank, int world) {
  return fmt::format("rank_{}-of-{}.safetensors", rank, world);
}

// A shard's key in its rank's file: the HF name (the tied copy apart from the embedding).
std::string shard_key(const ShardSpec& s) { return s.tied_copy ? s.name + "@tied_copy" : s.name; }

// Where DP rank `dp_rank`'s master shard of a TP-local parameter sits in its HF tensor:
// the TP slice along the split dimension, then the shard's rows of dim 0 (the valid ones;
// the stored shard is zero-padded to shard_rows).
train::Box shard_box(const ShardSpec& spec, const Shard& sh, int dp_rank) {
  train::Box box{std::vector<int64_t>(spec.full.size(), 0), spec.local};
  if (spec.split == Split::kRow)
    box.offset[1] = spec.begin;
  else if (spec.split != Split::kReplicated)
    box.offset[0] = spec.begin;
  const int64_t b = std::min(sh.rows, dp_rank * sh.shard_rows);
  const int64_t e = std::min(sh.rows, (dp_rank + 1) * sh.shard_rows);
  box.offset[0] += b;
  box.size[0] = e - b;
  return box;
}

}  // namespace

void MegatronTrainer::save_checkpoint(const std::filesystem::path& save, int64_t iteration,
                                      const nlohmann::json& state,
                                      const std::filesystem::path& source, at::ScalarType dtype) {
  namespace fs = std::filesystem;
  State& s = *s_;
  const Mesh& me = s.mesh();
  dist::Communicator& world = *me.world;
  const int R = world.rank(), W = world.size();
  const fs::path dest = train::iteration_dir(save, iteration);
  fs::path tmp = dest;
  tmp += ".tmp";
  if (R == 0) {
    fs::remove_all(tmp);
    fs::create_directories(tmp / "megatron");
  }
  world.barrier();
  {
    const fs::path own = tmp / "megatron" / "tmp-rank" / std::to_string(R);
    const auto& specs = s.model->shard_specs();
    const auto& masters = s.optimizer->parameters();
    nlohmann::json boxes = nlohmann::json::object();
    for (size_t i = 0; i < s.shards.size(); ++i)
      boxes[shard_key(specs[i])] = shard_box(specs[i], s.shards[i], me.dp_rank).to_json();
    models::CheckpointWriter writer(own, 5ull << 30,
                                    {{"format", "anvil-megatron"},
                                     {"world_size", std::to_string(W)},
                                     {"rank", std::to_string(R)},
                                     {train::kBoxesMetadataKey, boxes.dump()}});
    for (size_t i = 0; i < s.shards.size(); ++i) {
      const std::string key = shard_key(specs[i]);
      writer.add(key, masters[i].detach());
      writer.add(key + ".exp_avg", s.optimizer->exp_avg()[i]);
      writer.add(key + ".exp_avg_sq", s.optimizer->exp_avg_sq()[i]);
    }
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      writer.add("__rng__.cpu", gen.get_state());
    }
    writer.finish();
    fs::rename(own / "model.safetensors", tmp / "megatron" / rank_file(R, W));
  }
  // The full model as an HF directory (world rank 0 writes; every rank gathers).
  {
    std::unique_ptr<models::CheckpointWriter> writer;
    if (R == 0) {
      fs::create_directories(tmp / "model");
      writer = std::make_unique<models::CheckpointWriter>(tmp / "model");
    }
    s.model->for_each_full_tensor([&](const std::string& name, const at::Tensor& t) {
      if (writer) writer->add(name, t.to(dtype));
    });
    if (writer) {
      writer->finish();
      nlohmann::json config = s.model->config().to_json();
      config["dtype"] = dtype == at::kBFloat16 ? "bfloat16"
                        : dtype == at::kHalf   ? "float16"
                                               : "float32";
      write_json_file_atomic(tmp / "model" / "config.json", config);
      train::copy_hf_side_files(source, tmp / "model");
    }
  }
  world.barrier();
  if (R == 0) {
    fs::remove_all(tmp / "megatron" / "tmp-rank");
    write_json_file_atomic(
        tmp / "trainer_state.json",
        {{"format_version", 1},
         {"iteration", iteration},
         {"optimizer_steps", s.optimizer->steps()},
         {"world_size", W},
         {"megatron", {{"tp", me.tp_size}, {"pp", me.pp_size}, {"dp", me.dp_size}}},
         {"state", state}});
    sync_directory(tmp);
    sync_directory(tmp / "megatron");
    fs::remove_all(dest);
    fs::rename(tmp, dest);
    sync_directory(save);
    write_text_file_atomic(save / kLatest, std::to_string(iteration) + "\n");
    log::get("megatron")->info("saved sharded checkpoint {} ({} ranks)", dest.string(), W);
  }
  world.barrier();
}

std::optional<std::pair<int64_t, nlohmann::json>> MegatronTrainer::load_checkpoint(
    const std::filesystem::path& load, std::optional<int64_t> iteration) {
  namespace fs = std::filesystem;
  State& s = *s_;
  const Mesh& me = s.mesh();
  const int R = me.world->rank(), W = me.world->size();
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
  // Any layout loads: this mesh's own (bitwise, RNG included), another Megatron mesh, an
  // FSDP group or a single rank (resharded: each shard reads the stored boxes it overlaps).
  train::StateReader reader(dir);
  train::StateLayout mine;
  mine.kind = train::StateLayout::Kind::kMegatron;
  mine.world_size = W;
  mine.tp = me.tp_size;
  mine.pp = me.pp_size;
  mine.dp = me.dp_size;
  const bool same = reader.layout() == mine;
  if (!same && R == 0)
    log::get("megatron")
        ->info("resharding {} (written by {}) onto {}", dir.string(), reader.layout().describe(),
               mine.describe());
  const auto& specs = s.model->shard_specs();
  std::vector<at::Tensor> master, m1, m2;
  for (size_t i = 0; i < s.shards.size(); ++i) {
    const Shard& sh = s.shards[i];
    auto parts = reader.read_shard(specs[i].name, specs[i].full,
                                   shard_box(specs[i], sh, me.dp_rank), sh.master);
    master.push_back(parts[0]);
    m1.push_back(parts[1]);
    m2.push_back(parts[2]);
  }
  s.optimizer->load_state(reader.optimizer_steps(), master, m1, m2);
  if (auto rng = same ? reader.rng(R, "__rng__.cpu") : std::nullopt) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(*rng);
  }
  s.gather_params();
  return std::make_pair(*iteration,
                        reader.trainer_state().value("state", nlohmann::json::object()));
}

// ---------------------------------------------------------------------------------------
// Full tensors: weight sync and HF export

void MegatronModel::for_each_full_tensor(
    const std::function<void(const std::string&, const at::Tensor&)>& fn) {
  for_each_full_bucket(0, at::kFloat, [&](const std::vector<NamedTensor>& bucket) {
    for (const auto& [name, t] : bucket) fn(name, t);
  });
}

void MegatronModel::for_each_full_bucket(
    int64_t bucket_bytes, at::ScalarType dtype,
    const std::function<void(const std::vector<NamedTensor>&)>& fn) {
  Impl& m = *impl_;
  at::NoGradGuard no_grad;
  dist::Communicator& tp = m.tp();
  const int64_t T = m.mesh.tp_size;
  std::vector<NamedTensor> bucket;
  int64_t bytes = 0;
  for (const Impl::Owned& owned : m.all) {
    at::Tensor full;
    if (owned.local >= 0) {
      const ShardSpec& s = m.specs[static_cast<size_t>(owned.local)];
      // Every DP replica holds the same compute parameters after a step (all-gathered from
      // the fp32 masters; equal to them in fp32).
      at::Tensor local = m.params[static_cast<size_t>(owned.local)].to(at::kFloat).contiguous();
      full = local;
      if (T > 1 && s.split != Split::kReplicated) {
        if (s.split == Split::kRow) {
          at::Tensor all = at::empty({T * local.numel()}, local.options());
          tp.all_gather(all, local.view({-1}));
          full = all.view({T, s.full[0], s.local[1]}).permute({1, 0, 2}).reshape(s.full);
        } else {
          const int64_t part = s.split == Split::kVocab ? (s.full[0] + T - 1) / T : s.full[0] / T;
          std::vector<int64_t> padded = s.full;
          padded[0] = part;
          at::Tensor buf = at::zeros(padded, local.options());
          buf.narrow(0, 0, local.size(0)).copy_(local);
          at::Tensor all = at::empty({T * buf.numel()}, local.options());
          tp.all_gather(all, buf.view({-1}));
          std::vector<int64_t> grid = s.full;
          grid[0] = T * part;
          full = all.view(grid).narrow(0, 0, s.full[0]);
        }
      }
    }
    // Pipeline: the owning stage's tensor to the other stages.
    if (m.mesh.pp_size > 1) {
      if (owned.local < 0)
        full = at::empty(owned.full, at::TensorOptions().dtype(at::kFloat).device(m.device));
      else
        full = full.contiguous();
      m.mesh.pp->broadcast(full, owned.stage);
    }
    at::Tensor t = full.to(dtype).contiguous();
    const int64_t n = static_cast<int64_t>(t.nbytes());
    if (!bucket.empty() && bytes + n > bucket_bytes) {
      fn(bucket);
      bucket.clear();
      bytes = 0;
    }
    bucket.emplace_back(owned.name, t);
    bytes += n;
  }
  if (!bucket.empty()) fn(bucket);
}

void MegatronModel::export_hf(const std::filesystem::path& out, const std::filesystem::path& source,
                              at::ScalarType dtype, uint64_t max_shard_bytes) {
  namespace fs = std::filesystem;
  Impl& m = *impl_;
  const bool writer_rank = m.mesh.world->rank() == 0;
  fs::path tmp = out;
  tmp += ".tmp";
  std::unique_ptr<models::StreamingCheckpointWriter> writer;
  std::string error;
  if (writer_rank) {
    try {
      if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
      fs::remove_all(tmp);
      std::vector<models::TensorInfo> layout;
      for (const Impl::Owned& s : m.all) {
        models::TensorInfo t;
        t.name = s.name;
        t.dtype = models::from_scalar_type(dtype);
        t.shape = s.full;
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
  if (writer_rank) {
    try {
      if (!error.empty()) fail("{}", error);
      writer->finish();
      nlohmann::json config = m.config.to_json();
      config["dtype"] = dtype == at::kBFloat16 ? "bfloat16"
                        : dtype == at::kHalf   ? "float16"
                                               : "float32";
      write_json_file_atomic(tmp / "config.json", config);
      for (const char* name : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                               "special_tokens_map.json", "chat_template.jinja"})
        if (!source.empty() && fs::exists(source / name)) fs::copy_file(source / name, tmp / name);
      sync_directory(tmp);
      fs::remove_all(out);
      fs::rename(tmp, out);
      if (!out.parent_path().empty()) sync_directory(out.parent_path());
      log::get("megatron")->info("exported HuggingFace model to {}", out.string());
    } catch (const std::exception& e) {
      std::error_code ignored;
      writer.reset();
      fs::remove_all(tmp, ignored);
      error = e.what();
    }
  }
  at::Tensor ok = at::full({1}, error.empty() ? 0.0 : 1.0, at::kDouble);
  m.mesh.world->all_reduce(ok);
  if (ok.item<double>() != 0)
    fail("--save-hf {}: {}", out.string(), writer_rank ? error : "failed on rank 0");
}

}  // namespace anvil::megatron
