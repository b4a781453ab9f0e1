// One adapter's factors as the subspace stacks them (DESIGN §1, §5): raw, or the balanced
// SVD factors of dW = s B A, computed with BLAS-3 work on the thin factors (R from the
// r x r Grams in double; CholeskyQR2 or Householder for ill-conditioned factors) in a
// per-thread workspace that is reused across adapters and modules.
#pragma once
#include <Eigen/Core>

#include "matrix.h"

namespace eigenlorax {

struct FactorPair;
enum class Stacking;

// Scratch of one thread. After stackedFactors: `atF` (d_in x r, float) holds A'^T and
// `bF` (d_out x r) holds B', so dW = scale * bF * atF^T; norm = ||dW||_F. The canonical
// rank may be below r: the trailing columns are then zero.
struct CanonicalWork {
  ColMatF atF, bF;
  double scale = 1.0;
  double norm = 0.0;
  // Scratch (kept to avoid reallocating per adapter): the factors in double, for the Grams.
  ColMatD at, b, qa, qb, ra, rb, raInv, rbInv, gram, core, tmp, u, v;
  Eigen::VectorXd sigma;
  ColMatF bCol, proj, res, pq;
};

// The calling thread's workspace (one per OpenMP thread, alive as long as the thread).
CanonicalWork& canonicalWork();

// Fills w for one adapter. Single-threaded: called from inside a parallel loop over adapters.
void stackedFactors(const FactorPair& p, Stacking stacking, CanonicalWork& w);

// R (upper, diag > 0) with R^T R = X^T X, the Gram in double (from the float factor x,
// d x c column-major), and R^-1; false where X is not safely well-conditioned (cond_F(R) =
// ||R||_F ||R^-1||_F, an upper bound of cond_2(X), above 1e3): then Q = X R^-1 is
// orthonormal to about 1e-10, far below float32's rounding.
bool gramFactor(const float* x, Index d, Index c, ColMatD& r, ColMatD& rInv, ColMatD& gram);

// m (d x c) = Q (d x c') R (c' x c), c' = min(d, c): q, r overwritten. CholeskyQR2 with
// the c x c Gram in double; Householder where that is unsafe (rank-deficient or
// ill-conditioned factors, e.g. B = 0 at LoRA initialisation, or d < c).
void thinQr(const ColMatD& m, ColMatD& q, ColMatD& r, ColMatD& gram);

}  // namespace eigenlorax
