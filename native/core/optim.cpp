// See optim.h. Bit-for-bit agreement with the float64 reference needs every operation
// rounded on its own: GCC contracts a * b + c into an FMA by default (-ffp-contract=fast,
// even with -std=c++17), so contraction is switched off for this file. Vectorising is
// harmless: SIMD add, mul, div and sqrt are correctly rounded like the scalar ones.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "optim.h"

#include <cmath>

namespace eigenlorax {

namespace {

inline double f32(double v) { return static_cast<double>(static_cast<float>(v)); }

void adamTensor(const OptimTensor& t, const AdamScalars& s) {
  float* __restrict p = t.param;
  const float* __restrict g = t.grad;
  float* __restrict m = t.state0;
  float* __restrict v = t.state1;
  const double a1 = 1.0 - s.beta1;
  const double a2 = 1.0 - s.beta2;
  const bool l2 = s.l2 != 0.0;
  const bool decay = s.keep != 1.0;
  for (size_t i = 0; i < t.length; i++) {
    const double param = p[i];
    const double grad = l2 ? f32(static_cast<double>(g[i]) + s.l2 * param) : static_cast<double>(g[i]);
    const double mPrev = m[i];
    const double mi = f32(mPrev + (grad - mPrev) * a1);
    const double vi = f32(static_cast<double>(v[i]) * s.beta2 + a2 * grad * grad);
    m[i] = static_cast<float>(mi);
    v[i] = static_cast<float>(vi);
    const double base = decay ? f32(param * s.keep) : param;
    p[i] = static_cast<float>(base - (s.stepSize * mi) / (std::sqrt(vi) * s.invBc2Sqrt + s.eps));
  }
}

void sgdTensor(const OptimTensor& t, const SgdScalars& s) {
  float* __restrict p = t.param;
  const float* __restrict g = t.grad;
  float* __restrict buf = t.state0;
  const bool withBuffer = buf != nullptr && s.momentum != 0.0;
  for (size_t i = 0; i < t.length; i++) {
    const double param = p[i];
    double d = g[i];
    if (s.weightDecay != 0.0) d = f32(d + s.weightDecay * param);
    if (withBuffer) {
      const double b = s.first ? d : f32(static_cast<double>(buf[i]) * s.momentum + s.oneMinusDamp * d);
      buf[i] = static_cast<float>(b);
      d = s.nesterov ? f32(d + s.momentum * b) : b;
    }
    p[i] = static_cast<float>(param - s.lr * d);
  }
}

}  // namespace

void adamStep(const std::vector<OptimTensor>& tensors, const AdamScalars& s) {
  for (const OptimTensor& t : tensors) adamTensor(t, s);
}

void sgdStep(const std::vector<OptimTensor>& tensors, const SgdScalars& s) {
  for (const OptimTensor& t : tensors) sgdTensor(t, s);
}

void reluForward(const float* x, float* y, size_t n) {
  // v for v > 0, NaN for NaN, +0 otherwise (-0 and -Inf included): a select, not a branch
  // (with signs in random order a branch mispredicts half the time).
  for (size_t i = 0; i < n; i++) {
    const float v = x[i];
    y[i] = (v > 0.0f || v != v) ? v : 0.0f;
  }
}

void reluBackward(const float* y, const float* dy, float* dx, size_t n) {
  for (size_t i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

bool allFinite(const float* a, size_t n) {
  bool ok = true;
  for (size_t i = 0; i < n; i++) ok &= std::isfinite(a[i]);
  return ok;
}

}  // namespace eigenlorax
