// Unit tests for the data pipeline (rollout/data): dataset reading and bad-row rules, the
// epoch order and resumable cursor, conversation loss masks, the prefetch queue, and the
// Parquet plugin's isolation. Cross-checks against Python (transformers masks, pyarrow
// files) are in tests/parity/test_data_parity.py.
#include "backends/common/error.hpp"
#include "rollout/data/bpe_trainer.hpp"
#include "rollout/data/conversation.hpp"
#include "rollout/data/dataset.hpp"
#include "rollout/data/parquet_reader.hpp"
#include "rollout/data/prefetch_queue.hpp"
#include "rollout/data/prompt_source.hpp"
#include "rollout/data/sample_loader.hpp"
#include "tests/unit/error_of.hpp"

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace anvil::data;
using anvil::test_util::error_of;
using ojson = nlohmann::ordered_json;
namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() / (std::string("anvil_data_test_") + info->test_suite_name() +
                                         "_" + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path_ / name, std::ios::binary) << text;
    return (path_ / name).string();
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// --- UTF-8 and formats ---

TEST(DataUtf8, AcceptsValidRejectsInvalid) {
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xff"));
  EXPECT_FALSE(is_valid_utf8("\xc3"));              // truncated
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate U+D800
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
}

TEST(DataFormat, DetectsByExtensionAndContent) {
  TempDir d;
  EXPECT_EQ(detect_format(d.write("a.jsonl", "{}\n")), FileFormat::Jsonl);
  EXPECT_EQ(detect_format(d.write("a.parquet", "whatever")), FileFormat::Parquet);
  EXPECT_EQ(detect_format(d.write("a.data", "  \n{\"x\": 1}\n")), FileFormat::Jsonl);
  EXPECT_EQ(detect_format(d.write("b.data", "PAR1....")), FileFormat::Parquet);
  std::string txt = d.write("c.txt", "hello\n");
  EXPECT_NE(error_of([&] { detect_format(txt); }).find("c.txt: not a dataset file"),
            std::string::npos);
  EXPECT_NE(error_of([&] { detect_format(d.path() / "missing.jsonl"); }).find("does not exist"),
            std::string::npos);
  EXPECT_NE(error_of([&] { detect_format(d.path()); }).find("not a regular file"),
            std::string::npos);
}

// --- rows and bad rows ---

TEST(DataRows, ReadsKeysStringsAndMessages) {
  TempDir d;
  std::string f = d.write(
      "a.jsonl",
      R"({"q": "what is 2+2?", "a": "4", "m": {"id": 7}, "t": "[{\"type\": \"function\"}]"})"
      "\n\n"
      R"({"q": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f", "arguments": {"b": 1, "a": 2}}}]}], "a": 5})"
      "\r\n");
  DataKeys keys{"q", "a", "m", "t"};
  BadRows bad("a", false);
  auto rows = load_samples("a", f, keys, bad);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(bad.total(), 0u);
  EXPECT_EQ(rows[0]->line, 1u);
  EXPECT_EQ(rows[0]->input, "what is 2+2?");
  EXPECT_EQ(rows[0]->label, "4");
  EXPECT_EQ(rows[0]->metadata, ojson({{"id", 7}}));
  EXPECT_EQ(rows[0]->tools, ojson::parse(R"([{"type": "function"}])"));  // JSON text decoded
  EXPECT_EQ(rows[1]->line, 3u);
  EXPECT_TRUE(rows[1]->input.is_array());
  EXPECT_EQ(rows[1]->metadata, ojson::object());  // missing metadata reads as {}
  EXPECT_TRUE(rows[1]->tools.is_null());
  // Key order inside messages is kept (tojson of tool arguments depends on it).
  EXPECT_EQ(rows[1]->input[1]["tool_calls"][0]["function"]["arguments"].dump(), R"({"b":1,"a":2})");
}

