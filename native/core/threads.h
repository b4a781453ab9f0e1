// Thread count for the kernels. The count is per call: it sets OpenMP's nthreads-var of
// the calling (worker) thread only, which Eigen's GEMM also reads, so two Node
// environments with different settings do not interfere.
#pragma once
#include <Eigen/Core>
#include <algorithm>
#include <exception>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace eigenlorax {

inline int hardwareThreads() {
#ifdef _OPENMP
  return omp_get_num_procs();
#else
  return 1;
#endif
}

inline bool haveOpenMP() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

inline void useThreads(int threads) {
#ifdef _OPENMP
  omp_set_num_threads(threads > 0 ? threads : 1);
#else
  (void)threads;
#endif
}

inline int currentThreads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Splits [0, units) into one contiguous range per thread (at least minPerThread units
// each) and runs body(begin, end) on each: no barriers between the threads. An exception
// (bad_alloc) is rethrown after the region, never out of it.
template <typename Body>
void perThreadRanges(Eigen::Index units, Eigen::Index minPerThread, Body body) {
  using Eigen::Index;
  const int threads =
      static_cast<int>(std::min<Index>(currentThreads(), std::max<Index>(1, units / std::max<Index>(1, minPerThread))));
  std::exception_ptr error;
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const Index t = omp_get_thread_num(), count = omp_get_num_threads();
#else
    const Index t = 0, count = 1;
#endif
    const Index begin = units * t / count, end = units * (t + 1) / count;
    try {
      if (end > begin) body(begin, end);
    } catch (...) {
#pragma omp critical(eigenlorax_per_thread_ranges_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace eigenlorax
