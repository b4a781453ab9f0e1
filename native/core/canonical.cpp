#include "canonical.h"

#include <Eigen/Eigenvalues>
#include <Eigen/Householder>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <cstring>

#include "column_dots.h"
#include "linalg.h"
#include "subspace.h"

namespace eigenlorax {
namespace {

void householderQr(const ColMatD& m, ColMatD& q, ColMatD& r) {
  const Index d = m.rows(), k = m.cols(), c = std::min(d, k);
  Eigen::HouseholderQR<ColMatD> qr(m);
  q = ColMatD::Identity(d, c);
  q.applyOnTheLeft(qr.householderQ());
  r = qr.matrixQR().topRows(c).template triangularView<Eigen::Upper>();
}

// Thin SVD core = U diag(sigma) V^T of the small core. Square cores (the usual case) through
// the eigendecomposition of core^T core (16 x 16: about 16 us with the QR below, against 55
// for Jacobi): V from its eigenvectors, largest first; U from the
// Householder QR of core V (= U S), orthonormal even where S is tiny (core V / S is noise
// there); sigma = |diag R| = ||core v_j||, accurate to eps ||core|| (the eigenvalues' square
// roots only to eps ||core||^2 / sigma). Non-square ones (factors shorter than their rank)
// by Jacobi.
void coreSvd(const ColMatD& core, ColMatD& u, Eigen::VectorXd& sigma, ColMatD& v) {
  const Index c = core.cols();
  if (core.rows() != c) {
    Eigen::JacobiSVD<ColMatD> svd(core, Eigen::ComputeThinU | Eigen::ComputeThinV);
    u = svd.matrixU();
    v = svd.matrixV();
    sigma = svd.singularValues();
    return;
  }
  const Eigen::SelfAdjointEigenSolver<ColMatD> eig(core.transpose() * core);
  v = eig.eigenvectors().rowwise().reverse();
  u.noalias() = core * v;
  Eigen::HouseholderQR<Eigen::Ref<ColMatD>> qr(u);  // in place
  sigma = qr.matrixQR().diagonal();
  ColMatD q = ColMatD::Identity(c, c);
  q.applyOnTheLeft(qr.householderQ());
  for (Index j = 0; j < c; ++j) {
    if (sigma(j) < 0) q.col(j) = -q.col(j);
  }
  sigma = sigma.cwiseAbs();
  u.swap(q);
}

}  // namespace

CanonicalWork& canonicalWork() {
  thread_local CanonicalWork work;
  return work;
}

void thinQr(const ColMatD& m, ColMatD& q, ColMatD& r, ColMatD& gram) {
  q = m;
  if (choleskyQr2(q, r, gram)) return;
  householderQr(m, q, r);
}

// Bound on cond(X) for gramFactor: one CholeskyQR step leaves X R^-1 orthonormal
// to ~u cond^2 (1e-10 here, in double), far below float32's rounding of the results.
constexpr double kMaxGramCondition = 1e3;

bool gramFactor(const float* x, Index d, Index c, ColMatD& r, ColMatD& rInv, ColMatD& gram) {
  if (d < c) return false;
  gram.resize(c, c);
  columnGram(x, d, c, d, gram.data(), c);
  Eigen::LLT<Eigen::Ref<ColMatD>, Eigen::Lower> llt(gram);  // in place
  if (llt.info() != Eigen::Success) return false;
  r = gram.triangularView<Eigen::Lower>().transpose();
  rInv.setIdentity(c, c);
  r.triangularView<Eigen::Upper>().solveInPlace(rInv);
  const double bound = r.norm() * rInv.norm();
  return std::isfinite(bound) && bound <= kMaxGramCondition;
}

void stackedFactors(const FactorPair& p, Stacking stacking, CanonicalWork& w) {
  const Index r = p.a.rows, dIn = p.a.cols, dOut = p.b.rows;
  // A (r x d_in, row-major) has the memory of A^T (d_in x r, column-major); B (d_out x r,
  // row-major) is copied column-major for the column products (256 KiB at 4096 x 16).
  w.bCol = p.b.map();
  // Well-conditioned factors (the usual case): only R from the r x r Grams, Q = X R^-1 is
  // never formed. Otherwise thin QR (CholeskyQR2 or Householder) of the factors in double.
  const bool viaGram = gramFactor(w.bCol.data(), dOut, r, w.rb, w.rbInv, w.gram) &&
                       gramFactor(p.a.data, dIn, r, w.ra, w.raInv, w.gram);
  if (!viaGram) {
    w.at = Eigen::Map<const ColMatF>(p.a.data, dIn, r).cast<double>();
    w.b = w.bCol.cast<double>();
    thinQr(w.b, w.qb, w.rb, w.gram);
    thinQr(w.at, w.qa, w.ra, w.gram);
  }
  w.core.noalias() = w.rb * w.ra.transpose();
  const Eigen::Map<const ColMatF> atIn(p.a.data, dIn, r);
  const ColMatF& bIn = w.bCol;
  if (stacking == Stacking::Raw) {
    w.atF = atIn;
    w.bF = bIn;
    w.scale = p.scale;
    w.norm = std::abs(p.scale) * w.core.norm();
    return;
  }
  // Balanced SVD factors: B' = Qb U S^1/2, A'^T = Qa V S^1/2 (Q = X R^-1 on the Gram path).
  // On the Gram path the d x r product is X (R^-1 U S^1/2): the float input times an r x r
  // matrix, in float (the results are stored in float; in double, with the casts, it was
  // a third of a 7B module's build).
  w.core *= p.scale;
  coreSvd(w.core, w.u, w.sigma, w.v);
  const Eigen::VectorXd root = w.sigma.cwiseSqrt();
  const Index c = root.size();
  const auto balanced = [&](const ColMatD& factors, const auto& input, const ColMatD& q, const ColMatD& rInv, Index d,
                            ColMatF& out) {
    w.tmp.noalias() = factors * root.asDiagonal();
    out.resize(d, r);
    if (viaGram) {
      w.core.noalias() = rInv.triangularView<Eigen::Upper>() * w.tmp;
      out.leftCols(c).noalias() = input * w.core.cast<float>();
    } else {
      w.core.noalias() = q * w.tmp;
      out.leftCols(c) = w.core.cast<float>();
    }
    out.rightCols(r - c).setZero();
  };
  balanced(w.u, bIn, w.qb, w.rbInv, dOut, w.bF);
  balanced(w.v, atIn, w.qa, w.raInv, dIn, w.atF);
  w.scale = 1.0;
  w.norm = w.sigma.norm();
}

}  // namespace eigenlorax
