#include "rollout/data/dataset.hpp"

#include "backends/common/error.hpp"
#include "backends/common/log.hpp"
#include "rollout/data/parquet_reader.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <optional>

namespace anvil::data {

using ojson = nlohmann::ordered_json;

namespace fs = std::filesystem;

bool is_valid_utf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

FileFormat detect_format(const fs::path& path) {
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) fail("{}: dataset file does not exist", path.string());
  if (!fs::is_regular_file(status)) fail("{}: dataset path is not a regular file", path.string());
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  if (ext == ".jsonl" || ext == ".json") return FileFormat::Jsonl;
  if (ext == ".parquet") return FileFormat::Parquet;
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open dataset file", path.string());
  char magic[4] = {0, 0, 0, 0};
  in.read(magic, 4);
  if (in.gcount() == 4 && std::string_view(magic, 4) == "PAR1") return FileFormat::Parquet;
  in.clear();
  in.seekg(0);
  char c;
  while (in.get(c)) {
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    if (c == '{') return FileFormat::Jsonl;
    break;
  }
  fail(
      "{}: not a dataset file: expected JSONL (one JSON object per line; .jsonl) or Parquet "
      "(.parquet)",
      path.string());
}

void BadRows::report(const std::string& file, uint64_t line, const std::string& key,
                     const std::string& reason, const std::string& what) {
  std::string where = key.empty() ? fmt::format("{}:{}", file, line)
                                  : fmt::format("{}:{}: key '{}'", file, line, key);
  if (strict_) fail("{}: {} (bad row; --strict-data is set)", where, what);
  ++total_;
  ++by_reason_[reason];
  static auto log = anvil::log::get("data");
  if (total_ <= static_cast<uint64_t>(kLoggedBadRows)) {
    log->warn("{}: {}; row skipped (source '{}', {} skipped so far)", where, what, source_, total_);
  } else {
    log->debug("{}: {}; row skipped (source '{}')", where, what, source_);
  }
}

namespace {

// A rule broken by a row: the key at fault, the counter it goes to, and the message.
struct RowProblem {
  std::string key, reason, what;
};

std::string type_of(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::null:
      return "null";
    case ojson::value_t::object:
      return "an object";
    case ojson::value_t::array:
      return "a list";
    case ojson::value_t::string:
      return "a string";
    case ojson::value_t::boolean:
      return "a bool";
    case ojson::value_t::number_float:
      return "a float";
    default:
      return "an integer";
  }
}

std::optional<RowProblem> check_messages(const std::string& key, const ojson& msgs) {
  if (msgs.empty()) return RowProblem{key, "wrong_type", "messages list is empty"};
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ojson& m = msgs[i];
    if (!m.is_object()) {
      return RowProblem{key, "wrong_type",
                        fmt::format("message {} is {}, expected an object", i, type_of(m))};
    }
    auto role = m.find("role");
    if (role == m.end()) {
      return RowProblem{key, "missing_key", fmt::format("message {} has no 'role'", i)};
    }
    if (!role->is_string()) {
      return RowProblem{
          key, "wrong_type",
          fmt::format("message {}: 'role' is {}, expected a string", i, type_of(*role))};
    }
    auto content = m.find("content");
    bool has_tool_calls = m.contains("tool_calls") && !m["tool_calls"].is_null();
    if (content == m.end() || content->is_null()) {
      if (!has_tool_calls) {
        return RowProblem{
            key, "missing_key",
            fmt::format("message {} ({}) has no 'content'", i, role->get<std::string>())};
      }
    } else if (!content->is_string() && !content->is_array()) {
      return RowProblem{key, "wrong_type",
                        fmt::format("message {}: 'content' is {}, expected a string or a list", i,
                                    type_of(*content))};
    }
    if (has_tool_calls && !m["tool_calls"].is_array()) {
      return RowProblem{key, "wrong_type",
                        fmt::format("message {}: 'tool_calls' is {}, expected a list", i,
                                    type_of(m["tool_calls"]))};
    }
  }
  return std::nullopt;
}

