#include "subspace_stream.h"

#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <string>

#include "canonical.h"
#include "finite.h"
#include "linalg.h"
#include "random.h"
#include "sum_squares.h"

namespace eigenlorax {
namespace {

// rsvd's Gaussian test matrix and orthonormalisation (linalg.cpp), repeated here so the
// stream follows rsvd step for step; keep the two in step.
void gaussianTestMatrix(ColMatF& omega, uint64_t seed) {
  const Index cols = omega.cols();
#pragma omp parallel for schedule(static)
  for (Index j = 0; j < cols; ++j) {
    Rng rng(seed * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(j));
    rng.fillGaussian(omega.col(j).data(), omega.rows());
  }
}

void orthonormalizeColumns(ColMatF& y) {
  const Index m = y.rows(), l = y.cols();
  Eigen::HouseholderQR<Eigen::Ref<ColMatF>> qr(y);
  ColMatF q = ColMatF::Identity(m, l);
  q.applyOnTheLeft(qr.householderQ());
  for (Index j = 0; j < l; ++j) {
    if (qr.matrixQR()(j, j) < 0.0f) q.col(j) = -q.col(j);
  }
  y.swap(q);
}

}  // namespace

bool streamNeedsExactPath(Index d, Index totalRank, Index k, Index oversample) {
  return rsvdPrefersExact(totalRank, d, k, oversample);
}

// One side: rsvd's state for S (sum r x d).
struct ModuleStream::Side {
  Index d = 0, k = 0, l = 0;
  int powerIters = 0;
  uint64_t seed = 0;
  bool center = false;
  ColMatF x;      // d x l: the test matrix, then orth(S^T Q) of the previous pass
  ColMatF acc;    // d x l: S^T q accumulated over the blocks
  ColMatD r;      // l x l: R of the TSQR of q = S x
  ColMatD stackTop;  // TSQR scratch
  Eigen::VectorXd sum;  // d: column sums (mean pass)
  Eigen::VectorXf mean; // d
  double energy = 0;
  ColMatF v;        // d x k components (after the last sketch pass)
  Eigen::VectorXf s;
  // Sign pass: per component, the largest-magnitude entry of u = S v seen so far.
  Eigen::VectorXf bestAbs, bestValue;
  ColMatF q, u;     // chunk scratch (rows x l, rows x k)

  void begin() {
    x.resize(d, l);
    gaussianTestMatrix(x, seed);
    acc.setZero(d, l);
    r.setZero(l, l);
  }

  // Block of rows (rows x d, row-major): the sketch products of this pass.
  void sketch(const float* rows, Index count) {
    const ConstMapF block(rows, count, d);
    q.resize(count, l);
    q.noalias() = block * x;
    acc.noalias() += block.transpose() * q;
    // TSQR: R <- R of [R; q].
    stackTop.resize(l + count, l);
    stackTop.topRows(l) = r;
    stackTop.bottomRows(count) = q.cast<double>();
    Eigen::HouseholderQR<Eigen::Ref<ColMatD>> qr(stackTop);
    r = qr.matrixQR().topRows(l).triangularView<Eigen::Upper>();
  }

  // acc R^-1 with diag(R) made >= 0 first (rsvd's orthonormalisation convention), i.e.
  // S^T Q for the Q rsvd would have formed. Rank-deficient q: a pseudo-inverse.
  ColMatF solved() {
    for (Index j = 0; j < l; ++j) {
      if (r(j, j) < 0) r.row(j) = -r.row(j);
    }
    const double hi = r.diagonal().cwiseAbs().maxCoeff();
    const double lo = r.diagonal().cwiseAbs().minCoeff();
    ColMatD z = acc.cast<double>();
    if (hi > 0 && lo > 1e-6 * hi) {
      r.triangularView<Eigen::Upper>().solveInPlace<Eigen::OnTheRight>(z);
    } else {
      Eigen::JacobiSVD<ColMatD> svd(r, Eigen::ComputeFullU | Eigen::ComputeFullV);
      Eigen::VectorXd inv = svd.singularValues();
      const double top = inv.size() > 0 ? inv(0) : 0.0;
      for (Index j = 0; j < inv.size(); ++j) inv(j) = inv(j) > 1e-6 * top && top > 0 ? 1.0 / inv(j) : 0.0;
      z = (z * svd.matrixV()) * inv.asDiagonal() * svd.matrixU().transpose();
    }
    return z.cast<float>();
  }

