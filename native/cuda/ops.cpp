// The operations on device pointers: cuBLAS for every product, our kernels for the
// small steps between them, and the randomized SVD.
#include <Eigen/Cholesky>
#include <Eigen/SVD>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "../core/random.h"
#include "device.h"
#include "kernels.h"

namespace eigenlorax::cuda::dev {

void base(const float* x, int64_t n, int64_t dIn, int64_t dOut, const float* weight, const float* bias, float* y) {
  const Context& c = context();
  if (bias != nullptr) kernels::broadcastRows(bias, n, dOut, y, c.stream);
  if (weight != nullptr) {
    gemm(false, true, n, dOut, dIn, 1.0f, x, dIn, weight, dIn, bias != nullptr ? 1.0f : 0.0f, y, dOut);
  } else if (bias == nullptr) {
    check(cudaMemsetAsync(y, 0, static_cast<size_t>(n * dOut) * sizeof(float), c.stream), "cudaMemsetAsync");
  }
}

void loraForward(const float* x, int64_t n, int64_t dIn, int64_t dOut, const float* a, const float* b, int64_t r,
                 float scale, const float* weight, const float* bias, float* y, Workspace& ws) {
  base(x, n, dIn, dOut, weight, bias, y);
  float* t = ws.take<float>(n * r);
  gemm(false, true, n, r, dIn, 1.0f, x, dIn, a, dIn, 0.0f, t, r);
  gemm(false, true, n, dOut, r, scale, t, r, b, r, 1.0f, y, dOut);
}

void eigenLoraForward(const float* x, int64_t n, int64_t dIn, int64_t dOut, const float* componentsA, int64_t kA,
                      const float* alpha, const float* beta, int64_t r, const float* componentsB, int64_t kB,
                      float scale, const float* weight, const float* bias, float* y, Workspace& ws) {
  const Context& c = context();
  base(x, n, dIn, dOut, weight, bias, y);
  float* u = ws.take<float>(n * kA);
  float* mixing = ws.take<float>(kA * kB);
  float* w = ws.take<float>(n * kB);
  gemm(false, false, n, kA, dIn, 1.0f, x, dIn, componentsA, kA, 0.0f, u, kA);
  kernels::mixingMatrix(alpha, beta, kA, kB, r, scale, mixing, c.stream);
  gemm(false, false, n, kB, kA, 1.0f, u, kA, mixing, kB, 0.0f, w, kB);
  gemm(false, true, n, dOut, kB, 1.0f, w, kB, componentsB, kB, 1.0f, y, dOut);
}

void eigenBankApply(const float* x, int64_t n, int64_t dIn, int64_t dOut, const float* componentsA, int64_t kA,
                    const float* componentsB, int64_t kB, const float* mixing, const int32_t* rows,
                    const float* weight, const float* bias, float* y, Workspace& ws) {
  const Context& c = context();
  base(x, n, dIn, dOut, weight, bias, y);
  float* u = ws.take<float>(n * kA);
  float* w = ws.take<float>(n * kB);
  gemm(false, false, n, kA, dIn, 1.0f, x, dIn, componentsA, kA, 0.0f, u, kA);
  kernels::groupedMix(u, n, kA, kB, mixing, rows, w, c.stream);
  gemm(false, true, n, dOut, kB, 1.0f, w, kB, componentsB, kB, 1.0f, y, dOut);
}

void loraBankApply(const float* x, int64_t n, int64_t dIn, int64_t dOut, const float* const* aPtrs,
                   const float* const* bPtrs, const int32_t* ranks, const float* scales, int32_t maxRank,
                   const int32_t* rows, const float* weight, const float* bias, float* y, Workspace& ws) {
  const Context& c = context();
  base(x, n, dIn, dOut, weight, bias, y);
  if (maxRank <= 0) return;
  float* t = ws.take<float>(n * maxRank);
  kernels::loraShrink(x, n, dIn, aPtrs, ranks, rows, maxRank, t, c.stream);
  kernels::loraExpand(t, n, dOut, bPtrs, ranks, scales, rows, maxRank, y, c.stream);
}

namespace {

using ColMatD = Eigen::MatrixXd;

// Adds the time since the previous mark to one stage of RsvdStages, after synchronising
// the stream; does nothing, and never synchronises, when no stages were asked for.
class StageClock {
 public:
  explicit StageClock(RsvdStages* stages) : stages_(stages), last_(Clock::now()) {}
  void mark(double RsvdStages::*stage) {
    if (stages_ == nullptr) return;
    synchronize("rsvd");
    const Clock::time_point now = Clock::now();
    stages_->*stage += std::chrono::duration<double, std::milli>(now - last_).count();
    last_ = now;
  }

