#include "backends/models/config.hpp"

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"

#include <cmath>

namespace anvil::models {
namespace {

using nlohmann::json;

// Typed access to a config.json object; every error names the source and the key.
class Reader {
 public:
  Reader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }

  int64_t integer(const char* key, std::optional<int64_t> fallback = std::nullopt) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      fail("{}: missing required key '{}'", source_, key);
    }
    const json& v = j_.at(key);
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>())
      return static_cast<int64_t>(v.get<double>());
    fail("{}: key '{}' must be an integer, got {}", source_, key, v.dump());
  }

  double number(const char* key, std::optional<double> fallback = std::nullopt) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      fail("{}: missing required key '{}'", source_, key);
    }
    const json& v = j_.at(key);
    if (!v.is_number()) fail("{}: key '{}' must be a number, got {}", source_, key, v.dump());
    return v.get<double>();
  }

  std::optional<double> optional_number(const char* key) const {
    if (!has(key)) return std::nullopt;
    return number(key);
  }

  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_boolean()) fail("{}: key '{}' must be true or false, got {}", source_, key, v.dump());
    return v.get<bool>();
  }

  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_string()) fail("{}: key '{}' must be a string, got {}", source_, key, v.dump());
    return v.get<std::string>();
  }

  const json& raw(const char* key) const { return j_.at(key); }
  const std::string& source() const { return source_; }

 private:
  const json& j_;
  std::string source_;
};

int64_t positive(const Reader& r, const char* key, int64_t value) {
  if (value <= 0) fail("{}: key '{}' must be positive, got {}", r.source(), key, value);
  return value;
}

RopeConfig parse_rope(const Reader& top, const ModelConfig& cfg) {
  // transformers 5.x: a legacy `rope_scaling` dict takes precedence over `rope_parameters`;
  // `rope_theta` falls back to the top-level key, then 10000.
  const json* params = nullptr;
  std::string where;
  if (top.has("rope_scaling")) {
    params = &top.raw("rope_scaling");
    where = top.source() + ": rope_scaling";
  } else if (top.has("rope_parameters")) {
    params = &top.raw("rope_parameters");
    where = top.source() + ": rope_parameters";
  }
  static const json kEmpty = json::object();
  if (params != nullptr && !params->is_object()) {
    fail("{} must be an object, got {}", where, params->dump());
  }
  const json& p = params ? *params : kEmpty;
  Reader r(p, where.empty() ? top.source() : where);

  RopeConfig rope;
  rope.type = r.string("rope_type", r.string("type", "default"));
  rope.theta = r.number("rope_theta", top.number("rope_theta", 10000.0));
  if (rope.theta <= 0) fail("{}: rope_theta must be positive", r.source());
  double partial = r.number("partial_rotary_factor", top.number("partial_rotary_factor", 1.0));
  if (partial != 1.0) {
    fail(
        "{}: partial_rotary_factor {} is not supported (the decoder family rotates the full "
        "head_dim)",
        r.source(), partial);
  }

  const bool needs_original = rope.type == "yarn" || rope.type == "llama3";
  if (needs_original) {
    // As transformers: a top-level original_max_position_embeddings wins, else the rope
    // dict's, else max_position_embeddings.
    rope.original_max_position_embeddings =
        top.has("original_max_position_embeddings")
            ? top.integer("original_max_position_embeddings")
            : r.integer("original_max_position_embeddings", cfg.max_position_embeddings);
    positive(r, "original_max_position_embeddings", rope.original_max_position_embeddings);
  }

  if (rope.type == "default") {
  } else if (rope.type == "linear" || rope.type == "dynamic") {
    rope.factor = r.number("factor");
    if (rope.factor < 1.0) fail("{}: factor must be >= 1, got {}", r.source(), rope.factor);
  } else if (rope.type == "yarn") {
    rope.factor = r.has("factor") ? r.number("factor")
                                  : static_cast<double>(cfg.max_position_embeddings) /
                                        static_cast<double>(rope.original_max_position_embeddings);
    if (rope.factor < 1.0) fail("{}: factor must be >= 1, got {}", r.source(), rope.factor);
    rope.attention_factor = r.optional_number("attention_factor");
    rope.mscale = r.optional_number("mscale");
    rope.mscale_all_dim = r.optional_number("mscale_all_dim");
    // transformers uses `or`: a 0 or null beta means the default.
    double bf = r.number("beta_fast", 0.0);
    double bs = r.number("beta_slow", 0.0);
    rope.beta_fast = bf != 0.0 ? bf : 32.0;
    rope.beta_slow = bs != 0.0 ? bs : 1.0;
    rope.truncate = r.boolean("truncate", true);
  } else if (rope.type == "llama3") {
    rope.factor = r.number("factor");
    rope.low_freq_factor = r.number("low_freq_factor");
    rope.high_freq_factor = r.number("high_freq_factor");
    if (rope.high_freq_factor <= rope.low_freq_factor) {
      fail("{}: high_freq_factor ({}) must be greater than low_freq_factor ({})", r.source(),
           rope.high_freq_factor, rope.low_freq_factor);
    }
  } else {
    fail("{}: rope type '{}' is not supported (supported: default, linear, dynamic, yarn, llama3)",
         r.source(), rope.type);
  }
  return rope;
}

