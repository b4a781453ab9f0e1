// The emulated CUDA runtime: one device, "Emulated GPU (host memory)", whose memory is
// host memory. Every call completes before it returns (each stream is trivially in
// order), and the checks are stricter than a GPU's where a GPU would fail later or
// silently: a copy or memset must stay inside one allocation and match its direction,
// and new allocations are filled with NaN bytes so that reading memory nobody wrote
// shows in the results.
//
// EIGENLORAX_EMULATED_DEVICES=0 makes it a machine without a device (cudaErrorNoDevice).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "emulation.h"

struct CUstream_st {
  unsigned flags = 0;
};
struct CUevent_st {
  bool recorded = false;
  std::chrono::steady_clock::time_point at;
};

namespace eigenlorax::cuda::emulation {
namespace {

constexpr size_t kTotalBytes = size_t{8} << 30;
constexpr size_t kAlignment = 256;  // what cudaMalloc guarantees
constexpr unsigned char kPoison = 0xff;  // a NaN in every f32 and f64

struct Runtime {
  std::mutex mutex;
  std::map<uintptr_t, size_t> allocations;  // base -> bytes asked for
  size_t allocated = 0;
  std::set<cudaStream_t> streams;
  std::set<cudaEvent_t> events;
  cudaError_t sticky = cudaSuccess;
};

Runtime& runtime() {
  static Runtime r;
  return r;
}

thread_local cudaError_t lastError = cudaSuccess;  // per host thread, as in the real runtime

// As in the real runtime, a failed call also becomes the thread's last error.
cudaError_t fail(cudaError_t error) {
  lastError = error;
  return error;
}

// A call that a GPU might accept and then misbehave on: refused, and said why.
cudaError_t refuse(cudaError_t error, const std::string& what) {
  std::fprintf(stderr, "emulated CUDA: %s\n", what.c_str());
  return fail(error);
}

cudaError_t stickyError() {
  std::lock_guard<std::mutex> lock(runtime().mutex);
  return runtime().sticky;
}

int deviceCount() {
  const char* count = std::getenv("EIGENLORAX_EMULATED_DEVICES");
  return count != nullptr && std::strcmp(count, "0") == 0 ? 0 : 1;
}

size_t bytesFromLocked(const Runtime& r, const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  auto it = r.allocations.upper_bound(address);
  if (it == r.allocations.begin()) return 0;
  --it;
  return address < it->first + it->second ? it->first + it->second - address : 0;
}

bool validStream(cudaStream_t stream) {
  if (stream == nullptr) return true;  // the legacy default stream
  std::lock_guard<std::mutex> lock(runtime().mutex);
  return runtime().streams.count(stream) != 0;
}

std::string address(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

}  // namespace

size_t deviceBytesFrom(const void* p) {
  std::lock_guard<std::mutex> lock(runtime().mutex);
  return bytesFromLocked(runtime(), p);
}

bool deviceRange(const void* p, size_t bytes) { return bytes == 0 || deviceBytesFrom(p) >= bytes; }

bool launchFailed(cudaError_t error, const std::string& what) {
  refuse(error, "kernel launch refused: " + what);
  return false;
}

void fault(const std::string& what) {
  std::fprintf(stderr, "emulated CUDA: illegal memory access: %s\n", what.c_str());
  std::lock_guard<std::mutex> lock(runtime().mutex);
  runtime().sticky = cudaErrorIllegalAddress;
}

bool faulted() { return stickyError() != cudaSuccess; }

}  // namespace eigenlorax::cuda::emulation

namespace emu = eigenlorax::cuda::emulation;

extern "C" size_t eigenlorax_emulated_device_bytes(const void* p) { return emu::deviceBytesFrom(p); }

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t sticky = emu::stickyError();
  const cudaError_t last = emu::lastError;
  emu::lastError = cudaSuccess;
  return sticky != cudaSuccess ? sticky : last;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
  }
  return "unrecognized error code";
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
  }
  return "unrecognized error code";
}

