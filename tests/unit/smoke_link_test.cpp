// One binary that links LibTorch, gRPC, protobuf, CAF and spdlog and uses each of them.
// The pip wheel's LibTorch carries its own protobuf and fmt; if any of their symbols
// leaked into the dynamic symbol table they would interpose on Debian's copies and these
// calls would corrupt memory or crash (pytorch#14573).
#include "backends/common/log.hpp"
#include "runtime/caf_system.hpp"
#include "runtime/grpc_health.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <cstdio>
#include <memory>
#include <sstream>
#include <string>

namespace {

std::string exec(const std::string& command) {
  std::string out;
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(command.c_str(), "r"), pclose);
  if (!pipe) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe.get())) > 0) out.append(buf, n);
  return out;
}

TEST(SmokeLink, TorchComputes) {
  at::Tensor a = at::arange(6, at::kFloat).reshape({2, 3});
  at::Tensor b = at::ones({3, 2});
  at::Tensor c = at::matmul(a, b);  // [2, 2]
  EXPECT_FLOAT_EQ(c[0][0].item<float>(), 3.0f);
  EXPECT_FLOAT_EQ(c[1][1].item<float>(), 12.0f);
}

TEST(SmokeLink, GrpcAndProtobufRoundTrip) {
  anvil::runtime::HealthServer server("127.0.0.1", "node-a", "secret");
  ASSERT_GT(server.port(), 0);
  std::string target = "127.0.0.1:" + std::to_string(server.port());
  EXPECT_EQ(anvil::runtime::check_health(target, "secret", 42, 5000), "node-a");
  EXPECT_THROW(anvil::runtime::check_health(target, "wrong", 1, 5000), std::exception);
}

TEST(SmokeLink, CafActorReplies) { EXPECT_EQ(anvil::runtime::caf_echo_roundtrip("hi"), "echo:hi"); }

TEST(SmokeLink, SpdlogFormats) {
  std::ostringstream sink_stream;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(sink_stream);
  spdlog::logger logger("smoke", sink);
  logger.set_pattern("%v");
  logger.info("value={} tensor_sum={}", 7, at::ones({4}).sum().item<float>());
  EXPECT_EQ(sink_stream.str(), "value=7 tensor_sum=4\n");
}

// LibTorch (pip wheel) and the Debian libraries must not both define an exported symbol
// outside namespace std: such a symbol would interpose on one side at load time. Shared
// std:: template instances are identical code and are excluded.
TEST(SmokeLink, NoExportedSymbolClashWithDebianLibraries) {
  const std::string torch_dir = ANVIL_TORCH_LIB_DIR;
  std::istringstream debian_libs(ANVIL_DEBIAN_LIBS);
  std::string debian;
  int pairs = 0;
  while (std::getline(debian_libs, debian, ',')) {
    for (const char* lib : {"libtorch_cpu.so", "libc10.so", "libtorch.so"}) {
      std::string torch_lib = torch_dir + "/" + lib;
      auto symbols = [](const std::string& so) {
        return "<(nm -D --defined-only '" + so +
               "' | awk '{print $3}' | grep '^_Z' | grep -vE '^_Z(N|NK|Z|ZN|ZNK)?S' | sort -u)";
      };
      std::string out =
          exec("bash -c \"comm -12 " + symbols(torch_lib) + " " + symbols(debian) + "\" 2>&1");
      EXPECT_EQ(out, "") << torch_lib << " and " << debian << " both export:\n" << out;
      ++pairs;
    }
  }
  EXPECT_EQ(pairs, 15);
}

}  // namespace
