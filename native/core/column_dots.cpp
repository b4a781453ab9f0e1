#include "column_dots.h"

#include <algorithm>
#include <type_traits>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace eigenlorax {
namespace {

constexpr int kTile = 4;  // 4 x 4 accumulators: 16 independent FMA chains, 8 loads per 16 FMAs

#ifdef __AVX512F__

// The lanes' sum in a fixed pairwise order (GCC 12's _mm512_reduce_add_pd trips
// -Wuninitialized in its own header).
template <typename T>
T pairwiseSum(T* t, int n) {
  for (; n > 1; n /= 2)
    for (int i = 0; i < n / 2; ++i) t[i] = t[2 * i] + t[2 * i + 1];
  return t[0];
}

// Lanes of one step down d: 16 floats accumulated in float, or 8 widened to double.
template <typename T>
struct Lanes;

template <>
struct Lanes<float> {
  using Vec = __m512;
  static constexpr Index kStep = 16;
  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static Vec loadTail(const float* p, Index count) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1u), p);
  }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(Vec v) {
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    return pairwiseSum(t, 16);
  }
};

template <>
struct Lanes<double> {
  using Vec = __m512d;
  static constexpr Index kStep = 8;
  static Vec zero() { return _mm512_setzero_pd(); }
  static Vec load(const float* p) { return _mm512_cvtps_pd(_mm256_loadu_ps(p)); }
  static Vec loadTail(const float* p, Index count) {
    return _mm512_cvtps_pd(_mm256_maskz_loadu_ps(static_cast<__mmask8>((1u << count) - 1u), p));
  }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_pd(a, b, c); }
  static double sum(Vec v) {
    alignas(64) double t[8];
    _mm512_store_pd(t, v);
    return pairwiseSum(t, 8);
  }
};

// out[i][j] = a_i . b_j over d for kTile columns of each side.
template <typename T>
void dotTile(const float* const (&a)[kTile], const float* const (&b)[kTile], Index d, T (&out)[kTile][kTile]) {
  using L = Lanes<T>;
  typename L::Vec acc[kTile][kTile];
#pragma GCC unroll 16
  for (int i = 0; i < kTile; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < kTile; ++j) acc[i][j] = L::zero();
  const auto step = [&](auto load) {
    typename L::Vec bv[kTile];
#pragma GCC unroll 16
    for (int j = 0; j < kTile; ++j) bv[j] = load(b[j]);
#pragma GCC unroll 16
    for (int i = 0; i < kTile; ++i) {
      const typename L::Vec av = load(a[i]);
#pragma GCC unroll 16
      for (int j = 0; j < kTile; ++j) acc[i][j] = L::fma(av, bv[j], acc[i][j]);
    }
  };
  Index k = 0;
  for (; k + L::kStep <= d; k += L::kStep) step([k](const float* p) { return L::load(p + k); });
  if (k < d) step([k, d](const float* p) { return L::loadTail(p + k, d - k); });
#pragma GCC unroll 16
  for (int i = 0; i < kTile; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < kTile; ++j) out[i][j] = L::sum(acc[i][j]);
}

// c (m x n) = a^T b by 4 x 4 tiles; a tile short of columns repeats its last one and drops
// the copies' results. With `symmetric` (a == b) only tiles on or below the diagonal are
// computed and mirrored: a_i . a_j and a_j . a_i are the same products, so both agree.
template <typename T>
void tiledDots(const float* a, Index lda, Index m, const float* b, Index ldb, Index n, Index d, T* c, Index ldc,
               bool symmetric) {
  for (Index i0 = 0; i0 < m; i0 += kTile) {
    const Index mi = std::min<Index>(kTile, m - i0);
    const float* as[kTile];
    for (int i = 0; i < kTile; ++i) as[i] = a + std::min<Index>(i0 + i, m - 1) * lda;
    for (Index j0 = 0; j0 < (symmetric ? i0 + 1 : n); j0 += kTile) {
      const Index nj = std::min<Index>(kTile, n - j0);
      const float* bs[kTile];
      for (int j = 0; j < kTile; ++j) bs[j] = b + std::min<Index>(j0 + j, n - 1) * ldb;
      T out[kTile][kTile];
      dotTile<T>(as, bs, d, out);
      for (Index i = 0; i < mi; ++i)
        for (Index j = 0; j < nj; ++j) {
          c[(i0 + i) + (j0 + j) * ldc] = out[i][j];
          if (symmetric) c[(j0 + j) + (i0 + i) * ldc] = out[i][j];
        }
    }
  }
}

#else

// Without AVX-512: Eigen's products (the same bits for the same call shape).
template <typename T>
void tiledDots(const float* a, Index lda, Index m, const float* b, Index ldb, Index n, Index d, T* c, Index ldc,
               bool symmetric) {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using In = Eigen::Map<const ColMatF, 0, Eigen::OuterStride<>>;
  Eigen::Map<Mat, 0, Eigen::OuterStride<>> out(c, m, n, Eigen::OuterStride<>(ldc));
  const In am(a, d, m, Eigen::OuterStride<>(lda));
  if (symmetric) {
    const Mat x = am.template cast<T>();
    out.noalias() = x.transpose() * x;
    out.template triangularView<Eigen::StrictlyUpper>() = out.transpose();
    return;
  }
  const In bm(b, d, n, Eigen::OuterStride<>(ldb));
  if constexpr (std::is_same_v<T, float>) {
    out.noalias() = am.transpose() * bm;
  } else {
    out.noalias() = am.template cast<T>().transpose() * bm.template cast<T>();
  }
}

#endif  // __AVX512F__

}  // namespace

void columnDots(const float* a, Index lda, Index m, const float* b, Index ldb, Index n, Index d, float* c, Index ldc) {
  tiledDots<float>(a, lda, m, b, ldb, n, d, c, ldc, false);
}

void columnGram(const float* x, Index ldx, Index n, Index d, float* g, Index ldg) {
  tiledDots<float>(x, ldx, n, x, ldx, n, d, g, ldg, true);
}

void columnGram(const float* x, Index ldx, Index n, Index d, double* g, Index ldg) {
  tiledDots<double>(x, ldx, n, x, ldx, n, d, g, ldg, true);
}

}  // namespace eigenlorax
