// Inside the emulated CUDA runtime: what the emulated kernels (kernels_host.cpp) need from
// the memory and error state of runtime.cpp.
#pragma once
#include <cstddef>
#include <string>

#include "cuda_runtime_api.h"

namespace eigenlorax::cuda::emulation {

// Bytes of device memory from `p` to the end of the allocation holding it; 0 when `p` is
// not device memory.
size_t deviceBytesFrom(const void* p);
bool deviceRange(const void* p, size_t bytes);

// A kernel that could not start (a bad launch configuration): reported by the next
// cudaGetLastError, as a real launch error is. Returns false, for `return launchFailed(...)`.
bool launchFailed(cudaError_t error, const std::string& what);
// A kernel that touched memory outside the device allocations: on a GPU that is a fault
// that breaks the context, so every later call fails (cudaErrorIllegalAddress).
void fault(const std::string& what);
// A fault happened: kernels do nothing any more.
bool faulted();

}  // namespace eigenlorax::cuda::emulation

// For the emulated cuBLAS (a separate library), found with dlsym when the program exports it.
extern "C" size_t eigenlorax_emulated_device_bytes(const void* p);
