#include "backends/models/safetensors.hpp"

#include "backends/common/error.hpp"
#include "backends/common/json_util.hpp"
#include "backends/models/dtype.hpp"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <regex>
#include <set>

namespace anvil::models {
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little,
              "safetensors is little-endian; big-endian hosts need byte swapping");

// ---------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::SafetensorsFile(MappedFile file)
    : file_(std::move(file)),
      header_(parse_safetensors_header(file_.data(), file_.size(), file_.path().string())) {}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const fs::path& path) {
  return std::shared_ptr<SafetensorsFile>(new SafetensorsFile(MappedFile(path)));
}

at::Tensor SafetensorsFile::load(const std::string& name) const {
  const TensorInfo* t = header_.find(name);
  if (t == nullptr) fail("{}: no tensor '{}'", path().string(), name);
  at::Tensor out = at::empty(t->shape, at::TensorOptions().dtype(to_scalar_type(t->dtype)));
  if (t->nbytes() > 0) {
    std::memcpy(out.data_ptr(), file_.data() + header_.data_offset + t->begin, t->nbytes());
  }
  return out;
}

at::Tensor SafetensorsFile::load_rows(const std::string& name, int64_t row_begin,
                                      int64_t row_end) const {
  const TensorInfo* t = header_.find(name);
  if (t == nullptr) fail("{}: no tensor '{}'", path().string(), name);
  if (t->shape.empty()) fail("{}: tensor '{}' is a scalar; it has no rows", path().string(), name);
  if (row_begin < 0 || row_begin > row_end || row_end > t->shape[0]) {
    fail("{}: tensor '{}': rows [{}, {}) outside [0, {})", path().string(), name, row_begin,
         row_end, t->shape[0]);
  }
  std::vector<int64_t> shape = t->shape;
  shape[0] = row_end - row_begin;
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(to_scalar_type(t->dtype)));
  const uint64_t row_bytes =
      t->shape[0] == 0 ? 0 : t->nbytes() / static_cast<uint64_t>(t->shape[0]);
  const uint64_t n = row_bytes * static_cast<uint64_t>(row_end - row_begin);
  if (n > 0) {
    std::memcpy(out.data_ptr(),
                file_.data() + header_.data_offset + t->begin + row_bytes * row_begin, n);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// CheckpointReader

CheckpointReader CheckpointReader::open(const fs::path& path) {
  CheckpointReader r;
  r.root_ = path;
  auto add_file = [&r](const fs::path& file) {
    r.files_.push_back(SafetensorsFile::open(file));
    return r.files_.size() - 1;
  };
  if (fs::is_regular_file(path)) {
    size_t i = add_file(path);
    for (const auto& t : r.files_[i]->header().tensors) r.where_[t.name] = i;
    return r;
  }
  if (!fs::is_directory(path)) fail("{}: no such checkpoint file or directory", path.string());
  const fs::path index = path / "model.safetensors.index.json";
  const fs::path single = path / "model.safetensors";
  if (fs::exists(index)) {
    nlohmann::json j = read_json_file(index);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      fail("{}: missing object 'weight_map'", index.string());
    }
    std::map<std::string, size_t> shard_ids;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) fail("{}: weight_map['{}'] must be a file name", index.string(), name);
      const std::string shard = file.get<std::string>();
      if (shard.find('/') != std::string::npos || shard == ".." || shard.empty()) {
        fail("{}: weight_map['{}'] names '{}', which is not a file in the directory",
             index.string(), name, shard);
      }
      auto it = shard_ids.find(shard);
      if (it == shard_ids.end()) {
        if (!fs::exists(path / shard)) {
          fail("{}: shard '{}' (for tensor '{}') does not exist", index.string(), shard, name);
        }
        it = shard_ids.emplace(shard, add_file(path / shard)).first;
      }
      if (r.files_[it->second]->header().find(name) == nullptr) {
        fail("{}: tensor '{}' is not in shard '{}'", index.string(), name, shard);
      }
      r.where_[name] = it->second;
    }
    // A tensor stored in a second shard but not named by the index would be ambiguous.
    std::set<std::string> seen;
    for (const auto& f : r.files_) {
      for (const auto& t : f->header().tensors) {
        if (!seen.insert(t.name).second) {
          fail("{}: tensor '{}' appears in more than one shard", index.string(), t.name);
        }
      }
    }
    return r;
  }
  if (fs::exists(single)) {
    size_t i = add_file(single);
    for (const auto& t : r.files_[i]->header().tensors) r.where_[t.name] = i;
    return r;
  }
  fail("{}: no model.safetensors or model.safetensors.index.json", path.string());
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : where_) out.push_back(name);
  std::sort(out.begin(), out.end());
  return out;
}

