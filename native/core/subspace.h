// EigenLoRAx per-module kernels (DESIGN §1): principal components of many adapters'
// stacked factors, loadings of adapters on them, errors without forming d_out x d_in
// matrices, and reconstruction of factors from loadings.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "linalg.h"
#include "matrix.h"

namespace eigenlorax {

// One adapter's factors for one module: dW = scale * B A, A: r x d_in, B: d_out x r.
struct FactorPair {
  ConstMatView a;
  ConstMatView b;
  double scale = 1.0;
};

// Adapter i's factors with their data, for a build whose adapters are read on demand: called
// inside the build's loop over adapters, on the thread that canonicalises them next, so each
// factor is converted into that core's cache rather than to main memory and back. The views
// stay valid until the calling thread's next call.
using FactorLoader = std::function<FactorPair(size_t adapter)>;

// Raw: the factors as published, scale left out (as the reference implementation stacks).
// Canonical: the balanced SVD factors of dW (B' = Qb U S^1/2, A' = S^1/2 V^T Qa^T): the
// scale is inside and the gauge freedom (B G, G^-1 A) is gone.
enum class Stacking { Raw = 0, Canonical = 1 };
// Equal: each adapter's canonical factors multiplied by ||dW||_F^-1/2 while the basis is
// built, so each adapter counts the same (an adapter with dW = 0 counts for nothing).
// Scale: as they are. Raw stacking ignores the weighting.
enum class Weighting { Equal = 0, Scale = 1 };

struct ModuleSubspaceOptions {
  Stacking stacking = Stacking::Canonical;
  Weighting weighting = Weighting::Equal;
  bool center = false;
  Index oversample = 10;
  int powerIters = 2;
  uint64_t seed = 0;
};

struct ModuleSubspaceOutputs {
  MatView componentsA;         // d_in x K_A
  MatView componentsB;         // d_out x K_B
  float* singularA = nullptr;  // K_A
  float* singularB = nullptr;  // K_B
  float* meanA = nullptr;      // d_in, written when centring
  float* meanB = nullptr;      // d_out
};

struct ModuleSubspaceInfo {
  double energyA = 0;       // ||stacked A||_F^2 after weighting and centring
  double energyB = 0;
  std::vector<double> norms;  // ||dW_i||_F
};

// What projectModule writes (see there), when a build projects its adapters itself.
struct ModuleProjectionOutputs {
  std::vector<MatView> alphas;  // K_A x r_i each
  std::vector<MatView> betas;   // K_B x r_i each
  double* norms = nullptr;
  double* errors = nullptr;
};

// Checks shapes: every pair A_i r_i x d_in and B_i d_out x r_i with the same d_in, d_out;
// K_A <= min(d_in, sum r_i), K_B <= min(d_out, sum r_i); the projection's outputs when given.
void checkModuleSubspace(const std::vector<FactorPair>& adapters, const ModuleSubspaceOptions& options,
                         const ModuleSubspaceOutputs& out, const ModuleProjectionOutputs* project = nullptr);
// With `project`, also projects every adapter on the components (and means) just built:
// bit for bit what projectModule writes for them, without canonicalising the factors again
// (the build keeps each adapter's factors as stacked, in float, for it). With `load`, the
// adapters' data pointers may be null: their factors come from load(i) (the shapes and
// scales from `adapters`).
ModuleSubspaceInfo buildModuleSubspace(const std::vector<FactorPair>& adapters, const ModuleSubspaceOptions& options,
                                       const ModuleSubspaceOutputs& out,
                                       const ModuleProjectionOutputs* project = nullptr,
                                       const FactorLoader* load = nullptr);

struct ModuleBasis {
  ConstMatView componentsA;       // V_A: d_in x K_A
  ConstMatView componentsB;       // U_B: d_out x K_B
  const float* meanA = nullptr;   // optional, d_in
  const float* meanB = nullptr;   // optional, d_out
};

void checkBasis(const ModuleBasis& basis);

// alpha_i = V_A^T (A_i'^T - meanA), beta_i = U_B^T (B_i' - meanB) for the factors as
// stacked, in each adapter's own scale; norms_i = ||dW_i||_F and
// errors_i = ||dW_i - dW_i_hat||_F, both through QR of the thin factors (no
// cancellation, no d_out x d_in matrix).
void checkProjectModule(const std::vector<FactorPair>& adapters, const ModuleBasis& basis,
                        const std::vector<MatView>& alphas, const std::vector<MatView>& betas);
void projectModule(const std::vector<FactorPair>& adapters, Stacking stacking, const ModuleBasis& basis,
                   const std::vector<MatView>& alphas, const std::vector<MatView>& betas, double* norms,
                   double* errors);

// A basis as the projection reads it: its components column-major (for the column
// products), zero means where it has none. Built once per basis, shared by every adapter.
struct ProjectionBasis {
  ColMatF vA, uB;
  Eigen::VectorXf zeroA, zeroB;
  Eigen::Map<const Eigen::VectorXf> muA, muB;
  explicit ProjectionBasis(const ModuleBasis& basis);
  ProjectionBasis(const ProjectionBasis&) = delete;  // the means may point at its own zeros
  ProjectionBasis& operator=(const ProjectionBasis&) = delete;
};

// One adapter's loadings, norm and error as projectModule computes them, from its factors
// as stacked, in float (at = A'^T, d_in x r; b = B', d_out x r; column-major), its norm
// ||dW||_F and the scale outside them (1 for canonical stacking).
void projectStackedFactors(const float* at, const float* b, Index r, double norm, double scale,
                           const ProjectionBasis& basis, MatView alpha, MatView beta, double& normOut, double& errorOut);

// Frees what the build and analyze kernels keep from module to module on the calling
// thread (the stacks, the factors kept for projecting, the rsvd's work matrices): call it
// on the thread that ran them, between jobs, when a whole build or analysis is done.
void releaseScratch();

// A = alpha^T V_A^T (+ meanA in every row), B = U_B beta (+ meanB in every column).
void checkReconstruct(const ModuleBasis& basis, ConstMatView alpha, ConstMatView beta, MatView a, MatView b);
void reconstructFactors(const ModuleBasis& basis, ConstMatView alpha, ConstMatView beta, MatView a, MatView b);

}  // namespace eigenlorax
