// Runtime layer: CRC-32C, placement, the gRPC data plane (weights and rollouts, token,
// size limits, malformed and inconsistent input), shared memory, the process supervisor.
#include "backends/common/error.hpp"
#include "proto/anvil.grpc.pb.h"
#include "runtime/crc32c.hpp"
#include "runtime/cuda_ipc.hpp"
#include "runtime/data_plane.hpp"
#include "runtime/grpc_util.hpp"
#include "runtime/placement.hpp"
#include "runtime/process.hpp"
#include "runtime/shared_memory.hpp"
#include "runtime/tls.hpp"
#include "tests/unit/error_of.hpp"

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <thread>

using anvil::test_util::error_of;

namespace anvil::runtime {
namespace {

const std::string kToken = "job-token-for-tests";

// ---- CRC-32C ---------------------------------------------------------------------------

TEST(Crc32c, Rfc3720Vectors) {
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xFF), inc(32);
  std::iota(inc.begin(), inc.end(), 0);
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(crc32c(inc.data(), 32), 0x46DD794Eu);
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
}

// Bit by bit, as RFC 3720 defines it: the oracle for the fast paths.
uint32_t crc32c_bitwise(const uint8_t* p, size_t n, uint32_t crc = 0) {
  uint32_t c = ~crc;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

TEST(Crc32c, InterleavedStreamsAndCombineMatchTheBitwiseOracle) {
  // Long enough for several 3 x 8 KiB blocks, with ragged ends and odd starts.
  std::vector<uint8_t> buf(200000 + 13);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (auto& b : buf) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<uint8_t>(x);
  }
  for (size_t start : {0, 1, 7}) {
    for (size_t n : {0, 5, 24575, 24576, 24577, 49152 + 9, 200000}) {
      EXPECT_EQ(crc32c(buf.data() + start, n), crc32c_bitwise(buf.data() + start, n))
          << start << "+" << n;
      EXPECT_EQ(crc32c(buf.data() + start, n, 0x12345678u),
                crc32c_bitwise(buf.data() + start, n, 0x12345678u));
    }
  }
  for (size_t n : {0, 3, 24576, 100001}) {  // copy + checksum in one pass
    std::vector<uint8_t> dst(n + 1, 0xAB);
    EXPECT_EQ(crc32c_copy(dst.data(), buf.data() + 1, n, 7u),
              crc32c_bitwise(buf.data() + 1, n, 7u));
    EXPECT_TRUE(std::equal(dst.begin(), dst.begin() + n, buf.begin() + 1));
    EXPECT_EQ(dst[n], 0xAB);
  }
  for (size_t cut : {0, 1, 1000, 100000, 200000}) {
    uint32_t a = crc32c(buf.data(), cut), b = crc32c(buf.data() + cut, buf.size() - cut);
    EXPECT_EQ(crc32c_combine(a, b, buf.size() - cut), crc32c(buf.data(), buf.size())) << cut;
  }
}

TEST(Crc32c, ContinuesAcrossPieces) {
  std::vector<uint8_t> data(1001);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 3);
  uint32_t whole = crc32c(data.data(), data.size());
  for (size_t cut : {0, 1, 7, 8, 500, 1001}) {
    uint32_t a = crc32c(data.data(), cut);
    EXPECT_EQ(crc32c(data.data() + cut, data.size() - cut, a), whole) << cut;
  }
}

// ---- placement -------------------------------------------------------------------------

TEST(Placement, SortsBundlesByHostAndDevice) {
  std::vector<NodeResources> nodes = {{"b/2", "hostb", 2}, {"a/1", "hosta", 2}};
  PlacementRequest r;
  r.actor_num_nodes = 1;
  r.actor_num_gpus_per_node = 2;
  r.rollout_num_gpus = 2;
  r.rollout_num_gpus_per_engine = 1;
  r.use_ref = true;
  auto p = place_roles(nodes, r);
  ASSERT_EQ(p.size(), 6u);
  EXPECT_EQ(p[0].role, "train");
  EXPECT_EQ(p[0].node_id, "a/1");
  EXPECT_EQ(p[1].node_id, "a/1");
  EXPECT_EQ(p[1].devices, std::vector<int>{1});
  EXPECT_EQ(p[2].role, "ref");
  EXPECT_EQ(p[2].node_id, "a/1");
  EXPECT_EQ(p[3].role, "rollout");
  EXPECT_EQ(p[3].node_id, "b/2");
  EXPECT_EQ(p[3].devices, std::vector<int>{0});
  EXPECT_EQ(p[4].rank, 1);
  EXPECT_EQ(p[4].devices, std::vector<int>{1});
  EXPECT_EQ(p[5].role, "weight-sync");
  EXPECT_TRUE(p[5].devices.empty());
}