TEST(DataRows, BadRowsAreCountedByReasonOrFailUnderStrict) {
  TempDir d;
  std::string f =
      d.write("b.jsonl",
              "{\"prompt\": \"ok\", \"label\": 1}\n"                       // 1 good
              "{\"prompt\": 3, \"label\": 1}\n"                            // 2 wrong type
              "{\"label\": 1}\n"                                           // 3 missing input
              "{\"prompt\": \"x\"}\n"                                      // 4 missing label
              "not json\n"                                                 // 5 malformed
              "{\"prompt\": \"\xff\", \"label\": 1}\n"                     // 6 bad UTF-8
              "{\"prompt\": [], \"label\": 1}\n"                           // 7 empty list
              "{\"prompt\": [{\"content\": \"x\"}], \"label\": 1}\n"       // 8 no role
              "{\"prompt\": [{\"role\": \"user\"}], \"label\": 1}\n"       // 9 no content
              "[1, 2]\n"                                                   // 10 not object
              "{\"prompt\": \"ok\", \"label\": 1, \"meta\": [1]}\n"        // 11 bad meta
              "{\"prompt\": \"ok\", \"label\": 1, \"tools\": \"{bad\"}\n"  // 12 bad tools
              "{\"prompt\": \"fine\", \"label\": \"l\"}\n");               // 13 good
  DataKeys keys{"prompt", "label", "meta", "tools"};
  BadRows bad("b", false);
  auto rows = load_samples("b", f, keys, bad);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]->line, 1u);
  EXPECT_EQ(rows[1]->line, 13u);
  EXPECT_EQ(bad.total(), 11u);
  EXPECT_EQ(bad.by_reason().at("wrong_type"), 5u);   // 2, 7, 10, 11, 12
  EXPECT_EQ(bad.by_reason().at("missing_key"), 4u);  // 3, 4, 8, 9
  EXPECT_EQ(bad.by_reason().at("malformed_json"), 1u);
  EXPECT_EQ(bad.by_reason().at("invalid_utf8"), 1u);

  BadRows strict("b", true);
  std::string err = error_of([&] { load_samples("b", f, keys, strict); });
  EXPECT_NE(
      err.find("b.jsonl:2: key 'prompt': is an integer, expected a string or a messages list"),
      std::string::npos)
      << err;
  EXPECT_NE(err.find("--strict-data"), std::string::npos);
  // Each rule names its line and key in strict mode.
  auto strict_error = [&](const std::string& line) {
    std::string g = d.write("s.jsonl", line + "\n");
    BadRows s("s", true);
    return error_of([&] { load_samples("s", g, keys, s); });
  };
  EXPECT_NE(strict_error("{\"prompt\": \"x\"}").find("s.jsonl:1: key 'label': missing"),
            std::string::npos);
  EXPECT_NE(strict_error("{\"prompt\": \"\xc3\", \"label\": 1}").find("s.jsonl:1: invalid UTF-8"),
            std::string::npos);
  EXPECT_NE(strict_error("{\"prompt\": [{\"role\": \"user\"}], \"label\": 1}")
                .find("key 'prompt': message 0 (user) has no 'content'"),
            std::string::npos);
  EXPECT_NE(strict_error("{\"prompt\": \"x\", \"label\": 1, \"meta\": 2}")
                .find("key 'meta': is an integer, expected an object"),
            std::string::npos);
}

// --- sources, order, cursor ---

TEST(DataSource, ParsesPromptDataArguments) {
  auto one = parse_prompt_data({"/x/train.parquet"});
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].name, "train");
  auto two = parse_prompt_data({"math", "a.jsonl", "code", "b.parquet"});
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[1].name, "code");
  EXPECT_EQ(two[1].path, "b.parquet");
  EXPECT_NE(error_of([] { parse_prompt_data({}); }).find("no dataset"), std::string::npos);
  EXPECT_NE(error_of([] {
              parse_prompt_data({"a", "b", "c"});
            }).find("NAME PATH pairs"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              parse_prompt_data({"a", "x", "a", "y"});
            }).find("given twice"),
            std::string::npos);
}

