// Large buffers in transparent huge pages where the kernel offers them (THP in "madvise"
// mode, the default of many distributions): on the VMs here a fresh 4 KiB page costs about
// 8 us at its first touch, so a fresh 256 MiB buffer costs 640 ms before any work; in 2 MiB
// pages, 25 ms. Smaller buffers, and systems without THP, get ordinary 64-byte aligned memory.
#pragma once
#include <cstddef>
#include <memory>

namespace eigenlorax {

// The capacity allocateLarge gives for `bytes` (rounded up to whole huge pages when large).
size_t largeCapacity(size_t bytes);
// `largeCapacity(bytes)` bytes, 64-byte aligned (2 MiB aligned and advised for huge pages
// when large); throws std::bad_alloc. Free with freeLarge and the same `bytes`.
void* allocateLarge(size_t bytes);
void freeLarge(void* p, size_t bytes) noexcept;

// Tunes the C library's allocator for the process once (glibc; elsewhere nothing): blocks
// under 32 MiB come from its heaps and each heap keeps 16 MiB spare when it shrinks, so the
// kernels' per-call buffers (Eigen's GEMM packing, a job's argument copies) reuse memory
// already touched instead of fresh pages at about 8 us each. glibc's defaults (mmap from
// 128 KiB, a 128 KiB pad) made a training step of the demo's MLP fault hundreds of pages
// (43-52k samples/s against 84-90k tuned). EIGENLORAX_MALLOC_TUNING=0 leaves the allocator alone.
void tuneProcessAllocator();

// An owning pointer to `count` uninitialised floats from allocateLarge.
struct FreeLarge {
  size_t bytes = 0;
  void operator()(float* p) const noexcept { freeLarge(p, bytes); }
};
using LargeFloats = std::unique_ptr<float, FreeLarge>;
inline LargeFloats largeFloats(size_t count) {
  const size_t bytes = count * sizeof(float);
  return LargeFloats(static_cast<float*>(allocateLarge(bytes)), FreeLarge{bytes});
}

}  // namespace eigenlorax
