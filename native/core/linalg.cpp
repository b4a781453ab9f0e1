#include "linalg.h"

#include <Eigen/Cholesky>
#include <Eigen/Householder>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "finite.h"
#include "random.h"
#include "stack_products.h"
#include "threads.h"

namespace eigenlorax {
namespace {

// allFinite (finite.h) over blocks of 64 Ki entries on every thread, for large arrays.
bool allFiniteParallel(const float* data, Index count) {
  constexpr Index kBlock = Index(1) << 16;
  int bad = 0;
#pragma omp parallel for reduction(| : bad) schedule(static) if (count > (Index(1) << 20))
  for (Index b = 0; b < count; b += kBlock) bad |= !allFinite(data + b, static_cast<size_t>(std::min(kBlock, count - b)));
  return bad == 0;
}

// maxAbsBits (finite.h) over blocks of 64 Ki entries on every thread, for large arrays.
uint32_t maxAbsBitsParallel(const float* data, Index count) {
  constexpr Index kBlock = Index(1) << 16;
  uint32_t top = 0;
#pragma omp parallel for reduction(max : top) schedule(static) if (count > (Index(1) << 20))
  for (Index b = 0; b < count; b += kBlock) {
    top = std::max(top, maxAbsBits(data + b, static_cast<size_t>(std::min(kBlock, count - b))));
  }
  return top;
}

void requireFinite(const char* name, const ConstMapF& m) {
  if (!allFiniteParallel(m.data(), m.size())) {
    throw CoreError(code::kNonFinite, std::string(name) + ": contains NaN or Inf");
  }
}

// Replaces y (m x l, m >= l) by the thin Q of its Householder QR.
template <typename Mat>
void orthonormalizeInPlace(Mat& y) {
  using Scalar = typename Mat::Scalar;
  using Work = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const Index m = y.rows();
  const Index l = y.cols();
  Eigen::HouseholderQR<Eigen::Ref<Work>> qr(y);  // in place: reflectors stored in y
  Work q = Work::Identity(m, l);
  q.applyOnTheLeft(qr.householderQ());
  // Make diag(R) >= 0 so Q is unique for full-rank input.
  for (Index j = 0; j < l; ++j) {
    if (qr.matrixQR()(j, j) < Scalar(0)) q.col(j) = -q.col(j);
  }
  y.swap(q);
}

// CholeskyQR2 is backward stable while cond stays below about u^-1/2 (1e8 in double)
// (Yamamoto et al. 2015). The diagonal of R bounds the condition number from below; past
// this ratio Householder is taken.
constexpr double kMinDiagonalRatio = 1e-6;

// Row blocks of a CholeskyQR step: fixed, so the Gram is summed in the same order (and every
// row solved the same way) at any thread count.
constexpr Index kCholeskyRowBlock = 1024;

// body(begin, end) over the fixed row blocks of `rows`, in parallel unless already inside
// a parallel region (a subspace build canonicalises its factors one per thread).
template <typename Body>
void forRowBlocks(Index rows, Body body) {
  const Index blocks = (rows + kCholeskyRowBlock - 1) / kCholeskyRowBlock;
  const auto run = [&](Index b) { body(b * kCholeskyRowBlock, std::min(rows, (b + 1) * kCholeskyRowBlock)); };
#ifdef _OPENMP
  if (blocks > 1 && !omp_in_parallel() && currentThreads() > 1) {
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(std::min<Index>(blocks, currentThreads())))
    for (Index b = 0; b < blocks; ++b) run(b);
    return;
  }
#endif
  for (Index b = 0; b < blocks; ++b) run(b);
}

// One CholeskyQR step in place: q <- q R^-1 with R^T R = q^T q. False (q untouched) when
// the Gram is not safely positive definite. The Gram's rank update and the triangular
// solve are single-threaded in Eigen; by row blocks they use every thread (at 8000 x 74
// the five steps of an rsvd took 20 ms on one thread).
bool choleskyStep(ColMatD& q, ColMatD& r, ColMatD& gram) {
  const Index rows = q.rows(), c = q.cols();
  const Index blocks = (rows + kCholeskyRowBlock - 1) / kCholeskyRowBlock;
  // The calling thread's partial Grams, named here: in the lambda, on another thread, the
  // name would denote that thread's own (empty) vector.
  thread_local std::vector<ColMatD> keptPartials;
  std::vector<ColMatD>& partial = keptPartials;
  if (static_cast<Index>(partial.size()) < blocks) partial.resize(static_cast<size_t>(blocks));
  forRowBlocks(rows, [&](Index r0, Index r1) {
    ColMatD& g = partial[static_cast<size_t>(r0 / kCholeskyRowBlock)];
    g.setZero(c, c);
    g.selfadjointView<Eigen::Lower>().rankUpdate(q.middleRows(r0, r1 - r0).transpose());
  });
  gram = partial[0];
  for (Index b = 1; b < blocks; ++b) gram += partial[static_cast<size_t>(b)];
  Eigen::LLT<Eigen::Ref<ColMatD>, Eigen::Lower> llt(gram);  // in place
  if (llt.info() != Eigen::Success) return false;
  const auto diag = gram.diagonal();
  const double hi = diag.cwiseAbs().maxCoeff(), lo = diag.cwiseAbs().minCoeff();
  if (!(hi > 0) || !(lo >= kMinDiagonalRatio * hi) || !std::isfinite(hi)) return false;
  r = gram.triangularView<Eigen::Lower>().transpose();
  forRowBlocks(rows, [&](Index r0, Index r1) {
    Eigen::Block<ColMatD> block = q.middleRows(r0, r1 - r0);
    r.triangularView<Eigen::Upper>().solveInPlace<Eigen::OnTheRight>(block);
  });
  return true;
}

// y (m x l float) <- its thin Q with diag(R) >= 0: CholeskyQR2 in double where safe (the
// same Q as Householder's for full-rank input, up to rounding), Householder otherwise
// (rank-deficient sketches: Householder completes the basis, CholeskyQR cannot).
void orthonormalizeSketch(ColMatF& y, ColMatD& work, ColMatD& r, ColMatD& gram) {
  work = y.cast<double>();
  if (y.rows() >= y.cols() && choleskyQr2(work, r, gram)) {
    y = work.cast<float>();
    return;
  }
  orthonormalizeInPlace(y);
}

// Gaussian test matrix, one random stream per column (seeded from `seed` and the column
// index), so it is generated in parallel and identical for every thread count.
void fillGaussianColumns(ColMatF& omega, uint64_t seed) {
  const Index cols = omega.cols();
#pragma omp parallel for schedule(static)
  for (Index j = 0; j < cols; ++j) {
    Rng rng(seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(j));
    rng.fillGaussian(omega.col(j).data(), omega.rows());
  }
}

// Largest-magnitude entry of each u column made positive; v columns follow.
template <typename U, typename V>
void fixSigns(U& u, V& v) {
  for (Index j = 0; j < u.cols(); ++j) {
    Index at = 0;
    u.col(j).cwiseAbs().maxCoeff(&at);
    if (u(at, j) < 0) {
      u.col(j) = -u.col(j);
      v.col(j) = -v.col(j);
    }
  }
}

}  // namespace

