// Parquet rows through the libanvil_parquet.so plugin (cmake/AnvilArrow.cmake explains why
// Arrow lives in a plugin). The plugin is found at ANVIL_PARQUET_PLUGIN (an environment
// variable naming the .so) or where the build put it, and opened once per process.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace anvil::data {

// True when this build can read Parquet (the plugin was built and loads). Never throws.
bool parquet_supported();

// Calls `on_row(row, value, error)` for every row of `path` in order, `row` 0-based: either
// `value` is the row as a JSON object (columns in schema order) and `error` is empty, or
// `error` says why the row could not be converted (e.g. invalid UTF-8 in a column). An
// exception thrown by `on_row` stops the read and propagates. Throws anvil::Error naming
// `path` when the file cannot be read as Parquet, or when Parquet support is not built.
void read_parquet_rows(const std::filesystem::path& path,
                       const std::function<void(int64_t row, nlohmann::ordered_json value,
                                                const std::string& error)>& on_row);

}  // namespace anvil::data