  // End of sketch pass `p` (0-based) of powerIters + 1.
  void endSketch(int p) {
    ColMatF z = solved();  // S^T Q, d x l
    if (p < powerIters) {
      orthonormalizeColumns(z);  // rsvd: z = orth(A^T q); the next pass forms q = orth(A z)
      x = z;
      acc.setZero();
      r.setZero();
      return;
    }
    // rsvd's last step: B^T = S^T Q = Qb R, B = R^T Qb^T, SVD of R^T (l x l) in double.
    ColMatD bt = z.cast<double>();
    Eigen::HouseholderQR<Eigen::Ref<ColMatD>> qrB(bt);
    const ColMatD rT = qrB.matrixQR().topRows(l).template triangularView<Eigen::Upper>().transpose();
    Eigen::JacobiSVD<ColMatD> core(rT, Eigen::ComputeFullU | Eigen::ComputeFullV);
    ColMatD vk = ColMatD::Zero(d, k);
    vk.topRows(l) = core.matrixV().leftCols(k);
    vk.applyOnTheLeft(qrB.householderQ());
    v = vk.cast<float>();
    s.resize(k);
    for (Index j = 0; j < k; ++j) s(j) = static_cast<float>(core.singularValues()(j));
    bestAbs.setConstant(k, -1.0f);
    bestValue.setZero(k);
    x.resize(0, 0);
    acc.resize(0, 0);
  }