void checkRsvdArguments(ConstMatView a, const RsvdOptions& o, MatView u, MatView v) {
  const Index m = a.rows, n = a.cols, k = o.rank;
  if (m <= 0 || n <= 0) {
    throw CoreError(code::kInvalidArgument, "matrix: expected a non-empty matrix, received " + shapeString(m, n));
  }
  if (k < 1 || k > std::min(m, n)) {
    throw CoreError(code::kInvalidArgument, "rank: expected an integer in [1, min(rows, cols) = " +
                                                std::to_string(std::min(m, n)) + "], received " +
                                                std::to_string(k));
  }
  if (o.oversample < 0) {
    throw CoreError(code::kInvalidArgument, "oversample: expected a non-negative integer, received " +
                                                std::to_string(o.oversample));
  }
  if (o.powerIters < 0) {
    throw CoreError(code::kInvalidArgument, "powerIters: expected a non-negative integer, received " +
                                                std::to_string(o.powerIters));
  }
  requireShape("U", u.rows, u.cols, m, k);
  requireShape("V", v.rows, v.cols, n, k);
}

namespace {

// s[j] = sigma_j 2^exponent in float, or ERR_NON_FINITE naming the first that is beyond
// float32's range (the input's entries are, but its singular values need not be).
void storeSingularValues(const Eigen::VectorXd& sigma, Index k, int exponent, float* s) {
  for (Index j = 0; j < k; ++j) {
    const double value = std::ldexp(sigma(j), exponent);
    if (!(value <= static_cast<double>(FLT_MAX))) {
      char text[32];
      std::snprintf(text, sizeof text, "%.3g", value);
      throw CoreError(code::kNonFinite, "S[" + std::to_string(j) + "]: singular value " + std::to_string(j + 1) +
                                            " is " + text + ", beyond float32's range (3.4e38); scale the matrix down");
    }
    s[j] = static_cast<float>(value);
  }
}

void exactSvd(const ConstMapF& a, Index k, int exponent, MatView u, float* s, MatView v) {
  const ColMatD ad = a.cast<double>();
  Eigen::BDCSVD<ColMatD> svd(ad, Eigen::ComputeThinU | Eigen::ComputeThinV);
  ColMatD uk = svd.matrixU().leftCols(k);
  ColMatD vk = svd.matrixV().leftCols(k);
  fixSigns(uk, vk);
  u.map() = uk.cast<float>();
  v.map() = vk.cast<float>();
  storeSingularValues(svd.singularValues(), k, exponent, s);
}

}  // namespace

