// Thread count for the kernels. The count is per call: it sets OpenMP's nthreads-var of
// the calling (worker) thread only, which Eigen's GEMM also reads, so two Node
// environments with different settings do not interfere.
#pragma once
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

}  // namespace eigenlorax
