// anvil render-chat --model DIR --input conversations.jsonl --output out.jsonl
//                   [--add-generation-prompt] [--chat-template-kwargs JSON]
//
// For each input row {"messages": [...], "tools": [...]?} (JSONL, or Parquet with those
// columns) writes {"text": rendered chat, "ids": [...], "loss_mask": [...], "tokens": [each
// id decoded]}: exactly what SFT trains on, so a wrong-looking loss mask can be read token by
// token. The output is written atomically; any bad row (named file:line and key) or a
// conversation whose mask cannot be made exact fails the command and leaves no file.
#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "launcher/commands.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/data/dataset.hpp"

#include <CLI/CLI.hpp>

namespace anvil::launcher {

void register_render_chat(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand(
      "render-chat", "Render conversations with the model's chat template: text, ids, loss mask");
  struct Args {
    std::string model, input, output, kwargs;
    bool add_generation_prompt = false;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Model directory (tokenizer.json, tokenizer_config.json)")
      ->required();
  cmd->add_option("--input", a->input, "JSONL or Parquet rows with 'messages' (and 'tools')")
      ->required();
  cmd->add_option("--output", a->output, "JSONL: text, ids, loss_mask, tokens")->required();
  cmd->add_flag("--add-generation-prompt", a->add_generation_prompt,
                "Append the assistant generation prompt (masked)");
  cmd->add_option("--chat-template-kwargs", a->kwargs,
                  "Extra template variables as a JSON object, e.g. '{\"enable_thinking\": false}'");
  cmd->callback([a, &exit_code] {
    auto chat = data::ChatTokenizer::from_model_dir(a->model);
    if (!chat.has_chat_template()) {
      fail("{}: tokenizer_config.json has no chat_template", a->model);
    }
    if (!a->kwargs.empty()) {
      nlohmann::ordered_json kw;
      try {
        kw = nlohmann::ordered_json::parse(a->kwargs);
      } catch (const nlohmann::json::exception& e) {
        fail("--chat-template-kwargs: not JSON: {}", e.what());
      }
      if (!kw.is_object()) fail("--chat-template-kwargs: must be a JSON object");
      chat.set_template_kwargs(std::move(kw));
    }
    data::DataKeys keys;
    keys.input = "messages";
    keys.tool = "tools";
    data::BadRows strict("render-chat", /*strict=*/true);
    auto samples = data::load_samples("render-chat", a->input, keys, strict);
    std::string out;
    for (const auto& s : samples) {
      if (!s->input.is_array()) {
        fail("{}:{}: key 'messages': is a string, expected a messages list", s->file, s->line);
      }
      data::Encoded e;
      try {
        e = chat.encode_conversation(s->input, s->tools, a->add_generation_prompt);
      } catch (const Error& err) {
        fail("{}:{}: {}", s->file, s->line, err.what());
      }
      nlohmann::ordered_json tokens = nlohmann::ordered_json::array();
      for (int32_t id : e.ids) tokens.push_back(chat.tokenizer().decode(std::span(&id, 1)));
      nlohmann::ordered_json r = {
          {"text", e.text}, {"ids", e.ids}, {"loss_mask", e.loss_mask}, {"tokens", tokens}};
      out += r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
    write_text_file_atomic(a->output, out);
    exit_code = 0;
  });
}

}  // namespace anvil::launcher
