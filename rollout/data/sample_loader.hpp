// SampleLoader: a PromptSource's samples, tokenised, with the bad-row policy applied at the
// token level (--max-length, template failures). What the trainer (SFT) and the rollout
// manager (prompts) consume, directly or through a PrefetchQueue.
//
// Modes:
//   Sft     a messages list -> the conversation with its loss mask (encode_conversation);
//           a string with a label -> user/assistant conversation when the model has a chat
//           template, else a plain prompt/response pair (encode_pair); a string without a
//           label is a bad row.
//   Prompt  the input as a generation prompt (encode_prompt, --apply-chat-template); the
//           label and metadata travel with it for the reward.
// A sample longer than max_length tokens, or one the template or the mask check rejects,
// is a bad row: counted under its source (SourceCounters::skipped) and logged with file:line,
// or an anvil::Error under strict.
//
// Resume: each TokenizedSample carries the cursor *after* it. A consumer that checkpoints
// the cursor of the last sample it used resumes exactly there, however far a prefetch
// thread has read ahead.
#pragma once

#include "rollout/data/conversation.hpp"
#include "rollout/data/prompt_source.hpp"

#include <map>
#include <memory>
#include <optional>

namespace anvil::data {

enum class LoaderMode { Sft, Prompt };

struct TokenizedSample {
  std::shared_ptr<const Sample> sample;
  Encoded encoded;
  DataCursor cursor;  // the source's cursor after this sample
};

class SampleLoader {
 public:
  // `source` and `chat` must outlive the loader. Not thread-safe: one thread calls next()
  // (the prefetch thread when there is one).
  SampleLoader(PromptSource& source, const ChatTokenizer& chat, LoaderMode mode,
               const DataOptions& options);

  // The next good sample, or nullopt at the end of the last epoch.
  std::optional<TokenizedSample> next();

 private:
  Encoded encode(const Sample& s) const;

  PromptSource& source_;
  const ChatTokenizer& chat_;
  LoaderMode mode_;
  DataOptions options_;
  std::map<std::string, BadRows> bad_;  // by source name: too-long rows, template failures
};

// The data metrics of a run at `cursor` (the last consumed sample's): "data/epoch" (epochs
// completed, fractional), and per source NAME "data/NAME/samples" (handed out),
// "data/NAME/skipped" (dropped after tokenising) and "data/NAME/bad_rows" (skipped when
// loading); with a prefetch queue also "data/prefetch_queue_depth".
std::map<std::string, double> data_metrics(const DataCursor& cursor, uint64_t epoch_size,
                                           std::optional<size_t> prefetch_queue_depth);

}  // namespace anvil::data