std::vector<int64_t> token_id_list(const Reader& r, const char* key) {
  if (!r.has(key)) return {};
  const json& v = r.raw(key);
  if (v.is_number_integer()) return {v.get<int64_t>()};
  if (v.is_array()) {
    std::vector<int64_t> ids;
    for (const json& e : v) {
      if (!e.is_number_integer()) fail("{}: key '{}' must hold integers", r.source(), key);
      ids.push_back(e.get<int64_t>());
    }
    return ids;
  }
  fail("{}: key '{}' must be an integer or a list of integers", r.source(), key);
}

}  // namespace

Arch arch_from_name(const std::string& name) {
  if (name == "llama") return Arch::kLlama;
  if (name == "qwen2") return Arch::kQwen2;
  if (name == "qwen3") return Arch::kQwen3;
  fail("unknown architecture '{}' (supported: llama, qwen2, qwen3)", name);
}

const char* arch_name(Arch arch) {
  switch (arch) {
    case Arch::kLlama:
      return "llama";
    case Arch::kQwen2:
      return "qwen2";
    case Arch::kQwen3:
      return "qwen3";
  }
  return "?";
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: config must be a JSON object", source);
  Reader r(j, source);
  ModelConfig c;

  std::string architecture;
  if (r.has("architectures")) {
    const json& a = r.raw("architectures");
    if (!a.is_array() || a.size() != 1 || !a[0].is_string()) {
      fail("{}: key 'architectures' must be a list with one class name, got {}", source, a.dump());
    }
    architecture = a[0].get<std::string>();
  }
  std::string model_type = r.string("model_type", "");
  if (architecture == "LlamaForCausalLM" || (architecture.empty() && model_type == "llama")) {
    c.arch = Arch::kLlama;
  } else if (architecture == "Qwen2ForCausalLM" ||
             (architecture.empty() && model_type == "qwen2")) {
    c.arch = Arch::kQwen2;
  } else if (architecture == "Qwen3ForCausalLM" ||
             (architecture.empty() && model_type == "qwen3")) {
    c.arch = Arch::kQwen3;
  } else {
    fail(
        "{}: architecture '{}' (model_type '{}') is not supported (supported: "
        "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)",
        source, architecture, model_type);
  }

  // Defaults are those of the transformers config class of each architecture.
  const bool llama = c.arch == Arch::kLlama;
  c.vocab_size = positive(r, "vocab_size", r.integer("vocab_size", llama ? 32000 : 151936));
  c.hidden_size = positive(r, "hidden_size", r.integer("hidden_size", 4096));
  c.intermediate_size =
      positive(r, "intermediate_size", r.integer("intermediate_size", llama ? 11008 : 22016));
  c.num_hidden_layers = positive(r, "num_hidden_layers", r.integer("num_hidden_layers", 32));
  c.num_attention_heads = positive(r, "num_attention_heads", r.integer("num_attention_heads", 32));
  c.num_key_value_heads =
      positive(r, "num_key_value_heads",
               r.integer("num_key_value_heads", llama ? c.num_attention_heads : int64_t{32}));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    fail("{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", source,
         c.num_attention_heads, c.num_key_value_heads);
  }
  int64_t default_head_dim = c.arch == Arch::kQwen3 ? 128 : c.hidden_size / c.num_attention_heads;
  c.head_dim = positive(r, "head_dim", r.integer("head_dim", default_head_dim));
  if (c.head_dim % 2 != 0) fail("{}: head_dim must be even, got {}", source, c.head_dim);
  c.max_position_embeddings = positive(r, "max_position_embeddings",
                                       r.integer("max_position_embeddings", llama ? 2048 : 32768));
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0)) fail("{}: rms_norm_eps must be positive", source);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.initializer_range = r.number("initializer_range", 0.02);

  std::string act = r.string("hidden_act", "silu");
  if (act != "silu") fail("{}: hidden_act '{}' is not supported (only silu)", source, act);

  bool attention_bias = r.boolean("attention_bias", false);
  switch (c.arch) {
    case Arch::kLlama:
      c.qkv_bias = c.o_bias = attention_bias;
      c.mlp_bias = r.boolean("mlp_bias", false);
      if (r.integer("pretraining_tp", 1) != 1) {
        fail("{}: pretraining_tp != 1 is not supported", source);
      }
      break;
    case Arch::kQwen2:
      c.qkv_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias
      break;
    case Arch::kQwen3:
      c.qkv_bias = c.o_bias = attention_bias;
      c.qk_norm = true;
      break;
  }
  if (c.arch != Arch::kLlama && r.boolean("use_sliding_window", false)) {
    fail("{}: use_sliding_window=true is not supported", source);
  }
  if (r.has("layer_types")) {
    for (const json& t : r.raw("layer_types")) {
      if (t != "full_attention") {
        fail("{}: layer_types entry {} is not supported (only full_attention)", source, t.dump());
      }
    }
  }

  c.rope = parse_rope(r, c);
  c.dtype = r.string("dtype", r.string("torch_dtype", "float32"));
  if (r.has("bos_token_id")) c.bos_token_id = r.integer("bos_token_id");
  if (r.has("pad_token_id")) c.pad_token_id = r.integer("pad_token_id");
  c.eos_token_ids = token_id_list(r, "eos_token_id");
  return c;
}

