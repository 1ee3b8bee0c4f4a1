#include "runtime/cuda_ipc.hpp"

#include "backends/common/error.hpp"

#ifdef ANVIL_HAVE_CUDA_RUNTIME
#include <cuda_runtime_api.h>
#endif

#include <cstring>

namespace anvil::runtime {

#ifdef ANVIL_HAVE_CUDA_RUNTIME
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    fail("CUDA IPC: {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

// cuMemGetAddressRange from the driver, through the runtime (no link to libcuda):
// CUresult (*)(CUdeviceptr* base, size_t* size, CUdeviceptr ptr).
using GetAddressRange = int (*)(unsigned long long*, size_t*, unsigned long long);

GetAddressRange address_range_fn() {
  static GetAddressRange fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    cudaError_t e =
        cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &f, 12000, cudaEnableDefault, &q);
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || f == nullptr)
      return GetAddressRange{};
    return reinterpret_cast<GetAddressRange>(f);
  }();
  return fn;
}

}  // namespace

bool cuda_ipc_available(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    if (why) {
      *why = e != cudaSuccess ? std::string("no CUDA device: ") + cudaGetErrorString(e)
                              : "no CUDA device is visible";
    }
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return true;
}

CudaIpcBuffer cuda_ipc_export(const void* ptr, size_t bytes) {
  if (std::string why; !cuda_ipc_available(&why)) fail("CUDA IPC: {}", why);
  cudaPointerAttributes attr{};
  check(cudaPointerGetAttributes(&attr, ptr), "cudaPointerGetAttributes");
  if (attr.type != cudaMemoryTypeDevice) fail("CUDA IPC: the pointer is not device memory");
  GetAddressRange range = address_range_fn();
  if (!range) fail("CUDA IPC: the driver has no cuMemGetAddressRange");
  unsigned long long base = 0;
  size_t size = 0;
  auto p = reinterpret_cast<unsigned long long>(ptr);
  if (range(&base, &size, p) != 0) fail("CUDA IPC: cuMemGetAddressRange failed");
  if (p + bytes > base + size) {
    fail("CUDA IPC: {} bytes at the pointer run past its allocation ({} bytes)", bytes, size);
  }
  int previous = 0;
  check(cudaGetDevice(&previous), "cudaGetDevice");
  check(cudaSetDevice(attr.device), "cudaSetDevice");
  cudaIpcMemHandle_t handle;
  cudaError_t e = cudaIpcGetMemHandle(&handle, reinterpret_cast<void*>(base));
  cudaSetDevice(previous);
  check(e, "cudaIpcGetMemHandle");
  CudaIpcBuffer out;
  out.handle.assign(reinterpret_cast<const char*>(&handle), sizeof(handle));
  out.offset = p - base;
  out.bytes = bytes;
  out.device = attr.device;
  return out;
}

void cuda_ipc_copy(const CudaIpcBuffer& buffer, void* dst, bool dst_is_host) {
  if (std::string why; !cuda_ipc_available(&why)) fail("CUDA IPC: {}", why);
  cudaIpcMemHandle_t handle;
  if (buffer.handle.size() != sizeof(handle)) {
    fail("CUDA IPC: a handle has {} bytes, expected {}", buffer.handle.size(), sizeof(handle));
  }
  std::memcpy(&handle, buffer.handle.data(), sizeof(handle));
  int previous = 0;
  check(cudaGetDevice(&previous), "cudaGetDevice");
  check(cudaSetDevice(buffer.device), "cudaSetDevice");
  void* base = nullptr;
  cudaError_t e = cudaIpcOpenMemHandle(&base, handle, cudaIpcMemLazyEnablePeerAccess);
  if (e == cudaSuccess) {
    const char* src = static_cast<const char*>(base) + buffer.offset;
    e = cudaMemcpy(dst, src, buffer.bytes,
                   dst_is_host ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice);
    cudaError_t closed = cudaIpcCloseMemHandle(base);
    if (e == cudaSuccess) e = closed;
  }
  cudaSetDevice(previous);
  check(e, "opening and copying an IPC buffer");
}

CudaDeviceBuffer::CudaDeviceBuffer(size_t bytes, int device) : bytes_(bytes), device_(device) {
  if (std::string why; !cuda_ipc_available(&why)) fail("CUDA: {}", why);
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaMalloc(&data_, bytes), "cudaMalloc");
}

CudaDeviceBuffer::~CudaDeviceBuffer() {
  if (data_) cudaFree(data_);
}

void CudaDeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
  if (offset + bytes > bytes_) fail("CUDA: upload past the end of a {}-byte buffer", bytes_);
  check(cudaMemcpy(static_cast<char*>(data_) + offset, host, bytes, cudaMemcpyHostToDevice),
        "cudaMemcpy to the device");
}

void CudaDeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
  if (offset + bytes > bytes_) fail("CUDA: download past the end of a {}-byte buffer", bytes_);
  check(cudaMemcpy(host, static_cast<const char*>(data_) + offset, bytes, cudaMemcpyDeviceToHost),
        "cudaMemcpy to the host");
}

#else  // no CUDA runtime in this build

namespace {
constexpr const char* kNoCuda =
    "this anvil was built without the CUDA runtime headers (cuda_runtime_api.h)";
}

bool cuda_ipc_available(std::string* why) {
  if (why) *why = kNoCuda;
  return false;
}
CudaIpcBuffer cuda_ipc_export(const void*, size_t) { fail("CUDA IPC: {}", kNoCuda); }
void cuda_ipc_copy(const CudaIpcBuffer&, void*, bool) { fail("CUDA IPC: {}", kNoCuda); }
CudaDeviceBuffer::CudaDeviceBuffer(size_t, int) { fail("CUDA: {}", kNoCuda); }
CudaDeviceBuffer::~CudaDeviceBuffer() = default;
void CudaDeviceBuffer::upload(const void*, size_t, size_t) { fail("CUDA: {}", kNoCuda); }
void CudaDeviceBuffer::download(void*, size_t, size_t) const { fail("CUDA: {}", kNoCuda); }

#endif

}  // namespace anvil::runtime
