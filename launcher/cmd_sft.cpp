// anvil sft --model DIR --prompt-data ... [--save DIR --save-interval N] [--load DIR]
//           [--save-hf DIR] [--num-steps N] [training and data flags]
//
// Supervised fine-tuning on one process, slime's sft recipe (--loss-type sft_loss,
// --disable-compute-advantages-and-returns, rollout batch = global batch): conversations
// (OpenAI messages, or input/label pairs) are tokenised with the model's chat template and
// loss masks by the data pipeline, --global-batch-size samples make one optimizer step.
//
// Checkpoints (--save) hold weights, optimizer, scheduler, RNG and the data cursor, so
// `--load` continues with exactly the next sample the uninterrupted run would have used;
// the run's result is bitwise that of the uninterrupted run on CPU fp32. The metrics of each
// step go to the log and, with --metrics-jsonl, one JSON line per step (sft/loss,
// sft/tokens_seen, sft/epoch, data/prefetch_queue_depth, grad_norm, lr, ...).
#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/common/log.hpp"
#include "backends/models/weights.hpp"
#include "backends/train/checkpoint.hpp"
#include "launcher/cli_util.hpp"
#include "launcher/commands.hpp"
#include "launcher/data_flags.hpp"
#include "launcher/train_flags.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/data/prefetch_queue.hpp"
#include "rollout/data/sample_loader.hpp"

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include <fstream>

