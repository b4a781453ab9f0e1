// See optim.h. Bit-for-bit agreement with the float64 reference needs every operation
// rounded on its own: GCC contracts a * b + c into an FMA by default (-ffp-contract=fast,
// even with -std=c++17), so the build compiles this file with -ffp-contract=off (and the
// pragmas below say the same). Vectorising is harmless: SIMD add, mul, div and sqrt are
// correctly rounded like the scalar ones; the Adam loop vectorises only without errno
// from sqrt (-fno-math-errno, also a build flag: GCC's optimize pragma ignores it).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("-ffp-contract=off")
#endif

#include "optim.h"

#include <cmath>

namespace eigenlorax {

namespace {

inline double f32(double v) { return static_cast<double>(static_cast<float>(v)); }

// The options are template parameters so that each loop is branch-free and vectorises.
template <bool L2, bool Decay>
void adamTensor(const OptimTensor& t, const AdamScalars& s) {
  float* __restrict p = t.param;
  const float* __restrict g = t.grad;
  float* __restrict m = t.state0;
  float* __restrict v = t.state1;
  const double a1 = 1.0 - s.beta1;
  const double a2 = 1.0 - s.beta2;
  for (size_t i = 0; i < t.length; i++) {
    const double param = p[i];
    const double grad = L2 ? f32(static_cast<double>(g[i]) + s.l2 * param) : static_cast<double>(g[i]);
    const double mPrev = m[i];
    const double mi = f32(mPrev + (grad - mPrev) * a1);
    const double vi = f32(static_cast<double>(v[i]) * s.beta2 + a2 * grad * grad);
    m[i] = static_cast<float>(mi);
    v[i] = static_cast<float>(vi);
    const double base = Decay ? f32(param * s.keep) : param;
    p[i] = static_cast<float>(base - (s.stepSize * mi) / (std::sqrt(vi) * s.invBc2Sqrt + s.eps));
  }
}

template <bool WeightDecay, bool Buffer, bool First, bool Nesterov>
void sgdTensor(const OptimTensor& t, const SgdScalars& s) {
  float* __restrict p = t.param;
  const float* __restrict g = t.grad;
  float* __restrict buf = t.state0;
  for (size_t i = 0; i < t.length; i++) {
    const double param = p[i];
    double d = g[i];
    if (WeightDecay) d = f32(d + s.weightDecay * param);
    if (Buffer) {
      const double b = First ? d : f32(static_cast<double>(buf[i]) * s.momentum + s.oneMinusDamp * d);
      buf[i] = static_cast<float>(b);
      d = Nesterov ? f32(d + s.momentum * b) : b;
    }
    p[i] = static_cast<float>(param - s.lr * d);
  }
}

template <bool WeightDecay, bool Buffer>
void sgdTensor(const OptimTensor& t, const SgdScalars& s) {
  if (!Buffer) return sgdTensor<WeightDecay, false, false, false>(t, s);
  if (s.first) return s.nesterov ? sgdTensor<WeightDecay, true, true, true>(t, s) : sgdTensor<WeightDecay, true, true, false>(t, s);
  return s.nesterov ? sgdTensor<WeightDecay, true, false, true>(t, s) : sgdTensor<WeightDecay, true, false, false>(t, s);
}

}  // namespace

void adamStep(const std::vector<OptimTensor>& tensors, const AdamScalars& s) {
  const bool l2 = s.l2 != 0.0, decay = s.keep != 1.0;
  for (const OptimTensor& t : tensors) {
    if (l2) decay ? adamTensor<true, true>(t, s) : adamTensor<true, false>(t, s);
    else decay ? adamTensor<false, true>(t, s) : adamTensor<false, false>(t, s);
  }
}

void sgdStep(const std::vector<OptimTensor>& tensors, const SgdScalars& s) {
  const bool decay = s.weightDecay != 0.0;
  for (const OptimTensor& t : tensors) {
    const bool buffer = t.state0 != nullptr && s.momentum != 0.0;
    if (decay) buffer ? sgdTensor<true, true>(t, s) : sgdTensor<true, false>(t, s);
    else buffer ? sgdTensor<false, true>(t, s) : sgdTensor<false, false>(t, s);
  }
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

template <typename Label>
LossValue softmaxCrossEntropy(const float* logits, size_t n, size_t c, const Label* labels, float* grad) {
  LossValue out;
  double total = 0.0;
  const double inv = 1.0 / static_cast<double>(n);
  for (size_t i = 0; i < n; i++) {
    const float* row = logits + i * c;
    double max = -INFINITY;
    size_t arg = 0;
    for (size_t j = 0; j < c; j++) {
      if (row[j] > max) {
        max = row[j];
        arg = j;
      }
    }
    const size_t label = static_cast<size_t>(labels[i]);
    if (arg == label) out.correct++;
    double sum = 0.0;
    for (size_t j = 0; j < c; j++) sum += std::exp(static_cast<double>(row[j]) - max);
    const double logSum = std::log(sum) + max;
    total += logSum - static_cast<double>(row[label]);
    if (grad != nullptr) {
      float* g = grad + i * c;
      for (size_t j = 0; j < c; j++) {
        const double p = std::exp(static_cast<double>(row[j]) - logSum);
        g[j] = static_cast<float>((j == label ? p - 1.0 : p) * inv);
      }
    }
  }
  out.loss = total * inv;
  return out;
}

template LossValue softmaxCrossEntropy<uint8_t>(const float*, size_t, size_t, const uint8_t*, float*);
template LossValue softmaxCrossEntropy<uint16_t>(const float*, size_t, size_t, const uint16_t*, float*);
template LossValue softmaxCrossEntropy<int32_t>(const float*, size_t, size_t, const int32_t*, float*);

double meanSquaredError(const float* output, const float* target, size_t count, float* grad) {
  double total = 0.0;
  const double k = 2.0 / static_cast<double>(count);
  for (size_t i = 0; i < count; i++) {
    const double d = static_cast<double>(output[i]) - static_cast<double>(target[i]);
    total += d * d;
    if (grad != nullptr) grad[i] = static_cast<float>(k * d);
  }
  return total / static_cast<double>(count);
}

}  // namespace eigenlorax
