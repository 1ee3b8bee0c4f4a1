// Unit tests for the safetensors layer: header validation (every rule, with the file and
// tensor named in the error), dtype mapping, CheckpointReader over single and sharded
// checkpoints, load_rows, and CheckpointWriter's layout and all-or-nothing behaviour.
#include "backends/common/error.hpp"
#include "backends/models/dtype.hpp"
#include "backends/models/safetensors.hpp"
#include "backends/models/safetensors_format.hpp"
#include "tests/unit/error_of.hpp"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

namespace fs = std::filesystem;
using anvil::Error;
using namespace anvil::models;
using anvil::test_util::error_of;
using nlohmann::json;

namespace {

constexpr DType kAllDTypes[] = {DType::BOOL, DType::U8,  DType::I8,  DType::F8_E5M2, DType::F8_E4M3,
                                DType::I16,  DType::U16, DType::F16, DType::BF16,    DType::I32,
                                DType::U32,  DType::F32, DType::F64, DType::I64,     DType::U64};

// Runs `fn` and returns the anvil::Error message ("" if nothing was thrown).
bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("anvil_st_test_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    at::manual_seed(0);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::set<std::string> files_in(const fs::path& d) const {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(d)) out.insert(e.path().filename().string());
    return out;
  }

  // A file image: 8-byte length, `header_json` (not padded), `data_bytes` zero bytes.
  static std::string image(const std::string& header_json, size_t data_bytes) {
    std::string out(8, '\0');
    uint64_t n = header_json.size();
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return out + header_json + std::string(data_bytes, '\0');
  }

  fs::path write_file(const std::string& name, const std::string& bytes) const {
    fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }

  fs::path dir_;
};

// Random bit patterns of `dtype` (NaNs, infinities, denormals included); 0/1 for BOOL.
at::Tensor random_tensor(DType dtype, std::vector<int64_t> shape) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  if (dtype == DType::BOOL) return at::randint(0, 2, shape, at::kByte).to(at::kBool);
  const int64_t nbytes = numel * static_cast<int64_t>(dtype_size(dtype));
  return at::randint(0, 256, {nbytes}, at::kByte).view(to_scalar_type(dtype)).reshape(shape);
}

bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  return a.reshape({-1}).view(at::kByte).equal(b.reshape({-1}).view(at::kByte));
}

// ----------------------------------------------------------------------------- dtypes

TEST(SafetensorsDType, NamesSizesAndScalarTypesRoundTrip) {
  EXPECT_EQ(std::size(kAllDTypes), 15u);
  for (DType d : kAllDTypes) {
    EXPECT_EQ(dtype_from_string(dtype_name(d), "ctx"), d) << dtype_name(d);
    EXPECT_EQ(from_scalar_type(to_scalar_type(d)), d) << dtype_name(d);
    EXPECT_EQ(c10::elementSize(to_scalar_type(d)), dtype_size(d)) << dtype_name(d);
  }
  EXPECT_EQ(to_scalar_type(DType::BF16), at::kBFloat16);
  EXPECT_EQ(to_scalar_type(DType::F8_E4M3), at::ScalarType::Float8_e4m3fn);
  EXPECT_EQ(to_scalar_type(DType::U16), at::ScalarType::UInt16);
  EXPECT_EQ(dtype_size(DType::F8_E5M2), 1u);
  EXPECT_EQ(dtype_size(DType::U64), 8u);
  std::string msg = error_of([] { dtype_from_string("Q4_K", "f.safetensors: tensor 'w'"); });
  EXPECT_TRUE(contains(msg, "Q4_K") && contains(msg, "f.safetensors: tensor 'w'")) << msg;
  msg = error_of([] { from_scalar_type(at::kComplexFloat); });
  EXPECT_TRUE(contains(msg, "ComplexFloat")) << msg;
}

// ----------------------------------------------------------------------------- format

