#include "backends/train/state_reader.hpp"

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/models/safetensors.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <unordered_map>

namespace anvil::train {

namespace fs = std::filesystem;

Box Box::whole(const std::vector<int64_t>& shape) {
  return Box{std::vector<int64_t>(shape.size(), 0), shape};
}

int64_t Box::numel() const {
  int64_t n = 1;
  for (int64_t s : size) n *= s;
  return n;
}

nlohmann::json Box::to_json() const { return {{"offset", offset}, {"size", size}}; }

Box Box::from_json(const nlohmann::json& j, const std::string& where) {
  auto dims = [&](const char* key) {
    if (!j.is_object() || !j.contains(key) || !j[key].is_array())
      fail("{}: key '{}' must be an array of integers", where, key);
    std::vector<int64_t> out;
    for (const auto& v : j[key]) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0)
        fail("{}: key '{}' must be an array of non-negative integers", where, key);
      out.push_back(v.get<int64_t>());
    }
    return out;
  };
  Box b{dims("offset"), dims("size")};
  if (b.offset.size() != b.size.size())
    fail("{}: 'offset' has {} dimensions, 'size' {}", where, b.offset.size(), b.size.size());
  return b;
}

std::string StateLayout::describe() const {
  switch (kind) {
    case Kind::kSingle:
      return "one rank";
    case Kind::kFsdp:
      return fmt::format("FSDP over {} ranks", world_size);
    case Kind::kMegatron:
      return fmt::format("Megatron TP={} x PP={} x DP={} ({} ranks)", tp, pp, dp, world_size);
  }
  return "?";
}

