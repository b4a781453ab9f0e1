#include "folds.h"

#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "canonical.h"
#include "column_dots.h"
#include "finite.h"
#include "random.h"
#include "stack_products.h"
#include "sum_squares.h"

namespace eigenlorax {
namespace {

// Below this fraction of M's largest eigenvalue, a direction of the warm start carries no
// energy of the fold's stack (float32 products): it is left out of M's pseudo-inverse.
constexpr double kPseudoInverseCut = 1e-6;

struct Stack {
  RowMatF rows;                // R x d, adapter i's rows at layout.at[i] (grouped by fold)
  std::vector<double> energy;  // per adapter, ||rows of i||_F^2
};

// Every adapter's factors as stacked, unweighted, in float (A'^T and B' column-major at the
// adapter's rows of the layout), with ||dW||_F and the scale outside them: what
// projectModule would compute again.
struct FactorsAsStacked {
  RowMatF a, b;  // used as flat storage
  std::vector<double> norm, scale;
};

// Where each adapter's rows are in the stacks: grouped by fold (fold f's rows are
// [foldStart[f], foldStart[f + 1])), so a fold's products with them are single GEMMs.
struct Layout {
  std::vector<Index> at, rank, foldStart;
};

Layout layoutOf(const std::vector<FactorPair>& adapters, const int32_t* folds, int32_t foldCount) {
  Layout l;
  l.at.assign(adapters.size(), 0);
  l.rank.assign(adapters.size(), 0);
  l.foldStart.assign(static_cast<size_t>(foldCount) + 1, 0);
  for (size_t i = 0; i < adapters.size(); ++i) l.foldStart[folds[i] + 1] += adapters[i].a.rows;
  for (int32_t f = 0; f < foldCount; ++f) l.foldStart[f + 1] += l.foldStart[f];
  std::vector<Index> next(l.foldStart.begin(), l.foldStart.end() - 1);
  for (size_t i = 0; i < adapters.size(); ++i) {
    l.rank[i] = adapters[i].a.rows;
    l.at[i] = next[folds[i]];
    next[folds[i]] += l.rank[i];
  }
  return l;
}

// s x and s^T t for the stack s (R x d): the rsvd's product kernels (stack_products.h).
RowMatF timesStack(const RowMatF& s, const RowMatF& x) {
  const ColMatF xc = x;
  ColMatF y;
  stackTimes(ConstMapF(s.data(), s.rows(), s.cols()), xc, y);
  return y;
}

template <typename Block>
ColMatF stackTransposeTimesBlock(const RowMatF& s, const Block& t) {
  const ColMatF q = t;
  ColMatF z;
  stackTransposeTimes(ConstMapF(s.data(), s.rows(), s.cols()), q, z);
  return z;
}

// The side's rows of every adapter as buildModuleSubspace stacks them (same arithmetic, so
// the same floats): w_i A'_i (side A) and w_i B'_i^T (side B).
void formStacks(const std::vector<FactorPair>& adapters, const Layout& layout, const FoldBasesOptions& o,
                Stack& a, Stack& b, FactorsAsStacked* factors) {
  const Index dIn = adapters[0].a.cols, dOut = adapters[0].b.rows, total = layout.foldStart.back();
  a.rows.resize(total, dIn);
  b.rows.resize(total, dOut);
  a.energy.assign(adapters.size(), 0.0);
  b.energy.assign(adapters.size(), 0.0);
  const bool equal = o.stacking == Stacking::Canonical && o.weighting == Weighting::Equal;
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic)
  for (long i = 0; i < static_cast<long>(adapters.size()); ++i) {
    try {
      const FactorPair& p = adapters[i];
      if (!allFinite(p.a) || !allFinite(p.b)) {
        throw CoreError(code::kNonFinite, "adapters[" + std::to_string(i) + "]: factors contain NaN or Inf");
      }
      CanonicalWork& w = canonicalWork();
      stackedFactors(p, o.stacking, w);
      const double weight = equal ? (w.norm > 0 ? 1.0 / std::sqrt(w.norm) : 0.0) : 1.0;
      const Index r = p.a.rows;
      auto sa = Eigen::Map<ColMatF>(a.rows.data() + layout.at[i] * dIn, dIn, r);
      auto sb = Eigen::Map<ColMatF>(b.rows.data() + layout.at[i] * dOut, dOut, r);
      sa = static_cast<float>(weight) * w.atF;
      sb = static_cast<float>(weight) * w.bF;
      a.energy[i] = sumOfSquares(sa.data(), static_cast<size_t>(sa.size()));
      b.energy[i] = sumOfSquares(sb.data(), static_cast<size_t>(sb.size()));
      if (factors != nullptr) {
        Eigen::Map<ColMatF>(factors->a.data() + layout.at[i] * dIn, dIn, r) = w.atF;
        Eigen::Map<ColMatF>(factors->b.data() + layout.at[i] * dOut, dOut, r) = w.bF;
        factors->norm[i] = w.norm;
        factors->scale[i] = w.scale;
      }
    } catch (...) {
#pragma omp critical(eigenlorax_folds_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// rsvd of `rows` (R x d) with the build's options: components d x k, singular values.
void rsvdBasis(ConstMatView rows, Index k, const FoldBasesOptions& o, uint64_t seed, bool wantComponents,
               SideBasis& out) {
  RsvdOptions ro;
  ro.rank = k;
  ro.oversample = o.oversample;
  ro.powerIters = o.powerIters;
  ro.seed = seed;
  RowMatF u(rows.rows, k), v(rows.cols, k);
  out.k = k;
  out.singular.assign(static_cast<size_t>(k), 0.0f);
  rsvd(rows, ro, {u.data(), u.rows(), u.cols()}, out.singular.data(), {v.data(), v.rows(), v.cols()});
  if (wantComponents) out.components.assign(v.data(), v.data() + v.size());
  out.exact = true;
}

// The rows of the adapters whose fold is not `fold`, in the adapters' order (as a build of
// them stacks them).
RowMatF othersRows(const RowMatF& s, const Layout& layout, const int32_t* folds, int32_t fold) {
  Index rows = 0;
  for (size_t i = 0; i < layout.at.size(); ++i) rows += folds[i] == fold ? 0 : layout.rank[i];
  RowMatF out(rows, s.cols());
  Index at = 0;
  for (size_t i = 0; i < layout.at.size(); ++i) {
    if (folds[i] == fold) continue;
    out.middleRows(at, layout.rank[i]) = s.middleRows(layout.at[i], layout.rank[i]);
    at += layout.rank[i];
  }
  return out;
}

// Top k of the Nystrom approximation Y M^+ Y^T (Y: d x c, M: c x c symmetric PSD), through
// F = Y E_+ Lambda_+^-1/2 (so that F F^T is the approximation) and the eigenpairs of the
// small F^T F = W Sigma^2 W^T: components F W Sigma^-1, singular values Sigma.
void nystromBasis(const ColMatD& y, const ColMatD& m, Index k, uint64_t seed, bool wantComponents, SideBasis& out) {
  const Index d = y.rows();
  Eigen::SelfAdjointEigenSolver<ColMatD> eig(m);
  const Eigen::VectorXd& lambda = eig.eigenvalues();  // ascending
  const double top = lambda.size() > 0 ? lambda.maxCoeff() : 0.0;
  std::vector<Index> kept;
  for (Index j = lambda.size() - 1; j >= 0; --j) {
    if (top > 0 && lambda(j) > kPseudoInverseCut * top) kept.push_back(j);
  }
  const Index l = static_cast<Index>(kept.size());
  ColMatD c(m.rows(), l);
  for (Index j = 0; j < l; ++j) c.col(j) = eig.eigenvectors().col(kept[j]) / std::sqrt(lambda(kept[j]));
  const ColMatD f = y * c;
  const ColMatD h = f.transpose() * f;
  Eigen::SelfAdjointEigenSolver<ColMatD> small(h);  // ascending
  out.k = k;
  out.singular.assign(static_cast<size_t>(k), 0.0f);
  out.exact = false;
  const double sTop = l > 0 ? std::sqrt(std::max(0.0, small.eigenvalues()(l - 1))) : 0.0;
  Index got = 0;
  ColMatD w(l, std::min(k, l));
  for (Index j = l - 1; j >= 0 && got < k; --j, ++got) {
    const double sigma = std::sqrt(std::max(0.0, small.eigenvalues()(j)));
    if (!(sigma > 1e-7 * sTop)) break;  // below float32 resolution of the stack: no direction
    out.singular[got] = static_cast<float>(sigma);
    w.col(got) = small.eigenvectors().col(j) / sigma;
  }
  ColMatD components = ColMatD::Zero(d, k);
  if (wantComponents && got > 0) components.leftCols(got).noalias() = f * w.leftCols(got);
  if (!wantComponents) return;
  // Each column's largest-magnitude entry positive (rsvd's convention).
  for (Index j = 0; j < got; ++j) {
    Index at = 0;
    components.col(j).cwiseAbs().maxCoeff(&at);
    if (components(at, j) < 0) components.col(j) *= -1.0;
  }
  RowMatF basis = components.cast<float>();
  if (got < k) {  // the approximation has lower rank: complete with random orthonormal directions
    RowMatF head = basis.leftCols(got), extra(d, k - got);
    completeBasis({head.data(), d, got}, seed, {extra.data(), d, k - got});
    basis.rightCols(k - got) = extra;
  }
  out.components.assign(basis.data(), basis.data() + basis.size());
}

void side(const Stack& stack, const Layout& layout, const int32_t* folds, const FoldBasesOptions& o,
          ConstMatView warm, Index kWanted, Index curveWanted, uint64_t seed, SideBasis& curve,
          std::vector<SideBasis>& perFold, const std::vector<bool>& present) {
  const RowMatF& s = stack.rows;
  const Index total = s.rows(), d = s.cols();
  const size_t n = layout.at.size();
  double energy = 0;
  for (double e : stack.energy) energy += e;
  std::vector<Index> foldRank(static_cast<size_t>(o.foldCount), total);
  std::vector<double> foldEnergy(static_cast<size_t>(o.foldCount), energy);
  for (size_t i = 0; i < n; ++i) {
    foldRank[folds[i]] -= layout.rank[i];
    foldEnergy[folds[i]] -= stack.energy[i];
  }
  // Exact where rsvd would be, by the same call; the rest through one shared sketch.
  const Index curveK = std::min({curveWanted, d, total});
  bool sketch = false;
  if (rsvdPrefersExact(total, d, curveK, o.oversample)) {
    const RowMatF rows = othersRows(s, layout, folds, -1);
    rsvdBasis({rows.data(), total, d}, curveK, o, seed, false, curve);
  } else {
    sketch = true;
  }
  curve.energy = energy;
  Index widest = 0;  // the largest K of a fold on the approximate path
  perFold.assign(static_cast<size_t>(o.foldCount), SideBasis{});
  for (int32_t f = 0; f < o.foldCount; ++f) {
    if (!present[f]) continue;
    SideBasis& out = perFold[f];
    const Index k = std::min({kWanted, d, foldRank[f]});
    out.energy = std::max(0.0, foldEnergy[f]);
    out.k = k;
    if (rsvdPrefersExact(foldRank[f], d, k, o.oversample)) {
      const RowMatF rows = othersRows(s, layout, folds, f);
      rsvdBasis({rows.data(), rows.rows(), d}, k, o, seed, true, out);
    } else {
      sketch = true;
      widest = std::max(widest, k);
    }
  }
  if (!sketch) return;

  // The warm start: the whole stack's basis, then random directions, orthonormalised.
  // L = max(K, curve / 2) + p: Omega has 2L columns, enough for the curve.
  const Index l = std::min({d, total, std::max(widest, (curveK + 1) / 2) + o.oversample});
  RowMatF q0(d, l);
  const Index w = std::min(l, warm.empty() ? Index{0} : warm.cols);
  if (w > 0) q0.leftCols(w) = warm.map().leftCols(w);
  Rng rng(seed ^ 0x5f0f5f0f5f0f5f0fULL);
  for (Index i = 0; i < d; ++i)
    for (Index c = w; c < l; ++c) q0(i, c) = static_cast<float>(rng.gaussian());
  orthonormalize({q0.data(), d, l}, {q0.data(), d, l});
  // The test matrix Omega = [Q0, orth(G Q0)] (a block Krylov space of depth 2 of the whole
  // stack): T = S Omega and Y = S^T T = G Omega in four passes over the stack.
  RowMatF t(total, 2 * l);
  t.leftCols(l) = timesStack(s, q0);
  ColMatF yAll(d, 2 * l);
  yAll.leftCols(l) = stackTransposeTimesBlock(s, t.leftCols(l));
  RowMatF q1 = yAll.leftCols(l);
  orthonormalize({q1.data(), d, l}, {q1.data(), d, l});
  t.rightCols(l) = timesStack(s, q1);
  yAll.rightCols(l) = stackTransposeTimesBlock(s, t.rightCols(l));
  const ColMatD mAll = (t.transpose() * t).cast<double>();  // Omega^T G Omega

  if (!curve.exact) {
    // The curve's tail needs a deeper space than the folds' top K: one more block,
    // [Omega, orth(G^2 Q0)], for the whole stack only (two more passes, no fold corrections).
    RowMatF q2 = yAll.rightCols(l);
    orthonormalize({q2.data(), d, l}, {q2.data(), d, l});
    RowMatF t3(total, 3 * l);
    t3.leftCols(2 * l) = t;
    t3.rightCols(l) = timesStack(s, q2);
    ColMatF y3(d, 3 * l);
    y3.leftCols(2 * l) = yAll;
    y3.rightCols(l) = stackTransposeTimesBlock(s, t3.rightCols(l));
    nystromBasis(y3.cast<double>(), (t3.transpose() * t3).cast<double>(), curveK, seed, false, curve);
  }
  for (int32_t f = 0; f < o.foldCount; ++f) {
    if (!present[f] || perFold[f].exact) continue;
    // S_f^T T_f and M_f's correction T_f^T T_f: fold f's rows are contiguous.
    const Index from = layout.foldStart[f], rows = layout.foldStart[f + 1] - from;
    const ColMatF z = s.middleRows(from, rows).transpose() * t.middleRows(from, rows);
    const ColMatF tf = t.middleRows(from, rows).transpose() * t.middleRows(from, rows);
    const ColMatD y = (yAll - z).cast<double>();
    const ColMatD m = mAll - tf.cast<double>();
    const double e = perFold[f].energy;
    nystromBasis(y, m, perFold[f].k, seed + 7 + static_cast<uint64_t>(f), true, perFold[f]);
    perFold[f].energy = e;
  }
}

// What foldBases keeps on its thread from module to module (releaseFoldScratch frees it).
thread_local RowMatF keptStacks[2];
thread_local FactorsAsStacked keptFactors;

// ||Q^T P||_F^2 / min(r, K) for Q the orthonormalisation of the factor x (d x r, column-major)
// and P = basis (d x K, column-major); 1 when r >= d or K >= d. Well-conditioned factors (the
// usual case) through R from the Gram in double: Q^T P = R^-T (X^T P), no Q formed, in the
// thread's scratch (fresh 256 KiB matrices per call cost more in page faults than the work).
double spanOverlap(const float* x, Index d, Index r, const ColMatF& basis) {
  const Index k = basis.cols();
  if (r >= d || k >= d) return 1.0;
  thread_local ColMatD factor, factorInv, gram, c;
  thread_local ColMatF xp;
  if (gramFactor(x, d, r, factor, factorInv, gram)) {
    xp.resize(r, k);
    columnDots(x, d, r, basis.data(), d, k, d, xp.data(), r);
    c.noalias() = factorInv.transpose() * xp.cast<double>();
  } else {
    const RowMatF rows = Eigen::Map<const ColMatF>(x, d, r);
    RowMatF q(d, r);
    orthonormalize({rows.data(), d, r}, {q.data(), d, r});
    c = (q.transpose() * basis).cast<double>();
  }
  return std::min(1.0, c.squaredNorm() / static_cast<double>(std::min(r, k)));
}

// Both factors' overlaps with a basis (col-major components): A^T is A's memory; B
// (row-major) is copied column-major.
void pairOverlaps(const FactorPair& p, const ColMatF& basisA, const ColMatF& basisB, double& overlapA, double& overlapB) {
  thread_local ColMatF bCol;
  bCol = p.b.map();
  overlapA = spanOverlap(p.a.data, p.a.cols, p.a.rows, basisA);
  overlapB = spanOverlap(bCol.data(), bCol.rows(), bCol.cols(), basisB);
}

}  // namespace

void releaseFoldScratch() {
  keptStacks[0] = RowMatF();
  keptStacks[1] = RowMatF();
  keptFactors = FactorsAsStacked{};
}

void checkFoldBases(const std::vector<FactorPair>& adapters, const int32_t* folds, const FoldBasesOptions& o,
                    ConstMatView warmA, ConstMatView warmB) {
  if (adapters.empty()) throw CoreError(code::kInvalidArgument, "adapters: expected at least one adapter");
  const Index dIn = adapters[0].a.cols, dOut = adapters[0].b.rows;
  for (size_t i = 0; i < adapters.size(); ++i) {
    const std::string name = "adapters[" + std::to_string(i) + "]";
    if (adapters[i].a.rows < 1) throw CoreError(code::kInvalidArgument, name + ".A: expected at least one row");
    requireShape((name + ".A").c_str(), adapters[i].a.rows, adapters[i].a.cols, adapters[i].a.rows, dIn);
    requireShape((name + ".B").c_str(), adapters[i].b.rows, adapters[i].b.cols, dOut, adapters[i].a.rows);
    if (!std::isfinite(adapters[i].scale)) throw CoreError(code::kNonFinite, name + ".scale: expected a finite number");
    if (folds[i] < 0 || folds[i] >= o.foldCount) {
      throw CoreError(code::kInvalidArgument, "folds[" + std::to_string(i) + "]: expected a fold in [0, " +
                                                  std::to_string(o.foldCount) + "), received " +
                                                  std::to_string(folds[i]));
    }
  }
  if (o.foldCount < 1) throw CoreError(code::kInvalidArgument, "foldCount: expected at least 1");
  if (o.componentsA < 1 || o.componentsB < 1 || o.curveA < 1 || o.curveB < 1) {
    throw CoreError(code::kInvalidArgument, "components, curve: expected at least 1 per side");
  }
  if (!warmA.empty() && warmA.rows != dIn) requireShape("warmA", warmA.rows, warmA.cols, dIn, warmA.cols);
  if (!warmB.empty() && warmB.rows != dOut) requireShape("warmB", warmB.rows, warmB.cols, dOut, warmB.cols);
}

FoldBases foldBases(const std::vector<FactorPair>& adapters, const int32_t* folds, const FoldBasesOptions& o,
                    ConstMatView warmA, ConstMatView warmB) {
  checkFoldBases(adapters, folds, o, warmA, warmB);
  const Layout layout = layoutOf(adapters, folds, o.foldCount);
  FoldBases out;
  out.present.assign(static_cast<size_t>(o.foldCount), false);
  for (int32_t f = 0; f < o.foldCount; ++f) {
    for (size_t i = 0; i < adapters.size() && !out.present[f]; ++i) out.present[f] = folds[i] != f;
  }
  // The stacks' memory is kept by the calling thread from module to module: fresh 64 MiB
  // stacks (256 adapters, 4096 x 16) cost page faults on every first write.
  RowMatF* kept = keptStacks;
  const Index dIn = adapters[0].a.cols, dOut = adapters[0].b.rows, total = layout.foldStart.back();
  FactorsAsStacked* factors = nullptr;
  if (o.projectHeldOut) {
    factors = &keptFactors;
    factors->a.resize(total, dIn);
    factors->b.resize(total, dOut);
    factors->norm.assign(adapters.size(), 0.0);
    factors->scale.assign(adapters.size(), 1.0);
  }
  Stack a, b;
  a.rows.swap(kept[0]);
  b.rows.swap(kept[1]);
  formStacks(adapters, layout, o, a, b, factors);  // resizes: no new memory when the shape repeats
  side(a, layout, folds, o, warmA, o.componentsA, o.curveA, o.seed, out.curveA, out.foldA, out.present);
  side(b, layout, folds, o, warmB, o.componentsB, o.curveB, o.seed + 1, out.curveB, out.foldB, out.present);
  a.rows.swap(kept[0]);
  b.rows.swap(kept[1]);
  if (factors == nullptr) return out;
  // Each adapter on its own fold's basis: as projectModule and factorOverlaps would give.
  out.heldOut.assign(adapters.size(), HeldOutProjection{});
  // Every fold's basis as the projection reads it, prepared once for its adapters.
  std::vector<std::unique_ptr<ProjectionBasis>> foldBasis(out.present.size());
  for (size_t f = 0; f < foldBasis.size(); ++f) {
    if (!out.present[f]) continue;
    const SideBasis &sa = out.foldA[f], &sb = out.foldB[f];
    foldBasis[f] = std::make_unique<ProjectionBasis>(
        ModuleBasis{{sa.components.data(), dIn, sa.k}, {sb.components.data(), dOut, sb.k}, nullptr, nullptr});
  }
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic)
  for (long i = 0; i < static_cast<long>(adapters.size()); ++i) {
    const int32_t f = folds[i];
    if (!out.present[f]) continue;
    try {
      const ProjectionBasis& basis = *foldBasis[f];
      const Index ka = basis.vA.cols(), kb = basis.uB.cols();
      HeldOutProjection& h = out.heldOut[i];
      const Index r = layout.rank[i];
      h.alpha.resize(ka, r);
      h.beta.resize(kb, r);
      projectStackedFactors(factors->a.data() + layout.at[i] * dIn, factors->b.data() + layout.at[i] * dOut, r,
                            factors->norm[i], factors->scale[i], basis, {h.alpha.data(), ka, r},
                            {h.beta.data(), kb, r}, h.norm, h.error);
      pairOverlaps(adapters[i], basis.vA, basis.uB, h.overlapA, h.overlapB);
      h.present = true;
    } catch (...) {
#pragma omp critical(eigenlorax_folds_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  return out;
}

void factorOverlaps(const std::vector<FactorPair>& adapters, ConstMatView basisA, ConstMatView basisB,
                    double* overlapA, double* overlapB) {
  if (adapters.empty()) throw CoreError(code::kInvalidArgument, "adapters: expected at least one adapter");
  const Index dIn = basisA.rows, dOut = basisB.rows;
  for (size_t i = 0; i < adapters.size(); ++i) {
    const std::string name = "adapters[" + std::to_string(i) + "]";
    const Index r = adapters[i].a.rows;
    if (r < 1) throw CoreError(code::kInvalidArgument, name + ".A: expected at least one row");
    requireShape((name + ".A").c_str(), r, adapters[i].a.cols, r, dIn);
    requireShape((name + ".B").c_str(), adapters[i].b.rows, adapters[i].b.cols, dOut, r);
  }
  if (basisA.cols < 1 || basisB.cols < 1) throw CoreError(code::kInvalidArgument, "basisA, basisB: expected at least one column");
  const ColMatF componentsA = basisA.map(), componentsB = basisB.map();
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic)
  for (long i = 0; i < static_cast<long>(adapters.size()); ++i) {
    try {
      const FactorPair& p = adapters[i];
      if (!allFinite(p.a) || !allFinite(p.b)) {
        throw CoreError(code::kNonFinite, "adapters[" + std::to_string(i) + "]: factors contain NaN or Inf");
      }
      pairOverlaps(p, componentsA, componentsB, overlapA[i], overlapB[i]);
    } catch (...) {
#pragma omp critical(eigenlorax_folds_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace eigenlorax
