// Same-node GPU weight sync by CUDA IPC: the sender exports the device allocation that
// holds a tensor as an IPC handle (64 bytes, small enough for a chunk header), a process
// on the same node opens it and copies device to device; no byte crosses the host. Built
// only when the CUDA runtime headers are found (ANVIL_HAVE_CUDA_RUNTIME, from the torch
// wheel's nvidia packages or a toolkit); otherwise, and on a machine without a CUDA device,
// cuda_ipc_available() says why and every other call fails with that reason. Neither CUDA
// nor LibTorch appears in this header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace anvil::runtime {

// A device buffer as another process of the node can find it.
struct CudaIpcBuffer {
  std::string handle;   // cudaIpcMemHandle_t of the allocation holding the buffer (raw bytes)
  uint64_t offset = 0;  // the buffer's offset inside that allocation
  uint64_t bytes = 0;
  int device = 0;  // CUDA device ordinal (as the exporting process numbers it)
};

// Whether this build and machine can use CUDA IPC; when not, `why` (if given) names what
// is missing: the CUDA runtime in the build, or a visible device.
bool cuda_ipc_available(std::string* why = nullptr);

// Exports `bytes` at device pointer `ptr`, which may lie anywhere inside a cudaMalloc'd
// allocation (PyTorch's caching allocator hands out such pointers). Throws anvil::Error
// naming the CUDA error.
CudaIpcBuffer cuda_ipc_export(const void* ptr, size_t bytes);

// In another process of the same node: opens `buffer`, copies its bytes to `dst` (device
// memory, or host memory when `dst_is_host`), waits for the copy and closes the mapping.
void cuda_ipc_copy(const CudaIpcBuffer& buffer, void* dst, bool dst_is_host = false);

// A plain device allocation (cudaMalloc / cudaFree) with host copies in and out.
class CudaDeviceBuffer {
 public:
  CudaDeviceBuffer(size_t bytes, int device);
  ~CudaDeviceBuffer();
  CudaDeviceBuffer(const CudaDeviceBuffer&) = delete;
  CudaDeviceBuffer& operator=(const CudaDeviceBuffer&) = delete;
  void* data() const { return data_; }
  size_t size() const { return bytes_; }
  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
};

}  // namespace anvil::runtime