TEST(DataOrder, ShuffleIsASeededPermutationPinnedAcrossLibraries) {
  auto id = epoch_order(5, false, 1, 3);
  EXPECT_EQ(id, (std::vector<uint64_t>{0, 1, 2, 3, 4}));
  auto a = epoch_order(1000, true, 42, 0);
  EXPECT_EQ(a, epoch_order(1000, true, 42, 0));
  EXPECT_NE(a, epoch_order(1000, true, 42, 1));
  EXPECT_NE(a, epoch_order(1000, true, 43, 0));
  EXPECT_EQ(std::set<uint64_t>(a.begin(), a.end()).size(), 1000u);
  EXPECT_EQ(*std::max_element(a.begin(), a.end()), 999u);
  // mt19937_64 output is fixed by the standard and the draw is ours, so this order is the
  // same with every compiler and standard library; a change here breaks resumed runs.
  EXPECT_EQ(epoch_order(8, true, 42, 0), (std::vector<uint64_t>{7, 0, 5, 1, 2, 4, 3, 6}));
}

std::vector<std::string> drain(PromptSource& s, size_t n = SIZE_MAX) {
  std::vector<std::string> out;
  while (out.size() < n) {
    auto x = s.next();
    if (!x) break;
    out.push_back((*x)->source + ":" + std::to_string((*x)->line));
  }
  return out;
}

TEST(DataSource, ConcatenatesSourcesOverEpochsAndCounts) {
  TempDir d;
  std::string a = d.write("a.jsonl", "{\"prompt\": \"a1\"}\n{\"prompt\": \"a2\"}\n");
  std::string b =
      d.write("b.jsonl", "{\"prompt\": \"b1\"}\n{\"prompt\": 1}\n{\"prompt\": \"b3\"}\n");
  DataOptions o;
  o.prompt_data = {"A", a, "B", b};
  o.num_epoch = 2;
  PromptSource s(o);
  EXPECT_EQ(s.size(), 4u);
  EXPECT_EQ(drain(s),
            (std::vector<std::string>{"A:1", "A:2", "B:1", "B:3", "A:1", "A:2", "B:1", "B:3"}));
  EXPECT_EQ(s.cursor().epoch, 2u);
  EXPECT_EQ(s.cursor().sources[0].consumed, 4u);
  EXPECT_EQ(s.cursor().sources[1].consumed, 4u);
  EXPECT_EQ(s.cursor().sources[1].bad_rows, 1u);
  EXPECT_FALSE(s.next().has_value());
}

TEST(DataSource, ResumedRunSeesExactlyTheRemainingSamples) {
  TempDir d;
  std::string a, b;
  for (int i = 0; i < 7; ++i) a += fmt::format("{{\"prompt\": \"a{}\"}}\n", i);
  for (int i = 0; i < 4; ++i) b += fmt::format("{{\"prompt\": \"b{}\"}}\n", i);
  DataOptions o;
  o.prompt_data = {"A", d.write("a.jsonl", a), "B", d.write("b.jsonl", b)};
  o.num_epoch = 3;
  o.shuffle = true;
  o.seed = 7;
  PromptSource full(o);
  auto expected = drain(full);
  ASSERT_EQ(expected.size(), 33u);
  // Cut mid-epoch, exactly at an epoch boundary, and in the last epoch.
  for (size_t cut : {0u, 5u, 11u, 12u, 22u, 32u}) {
    PromptSource first(o);
    auto head = drain(first, cut);
    std::string saved = first.cursor().to_json().dump();
    PromptSource second(o);
    second.restore(DataCursor::from_json(nlohmann::json::parse(saved), "cursor.json"));
    auto tail = drain(second);
    head.insert(head.end(), tail.begin(), tail.end());
    EXPECT_EQ(head, expected) << "cut at " << cut;
    EXPECT_EQ(second.cursor().sources[0].consumed, 21u);
  }
}