// Validates `row` and fills `s`; returns the first problem found.
std::optional<RowProblem> extract(const ojson& row, const DataKeys& keys, Sample& s) {
  if (!row.is_object()) {
    return RowProblem{"", "wrong_type", fmt::format("row is {}, expected an object", type_of(row))};
  }
  auto input = row.find(keys.input);
  if (input == row.end() || input->is_null()) {
    return RowProblem{keys.input, "missing_key", "missing (the --input-key)"};
  }
  if (input->is_string()) {
    s.input = *input;
  } else if (input->is_array()) {
    if (auto p = check_messages(keys.input, *input)) return p;
    s.input = *input;
  } else {
    return RowProblem{keys.input, "wrong_type",
                      fmt::format("is {}, expected a string or a messages list", type_of(*input))};
  }
  if (!keys.label.empty()) {
    auto label = row.find(keys.label);
    if (label == row.end() || label->is_null()) {
      return RowProblem{keys.label, "missing_key", "missing (the --label-key)"};
    }
    s.label = *label;
  }
  s.metadata = ojson::object();
  if (!keys.metadata.empty()) {
    auto meta = row.find(keys.metadata);
    if (meta != row.end() && !meta->is_null()) {
      if (!meta->is_object()) {
        return RowProblem{keys.metadata, "wrong_type",
                          fmt::format("is {}, expected an object", type_of(*meta))};
      }
      s.metadata = *meta;
    }
  }
  if (!keys.tool.empty()) {
    auto tools = row.find(keys.tool);
    if (tools != row.end() && !tools->is_null()) {
      ojson t = *tools;
      if (t.is_string()) {
        try {
          t = ojson::parse(t.get<std::string>());
        } catch (const nlohmann::json::exception& e) {
          return RowProblem{keys.tool, "wrong_type",
                            fmt::format("is a string that is not JSON: {}", e.what())};
        }
      }
      if (!t.is_array() ||
          !std::all_of(t.begin(), t.end(), [](const ojson& x) { return x.is_object(); })) {
        return RowProblem{keys.tool, "wrong_type",
                          fmt::format("is {}, expected a list of tool objects", type_of(t))};
      }
      s.tools = std::move(t);
    }
  }
  return std::nullopt;
}

}  // namespace

std::vector<std::shared_ptr<const Sample>> load_samples(const std::string& source,
                                                        const fs::path& path, const DataKeys& keys,
                                                        BadRows& bad) {
  FileFormat format = detect_format(path);
  const std::string file = path.string();
  std::vector<std::shared_ptr<const Sample>> out;
  auto add = [&](uint64_t line, const ojson& row) {
    auto s = std::make_shared<Sample>();
    s->source = source;
    s->file = file;
    s->line = line;
    if (auto p = extract(row, keys, *s)) {
      bad.report(file, line, p->key, p->reason, p->what);
      return;
    }
    out.push_back(std::move(s));
  };
  if (format == FileFormat::Jsonl) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("{}: cannot open dataset file", file);
    std::string text;
    uint64_t line_number = 0;
    while (std::getline(in, text)) {
      ++line_number;
      if (!text.empty() && text.back() == '\r') text.pop_back();
      if (std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isspace(c); })) {
        continue;
      }
      if (!is_valid_utf8(text)) {
        bad.report(file, line_number, "", "invalid_utf8", "invalid UTF-8");
        continue;
      }
      ojson row;
      try {
        row = ojson::parse(text);
      } catch (const nlohmann::json::exception& e) {
        bad.report(file, line_number, "", "malformed_json",
                   fmt::format("malformed JSON: {}", e.what()));
        continue;
      }
      add(line_number, row);
    }
    if (in.bad()) fail("{}: read error after line {}", file, line_number);
  } else {
    read_parquet_rows(path, [&](int64_t row, ojson value, const std::string& error) {
      uint64_t line = static_cast<uint64_t>(row) + 1;
      if (!error.empty()) {
        bad.report(file, line, "",
                   error.find("UTF-8") != std::string::npos ? "invalid_utf8" : "unreadable", error);
        return;
      }
      add(line, value);
    });
  }
  return out;
}

}  // namespace anvil::data
