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

// Creates `path` and writes the given pieces to it, fsync'd. Throws anvil::Error naming it.
template <typename WriteBody>
void write_file_synced(const fs::path& path, WriteBody&& body) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot create: {}", path.string(), std::strerror(errno));
  try {
    body(fd);
    if (::fsync(fd) != 0) fail("{}: fsync failed: {}", path.string(), std::strerror(errno));
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) fail("{}: close failed: {}", path.string(), std::strerror(errno));
}

std::string shard_file_name(size_t k, size_t count) {
  if (count == 1) return "model.safetensors";
  return fmt::format("model-{:05d}-of-{:05d}.safetensors", k + 1, count);
}

// The names an HF save may leave in a directory; stale ones are removed after a save.
bool is_checkpoint_file_name(const std::string& name) {
  static const std::regex kOurs(R"(model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?)");
  return std::regex_match(name, kOurs);
}

}  // namespace

CheckpointWriter::CheckpointWriter(fs::path dir, uint64_t max_shard_bytes,
                                   std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes), metadata_(std::move(metadata)) {
  if (max_shard_bytes_ == 0) fail("{}: max shard size must be positive", dir_.string());
}

CheckpointWriter::~CheckpointWriter() { remove_temporaries(); }

void CheckpointWriter::remove_temporaries() noexcept {
  std::error_code ignored;
  for (const auto& t : temporaries_) fs::remove(t, ignored);
  for (const auto& p : published_) fs::remove(p, ignored);
  temporaries_.clear();
  published_.clear();
}

void CheckpointWriter::add(const std::string& name, const at::Tensor& tensor) {
  if (finished_) fail("{}: add('{}') after finish()", dir_.string(), name);
  if (name.empty() || name == "__metadata__") {
    fail("{}: '{}' is not a valid tensor name", dir_.string(), name);
  }
  if (names_.count(name) != 0) fail("{}: tensor '{}' added twice", dir_.string(), name);
  if (!tensor.defined()) fail("{}: tensor '{}' is undefined", dir_.string(), name);
  if (tensor.layout() != at::kStrided) {
    fail("{}: tensor '{}' is not a dense strided tensor", dir_.string(), name);
  }
  try {
    from_scalar_type(tensor.scalar_type());  // rejects unstorable types early
  } catch (const Error& e) {
    fail("{}: tensor '{}': {}", dir_.string(), name, e.what());
  }
  // copy=true: always an owned snapshot, even of a contiguous CPU tensor.
  at::Tensor copy = tensor.detach().to(tensor.options().device(at::kCPU), /*non_blocking=*/false,
                                       /*copy=*/true, at::MemoryFormat::Contiguous);
  names_.insert(name);
  tensors_.emplace_back(name, std::move(copy));
}

void CheckpointWriter::finish() {
  if (finished_) return;
  try {
    write_all_files();
  } catch (const fs::filesystem_error& e) {
    remove_temporaries();
    fail("{}: {}", dir_.string(), e.what());
  } catch (...) {
    remove_temporaries();
    throw;
  }
  finished_ = true;
  tensors_.clear();
}

void CheckpointWriter::write_all_files() {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) fail("{}: cannot create directory: {}", dir_.string(), ec.message());

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
  const std::string suffix = fmt::format(".tmp.{}", ::getpid());

  // 1. Every file under a temporary name, fsync'd; nothing visible changes yet.
  std::vector<std::pair<fs::path, fs::path>> renames;  // temporary -> final
  auto temporary_for = [&](const fs::path& final_path) {
    fs::path tmp = final_path;
    tmp += suffix;
    temporaries_.push_back(tmp);  // registered first: a failed create is still cleaned up
    renames.emplace_back(tmp, final_path);
    return tmp;
  };
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
      infos.push_back(std::move(info));
      weight_map[name] = shard_file_name(k, count);
    }
    const fs::path tmp = temporary_for(dir_ / shard_file_name(k, count));
    write_file_synced(tmp, [&](int fd) {
      const std::string header = build_safetensors_header(infos, metadata_);
      write_all(fd, header.data(), header.size(), tmp);
      for (size_t i : shards[k]) {
        const at::Tensor& t = tensors_[i].second;
        if (t.nbytes() > 0) write_all(fd, t.data_ptr(), t.nbytes(), tmp);
      }
    });
  }
  if (count > 1) {
    const fs::path tmp = temporary_for(dir_ / "model.safetensors.index.json");
    const nlohmann::json index = {{"metadata", {{"total_size", total}}},
                                  {"weight_map", weight_map}};
    const std::string text = index.dump(2) + "\n";
    write_file_synced(tmp, [&](int fd) { write_all(fd, text.data(), text.size(), tmp); });
  }

  // 2. Refuse before renaming anything if a final name is taken by a non-file.
  for (const auto& [tmp, final_path] : renames) {
    if (fs::exists(final_path) && !fs::is_regular_file(final_path)) {
      fail("{}: exists and is not a regular file", final_path.string());
    }
  }

  // 3. Shards first, the index last, so a reader never sees an index whose shards are
  // missing.
  std::set<std::string> keep;
  for (const auto& [tmp, final_path] : renames) {
    if (::rename(tmp.c_str(), final_path.c_str()) != 0) {
      fail("{}: rename from {} failed: {}", final_path.string(), tmp.string(),
           std::strerror(errno));
    }
    std::erase(temporaries_, tmp);
    published_.push_back(final_path);
    keep.insert(final_path.filename().string());
  }
  sync_directory(dir_);
  published_.clear();  // the new checkpoint is complete; no rollback from here on

  // 4. Stale files of an earlier save with another shard count (or an index when this
  // save has one shard).
  for (const auto& entry : fs::directory_iterator(dir_)) {
    const std::string name = entry.path().filename().string();
    if (keep.count(name) == 0 && is_checkpoint_file_name(name)) {
      fs::remove(entry.path(), ec);
      if (ec) fail("{}: cannot remove stale file: {}", entry.path().string(), ec.message());
    }
  }
  sync_directory(dir_);
}