TEST(DataSource, CursorRejectsOtherDataOrSettings) {
  TempDir d;
  DataOptions o;
  o.prompt_data = {d.write("a.jsonl", "{\"prompt\": \"x\"}\n{\"prompt\": \"y\"}\n")};
  o.shuffle = true;
  PromptSource s(o);
  s.next();
  DataCursor c = s.cursor();
  DataOptions other = o;
  other.seed = 1;
  PromptSource t(other);
  EXPECT_NE(error_of([&] { t.restore(c); }).find("--rollout-seed=42"), std::string::npos);
  DataOptions more = o;
  more.prompt_data = {d.write("b.jsonl", "{\"prompt\": \"x\"}\n")};
  PromptSource u(more);
  EXPECT_NE(error_of([&] { u.restore(c); }).find("with 2 valid rows"), std::string::npos);
  nlohmann::json j = c.to_json();
  j.erase("offset");
  EXPECT_NE(error_of([&] {
              DataCursor::from_json(j, "ck.json");
            }).find("ck.json: data cursor has no 'offset'"),
            std::string::npos);
  j = c.to_json();
  j["epoch"] = -1;
  EXPECT_NE(
      error_of([&] { DataCursor::from_json(j, "ck.json"); }).find("'epoch' must be a non-negative"),
      std::string::npos);
  DataOptions empty;
  empty.prompt_data = {d.write("e.jsonl", "{\"x\": 1}\n")};
  EXPECT_NE(error_of([&] { PromptSource p(empty); }).find("no valid rows"), std::string::npos);
}

// --- conversations and loss masks ---

const char* kChatMl =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

Tokenizer test_tokenizer() {
  BpeTrainOptions o;
  o.vocab_size = 400;
  o.special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  return Tokenizer::from_json(train_byte_level_bpe(builtin_corpus(), o), "test tokenizer");
}

ChatTokenizer chat_tokenizer(const std::string& tmpl) {
  Tokenizer tok = test_tokenizer();
  int32_t im_end = *tok.token_to_id("<|im_end|>");
  return ChatTokenizer(std::move(tok), tmpl, ojson{{"eos_token", "<|im_end|>"}}, {im_end}, "test");
}

// The text of the trained tokens, one string per maximal run of mask 1.
std::vector<std::string> trained_runs(const ChatTokenizer& chat, const Encoded& e) {
  std::vector<std::string> runs;
  std::vector<int32_t> cur;
  for (size_t i = 0; i <= e.ids.size(); ++i) {
    if (i < e.ids.size() && e.loss_mask[i]) {
      cur.push_back(e.ids[i]);
    } else if (!cur.empty()) {
      runs.push_back(chat.tokenizer().decode(cur));
      cur.clear();
    }
  }
  return runs;
}

ojson conversation() {
  return ojson::parse(R"([
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "The answer is 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "tool", "content": "6"},
    {"role": "assistant", "content": "It is 6."}])");
}

TEST(DataConversation, MaskCoversExactlyAssistantContentAndEndOfTurn) {
  auto chat = chat_tokenizer(kChatMl);
  Encoded e = chat.encode_conversation(conversation(), nullptr);
  EXPECT_EQ(e.ids, chat.tokenizer().encode(chat.render(conversation(), nullptr, false)));
  ASSERT_EQ(e.loss_mask.size(), e.ids.size());
  EXPECT_EQ(trained_runs(chat, e),
            (std::vector<std::string>{"The answer is 4.<|im_end|>", "It is 6.<|im_end|>"}));
  // The "\n" after each <|im_end|> and the final token are not trained.
  EXPECT_EQ(e.loss_mask.back(), 0);

  Encoded g = chat.encode_conversation(conversation(), nullptr, true);
  EXPECT_EQ(g.text, e.text + "<|im_start|>assistant\n");
  EXPECT_EQ(trained_runs(chat, g), trained_runs(chat, e));
  EXPECT_EQ(std::vector<uint8_t>(g.loss_mask.begin(), g.loss_mask.begin() + e.ids.size()),
            e.loss_mask);
}