TEST_F(SafetensorsTest, BuiltHeaderIsPaddedAndParsesBack) {
  std::vector<TensorInfo> infos(2);
  infos[0] = {"a.weight", DType::BF16, {2, 3}, 0, 12};
  infos[1] = {"b", DType::I64, {}, 12, 20};
  std::string header = build_safetensors_header(infos, {{"format", "pt"}});
  ASSERT_EQ(header.size() % 8, 0u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(header[i]);
  EXPECT_EQ(n + 8, header.size());
  EXPECT_NE(header.back(), '\0');  // padded with spaces, which JSON parsers skip
  const size_t json_end = header.find_last_not_of(' ');
  EXPECT_EQ(header[json_end], '}');
  EXPECT_LT(header.size() - 1 - json_end, 8u);

  std::string file = header + std::string(20, '\x7f');
  SafetensorsHeader h = parse_safetensors_header(reinterpret_cast<const uint8_t*>(file.data()),
                                                 file.size(), "mem.safetensors");
  EXPECT_EQ(h.data_offset, header.size());
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  const TensorInfo* a = h.find("a.weight");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::BF16);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->numel(), 6u);
  EXPECT_EQ(a->begin, 0u);
  EXPECT_EQ(a->end, 12u);
  EXPECT_EQ(h.find("b")->numel(), 1u);  // a scalar
  EXPECT_EQ(h.find("c"), nullptr);
}

struct BadHeader {
  std::string label;
  std::string bytes;
  std::string needle;  // must appear in the message besides the file name
};

TEST_F(SafetensorsTest, EveryHeaderViolationIsAnErrorNamingFileAndTensor) {
  std::string huge(8, '\0');
  huge[4] = 0x10;  // N ~ 68 GB
  std::string past_end(8, '\0');
  past_end[0] = 100;  // N = 100, file has 8 + 2 bytes
  past_end += "{}";
  auto one = [](const std::string& fields) { return R"({"w": {)" + fields + "}}"; };
  const std::string ok_fields = R"("dtype": "F32", "shape": [2], "data_offsets": [0, 8])";
  const std::vector<BadHeader> cases = {
      {"empty", "", "at least 8"},
      {"truncated", "abc", "at least 8"},
      {"huge length", huge, "100 MB"},
      {"length past end", past_end, "past the end"},
      {"bad json", image(R"({"x": {"dtype": )", 0), "not valid JSON"},
      {"trailing garbage", image(R"({} x)", 0), "not valid JSON"},
      {"not an object", image("[1, 2]", 0), "JSON object"},
      {"entry not an object", image(R"({"w": 3})", 0), "'w'"},
      {"missing dtype", image(one(R"("shape": [2], "data_offsets": [0, 8])"), 8), "'w'"},
      {"dtype not a string", image(one(R"("dtype": 1, "shape": [2], "data_offsets": [0, 8])"), 8),
       "dtype"},
      {"unknown dtype", image(one(R"("dtype": "Q4", "shape": [2], "data_offsets": [0, 8])"), 8),
       "Q4"},
      {"shape not a list", image(one(R"("dtype": "F32", "shape": 2, "data_offsets": [0, 8])"), 8),
       "shape"},
      {"negative dim", image(one(R"("dtype": "F32", "shape": [-2], "data_offsets": [0, 8])"), 8),
       "non-negative"},
      {"float dim", image(one(R"("dtype": "F32", "shape": [2.0], "data_offsets": [0, 8])"), 8),
       "non-negative"},
      {"shape overflow",
       image(
           one(R"("dtype": "F32", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8])"),
           8),
       "overflow"},
      {"missing offsets", image(one(R"("dtype": "F32", "shape": [2])"), 8), "data_offsets"},
      {"three offsets", image(one(R"("dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8])"), 8),
       "data_offsets"},
      {"negative offset", image(one(R"("dtype": "F32", "shape": [2], "data_offsets": [-8, 0])"), 8),
       "data_offsets"},
      {"begin after end", image(one(R"("dtype": "F32", "shape": [0], "data_offsets": [8, 0])"), 8),
       "begin"},
      {"out of bounds", image(one(ok_fields), 4), "past the data"},
      {"offset overflow",
       image(one(R"("dtype": "F32", "shape": [2], "data_offsets": [18446744073709551615, 7])"), 8),
       "'w'"},
      {"wrong byte count",
       image(one(R"("dtype": "F32", "shape": [3], "data_offsets": [0, 8])"), 12), "expected 12"},
      {"byte count overflow",
       image(one(R"("dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 8])"), 8),
       "'w'"},
      {"overlap",
       image(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
             12),
       "'a' and 'b' overlap"},
      {"identical ranges",
       image(R"({"a": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]},
                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
             4),
       "overlap"},
      {"metadata not an object", image(R"({"__metadata__": [1]})", 0), "__metadata__"},
      {"metadata value not a string", image(R"({"__metadata__": {"step": 1}})", 0), "'step'"},
  };
  int i = 0;
  for (const BadHeader& c : cases) {
    const fs::path f = write_file("case" + std::to_string(i++) + ".safetensors", c.bytes);
    const std::string msg = error_of([&] { SafetensorsFile::open(f); });
    EXPECT_TRUE(contains(msg, f.string())) << c.label << ": " << msg;
    EXPECT_TRUE(contains(msg, c.needle)) << c.label << ": '" << c.needle << "' not in: " << msg;
    if (c.bytes.find(R"("w")") != std::string::npos) {
      EXPECT_TRUE(contains(msg, "'w'")) << c.label << ": " << msg;
    }
  }
}

