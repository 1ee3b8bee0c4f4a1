// Weight-sync throughput on one machine, every side measured in the same run:
//   grpc     push_weights over gRPC on loopback (4 MB chunks, CRC-32C on both sides, the
//            receiver assembling the version) vs raw TCP on loopback (the same bytes through
//            one socket, no framing or checksums): the ratio is what the protocol costs;
//   shm      push_weights through POSIX shared memory (copy in, CRC both sides, copy out)
//            vs one memcpy of the same bytes.
// Steady state (one untimed warm-up push each), medians over --iters runs; prints a JSON
// object. The "model" is --gb GiB of bf16 tensors of 16 MiB each with pseudo-random
// contents; --chunk-mb sets the gRPC chunk size. Besides wall-clock GB/s it reports the
// process CPU seconds per GB of the gRPC and TCP transfers, a figure that other load on a
// shared machine disturbs far less than wall time.
#include "runtime/data_plane.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// CPU seconds of the whole process (sender and receiver threads alike): what a transfer
// costs, which the other processes sharing a loaded machine do not change the way they
// change wall time.
double cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::perror(what);
    std::exit(1);
  }
}

// Sends `bytes` from `src` through a loopback TCP connection; returns seconds until the
// receiver has read them all.
double tcp_loopback(const uint8_t* src, size_t bytes, uint8_t* dst) {
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  check(listener >= 0, "socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  check(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0, "bind");
  socklen_t len = sizeof(addr);
  check(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0, "getsockname");
  check(::listen(listener, 1) == 0, "listen");
  int client = ::socket(AF_INET, SOCK_STREAM, 0);
  check(::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0, "connect");
  int server = ::accept(listener, nullptr, nullptr);
  check(server >= 0, "accept");
  auto t0 = Clock::now();
  std::thread reader([&] {
    size_t got = 0;
    while (got < bytes) {
      ssize_t n = ::recv(server, dst + got, std::min<size_t>(bytes - got, 4u << 20), 0);
      check(n > 0, "recv");
      got += static_cast<size_t>(n);
    }
  });
  size_t sent = 0;
  while (sent < bytes) {
    ssize_t n = ::send(client, src + sent, std::min<size_t>(bytes - sent, 4u << 20), 0);
    check(n > 0, "send");
    sent += static_cast<size_t>(n);
  }
  reader.join();
  double s = seconds_since(t0);
  ::close(client);
  ::close(server);
  ::close(listener);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  double gib = 1.0;
  int iters = 3;
  size_t chunk_bytes = anvil::runtime::WeightPushOptions{}.chunk_bytes;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--gb")
      gib = std::atof(argv[i + 1]);
    else if (a == "--iters")
      iters = std::atoi(argv[i + 1]);
    else if (a == "--chunk-mb")
      chunk_bytes = static_cast<size_t>(std::atof(argv[i + 1]) * (1 << 20));
    else
      throw std::runtime_error("unknown flag " + a);
  }
  const size_t tensor_bytes = 16u << 20;
  const size_t n_tensors =
      std::max<size_t>(1, static_cast<size_t>(gib * (1u << 30)) / tensor_bytes);
  const size_t total = n_tensors * tensor_bytes;
  std::vector<uint8_t> model(total);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < total; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(model.data() + i, &x, std::min<size_t>(8, total - i));
  }
  std::vector<anvil::runtime::TensorView> views;
  for (size_t t = 0; t < n_tensors; ++t) {
    views.push_back({"model.layers." + std::to_string(t) + ".mlp.weight",
                     "BF16",
                     {static_cast<int64_t>(tensor_bytes / 2 / 4096), 4096},
                     model.data() + t * tensor_bytes,
                     tensor_bytes});
  }
  const std::string token = "bench-token";
  uint64_t received = 0;
  anvil::runtime::WeightReceiver rx(
      token, {}, [&](const anvil::runtime::WeightVersion& v) { received = v.bytes; });
  std::string target = "127.0.0.1:" + std::to_string(rx.port());
  std::vector<uint8_t> sink(total);
  // As the train role does: one pusher per engine, kept across versions.
  anvil::runtime::WeightPusher grpc_pusher(target, token), shm_pusher(target, token);

  std::vector<double> grpc_s, tcp_s, shm_s, memcpy_s, grpc_cpu, tcp_cpu;
  uint64_t version = 0;
  // Warm-up: the receiver's staging buffers and the shared-memory segment get allocated
  // once, as in a training run where every step pushes a version of the same shapes.
  anvil::runtime::WeightPushOptions grpc_options;
  grpc_options.chunk_bytes = chunk_bytes;
  grpc_pusher.push(++version, views, grpc_options);
  {
    anvil::runtime::WeightPushOptions o;
    o.shared_memory = true;
    shm_pusher.push(++version, views, o);
  }
  for (int it = 0; it < iters; ++it) {
    auto t0 = Clock::now();
    double c0 = cpu_seconds();
    grpc_pusher.push(++version, views, grpc_options);
    grpc_s.push_back(seconds_since(t0));
    grpc_cpu.push_back(cpu_seconds() - c0);
    if (received != total) throw std::runtime_error("gRPC: short version");
    c0 = cpu_seconds();
    tcp_s.push_back(tcp_loopback(model.data(), total, sink.data()));
    tcp_cpu.push_back(cpu_seconds() - c0);
    anvil::runtime::WeightPushOptions o;
    o.shared_memory = true;
    t0 = Clock::now();
    shm_pusher.push(++version, views, o);
    shm_s.push_back(seconds_since(t0));
    t0 = Clock::now();
    std::memcpy(sink.data(), model.data(), total);
    memcpy_s.push_back(seconds_since(t0));
  }
  const double gb = static_cast<double>(total) / 1e9;
  double grpc = gb / median(grpc_s), tcp = gb / median(tcp_s);
  double shm = gb / median(shm_s), mem = gb / median(memcpy_s);
  std::printf(
      "{\"bytes\": %zu, \"tensors\": %zu, \"iters\": %d, \"chunk_bytes\": %zu, "
      "\"grpc_gbps\": %.3f, "
      "\"tcp_gbps\": %.3f, \"grpc_over_tcp\": %.3f, \"shm_gbps\": %.3f, \"memcpy_gbps\": %.3f, "
      "\"shm_over_memcpy\": %.3f, \"grpc_cpu_s_per_gb\": %.3f, \"tcp_cpu_s_per_gb\": %.3f}\n",
      total, n_tensors, iters, chunk_bytes, grpc, tcp, grpc / tcp, shm, mem, shm / mem,
      median(grpc_cpu) / gb, median(tcp_cpu) / gb);
  return 0;
}
