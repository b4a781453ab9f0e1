// Held-out bases of one module for analyze (issue 11): the stack of every side is formed
// once (the build's stacking and weighting), and from it the whole stack's top singular
// values (the explained-variance curve) and, for every fold f, the top components of the
// stack without fold f's adapters.
//
// Small stacks (where rsvd takes its exact path) get exactly what a build of those adapters
// gets: rsvd of the same rows with the same options. Larger ones get a Nystrom
// approximation of the fold's Gram G_f = S_{-f}^T S_{-f} with the test matrix
// Omega = [Q0, orth(G Q0)] (Q0: the whole stack's basis plus random directions, max(K,
// curve / 2) + oversample columns; G = S^T S):
// G_f ~ Y_f M_f^+ Y_f^T with Y_f = G_f Omega = S^T T - S_f^T T_f, M_f = Omega^T G_f Omega =
// T^T T - T_f^T T_f and T = S Omega. Y_f's columns lie in the row space of S_{-f}: a held-out
// adapter's own directions can never enter its fold's basis. Four passes over the stack
// (T and Y, in two halves) and the folds' own rows serve every fold; the curve takes one more
// block, orth(G^2 Q0), for the whole stack (two more passes).
#pragma once
#include <cstdint>
#include <vector>

#include "subspace.h"

namespace eigenlorax {

struct FoldBasesOptions {
  Stacking stacking = Stacking::Canonical;
  Weighting weighting = Weighting::Equal;
  Index oversample = 10;
  int powerIters = 2;
  uint64_t seed = 0;            // side A uses seed, side B seed + 1 (as the build)
  Index componentsA = 1;        // wanted per fold basis, clamped to min(d, the fold's rank)
  Index componentsB = 1;
  Index curveA = 1;             // wanted singular values of the whole stack, clamped likewise
  Index curveB = 1;
  int32_t foldCount = 1;
  // Also project every adapter on its own fold's basis (loadings, norms, errors as
  // projectModule gives them, overlaps as factorOverlaps), from the factors the stacks
  // were formed from: no second read or canonicalisation.
  bool projectHeldOut = false;
};

// Adapter i projected on the basis of fold folds[i] (when projectHeldOut and that fold has
// a basis): alpha K_A,f x r_i and beta K_B,f x r_i, row-major.
struct HeldOutProjection {
  bool present = false;
  RowMatF alpha, beta;
  double norm = 0, error = 0, overlapA = 0, overlapB = 0;
};

// One side of one basis: components (d x k, row-major), singular values, energy.
struct SideBasis {
  Index k = 0;
  std::vector<float> components;
  std::vector<float> singular;
  double energy = 0;
  bool exact = false;  // rsvd's exact path (the same as a build of these rows)
};

struct FoldBases {
  SideBasis curveA, curveB;       // no components
  std::vector<bool> present;      // per fold: some adapter outside the fold has the module
  std::vector<SideBasis> foldA, foldB;
  std::vector<HeldOutProjection> heldOut;  // per adapter, when projectHeldOut
};

// Shapes of the pairs (as buildModuleSubspace), folds[i] in [0, foldCount), warm bases
// d x c (c >= 1) or empty.
void checkFoldBases(const std::vector<FactorPair>& adapters, const int32_t* folds, const FoldBasesOptions& options,
                    ConstMatView warmA, ConstMatView warmB);
FoldBases foldBases(const std::vector<FactorPair>& adapters, const int32_t* folds, const FoldBasesOptions& options,
                    ConstMatView warmA, ConstMatView warmB);

// Frees the stacks and factors foldBases keeps on the calling thread (see releaseScratch).
void releaseFoldScratch();

// Per adapter, the mean squared cosine of the principal angles between span(A_i^T) and
// basisA (d_in x K_A, orthonormal), and between span(B_i) and basisB: ||Q^T P||_F^2 / min(r, K)
// with Q the Householder orthonormalisation of the factor; 1 when r >= d or K >= d.
void factorOverlaps(const std::vector<FactorPair>& adapters, ConstMatView basisA, ConstMatView basisB,
                    double* overlapA, double* overlapB);

}  // namespace eigenlorax