TEST_F(SafetensorsTest, ValidEdgeCasesParse) {
  // Empty header object, zero-size tensors sharing an offset, scalars, unused data bytes.
  const std::string bytes =
      image(R"({"__metadata__": {}, "e1": {"dtype": "F32", "shape": [0, 5], "data_offsets": [4, 4]},
               "e2": {"dtype": "BF16", "shape": [3, 0], "data_offsets": [4, 4]},
               "s": {"dtype": "I32", "shape": [], "data_offsets": [0, 4]}})",
            16);
  auto f = SafetensorsFile::open(write_file("edge.safetensors", bytes));
  EXPECT_EQ(f->header().tensors.size(), 3u);
  EXPECT_EQ(f->load("e1").sizes(), (std::vector<int64_t>{0, 5}));
  EXPECT_EQ(f->load("s").dim(), 0);
  EXPECT_EQ(f->load("s").item<int32_t>(), 0);
  auto empty = SafetensorsFile::open(write_file("empty.safetensors", image("{}", 0)));
  EXPECT_TRUE(empty->header().tensors.empty());
}

// No input may crash the parser: truncations and byte flips of a valid file either parse
// into in-bounds tensors or throw anvil::Error (tests/fuzz covers this at length).
TEST_F(SafetensorsTest, MutatedFilesNeverCrash) {
  std::vector<TensorInfo> infos(3);
  infos[0] = {"a", DType::F16, {2, 2}, 0, 8};
  infos[1] = {"b", DType::U8, {3}, 8, 11};
  infos[2] = {"c", DType::F64, {1}, 11, 19};
  const std::string valid = build_safetensors_header(infos, {{"k", "v"}}) + std::string(19, 'x');
  std::mt19937 rng(7);
  int parsed = 0;
  for (int iter = 0; iter < 5000; ++iter) {
    std::string s = valid;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 3) {
        case 0:
          s[rng() % s.size()] = static_cast<char>(rng() % 256);
          break;
        case 1:
          s[rng() % s.size()] = "0123456789-[]{},\":eE."[rng() % 21];
          break;
        default:
          s.resize(rng() % (s.size() + 1));
          if (s.empty()) s = "x";
      }
    }
    try {
      auto h = parse_safetensors_header(reinterpret_cast<const uint8_t*>(s.data()), s.size(),
                                        "mut.safetensors");
      for (const auto& t : h.tensors) {
        ASSERT_LE(t.begin, t.end);
        ASSERT_LE(h.data_offset + t.end, s.size());
        ASSERT_EQ(t.end - t.begin, t.numel() * dtype_size(t.dtype));
      }
      ++parsed;
    } catch (const Error& e) {
      ASSERT_TRUE(contains(e.what(), "mut.safetensors")) << e.what();
    }
  }
  EXPECT_GT(parsed, 0);  // some mutations (e.g. in the data section) stay valid
}