TEST(DataConversation, GenerationPromptTextTheTurnLacksIsNotTrainedOrRequired) {
  // The init-model / Qwen3 template: enable_thinking=false adds an empty think block to the
  // generation prompt only. The trained part still starts right after the turn header.
  std::string tmpl = std::string(kChatMl).replace(
      std::string(kChatMl).find("{%- endif %}"), 12,
      "{%- if enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
      "{%- endif %}");
  auto chat = chat_tokenizer(tmpl);
  chat.set_template_kwargs(ojson{{"enable_thinking", false}});
  Encoded e = chat.encode_conversation(conversation(), nullptr, true);
  EXPECT_NE(e.text.find("assistant\n<think>\n\n</think>\n\n"), std::string::npos);
  EXPECT_EQ(trained_runs(chat, e),
            (std::vector<std::string>{"The answer is 4.<|im_end|>", "It is 6.<|im_end|>"}));
}

TEST(DataConversation, NonPrefixStableTemplateIsAnError) {
  // Like Qwen3: the last assistant turn renders differently from earlier ones.
  auto chat = chat_tokenizer(
      "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
      "{%- if m.role == 'assistant' and loop.last %}[last]{% endif %}{{ m.content }}<|im_end|>\n"
      "{%- endfor %}");
  std::string err = error_of([&] { chat.encode_conversation(conversation(), nullptr); });
  EXPECT_NE(err.find("not prefix-stable: rendering messages[:3] is not a prefix of rendering "
                     "messages[:5] with add_generation_prompt (they differ at byte"),
            std::string::npos)
      << err;
}

TEST(DataConversation, CutInsideATokenIsAnError) {
  // The generation prompt ends inside "assistant", which the tokenizer keeps as one piece
  // together with what follows, so no token boundary exists where the trained part begins.
  auto chat = chat_tokenizer(
      "{%- for m in messages %}{% if m.role == 'assistant' %}as{{ m.content }}"
      "{% else %}<|im_start|>{{ m.content }}<|im_end|>{% endif %}{%- endfor %}"
      "{%- if add_generation_prompt %}as{% endif %}");
  ojson msgs = ojson::parse(R"([{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "sistant"}])");
  std::string err = error_of([&] { chat.encode_conversation(msgs, nullptr); });
  EXPECT_NE(err.find("not token-exact"), std::string::npos) << err;
}

TEST(DataConversation, TemplateErrorsNameThePrefix) {
  auto chat = chat_tokenizer(
      "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
      "{{ m.content }}{% endfor %}");
  std::string err = error_of([&] { chat.encode_conversation(conversation(), nullptr); });
  EXPECT_NE(err.find("rendering messages[:5] with add_generation_prompt"), std::string::npos)
      << err;
  EXPECT_NE(err.find("no tools"), std::string::npos) << err;
}

