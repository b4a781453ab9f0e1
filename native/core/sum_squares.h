// The sum of squares of a float array in double, in a fixed order that the compiler
// vectorises: 32 partial sums, lane j taking entries j, j + 32, ..., added pairwise at the
// end. Eigen's x.cast<double>().squaredNorm() ran as one chain of scalar FMAs, each waiting
// for the last (about 7% of a 7B module's build). The bits depend only on the values and
// their count, not on the thread or where the array lies.
#pragma once
#include <cstddef>

namespace eigenlorax {

inline double sumOfSquares(const float* data, size_t count) {
  constexpr size_t kLanes = 32;
  double lane[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= count; i += kLanes)
    for (size_t j = 0; j < kLanes; ++j) {
      const double v = data[i + j];
      lane[j] += v * v;
    }
  for (size_t j = 0; i + j < count; ++j) {
    const double v = data[i + j];
    lane[j] += v * v;
  }
  for (size_t width = kLanes / 2; width > 0; width /= 2)
    for (size_t j = 0; j < width; ++j) lane[j] += lane[j + width];
  return lane[0];
}

}  // namespace eigenlorax