TEST_F(SafetensorsTest, MappedFileOwnsTheMappingAndNamesTheFile) {
  const fs::path p = write_file("bytes.bin", "0123456789");
  MappedFile a(p);
  ASSERT_EQ(a.size(), 10u);
  EXPECT_EQ(a.data()[3], '3');
  MappedFile b(std::move(a));
  EXPECT_EQ(b.size(), 10u);
  EXPECT_EQ(b.path(), p);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  MappedFile c(write_file("other.bin", "x"));
  c = std::move(b);
  EXPECT_EQ(c.data()[9], '9');
  MappedFile empty(write_file("empty.bin", ""));
  EXPECT_EQ(empty.size(), 0u);

  std::string msg = error_of([&] { MappedFile m(dir_ / "missing.safetensors"); });
  EXPECT_TRUE(contains(msg, (dir_ / "missing.safetensors").string())) << msg;
  msg = error_of([&] { MappedFile m(dir_); });
  EXPECT_TRUE(contains(msg, dir_.string()) && contains(msg, "regular file")) << msg;
}

// ----------------------------------------------------------------------------- writer + reader

TEST_F(SafetensorsTest, EveryDtypeRoundTripsBitExactInOneFile) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (DType d : kAllDTypes) tensors.emplace_back(dtype_name(d), random_tensor(d, {3, 5}));
  tensors.emplace_back("scalar", at::scalar_tensor(2.5, at::kBFloat16));
  tensors.emplace_back("empty", at::empty({0, 4}, at::kHalf));
  {
    CheckpointWriter w(dir_);
    for (const auto& [n, t] : tensors) w.add(n, t);
    w.finish();
  }
  EXPECT_EQ(files_in(dir_), std::set<std::string>{"model.safetensors"});
  auto file = SafetensorsFile::open(dir_ / "model.safetensors");
  EXPECT_EQ(file->header().metadata.at("format"), "pt");
  EXPECT_EQ(file->header().data_offset % 8, 0u);
  // Insertion order is file order.
  ASSERT_EQ(file->header().tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(file->header().tensors[i].name, tensors[i].first);
  }
  for (const fs::path& p : {dir_, dir_ / "model.safetensors"}) {
    CheckpointReader r = CheckpointReader::open(p);
    EXPECT_EQ(r.names().size(), tensors.size());
    for (const auto& [n, t] : tensors) {
      ASSERT_TRUE(r.contains(n));
      at::Tensor back = r.load(n);
      EXPECT_TRUE(bit_equal(back, t)) << n;
      EXPECT_TRUE(back.is_contiguous());
      EXPECT_EQ(r.info(n).shape, t.sizes().vec()) << n;
    }
    EXPECT_FALSE(r.contains("nope"));
    const std::string msg = error_of([&] { r.load("nope"); });
    EXPECT_TRUE(contains(msg, p.string()) && contains(msg, "'nope'")) << msg;
    EXPECT_TRUE(contains(error_of([&] { r.info("nope"); }), "'nope'"));
  }
}

TEST_F(SafetensorsTest, LoadedTensorsOwnTheirMemory) {
  at::Tensor loaded;
  {
    CheckpointWriter w(dir_);
    w.add("x", at::arange(4, at::kFloat));
    w.finish();
    loaded = CheckpointReader::open(dir_).load("x");
  }
  fs::remove_all(dir_);  // the mapping is gone with the reader; the tensor stays valid
  EXPECT_TRUE(loaded.equal(at::arange(4, at::kFloat)));
}

TEST_F(SafetensorsTest, WriterSnapshotsNonContiguousAndLaterModifiedTensors) {
  at::Tensor base = at::arange(12, at::kFloat).reshape({3, 4});
  at::Tensor transposed = base.t();             // [4, 3], non-contiguous
  at::Tensor strided = base.slice(1, 0, 4, 2);  // [3, 2], every other column
  CheckpointWriter w(dir_);
  w.add("t", transposed);
  w.add("s", strided);
  at::Tensor expected_t = transposed.clone();
  at::Tensor expected_s = strided.clone();
  base.fill_(-1);
  w.finish();
  CheckpointReader r = CheckpointReader::open(dir_);
  EXPECT_TRUE(r.load("t").equal(expected_t));
  EXPECT_TRUE(r.load("s").equal(expected_s));
}

