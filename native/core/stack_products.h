// Products of a large row-major matrix S (a stack of adapters' factors, or an rsvd input)
// with a thin column-major one: the randomized SVD's passes.
//   y (rows x l) = S x        x: cols x l
//   z (cols x l) = S^T q      q: rows x l
// All column-major and contiguous except S. Every output entry is computed by one thread
// in a fixed order, so the results do not depend on the thread count.
#pragma once

#include "matrix.h"

namespace eigenlorax {

void stackTimes(const ConstMapF& s, const ColMatF& x, ColMatF& y);
void stackTransposeTimes(const ConstMapF& s, const ColMatF& q, ColMatF& z);

// True when the kernels written for these shapes are compiled in (AVX-512); otherwise the
// products are Eigen's, one row block per thread.
bool stackProductsVectorised();

// Frees the packing buffers the products keep on the calling thread (see releaseRsvdScratch).
// Each thread of S^T q also keeps its block of 64 packed rows of S (64 x cols / threads
// floats: 512 KiB per thread at 4096 columns and 2 threads), reused by every later product.
void releaseStackProductsScratch();

}  // namespace eigenlorax
