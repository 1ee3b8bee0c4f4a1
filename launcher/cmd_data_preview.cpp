// anvil data-preview --model DIR --prompt-data ... --output out.jsonl [data flags]
//                    [--mode sft|prompt] [--take N] [--resume CURSOR] [--save-cursor CURSOR]
//
// Runs the data pipeline exactly as a training run would (sources, epochs, shuffle, bad-row
// policy, tokenisation, prefetch thread) and writes each sample it hands out as a JSONL line:
// {"source", "file", "line", "epoch", "input", "label", "metadata", "tools", "ids",
// "loss_mask"}. --take stops after N samples; --save-cursor writes the cursor after the last
// sample written (what a checkpoint stores) and --resume continues from one. Outputs are
// written atomically.
#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/common/log.hpp"
#include "launcher/commands.hpp"
#include "launcher/data_flags.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/data/prefetch_queue.hpp"
#include "rollout/data/sample_loader.hpp"

#include <CLI/CLI.hpp>

namespace anvil::launcher {

void register_data_preview(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand(
      "data-preview", "Run the data pipeline and write the samples it yields (ids, loss masks)");
  struct Args {
    data::DataOptions data;
    std::string model, output, mode = "prompt", resume, save_cursor, kwargs;
    int64_t take = 0;
  };
  auto a = std::make_shared<Args>();
  cmd->add_option("--model", a->model, "Model directory (tokenizer and chat template)")->required();
  cmd->add_option("--output", a->output, "JSONL of the samples")->required();
  cmd->add_option("--mode", a->mode, "sft (conversations with loss masks) or prompt (rollout)")
      ->capture_default_str();
  cmd->add_option("--take", a->take, "Stop after N samples (0 = all epochs)")
      ->capture_default_str();
  cmd->add_option("--resume", a->resume, "Continue from a cursor written by --save-cursor");
  cmd->add_option("--save-cursor", a->save_cursor, "Write the cursor after the last sample");
  cmd->add_option("--chat-template-kwargs", a->kwargs, "Extra template variables (JSON object)");
  add_data_flags(*cmd, a->data);
  cmd->callback([a, &exit_code] {
    data::LoaderMode mode;
    if (a->mode == "sft") {
      mode = data::LoaderMode::Sft;
    } else if (a->mode == "prompt") {
      mode = data::LoaderMode::Prompt;
    } else {
      fail("--mode must be sft or prompt, got '{}'", a->mode);
    }
    if (a->take < 0) fail("--take must be >= 0, got {}", a->take);
    if (a->data.prefetch < 0) fail("--prefetch-depth must be >= 0, got {}", a->data.prefetch);
    auto chat = data::ChatTokenizer::from_model_dir(a->model);
    if (!a->kwargs.empty()) {
      auto kw = nlohmann::ordered_json::parse(a->kwargs, nullptr, false);
      if (kw.is_discarded() || !kw.is_object())
        fail("--chat-template-kwargs: must be a JSON object");
      chat.set_template_kwargs(std::move(kw));
    }
    data::PromptSource source(a->data);
    if (!a->resume.empty()) {
      source.restore(data::DataCursor::from_json(read_json_file(a->resume), a->resume));
    }
    data::SampleLoader loader(source, chat, mode, a->data);
    std::optional<data::PrefetchQueue<data::TokenizedSample>> queue;
    if (a->data.prefetch > 0) {
      queue.emplace([&loader] { return loader.next(); }, static_cast<size_t>(a->data.prefetch));
    }
    std::string out;
    data::DataCursor last = source.cursor();
    size_t max_depth = 0;
    for (int64_t n = 0; a->take == 0 || n < a->take; ++n) {
      if (queue) max_depth = std::max(max_depth, queue->depth());
      auto t = queue ? queue->pop() : loader.next();
      if (!t) break;
      const data::Sample& s = *t->sample;
      nlohmann::ordered_json r = {{"source", s.source},     {"file", s.file},
                                  {"line", s.line},         {"epoch", last.epoch},
                                  {"input", s.input},       {"label", s.label},
                                  {"metadata", s.metadata}, {"tools", s.tools},
                                  {"ids", t->encoded.ids},  {"loss_mask", t->encoded.loss_mask}};
      out += r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
      last = t->cursor;
    }
    queue.reset();  // stop the producer before reading counters
    write_text_file_atomic(a->output, out);
    if (!a->save_cursor.empty()) write_json_file_atomic(a->save_cursor, last.to_json());
    auto log = anvil::log::get("data");
    for (const auto& c : last.sources) {
      log->info("source '{}': {} rows, {} bad rows, {} samples handed out, {} skipped", c.name,
                c.rows, c.bad_rows, c.consumed, c.skipped);
    }
    std::string metrics;
    auto depth = a->data.prefetch > 0 ? std::optional<size_t>(max_depth) : std::nullopt;
    for (const auto& [k, v] : data::data_metrics(last, source.size(), depth)) {
      metrics += fmt::format(" {}={}", k, v);
    }
    log->info("metrics (queue depth: the largest seen):{}", metrics);
    exit_code = 0;
  });
}

}  // namespace anvil::launcher