TEST_F(SafetensorsTest, ShardsGreedilyWithHfNamesAndIndex) {
  // 40, 40, 24, 100 (alone: bigger than the limit), 8 bytes; limit 64.
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"model.embed_tokens.weight", random_tensor(DType::F32, {10})},
      {"model.layers.0.w", random_tensor(DType::BF16, {4, 5})},
      {"model.layers.0.b", random_tensor(DType::F64, {3})},
      {"model.layers.1.w", random_tensor(DType::U8, {100})},
      {"lm_head.weight", random_tensor(DType::F8_E5M2, {8})},
  };
  {
    CheckpointWriter w(dir_, /*max_shard_bytes=*/64, {{"format", "pt"}, {"by", "anvil"}});
    for (const auto& [n, t] : tensors) w.add(n, t);
    w.finish();
  }
  EXPECT_EQ(
      files_in(dir_),
      (std::set<std::string>{"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                             "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                             "model.safetensors.index.json"}));
  std::ifstream in(dir_ / "model.safetensors.index.json");
  json index = json::parse(in);
  EXPECT_EQ(index["metadata"]["total_size"], 40 + 40 + 24 + 100 + 8);
  EXPECT_EQ(index["weight_map"],
            json({{"model.embed_tokens.weight", "model-00001-of-00004.safetensors"},
                  {"model.layers.0.w", "model-00002-of-00004.safetensors"},
                  {"model.layers.0.b", "model-00002-of-00004.safetensors"},
                  {"model.layers.1.w", "model-00003-of-00004.safetensors"},
                  {"lm_head.weight", "model-00004-of-00004.safetensors"}}));
  auto shard2 = SafetensorsFile::open(dir_ / "model-00002-of-00004.safetensors");
  EXPECT_EQ(shard2->header().tensors.size(), 2u);
  EXPECT_EQ(shard2->header().metadata.at("by"), "anvil");

  CheckpointReader r = CheckpointReader::open(dir_);
  EXPECT_EQ(r.names(),
            (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight",
                                      "model.layers.0.b", "model.layers.0.w", "model.layers.1.w"}));
  for (const auto& [n, t] : tensors) EXPECT_TRUE(bit_equal(r.load(n), t)) << n;
  EXPECT_TRUE(bit_equal(r.load_rows("model.layers.0.w", 1, 3), tensors[1].second.slice(0, 1, 3)));
}

TEST_F(SafetensorsTest, ResavingReplacesStaleShardsButKeepsOtherFiles) {
  std::ofstream(dir_ / "config.json") << "{}";
  std::ofstream(dir_ / "model-extra.safetensors") << "not ours";
  auto save = [&](uint64_t max_shard_bytes, float value) {
    CheckpointWriter w(dir_, max_shard_bytes);
    for (int i = 0; i < 3; ++i) w.add("w" + std::to_string(i), at::full({4}, value + i));
    w.finish();
  };
  save(16, 1);  // 3 shards
  EXPECT_EQ(files_in(dir_).size(), 2u + 3u + 1u);
  save(32, 2);  // 2 shards: the 3-shard files go
  EXPECT_EQ(files_in(dir_),
            (std::set<std::string>{
                "config.json", "model-extra.safetensors", "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors", "model.safetensors.index.json"}));
  EXPECT_TRUE(CheckpointReader::open(dir_).load("w2").equal(at::full({4}, 4.0f)));
  save(1 << 20, 3);  // 1 shard: shards and index go
  EXPECT_EQ(files_in(dir_),
            (std::set<std::string>{"config.json", "model-extra.safetensors", "model.safetensors"}));
  EXPECT_TRUE(CheckpointReader::open(dir_).load("w1").equal(at::full({4}, 4.0f)));
  save(16, 5);  // back to 3 shards: model.safetensors goes
  EXPECT_FALSE(fs::exists(dir_ / "model.safetensors"));
  EXPECT_TRUE(CheckpointReader::open(dir_).load("w0").equal(at::full({4}, 5.0f)));
}

