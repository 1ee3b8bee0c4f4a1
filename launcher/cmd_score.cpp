// anvil score --model DIR --input in.jsonl --output out.jsonl [--temperature T]
//
// For each input line {"tokens": [...]} or {"text": "..."} writes {"logprobs": [...]}: the
// log-prob of each token given its prefix under logits / temperature (the first token has
// no prefix: null). Lines are packed into batches of at most --max-batch-tokens tokens;
// this is exactly the trainer's log-prob path (backends/train/logprobs).
#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/models/decoder.hpp"
#include "backends/train/logprobs.hpp"
#include "launcher/cli_util.hpp"
#include "launcher/commands.hpp"
#include "rollout/data/tokenizer.hpp"

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include <optional>

namespace anvil::launcher {
namespace {

struct ScoreArgs {
  std::string model, input, output, dtype = "float32", device = "cpu";
  double temperature = 1.0;
  int threads = 0;
  int64_t max_batch_tokens = 8192;
  bool with_logits = false;
};

void run_score(const ScoreArgs& a) {
  if (!(a.temperature > 0)) fail("--temperature must be > 0, got {}", a.temperature);
  if (a.max_batch_tokens <= 0) fail("--max-batch-tokens must be positive");
  set_threads(a.threads);
  at::Device device = parse_device(a.device);
  auto model =
      models::DecoderModel::from_pretrained(a.model, models::parse_dtype_name(a.dtype), device);
  std::optional<data::Tokenizer> tokenizer;
  std::vector<std::vector<int64_t>> sequences;
  for (const JsonlLine& line : read_jsonl(a.input)) {
    const std::string where = a.input + ":" + std::to_string(line.line_number);
    const auto& v = line.value;
    std::vector<int64_t> tokens;
    if (v.is_object() && v.contains("tokens")) {
      if (!v["tokens"].is_array()) fail("{}: 'tokens' must be a list of integers", where);
      for (const auto& t : v["tokens"]) {
        if (!t.is_number_integer()) fail("{}: 'tokens' must be a list of integers", where);
        int64_t id = t.get<int64_t>();
        if (id < 0 || id >= model->config().vocab_size) {
          fail("{}: token id {} outside the vocabulary [0, {})", where, id,
               model->config().vocab_size);
        }
        tokens.push_back(id);
      }
    } else if (v.is_object() && v.contains("text")) {
      if (!v["text"].is_string()) fail("{}: 'text' must be a string", where);
      if (!tokenizer)
        tokenizer = data::Tokenizer::from_file(std::filesystem::path(a.model) / "tokenizer.json");
      for (int32_t id : tokenizer->encode(v["text"].get<std::string>())) tokens.push_back(id);
    } else {
      fail("{}: expected an object with 'tokens' or 'text'", where);
    }
    sequences.push_back(std::move(tokens));
  }

  std::vector<nlohmann::json> results(sequences.size());
  size_t next = 0;
  at::NoGradGuard no_grad;
  while (next < sequences.size()) {
    // Pack lines until the token budget is reached (always at least one line).
    std::vector<std::vector<int64_t>> batch;
    std::vector<size_t> index;
    int64_t tokens = 0;
    while (next < sequences.size()) {
      const auto& s = sequences[next];
      if (s.empty()) {
        results[next++] = {{"logprobs", nlohmann::json::array()}};
        continue;
      }
      if (!batch.empty() && tokens + static_cast<int64_t>(s.size()) > a.max_batch_tokens) break;
      tokens += static_cast<int64_t>(s.size());
      batch.push_back(s);
      index.push_back(next++);
    }
    if (batch.empty()) continue;
    auto packed = models::PackedBatch::pack(batch, device);
    at::Tensor hidden = model->forward_hidden(packed);  // [T, H]
    // Row t predicts token t+1 within its sequence.
    train::NextTokenIndex next = train::next_token_index(batch);
    at::Tensor lp;
    if (next.rows.numel() > 0) {
      at::Tensor sel = hidden.index_select(0, next.rows.to(device));
      train::LogProbOptions o;
      o.temperature = a.temperature;
      lp = train::token_logprobs(sel, model->lm_head_weight(), next.targets.to(device), o)
               .logprobs.to(at::kCPU, at::kDouble);
    }
    at::Tensor all_logits;  // [T, V] fp32 on CPU, only with --with-logits
    if (a.with_logits) all_logits = model->logits(hidden).to(at::kCPU, at::kFloat);
    const double* data = next.rows.numel() == 0 ? nullptr : lp.data_ptr<double>();
    int64_t k = 0;
    for (size_t b = 0; b < batch.size(); ++b) {
      nlohmann::json out = nlohmann::json::array({nullptr});
      for (size_t i = 1; i < batch[b].size(); ++i) out.push_back(data[k++]);
      results[index[b]] = {{"logprobs", out}};
      if (a.with_logits) {
        int64_t start = 0;
        for (size_t j = 0; j < b; ++j) start += static_cast<int64_t>(batch[j].size());
        at::Tensor rows_b = all_logits.narrow(0, start, static_cast<int64_t>(batch[b].size()));
        nlohmann::json lj = nlohmann::json::array();
        for (int64_t r = 0; r < rows_b.size(0); ++r) {
          const float* row = rows_b[r].data_ptr<float>();
          lj.push_back(std::vector<float>(row, row + rows_b.size(1)));
        }
        results[index[b]]["logits"] = std::move(lj);
      }
    }
  }
  std::string text;
  for (const auto& r : results) text += r.dump() + "\n";
  write_text_file_atomic(a.output, text);
}

}  // namespace

void register_score(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("score", "Per-token log-probs of JSONL sequences (trainer path)");
  auto a = std::make_shared<ScoreArgs>();
  cmd->add_option("--model", a->model, "HuggingFace model directory")->required();
  cmd->add_option("--input", a->input, "JSONL: {\"tokens\": [...]} or {\"text\": ...}")->required();
  cmd->add_option("--output", a->output, "JSONL: {\"logprobs\": [null, ...]}")->required();
  cmd->add_option("--temperature", a->temperature, "log_softmax(logits / T)")
      ->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "float32 | bfloat16 | float16")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu | cuda | cuda:N")->capture_default_str();
  cmd->add_option("--threads", a->threads, "LibTorch threads (0 = default)")->capture_default_str();
  cmd->add_option("--max-batch-tokens", a->max_batch_tokens, "Tokens packed per forward")
      ->capture_default_str();
  cmd->add_flag("--with-logits", a->with_logits,
                "Also write the full logits of every position (debugging and parity tests)");
  cmd->callback([a, &exit_code] {
    run_score(*a);
    exit_code = 0;
  });
}

}  // namespace anvil::launcher
