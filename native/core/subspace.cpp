#include "subspace.h"

#include "canonical.h"
#include "column_dots.h"
#include "finite.h"
#include "folds.h"
#include "large_buffers.h"
#include "sum_squares.h"

#include <Eigen/Householder>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <atomic>
#include <memory>
#include <cmath>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace eigenlorax {
namespace {

using VecD = Eigen::VectorXd;

std::string adapterName(size_t i) { return "adapters[" + std::to_string(i) + "]"; }

// Runs body(i) for i in [0, count) in parallel. The exception of the lowest i that threw is
// rethrown after (the same error from run to run, whichever thread met one first); the
// iterations after it are skipped.
template <typename Body>
void parallelFor(size_t count, Body body) {
  std::atomic<long> failedAt{static_cast<long>(count)};
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic)
  for (long i = 0; i < static_cast<long>(count); ++i) {
    if (i > failedAt.load()) continue;
    try {
      body(static_cast<size_t>(i));
    } catch (...) {
#pragma omp critical(eigenlorax_parallel_for_error)
      {
        if (i < failedAt.load()) {
          failedAt.store(i);
          error = std::current_exception();
        }
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

void checkPairs(const std::vector<FactorPair>& adapters, Index& dIn, Index& dOut, Index& totalRank) {
  if (adapters.empty()) throw CoreError(code::kInvalidArgument, "adapters: expected at least one adapter");
  dIn = adapters[0].a.cols;
  dOut = adapters[0].b.rows;
  totalRank = 0;
  for (size_t i = 0; i < adapters.size(); ++i) {
    const FactorPair& p = adapters[i];
    const std::string name = adapterName(i);
    if (p.a.rows < 1) throw CoreError(code::kInvalidArgument, name + ".A: expected at least one row");
    requireShape((name + ".A").c_str(), p.a.rows, p.a.cols, p.a.rows, dIn);
    requireShape((name + ".B").c_str(), p.b.rows, p.b.cols, dOut, p.a.rows);
    if (!std::isfinite(p.scale)) throw CoreError(code::kNonFinite, name + ".scale: expected a finite number");
    totalRank += p.a.rows;
  }
}

void checkComponents(const char* name, ConstMatView m, Index d, Index limit) {
  if (m.rows != d) requireShape(name, m.rows, m.cols, d, m.cols);
  if (m.cols < 1 || m.cols > limit) {
    throw CoreError(code::kInvalidArgument, std::string(name) + ": expected between 1 and " + std::to_string(limit) +
                                                " components, received " + std::to_string(m.cols));
  }
}

// A side's stack as the rsvd needs it: its squared Frobenius norm and maxAbsBits.
struct StackStats {
  double energy = 0;
  uint32_t top = 0;
};

// Column means of `stacked` (rows x d, rows > 0) in double, written to `mean` and
// subtracted from every row; returns the stack's stats after centring. Parallel over
// column blocks (the stack is large).
StackStats centerAndEnergy(MapF stacked, float* mean) {
  const Index rows = stacked.rows(), d = stacked.cols();
  std::vector<double> sum(static_cast<size_t>(d), 0.0);
#pragma omp parallel for schedule(static)
  for (Index j0 = 0; j0 < d; j0 += 256) {
    const Index j1 = std::min(d, j0 + 256);
    for (Index i = 0; i < rows; ++i) {
      const float* row = stacked.data() + i * d;
      for (Index j = j0; j < j1; ++j) sum[j] += row[j];
    }
    for (Index j = j0; j < j1; ++j) mean[j] = static_cast<float>(sum[j] / static_cast<double>(rows));
  }
  const Eigen::Map<const Eigen::RowVectorXf> mu(mean, d);
  stacked.rowwise() -= mu;
  // Summed in row order, whatever the threads: the same bits at any thread count.
  std::vector<double> rowEnergy(static_cast<size_t>(rows));
  uint32_t top = 0;
#pragma omp parallel for schedule(static) reduction(max : top)
  for (Index i = 0; i < rows; ++i) {
    rowEnergy[static_cast<size_t>(i)] = sumOfSquares(stacked.data() + i * d, static_cast<size_t>(d));
    top = std::max(top, maxAbsBits(stacked.data() + i * d, static_cast<size_t>(d)));
  }
  StackStats stats;
  for (double e : rowEnergy) stats.energy += e;
  stats.top = top;
  return stats;
}

// Float buffers kept by the calling thread (one per slot) and reused by the next module
// when the size is close (reallocating a 64 MB stack per module costs page faults, not just
// time); releaseScratch() frees them.
enum BufferSlot { kStackSlot = 0, kFactorsSlot = 1 };
struct ScratchBuffers {
  LargeFloats data[2];
  size_t capacity[2] = {0, 0};
};
thread_local ScratchBuffers scratch;

float* reusableBuffer(BufferSlot slot, size_t count) {
  LargeFloats& buffer = scratch.data[slot];
  size_t& capacity = scratch.capacity[slot];
  if (count > capacity || count < capacity / 4) {
    buffer.reset();
    buffer = largeFloats(count);  // uninitialised: every entry is written before it is read
    capacity = count;
  }
  return buffer.get();
}

// Right singular vectors of the stacked side, diag(rowWeights) stacked (stacked itself when
// rowWeights is null): the components. top: maxAbsBits of that side.
void topComponents(ConstMatView stacked, const float* rowWeights, uint32_t top, const ModuleSubspaceOptions& o,
                   uint64_t seed, MatView components, float* singular) {
  const Index k = components.cols;
  RowMatF u(stacked.rows, k);
  RsvdOptions ro;
  ro.rank = k;
  ro.oversample = o.oversample;
  ro.powerIters = o.powerIters;
  ro.seed = seed;
  rsvdRowWeighted(stacked, rowWeights, ro, top, {u.data(), u.rows(), u.cols()}, singular, components);
}

// One side of an adapter projected on a basis P (d x K) with mean mu: loadings
// L = P^T (X - mu 1^T) (K x r) and the Grams that the error needs, of
// [X, Res] with Res = X - mu 1^T - P L (so X_hat = X - Res).
struct SideProjection {
  ColMatF loadings;
  ColMatD gram;  // 2r x 2r: [X Res]^T [X Res]
};

// x: the side's factor as stacked, in float (A'^T or B'); basis: d x K, column-major.
template <typename X>
SideProjection projectSide(const X& x, const ColMatF& basis, const Eigen::Map<const Eigen::VectorXf>& mu,
                           CanonicalWork& w) {
  const Index d = x.rows(), r = x.cols(), k = basis.cols();
  SideProjection out;
  w.pq.resize(d, 2 * r);
  auto xs = w.pq.leftCols(r);
  auto res = w.pq.rightCols(r);
  xs = x;
  res = xs.colwise() - mu;
  out.loadings.resize(k, r);
  columnDots(basis.data(), d, k, res.data(), d, r, d, out.loadings.data(), k);
  res.noalias() -= basis * out.loadings;
  w.proj.resize(2 * r, 2 * r);
  columnGram(w.pq.data(), d, 2 * r, d, w.proj.data(), 2 * r);
  out.gram = w.proj.cast<double>();
  return out;
}

// ||dW - dW_hat||_F for dW = B' A' and dW_hat = (B' - ResB)(A'^T - ResA)^T:
// dW - dW_hat = ResB A' + B_hat ResA^T = [ResB, B_hat] [A'^T, ResA]^T, whose squared norm is
// tr((P^T P)(Q^T Q)) with r x r blocks. Each term pairs a residual block with a full one, so
// the sum has no cancellation at the size of ||dW||^2 (no QR of the factors needed).
double residualNorm(const SideProjection& a, const SideProjection& b, Index r) {
  // b.gram = [B' ResB]^T [B' ResB]; P = [ResB, B' - ResB].
  const ColMatD gBB = b.gram.topLeftCorner(r, r), gBR = b.gram.topRightCorner(r, r),
                gRR = b.gram.bottomRightCorner(r, r);
  const ColMatD pRR = gRR;                                    // ResB^T ResB
  const ColMatD pRH = gBR.transpose() - gRR;                  // ResB^T B_hat
  const ColMatD pHH = gBB - gBR - gBR.transpose() + gRR;      // B_hat^T B_hat
  // Q = [A'^T, ResA]: blocks directly from a.gram.
  const ColMatD qAA = a.gram.topLeftCorner(r, r), qAR = a.gram.topRightCorner(r, r),
                qRR = a.gram.bottomRightCorner(r, r);
  const double squared = (pRR.cwiseProduct(qAA)).sum() + 2.0 * (pRH.cwiseProduct(qAR)).sum() +
                         (pHH.cwiseProduct(qRR)).sum();
  return std::sqrt(std::max(0.0, squared));
}

// One adapter's loadings, norm and error from its factors as stacked, in float (at = A'^T,
// b = B'): loadings and residuals in float (BLAS-3, K x r and d x r), the r x r algebra of
// the error in double.
template <typename XA, typename XB>
void projectOne(const XA& at, const XB& b, double norm, double scale, const ProjectionBasis& basis, MatView alpha,
                MatView beta, double& normOut, double& errorOut, CanonicalWork& w) {
  const Index r = at.cols();
  const SideProjection pa = projectSide(at, basis.vA, basis.muA, w);
  alpha.map() = pa.loadings;
  const SideProjection pb = projectSide(b, basis.uB, basis.muB, w);
  beta.map() = pb.loadings;
  normOut = norm;
  errorOut = std::abs(scale) * residualNorm(pa, pb, r);
}

void checkProjectionOutputs(const std::vector<FactorPair>& adapters, Index kA, Index kB,
                            const std::vector<MatView>& alphas, const std::vector<MatView>& betas) {
  if (alphas.size() != adapters.size() || betas.size() != adapters.size()) {
    throw CoreError(code::kInvalidArgument, "alphas, betas: expected one output per adapter (" +
                                                std::to_string(adapters.size()) + ")");
  }
  for (size_t i = 0; i < adapters.size(); ++i) {
    const Index r = adapters[i].a.rows;
    requireShape(("alphas[" + std::to_string(i) + "]").c_str(), alphas[i].rows, alphas[i].cols, kA, r);
    requireShape(("betas[" + std::to_string(i) + "]").c_str(), betas[i].rows, betas[i].cols, kB, r);
  }
}

}  // namespace

void checkModuleSubspace(const std::vector<FactorPair>& adapters, const ModuleSubspaceOptions& o,
                         const ModuleSubspaceOutputs& out, const ModuleProjectionOutputs* project) {
  Index dIn = 0, dOut = 0, total = 0;
  checkPairs(adapters, dIn, dOut, total);
  checkComponents("componentsA", out.componentsA.view(), dIn, std::min(dIn, total));
  checkComponents("componentsB", out.componentsB.view(), dOut, std::min(dOut, total));
  if (o.center && (out.meanA == nullptr || out.meanB == nullptr)) {
    throw CoreError(code::kInvalidArgument, "meanA, meanB: expected output vectors when centring");
  }
  if (project != nullptr) {
    checkProjectionOutputs(adapters, out.componentsA.cols, out.componentsB.cols, project->alphas, project->betas);
    if (project->norms == nullptr || project->errors == nullptr) {
      throw CoreError(code::kInvalidArgument, "norms, errors: expected output vectors when projecting");
    }
  }
}

ModuleSubspaceInfo buildModuleSubspace(const std::vector<FactorPair>& adapters, const ModuleSubspaceOptions& o,
                                       const ModuleSubspaceOutputs& out, const ModuleProjectionOutputs* project,
                                       const FactorLoader* load) {
  checkModuleSubspace(adapters, o, out, project);
  const Index dIn = adapters[0].a.cols, dOut = adapters[0].b.rows;
  Index total = 0;
  for (const FactorPair& p : adapters) total += p.a.rows;
  std::vector<Index> offsets(adapters.size() + 1, 0);
  for (size_t i = 0; i < adapters.size(); ++i) offsets[i + 1] = offsets[i] + adapters[i].a.rows;

  // Both stacks at once, written by the loop over adapters that canonicalises them: rows
  // of side A are w_i A'_i, rows of side B are w_i B'_i^T. Uncentred, the stacks hold the
  // unweighted factors and the rsvd weighs its products' rows (rowWeights): one copy of
  // the factors serves both the rsvd and the projection (two copies, 256 MiB a module of a
  // 7B zoo, were written before). Centred, the mean is of the weighted rows and is taken
  // out of the stacks in place: weighted stacks, and the factors copied apart.
  const bool weighOnTheFly = !o.center;
  float* buffer = reusableBuffer(kStackSlot, static_cast<size_t>(total) * static_cast<size_t>(dIn + dOut));
  MapF stackedA(buffer, total, dIn);
  MapF stackedB(buffer + total * dIn, total, dOut);
  const bool equal = o.stacking == Stacking::Canonical && o.weighting == Weighting::Equal;
  ModuleSubspaceInfo info;
  info.norms.assign(adapters.size(), 0.0);
  // For the projection: every adapter's factors as stacked, unweighted, in float (what
  // projectModule would compute again), and their scales.
  float* factors = project == nullptr ? nullptr
                   : weighOnTheFly    ? buffer
                                      : reusableBuffer(kFactorsSlot, static_cast<size_t>(total) * static_cast<size_t>(dIn + dOut));
  std::vector<float> rowWeights(weighOnTheFly ? static_cast<size_t>(total) : 0);
  std::vector<double> scales(adapters.size(), 1.0);
  std::vector<double> energies(2 * adapters.size(), 0.0);
  std::vector<uint32_t> tops(2 * adapters.size(), 0);
  parallelFor(adapters.size(), [&](size_t i) {
    const FactorPair p = load != nullptr ? (*load)(i) : adapters[i];
    if (!allFinite(p.a) || !allFinite(p.b)) {
      throw CoreError(code::kNonFinite, adapterName(i) + ": factors contain NaN or Inf");
    }
    CanonicalWork& w = canonicalWork();
    stackedFactors(p, o.stacking, w);
    info.norms[i] = w.norm;
    const double weight = equal ? (w.norm > 0 ? 1.0 / std::sqrt(w.norm) : 0.0) : 1.0;
    const float weightF = static_cast<float>(weight);
    const Index r = p.a.rows;
    // A'^T (d_in x r, column-major) has the memory layout of the r x d_in rows.
    Eigen::Map<ColMatF> blockA(stackedA.data() + offsets[i] * dIn, dIn, r), blockB(stackedB.data() + offsets[i] * dOut, dOut, r);
    if (weighOnTheFly) {
      blockA = w.atF;
      blockB = w.bF;
      std::fill(rowWeights.begin() + offsets[i], rowWeights.begin() + offsets[i + 1], weightF);
      // The weighted blocks' energy and largest entry, from the unweighted ones: w^2 ||x||^2,
      // and fl(w max|x|), which is max fl(w |x_j|) (rounding keeps order), bit for bit.
      const double w2 = static_cast<double>(weightF) * static_cast<double>(weightF);
      energies[2 * i] = w2 * sumOfSquares(blockA.data(), static_cast<size_t>(blockA.size()));
      energies[2 * i + 1] = w2 * sumOfSquares(blockB.data(), static_cast<size_t>(blockB.size()));
      const auto weighedTop = [&](const float* x, Index count) {
        const uint32_t bits = maxAbsBits(x, static_cast<size_t>(count));
        if (bits >= 0x7f800000u) return bits;  // NaN or Inf: reported by the rsvd
        float largest;
        std::memcpy(&largest, &bits, 4);
        largest *= weightF;
        uint32_t out;
        std::memcpy(&out, &largest, 4);
        return out;
      };
      tops[2 * i] = weighedTop(blockA.data(), blockA.size());
      tops[2 * i + 1] = weighedTop(blockB.data(), blockB.size());
      scales[i] = w.scale;
      return;
    }
    blockA = weightF * w.atF;
    blockB = weightF * w.bF;
    // Uncentred, the energy is the adapters' blocks' (read here while in cache, not in
    // another pass over both stacks): summed in adapter order below.
    energies[2 * i] = sumOfSquares(blockA.data(), static_cast<size_t>(blockA.size()));
    energies[2 * i + 1] = sumOfSquares(blockB.data(), static_cast<size_t>(blockB.size()));
    tops[2 * i] = maxAbsBits(blockA.data(), static_cast<size_t>(blockA.size()));
    tops[2 * i + 1] = maxAbsBits(blockB.data(), static_cast<size_t>(blockB.size()));
    if (factors != nullptr) {
      Eigen::Map<ColMatF>(factors + offsets[i] * dIn, dIn, r) = w.atF;
      Eigen::Map<ColMatF>(factors + total * dIn + offsets[i] * dOut, dOut, r) = w.bF;
      scales[i] = w.scale;
    }
  });

  const auto stats = [&](MapF stacked, float* mean, size_t side) {
    if (o.center) return centerAndEnergy(stacked, mean);
    StackStats sum;
    for (size_t i = 0; i < adapters.size(); ++i) {
      sum.energy += energies[2 * i + side];
      sum.top = std::max(sum.top, tops[2 * i + side]);
    }
    return sum;
  };
  const StackStats statsA = stats(stackedA, out.meanA, 0);
  info.energyA = statsA.energy;
  const float* weightsOrNull = weighOnTheFly ? rowWeights.data() : nullptr;
  topComponents({stackedA.data(), total, dIn}, weightsOrNull, statsA.top, o, o.seed, out.componentsA, out.singularA);
  const StackStats statsB = stats(stackedB, out.meanB, 1);
  info.energyB = statsB.energy;
  topComponents({stackedB.data(), total, dOut}, weightsOrNull, statsB.top, o, o.seed + 1, out.componentsB, out.singularB);
  if (project == nullptr) return info;
  const ProjectionBasis basis(ModuleBasis{out.componentsA.view(), out.componentsB.view(), o.center ? out.meanA : nullptr,
                                          o.center ? out.meanB : nullptr});
  parallelFor(adapters.size(), [&](size_t i) {
    const Index r = adapters[i].a.rows;
    const Eigen::Map<const ColMatF> at(factors + offsets[i] * dIn, dIn, r);
    const Eigen::Map<const ColMatF> b(factors + total * dIn + offsets[i] * dOut, dOut, r);
    projectOne(at, b, info.norms[i], scales[i], basis, project->alphas[i], project->betas[i], project->norms[i],
               project->errors[i], canonicalWork());
  });
  return info;
}

void checkBasis(const ModuleBasis& basis) {
  const Index dIn = basis.componentsA.rows, dOut = basis.componentsB.rows;
  checkComponents("componentsA", basis.componentsA, dIn, dIn);
  checkComponents("componentsB", basis.componentsB, dOut, dOut);
}

void checkProjectModule(const std::vector<FactorPair>& adapters, const ModuleBasis& basis,
                        const std::vector<MatView>& alphas, const std::vector<MatView>& betas) {
  Index dIn = 0, dOut = 0, total = 0;
  checkPairs(adapters, dIn, dOut, total);
  checkBasis(basis);
  requireShape("componentsA", basis.componentsA.rows, basis.componentsA.cols, dIn, basis.componentsA.cols);
  requireShape("componentsB", basis.componentsB.rows, basis.componentsB.cols, dOut, basis.componentsB.cols);
  checkProjectionOutputs(adapters, basis.componentsA.cols, basis.componentsB.cols, alphas, betas);
}

void projectModule(const std::vector<FactorPair>& adapters, Stacking stacking, const ModuleBasis& basis,
                   const std::vector<MatView>& alphas, const std::vector<MatView>& betas, double* norms,
                   double* errors) {
  checkProjectModule(adapters, basis, alphas, betas);
  const ProjectionBasis projection(basis);
  parallelFor(adapters.size(), [&](size_t i) {
    const FactorPair& p = adapters[i];
    if (!allFinite(p.a) || !allFinite(p.b)) {
      throw CoreError(code::kNonFinite, adapterName(i) + ": factors contain NaN or Inf");
    }
    CanonicalWork& w = canonicalWork();
    stackedFactors(p, stacking, w);
    projectOne(w.atF, w.bF, w.norm, w.scale, projection, alphas[i], betas[i], norms[i],
               errors[i], w);
  });
}

ProjectionBasis::ProjectionBasis(const ModuleBasis& basis)
    : vA(basis.componentsA.map()),
      uB(basis.componentsB.map()),
      zeroA(Eigen::VectorXf::Zero(basis.meanA ? 0 : basis.componentsA.rows)),
      zeroB(Eigen::VectorXf::Zero(basis.meanB ? 0 : basis.componentsB.rows)),
      muA(basis.meanA ? basis.meanA : zeroA.data(), basis.componentsA.rows),
      muB(basis.meanB ? basis.meanB : zeroB.data(), basis.componentsB.rows) {}

void projectStackedFactors(const float* at, const float* b, Index r, double norm, double scale,
                           const ProjectionBasis& basis, MatView alpha, MatView beta, double& normOut, double& errorOut) {
  const Eigen::Map<const ColMatF> atMap(at, basis.vA.rows(), r), bMap(b, basis.uB.rows(), r);
  projectOne(atMap, bMap, norm, scale, basis, alpha, beta, normOut, errorOut, canonicalWork());
}

void releaseScratch() {
  scratch = ScratchBuffers{};
  releaseFoldScratch();
  releaseRsvdScratch();
}

void checkReconstruct(const ModuleBasis& basis, ConstMatView alpha, ConstMatView beta, MatView a, MatView b) {
  checkBasis(basis);
  const Index r = alpha.cols;
  if (r < 1) throw CoreError(code::kInvalidArgument, "alpha: expected at least one column");
  requireShape("alpha", alpha.rows, alpha.cols, basis.componentsA.cols, r);
  requireShape("beta", beta.rows, beta.cols, basis.componentsB.cols, r);
  requireShape("A", a.rows, a.cols, r, basis.componentsA.rows);
  requireShape("B", b.rows, b.cols, basis.componentsB.rows, r);
}

void reconstructFactors(const ModuleBasis& basis, ConstMatView alpha, ConstMatView beta, MatView a, MatView b) {
  checkReconstruct(basis, alpha, beta, a, b);
  MapF am = a.map(), bm = b.map();
  am.noalias() = alpha.map().transpose() * basis.componentsA.map().transpose();
  bm.noalias() = basis.componentsB.map() * beta.map();
  if (basis.meanA != nullptr) am.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(basis.meanA, am.cols());
  if (basis.meanB != nullptr) bm.colwise() += Eigen::Map<const Eigen::VectorXf>(basis.meanB, bm.rows());
}

}  // namespace eigenlorax
