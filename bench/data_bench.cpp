// data_bench MODEL_DIR CONVERSATIONS.jsonl: the SFT data path, timed on one thread: load and
// validate the JSONL (PromptSource), then render each conversation with the model's chat
// template, tokenise it and build its loss mask (SampleLoader, no prefetch thread). Prints
// {"samples", "tokens", "load_s", "tokenize_s", "samples_per_s"} (samples/s over both phases).
// Driven by bench/data_bench.py, which times transformers on the same file.
#include "backends/common/error.hpp"
#include "backends/common/log.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/data/prompt_source.hpp"
#include "rollout/data/sample_loader.hpp"

#include <chrono>
#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: data_bench MODEL_DIR CONVERSATIONS.jsonl\n");
    return 2;
  }
  try {
    anvil::log::set_level(spdlog::level::warn);
    using clock = std::chrono::steady_clock;
    auto chat = anvil::data::ChatTokenizer::from_model_dir(argv[1]);
    anvil::data::DataOptions o;
    o.prompt_data = {argv[2]};
    o.keys.input = "messages";
    o.strict = true;
    auto t0 = clock::now();
    anvil::data::PromptSource source(o);
    auto t1 = clock::now();
    anvil::data::SampleLoader loader(source, chat, anvil::data::LoaderMode::Sft, o);
    size_t samples = 0, tokens = 0;
    while (auto s = loader.next()) {
      ++samples;
      tokens += s->encoded.ids.size();
    }
    auto t2 = clock::now();
    double load = std::chrono::duration<double>(t1 - t0).count();
    double tok = std::chrono::duration<double>(t2 - t1).count();
    std::printf(
        "{\"samples\": %zu, \"tokens\": %zu, \"load_s\": %.4f, \"tokenize_s\": %.4f, "
        "\"samples_per_s\": %.1f}\n",
        samples, tokens, load, tok, samples / (load + tok));
  } catch (const anvil::Error& e) {
    std::fprintf(stderr, "data_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
