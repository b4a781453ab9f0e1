#include "large_buffers.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#ifdef __linux__
#include <sys/mman.h>
#endif
#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace eigenlorax {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kLargeBytes = size_t{8} << 20;  // at most 25% rounding

bool large(size_t bytes) { return bytes >= kLargeBytes; }

}  // namespace

size_t largeCapacity(size_t bytes) { return large(bytes) ? (bytes + kHugePage - 1) / kHugePage * kHugePage : bytes; }

void* allocateLarge(size_t bytes) {
  if (!large(bytes)) return ::operator new[](bytes > 0 ? bytes : 1, std::align_val_t{64});
  const size_t capacity = largeCapacity(bytes);
  void* p = ::operator new[](capacity, std::align_val_t{kHugePage});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, capacity, MADV_HUGEPAGE);  // advice only: without THP the pages stay small
#endif
  return p;
}

void tuneProcessAllocator() {
  static std::once_flag once;
  std::call_once(once, [] {
#ifdef __GLIBC__
    const char* setting = std::getenv("EIGENLORAX_MALLOC_TUNING");
    if (setting != nullptr && std::strcmp(setting, "0") == 0) return;
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TOP_PAD, 16 << 20);
#endif
  });
}

void freeLarge(void* p, size_t bytes) noexcept {
  if (p == nullptr) return;
  if (large(bytes)) {
    ::operator delete[](p, std::align_val_t{kHugePage});
  } else {
    ::operator delete[](p, std::align_val_t{64});
  }
}

}  // namespace eigenlorax