TEST(Placement, ColocateSharesBundles) {
  std::vector<NodeResources> nodes = {{"a/1", "hosta", 2}};
  PlacementRequest r;
  r.actor_num_gpus_per_node = 2;
  r.rollout_num_gpus = 2;
  r.rollout_num_gpus_per_engine = 2;
  r.colocate = true;
  auto p = place_roles(nodes, r);
  ASSERT_EQ(p.size(), 4u);
  EXPECT_EQ(p[2].role, "rollout");
  EXPECT_EQ(p[2].devices, (std::vector<int>{0, 1}));
}

TEST(Placement, RefusesWhatDoesNotFit) {
  std::vector<NodeResources> nodes = {{"a/1", "hosta", 1}, {"b/1", "hostb", 1}};
  PlacementRequest r;
  r.rollout_num_gpus = 2;
  EXPECT_NE(error_of([&] { place_roles(nodes, r); }).find("needs 3 device bundles"),
            std::string::npos);
  r.rollout_num_gpus = 2;
  r.rollout_num_gpus_per_engine = 2;
  r.colocate = true;
  EXPECT_NE(error_of([&] { place_roles(nodes, r); }).find("must fit on one node"),
            std::string::npos);
  r.rollout_num_gpus = 3;
  EXPECT_NE(error_of([&] { place_roles(nodes, r); }).find("not a multiple"), std::string::npos);
}

// ---- weights ---------------------------------------------------------------------------

struct Fixture {
  std::vector<std::vector<uint8_t>> storage;
  std::vector<TensorView> views;
  Fixture() {
    add("model.embed_tokens.weight", "F32", {64, 33});
    add("model.norm.weight", "BF16", {33});
    add("empty", "F32", {0, 4});
  }
  void add(std::string name, std::string dtype, std::vector<int64_t> shape) {
    size_t n = dtype_element_size(dtype);
    for (int64_t d : shape) n *= d;
    std::vector<uint8_t> b(n);
    for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>((i * 131 + storage.size()) & 0xFF);
    storage.push_back(std::move(b));
    views.push_back(
        {std::move(name), std::move(dtype), std::move(shape), storage.back().data(), n});
    for (size_t i = 0; i < views.size(); ++i) views[i].data = storage[i].data();
  }
};

void expect_same(const Fixture& f, const WeightVersion& v) {
  ASSERT_EQ(v.tensors.size(), f.views.size());
  for (size_t i = 0; i < f.views.size(); ++i) {
    EXPECT_EQ(v.tensors[i].name, f.views[i].name);
    EXPECT_EQ(v.tensors[i].shape, f.views[i].shape);
    EXPECT_EQ(v.tensors[i].bytes, f.storage[i]) << f.views[i].name;
    EXPECT_EQ(v.tensors[i].crc32c, crc32c(f.storage[i].data(), f.storage[i].size()));
  }
}

TEST(WeightTransfer, RoundTripInSmallChunksAndSharedMemory) {
  Fixture f;
  WeightVersion got;
  WeightReceiver rx(kToken, {}, [&](const WeightVersion& v) { got = v; });
  std::string target = "127.0.0.1:" + std::to_string(rx.port());
  WeightPushOptions o;
  o.chunk_bytes = 100;  // many chunks per tensor
  auto r = push_weights(target, kToken, 1, f.views, o);
  EXPECT_EQ(r.tensors, 3u);
  EXPECT_GT(r.chunks, 80u);
  EXPECT_EQ(got.version, 1u);
  EXPECT_FALSE(got.via_shared_memory);
  expect_same(f, got);
  o.shared_memory = true;
  push_weights(target, kToken, 2, f.views, o);
  EXPECT_EQ(got.version, 2u);
  EXPECT_TRUE(got.via_shared_memory);
  expect_same(f, got);
  EXPECT_EQ(rx.version(), 2u);
  // Versions only move forward.
  EXPECT_NE(error_of([&] { push_weights(target, kToken, 2, f.views); }).find("not newer"),
            std::string::npos);
}

