// libanvil_parquet.so: Parquet rows as JSON objects through Arrow C++ (the pyarrow wheel).
// Built only when cmake/AnvilArrow.cmake finds Arrow; loaded by parquet_reader.cpp.
//
// Value mapping: null -> null, bool, integers, floats (NaN/inf -> null, as JSON has none),
// string/large_string/string_view -> string (must be UTF-8), binary -> string when it is
// UTF-8, list/large_list/fixed_size_list -> array, struct -> object in field order with null
// fields left out (pyarrow unifies the fields of a column's structs, so a message written
// without "tool_calls" reads back with "tool_calls": null; leaving nulls out gives the
// JSONL reading back), map with string keys -> object, dictionary -> its value, anything
// else (timestamps, decimals, ...) -> the string Arrow prints for it.
#include "rollout/data/parquet_plugin.h"

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <parquet/arrow/reader.h>
#include <parquet/exception.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

namespace {

using ojson = nlohmann::ordered_json;

// A conversion failure confined to one row (the caller skips or fails that row).
struct RowError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

bool valid_utf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
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
    // Overlong forms, surrogates and values past U+10FFFF are invalid.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

ojson text(std::string_view s, const std::string& column) {
  if (!valid_utf8(s)) throw RowError("column '" + column + "' holds invalid UTF-8");
  return ojson(std::string(s));
}

ojson convert(const arrow::Array& a, int64_t i, const std::string& column);

ojson list_values(const arrow::Array& values, int64_t begin, int64_t end,
                  const std::string& column) {
  ojson out = ojson::array();
  for (int64_t k = begin; k < end; ++k) out.push_back(convert(values, k, column));
  return out;
}

ojson convert(const arrow::Array& a, int64_t i, const std::string& column) {
  if (a.IsNull(i)) return nullptr;
  switch (a.type_id()) {
    case arrow::Type::NA:
      return nullptr;
    case arrow::Type::BOOL:
      return static_cast<const arrow::BooleanArray&>(a).Value(i);
    case arrow::Type::INT8:
      return static_cast<const arrow::Int8Array&>(a).Value(i);
    case arrow::Type::INT16:
      return static_cast<const arrow::Int16Array&>(a).Value(i);
    case arrow::Type::INT32:
      return static_cast<const arrow::Int32Array&>(a).Value(i);
    case arrow::Type::INT64:
      return static_cast<const arrow::Int64Array&>(a).Value(i);
    case arrow::Type::UINT8:
      return static_cast<const arrow::UInt8Array&>(a).Value(i);
    case arrow::Type::UINT16:
      return static_cast<const arrow::UInt16Array&>(a).Value(i);
    case arrow::Type::UINT32:
      return static_cast<const arrow::UInt32Array&>(a).Value(i);
    case arrow::Type::UINT64:
      return static_cast<const arrow::UInt64Array&>(a).Value(i);
    case arrow::Type::FLOAT:
    case arrow::Type::DOUBLE: {
      double d = a.type_id() == arrow::Type::FLOAT
                     ? static_cast<const arrow::FloatArray&>(a).Value(i)
                     : static_cast<const arrow::DoubleArray&>(a).Value(i);
      if (!std::isfinite(d)) return nullptr;
      return d;
    }
    case arrow::Type::STRING:
      return text(static_cast<const arrow::StringArray&>(a).GetView(i), column);
    case arrow::Type::LARGE_STRING:
      return text(static_cast<const arrow::LargeStringArray&>(a).GetView(i), column);
    case arrow::Type::STRING_VIEW:
      return text(static_cast<const arrow::StringViewArray&>(a).GetView(i), column);
    case arrow::Type::BINARY:
      return text(static_cast<const arrow::BinaryArray&>(a).GetView(i), column);
    case arrow::Type::LARGE_BINARY:
      return text(static_cast<const arrow::LargeBinaryArray&>(a).GetView(i), column);
    case arrow::Type::LIST: {
      const auto& l = static_cast<const arrow::ListArray&>(a);
      return list_values(*l.values(), l.value_offset(i), l.value_offset(i) + l.value_length(i),
                         column);
    }
    case arrow::Type::LARGE_LIST: {
      const auto& l = static_cast<const arrow::LargeListArray&>(a);
      return list_values(*l.values(), l.value_offset(i), l.value_offset(i) + l.value_length(i),
                         column);
    }
    case arrow::Type::FIXED_SIZE_LIST: {
      const auto& l = static_cast<const arrow::FixedSizeListArray&>(a);
      return list_values(*l.values(), l.value_offset(i), l.value_offset(i) + l.value_length(i),
                         column);
    }
    case arrow::Type::STRUCT: {
      const auto& s = static_cast<const arrow::StructArray&>(a);
      ojson out = ojson::object();
      for (int f = 0; f < s.num_fields(); ++f) {
        ojson v = convert(*s.field(f), i, column);
        if (!v.is_null()) out[s.struct_type()->field(f)->name()] = std::move(v);
      }
      return out;
    }
    case arrow::Type::MAP: {
      const auto& m = static_cast<const arrow::MapArray&>(a);
      ojson out = ojson::object();
      for (int64_t k = m.value_offset(i); k < m.value_offset(i) + m.value_length(i); ++k) {
        ojson key = convert(*m.keys(), k, column);
        if (!key.is_string()) {
          throw RowError("column '" + column + "' is a map whose keys are not strings");
        }
        out[key.get<std::string>()] = convert(*m.items(), k, column);
      }
      return out;
    }
    case arrow::Type::DICTIONARY: {
      const auto& d = static_cast<const arrow::DictionaryArray&>(a);
      return convert(*d.dictionary(), d.GetValueIndex(i), column);
    }
    default: {
      auto scalar = a.GetScalar(i);
      if (!scalar.ok()) throw RowError("column '" + column + "': " + scalar.status().ToString());
      return (*scalar)->ToString();
    }
  }
}

void copy_error(const std::string& message, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  size_t n = std::min(message.size(), err_len - 1);
  std::memcpy(err, message.data(), n);
  err[n] = '\0';
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int anvil_parquet_abi_version(void) {
  return ANVIL_PARQUET_ABI_VERSION;
}

extern "C" __attribute__((visibility("default"))) int anvil_parquet_read(
    const char* path, anvil_parquet_row_fn on_row, void* ctx, char* err, size_t err_len) {
  try {
    auto file = arrow::io::ReadableFile::Open(path);
    if (!file.ok()) throw std::runtime_error(file.status().ToString());
    auto reader = parquet::arrow::OpenFile(*file, arrow::default_memory_pool());
    if (!reader.ok()) throw std::runtime_error(reader.status().ToString());
    auto batches = (*reader)->GetRecordBatchReader();
    if (!batches.ok()) throw std::runtime_error(batches.status().ToString());
    int64_t row = 0;
    while (true) {
      std::shared_ptr<arrow::RecordBatch> batch;
      arrow::Status st = (*batches)->ReadNext(&batch);
      if (!st.ok()) throw std::runtime_error(st.ToString());
      if (!batch) break;
      const auto& schema = *batch->schema();
      for (int64_t i = 0; i < batch->num_rows(); ++i, ++row) {
        std::string json, error;
        try {
          ojson obj = ojson::object();
          for (int c = 0; c < batch->num_columns(); ++c) {
            const std::string& name = schema.field(c)->name();
            obj[name] = convert(*batch->column(c), i, name);
          }
          json = obj.dump();
        } catch (const RowError& e) {
          error = e.what();
        }
        int stop = error.empty() ? on_row(ctx, row, json.data(), json.size(), nullptr)
                                 : on_row(ctx, row, nullptr, 0, error.c_str());
        if (stop != 0) return 0;
      }
    }
    return 0;
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
    return 1;
  }
}