TEST_F(SafetensorsTest, LoadRowsReadsOnlyTheRequestedRows) {
  at::Tensor w = random_tensor(DType::BF16, {6, 3, 2});
  at::Tensor v = at::arange(5, at::kLong);
  {
    CheckpointWriter writer(dir_);
    writer.add("w", w);
    writer.add("v", v);
    writer.add("scalar", at::scalar_tensor(1.0));
    writer.add("empty", at::empty({0, 2}));
    writer.finish();
  }
  CheckpointReader r = CheckpointReader::open(dir_);
  for (auto [b, e] : std::vector<std::pair<int64_t, int64_t>>{{0, 6}, {2, 5}, {5, 6}, {3, 3}}) {
    at::Tensor rows = r.load_rows("w", b, e);
    EXPECT_EQ(rows.sizes(), (std::vector<int64_t>{e - b, 3, 2}));
    EXPECT_TRUE(bit_equal(rows, w.slice(0, b, e))) << b << ":" << e;
  }
  EXPECT_TRUE(r.load_rows("v", 1, 4).equal(at::arange(1, 4, at::kLong)));
  EXPECT_EQ(r.load_rows("empty", 0, 0).sizes(), (std::vector<int64_t>{0, 2}));
  for (auto [b, e] : std::vector<std::pair<int64_t, int64_t>>{{-1, 2}, {4, 2}, {0, 7}}) {
    const std::string msg = error_of([&] { r.load_rows("w", b, e); });
    EXPECT_TRUE(contains(msg, "'w'") && contains(msg, "model.safetensors")) << msg;
  }
  const std::string msg = error_of([&] { r.load_rows("scalar", 0, 1); });
  EXPECT_TRUE(contains(msg, "'scalar'") && contains(msg, "scalar")) << msg;
  EXPECT_TRUE(contains(error_of([&] { r.load_rows("nope", 0, 1); }), "'nope'"));
}

TEST_F(SafetensorsTest, AddRejectsWhatCannotBeStored) {
  CheckpointWriter w(dir_);
  w.add("a", at::ones({2}));
  std::string msg = error_of([&] { w.add("a", at::ones({2})); });
  EXPECT_TRUE(contains(msg, "'a'") && contains(msg, "twice")) << msg;
  msg = error_of([&] { w.add("__metadata__", at::ones({2})); });
  EXPECT_TRUE(contains(msg, "__metadata__")) << msg;
  msg = error_of([&] { w.add("", at::ones({2})); });
  EXPECT_FALSE(msg.empty());
  msg = error_of([&] { w.add("c", at::ones({2}, at::kComplexFloat)); });
  EXPECT_TRUE(contains(msg, "'c'") && contains(msg, "ComplexFloat")) << msg;
  msg = error_of([&] { w.add("u", at::Tensor()); });
  EXPECT_TRUE(contains(msg, "'u'")) << msg;
  msg = error_of([&] { w.add("sp", at::eye(3).to_sparse()); });
  EXPECT_TRUE(contains(msg, "'sp'")) << msg;
  EXPECT_TRUE(contains(error_of([] { CheckpointWriter bad("x", 0); }), "max shard"));
  w.finish();
  w.finish();  // idempotent
  msg = error_of([&] { w.add("late", at::ones({1})); });
  EXPECT_TRUE(contains(msg, "'late'") && contains(msg, "after finish")) << msg;
  EXPECT_EQ(CheckpointReader::open(dir_).names(), std::vector<std::string>{"a"});
}

TEST_F(SafetensorsTest, WriterDestroyedWithoutFinishLeavesNothing) {
  const fs::path out = dir_ / "ckpt";
  {
    CheckpointWriter w(out);
    w.add("a", at::ones({2}));
  }
  EXPECT_FALSE(fs::exists(out));
  fs::create_directories(out);
  {
    CheckpointWriter w(out, 8);
    w.add("a", at::ones({2}));
    w.add("b", at::ones({2}));
  }
  EXPECT_TRUE(files_in(out).empty());
}