namespace anvil::launcher {
namespace {

struct SftArgs {
  data::DataOptions data;
  train::TrainerOptions train;
  std::string model, save, load, save_hf, metrics, dtype = "float32", device = "cpu";
  std::string save_hf_dtype;
  int64_t save_interval = 0, num_steps = 0, seed = 1234;
  int threads = 0;
};

// An encoded conversation as a trainer sample: the response starts at the first trained
// token (at least one token of context before it).
std::optional<train::TrainSample> to_train_sample(const data::Encoded& e) {
  size_t first = 0;
  while (first < e.loss_mask.size() && e.loss_mask[first] == 0) ++first;
  if (first == e.loss_mask.size()) return std::nullopt;  // nothing to learn from
  first = std::max<size_t>(first, 1);
  if (first >= e.ids.size()) return std::nullopt;
  train::TrainSample s;
  s.tokens.assign(e.ids.begin(), e.ids.end());
  s.response_length = static_cast<int64_t>(e.ids.size() - first);
  for (size_t i = first; i < e.loss_mask.size(); ++i) s.loss_mask.push_back(e.loss_mask[i]);
  return s;
}

void run_sft(SftArgs& a, CLI::App& cmd) {
  auto log = anvil::log::get("sft");
  if (a.save_interval < 0) fail("--save-interval must be >= 0, got {}", a.save_interval);
  if (a.num_steps < 0) fail("--num-steps must be >= 0, got {}", a.num_steps);
  if (a.save_interval > 0 && a.save.empty()) fail("--save-interval needs --save DIR");
  a.train.loss.loss_type = "sft_loss";
  set_threads(a.threads);
  at::manual_seed(static_cast<uint64_t>(a.seed));

  // Flags first (fail fast, before any data is read); the decay length once it is known.
  finish_train_flags(cmd, a.train, std::max<int64_t>(a.num_steps, 1));
  auto chat = data::ChatTokenizer::from_model_dir(a.model);
  data::PromptSource source(a.data);
  const int64_t gbs = a.train.schedule.global_batch_size;
  if (gbs <= 0) fail("--global-batch-size must be positive, got {}", gbs);
  const int64_t steps_per_epoch = static_cast<int64_t>(source.size()) / gbs;
  const int64_t planned =
      a.num_steps > 0 ? a.num_steps : steps_per_epoch * static_cast<int64_t>(source.num_epoch());
  if (cmd.count("--lr-decay-iters") == 0) a.train.optimizer.lr_decay_iters = planned;
  train::scheduled_lr(a.train.optimizer, 0);

  const at::ScalarType dtype = models::parse_dtype_name(a.dtype);
  auto model = models::DecoderModel::from_pretrained(a.model, dtype, parse_device(a.device));
  train::Trainer trainer(*model, a.train);

  int64_t step = 0;
  double tokens_seen = 0;
  if (!a.load.empty()) {
    auto loaded = train::load_checkpoint(a.load, *model, trainer.optimizer());
    if (loaded) {
      step = loaded->iteration;
      tokens_seen = loaded->state.value("tokens_seen", 0.0);
      if (!loaded->state.contains("data_cursor"))
        fail("{}: checkpoint has no data cursor", train::iteration_dir(a.load, step).string());
      source.restore(data::DataCursor::from_json(loaded->state["data_cursor"],
                                                 train::iteration_dir(a.load, step).string()));
      log->info("resumed at step {} (epoch {}, sample {})", step, source.cursor().epoch,
                source.cursor().offset);
    } else {
      log->info("--load {}: no checkpoint yet, starting from the model", a.load);
    }
  }

  data::SampleLoader loader(source, chat, data::LoaderMode::Sft, a.data);
  std::optional<data::PrefetchQueue<data::TokenizedSample>> queue;
  if (a.data.prefetch > 0)
    queue.emplace([&loader] { return loader.next(); }, static_cast<size_t>(a.data.prefetch));
  std::unique_ptr<std::ofstream> metrics_out;
  if (!a.metrics.empty()) {
    metrics_out = std::make_unique<std::ofstream>(a.metrics, std::ios::app);
    if (!*metrics_out) fail("--metrics-jsonl {}: cannot open for appending", a.metrics);
  }

  data::DataCursor cursor = source.cursor();
  auto save = [&] {
    if (a.save.empty()) return;
    nlohmann::json state = {{"data_cursor", cursor.to_json()}, {"tokens_seen", tokens_seen}};
    train::save_checkpoint(a.save, step, *model, trainer.optimizer(), state, a.model);
  };
  int64_t last_saved = -1;
  while (a.num_steps == 0 || step < a.num_steps) {
    std::vector<train::TrainSample> batch;
    size_t depth = queue ? queue->depth() : 0;
    while (static_cast<int64_t>(batch.size()) < gbs) {
      auto t = queue ? queue->pop() : loader.next();
      if (!t) break;
      cursor = t->cursor;
      auto s = to_train_sample(t->encoded);
      if (!s) {
        source.note_skipped(*t->sample);
        log->warn("{}:{}: no trained token (empty loss mask); skipped", t->sample->file,
                  t->sample->line);
        continue;
      }
      batch.push_back(std::move(*s));
    }
    if (static_cast<int64_t>(batch.size()) < gbs) {
      if (!batch.empty())
        log->info("{} samples left over at the end of the data (< --global-batch-size {})",
                  batch.size(), gbs);
      break;
    }
    train::Metrics m = trainer.train_rollout(batch).at(0);
    ++step;
    tokens_seen += m["tokens"];
    nlohmann::json line = {{"step", step},
                           {"sft/loss", m["loss"]},
                           {"sft/tokens_seen", tokens_seen},
                           {"sft/epoch", cursor.epoch},
                           {"data/prefetch_queue_depth", depth},
                           {"grad_norm", m["grad_norm"]},
                           {"lr", m["lr"]},
                           {"tokens", m["tokens"]}};
    log->info("step {} loss {:.4f} grad_norm {:.3f} lr {:.3g} tokens {}", step, m["loss"],
              m["grad_norm"], m["lr"], m["tokens"]);
    if (metrics_out) *metrics_out << line.dump() << "\n" << std::flush;
    if (a.save_interval > 0 && step % a.save_interval == 0) {
      save();
      last_saved = step;
    }
  }
  queue.reset();
  if (last_saved != step && step > 0) save();
  if (!a.save_hf.empty()) {
    const at::ScalarType out_dtype =
        a.save_hf_dtype.empty() ? dtype : models::parse_dtype_name(a.save_hf_dtype);
    train::export_hf(a.save_hf, *model, a.model, out_dtype);
  }
  log->info("done: {} steps, {} trained tokens", step, tokens_seen);
}

}  // namespace

void register_sft(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("sft", "Supervised fine-tuning (slime's sft_loss recipe)");
  auto a = std::make_shared<SftArgs>();
  a->train.loss.loss_type = "sft_loss";
  cmd->add_option("--model,--hf-checkpoint", a->model, "HuggingFace model directory")->required();
  cmd->add_option("--save", a->save, "Checkpoint directory (iter_NNNNNNN/, latest pointer)");
  cmd->add_option("--save-interval", a->save_interval, "Save every N steps (0: at the end)")
      ->capture_default_str();
  cmd->add_option("--load", a->load, "Resume from this checkpoint directory when it has one");
  cmd->add_option("--save-hf", a->save_hf, "Export the final model as a HuggingFace directory");
  cmd->add_option("--save-hf-dtype", a->save_hf_dtype, "dtype of --save-hf (default: --dtype)");
  cmd->add_option("--num-steps", a->num_steps, "Stop after N optimizer steps (0: all epochs)")
      ->capture_default_str();
  cmd->add_option("--metrics-jsonl", a->metrics, "Append one JSON line of metrics per step");
  cmd->add_option("--dtype", a->dtype, "float32 | bfloat16 parameters")->capture_default_str();
  cmd->add_option("--device", a->device, "cpu | cuda | cuda:N")->capture_default_str();
  cmd->add_option("--seed", a->seed, "LibTorch RNG seed")->capture_default_str();
  cmd->add_option("--threads", a->threads, "Intra-op threads (0: LibTorch default)");
  add_train_flags(*cmd, a->train);
  add_data_flags(*cmd, a->data);
  cmd->callback([a, cmd, &exit_code] {
    run_sft(*a, *cmd);
    exit_code = 0;
  });
}

}  // namespace anvil::launcher
