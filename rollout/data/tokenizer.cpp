#include "rollout/data/tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "rollout/data/unicode.hpp"

#include <algorithm>
#include <climits>
#include <mutex>
#include <unordered_map>

namespace anvil::data {
namespace {

using nlohmann::json;

const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A compiled PCRE2 pattern (UTF + Unicode properties, JIT when available).
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &err, &offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("{}: bad regex at offset {}: {}", where, offset, reinterpret_cast<char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // optional speed-up; failure is fine
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Isolated split: matches and the gaps between them, in order. Invalid UTF-8 input is
  // not matched (it becomes one gap piece) so PCRE2 never sees it.
  void split(std::string_view text, std::vector<std::string_view>& out) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t pos = 0, gap = 0;
    while (pos <= text.size()) {
      int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos, 0,
                           md, nullptr);
      if (rc < 0) break;
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t s = ov[0], e = ov[1];
      if (e == s) {  // empty match: step one code point
        pos = s + 1;
        while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
        continue;
      }
      if (s > gap) out.push_back(text.substr(gap, s - gap));
      out.push_back(text.substr(s, e - s));
      gap = pos = e;
    }
    if (gap < text.size()) out.push_back(text.substr(gap));
    pcre2_match_data_free(md);
  }

 private:
  pcre2_code* code_ = nullptr;
};

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) {
      unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += n;
  }
  return true;
}

// Rust's String::from_utf8_lossy: each maximal invalid prefix becomes U+FFFD.
std::string utf8_lossy(std::string_view s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    size_t n = (c >= 0xC2 && c <= 0xDF)   ? 2
               : (c >= 0xE0 && c <= 0xEF) ? 3
               : (c >= 0xF0 && c <= 0xF4) ? 4
                                          : 0;
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    size_t k = 1;
    for (; k < n && i + k < s.size(); ++k) {
      unsigned char d = static_cast<unsigned char>(s[i + k]);
      unsigned char lo = 0x80, hi = 0xBF;
      if (k == 1) {
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
      }
      if (d < lo || d > hi) break;
    }
    if (k == n) {
      out.append(s.substr(i, n));
    } else {
      out += "\xEF\xBF\xBD";
    }
    i += k;
  }
  return out;
}

bool is_word_char(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }
bool is_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

struct AddedToken {
  int32_t id;
  std::string content;
  bool lstrip, rstrip, single_word, special;
};

struct PairHash {
  size_t operator()(const std::pair<int32_t, int32_t>& p) const {
    return std::hash<int64_t>()((static_cast<int64_t>(p.first) << 32) ^
                                static_cast<uint32_t>(p.second));
  }
};

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  bool nfc = false;
  std::vector<std::unique_ptr<Regex>> splits;  // applied in sequence (Isolated)
  bool byte_level = false;
  bool add_prefix_space = false;
  bool ignore_merges = false;
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;  // by id (vocab and added tokens)
  std::unordered_map<std::pair<int32_t, int32_t>, int32_t, PairHash> merge_rank;
  std::vector<AddedToken> added;
  std::vector<bool> special;
  std::vector<bool> is_added;
  std::vector<int32_t> prefix_ids, suffix_ids;  // TemplateProcessing single
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  void bpe(const std::string& word, std::vector<int32_t>& out) const;
  void encode_plain(std::string_view text, std::vector<int32_t>& out) const;
};

