// anvil tokenize --tokenizer PATH --input in.jsonl --output out.jsonl [--add-special-tokens]
//
// Each input line {"text": "..."} becomes {"ids": [...], "decoded": "..."}. The output is
// written atomically: on a bad line (named file:line) no output file is left.
#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "launcher/cli_util.hpp"
#include "launcher/commands.hpp"
#include "rollout/data/bpe_trainer.hpp"
#include "rollout/data/tokenizer.hpp"

#include <CLI/CLI.hpp>

namespace anvil::launcher {

void register_tokenize(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("tokenize", "Encode JSONL text with a tokenizer.json");
  struct Args {
    std::string tokenizer, input, output, train_builtin;
    bool add_special = false;
    int vocab = 512;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--tokenizer", a->tokenizer, "tokenizer.json or a model directory");
  cmd->add_option("--input", a->input, "JSONL with {\"text\": ...}");
  cmd->add_option("--output", a->output, "JSONL with {\"ids\": [...], \"decoded\": ...}");
  cmd->add_flag("--add-special-tokens", a->add_special, "Apply the post-processor template");
  cmd->add_option("--train-builtin", a->train_builtin,
                  "Instead: write the built-in BPE tokenizer.json (as init-model trains it)");
  cmd->add_option("--vocab-size", a->vocab, "BPE vocabulary for --train-builtin")
      ->capture_default_str();
  cmd->callback([a, &exit_code] {
    if (!a->train_builtin.empty()) {
      data::BpeTrainOptions o;
      o.vocab_size = a->vocab;
      o.special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
      write_json_file_atomic(a->train_builtin,
                             data::train_byte_level_bpe(data::builtin_corpus(), o));
      exit_code = 0;
      return;
    }
    if (a->tokenizer.empty() || a->input.empty() || a->output.empty()) {
      fail("tokenize: --tokenizer, --input and --output are required");
    }
    auto tok = data::Tokenizer::from_file(a->tokenizer);
    std::string out;
    for (const JsonlLine& line : read_jsonl(a->input)) {
      const auto& v = line.value;
      if (!v.is_object() || !v.contains("text") || !v["text"].is_string()) {
        fail("{}:{}: expected an object with a string 'text'", a->input, line.line_number);
      }
      auto ids = tok.encode(v["text"].get<std::string>(), a->add_special);
      nlohmann::json r = {{"ids", ids}, {"decoded", tok.decode(ids)}};
      out += r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
    write_text_file_atomic(a->output, out);
    exit_code = 0;
  });
}

}  // namespace anvil::launcher
