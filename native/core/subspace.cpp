#include "subspace.h"

#include <Eigen/Householder>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <new>
#include <string>

namespace eigenlorax {
namespace {

using VecD = Eigen::VectorXd;

std::string adapterName(size_t i) { return "adapters[" + std::to_string(i) + "]"; }

// m (d x k) = q (d x c) r (c x k), c = min(d, k).
void thinQr(const ColMatD& m, ColMatD& q, ColMatD& r) {
  const Index d = m.rows(), k = m.cols(), c = std::min(d, k);
  Eigen::HouseholderQR<ColMatD> qr(m);
  q = ColMatD::Identity(d, c);
  q.applyOnTheLeft(qr.householderQ());
  r = qr.matrixQR().topRows(c).template triangularView<Eigen::Upper>();
}

// ||P Q^T||_F for P: d_out x k, Q: d_in x k, through the QR of each: ||Rp Rq^T||_F.
double productNorm(const ColMatD& p, const ColMatD& q) {
  ColMatD qp, rp, qq, rq;
  thinQr(p, qp, rp);
  thinQr(q, qq, rq);
  return (rp * rq.transpose()).norm();
}

// The factors of one adapter as stacked, in double, with r rows of A (zero-padded when the
// canonical rank is smaller) and the scale that multiplies B A.
struct Factors {
  ColMatD a;  // r x d_in
  ColMatD b;  // d_out x r
  double scale = 1.0;
  double norm = 0.0;  // ||scale B A||_F
};

Factors stackedFactors(const FactorPair& p, Stacking stacking) {
  Factors f;
  const Index r = p.a.rows, dIn = p.a.cols, dOut = p.b.rows;
  const ColMatD b = p.b.map().cast<double>();
  const ColMatD aT = p.a.map().transpose().cast<double>();
  if (stacking == Stacking::Raw) {
    f.a = aT.transpose();
    f.b = b;
    f.scale = p.scale;
    f.norm = std::abs(p.scale) * productNorm(b, aT);
    return f;
  }
  // Balanced SVD factors of dW = s B A: QR of B and A^T, SVD of the small core.
  ColMatD qb, rb, qa, ra;
  thinQr(b, qb, rb);
  thinQr(aT, qa, ra);
  const ColMatD core = p.scale * rb * ra.transpose();
  Eigen::JacobiSVD<ColMatD> svd(core, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const VecD root = svd.singularValues().cwiseSqrt();
  const Index c = root.size();
  f.b = ColMatD::Zero(dOut, r);
  f.a = ColMatD::Zero(r, dIn);
  f.b.leftCols(c) = qb * svd.matrixU() * root.asDiagonal();
  f.a.topRows(c) = (qa * svd.matrixV() * root.asDiagonal()).transpose();
  f.scale = 1.0;
  f.norm = svd.singularValues().norm();
  return f;
}

// Runs body(i) for i in [0, count) in parallel; the first exception is rethrown after.
template <typename Body>
void parallelFor(size_t count, Body body) {
  std::atomic<bool> failed{false};
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic)
  for (long i = 0; i < static_cast<long>(count); ++i) {
    if (failed.load()) continue;
    try {
      body(static_cast<size_t>(i));
    } catch (...) {
#pragma omp critical(eigenlorax_parallel_for_error)
      {
        if (!failed.exchange(true)) error = std::current_exception();
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
                                                " components but received " + std::to_string(m.cols));
  }
}

// Stacked rows (sum r x d) of one side: A'_i rows, or B'_i columns, times w_i.
RowMatF stackSide(const std::vector<Factors>& factors, const std::vector<double>& weights, bool sideA, Index d,
                  Index totalRank) {
  RowMatF out(totalRank, d);
  Index row = 0;
  for (size_t i = 0; i < factors.size(); ++i) {
    const ColMatD& m = sideA ? factors[i].a : factors[i].b;
    const Index r = sideA ? m.rows() : m.cols();
    if (sideA) out.middleRows(row, r) = (weights[i] * m).cast<float>();
    else out.middleRows(row, r) = (weights[i] * m.transpose()).cast<float>();
    row += r;
  }
  return out;
}

double centerAndEnergy(RowMatF& stacked, float* mean) {
  if (mean != nullptr) {
    const Eigen::RowVectorXd mu = stacked.cast<double>().colwise().mean();
    Eigen::Map<Eigen::RowVectorXf>(mean, stacked.cols()) = mu.cast<float>();
    stacked.rowwise() -= mu.cast<float>();
  }
  double energy = 0;
  for (Index i = 0; i < stacked.rows(); ++i) energy += stacked.row(i).cast<double>().squaredNorm();
  return energy;
}

// Right singular vectors of the stacked side: the components.
void topComponents(const RowMatF& stacked, const ModuleSubspaceOptions& o, uint64_t seed, MatView components,
                   float* singular) {
  const Index k = components.cols;
  RowMatF u(stacked.rows(), k);
  RsvdOptions ro;
  ro.rank = k;
  ro.oversample = o.oversample;
  ro.powerIters = o.powerIters;
  ro.seed = seed;
  rsvd({stacked.data(), stacked.rows(), stacked.cols()}, ro, {u.data(), u.rows(), u.cols()}, singular, components);
}

}  // namespace

void checkModuleSubspace(const std::vector<FactorPair>& adapters, const ModuleSubspaceOptions& o,
                         const ModuleSubspaceOutputs& out) {
  Index dIn = 0, dOut = 0, total = 0;
  checkPairs(adapters, dIn, dOut, total);
  checkComponents("componentsA", out.componentsA.view(), dIn, std::min(dIn, total));
  checkComponents("componentsB", out.componentsB.view(), dOut, std::min(dOut, total));
  if (o.center && (out.meanA == nullptr || out.meanB == nullptr)) {
    throw CoreError(code::kInvalidArgument, "meanA, meanB: expected output vectors when centring");
  }
}

ModuleSubspaceInfo buildModuleSubspace(const std::vector<FactorPair>& adapters, const ModuleSubspaceOptions& o,
                                       const ModuleSubspaceOutputs& out) {
  checkModuleSubspace(adapters, o, out);
  const Index dIn = adapters[0].a.cols, dOut = adapters[0].b.rows;
  Index total = 0;
  for (const FactorPair& p : adapters) total += p.a.rows;
  for (size_t i = 0; i < adapters.size(); ++i) {
    if (!adapters[i].a.map().allFinite() || !adapters[i].b.map().allFinite()) {
      throw CoreError(code::kNonFinite, adapterName(i) + ": factors contain NaN or Inf");
    }
  }

  std::vector<Factors> factors(adapters.size());
  parallelFor(adapters.size(), [&](size_t i) { factors[i] = stackedFactors(adapters[i], o.stacking); });

  ModuleSubspaceInfo info;
  std::vector<double> weights(adapters.size(), 1.0);
  for (size_t i = 0; i < factors.size(); ++i) {
    info.norms.push_back(factors[i].norm);
    if (o.stacking == Stacking::Canonical && o.weighting == Weighting::Equal) {
      weights[i] = factors[i].norm > 0 ? 1.0 / std::sqrt(factors[i].norm) : 0.0;
    }
  }

  {
    RowMatF stackedA = stackSide(factors, weights, true, dIn, total);
    info.energyA = centerAndEnergy(stackedA, o.center ? out.meanA : nullptr);
    topComponents(stackedA, o, o.seed, out.componentsA, out.singularA);
  }
  {
    RowMatF stackedB = stackSide(factors, weights, false, dOut, total);
    info.energyB = centerAndEnergy(stackedB, o.center ? out.meanB : nullptr);
    topComponents(stackedB, o, o.seed + 1, out.componentsB, out.singularB);
  }
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
  if (alphas.size() != adapters.size() || betas.size() != adapters.size()) {
    throw CoreError(code::kInvalidArgument, "alphas, betas: expected one output per adapter (" +
                                                std::to_string(adapters.size()) + ")");
  }
  for (size_t i = 0; i < adapters.size(); ++i) {
    const Index r = adapters[i].a.rows;
    requireShape(("alphas[" + std::to_string(i) + "]").c_str(), alphas[i].rows, alphas[i].cols,
                 basis.componentsA.cols, r);
    requireShape(("betas[" + std::to_string(i) + "]").c_str(), betas[i].rows, betas[i].cols,
                 basis.componentsB.cols, r);
  }
}

void projectModule(const std::vector<FactorPair>& adapters, Stacking stacking, const ModuleBasis& basis,
                   const std::vector<MatView>& alphas, const std::vector<MatView>& betas, double* norms,
                   double* errors) {
  checkProjectModule(adapters, basis, alphas, betas);
  const ColMatD vA = basis.componentsA.map().cast<double>();
  const ColMatD uB = basis.componentsB.map().cast<double>();
  const Index dIn = vA.rows(), dOut = uB.rows();
  VecD muA = VecD::Zero(dIn), muB = VecD::Zero(dOut);
  if (basis.meanA != nullptr) muA = Eigen::Map<const Eigen::VectorXf>(basis.meanA, dIn).cast<double>();
  if (basis.meanB != nullptr) muB = Eigen::Map<const Eigen::VectorXf>(basis.meanB, dOut).cast<double>();

  parallelFor(adapters.size(), [&](size_t i) {
    const Factors f = stackedFactors(adapters[i], stacking);
    const Index r = f.a.rows();
    const ColMatD aCentered = f.a.rowwise() - muA.transpose();  // r x d_in
    const ColMatD bCentered = f.b.colwise() - muB;              // d_out x r
    const ColMatD alpha = vA.transpose() * aCentered.transpose();  // K_A x r
    const ColMatD beta = uB.transpose() * bCentered;               // K_B x r
    alphas[i].map() = alpha.cast<float>();
    betas[i].map() = beta.cast<float>();

    const ColMatD aHat = (vA * alpha).colwise() + muA;  // d_in x r (A_hat^T)
    const ColMatD bHat = (uB * beta).colwise() + muB;   // d_out x r
    // dW - dW_hat = s [B, -B_hat] [A; A_hat]
    ColMatD p(dOut, 2 * r), q(dIn, 2 * r);
    p << f.b, -bHat;
    q << f.a.transpose(), aHat;
    norms[i] = f.norm;
    errors[i] = std::abs(f.scale) * productNorm(p, q);
  });
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
