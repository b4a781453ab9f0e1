// Dense linear algebra on caller-owned buffers: randomized SVD (Halko, Martinsson and
// Tropp 2011, Algorithm 4.4 with re-orthonormalisation at every half step), thin QR
// (CholeskyQR2 with a Householder fallback), and random orthonormal completion of a basis.
#pragma once
#include <cstdint>

#include "matrix.h"

namespace eigenlorax {

enum class SvdMethod { Auto = 0, Exact = 1, Randomized = 2 };

struct RsvdOptions {
  Index rank = 0;        // k: number of singular triplets returned
  Index oversample = 10; // p: extra sketch columns
  int powerIters = 2;    // q: power iterations
  uint64_t seed = 0;
  SvdMethod method = SvdMethod::Auto;
};

struct RsvdInfo {
  bool exact = false;    // the exact path was taken
  Index sketchSize = 0;  // l = min(k + p, min(m, n)); 0 on the exact path
};

// True when `Auto` takes the exact path: the matrix is small next to the sketch.
bool rsvdPrefersExact(Index rows, Index cols, Index rank, Index oversample);

// Argument and shape checks of rsvd, without reading the matrix.
void checkRsvdArguments(ConstMatView a, const RsvdOptions& options, MatView u, MatView v);

// a (m x n) ~= u diag(s) v^T with u: m x k, s: k, v: n x k, singular values descending.
// Each u column's largest-magnitude entry is made positive (v follows), so results are
// reproducible and comparable across paths. Throws ERR_NON_FINITE on NaN/Inf input.
RsvdInfo rsvd(ConstMatView a, const RsvdOptions& options, MatView u, float* s, MatView v);
// The same for a caller that already knows maxAbsBits(a) (finite.h), e.g. from building a
// in cache-sized blocks: no pass over a for it.
RsvdInfo rsvdWithMaxAbs(ConstMatView a, const RsvdOptions& options, uint32_t maxAbsBits, MatView u, float* s, MatView v);
// rsvd of diag(rowWeights) a (a: m x n, rowWeights: m finite floats >= 0) without forming
// it: the randomized path weighs the rows of its m x l products instead (a pass over a
// saved per module of a subspace build); the exact path forms it, fl(w_i a_ij) as a
// caller would. maxAbsBits is that of the weighted matrix.
RsvdInfo rsvdRowWeighted(ConstMatView a, const float* rowWeights, const RsvdOptions& options, uint32_t maxAbsBits,
                         MatView u, float* s, MatView v);

// Frees the work memory rsvd keeps on the calling thread for its next call (up to 64 MiB;
// see subspace.h's releaseScratch).
void releaseRsvdScratch();

// out = Q of the thin QR of `in` (m x n, m >= n), signs chosen so diag(R) >= 0:
// CholeskyQR2 where safe, else Householder (as the rsvd's range finder does). `out` may
// alias `in`.
void orthonormalize(ConstMatView in, MatView out);

// CholeskyQR2 (Yamamoto et al. 2015) in place: q (m x c, m >= c) <- Q and r <- R
// (upper triangular, diag(R) > 0) with input = Q R, Grams in double. BLAS-3 only, several
// times faster than Householder on tall-skinny input, and as accurate while cond(input)
// stays below ~1e6. Returns false where it is not safe (Cholesky fails or diag(R) spans
// more than 1e6: rank-deficient or ill-conditioned input); q is then partly overwritten
// and the caller takes Householder on its own copy.
bool choleskyQr2(ColMatD& q, ColMatD& r, ColMatD& gram);

// out (m x extra): orthonormal columns, orthogonal to the columns of `basis` (m x k,
// orthonormal columns; k may be 0), drawn at random from `seed`. Needs k + extra <= m.
void completeBasis(ConstMatView basis, uint64_t seed, MatView out);

}  // namespace eigenlorax