// ---- TLS -------------------------------------------------------------------------------

// A CA with a certificate for 127.0.0.1, and another CA with its own certificate, made with
// the openssl CLI; empty when it is missing.
std::filesystem::path make_test_certs() {
  if (std::system("openssl version > /dev/null 2>&1") != 0) return {};
  auto dir =
      std::filesystem::temp_directory_path() / ("anvil-tls-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string d = dir.string();
  std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  auto ca = [&](const std::string& n) {
    return "openssl req -x509" + ec + " -keyout " + d + "/" + n + ".key -out " + d + "/" + n +
           ".pem -days 2 -subj /CN=" + n + " 2>/dev/null";
  };
  auto cert = [&](const std::string& n, const std::string& c) {
    std::ofstream(d + "/" + n + ".ext")
        << "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n";
    return "openssl req" + ec + " -keyout " + d + "/" + n + ".key -out " + d + "/" + n +
           ".csr -subj /CN=" + n + " 2>/dev/null && openssl x509 -req -in " + d + "/" + n +
           ".csr -CA " + d + "/" + c + ".pem -CAkey " + d + "/" + c + ".key -CAcreateserial -out " +
           d + "/" + n + ".pem -days 2 -extfile " + d + "/" + n + ".ext 2>/dev/null";
  };
  for (const auto& cmd : {ca("ca"), ca("other"), cert("node", "ca"), cert("rogue", "other")}) {
    if (std::system(cmd.c_str()) != 0) return {};
  }
  return dir;
}

TEST(Tls, LoadChecksEachFileAndNamesIt) {
  auto dir = make_test_certs();
  if (dir.empty()) GTEST_SKIP() << "no openssl CLI to make test certificates";
  auto p = [&](const char* f) { return (dir / f).string(); };
  EXPECT_FALSE(load_tls("", "", "").enabled());
  EXPECT_TRUE(load_tls(p("node.pem"), p("node.key"), p("ca.pem")).enabled());
  EXPECT_NE(error_of([&] { load_tls(p("node.pem"), "", ""); }).find("needs all of"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              load_tls(p("nope.pem"), p("node.key"), p("ca.pem"));
            }).find("--tls-cert " + p("nope.pem") + ": cannot read"),
            std::string::npos);
  EXPECT_NE(
      error_of([&] { load_tls(p("node.ext"), p("node.key"), p("ca.pem")); }).find("not a PEM file"),
      std::string::npos);
  EXPECT_NE(error_of([&] {
              load_tls(p("node.pem"), p("rogue.key"), p("ca.pem"));
            }).find("does not belong to the certificate"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              load_tls(p("rogue.pem"), p("rogue.key"), p("ca.pem"));
            }).find("does not verify against --tls-ca"),
            std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST(Tls, GrpcNeedsACertificateOfTheSameCa) {
  auto dir = make_test_certs();
  if (dir.empty()) GTEST_SKIP() << "no openssl CLI to make test certificates";
  auto p = [&](const char* f) { return (dir / f).string(); };
  TlsConfig good = load_tls(p("node.pem"), p("node.key"), p("ca.pem"));
  TlsConfig rogue = load_tls(p("rogue.pem"), p("rogue.key"), p("other.pem"));
  Fixture f;
  WeightVersion got;
  set_process_tls(good);
  WeightReceiver rx(kToken, {}, [&](const WeightVersion& v) { got = v; });
  std::string target = "127.0.0.1:" + std::to_string(rx.port());
  WeightPushOptions o;
  o.deadline_ms = 20000;
  push_weights(target, kToken, 1, f.views, o);
  EXPECT_EQ(got.version, 1u);
  expect_same(f, got);
  // A client whose certificate another CA signed (and which does not trust ours).
  set_process_tls(rogue);
  EXPECT_NE(error_of([&] { push_weights(target, kToken, 2, f.views, o); }).find("UNAVAILABLE"),
            std::string::npos);
  // A plaintext client.
  set_process_tls(TlsConfig{});
  EXPECT_NE(error_of([&] { push_weights(target, kToken, 2, f.views, o); }).find("UNAVAILABLE"),
            std::string::npos);
  EXPECT_EQ(rx.version(), 1u);
  std::filesystem::remove_all(dir);
}

// ---- CUDA IPC (same-node GPU weight sync) ----------------------------------------------

TEST(CudaIpc, ExportedBufferIsReadByAnotherProcess) {
  std::string why;
  if (!cuda_ipc_available(&why)) {
    EXPECT_FALSE(why.empty());
    int x = 0;
    EXPECT_NE(error_of([&] { cuda_ipc_export(&x, sizeof(x)); }).find(why), std::string::npos);
    GTEST_SKIP() << "CUDA IPC weight sync skipped: " << why;
  }
  std::vector<uint8_t> host((1 << 20) + 3);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<uint8_t>(i * 167 + 11);
  const size_t offset = 4096;  // inside the allocation, as a caching allocator hands it out
  CudaDeviceBuffer buf(offset + host.size(), 0);
  buf.upload(host.data(), host.size(), offset);
  CudaIpcBuffer ipc = cuda_ipc_export(static_cast<char*>(buf.data()) + offset, host.size());
  EXPECT_EQ(ipc.offset, offset);
  EXPECT_EQ(ipc.bytes, host.size());
  // Another process (this binary, running only CudaIpc.ChildSide) opens the handle.
  std::string hex;
  for (unsigned char c : ipc.handle)
    hex += "0123456789abcdef"[c >> 4], hex += "0123456789abcdef"[c & 15];
  std::string spec = hex + " " + std::to_string(ipc.offset) + " " + std::to_string(ipc.bytes) +
                     " " + std::to_string(ipc.device) + " " +
                     std::to_string(crc32c(host.data(), host.size()));
  ::setenv("ANVIL_CUDA_IPC_TEST", spec.c_str(), 1);
  std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  int rc = std::system((self + " --gtest_filter=CudaIpc.ChildSide > /dev/null 2>&1").c_str());
  ::unsetenv("ANVIL_CUDA_IPC_TEST");
  EXPECT_EQ(rc, 0) << "the child process could not read the exported buffer";
}

TEST(CudaIpc, ChildSide) {
  const char* spec = std::getenv("ANVIL_CUDA_IPC_TEST");
  if (spec == nullptr) GTEST_SKIP() << "runs as the child of ExportedBufferIsReadByAnotherProcess";
  std::istringstream in(spec);
  std::string hex;
  CudaIpcBuffer ipc;
  uint32_t want = 0;
  in >> hex >> ipc.offset >> ipc.bytes >> ipc.device >> want;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    ipc.handle.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  std::vector<uint8_t> out(ipc.bytes);
  cuda_ipc_copy(ipc, out.data(), /*dst_is_host=*/true);
  EXPECT_EQ(crc32c(out.data(), out.size()), want);
  CudaDeviceBuffer dst(ipc.bytes, ipc.device);  // device to device
  cuda_ipc_copy(ipc, dst.data());
  std::fill(out.begin(), out.end(), 0);
  dst.download(out.data(), out.size());
  EXPECT_EQ(crc32c(out.data(), out.size()), want);
}

TEST(WeightTransfer, WrongTokenIsRefusedBeforeApplying) {
  Fixture f;
  int applied = 0;
  WeightReceiver rx(kToken, {}, [&](const WeightVersion&) { ++applied; });
  std::string target = "127.0.0.1:" + std::to_string(rx.port());
  std::string e = error_of([&] { push_weights(target, "other-job", 1, f.views); });
  EXPECT_NE(e.find("PERMISSION_DENIED"), std::string::npos) << e;
  EXPECT_NE(e.find("wrong job token"), std::string::npos) << e;
  EXPECT_EQ(applied, 0);
}

TEST(WeightTransfer, OversizedMessageIsRefused) {
  Fixture f;
  f.add("big", "U8", {4096});
  WeightReceiver::Options opt;
  opt.max_message_bytes = 1024;
  WeightReceiver rx(kToken, opt, [](const WeightVersion&) {});
  WeightPushOptions o;
  o.chunk_bytes = 1 << 20;
  std::string e = error_of(
      [&] { push_weights("127.0.0.1:" + std::to_string(rx.port()), kToken, 1, f.views, o); });
  EXPECT_NE(e.find("RESOURCE_EXHAUSTED"), std::string::npos) << e;
  // The whole version is also bounded.
  WeightReceiver::Options small;
  small.max_version_bytes = 1000;
  WeightReceiver rx2(kToken, small, [](const WeightVersion&) {});
  e = error_of(
      [&] { push_weights("127.0.0.1:" + std::to_string(rx2.port()), kToken, 1, f.views); });
  EXPECT_NE(e.find("exceeds the limit"), std::string::npos) << e;
}

// Sends hand-made chunks and returns the status.
grpc::Status send_chunks(int port, const std::vector<proto::WeightChunk>& chunks) {
  auto stub = proto::WeightTransfer::NewStub(make_channel("127.0.0.1:" + std::to_string(port)));
  grpc::ClientContext ctx;
  prepare_call(ctx, kToken, 10000);
  proto::WeightAck ack;
  auto w = stub->Push(&ctx, &ack);
  for (const auto& c : chunks) w->Write(c);
  w->WritesDone();
  return w->Finish();
}

proto::WeightChunk good_chunk(const std::string& data) {
  proto::WeightChunk c;
  c.set_name("w");
  c.set_dtype("U8");
  c.add_shape(static_cast<int64_t>(data.size()));
  c.set_total_bytes(data.size());
  c.set_weight_version(5);
  c.set_data(data);
  c.set_crc32c(crc32c(data.data(), data.size()));
  c.set_last(true);
  c.set_version_tensors(1);
  c.set_version_bytes(data.size());
  return c;
}

TEST(WeightTransfer, InconsistentChunksAreRefusedByName) {
  int applied = 0;
  WeightReceiver rx(kToken, {}, [&](const WeightVersion&) { ++applied; });
  auto c = good_chunk("abcdef");
  c.set_crc32c(c.crc32c() ^ 1);
  auto s = send_chunks(rx.port(), {c});
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_NE(s.error_message().find("tensor 'w': CRC-32C mismatch"), std::string::npos);
  c = good_chunk("abcdef");
  c.set_dtype("Q7");
  s = send_chunks(rx.port(), {c});
  EXPECT_NE(s.error_message().find("unknown dtype 'Q7'"), std::string::npos);
  c = good_chunk("abcdef");
  c.set_total_bytes(7);
  s = send_chunks(rx.port(), {c});
  EXPECT_NE(s.error_message().find("does not match dtype"), std::string::npos);
  c = good_chunk("abcdef");
  c.set_last(false);
  s = send_chunks(rx.port(), {c});
  EXPECT_NE(s.error_message().find("truncated push"), std::string::npos);
  c = good_chunk("abcdef");
  c.set_byte_offset(2);
  s = send_chunks(rx.port(), {c});
  EXPECT_NE(s.error_message().find("expected 0"), std::string::npos);
  c = good_chunk("abcdef");
  c.set_version_bytes(5);
  s = send_chunks(rx.port(), {c});
  EXPECT_NE(s.error_message().find("announced 1 tensors / 5 bytes"), std::string::npos);
  c = good_chunk("abcdef");
  c.clear_data();
  c.set_shm_name("/anvil-does-not-exist");
  c.set_crc32c(0);
  s = send_chunks(rx.port(), {c});
  EXPECT_NE(s.error_message().find("/anvil-does-not-exist"), std::string::npos);
  c.set_shm_name("../etc/passwd");
  s = send_chunks(rx.port(), {c});
  EXPECT_NE(s.error_message().find("not of the form"), std::string::npos);
  EXPECT_EQ(applied, 0);
  EXPECT_TRUE(send_chunks(rx.port(), {good_chunk("abcdef")}).ok());
  EXPECT_EQ(applied, 1);
}

TEST(WeightTransfer, MalformedProtobufIsRefusedAndServerLives) {
  int applied = 0;
  WeightReceiver rx(kToken, {}, [&](const WeightVersion&) { ++applied; });
  auto channel = make_channel("127.0.0.1:" + std::to_string(rx.port()));
  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  prepare_call(ctx, kToken, 5000);
  // Field 1 (string) with a length running past the end: not a parseable WeightChunk.
  const char garbage[] =
      "\x0a\xff\xff\xff\x0f"
      "abc";
  grpc::Slice slice(garbage, sizeof(garbage) - 1);
  grpc::ByteBuffer request(&slice, 1);
  auto call = generic.PrepareCall(&ctx, "/anvil.proto.WeightTransfer/Push", &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  ASSERT_TRUE(cq.Next(&tag, &ok));
  call->Write(request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  call->WritesDone(reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  grpc::ByteBuffer reply;
  call->Read(&reply, reinterpret_cast<void*>(4));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(applied, 0);
  // Still serving.
  EXPECT_TRUE(send_chunks(rx.port(), {good_chunk("xyz")}).ok());
  EXPECT_EQ(applied, 1);
}

// ---- rollouts --------------------------------------------------------------------------

Rollout make_rollout(uint64_t id, int n) {
  Rollout r;
  r.rollout_id = id;
  for (int i = 0; i < n; ++i) {
    WireSample s;
    s.tokens = {1, 2, 3, 4 + i, 5};
    s.response_length = 2;
    s.loss_mask = {1.0f, 0.0f};
    s.reward = 0.5 * i;
    s.rollout_logprobs = {-0.25f, -1.5f};
    s.weight_version = 3;
    s.group_id = i / 2;
    s.metadata_json = "{\"i\":" + std::to_string(i) + "}";
    r.samples.push_back(std::move(s));
  }
  return r;
}

TEST(RolloutTransfer, RoundTripInParts) {
  RolloutReceiver rx(kToken, {});
  std::string target = "127.0.0.1:" + std::to_string(rx.port());
  Rollout sent = make_rollout(7, 50);
  auto res = push_rollout(target, kToken, sent, 10000, /*part_bytes=*/200);
  EXPECT_EQ(res.samples, 50u);
  EXPECT_EQ(res.tokens, 250u);
  Rollout got = rx.take(7, 1000);
  ASSERT_EQ(got.samples.size(), 50u);
  for (size_t i = 0; i < 50; ++i) {
    EXPECT_EQ(got.samples[i].tokens, sent.samples[i].tokens);
    EXPECT_EQ(got.samples[i].reward, sent.samples[i].reward);
    EXPECT_EQ(got.samples[i].rollout_logprobs, sent.samples[i].rollout_logprobs);
    EXPECT_EQ(got.samples[i].loss_mask, sent.samples[i].loss_mask);
    EXPECT_EQ(got.samples[i].group_id, sent.samples[i].group_id);
    EXPECT_EQ(got.samples[i].metadata_json, sent.samples[i].metadata_json);
  }
  EXPECT_NE(error_of([&] { rx.take(8, 50); }).find("rollout 8 did not arrive"), std::string::npos);
  EXPECT_NE(error_of([&] { push_rollout(target, "nope", sent, 5000); }).find("wrong job token"),
            std::string::npos);
}

TEST(RolloutTransfer, BadSampleIsRefusedByIndexAndField) {
  RolloutReceiver rx(kToken, {});
  std::string target = "127.0.0.1:" + std::to_string(rx.port());
  Rollout r = make_rollout(1, 4);
  r.samples[2].response_length = 5;
  std::string e = error_of([&] { push_rollout(target, kToken, r, 5000); });
  EXPECT_NE(e.find("sample 2: response_length 5 not in [1, 5)"), std::string::npos) << e;
  r = make_rollout(1, 4);
  r.samples[3].rollout_logprobs = {-1.0f};
  e = error_of([&] { push_rollout(target, kToken, r, 5000); });
  EXPECT_NE(e.find("sample 3: rollout_logprobs has 1 values"), std::string::npos) << e;
  r = make_rollout(1, 4);
  r.samples[0].ref_logprobs = {0.5f, -1.0f};
  e = error_of([&] { push_rollout(target, kToken, r, 5000); });
  EXPECT_NE(e.find("sample 0: ref_logprobs not finite <= 0"), std::string::npos) << e;
  push_rollout(target, kToken, make_rollout(1, 4), 5000);
  EXPECT_EQ(rx.take(1, 1000).samples.size(), 4u);
}

// ---- shared memory ---------------------------------------------------------------------

TEST(SharedMemory, CreatorUnlinksOnDestruction) {
  std::string name;
  {
    auto m = SharedMemory::create(4096);
    name = m.name();
    m.data()[10] = 42;
    auto r = SharedMemory::open(name);
    EXPECT_EQ(r.size(), 4096u);
    EXPECT_EQ(r.data()[10], 42);
  }
  EXPECT_NE(error_of([&] { SharedMemory::open(name); }).find("cannot open"), std::string::npos);
}

TEST(SharedMemory, RemovesWhatADeadProcessLeft) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  pid_t child = ::fork();
  if (child == 0) {
    auto m = SharedMemory::create(100);
    (void)!::write(fds[1], m.name().data(), m.name().size());
    std::_Exit(0);  // no destructor: the segment stays
  }
  ::close(fds[1]);
  char buf[256] = {0};
  ASSERT_GT(::read(fds[0], buf, sizeof(buf) - 1), 0);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  std::string name = buf;
  EXPECT_EQ(name.rfind("/anvil-" + std::to_string(child) + "-", 0), 0u);
  EXPECT_NO_THROW(SharedMemory::open(name));
  EXPECT_EQ(remove_shared_memory_of(child), 1);
  EXPECT_NE(error_of([&] { SharedMemory::open(name); }).find("cannot open"), std::string::npos);
}

// ---- processes -------------------------------------------------------------------------

struct Exits {
  std::mutex m;
  std::condition_variable cv;
  std::vector<ChildExit> list;
  void add(const ChildExit& e) {
    std::lock_guard<std::mutex> l(m);
    list.push_back(e);
    cv.notify_all();
  }
  ChildExit wait_one(size_t n) {
    std::unique_lock<std::mutex> l(m);
    EXPECT_TRUE(cv.wait_for(l, std::chrono::seconds(10), [&] { return list.size() >= n; }));
    return list.size() >= n ? list[n - 1] : ChildExit{};
  }
};

bool process_gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(stat)), {});
  auto close = s.rfind(')');
  return close == std::string::npos || s.substr(close + 2, 1) == "Z";
}

