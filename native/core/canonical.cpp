#include "canonical.h"

#include <Eigen/Cholesky>
#include <Eigen/Householder>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <cstring>

#include "subspace.h"

namespace eigenlorax {
namespace {

// CholeskyQR2 is backward stable while cond(m) stays below about u^-1/2 (1e8 in double)
// (Yamamoto et al. 2015). The diagonal of R bounds cond(m) from below; past this ratio the
// Householder path is taken.
constexpr double kMinDiagonalRatio = 1e-6;

// One CholeskyQR step in place: q <- q R^-1 with R^T R = q^T q. False (q untouched) when
// the Gram is not safely positive definite.
bool choleskyStep(ColMatD& q, ColMatD& r, ColMatD& gram) {
  const Index c = q.cols();
  gram.resize(c, c);
  gram.setZero();
  gram.selfadjointView<Eigen::Lower>().rankUpdate(q.transpose());
  Eigen::LLT<Eigen::Ref<ColMatD>, Eigen::Lower> llt(gram);  // in place
  if (llt.info() != Eigen::Success) return false;
  const auto diag = gram.diagonal();
  const double hi = diag.cwiseAbs().maxCoeff(), lo = diag.cwiseAbs().minCoeff();
  if (!(hi > 0) || !(lo >= kMinDiagonalRatio * hi) || !std::isfinite(hi)) return false;
  r = gram.triangularView<Eigen::Lower>().transpose();
  r.triangularView<Eigen::Upper>().solveInPlace<Eigen::OnTheRight>(q);
  return true;
}

void householderQr(const ColMatD& m, ColMatD& q, ColMatD& r) {
  const Index d = m.rows(), k = m.cols(), c = std::min(d, k);
  Eigen::HouseholderQR<ColMatD> qr(m);
  q = ColMatD::Identity(d, c);
  q.applyOnTheLeft(qr.householderQ());
  r = qr.matrixQR().topRows(c).template triangularView<Eigen::Upper>();
}

}  // namespace

bool allFiniteF(const float* data, Index count) {
  uint32_t bad = 0;
  for (Index i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, data + i, 4);
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

CanonicalWork& canonicalWork() {
  thread_local CanonicalWork work;
  return work;
}

void thinQr(const ColMatD& m, ColMatD& q, ColMatD& r, ColMatD& gram) {
  if (m.rows() >= m.cols()) {
    q = m;
    ColMatD r2;
    if (choleskyStep(q, r, gram)) {
      // Second pass: restores orthogonality lost to cond(m)^2 in the first; R = R2 R1.
      if (choleskyStep(q, r2, gram)) {
        r = (r2.triangularView<Eigen::Upper>() * r).eval();
        return;
      }
    }
  }
  householderQr(m, q, r);
}

void stackedFactors(const FactorPair& p, Stacking stacking, CanonicalWork& w) {
  const Index r = p.a.rows, dIn = p.a.cols, dOut = p.b.rows;
  // A (r x d_in, row-major) has the memory of A^T (d_in x r, column-major).
  w.at = Eigen::Map<const ColMatF>(p.a.data, dIn, r).cast<double>();
  w.b = p.b.map().cast<double>();
  thinQr(w.b, w.qb, w.rb, w.gram);
  thinQr(w.at, w.qa, w.ra, w.gram);
  w.core.noalias() = w.rb * w.ra.transpose();
  if (stacking == Stacking::Raw) {
    w.scale = p.scale;
    w.norm = std::abs(p.scale) * w.core.norm();
    return;
  }
  // Balanced SVD factors: B' = Qb U S^1/2, A'^T = Qa V S^1/2.
  w.core *= p.scale;
  Eigen::JacobiSVD<ColMatD> svd(w.core, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::VectorXd root = svd.singularValues().cwiseSqrt();
  const Index c = root.size();
  w.tmp.noalias() = svd.matrixU() * root.asDiagonal();
  w.b.resize(dOut, r);
  w.b.leftCols(c).noalias() = w.qb * w.tmp;
  w.b.rightCols(r - c).setZero();
  w.tmp.noalias() = svd.matrixV() * root.asDiagonal();
  w.at.resize(dIn, r);
  w.at.leftCols(c).noalias() = w.qa * w.tmp;
  w.at.rightCols(r - c).setZero();
  w.scale = 1.0;
  w.norm = svd.singularValues().norm();
}

}  // namespace eigenlorax
