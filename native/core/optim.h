// Per-element training kernels: optimiser updates over many tensors in one call, the ReLU
// activation and its gradient mask, the losses, and a finiteness scan. Each reproduces, bit for bit,
// the float64-arithmetic / float32-storage loops that PyTorch's single-tensor optimisers
// define (and that lib/train used to run in JavaScript): every product and sum is rounded
// separately (no fused multiply-add, see optim.cpp), and the scalars that depend on the
// step number (bias corrections, powers) are computed by the caller, once.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace eigenlorax {

// One tensor's arrays for an optimiser step; `state0`/`state1` are the per-element state
// (Adam: exp_avg, exp_avg_sq; SGD: momentum_buffer or null). All `length` long.
struct OptimTensor {
  float* param = nullptr;
  const float* grad = nullptr;
  float* state0 = nullptr;
  float* state1 = nullptr;
  size_t length = 0;
};

struct AdamScalars {
  double stepSize;    // lr / (1 - beta1^t)
  double invBc2Sqrt;  // 1 / sqrt(1 - beta2^t)
  double keep;        // AdamW: 1 - lr * weight_decay (1: no decay); Adam: 1
  double l2;          // Adam: weight_decay added to the gradient; AdamW: 0
  double beta1, beta2, eps;
};

struct SgdScalars {
  double lr;
  double momentum;       // 0: no buffer
  double oneMinusDamp;   // 1 - dampening
  double weightDecay;
  bool nesterov;
  bool first;            // the buffer starts as the gradient
};

// torch.optim.Adam / AdamW (_single_tensor_adam, amsgrad off) over every tensor.
void adamStep(const std::vector<OptimTensor>& tensors, const AdamScalars& s);
// torch.optim.SGD (_single_tensor_sgd) over every tensor; state0 is the momentum buffer.
void sgdStep(const std::vector<OptimTensor>& tensors, const SgdScalars& s);

// y = max(x, 0) keeping NaN, +0 for -0 (x and y may be the same array).
void reluForward(const float* x, float* y, size_t n);
// dx = dy where y > 0, else 0 (dy and dx may be the same array).
void reluBackward(const float* y, const float* dy, float* dx, size_t n);

// A batch's mean loss, and for a classification loss the rows whose first maximum is the label.
struct LossValue {
  double loss = 0.0;
  size_t correct = 0;
};

// Softmax cross-entropy, mean over the n rows of `logits` (n x c, row-major) against labels
// in [0, c) (checked by the caller), as PyTorch's cross_entropy: log-sum-exp with the row
// maximum subtracted, in float64. `grad` (n x c, or null) receives (softmax - onehot) / n.
// Label: uint8_t, uint16_t or int32_t.
template <typename Label>
LossValue softmaxCrossEntropy(const float* logits, size_t n, size_t c, const Label* labels, float* grad);
// Mean squared error over `count` elements (mse_loss, reduction 'mean'), float64 sums;
// `grad` (or null) receives 2 (output - target) / count.
double meanSquaredError(const float* output, const float* target, size_t count, float* grad);

}  // namespace eigenlorax