// RAII guard: files this process writes may grow to at most `bytes` (EFBIG beyond).
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    ::getrlimit(RLIMIT_FSIZE, &old_);
    rlimit limit = old_;
    limit.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &limit);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old_);
    std::signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit old_{};
  void (*old_handler_)(int) = nullptr;
};

TEST_F(SafetensorsTest, FailedWriteLeavesNoFilesAndKeepsThePreviousCheckpoint) {
  {
    CheckpointWriter w(dir_, 64);
    for (int i = 0; i < 3; ++i) w.add("old" + std::to_string(i), at::full({12}, 1.0f * i));
    w.finish();
  }
  const std::set<std::string> before = files_in(dir_);
  ASSERT_EQ(before.size(), 4u);  // 3 shards + index
  std::string msg;
  {
    // The first two shards fit under the limit; the third (a 4 KB tensor) does not.
    CheckpointWriter w(dir_, 256);
    w.add("a", at::ones({40}));
    w.add("b", at::ones({40}));
    w.add("big", at::ones({1024}));
    FileSizeLimit limit(1024);
    msg = error_of([&] { w.finish(); });
  }
  EXPECT_TRUE(contains(msg, "model-00003-of-00003.safetensors") && contains(msg, "write failed"))
      << msg;
  EXPECT_EQ(files_in(dir_), before);  // no temporaries, nothing renamed, nothing removed
  CheckpointReader r = CheckpointReader::open(dir_);
  EXPECT_TRUE(r.load("old2").equal(at::full({12}, 2.0f)));
}

TEST_F(SafetensorsTest, RenameObstacleFailsBeforeAnythingIsPublished) {
  fs::create_directories(dir_ / "model-00002-of-00002.safetensors");  // a directory
  CheckpointWriter w(dir_, 8);
  w.add("a", at::ones({2}));
  w.add("b", at::ones({2}));
  const std::string msg = error_of([&] { w.finish(); });
  EXPECT_TRUE(contains(msg, "model-00002-of-00002.safetensors")) << msg;
  EXPECT_EQ(files_in(dir_), std::set<std::string>{"model-00002-of-00002.safetensors"});
  EXPECT_TRUE(contains(error_of([] { CheckpointWriter("/proc/anvil_no/x").finish(); }),
                       "/proc/anvil_no/x"));
}

// ----------------------------------------------------------------------------- index

class ShardedIndexTest : public SafetensorsTest {
 protected:
  void SetUp() override {
    SafetensorsTest::SetUp();
    CheckpointWriter w(dir_, 8);
    w.add("a", at::ones({2}));
    w.add("b", at::ones({2}));
    w.finish();
    index_ = dir_ / "model.safetensors.index.json";
  }
  void write_index(const std::string& text) { std::ofstream(index_) << text; }
  std::string open_error() {
    return error_of([&] { CheckpointReader::open(dir_); });
  }

  fs::path index_;
  const std::string s1_ = "model-00001-of-00002.safetensors";
  const std::string s2_ = "model-00002-of-00002.safetensors";
};

TEST_F(ShardedIndexTest, ValidIndexOpens) {
  CheckpointReader r = CheckpointReader::open(dir_);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"a", "b"}));
}

TEST_F(ShardedIndexTest, BadIndexesNameTheIndexAndTensor) {
  struct Case {
    std::string label, text, needle;
  };
  const std::vector<Case> cases = {
      {"not json", "{\"weight_map\": ", "index.json"},
      {"no weight_map", R"({"metadata": {}})", "weight_map"},
      {"weight_map not an object", R"({"weight_map": ["a"]})", "weight_map"},
      {"file not a string", R"({"weight_map": {"a": 1, "b": 2}})", "'a'"},
      {"missing shard", R"({"weight_map": {"a": "model-00001-of-00009.safetensors"}})",
       "model-00001-of-00009.safetensors"},
      {"path escapes", R"({"weight_map": {"a": "../x.safetensors"}})", "'a'"},
      {"tensor not in shard", R"({"weight_map": {"a": ")" + s1_ + R"(", "c": ")" + s2_ + "\"}}",
       "'c'"},
  };
  for (const Case& c : cases) {
    write_index(c.text);
    const std::string msg = open_error();
    EXPECT_TRUE(contains(msg, index_.string())) << c.label << ": " << msg;
    EXPECT_TRUE(contains(msg, c.needle)) << c.label << ": '" << c.needle << "' not in " << msg;
  }
}