  // Sign pass: u = S v, rows in order; rsvd makes each u column's largest-magnitude entry
  // positive (the first one on ties, as Eigen's maxCoeff).
  void signs(const float* rows, Index count) {
    const ConstMapF block(rows, count, d);
    u.resize(count, k);
    u.noalias() = block * v;
    for (Index j = 0; j < k; ++j) {
      for (Index i = 0; i < count; ++i) {
        const float a = std::abs(u(i, j));
        if (a > bestAbs(j)) {
          bestAbs(j) = a;
          bestValue(j) = u(i, j);
        }
      }
    }
  }
};

ModuleStream::ModuleStream(Index dIn, Index dOut, Index totalRank, Index adapters, Index kA, Index kB,
                           const ModuleSubspaceOptions& o)
    : dIn_(dIn), dOut_(dOut), totalRank_(totalRank), adapters_(adapters), options_(o) {
  if (dIn < 1 || dOut < 1 || totalRank < 1 || adapters < 1) {
    throw CoreError(code::kInvalidArgument, "stream: expected positive dIn, dOut, totalRank and adapters");
  }
  const auto side = [&](const char* name, Index d, Index k, uint64_t seed) {
    const Index limit = std::min(d, totalRank);
    if (k < 1 || k > limit) {
      throw CoreError(code::kInvalidArgument, std::string(name) + ": expected between 1 and " + std::to_string(limit) +
                                                  " components, received " + std::to_string(k));
    }
    if (streamNeedsExactPath(d, totalRank, k, o.oversample)) {
      throw CoreError(code::kInvalidArgument, std::string(name) +
                                                  ": the stack is small enough for the exact SVD; build it in memory");
    }
    auto s = std::make_unique<Side>();
    s->d = d;
    s->k = k;
    s->l = std::min(k + o.oversample, limit);
    s->powerIters = o.powerIters;
    s->seed = seed;
    s->center = o.center;
    s->mean.setZero(d);
    s->sum.setZero(d);
    return s;
  };
  a_ = side("componentsA", dIn, kA, o.seed);
  b_ = side("componentsB", dOut, kB, o.seed + 1);
  passes_ = (o.center ? 1 : 0) + (o.powerIters + 1) + 1;
  norms_.assign(static_cast<size_t>(adapters), 0.0);
  if (!o.center) {
    a_->begin();
    b_->begin();
  }
}

ModuleStream::~ModuleStream() = default;

ModuleStream::Stage ModuleStream::stage() const {
  const int sketchStart = options_.center ? 1 : 0;
  if (pass_ < sketchStart) return Stage::Mean;
  if (pass_ < sketchStart + options_.powerIters + 1) return Stage::Sketch;
  return Stage::Signs;
}

void ModuleStream::checkChunk(const std::vector<FactorPair>& chunk) const {
  if (finished()) throw CoreError(code::kInvalidArgument, "stream: every pass is done; call finish");
  if (chunk.empty()) throw CoreError(code::kInvalidArgument, "adapters: expected at least one adapter");
  if (seen_ + static_cast<Index>(chunk.size()) > adapters_) {
    throw CoreError(code::kInvalidArgument, "adapters: more adapters than the " + std::to_string(adapters_) +
                                                " the stream was created for, in this pass");
  }
  Index rows = 0;
  for (size_t i = 0; i < chunk.size(); ++i) {
    const FactorPair& p = chunk[i];
    // Named by the adapter's index in the whole pass, as buildModuleSubspace names them.
    const std::string name = "adapters[" + std::to_string(seen_ + static_cast<Index>(i)) + "]";
    if (p.a.rows < 1) throw CoreError(code::kInvalidArgument, name + ".A: expected at least one row");
    requireShape((name + ".A").c_str(), p.a.rows, p.a.cols, p.a.rows, dIn_);
    requireShape((name + ".B").c_str(), p.b.rows, p.b.cols, dOut_, p.a.rows);
    if (!std::isfinite(p.scale)) throw CoreError(code::kNonFinite, name + ".scale: expected a finite number");
    rows += p.a.rows;
  }
  if (rowsSeen_ + rows > totalRank_) {
    throw CoreError(code::kInvalidArgument, "adapters: their ranks add up to more than the stream's totalRank " +
                                                std::to_string(totalRank_));
  }
}

void ModuleStream::add(const std::vector<FactorPair>& chunk) {
  checkChunk(chunk);
  const size_t n = chunk.size();
  std::vector<Index> offsets(n + 1, 0);
  for (size_t i = 0; i < n; ++i) offsets[i + 1] = offsets[i] + chunk[i].a.rows;
  const Index rows = offsets[n];
  chunkA_.resize(static_cast<size_t>(rows * dIn_));
  chunkB_.resize(static_cast<size_t>(rows * dOut_));
  const bool equal = options_.stacking == Stacking::Canonical && options_.weighting == Weighting::Equal;
  const Index first = seen_;
  // The chunk's rows, as buildModuleSubspace stacks them (same code, same rounding).
#pragma omp parallel for schedule(dynamic)
  for (long i = 0; i < static_cast<long>(n); ++i) {
    const FactorPair& p = chunk[static_cast<size_t>(i)];
    CanonicalWork& w = canonicalWork();
    const bool finite = allFinite(p.a) && allFinite(p.b);
    if (!finite) {
      norms_[static_cast<size_t>(first + i)] = NAN;
      continue;
    }
    stackedFactors(p, options_.stacking, w);
    norms_[static_cast<size_t>(first + i)] = w.norm;
    const double weight = equal ? (w.norm > 0 ? 1.0 / std::sqrt(w.norm) : 0.0) : 1.0;
    const Index r = p.a.rows;
    Eigen::Map<ColMatF>(chunkA_.data() + offsets[i] * dIn_, dIn_, r) = static_cast<float>(weight) * w.atF;
    Eigen::Map<ColMatF>(chunkB_.data() + offsets[i] * dOut_, dOut_, r) = static_cast<float>(weight) * w.bF;
  }
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(norms_[static_cast<size_t>(first) + i])) {
      throw CoreError(code::kNonFinite, "adapters[" + std::to_string(first + static_cast<Index>(i)) +
                                            "]: factors contain NaN or Inf");
    }
  }
  for (Side* side : {a_.get(), b_.get()}) {
    float* data = side == a_.get() ? chunkA_.data() : chunkB_.data();
    MapF block(data, rows, side->d);
    switch (stage()) {
      case Stage::Mean:
        for (Index i = 0; i < rows; ++i) side->sum += block.row(i).transpose().cast<double>();
        break;
      case Stage::Sketch:
        if (side->center) block.rowwise() -= side->mean.transpose();
        if (pass_ == (options_.center ? 1 : 0)) {
          for (Index i = 0; i < rows; ++i) side->energy += sumOfSquares(block.row(i).data(), static_cast<size_t>(side->d));
        }
        side->sketch(data, rows);
        break;
      case Stage::Signs:
        if (side->center) block.rowwise() -= side->mean.transpose();
        side->signs(data, rows);
        break;
    }
  }
  seen_ += static_cast<Index>(n);
  rowsSeen_ += rows;
}

