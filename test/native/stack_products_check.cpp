// Checks native/core/stack_products against a float64 reference on fresh seeded inputs:
// every shape class the kernels special-case (rows not a multiple of the 8-row tile,
// columns not a multiple of 16 or 64, thin widths not a multiple of 3 or 6, one row, one
// column), at buffer alignments 0, 1, 4 and 15 floats past a 64-byte line, with 1 and 2
// threads; and, for the AVX-512 kernels, that the bits do not depend on the alignment or
// the thread count.
// Run by test/native-checks.test.ts. Usage: eigenlorax_check_stack_products --seed N
// Prints one line per failure and a summary; exit 1 if anything failed.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check_args.h"
#include "core/stack_products.h"
#include "core/threads.h"

using namespace eigenlorax;

int main(int argc, char** argv) {
  const uint64_t seed = seedArgument(argc, argv);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const auto fill = [&](float* data, Index count) {
    for (Index i = 0; i < count; ++i) data[i] = normal(rng);
  };
  int failures = 0, checks = 0;
  double worst = 0;
  for (Index rows : {1, 3, 8, 17, 64, 130})
    for (Index cols : {1, 5, 16, 31, 64, 100, 4100, 8192})
      for (Index l : {1, 2, 3, 7, 13, 42, 74, 90}) {
        RowMatF s(rows, cols);
        ColMatF x(cols, l), q(rows, l);
        fill(s.data(), s.size());
        fill(x.data(), x.size());
        fill(q.data(), q.size());
        const double sNorm = s.cast<double>().norm(), xNorm = x.cast<double>().norm(), qNorm = q.cast<double>().norm();
        const Eigen::MatrixXd yRef = s.cast<double>() * x.cast<double>();
        const Eigen::MatrixXd zRef = s.cast<double>().transpose() * q.cast<double>();
        ColMatF yFirst, zFirst;
        for (int offset : {0, 1, 4, 15})
          for (int threads : {1, 2}) {
            useThreads(threads);
            std::vector<float> buffer(static_cast<size_t>(rows * cols + 32));
            const auto misalignment = (reinterpret_cast<uintptr_t>(buffer.data()) % 64) / 4;
            float* at = buffer.data() + (16 - misalignment) % 16 + offset;
            std::memcpy(at, s.data(), sizeof(float) * static_cast<size_t>(rows * cols));
            const ConstMapF view(at, rows, cols);
            ColMatF y, z;
            stackTimes(view, x, y);
            stackTransposeTimes(view, q, z);
            // Error against the norm-wise scale ||S|| ||x|| (a float32 sum of n products errs
            // by about eps sqrt(n) of it, 5e-6 at n = 8192, typically far less): the entry-wise
            // relative error of a sum that cancels can be anything.
            const double ey = (y.cast<double>() - yRef).norm() / (sNorm * xNorm);
            const double ez = (z.cast<double>() - zRef).norm() / (sNorm * qNorm);
            worst = std::max({worst, ey, ez});
            const bool close = ey <= 1e-6 && ez <= 1e-6;
            // Bits are compared for the AVX-512 kernels only: Eigen's GEMM (the fallback)
            // blocks by the thread's share of S and by alignment.
            bool same = true;
            if (yFirst.size() == 0) {
              yFirst = y;
              zFirst = z;
            } else if (stackProductsVectorised()) {
              same = std::memcmp(y.data(), yFirst.data(), sizeof(float) * y.size()) == 0 &&
                     std::memcmp(z.data(), zFirst.data(), sizeof(float) * z.size()) == 0;
            }
            ++checks;
            if (!close || !same) {
              ++failures;
              std::printf("FAIL rows %ld cols %ld l %ld offset %d threads %d: error S x %.3g, S^T q %.3g%s\n",
                          static_cast<long>(rows), static_cast<long>(cols), static_cast<long>(l), offset, threads, ey,
                          ez, same ? "" : "; bits differ from offset 0, 1 thread");
            }
          }
      }
  std::printf("kernels %s\n", stackProductsVectorised() ? "avx512" : "eigen");
  std::printf("summary: %d of %d checks failed; worst error %.3g of ||S|| ||x|| (seed %llu)\n", failures, checks, worst,
              static_cast<unsigned long long>(seed));
  return failures == 0 ? 0 : 1;
}