TEST_F(ShardedIndexTest, DuplicateTensorAcrossShardsIsAnError) {
  // third.safetensors holds 'a'; both.safetensors holds 'a' and 'b'. The index is
  // consistent ('a' -> third, 'b' -> both), but 'a' would be ambiguous.
  auto save_single = [&](const std::string& file, std::vector<std::string> names) {
    {
      CheckpointWriter w(dir_ / "tmp");
      for (const auto& n : names) w.add(n, at::zeros({2}));
      w.finish();
    }
    fs::rename(dir_ / "tmp" / "model.safetensors", dir_ / file);
  };
  save_single("third.safetensors", {"a"});
  save_single("both.safetensors", {"a", "b"});
  write_index(R"({"weight_map": {"a": "third.safetensors", "b": "both.safetensors"}})");
  const std::string msg = open_error();
  EXPECT_TRUE(contains(msg, index_.string()) && contains(msg, "'a'") &&
              contains(msg, "more than one shard"))
      << msg;
}

TEST_F(ShardedIndexTest, CorruptShardNamesTheShard) {
  std::ofstream(dir_ / s2_, std::ios::trunc) << "short";
  const std::string msg = open_error();
  EXPECT_TRUE(contains(msg, (dir_ / s2_).string())) << msg;
}

TEST_F(SafetensorsTest, ReaderNeedsACheckpoint) {
  std::string msg = error_of([&] { CheckpointReader::open(dir_); });
  EXPECT_TRUE(contains(msg, dir_.string()) && contains(msg, "model.safetensors")) << msg;
  msg = error_of([&] { CheckpointReader::open(dir_ / "absent"); });
  EXPECT_TRUE(contains(msg, (dir_ / "absent").string())) << msg;
}

}  // namespace

// StreamingCheckpointWriter: tensors known up front, written one at a time in any order.
TEST(StreamingCheckpointWriter, OutOfOrderWritesShardAndLoadBack) {
  fs::path dir = fs::temp_directory_path() / ("anvil-stream-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::vector<TensorInfo> layout;
  std::vector<at::Tensor> values;
  for (int i = 0; i < 5; ++i) {
    at::Tensor t = at::randn({3 + i, 4}, at::kFloat);
    TensorInfo info;
    info.name = "t" + std::to_string(i);
    info.dtype = from_scalar_type(t.scalar_type());
    info.shape = {3 + i, 4};
    layout.push_back(info);
    values.push_back(t);
  }
  {
    StreamingCheckpointWriter w(dir, layout, /*max_shard_bytes=*/150);
    for (int i : {3, 0, 4, 1, 2}) w.write("t" + std::to_string(i), values[i]);
    EXPECT_THROW(w.write("t1", values[1]), Error);    // twice
    EXPECT_THROW(w.write("nope", values[1]), Error);  // unknown
    w.finish();
  }
  EXPECT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  auto reader = CheckpointReader::open(dir);
  for (int i = 0; i < 5; ++i)
    EXPECT_TRUE(at::equal(reader.load("t" + std::to_string(i)), values[i]));
  // A non-empty directory, a wrong shape, a tensor never written: errors naming it.
  EXPECT_THROW(StreamingCheckpointWriter(dir, layout), Error);
  fs::remove_all(dir);
  StreamingCheckpointWriter w(dir, layout);
  EXPECT_THROW(w.write("t0", at::zeros({2, 4})), Error);
  try {
    w.finish();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'t0' was never written"), std::string::npos);
  }
  fs::remove_all(dir);
}