void ModuleStream::endPass() {
  if (finished()) throw CoreError(code::kInvalidArgument, "stream: every pass is done; call finish");
  if (seen_ != adapters_ || rowsSeen_ != totalRank_) {
    throw CoreError(code::kInvalidArgument, "stream: pass " + std::to_string(pass_) + " saw " + std::to_string(seen_) +
                                                " adapters (" + std::to_string(rowsSeen_) + " rows) but expected " +
                                                std::to_string(adapters_) + " (" + std::to_string(totalRank_) + ")");
  }
  const Stage now = stage();
  for (Side* side : {a_.get(), b_.get()}) {
    if (now == Stage::Mean) {
      side->mean = (side->sum / static_cast<double>(totalRank_)).cast<float>();
      side->begin();
    } else if (now == Stage::Sketch) {
      side->endSketch(pass_ - (options_.center ? 1 : 0));
    }
  }
  seen_ = 0;
  rowsSeen_ = 0;
  ++pass_;
  chunkA_.clear();
  chunkA_.shrink_to_fit();
  chunkB_.clear();
  chunkB_.shrink_to_fit();
}

void ModuleStream::checkFinish(const ModuleSubspaceOutputs& out) const {
  if (!finished()) {
    throw CoreError(code::kInvalidArgument, "stream: " + std::to_string(passes_ - pass_) + " passes left before finish");
  }
  requireShape("componentsA", out.componentsA.rows, out.componentsA.cols, dIn_, a_->k);
  requireShape("componentsB", out.componentsB.rows, out.componentsB.cols, dOut_, b_->k);
  if (options_.center && (out.meanA == nullptr || out.meanB == nullptr)) {
    throw CoreError(code::kInvalidArgument, "meanA, meanB: expected output vectors when centring");
  }
}

ModuleSubspaceInfo ModuleStream::finish(const ModuleSubspaceOutputs& out) {
  checkFinish(out);
  ModuleSubspaceInfo info;
  for (Side* side : {a_.get(), b_.get()}) {
    const bool isA = side == a_.get();
    ColMatF v = side->v;
    for (Index j = 0; j < side->k; ++j) {
      if (side->bestValue(j) < 0) v.col(j) = -v.col(j);
    }
    (isA ? out.componentsA : out.componentsB).map() = v;
    float* singular = isA ? out.singularA : out.singularB;
    if (singular != nullptr) {
      for (Index j = 0; j < side->k; ++j) singular[j] = side->s(j);
    }
    float* mean = isA ? out.meanA : out.meanB;
    if (options_.center && mean != nullptr) {
      Eigen::Map<Eigen::VectorXf>(mean, side->d) = side->mean;
    }
    (isA ? info.energyA : info.energyB) = side->energy;
  }
  info.norms = norms_;
  return info;
}

}  // namespace eigenlorax
