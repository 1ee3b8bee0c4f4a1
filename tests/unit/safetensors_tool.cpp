// Test tool for tests/parity/test_safetensors_parity.py: drives CheckpointReader and
// CheckpointWriter from the command line.
//
//   safetensors_tool copy SRC DST MAX_SHARD_BYTES
//       Reads every tensor of SRC (a .safetensors file or checkpoint directory) and writes
//       them to directory DST (sorted by name), sharded at MAX_SHARD_BYTES.
//   safetensors_tool rows SRC NAME BEGIN END DST
//       Writes rows [BEGIN, END) of tensor NAME under the same name to directory DST.
//   safetensors_tool list SRC
//       Prints {"name": {"dtype": ..., "shape": [...]}, ...} as JSON.
//
// Exit status: 0 on success, 1 with the anvil::Error message on stderr, 2 for bad usage.
#include "backends/common/error.hpp"
#include "backends/models/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <iostream>
#include <string>

namespace {

int usage() {
  std::cerr << "usage: safetensors_tool copy SRC DST MAX_SHARD_BYTES\n"
               "       safetensors_tool rows SRC NAME BEGIN END DST\n"
               "       safetensors_tool list SRC\n";
  return 2;
}

int run(int argc, char** argv) {
  using anvil::models::CheckpointReader;
  using anvil::models::CheckpointWriter;
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "copy" && argc == 5) {
    CheckpointReader r = CheckpointReader::open(argv[2]);
    CheckpointWriter w(argv[3], std::stoull(argv[4]));
    for (const auto& name : r.names()) w.add(name, r.load(name));
    w.finish();
    return 0;
  }
  if (cmd == "rows" && argc == 7) {
    CheckpointReader r = CheckpointReader::open(argv[2]);
    CheckpointWriter w(argv[6]);
    w.add(argv[3], r.load_rows(argv[3], std::stoll(argv[4]), std::stoll(argv[5])));
    w.finish();
    return 0;
  }
  if (cmd == "list" && argc == 3) {
    CheckpointReader r = CheckpointReader::open(argv[2]);
    nlohmann::json out = nlohmann::json::object();
    for (const auto& name : r.names()) {
      const auto& info = r.info(name);
      out[name] = {{"dtype", anvil::models::dtype_name(info.dtype)}, {"shape", info.shape}};
    }
    std::cout << out.dump() << "\n";
    return 0;
  }
  return usage();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const anvil::Error& e) {
    std::cerr << "safetensors_tool: " << e.what() << "\n";
    return 1;
  }
}
