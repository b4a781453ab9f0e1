// Fused low-rank layers, forward and backward, into caller-owned buffers (DESIGN §1).
// No d_out x d_in matrix is ever formed: the adapter is applied through its factors.
//
//   LoRA:      y = x W^T + b + s (x A^T) B^T              A: r x d_in, B: d_out x r
//   EigenLoRA: y = x W^T + b + s ((x V_A) alpha) beta^T U_B^T
//              V_A: d_in x K_A, alpha: K_A x r, beta: K_B x r, U_B: d_out x K_B
//
// W (d_out x d_in) and b (d_out) are optional: without them y is the adapter's delta.
#pragma once
#include "matrix.h"

namespace eigenlorax {

struct LoraLayer {
  ConstMatView a, b;       // A: r x d_in, B: d_out x r
  float scale = 1.0f;
  ConstMatView weight;     // optional W: d_out x d_in
  const float* bias = nullptr;  // optional, d_out
};

struct EigenLoraLayer {
  ConstMatView componentsA;  // V_A: d_in x K_A
  ConstMatView alpha;        // K_A x r
  ConstMatView beta;         // K_B x r
  ConstMatView componentsB;  // U_B: d_out x K_B
  float scale = 1.0f;
  ConstMatView weight;       // optional W: d_out x d_in
  const float* bias = nullptr;
};

// Order of products for an EigenLoRA layer. `Project` sends every row through the
// components (x V_A, then U_B); `Rebuild` first forms the r x d factors
// A^T = V_A alpha and B = U_B beta once and applies them like a LoRA pair.
enum class ProductOrder { Auto = 0, Project = 1, Rebuild = 2 };

// Multiply-add counts of both orders; Auto picks the smaller.
double eigenLoraCost(Index rows, const EigenLoraLayer& layer, ProductOrder order, bool backward, bool needInputGrad);
ProductOrder chooseOrder(Index rows, const EigenLoraLayer& layer, bool backward, bool needInputGrad);

// One shape check per operation, naming the argument at fault: each operation below runs
// its own, and the addon (before queuing) and the CUDA backend call the same ones. Only
// shapes and emptiness are read, never memory. An empty dx means "not wanted".
void checkLoraForward(ConstMatView x, const LoraLayer& layer, ConstMatView y);
void checkLoraBackward(ConstMatView x, ConstMatView dy, const LoraLayer& layer, ConstMatView dx, ConstMatView dA,
                       ConstMatView dB);
void checkEigenLoraForward(ConstMatView x, const EigenLoraLayer& layer, ConstMatView y);
void checkEigenLoraBackward(ConstMatView x, ConstMatView dy, const EigenLoraLayer& layer, ConstMatView dx,
                            ConstMatView dAlpha, ConstMatView dBeta);
void checkLinearForward(ConstMatView x, ConstMatView weight, ConstMatView y);
void checkLinearBackward(ConstMatView x, ConstMatView dy, ConstMatView weight, ConstMatView dx, ConstMatView dWeight);
void checkAddLowRank(ConstMatView target, ConstMatView b, ConstMatView a, bool transposed);

// The products of a forward pass that its backward pass needs again: LoRA's h = x A^T;
// EigenLoRA's h = x V_A and z = h alpha (projection order) or A'^T = V_A alpha, B' = U_B
// beta and z = x A'^T (rebuild order). A forward given one fills it; a backward given the
// same reuses it instead of computing them again, when it runs the same order at the
// thread count the forward ran at (the products' split over threads, so their bits,
// depend on it): a training step that runs both passes in one job computes them once, and
// gets the bits the separate passes give. Valid while the operands are unchanged.
struct SavedProducts {
  RowMatF h, z, aT, b;
  ProductOrder order = ProductOrder::Auto;
  int threads = 0;  // 0: nothing saved
};

// y: n x d_out.
void loraForward(ConstMatView x, const LoraLayer& layer, MatView y, SavedProducts* save = nullptr);
// dy: n x d_out. Outputs dA (r x d_in), dB (d_out x r); dx (n x d_in) only if given.
void loraBackward(ConstMatView x, ConstMatView dy, const LoraLayer& layer, MatView dx, MatView dA, MatView dB,
                  const SavedProducts* saved = nullptr);

// A plain layer y = x W^T + b (bias optional), for frozen and trainable linear layers.
void linearForward(ConstMatView x, ConstMatView weight, const float* bias, MatView y);
// Gradients of y = x W^T + b given dy: dx = dy W, dWeight = dy^T x, dBias = column sums of
// dy. Each output is optional (empty view / nullptr); `weight` is needed only for dx.
void linearBackward(ConstMatView x, ConstMatView dy, ConstMatView weight, MatView dx, MatView dWeight,
                    float* dBias);

// target += scale * B A (target: d_out x d_in), or target += scale * (B A)^T when
// `transposed` (target: d_in x d_out, GPT-2 Conv1D / fan_in_fan_out). Merging and
// unmerging an adapter into a base weight, in place.
void addLowRank(MatView target, ConstMatView b, ConstMatView a, float scale, bool transposed);

ProductOrder eigenLoraForward(ConstMatView x, const EigenLoraLayer& layer, MatView y, ProductOrder order,
                              SavedProducts* save = nullptr);
// Outputs dAlpha (K_A x r), dBeta (K_B x r); dx (n x d_in) only if given.
ProductOrder eigenLoraBackward(ConstMatView x, ConstMatView dy, const EigenLoraLayer& layer, MatView dx,
                               MatView dAlpha, MatView dBeta, ProductOrder order,
                               const SavedProducts* saved = nullptr);

}  // namespace eigenlorax