TEST(DataConversation, PairsAndPrompts) {
  auto chat = chat_tokenizer(kChatMl);
  Encoded p = chat.encode_pair("Q: 1+1 A:", " 2");
  auto q = chat.tokenizer().encode("Q: 1+1 A:");
  auto r = chat.tokenizer().encode(" 2");
  ASSERT_EQ(p.ids.size(), q.size() + r.size() + 1);
  EXPECT_EQ(p.ids.back(), *chat.tokenizer().token_to_id("<|im_end|>"));
  for (size_t i = 0; i < p.ids.size(); ++i) EXPECT_EQ(p.loss_mask[i], i < q.size() ? 0 : 1);

  Encoded g = chat.encode_prompt("hello", nullptr, true);
  EXPECT_EQ(g.text, "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(std::count(g.loss_mask.begin(), g.loss_mask.end(), 1), 0);
  EXPECT_EQ(chat.encode_prompt("raw text", nullptr, false).text, "raw text");
  EXPECT_NE(error_of([&] {
              chat.encode_prompt(conversation(), nullptr, false);
            }).find("--apply-chat-template"),
            std::string::npos);
  auto none = ChatTokenizer(test_tokenizer(), "", ojson::object(), {}, "none");
  EXPECT_NE(error_of([&] { none.render(conversation(), nullptr, false); }).find("no chat_template"),
            std::string::npos);
}

// --- loader: too-long rows, strict mode, cursor per sample, prefetch ---

TEST(DataLoader, TooLongRowsAreSkippedAndCountedOrFailStrict) {
  TempDir d;
  std::string f = d.write("l.jsonl",
                          "{\"prompt\": \"short\", \"label\": \"ok\"}\n"
                          "{\"prompt\": \"a much much longer prompt than the limit allows for\", "
                          "\"label\": \"no\"}\n"
                          "{\"prompt\": \"tiny\", \"label\": \"fine\"}\n");
  auto chat = chat_tokenizer(kChatMl);
  DataOptions o;
  o.prompt_data = {f};
  o.keys.label = "label";
  o.max_length = 24;
  PromptSource s(o);
  SampleLoader loader(s, chat, LoaderMode::Sft, o);
  std::vector<uint64_t> lines;
  while (auto t = loader.next()) {
    lines.push_back(t->sample->line);
    EXPECT_LE(t->encoded.ids.size(), 24u);
    EXPECT_EQ(trained_runs(chat, t->encoded).size(), 1u);  // the label, as the assistant turn
  }
  EXPECT_EQ(lines, (std::vector<uint64_t>{1, 3}));
  EXPECT_EQ(s.cursor().sources[0].skipped, 1u);

  o.strict = true;
  PromptSource s2(o);
  SampleLoader strict(s2, chat, LoaderMode::Sft, o);
  strict.next();
  std::string err = error_of([&] { strict.next(); });
  EXPECT_NE(err.find("l.jsonl:2: "), std::string::npos) << err;
  EXPECT_NE(err.find("longer than --max-length 24"), std::string::npos) << err;
}

TEST(DataLoader, CursorOfEachSampleResumesAfterItEvenWithPrefetch) {
  TempDir d;
  std::string text;
  for (int i = 0; i < 9; ++i) text += fmt::format("{{\"prompt\": \"p{}\"}}\n", i);
  auto chat = chat_tokenizer(kChatMl);
  DataOptions o;
  o.prompt_data = {d.write("p.jsonl", text)};
  o.num_epoch = 2;
  o.shuffle = true;
  o.apply_chat_template = true;
  std::vector<uint64_t> expected;
  {
    PromptSource s(o);
    SampleLoader l(s, chat, LoaderMode::Prompt, o);
    while (auto t = l.next()) expected.push_back(t->sample->line);
  }
  ASSERT_EQ(expected.size(), 18u);
  // Consume 7 samples through a deep prefetch queue (it reads ahead), checkpoint the cursor
  // of the 7th, then resume without prefetch.
  DataCursor saved;
  std::vector<uint64_t> got;
  {
    PromptSource s(o);
    SampleLoader l(s, chat, LoaderMode::Prompt, o);
    PrefetchQueue<TokenizedSample> q([&] { return l.next(); }, 8);
    for (int i = 0; i < 7; ++i) {
      auto t = q.pop();
      ASSERT_TRUE(t);
      got.push_back(t->sample->line);
      saved = t->cursor;
    }
  }
  PromptSource s(o);
  s.restore(saved);
  SampleLoader l(s, chat, LoaderMode::Prompt, o);
  while (auto t = l.next()) got.push_back(t->sample->line);
  EXPECT_EQ(got, expected);
}

TEST(DataLoader, MetricsPerSourceAndQueueDepth) {
  DataCursor c;
  c.epoch = 1;
  c.offset = 3;
  c.sources = {{"math", "m.jsonl", 4, 2, 9, 1}, {"code", "c.parquet", 8, 0, 7, 0}};
  auto m = data_metrics(c, 12, 5);
  EXPECT_DOUBLE_EQ(m.at("data/epoch"), 1.25);
  EXPECT_DOUBLE_EQ(m.at("data/math/samples"), 9);
  EXPECT_DOUBLE_EQ(m.at("data/math/skipped"), 1);
  EXPECT_DOUBLE_EQ(m.at("data/math/bad_rows"), 2);
  EXPECT_DOUBLE_EQ(m.at("data/code/samples"), 7);
  EXPECT_DOUBLE_EQ(m.at("data/prefetch_queue_depth"), 5);
  EXPECT_EQ(data_metrics(c, 12, std::nullopt).count("data/prefetch_queue_depth"), 0u);
}

// --- prefetch queue ---

TEST(DataPrefetch, DeliversInOrderWithinCapacity) {
  std::atomic<int> produced{0};
  PrefetchQueue<int> q(
      [&]() -> std::optional<int> {
        if (produced == 100) return std::nullopt;
        return produced++;
      },
      4);
  // Give the producer time to fill the queue; it must stop at the capacity.
  for (int i = 0; i < 200 && q.depth() < 4; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(q.depth(), 4u);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_LE(produced.load(), 5);  // 4 queued + at most one being produced
  for (int i = 0; i < 100; ++i) {
    auto v = q.pop();
    ASSERT_TRUE(v);
    EXPECT_EQ(*v, i);
    EXPECT_LE(q.depth(), 4u);
  }
  EXPECT_FALSE(q.pop().has_value());
  EXPECT_FALSE(q.pop().has_value());
}

TEST(DataPrefetch, ProducerExceptionReachesConsumerAfterEarlierItems) {
  int n = 0;
  PrefetchQueue<int> q(
      [&]() -> std::optional<int> {
        if (n == 3) anvil::fail("bad.jsonl:4: key 'prompt': missing");
        return n++;
      },
      2);
  EXPECT_EQ(*q.pop(), 0);
  EXPECT_EQ(*q.pop(), 1);
  EXPECT_EQ(*q.pop(), 2);
  EXPECT_EQ(error_of([&] { q.pop(); }), "bad.jsonl:4: key 'prompt': missing");
  EXPECT_EQ(error_of([&] { q.pop(); }), "bad.jsonl:4: key 'prompt': missing");
}

TEST(DataPrefetch, DestructorStopsABlockedProducer) {
  std::atomic<int> calls{0};
  auto start = std::chrono::steady_clock::now();
  {
    PrefetchQueue<int> q([&]() -> std::optional<int> { return calls++; }, 3);  // endless
    while (q.depth() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_EQ(*q.pop(), 0);
  }  // the producer is blocked on a full queue; the destructor must wake and join it
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_LE(calls.load(), 5);
}

// --- Parquet plugin ---

TEST(DataParquet, NonParquetFileIsAClearError) {
  TempDir d;
  std::string f = d.write("rows.parquet", "{\"prompt\": \"x\"}\n");
  std::string err =
      error_of([&] { read_parquet_rows(f, [](int64_t, ojson, const std::string&) {}); });
  EXPECT_NE(err.find("rows.parquet: cannot read Parquet"), std::string::npos) << err;
#ifndef ANVIL_TEST_HAVE_PARQUET
  // Built without pyarrow (-DANVIL_WITH_PARQUET=OFF): the error says so.
  EXPECT_NE(err.find("Parquet support is not built into anvil"), std::string::npos) << err;
#endif
}

#ifdef ANVIL_TEST_HAVE_PARQUET
// The wheel's libparquet exports its bundled OpenSSL; loading it must not put those symbols
// (or the plugin's) into the process's global scope, where they would interpose on
// Debian's libcrypto (used by gRPC).
TEST(DataParquet, PluginSymbolsStayOutOfTheGlobalScope) {
  ASSERT_TRUE(parquet_supported());
  TempDir d;
  std::string f = d.write("x.parquet", "PAR1 not really");
  error_of([&] { read_parquet_rows(f, [](int64_t, ojson, const std::string&) {}); });
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "anvil_parquet_read"), nullptr);
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "CRYPTO_THREAD_clean_local"), nullptr);
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "EVP_EncryptInit_ex"), nullptr);
  // And the plugin really is loaded (so the check above is not vacuous).
  void* h = dlopen(ANVIL_TEST_PARQUET_PLUGIN, RTLD_NOW | RTLD_NOLOAD);
  EXPECT_NE(h, nullptr);
  if (h) dlclose(h);
}
#endif

}  // namespace
