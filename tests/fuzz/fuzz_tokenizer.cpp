// libFuzzer harness for the tokenizer: arbitrary bytes are encoded and decoded with the
// built-in BPE tokenizer (decode(encode(x)) must equal x for valid, NFC-stable UTF-8), and
// also parsed as a tokenizer.json (errors must be anvil::Error).
#include "backends/common/error.hpp"
#include "rollout/data/bpe_trainer.hpp"
#include "rollout/data/tokenizer.hpp"
#include "rollout/data/unicode.hpp"

#include <cstdint>
#include <cstdlib>
#include <string>

namespace {
const anvil::data::Tokenizer& builtin() {
  static const anvil::data::Tokenizer tok = [] {
    anvil::data::BpeTrainOptions o;
    o.vocab_size = 300;
    o.special_tokens = {"<|im_start|>", "<|im_end|>"};
    return anvil::data::Tokenizer::from_json(
        anvil::data::train_byte_level_bpe(anvil::data::builtin_corpus(), o), "builtin");
  }();
  return tok;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  const auto& tok = builtin();
  auto ids = tok.encode(text);
  std::string back = tok.decode(ids);
  if (anvil::data::nfc(text) == text && back != text) {
    // Only valid UTF-8 round-trips; nfc() returns invalid input unchanged.
    bool valid = true;
    for (size_t i = 0; i < text.size();) {
      unsigned char c = static_cast<unsigned char>(text[i]);
      size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
      if (n == 0 || i + n > text.size()) {
        valid = false;
        break;
      }
      i += n;
    }
    if (valid && back.find("\xEF\xBF\xBD") == std::string::npos) std::abort();
  }
  try {
    auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_discarded()) (void)anvil::data::Tokenizer::from_json(j, "fuzz.json");
  } catch (const anvil::Error&) {
  } catch (const nlohmann::json::exception&) {
  }
  return 0;
}