 private:
  using Clock = std::chrono::steady_clock;
  RsvdStages* stages_;
  Clock::time_point last_;
};

// Orthonormalises the columns of q (rows x l, row-major, double, on the device) in place
// by shifted CholeskyQR3 (Fukaya et al. 2020): a first pass with a small shift keeps the
// Cholesky factorisation defined even for ill-conditioned or rank-deficient input, two
// plain passes restore orthogonality to working precision. Only l x l Gram matrices
// come to the host. Returns R (l x l) with input = q_out R, diag(R) > 0.
struct QrScratch {
  double* gram;  // l x l
  double* rInv;  // l x l
  double* next;  // rows x l, for the largest `rows` used
};

ColMatD orthonormalize(double* q, int64_t rows, int64_t l, const QrScratch& scratch, StageClock& clock) {
  double* gram = scratch.gram;
  double* rInv = scratch.rInv;
  double* next = scratch.next;
  ColMatD total = ColMatD::Identity(l, l);
  for (int pass = 0; pass < 3; ++pass) {
    gemm(true, false, l, l, rows, 1.0, q, l, q, l, 0.0, gram, l);
    Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> g(l, l);
    check(cudaMemcpyAsync(g.data(), gram, static_cast<size_t>(l * l) * sizeof(double), cudaMemcpyDeviceToHost,
                          context().stream),
          "copy to the host");
    synchronize("Gram matrix");
    clock.mark(&RsvdStages::gram);
    ColMatD gc = g;
    if (!gc.allFinite()) throw CoreError(eigenlorax::code::kNonFinite, "rsvd: the sketch overflowed (NaN or Inf)");
    if (gc.trace() == 0) {
      // Every column is zero (A is zero): no shift helps, and the fallback below would
      // keep q zero, so U and V would not be orthonormal. Householder QR's answer instead,
      // as on the CPU: the leading l columns of the identity, with R = 0.
      check(cudaMemsetAsync(q, 0, static_cast<size_t>(rows * l) * sizeof(double), context().stream),
            "cudaMemsetAsync");
      const double one = 1.0;
      for (int64_t j = 0; j < l; ++j) {
        check(cudaMemcpyAsync(q + j * l + j, &one, sizeof one, cudaMemcpyHostToDevice, context().stream),
              "copy to the device");
      }
      synchronize("CholeskyQR");
      return ColMatD::Zero(l, l);
    }
    // Shift of Fukaya et al.: 11 (m l + l (l + 1)) u ||Q||_F^2.
    const double shift = pass == 0 ? 11.0 * (static_cast<double>(rows) * l + l * (l + 1.0)) *
                                         std::numeric_limits<double>::epsilon() / 2 * gc.trace()
                                   : 0.0;
    gc.diagonal().array() += shift;
    Eigen::LLT<ColMatD> llt(gc);
    if (llt.info() != Eigen::Success) {
      gc.diagonal().array() += std::max(gc.trace(), 1e-300) * 1e-12;
      llt.compute(gc);
      if (llt.info() != Eigen::Success) throw CoreError(eigenlorax::code::kInternal, "rsvd: CholeskyQR broke down");
    }
    const ColMatD r = llt.matrixU();
    const ColMatD inv = r.triangularView<Eigen::Upper>().solve(ColMatD::Identity(l, l));
    const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> invRow = inv;
    check(cudaMemcpyAsync(rInv, invRow.data(), static_cast<size_t>(l * l) * sizeof(double), cudaMemcpyHostToDevice,
                          context().stream),
          "copy to the device");
    clock.mark(&RsvdStages::cholesky);
    gemm(false, false, rows, l, l, 1.0, q, l, rInv, l, 0.0, next, l);
    check(cudaMemcpyAsync(q, next, static_cast<size_t>(rows * l) * sizeof(double), cudaMemcpyDeviceToDevice,
                          context().stream),
          "device copy");
    total = (r * total).eval();
    synchronize("CholeskyQR");  // invRow goes out of scope: its copy must have happened
    clock.mark(&RsvdStages::apply);
  }
  return total;
}

// f32 product into a double buffer, orthonormalised, and back to f32 for the next product.
ColMatD orthonormalizeF32(float* y, double* work, int64_t rows, int64_t l, const QrScratch& scratch,
                          StageClock& clock) {
  const Context& c = context();
  kernels::toDouble(y, rows * l, work, c.stream);
  clock.mark(&RsvdStages::apply);
  ColMatD r = orthonormalize(work, rows, l, scratch, clock);
  kernels::toFloat(work, rows * l, y, c.stream);
  clock.mark(&RsvdStages::apply);
  return r;
}

// SVD of the l x l core: divide and conquer, a third of one-sided Jacobi's time at l = 144.
// Eigen's BDCSVD answers U = V = 0 for a zero matrix (A = 0): the identity there instead,
// as Jacobi and the CPU backend give.
void smallSvd(const ColMatD& b, ColMatD& u, Eigen::VectorXd& sigma, ColMatD& v) {
  if (b.isZero(0)) {
    u = ColMatD::Identity(b.rows(), b.cols());
    v = ColMatD::Identity(b.cols(), b.cols());
    sigma = Eigen::VectorXd::Zero(b.cols());
    return;
  }
  const Eigen::BDCSVD<ColMatD> svd(b, Eigen::ComputeThinU | Eigen::ComputeThinV);
  u = svd.matrixU();
  v = svd.matrixV();
  sigma = svd.singularValues();
}

// Makes the largest-magnitude entry of each column of u (row-major, host) positive, as
// the CPU backend does (the first such entry on ties); returns the signs applied (+-1), for
// V's columns to follow. Row by row: a column-wise walk of a tall row-major U touches
// every cache line once per column.
Eigen::VectorXd makeColumnsPositive(MatView u) {
  std::vector<float> largest(static_cast<size_t>(u.cols), -1.0f);
  std::vector<bool> negative(static_cast<size_t>(u.cols), false);
  for (Index i = 0; i < u.rows; ++i) {
    const float* row = u.data + i * u.cols;
    for (Index j = 0; j < u.cols; ++j) {
      const float magnitude = std::fabs(row[j]);
      if (magnitude > largest[size_t(j)]) {
        largest[size_t(j)] = magnitude;
        negative[size_t(j)] = row[j] < 0;
      }
    }
  }
  Eigen::VectorXd signs(u.cols);
  for (Index j = 0; j < u.cols; ++j) signs(j) = negative[size_t(j)] ? -1.0 : 1.0;
  if (std::find(negative.begin(), negative.end(), true) == negative.end()) return signs;
  for (Index i = 0; i < u.rows; ++i) {
    float* row = u.data + i * u.cols;
    for (Index j = 0; j < u.cols; ++j) {
      if (negative[size_t(j)]) row[j] = -row[j];
    }
  }
  return signs;
}

// out (rows x k, f32, host) = basis (rows x l, double, device) times small (l x k, host).
void multiplyToHost(const double* basis, int64_t rows, int64_t l, const ColMatD& small, MatView out, Workspace& ws) {
  const int64_t k = small.cols();
  const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> smallRow = small;
  const double* s = uploadArray(smallRow.data(), l * k, ws);
  double* product = ws.take<double>(rows * k);
  gemm(false, false, rows, k, l, 1.0, basis, l, s, k, 0.0, product, k);
  float* narrow = ws.take<float>(rows * k);
  kernels::toFloat(product, rows * k, narrow, context().stream);
  copyToHost(narrow, rows * k, out.data);
}

}  // namespace

RsvdInfo rsvd(const float* a, int64_t m, int64_t n, const RsvdOptions& o, MatView u, float* s, MatView v,
              Workspace& ws, RsvdStages* stages) {
  const Context& c = context();
  StageClock clock(stages);
  unsigned long long* counter = ws.take<unsigned long long>(1);
  check(cudaMemsetAsync(counter, 0, sizeof(unsigned long long), c.stream), "cudaMemsetAsync");
  kernels::countNonFinite(a, m * n, counter, c.stream);
  unsigned long long nonFinite = 0;
  check(cudaMemcpyAsync(&nonFinite, counter, sizeof nonFinite, cudaMemcpyDeviceToHost, c.stream), "copy to the host");
  synchronize("finiteness check");
  if (nonFinite != 0) {
    throw CoreError(eigenlorax::code::kNonFinite,
                    "matrix: contains " + std::to_string(nonFinite) + " NaN or Inf entries");
  }
  clock.mark(&RsvdStages::check);

  const int64_t k = o.rank;
  const int64_t l = std::min<int64_t>(k + o.oversample, std::min(m, n));
  float* y = ws.take<float>(m * l);
  float* z = ws.take<float>(n * l);
  double* yd = ws.take<double>(m * l);
  double* zd = ws.take<double>(n * l);
  // `next` also holds the uniforms of the test matrix: l x 2 ceil(n / 2) doubles.
  const QrScratch scratch{ws.take<double>(l * l), ws.take<double>(l * l), ws.take<double>((std::max(m, n) + 1) * l)};
  // The CPU backend's test matrix (n x l), drawn on the device from the same streams, as
  // Omega^T (l x n row-major) in z, which is free until the first A^T Q.
  kernels::gaussianColumns(o.seed, n, l, scratch.next, z, c.stream);
  clock.mark(&RsvdStages::testMatrix);
  gemm(false, true, m, l, n, 1.0f, a, n, z, n, 0.0f, y, l);  // Y = A Omega
  clock.mark(&RsvdStages::products);
  orthonormalizeF32(y, yd, m, l, scratch, clock);
  for (int it = 0; it < o.powerIters; ++it) {
    gemm(true, false, n, l, m, 1.0f, a, n, y, l, 0.0f, z, l);  // Z = A^T Q
    clock.mark(&RsvdStages::products);
    orthonormalizeF32(z, zd, n, l, scratch, clock);
    gemm(false, false, m, l, n, 1.0f, a, n, z, l, 0.0f, y, l);  // Y = A Z
    clock.mark(&RsvdStages::products);
    orthonormalizeF32(y, yd, m, l, scratch, clock);
  }
  // B^T = A^T Q = Qb R; B = R^T Qb^T; SVD of the l x l R^T in double on the host.
  gemm(true, false, n, l, m, 1.0f, a, n, y, l, 0.0f, z, l);
  clock.mark(&RsvdStages::products);
  const ColMatD r = orthonormalizeF32(z, zd, n, l, scratch, clock);
  ColMatD ur, vr;
  Eigen::VectorXd sigma;
  smallSvd(r.transpose(), ur, sigma, vr);
  clock.mark(&RsvdStages::smallSvd);
  multiplyToHost(yd, m, l, ur.leftCols(k), u, ws);  // U = Q Ur
  const Eigen::VectorXd signs = makeColumnsPositive(u);
  multiplyToHost(zd, n, l, vr.leftCols(k) * signs.asDiagonal(), v, ws);  // V = Qb Vr, signs as U's
  for (int64_t j = 0; j < k; ++j) s[j] = static_cast<float>(sigma(j));
  clock.mark(&RsvdStages::factors);
  return {false, l};
}

}  // namespace eigenlorax::cuda::dev