// ---------------------------------------------------------------------------------------
// StreamingCheckpointWriter

StreamingCheckpointWriter::StreamingCheckpointWriter(fs::path dir, std::vector<TensorInfo> layout,
                                                     uint64_t max_shard_bytes,
                                                     std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), layout_(std::move(layout)), metadata_(std::move(metadata)) {
  if (max_shard_bytes == 0) fail("{}: max_shard_bytes must be positive", dir_.string());
  if (fs::exists(dir_) && !fs::is_empty(dir_))
    fail("{}: a streamed checkpoint needs an empty directory", dir_.string());
  fs::create_directories(dir_);
  // Greedy shards in layout order, offsets per shard.
  std::vector<std::vector<size_t>> members;
  uint64_t used = 0;
  std::set<std::string> names;
  for (size_t i = 0; i < layout_.size(); ++i) {
    TensorInfo& t = layout_[i];
    if (!names.insert(t.name).second) fail("{}: tensor '{}' listed twice", dir_.string(), t.name);
    const uint64_t bytes = t.numel() * dtype_size(t.dtype);
    if (members.empty() || (used > 0 && used + bytes > max_shard_bytes)) {
      members.emplace_back();
      used = 0;
    }
    t.begin = used;
    t.end = used + bytes;
    used += bytes;
    members.back().push_back(i);
    shard_of_.push_back(members.size() - 1);
  }
  written_.assign(layout_.size(), false);
  for (size_t k = 0; k < members.size(); ++k) {
    Shard sh;
    sh.path = dir_ / shard_file_name(k, members.size());
    std::vector<TensorInfo> infos;
    for (size_t i : members[k]) infos.push_back(layout_[i]);
    const std::string header = build_safetensors_header(infos, metadata_);
    sh.fd = ::open(sh.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (sh.fd < 0) fail("{}: cannot create: {}", sh.path.string(), std::strerror(errno));
    shards_.push_back(sh);
    write_all(sh.fd, header.data(), header.size(), sh.path);
    shards_.back().data_offset = header.size();
    const uint64_t total =
        header.size() + (members[k].empty() ? 0 : layout_[members[k].back()].end);
    if (::ftruncate(sh.fd, static_cast<off_t>(total)) != 0)
      fail("{}: cannot size to {} bytes: {}", sh.path.string(), total, std::strerror(errno));
  }
}

StreamingCheckpointWriter::~StreamingCheckpointWriter() {
  for (Shard& sh : shards_)
    if (sh.fd >= 0) ::close(sh.fd);
}

void StreamingCheckpointWriter::write(const std::string& name, const at::Tensor& tensor) {
  if (finished_) fail("{}: write('{}') after finish()", dir_.string(), name);
  size_t i = 0;
  while (i < layout_.size() && layout_[i].name != name) ++i;
  if (i == layout_.size()) fail("{}: tensor '{}' is not in the layout", dir_.string(), name);
  const TensorInfo& info = layout_[i];
  if (written_[i]) fail("{}: tensor '{}' written twice", dir_.string(), name);
  if (from_scalar_type(tensor.scalar_type()) != info.dtype ||
      std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end()) != info.shape) {
    fail("{}: tensor '{}' is {} [{}], the layout says {} [{}]", dir_.string(), name,
         c10::toString(tensor.scalar_type()), fmt::join(tensor.sizes(), ", "),
         dtype_name(info.dtype), fmt::join(info.shape, ", "));
  }
  at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  Shard& sh = shards_[shard_of_[i]];
  const char* p = static_cast<const char*>(t.data_ptr());
  uint64_t off = sh.data_offset + info.begin, n = info.nbytes();
  while (n > 0) {
    ssize_t w = ::pwrite(sh.fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {}", sh.path.string(), std::strerror(errno));
    }
    p += w;
    off += static_cast<uint64_t>(w);
    n -= static_cast<uint64_t>(w);
  }
  written_[i] = true;
}

void StreamingCheckpointWriter::finish() {
  if (finished_) return;
  for (size_t i = 0; i < layout_.size(); ++i)
    if (!written_[i]) fail("{}: tensor '{}' was never written", dir_.string(), layout_[i].name);
  for (Shard& sh : shards_) {
    if (::fsync(sh.fd) != 0) fail("{}: fsync failed: {}", sh.path.string(), std::strerror(errno));
    if (::close(sh.fd) != 0) fail("{}: close failed: {}", sh.path.string(), std::strerror(errno));
    sh.fd = -1;
  }
  if (shards_.size() > 1) {
    nlohmann::json weight_map = nlohmann::json::object();
    uint64_t total = 0;
    for (size_t i = 0; i < layout_.size(); ++i) {
      weight_map[layout_[i].name] = shard_file_name(shard_of_[i], shards_.size());
      total += layout_[i].nbytes();
    }
    const nlohmann::json index = {{"metadata", {{"total_size", total}}},
                                  {"weight_map", weight_map}};
    const std::string text = index.dump(2) + "\n";
    const fs::path path = dir_ / "model.safetensors.index.json";
    write_file_synced(path, [&](int fd) { write_all(fd, text.data(), text.size(), path); });
  }
  sync_directory(dir_);
  finished_ = true;
}

}  // namespace anvil::models
