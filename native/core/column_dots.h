// Dot products between the columns of thin column-major blocks over a long shared dimension
// (d = 4096 and up, a few dozen columns): the Grams and loadings of the subspace build. At
// these shapes Eigen's GEMM spends its time packing (ran at 60-90 GFLOP/s on one core here);
// a register tile of 4 x 4 columns streamed down d runs at the FMA rate.
//   c (m x n) = a^T b    a: d x m, b: d x n
// With AVX-512, every entry is the same sum in the same order wherever it lies in c: its bits
// do not depend on the shape of the call (without, Eigen's products: the same bits for the
// same call). Single-threaded: callers run one per adapter on each thread.
#pragma once

#include "matrix.h"

namespace eigenlorax {

// c(i, j) = sum_k a(k, i) b(k, j); column-major, leading dimensions lda, ldb, ldc.
void columnDots(const float* a, Index lda, Index m, const float* b, Index ldb, Index n, Index d, float* c, Index ldc);

// g = x^T x (n x n, both triangles, exactly symmetric), accumulated in float or in double.
void columnGram(const float* x, Index ldx, Index n, Index d, float* g, Index ldg);
void columnGram(const float* x, Index ldx, Index n, Index d, double* g, Index ldg);

}  // namespace eigenlorax