TEST(Supervisor, ReportsExitCodesAndSignals) {
  Exits exits;
  Supervisor sup([&](const ChildExit& e) { exits.add(e); });
  sup.spawn({{"/bin/sh", "-c", "exit 3"}, {}, "", "role a"});
  ChildExit e = exits.wait_one(1);
  EXPECT_EQ(e.label, "role a");
  EXPECT_EQ(e.exit_code, 3);
  EXPECT_EQ(e.describe(), "exited with status 3");
  pid_t pid = sup.spawn({{"/bin/sleep", "30"}, {}, "", "role b"});
  ::kill(pid, SIGKILL);
  e = exits.wait_one(2);
  EXPECT_EQ(e.signal, SIGKILL);
  EXPECT_FALSE(e.requested);
  EXPECT_NE(e.describe().find("killed by signal 9"), std::string::npos);
  sup.spawn({{"/nonexistent/binary"}, {}, "", "role c"});
  EXPECT_EQ(exits.wait_one(3).exit_code, 127);
}

TEST(Supervisor, TerminateAllLeavesNoGrandchildren) {
  auto dir = std::filesystem::temp_directory_path() / ("anvil_sup_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  Exits exits;
  Supervisor sup([&](const ChildExit& e) { exits.add(e); });
  std::string pidfile = (dir / "grandchild").string();
  // A child that ignores SIGTERM and leaves a grandchild behind.
  sup.spawn({{"/bin/sh", "-c", "trap '' TERM; sleep 60 & echo $! > " + pidfile + "; wait"},
             {{"ANVIL_TEST_ENV", "1"}},
             (dir / "log").string(),
             "role d"});
  pid_t grandchild = 0;
  for (int i = 0; i < 500 && grandchild == 0; ++i) {
    std::ifstream in(pidfile);
    in >> grandchild;
    if (grandchild == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GT(grandchild, 0);
  sup.terminate_all(200);
  EXPECT_EQ(sup.running(), 0u);
  EXPECT_TRUE(exits.wait_one(1).requested);
  for (int i = 0; i < 200 && !process_gone(grandchild); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(process_gone(grandchild));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace anvil::runtime