// BPE on one pre-token (already in the byte-level alphabet): repeatedly merge the
// adjacent pair of lowest rank, leftmost first.
void Tokenizer::Impl::bpe(const std::string& word, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    auto it = vocab.find(word);
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  {
    std::lock_guard lock(cache_mutex);
    auto it = cache.find(word);
    if (it != cache.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> symbols;
  size_t i = 0;
  while (i < word.size()) {
    unsigned char c = static_cast<unsigned char>(word[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
    n = std::min(n, word.size() - i);
    auto it = vocab.find(word.substr(i, n));
    if (it == vocab.end()) {
      fail("{}: character '{}' of the byte-level alphabet is missing from the vocabulary", source,
           word.substr(i, n));
    }
    symbols.push_back(it->second);
    i += n;
  }
  while (symbols.size() > 1) {
    int32_t best_rank = INT32_MAX;
    size_t best = 0;
    for (size_t k = 0; k + 1 < symbols.size(); ++k) {
      auto it = merge_rank.find({symbols[k], symbols[k + 1]});
      if (it != merge_rank.end() && it->second < best_rank) {
        best_rank = it->second;
        best = k;
      }
    }
    if (best_rank == INT32_MAX) break;
    auto merged = vocab.find(id_to_token[symbols[best]] + id_to_token[symbols[best + 1]]);
    ANVIL_CHECK(merged != vocab.end());
    symbols[best] = merged->second;
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  out.insert(out.end(), symbols.begin(), symbols.end());
  std::lock_guard lock(cache_mutex);
  if (cache.size() > 200000) cache.clear();
  cache.emplace(word, symbols);
}

void Tokenizer::Impl::encode_plain(std::string_view raw, std::vector<int32_t>& out) const {
  if (raw.empty()) return;
  std::string text = nfc ? data::nfc(raw) : std::string(raw);
  if (add_prefix_space && !text.empty() && text[0] != ' ') text.insert(text.begin(), ' ');
  std::vector<std::string_view> pieces = {text};
  if (valid_utf8(text)) {
    for (const auto& re : splits) {
      std::vector<std::string_view> next;
      for (std::string_view p : pieces) re->split(p, next);
      pieces.swap(next);
    }
  }
  for (std::string_view p : pieces) {
    bpe(byte_level ? byte_level_encode(p) : std::string(p), out);
  }
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_file(const std::filesystem::path& path) {
  std::filesystem::path file = std::filesystem::is_directory(path) ? path / "tokenizer.json" : path;
  if (!std::filesystem::exists(file)) fail("{}: no such file", file.string());
  return from_json(read_json_file(file), file.string());
}

Tokenizer Tokenizer::from_json(const json& j, const std::string& source) {
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  if (!j.is_object()) fail("{}: tokenizer.json must be an object", source);

  // normalizer: null | NFC | Sequence of those
  auto apply_normalizer = [&](const json& n, auto& self) -> void {
    if (n.is_null()) return;
    std::string type = n.value("type", "");
    if (type == "NFC") {
      impl->nfc = true;
    } else if (type == "Sequence") {
      for (const json& e : n.value("normalizers", json::array())) self(e, self);
    } else {
      fail("{}: normalizer type '{}' is not supported (NFC or Sequence)", source, type);
    }
  };
  apply_normalizer(j.value("normalizer", json()), apply_normalizer);

  // pre_tokenizer: Split(Regex, Isolated) and ByteLevel, alone or in a Sequence
  auto apply_pre = [&](const json& p, auto& self) -> void {
    if (p.is_null()) return;
    std::string type = p.value("type", "");
    if (type == "Sequence") {
      for (const json& e : p.value("pretokenizers", json::array())) self(e, self);
    } else if (type == "Split") {
      if (p.value("behavior", "") != "Isolated" || p.value("invert", false)) {
        fail("{}: pre_tokenizer Split with behavior '{}' invert {} is not supported (Isolated)",
             source, p.value("behavior", ""), p.value("invert", false));
      }
      const json& pattern = p.at("pattern");
      std::string re;
      if (pattern.contains("Regex")) {
        re = pattern["Regex"].get<std::string>();
      } else if (pattern.contains("String")) {
        for (char c : pattern["String"].get<std::string>()) {
          if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) re += '\\';
          re += c;
        }
      } else {
        fail("{}: pre_tokenizer Split pattern must be Regex or String", source);
      }
      impl->splits.push_back(std::make_unique<Regex>(re, source + ": pre_tokenizer Split"));
    } else if (type == "ByteLevel") {
      impl->byte_level = true;
      impl->add_prefix_space = p.value("add_prefix_space", false);
      if (p.value("use_regex", true)) {
        impl->splits.push_back(std::make_unique<Regex>(kGpt2Regex, source + ": ByteLevel"));
      }
    } else {
      fail("{}: pre_tokenizer type '{}' is not supported (Split, ByteLevel, Sequence)", source,
           type);
    }
  };
  apply_pre(j.value("pre_tokenizer", json()), apply_pre);
  if (!impl->byte_level) fail("{}: only byte-level BPE tokenizers are supported", source);

  const json& model = j.contains("model") ? j["model"] : json();
  if (!model.is_object() || model.value("type", "BPE") != "BPE") {
    fail("{}: model type must be BPE", source);
  }
  if (model.value("byte_fallback", false)) fail("{}: model.byte_fallback is not supported", source);
  impl->ignore_merges = model.value("ignore_merges", false);
  if (!model.contains("vocab") || !model["vocab"].is_object())
    fail("{}: model.vocab missing", source);
  int32_t max_id = -1;
  for (const auto& [tok, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX / 2) {
      fail("{}: model.vocab['{}'] must be a non-negative integer id", source, tok);
    }
    impl->vocab[tok] = id.get<int32_t>();
    max_id = std::max(max_id, id.get<int32_t>());
  }
  std::vector<AddedToken> added;
  for (const json& t : j.value("added_tokens", json::array())) {
    if (!t.contains("id") || !t.contains("content") || !t["content"].is_string() ||
        !t["id"].is_number_integer()) {
      fail("{}: added_tokens entries need integer 'id' and string 'content'", source);
    }
    AddedToken a{t["id"].get<int32_t>(),        t["content"].get<std::string>(),
                 t.value("lstrip", false),      t.value("rstrip", false),
                 t.value("single_word", false), t.value("special", false)};
    if (a.content.empty()) fail("{}: added token {} has empty content", source, a.id);
    max_id = std::max(max_id, a.id);
    added.push_back(a);
  }
  impl->id_to_token.assign(static_cast<size_t>(max_id + 1), "");
  impl->special.assign(static_cast<size_t>(max_id + 1), false);
  impl->is_added.assign(static_cast<size_t>(max_id + 1), false);
  for (const auto& [tok, id] : impl->vocab) impl->id_to_token[id] = tok;
  for (const auto& a : added) {
    impl->id_to_token[a.id] = a.content;
    impl->special[a.id] = a.special;
    impl->is_added[a.id] = true;
    impl->vocab.emplace(a.content, a.id);
  }
  impl->added = added;
  // Longest first, so the first match at a position is the longest.
  std::stable_sort(
      impl->added.begin(), impl->added.end(),
      [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });

  int32_t rank = 0;
  for (const json& m : model.value("merges", json::array())) {
    std::string a, b;
    if (m.is_string()) {
      std::string s = m.get<std::string>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos) fail("{}: merge '{}' is not 'a b'", source, s);
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      fail("{}: model.merges[{}] must be 'a b' or [a, b]", source, rank);
    }
    auto ia = impl->vocab.find(a), ib = impl->vocab.find(b), iab = impl->vocab.find(a + b);
    if (ia == impl->vocab.end() || ib == impl->vocab.end() || iab == impl->vocab.end()) {
      fail("{}: model.merges[{}] ('{}', '{}') uses a token missing from the vocabulary", source,
           rank, a, b);
    }
    impl->merge_rank.emplace(std::make_pair(ia->second, ib->second), rank++);
  }

  // post_processor: only TemplateProcessing adds ids (ByteLevel affects offsets only).
  auto apply_post = [&](const json& p, auto& self) -> void {
    if (p.is_null()) return;
    std::string type = p.value("type", "");
    if (type == "Sequence") {
      for (const json& e : p.value("processors", json::array())) self(e, self);
    } else if (type == "TemplateProcessing") {
      bool after = false;
      for (const json& piece : p.value("single", json::array())) {
        if (piece.contains("Sequence")) {
          after = true;
        } else if (piece.contains("SpecialToken")) {
          std::string id = piece["SpecialToken"].value("id", "");
          const json& st = p.value("special_tokens", json::object());
          if (!st.contains(id)) fail("{}: post_processor special token '{}' undefined", source, id);
          for (const json& x : st[id].value("ids", json::array())) {
            (after ? impl->suffix_ids : impl->prefix_ids).push_back(x.get<int32_t>());
          }
        }
      }
    } else if (type != "ByteLevel") {
      fail("{}: post_processor type '{}' is not supported", source, type);
    }
  };
  apply_post(j.value("post_processor", json()), apply_post);
  const json& decoder = j.value("decoder", json());
  if (!decoder.is_null() && decoder.value("type", "") != "ByteLevel") {
    fail("{}: decoder type '{}' is not supported (ByteLevel)", source, decoder.value("type", ""));
  }
  return Tokenizer(std::move(impl));
}

std::vector<std::string> split_isolated(const std::string& pattern, std::string_view text) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::unique_ptr<Regex>> compiled;
  const Regex* re;
  {
    std::lock_guard lock(mutex);
    auto& slot = compiled[pattern];
    if (!slot) slot = std::make_unique<Regex>(pattern, "split_isolated");
    re = slot.get();
  }
  std::vector<std::string_view> views;
  if (valid_utf8(text)) {
    re->split(text, views);
  } else {
    views.push_back(text);
  }
  return {views.begin(), views.end()};
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  if (add_special_tokens) out = m.prefix_ids;
  size_t start = 0, pos = 0;
  while (pos < text.size()) {
    const AddedToken* hit = nullptr;
    size_t hs = 0, he = 0;
    for (const AddedToken& a : m.added) {
      if (text.compare(pos, a.content.size(), a.content) != 0) continue;
      size_t s = pos, e = pos + a.content.size();
      if (a.single_word &&
          ((s > 0 && is_word_char(static_cast<unsigned char>(text[s - 1]))) ||
           (e < text.size() && is_word_char(static_cast<unsigned char>(text[e]))))) {
        continue;
      }
      if (a.lstrip) {
        while (s > start && is_space(static_cast<unsigned char>(text[s - 1]))) --s;
      }
      if (a.rstrip) {
        while (e < text.size() && is_space(static_cast<unsigned char>(text[e]))) ++e;
      }
      hit = &a;
      hs = s;
      he = e;
      break;
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    m.encode_plain(text.substr(start, hs - start), out);
    out.push_back(hit->id);
    start = pos = he;
  }
  m.encode_plain(text.substr(start), out);
  if (add_special_tokens) out.insert(out.end(), m.suffix_ids.begin(), m.suffix_ids.end());
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::string out, pending;
  for (int32_t id : ids) {
    if (id < 0 || id >= static_cast<int32_t>(m.id_to_token.size()) || m.id_to_token[id].empty()) {
      fail("{}: token id {} is not in the vocabulary", m.source, id);
    }
    if (m.is_added[id]) {
      out += utf8_lossy(byte_level_decode(pending));
      pending.clear();
      if (!(skip_special_tokens && m.special[id])) out += m.id_to_token[id];
    } else {
      pending += m.id_to_token[id];
    }
  }
  out += utf8_lossy(byte_level_decode(pending));
  return out;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_to_token.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->vocab.find(std::string(token));
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size()) fail("{}: token id {} out of range", impl_->source, id);
  return impl_->id_to_token[id];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->special[id];
}

}  // namespace anvil::data