ModelConfig ModelConfig::load(const std::filesystem::path& path) {
  std::filesystem::path file = std::filesystem::is_directory(path) ? path / "config.json" : path;
  if (!std::filesystem::exists(file)) fail("{}: no such file", file.string());
  return from_json(read_json_file(file), file.string());
}

nlohmann::json ModelConfig::to_json() const {
  json j;
  switch (arch) {
    case Arch::kLlama:
      j["architectures"] = {"LlamaForCausalLM"};
      j["model_type"] = "llama";
      j["attention_bias"] = qkv_bias;
      j["mlp_bias"] = mlp_bias;
      j["pretraining_tp"] = 1;
      break;
    case Arch::kQwen2:
      j["architectures"] = {"Qwen2ForCausalLM"};
      j["model_type"] = "qwen2";
      j["use_sliding_window"] = false;
      break;
    case Arch::kQwen3:
      j["architectures"] = {"Qwen3ForCausalLM"};
      j["model_type"] = "qwen3";
      j["attention_bias"] = qkv_bias;
      j["use_sliding_window"] = false;
      break;
  }
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  j["head_dim"] = head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["initializer_range"] = initializer_range;
  j["use_cache"] = true;
  j["attention_dropout"] = 0.0;
  json rp = {{"rope_type", rope.type}, {"rope_theta", rope.theta}};
  if (rope.type != "default") rp["factor"] = rope.factor;
  if (rope.type == "yarn" || rope.type == "llama3") {
    rp["original_max_position_embeddings"] = rope.original_max_position_embeddings;
  }
  if (rope.type == "yarn") {
    if (rope.attention_factor) rp["attention_factor"] = *rope.attention_factor;
    if (rope.mscale) rp["mscale"] = *rope.mscale;
    if (rope.mscale_all_dim) rp["mscale_all_dim"] = *rope.mscale_all_dim;
    rp["beta_fast"] = rope.beta_fast;
    rp["beta_slow"] = rope.beta_slow;
    if (!rope.truncate) rp["truncate"] = false;
  }
  if (rope.type == "llama3") {
    rp["low_freq_factor"] = rope.low_freq_factor;
    rp["high_freq_factor"] = rope.high_freq_factor;
  }
  j["rope_parameters"] = rp;
  j["dtype"] = dtype;
  j["bos_token_id"] = bos_token_id ? json(*bos_token_id) : json(nullptr);
  j["pad_token_id"] = pad_token_id ? json(*pad_token_id) : json(nullptr);
  if (eos_token_ids.size() == 1) {
    j["eos_token_id"] = eos_token_ids[0];
  } else if (!eos_token_ids.empty()) {
    j["eos_token_id"] = eos_token_ids;
  } else {
    j["eos_token_id"] = nullptr;
  }
  j["transformers_version"] = "5.23.0";
  return j;
}

}  // namespace anvil::models
