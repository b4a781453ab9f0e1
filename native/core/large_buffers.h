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