namespace {

constexpr int kModelFile = -1;  // a piece read from model/ (a single-rank fp32 master)

std::string rank_file(const char* folder, int rank, int world) {
  return fmt::format("{}/rank_{}-of-{}.safetensors", folder, rank, world);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

struct StateReader::Impl {
  fs::path dir;
  nlohmann::json meta;
  StateLayout layout;
  int64_t optimizer_steps = 0;
  std::vector<std::shared_ptr<models::SafetensorsFile>> files;  // rank files (or optimizer)
  std::optional<models::CheckpointReader> model;                // model/: HF shapes, masters

  struct Piece {
    int file[3];         // per Part: index into files, or kModelFile
    std::string key[3];  // per Part
    Box box;             // where the stored tensor's valid rows sit in the HF tensor
  };
  std::unordered_map<std::string, std::vector<Piece>> pieces;

  std::vector<int64_t> stored_shape(int file, const std::string& key) const {
    if (file == kModelFile) return model->info(key).shape;
    const models::TensorInfo* t = files[static_cast<size_t>(file)]->header().find(key);
    if (!t)
      fail("{}: tensor '{}' is missing", files[static_cast<size_t>(file)]->path().string(), key);
    return t->shape;
  }
  at::Tensor load_rows(int file, const std::string& key, int64_t b, int64_t e) const {
    if (file == kModelFile) return model->load_rows(key, b, e);
    return files[static_cast<size_t>(file)]->load_rows(key, b, e);
  }
  std::string file_name(int file) const {
    return file == kModelFile ? (dir / "model").string()
                              : files[static_cast<size_t>(file)]->path().string();
  }

  // A stored tensor and its moments; pieces with the box of one already kept (a tensor
  // replicated over tensor-parallel ranks) are dropped.
  void add(const std::string& name, Piece p) {
    if (p.box.numel() == 0) return;
    auto& list = pieces[name];
    for (const Piece& q : list)
      if (q.box.offset == p.box.offset && q.box.size == p.box.size) return;
    list.push_back(std::move(p));
  }

  void index_megatron() {
    model.emplace(models::CheckpointReader::open(dir / "model"));
    for (int r = 0; r < layout.world_size; ++r) {
      const fs::path path = dir / rank_file("megatron", r, layout.world_size);
      if (!fs::exists(path))
        fail("{}: incomplete checkpoint, {} is missing", dir.string(), path.string());
      files.push_back(models::SafetensorsFile::open(path));
      const auto& md = files.back()->header().metadata;
      auto it = md.find(kBoxesMetadataKey);
      if (it == md.end())
        fail(
            "{}: no '{}' metadata (written by an anvil without resharding; it loads only into "
            "the mesh that wrote it)",
            path.string(), kBoxesMetadataKey);
      nlohmann::json boxes;
      try {
        boxes = nlohmann::json::parse(it->second);
      } catch (const std::exception& e) {
        fail("{}: metadata '{}' is not JSON: {}", path.string(), kBoxesMetadataKey, e.what());
      }
      if (!boxes.is_object())
        fail("{}: metadata '{}' must be an object", path.string(), kBoxesMetadataKey);
      const int f = static_cast<int>(files.size()) - 1;
      for (const auto& [key, j] : boxes.items()) {
        if (key.find('@') != std::string::npos) continue;  // a tied copy: same values as its source
        Piece p{{f, f, f},
                {key, key + ".exp_avg", key + ".exp_avg_sq"},
                Box::from_json(j, fmt::format("{}: metadata box '{}'", path.string(), key))};
        add(key, std::move(p));
      }
    }
  }

  void index_fsdp() {
    model.emplace(models::CheckpointReader::open(dir / "model"));
    const int W = layout.world_size;
    for (int r = 0; r < W; ++r) {
      const fs::path path = dir / rank_file("fsdp", r, W);
      if (!fs::exists(path))
        fail("{}: incomplete checkpoint, {} is missing", dir.string(), path.string());
      files.push_back(models::SafetensorsFile::open(path));
      const int f = static_cast<int>(files.size()) - 1;
      for (const models::TensorInfo& t : files.back()->header().tensors) {
        const std::string& key = t.name;
        if (key.rfind("__", 0) == 0 || ends_with(key, ".exp_avg") || ends_with(key, ".exp_avg_sq"))
          continue;
        if (!model->contains(key))
          fail("{}: tensor '{}' is not in the checkpoint's model/", path.string(), key);
        const std::vector<int64_t> full = model->info(key).shape;
        if (full.empty() || t.shape.size() != full.size())
          fail("{}: tensor '{}' has shape [{}], model/ has [{}]", path.string(), key,
               fmt::join(t.shape, ", "), fmt::join(full, ", "));
        const int64_t sr = (full[0] + W - 1) / W;  // rank r holds rows [r * sr, ...)
        Box box = Box::whole(full);
        box.offset[0] = std::min(full[0], r * sr);
        box.size[0] = std::clamp<int64_t>(full[0] - r * sr, 0, sr);
        add(key, Piece{{f, f, f}, {key, key + ".exp_avg", key + ".exp_avg_sq"}, std::move(box)});
      }
    }
  }

  void index_single() {
    const fs::path path = dir / "optimizer.safetensors";
    if (!fs::exists(path))
      fail("{}: incomplete checkpoint, optimizer.safetensors is missing", dir.string());
    model.emplace(models::CheckpointReader::open(dir / "model"));
    files.push_back(models::SafetensorsFile::open(path));
    for (const models::TensorInfo& t : files.back()->header().tensors) {
      if (!ends_with(t.name, ".exp_avg")) continue;
      const std::string name = t.name.substr(0, t.name.size() - std::string(".exp_avg").size());
      const bool has_master = files.back()->header().find(name + ".master") != nullptr;
      if (!has_master && !model->contains(name))
        fail("{}: tensor '{}' has moments but no master weight ({}.master or model/)",
             path.string(), name, name);
      add(name,
          Piece{{has_master ? 0 : kModelFile, 0, 0},
                {has_master ? name + ".master" : name, name + ".exp_avg", name + ".exp_avg_sq"},
                Box::whole(t.shape)});
    }
  }
};

StateReader::StateReader(const fs::path& dir) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.dir = dir;
  const fs::path meta_file = dir / "trainer_state.json";
  if (!fs::exists(meta_file))
    fail("{}: incomplete checkpoint, trainer_state.json is missing", dir.string());
  m.meta = read_json_file(meta_file);
  if (!m.meta.is_object() || !m.meta.contains("optimizer_steps") ||
      !m.meta["optimizer_steps"].is_number_integer())
    fail("{}: key 'optimizer_steps' is missing or not an integer", meta_file.string());
  m.optimizer_steps = m.meta["optimizer_steps"].get<int64_t>();
  auto positive = [&](const nlohmann::json& j, const char* key, const std::string& where) {
    if (!j.contains(key) || !j[key].is_number_integer() || j[key].get<int64_t>() < 1)
      fail("{}: key '{}' must be a positive integer", where, key);
    return j[key].get<int>();
  };
  if (m.meta.contains("megatron")) {
    const nlohmann::json& mesh = m.meta["megatron"];
    const std::string where = meta_file.string() + " 'megatron'";
    if (!mesh.is_object()) fail("{} must be an object", where);
    m.layout.kind = StateLayout::Kind::kMegatron;
    m.layout.tp = positive(mesh, "tp", where);
    m.layout.pp = positive(mesh, "pp", where);
    m.layout.dp = positive(mesh, "dp", where);
    m.layout.world_size = positive(m.meta, "world_size", meta_file.string());
    if (m.layout.world_size != m.layout.tp * m.layout.pp * m.layout.dp)
      fail("{}: world_size {} is not TP x PP x DP = {} x {} x {}", meta_file.string(),
           m.layout.world_size, m.layout.tp, m.layout.pp, m.layout.dp);
    m.index_megatron();
  } else if (m.meta.contains("world_size")) {
    m.layout.kind = StateLayout::Kind::kFsdp;
    m.layout.world_size = m.layout.dp = positive(m.meta, "world_size", meta_file.string());
    m.index_fsdp();
  } else {
    m.index_single();
  }
}

StateReader::~StateReader() = default;
StateReader::StateReader(StateReader&&) noexcept = default;
StateReader& StateReader::operator=(StateReader&&) noexcept = default;

const StateLayout& StateReader::layout() const { return impl_->layout; }
int64_t StateReader::optimizer_steps() const { return impl_->optimizer_steps; }
const nlohmann::json& StateReader::trainer_state() const { return impl_->meta; }

at::Tensor StateReader::read(const std::string& name, const std::vector<int64_t>& full,
                             const Box& region, Part part) const {
  const Impl& m = *impl_;
  const size_t nd = full.size();
  if (region.offset.size() != nd || region.size.size() != nd)
    fail("StateReader::read '{}': region has {} dimensions, the tensor {}", name,
         region.size.size(), nd);
  for (size_t d = 0; d < nd; ++d)
    if (region.offset[d] + region.size[d] > full[d])
      fail("StateReader::read '{}': region [{}] + [{}] is outside [{}]", name,
           fmt::join(region.offset, ", "), fmt::join(region.size, ", "), fmt::join(full, ", "));
  if (m.model && m.model->contains(name) && m.model->info(name).shape != full)
    fail(
        "{}: tensor '{}' has shape [{}] in the checkpoint, the model's is [{}] (another "
        "architecture?)",
        (m.dir / "model").string(), name, fmt::join(m.model->info(name).shape, ", "),
        fmt::join(full, ", "));
  auto it = m.pieces.find(name);
  if (it == m.pieces.end())
    fail("{}: tensor '{}' is not in the checkpoint (written by {})", m.dir.string(), name,
         m.layout.describe());
  const int k = static_cast<int>(part);
  at::Tensor out = at::zeros(region.size, at::kFloat);
  int64_t covered = 0;
  for (const Impl::Piece& p : it->second) {
    const std::string& key = p.key[k];
    const int file = p.file[k];
    if (p.box.size.size() != nd)
      fail("{}: '{}' is stored with {} dimensions, the model's has {} ([{}])", m.file_name(file),
           key, p.box.size.size(), nd, fmt::join(full, ", "));
    std::vector<int64_t> lo(nd), hi(nd);
    bool empty = false;
    for (size_t d = 0; d < nd; ++d) {
      if (p.box.offset[d] + p.box.size[d] > full[d])
        fail("{}: '{}' holds [{}] + [{}], outside the model's shape [{}] (another architecture?)",
             m.file_name(file), key, fmt::join(p.box.offset, ", "), fmt::join(p.box.size, ", "),
             fmt::join(full, ", "));
      lo[d] = std::max(region.offset[d], p.box.offset[d]);
      hi[d] = std::min(region.offset[d] + region.size[d], p.box.offset[d] + p.box.size[d]);
      empty = empty || hi[d] <= lo[d];
    }
    if (empty) continue;
    const std::vector<int64_t> stored = m.stored_shape(file, key);
    bool fits = stored.size() == nd && stored[0] >= p.box.size[0];
    for (size_t d = 1; fits && d < nd; ++d) fits = stored[d] == p.box.size[d];
    if (!fits)
      fail("{}: '{}' has shape [{}], its box is [{}]", m.file_name(file), key,
           fmt::join(stored, ", "), fmt::join(p.box.size, ", "));
    at::Tensor t = m.load_rows(file, key, lo[0] - p.box.offset[0], hi[0] - p.box.offset[0]);
    at::Tensor dst = out;
    for (size_t d = 0; d < nd; ++d) {
      const int64_t dim = static_cast<int64_t>(d);
      if (d > 0) t = t.narrow(dim, lo[d] - p.box.offset[d], hi[d] - lo[d]);
      dst = dst.narrow(dim, lo[d] - region.offset[d], hi[d] - lo[d]);
    }
    dst.copy_(t);
    int64_t n = 1;
    for (size_t d = 0; d < nd; ++d) n *= hi[d] - lo[d];
    covered += n;
  }
  if (covered != region.numel())
    fail("{}: the checkpoint ({}) holds {} of the {} values of '{}' at [{}] + [{}]", m.dir.string(),
         m.layout.describe(), covered, region.numel(), name, fmt::join(region.offset, ", "),
         fmt::join(region.size, ", "));
  return out;
}

std::array<at::Tensor, 3> StateReader::read_shard(const std::string& name,
                                                  const std::vector<int64_t>& full, const Box& box,
                                                  const at::Tensor& like) const {
  std::array<at::Tensor, 3> out;
  for (Part part : {Part::kMaster, Part::kExpAvg, Part::kExpAvgSq}) {
    at::Tensor t = at::zeros(like.sizes(), like.options().dtype(at::kFloat));
    if (box.size[0] > 0) t.narrow(0, 0, box.size[0]).copy_(read(name, full, box, part));
    out[static_cast<size_t>(part)] = t;
  }
  return out;
}

std::optional<at::Tensor> StateReader::rng(int rank, const std::string& key) const {
  const Impl& m = *impl_;
  const size_t f = m.layout.kind == StateLayout::Kind::kSingle ? 0 : static_cast<size_t>(rank);
  if (rank < 0 || f >= m.files.size() || !m.files[f]->header().find(key)) return std::nullopt;
  return m.files[f]->load(key);
}

}  // namespace anvil::train
