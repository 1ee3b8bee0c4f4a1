#include "rollout/data/parquet_reader.hpp"

#include "backends/common/error.hpp"
#include "rollout/data/parquet_plugin.h"

#include <dlfcn.h>

#include <cstdlib>
#include <exception>

namespace anvil::data {
namespace {

struct Plugin {
  decltype(&anvil_parquet_read) read = nullptr;
  std::string error;  // why it could not be loaded
};

const Plugin& plugin() {
  static const Plugin p = [] {
    Plugin out;
    std::string path;
    if (const char* env = std::getenv("ANVIL_PARQUET_PLUGIN"); env != nullptr && *env != '\0') {
      path = env;
    } else {
#ifdef ANVIL_PARQUET_PLUGIN_PATH
      path = ANVIL_PARQUET_PLUGIN_PATH;
#else
      out.error =
          "Parquet support is not built into anvil (pyarrow was not found when CMake ran; run "
          "scripts/setup.sh and reconfigure, or convert the file to JSONL)";
      return out;
#endif
    }
    // RTLD_LOCAL keeps the wheel's exported OpenSSL/absl symbols out of the global scope;
    // RTLD_DEEPBIND makes the plugin bind to its own copies first.
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) {
      const char* why = dlerror();
      out.error = fmt::format("cannot load the Parquet plugin {}: {}", path, why ? why : "?");
      return out;
    }
    auto version = reinterpret_cast<decltype(&anvil_parquet_abi_version)>(
        dlsym(handle, "anvil_parquet_abi_version"));
    auto read =
        reinterpret_cast<decltype(&anvil_parquet_read)>(dlsym(handle, "anvil_parquet_read"));
    if (version == nullptr || read == nullptr || version() != ANVIL_PARQUET_ABI_VERSION) {
      out.error = fmt::format("{} is not a compatible anvil Parquet plugin", path);
      return out;
    }
    out.read = read;  // the handle stays open for the life of the process
    return out;
  }();
  return p;
}

struct Context {
  const std::function<void(int64_t, nlohmann::ordered_json, const std::string&)>* on_row;
  const std::filesystem::path* path;
  std::exception_ptr exception;
};

int trampoline(void* ctx, int64_t row, const char* json, size_t json_len, const char* error) {
  auto* c = static_cast<Context*>(ctx);
  try {
    if (json == nullptr) {
      (*c->on_row)(row, nullptr, error != nullptr ? error : "unreadable row");
      return 0;
    }
    auto value = nlohmann::ordered_json::parse(json, json + json_len);
    (*c->on_row)(row, std::move(value), std::string());
    return 0;
  } catch (...) {
    c->exception = std::current_exception();
    return 1;
  }
}

}  // namespace

bool parquet_supported() { return plugin().read != nullptr; }

void read_parquet_rows(
    const std::filesystem::path& path,
    const std::function<void(int64_t, nlohmann::ordered_json, const std::string&)>& on_row) {
  const Plugin& p = plugin();
  if (p.read == nullptr) fail("{}: cannot read Parquet: {}", path.string(), p.error);
  Context ctx{&on_row, &path, nullptr};
  char err[1024] = {0};
  int rc = p.read(path.c_str(), &trampoline, &ctx, err, sizeof err);
  if (ctx.exception) std::rethrow_exception(ctx.exception);
  if (rc != 0) fail("{}: cannot read Parquet: {}", path.string(), err);
}

}  // namespace anvil::data
