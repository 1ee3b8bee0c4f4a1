// Small helpers for reading JSON files with errors that name the file and key.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

namespace anvil {

// Reads and parses a JSON file. Throws anvil::Error naming `path` when the file cannot be
// read or is not well-formed JSON (with the parser's byte position).
nlohmann::json read_json_file(const std::filesystem::path& path);

// Parses `text`; `what` names the source in the error message (a file, "request body", ...).
nlohmann::json parse_json(const std::string& text, const std::string& what);

// Writes `value` to `path` atomically: a temporary file in the same directory, fsync'd,
// then renamed over `path`. A crash never leaves a half-written file.
void write_json_file_atomic(const std::filesystem::path& path, const nlohmann::json& value,
                            int indent = 2);

// Reads a whole file into a string; throws anvil::Error naming the file.
std::string read_text_file(const std::filesystem::path& path);

// Writes `text` to `path` atomically (temporary file + fsync + rename).
void write_text_file_atomic(const std::filesystem::path& path, const std::string& text);

// fsyncs the directory itself, making renames and creations inside it durable.
void sync_directory(const std::filesystem::path& dir);

}  // namespace anvil
