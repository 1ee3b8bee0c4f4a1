#include "runtime/shared_memory.hpp"

#include "backends/common/error.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace anvil::runtime {

int remove_shared_memory_of(int pid) {
  const std::string prefix = "anvil-" + std::to_string(pid) + "-";
  int removed = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", ec)) {
    std::string name = entry.path().filename().string();
    if (name.compare(0, prefix.size(), prefix) == 0 && ::shm_unlink(("/" + name).c_str()) == 0) {
      ++removed;
    }
  }
  return removed;
}

SharedMemory SharedMemory::create(size_t size) {
  static std::atomic<uint64_t> counter{0};
  SharedMemory m;
  m.name_ = "/anvil-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  int fd = ::shm_open(m.name_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0) fail("shared memory {}: shm_open: {}", m.name_, std::strerror(errno));
  m.owner_ = true;
  // Map at least one byte so an empty version still has a valid mapping.
  m.size_ = size;
  size_t map_size = size == 0 ? 1 : size;
  if (::ftruncate(fd, static_cast<off_t>(map_size)) != 0) {
    int err = errno;
    ::close(fd);
    ::shm_unlink(m.name_.c_str());
    fail("shared memory {}: ftruncate to {} bytes: {}", m.name_, size, std::strerror(err));
  }
  void* p = ::mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) {
    ::shm_unlink(m.name_.c_str());
    fail("shared memory {}: mmap of {} bytes: {}", m.name_, size, std::strerror(err));
  }
  m.data_ = static_cast<uint8_t*>(p);
  return m;
}

SharedMemory SharedMemory::open(const std::string& name) {
  if (name.empty() || name[0] != '/' || name.find('/', 1) != std::string::npos ||
      name.size() > 200) {
    fail("shared memory name '{}' is not of the form /NAME", name);
  }
  SharedMemory m;
  m.name_ = name;
  int fd = ::shm_open(name.c_str(), O_RDONLY, 0);
  if (fd < 0) fail("shared memory {}: cannot open: {}", name, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("shared memory {}: fstat: {}", name, std::strerror(err));
  }
  m.size_ = static_cast<size_t>(st.st_size);
  if (m.size_ == 0) {
    ::close(fd);
    return m;
  }
  void* p = ::mmap(nullptr, m.size_, PROT_READ, MAP_SHARED, fd, 0);
  int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) fail("shared memory {}: mmap: {}", name, std::strerror(err));
  m.data_ = static_cast<uint8_t*>(p);
  return m;
}

SharedMemory::SharedMemory(SharedMemory&& o) noexcept
    : name_(std::move(o.name_)), data_(o.data_), size_(o.size_), owner_(o.owner_) {
  o.data_ = nullptr;
  o.size_ = 0;
  o.owner_ = false;
}

SharedMemory& SharedMemory::operator=(SharedMemory&& o) noexcept {
  if (this != &o) {
    reset();
    name_ = std::move(o.name_);
    data_ = o.data_;
    size_ = o.size_;
    owner_ = o.owner_;
    o.data_ = nullptr;
    o.size_ = 0;
    o.owner_ = false;
  }
  return *this;
}

SharedMemory::~SharedMemory() { reset(); }

void SharedMemory::reset() {
  if (data_ != nullptr) ::munmap(data_, size_ == 0 ? 1 : size_);
  if (owner_) ::shm_unlink(name_.c_str());
  data_ = nullptr;
  owner_ = false;
}

}  // namespace anvil::runtime