bool rsvdPrefersExact(Index rows, Index cols, Index rank, Index oversample) {
  return std::min(rows, cols) <= 2 * (rank + oversample);
}

namespace {

// The randomized path's work matrices, kept by the calling thread between calls: fresh
// ones are first touched at every call, and page faults are expensive on virtual machines
// (on the 2-core VM here they cost a 4096 x 4096 rsvd about 15% of its time). Eigen's
// resize keeps the memory only when the size is unchanged, so each side has its own (one
// buffer for both sides of a 4096 x 8000 rsvd was reallocated at every half step: 8 ms of
// its 140), and calls of one shape (the modules of a model) reuse them. Over
// kKeepScratchBytes they are freed at the end of the call.
struct RsvdScratch {
  ColMatF omega, q, z, uk, weighted;
  ColMatD workQ, workZ, r, gram, qb, vk;
  size_t bytes() const {
    return sizeof(float) * static_cast<size_t>(omega.size() + q.size() + z.size() + uk.size() + weighted.size()) +
           sizeof(double) * static_cast<size_t>(workQ.size() + workZ.size() + r.size() + gram.size() + qb.size() + vk.size());
  }
};
thread_local RsvdScratch rsvdScratch;
constexpr size_t kKeepScratchBytes = size_t(64) << 20;

// The randomized path on diag(weights) a (a itself when weights is null), whose singular
// values are 2^-exponent times the caller's. With weights, S x = W (a x) and
// S^T y = a^T (W y): the m x l products are weighed, not a.
RsvdInfo randomizedSvd(const ConstMapF& a, const RsvdOptions& o, int exponent, MatView u, float* s, MatView v,
                       const float* weights = nullptr) {
  const Index m = a.rows(), n = a.cols(), k = o.rank;
  RsvdScratch& ws = rsvdScratch;
  struct ReleaseWhenLarge {
    RsvdScratch& ws;
    ~ReleaseWhenLarge() {
      if (ws.bytes() > kKeepScratchBytes) ws = RsvdScratch{};
    }
  } releaseWhenLarge{ws};

  const Index l = std::min(k + o.oversample, std::min(m, n));
  ColMatF& omega = ws.omega;
  omega.resize(n, l);
  fillGaussianColumns(omega, o.seed);

  // Range finder: Q spans (A A^T)^q A Omega, re-orthonormalised at every half step.
  const auto rowWeights = [&] { return Eigen::Map<const Eigen::VectorXf>(weights, m).array(); };
  // S x and S^T y for S = diag(weights) a.
  const auto times = [&](const ColMatF& x, ColMatF& y) {
    stackTimes(a, x, y);
    if (weights != nullptr) y.array().colwise() *= rowWeights();
  };
  const auto transposeTimes = [&](const ColMatF& y, ColMatF& x) {
    if (weights == nullptr) return stackTransposeTimes(a, y, x);
    ws.weighted = y;
    ws.weighted.array().colwise() *= rowWeights();
    stackTransposeTimes(a, ws.weighted, x);
  };
  ColMatF& q = ws.q;
  ColMatD &r = ws.r, &gram = ws.gram;
  times(omega, q);
  orthonormalizeSketch(q, ws.workQ, r, gram);
  ColMatF& z = ws.z;
  for (int it = 0; it < o.powerIters; ++it) {
    transposeTimes(q, z);
    orthonormalizeSketch(z, ws.workZ, r, gram);
    times(z, q);
    orthonormalizeSketch(q, ws.workQ, r, gram);
  }

  // B = Q^T A, computed as B^T = A^T Q (n x l). SVD of B through QR of B^T:
  // B^T = Qb R  =>  B = R^T Qb^T = Ur S (Qb Vr)^T, with the l x l core in double.
  transposeTimes(q, z);
  ColMatD& qb = ws.qb;
  qb = z.cast<double>();
  Eigen::JacobiSVD<ColMatD> core;
  ColMatD& vk = ws.vk;
  vk.resize(n, k);
  if (choleskyQr2(qb, r, gram)) {
    core.compute(r.transpose(), Eigen::ComputeFullU | Eigen::ComputeFullV);
    vk.noalias() = qb * core.matrixV().leftCols(k);
  } else {
    qb = z.cast<double>();
    Eigen::HouseholderQR<Eigen::Ref<ColMatD>> qrB(qb);
    core.compute(qrB.matrixQR().topRows(l).template triangularView<Eigen::Upper>().transpose(),
                 Eigen::ComputeFullU | Eigen::ComputeFullV);
    // V = Qb Vr[:, :k], applying the reflectors to the k columns rather than forming Qb.
    vk.setZero();
    vk.topRows(l) = core.matrixV().leftCols(k);
    vk.applyOnTheLeft(qrB.householderQ());
  }
  ColMatF& uk = ws.uk;
  uk.noalias() = q * core.matrixU().leftCols(k).cast<float>();
  fixSigns(uk, vk);
  u.map() = uk;
  v.map() = vk.cast<float>();
  storeSingularValues(core.singularValues(), k, exponent, s);
  return {false, l};
}

// rsvd of diag(weights) a (a when weights is null) after its checks, with top = maxAbsBits
// of that matrix.
RsvdInfo checkedRsvd(ConstMatView av, const RsvdOptions& o, uint32_t top, MatView u, float* s, MatView v,
                     const float* weights = nullptr) {
  const ConstMapF a = av.map();
  if (top >= 0x7f800000u) throw CoreError(code::kNonFinite, "matrix: contains NaN or Inf");
  const Index m = av.rows, n = av.cols, k = o.rank;

  const bool exact = o.method == SvdMethod::Exact ||
                     (o.method == SvdMethod::Auto && rsvdPrefersExact(m, n, k, o.oversample));
  if (exact) {  // in double: no float32 overflow inside
    if (weights == nullptr) {
      exactSvd(a, k, 0, u, s, v);
    } else {
      const RowMatF weighted = Eigen::Map<const Eigen::VectorXf>(weights, m).asDiagonal() * a;
      exactSvd(ConstMapF(weighted.data(), m, n), k, 0, u, s, v);
    }
    return {true, 0};
  }
  // The float products of the randomized path overflow (or their squares, in the
  // Householder norms, underflow) long before the singular values leave float range: a
  // 300 x 200 matrix of 1e36s has sigma_1 = 2.4e38. Far from 1, work on a copy scaled by
  // a power of two (exact: the same U and V, S scaled back in double).
  float largest;
  std::memcpy(&largest, &top, 4);
  int exponent = 0;
  std::frexp(static_cast<double>(largest), &exponent);
  if (top == 0 || std::abs(exponent) <= 32) return randomizedSvd(a, o, 0, u, s, v, weights);
  // With weights, a's own scale is not the weighted matrix's: scale their product.
  const RowMatF scaled =
      weights == nullptr
          ? RowMatF((a.cast<double>() * std::ldexp(1.0, -exponent)).cast<float>())
          : RowMatF(((Eigen::Map<const Eigen::VectorXf>(weights, m).asDiagonal() * a).cast<double>() * std::ldexp(1.0, -exponent))
                        .cast<float>());
  return randomizedSvd(ConstMapF(scaled.data(), m, n), o, exponent, u, s, v);
}

}  // namespace

