// A POSIX shared-memory object mapped into this process (RAII): how weight versions move
// between processes of one node. The creator owns the name and unlinks it on destruction;
// an opener maps it read-only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace anvil::runtime {

// Unlinks every object a process created (they are named /anvil-<pid>-<n>); a supervisor
// calls it when a child has exited, so a killed process leaves no segment behind.
// Returns how many were removed.
int remove_shared_memory_of(int pid);

class SharedMemory {
 public:
  // A fresh object of `size` bytes (named /anvil-<pid>-<n>), mapped read-write. Throws
  // anvil::Error naming the object when shm_open, ftruncate or mmap fail.
  static SharedMemory create(size_t size);
  // Maps an existing object read-only. Throws anvil::Error naming it when it is missing.
  static SharedMemory open(const std::string& name);

  SharedMemory(SharedMemory&& other) noexcept;
  SharedMemory& operator=(SharedMemory&& other) noexcept;
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  ~SharedMemory();

  const std::string& name() const { return name_; }
  size_t size() const { return size_; }
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }

 private:
  SharedMemory() = default;
  void reset();
  std::string name_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool owner_ = false;
};

}  // namespace anvil::runtime
