// Checks native/core/column_dots against a float64 reference on fresh seeded inputs: column
// counts below, at and past the 4 x 4 tile, lengths d that are not whole vectors (16 floats,
// 8 doubles), padded leading dimensions; that Grams are exactly symmetric; and, for the
// AVX-512 kernels, that an entry's bits do not depend on the call it came from (the same
// dot product computed alone, inside a larger call, and inside a Gram).
// Run by test/native-checks.test.ts. Usage: eigenlorax_check_column_dots --seed N
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
#include "core/column_dots.h"

using namespace eigenlorax;

namespace {

int failures = 0, checks = 0;

void check(bool ok, const std::string& what) {
  ++checks;
  if (ok) return;
  ++failures;
  std::printf("FAIL %s\n", what.c_str());
}

bool sameBits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

int main(int argc, char** argv) {
  std::mt19937_64 rng(seedArgument(argc, argv));
  std::normal_distribution<float> normal;
#ifdef __AVX512F__
  const bool bitChecks = true;
#else
  const bool bitChecks = false;
#endif
  double worst = 0;
  for (Index d : {1, 7, 8, 15, 16, 17, 100, 4096, 4109})
    for (Index m : {1, 3, 4, 5, 16, 33})
      for (Index n : {1, 2, 4, 7, 32}) {
        const Index pad = (m + n + d) % 3;  // leading dimensions d, d + 1, d + 2
        const Index lda = d + pad, ldb = d + (pad + 1) % 3;
        std::vector<float> a(static_cast<size_t>(lda * m)), b(static_cast<size_t>(ldb * n));
        for (float& v : a) v = normal(rng);
        for (float& v : b) v = normal(rng);
        std::vector<float> c(static_cast<size_t>((m + 1) * n)), g(static_cast<size_t>(m * m));
        std::vector<double> gd(static_cast<size_t>(m * m));
        columnDots(a.data(), lda, m, b.data(), ldb, n, d, c.data(), m + 1);
        columnGram(a.data(), lda, m, d, g.data(), m);
        columnGram(a.data(), lda, m, d, gd.data(), m);
        const std::string shape = "d " + std::to_string(d) + " m " + std::to_string(m) + " n " + std::to_string(n);
        // Float sums of d products in 16 lanes: error at most (d / 16 + 16) u sum |a_k b_k|.
        const double floatBound = (static_cast<double>(d) / 16 + 16) * std::ldexp(1.0, -24);
        for (Index i = 0; i < m; ++i) {
          for (Index j = 0; j < n; ++j) {
            double exact = 0, scale = 0;
            for (Index k = 0; k < d; ++k) {
              exact += static_cast<double>(a[i * lda + k]) * b[j * ldb + k];
              scale += std::abs(static_cast<double>(a[i * lda + k]) * b[j * ldb + k]);
            }
            const double err = std::abs(c[i + j * (m + 1)] - exact) / scale;
            worst = std::max(worst, err / floatBound);
            check(err <= floatBound, shape + ": dots(" + std::to_string(i) + ", " + std::to_string(j) + ") off by " +
                                         std::to_string(err) + " of sum |a b|");
            if (bitChecks) {
              float alone = 0;
              columnDots(a.data() + i * lda, lda, 1, b.data() + j * ldb, ldb, 1, d, &alone, 1);
              check(sameBits(alone, c[i + j * (m + 1)]), shape + ": dots(" + std::to_string(i) + ", " +
                                                               std::to_string(j) + ") differs from the same dot alone");
            }
          }
          for (Index j = 0; j < m; ++j) {
            double exact = 0, scale = 0;
            for (Index k = 0; k < d; ++k) {
              exact += static_cast<double>(a[i * lda + k]) * a[j * lda + k];
              scale += std::abs(static_cast<double>(a[i * lda + k]) * a[j * lda + k]);
            }
            const std::string entry = shape + ": gram(" + std::to_string(i) + ", " + std::to_string(j) + ")";
            check(std::abs(g[i + j * m] - exact) <= floatBound * scale, entry + " (float) off");
            check(std::abs(gd[i + j * m] - exact) <= 1e-13 * scale, entry + " (double) off");
            check(sameBits(g[i + j * m], g[j + i * m]) && gd[i + j * m] == gd[j + i * m], entry + " not symmetric");
            if (bitChecks) {
              float alone = 0;
              columnDots(a.data() + i * lda, lda, 1, a.data() + j * lda, lda, 1, d, &alone, 1);
              check(sameBits(alone, g[i + j * m]), entry + " differs from the same dot alone");
            }
          }
        }
      }
  std::printf("kernels: %s\n", bitChecks ? "AVX-512" : "Eigen");
  std::printf("summary: %d of %d checks failed (worst float error %.3f of its bound)\n", failures, checks, worst);
  return failures == 0 ? 0 : 1;
}