void releaseRsvdScratch() {
  rsvdScratch = RsvdScratch{};
  releaseStackProductsScratch();
}

RsvdInfo rsvd(ConstMatView av, const RsvdOptions& o, MatView u, float* s, MatView v) {
  checkRsvdArguments(av, o, u, v);
  return checkedRsvd(av, o, maxAbsBitsParallel(av.data, av.rows * av.cols), u, s, v);
}

RsvdInfo rsvdWithMaxAbs(ConstMatView av, const RsvdOptions& o, uint32_t top, MatView u, float* s, MatView v) {
  checkRsvdArguments(av, o, u, v);
  return checkedRsvd(av, o, top, u, s, v);
}

RsvdInfo rsvdRowWeighted(ConstMatView av, const float* rowWeights, const RsvdOptions& o, uint32_t top, MatView u,
                         float* s, MatView v) {
  checkRsvdArguments(av, o, u, v);
  return checkedRsvd(av, o, top, u, s, v, rowWeights);
}

bool choleskyQr2(ColMatD& q, ColMatD& r, ColMatD& gram) {
  if (q.rows() < q.cols() || q.cols() < 1) return false;
  ColMatD r2;
  // The second step restores the orthogonality the first loses to cond(q)^2; R = R2 R1.
  if (!choleskyStep(q, r, gram) || !choleskyStep(q, r2, gram)) return false;
  r = (r2.triangularView<Eigen::Upper>() * r).eval();
  return true;
}