const TensorInfo& CheckpointReader::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: no tensor '{}'", root_.string(), name);
  return *files_[it->second]->header().find(name);
}

at::Tensor CheckpointReader::load(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: no tensor '{}'", root_.string(), name);
  return files_[it->second]->load(name);
}

at::Tensor CheckpointReader::load_rows(const std::string& name, int64_t row_begin,
                                       int64_t row_end) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: no tensor '{}'", root_.string(), name);
  return files_[it->second]->load_rows(name, row_begin, row_end);
}

// ---------------------------------------------------------------------------------------
// CheckpointWriter

namespace {

void write_all(int fd, const void* data, size_t n, const fs::path& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {}", path.string(), std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

CheckpointWriter::CheckpointWriter(fs::path dir, uint64_t max_shard_bytes,
                                   std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes), metadata_(std::move(metadata)) {
  if (max_shard_bytes_ == 0) fail("{}: max shard size must be positive", dir_.string());
}

CheckpointWriter::~CheckpointWriter() {
  std::error_code ignored;
  for (const auto& t : temporaries_) fs::remove(t, ignored);
}

void CheckpointWriter::add(const std::string& name, const at::Tensor& tensor) {
  if (finished_) fail("{}: add('{}') after finish()", dir_.string(), name);
  for (const auto& [existing, _] : tensors_) {
    if (existing == name) fail("{}: tensor '{}' added twice", dir_.string(), name);
  }
  from_scalar_type(tensor.scalar_type());  // rejects unstorable types early
  tensors_.emplace_back(name, tensor.detach().to(at::kCPU).contiguous().clone());
}

void CheckpointWriter::finish() {
  if (finished_) return;
  fs::create_directories(dir_);
  // Greedy sharding in insertion order, as transformers does.
  std::vector<std::vector<size_t>> shards(1);
  uint64_t current = 0, total = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    uint64_t n = tensors_[i].second.nbytes();
    if (!shards.back().empty() && current + n > max_shard_bytes_) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += n;
    total += n;
  }
  const size_t count = shards.size();
  auto shard_name = [count](size_t k) {
    if (count == 1) return std::string("model.safetensors");
    return fmt::format("model-{:05d}-of-{:05d}.safetensors", k + 1, count);
  };
  const std::string suffix = ".tmp." + std::to_string(::getpid());
  std::vector<std::pair<fs::path, fs::path>> renames;  // temporary -> final
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t k = 0; k < count; ++k) {
    std::vector<TensorInfo> infos;
    uint64_t offset = 0;
    for (size_t i : shards[k]) {
      const auto& [name, t] = tensors_[i];
      TensorInfo info;
      info.name = name;
      info.dtype = from_scalar_type(t.scalar_type());
      info.shape.assign(t.sizes().begin(), t.sizes().end());
      info.begin = offset;
      info.end = offset + t.nbytes();
      offset = info.end;
      infos.push_back(info);
      weight_map[name] = shard_name(k);
    }
    fs::path final_path = dir_ / shard_name(k);
    fs::path tmp = final_path;
    tmp += suffix;
    temporaries_.push_back(tmp);
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("{}: cannot create: {}", tmp.string(), std::strerror(errno));
    try {
      std::string header = build_safetensors_header(infos, metadata_);
      write_all(fd, header.data(), header.size(), tmp);
      for (size_t i : shards[k]) {
        const at::Tensor& t = tensors_[i].second;
        if (t.nbytes() > 0) write_all(fd, t.data_ptr(), t.nbytes(), tmp);
      }
      if (::fsync(fd) != 0) fail("{}: fsync failed: {}", tmp.string(), std::strerror(errno));
    } catch (...) {
      ::close(fd);
      throw;
    }
    if (::close(fd) != 0) fail("{}: close failed: {}", tmp.string(), std::strerror(errno));
    renames.emplace_back(tmp, final_path);
  }
  // Everything is on disk: move shards into place, then the index, then drop stale files
  // of an earlier save with another shard count.
  std::set<std::string> keep;
  for (auto& [tmp, final_path] : renames) {
    fs::rename(tmp, final_path);
    keep.insert(final_path.filename().string());
  }
  temporaries_.clear();
  const fs::path index = dir_ / "model.safetensors.index.json";
  if (count > 1) {
    nlohmann::json j = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_json_file_atomic(index, j);
    keep.insert(index.filename().string());
  }
  static const std::regex kOurs(R"(model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?)");
  for (const auto& entry : fs::directory_iterator(dir_)) {
    std::string name = entry.path().filename().string();
    if (keep.count(name) == 0 && std::regex_match(name, kOurs)) fs::remove(entry.path());
  }
  finished_ = true;
  tensors_.clear();
}

}  // namespace anvil::models