cudaError_t cudaRuntimeGetVersion(int* runtimeVersion) {
  if (runtimeVersion == nullptr) return emu::fail(cudaErrorInvalidValue);
  *runtimeVersion = 13000;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* driverVersion) {
  if (driverVersion == nullptr) return emu::fail(cudaErrorInvalidValue);
  *driverVersion = 13000;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return emu::fail(cudaErrorInvalidValue);
  *count = emu::deviceCount();
  return *count == 0 ? emu::fail(cudaErrorNoDevice) : cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return emu::fail(cudaErrorInvalidValue);
  if (device < 0 || device >= emu::deviceCount()) return emu::fail(cudaErrorInvalidDevice);
  *prop = {};
  std::snprintf(prop->name, sizeof prop->name, "Emulated GPU (host memory)");
  prop->totalGlobalMem = emu::kTotalBytes;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  if (emu::deviceCount() == 0) return emu::fail(cudaErrorNoDevice);
  return device == 0 ? cudaSuccess : emu::fail(cudaErrorInvalidDevice);
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  if (free == nullptr || total == nullptr) return emu::fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(emu::runtime().mutex);
  *total = emu::kTotalBytes;
  *free = emu::kTotalBytes - emu::runtime().allocated;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** devPtr, size_t size) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  if (devPtr == nullptr) return emu::fail(cudaErrorInvalidValue);
  *devPtr = nullptr;
  if (size == 0) return cudaSuccess;
  emu::Runtime& r = emu::runtime();
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    if (size > emu::kTotalBytes - r.allocated) return emu::fail(cudaErrorMemoryAllocation);
  }
  const size_t rounded = (size + emu::kAlignment - 1) / emu::kAlignment * emu::kAlignment;
  void* p = std::aligned_alloc(emu::kAlignment, rounded);
  if (p == nullptr) return emu::fail(cudaErrorMemoryAllocation);
  std::memset(p, emu::kPoison, rounded);
  std::lock_guard<std::mutex> lock(r.mutex);
  r.allocations[reinterpret_cast<uintptr_t>(p)] = size;
  r.allocated += size;
  *devPtr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* devPtr) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  if (devPtr == nullptr) return cudaSuccess;
  emu::Runtime& r = emu::runtime();
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    const auto it = r.allocations.find(reinterpret_cast<uintptr_t>(devPtr));
    if (it != r.allocations.end()) {
      r.allocated -= it->second;
      r.allocations.erase(it);
      std::free(devPtr);
      return cudaSuccess;
    }
  }
  return emu::refuse(cudaErrorInvalidValue, "cudaFree of " + emu::address(devPtr) + ", not the start of an allocation");
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  if (!emu::validStream(stream)) return emu::fail(cudaErrorInvalidResourceHandle);
  if (count == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return emu::fail(cudaErrorInvalidValue);
  if (kind == cudaMemcpyDefault) {
    const bool fromDevice = emu::deviceBytesFrom(src) != 0, toDevice = emu::deviceBytesFrom(dst) != 0;
    kind = fromDevice ? (toDevice ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                      : (toDevice ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost);
  }
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDeviceToDevice) return emu::fail(cudaErrorInvalidValue);
  const bool srcOnDevice = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  const bool dstOnDevice = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const auto sideOk = [count](const void* p, bool onDevice) {
    return onDevice ? emu::deviceRange(p, count) : emu::deviceBytesFrom(p) == 0;
  };
  if (!sideOk(src, srcOnDevice) || !sideOk(dst, dstOnDevice)) {
    return emu::refuse(cudaErrorInvalidValue, "cudaMemcpyAsync (kind " + std::to_string(kind) + ") of " +
                                                  std::to_string(count) + " bytes from " + emu::address(src) + " to " +
                                                  emu::address(dst) +
                                                  ": a side is not what the kind says, or leaves its allocation");
  }
  std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t stream) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  if (!emu::validStream(stream)) return emu::fail(cudaErrorInvalidResourceHandle);
  if (count == 0) return cudaSuccess;
  if (!emu::deviceRange(devPtr, count)) {
    return emu::refuse(cudaErrorInvalidValue, "cudaMemsetAsync of " + std::to_string(count) + " bytes at " +
                                                  emu::address(devPtr) + ": not inside one device allocation");
  }
  std::memset(devPtr, value, count);
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* pStream, unsigned int flags) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  if (pStream == nullptr || (flags & ~unsigned{cudaStreamNonBlocking}) != 0) return emu::fail(cudaErrorInvalidValue);
  auto* stream = new CUstream_st{flags};
  std::lock_guard<std::mutex> lock(emu::runtime().mutex);
  emu::runtime().streams.insert(stream);
  *pStream = stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  return emu::validStream(stream) ? cudaSuccess : emu::fail(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  if (event == nullptr) return emu::fail(cudaErrorInvalidValue);
  auto* e = new CUevent_st;
  std::lock_guard<std::mutex> lock(emu::runtime().mutex);
  emu::runtime().events.insert(e);
  *event = e;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  if (!emu::validStream(stream)) return emu::fail(cudaErrorInvalidResourceHandle);
  std::lock_guard<std::mutex> lock(emu::runtime().mutex);
  if (emu::runtime().events.count(event) == 0) return emu::fail(cudaErrorInvalidResourceHandle);
  // The work before it on the stream is done already: the event completes now.
  event->recorded = true;
  event->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  std::lock_guard<std::mutex> lock(emu::runtime().mutex);
  return emu::runtime().events.count(event) != 0 ? cudaSuccess : emu::fail(cudaErrorInvalidResourceHandle);
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (const cudaError_t sticky = emu::stickyError(); sticky != cudaSuccess) return emu::fail(sticky);
  if (ms == nullptr) return emu::fail(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(emu::runtime().mutex);
  const auto& events = emu::runtime().events;
  if (events.count(start) == 0 || events.count(end) == 0 || !start->recorded || !end->recorded) {
    return emu::fail(cudaErrorInvalidResourceHandle);
  }
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  std::lock_guard<std::mutex> lock(emu::runtime().mutex);
  if (emu::runtime().events.erase(event) == 0) return emu::fail(cudaErrorInvalidResourceHandle);
  delete event;
  return cudaSuccess;
}

}  // extern "C"