void orthonormalize(ConstMatView in, MatView out) {
  if (in.rows <= 0 || in.cols <= 0 || in.rows < in.cols) {
    throw CoreError(code::kInvalidArgument, "matrix: expected rows >= cols >= 1, received " +
                                                shapeString(in.rows, in.cols));
  }
  requireShape("out", out.rows, out.cols, in.rows, in.cols);
  requireFinite("matrix", in.map());
  ColMatF y = in.map();
  ColMatD work, r, gram;
  orthonormalizeSketch(y, work, r, gram);
  out.map() = y;
}

void completeBasis(ConstMatView basis, uint64_t seed, MatView out) {
  const Index m = basis.rows, k = basis.cols, extra = out.cols;
  if (m <= 0) throw CoreError(code::kInvalidArgument, "basis: expected at least one row");
  if (out.rows != m) requireShape("out", out.rows, out.cols, m, extra);
  if (extra < 1 || k + extra > m) {
    throw CoreError(code::kInvalidArgument, "extra: expected an integer in [1, rows - cols = " +
                                                std::to_string(m - k) + "], received " +
                                                std::to_string(extra));
  }
  ColMatD b = basis.map().cast<double>();
  if (k > 0) {
    if (!b.allFinite()) throw CoreError(code::kNonFinite, "basis: contains NaN or Inf");
    const double defect = (b.transpose() * b - ColMatD::Identity(k, k)).cwiseAbs().maxCoeff();
    if (defect > 1e-3) {
      throw CoreError(code::kInvalidArgument,
                      "basis: expected orthonormal columns but |B^T B - I| reaches " + std::to_string(defect));
    }
  }
  Rng rng(seed);
  ColMatD g(m, extra);
  rng.fillGaussian(g.data(), g.size());
  // Project out the basis twice ("twice is enough"), orthonormalise, and once more after,
  // so the new directions are orthogonal to the basis to working precision.
  for (int pass = 0; pass < 2; ++pass) {
    if (k > 0) g -= b * (b.transpose() * g);
    orthonormalizeInPlace(g);
  }
  out.map() = g.cast<float>();
}

}  // namespace eigenlorax
