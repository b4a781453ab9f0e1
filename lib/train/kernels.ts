/**
 * The per-element work of training, in one place. The optimiser updates, ReLU, the losses
 * and the finiteness scan run in native code (native/core/optim.h,
 * native/addon/train_jobs.cpp), synchronously on the caller's arrays: one call updates
 * every parameter of a model. GELU and the gradient norm are plain loops over typed
 * arrays, f64 arithmetic and f32 storage. The large products (everything of cost n x d_in
 * x d_out) go through the native low-rank kernels.
 */
import type { Labels } from '../data/dataset.js';
import * as kernels from '../native/ops.js';

/** y = max(x, 0), keeping NaN (x and y may be the same array). */
export function reluForward(x: Float32Array, y: Float32Array): void {
  kernels.trainReluForward(x, y);
}

/** dx = dy where y > 0, else 0 (the subgradient at 0 is 0, as PyTorch). */
export function reluBackward(y: Float32Array, dy: Float32Array, dx: Float32Array): void {
  kernels.trainReluBackward(y, dy, dx);
}

/**
 * erfc for x >= 0 by the Chebyshev fit of Numerical Recipes (`erfcc`): fractional error
 * below 1.2e-7 everywhere, about 2 ulp of f32.
 */
function erfcPositive(z: number): number {
  const t = 1 / (1 + 0.5 * z);
  return (
    t *
    Math.exp(
      -z * z -
        1.26551223 +
        t *
          (1.00002368 +
            t *
              (0.37409196 +
                t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
    )
  );
}

/** The error function, to about 1.2e-7 (enough for f32 activations). */
export function erf(x: number): number {
  return x >= 0 ? 1 - erfcPositive(x) : erfcPositive(-x) - 1;
}

const SQRT1_2 = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);
const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);
const GELU_C = 0.044715;

/**
 * GELU with the exact normal CDF (PyTorch's default, `approximate='none'`):
 * y = x Phi(x); `cdf` receives Phi(x) for the backward pass.
 */
export function geluErfForward(x: Float32Array, y: Float32Array, cdf: Float32Array): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i] as number;
    const p = 0.5 * (1 + erf(v * SQRT1_2));
    cdf[i] = p;
    y[i] = v * p;
  }
}

/** dx = dy (Phi(x) + x phi(x)). */
export function geluErfBackward(x: Float32Array, cdf: Float32Array, dy: Float32Array, dx: Float32Array): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i] as number;
    dx[i] = (dy[i] as number) * ((cdf[i] as number) + v * INV_SQRT_2PI * Math.exp(-0.5 * v * v));
  }
}

/** GELU, tanh approximation (PyTorch `approximate='tanh'`); `aux` receives tanh(u). */
export function geluTanhForward(x: Float32Array, y: Float32Array, aux: Float32Array): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i] as number;
    const t = Math.tanh(SQRT_2_OVER_PI * (v + GELU_C * v * v * v));
    aux[i] = t;
    y[i] = 0.5 * v * (1 + t);
  }
}

export function geluTanhBackward(x: Float32Array, aux: Float32Array, dy: Float32Array, dx: Float32Array): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i] as number;
    const t = aux[i] as number;
    const du = SQRT_2_OVER_PI * (1 + 3 * GELU_C * v * v);
    dx[i] = (dy[i] as number) * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * du);
  }
}

/**
 * Mean softmax cross-entropy of `logits` (n x c) against integer labels, computed stably
 * (log-sum-exp with the row maximum subtracted, f64). Writes dL/dlogits = (softmax -
 * onehot) / n into `grad` when given. Returns the mean loss and the number of rows whose
 * argmax (first maximum) is the label. The same native kernel as the fused training step
 * (native/core/optim.h), so both give the same bits; a label outside [0, c) is an
 * ERR_INVALID_ARGUMENT naming its row.
 */
export function softmaxCrossEntropy(logits: Float32Array, n: number, c: number, labels: Labels, grad: Float32Array | null): { loss: number; correct: number } {
  return kernels.trainSoftmaxCrossEntropy(logits, n, c, labels, grad);
}

/** Mean squared error over all elements (PyTorch `reduction='mean'`); grad = 2 (y - t) / count. */
export function meanSquaredError(output: Float32Array, target: Float32Array, grad: Float32Array | null): number {
  return kernels.trainMeanSquaredError(output, target, grad);
}

/** sum of squares, in f64. */
export function sumOfSquares(a: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const v = a[i] as number;
    s += v * v;
  }
  return s;
}

export function scaleInPlace(a: Float32Array, factor: number): void {
  for (let i = 0; i < a.length; i++) a[i] = (a[i] as number) * factor;
}

/** True when every value of every array is finite. */
export function allFinite(arrays: readonly Float32Array[]): boolean {
  return kernels.trainAllFinite(arrays);
}

export interface AdamHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** AdamW: decay the weights directly (p -= lr wd p) instead of adding wd p to the gradient. */
  decoupled: boolean;
  /** The step number t >= 1 (bias correction). */
  step: number;
}

/**
 * One Adam/AdamW update of every tensor in `tensors` (groups of [param, grad, exp_avg,
 * exp_avg_sq]), as PyTorch's single-tensor `_single_tensor_adam` (amsgrad off, maximize
 * off): moments stored in f32, arithmetic in f64. The step-dependent scalars are computed
 * here, once, so that they are V8's `**` on every platform.
 */
export function adamStep(tensors: readonly Float32Array[], h: AdamHyper): void {
  const { lr, beta1, beta2, eps, weightDecay, decoupled, step } = h;
  const stepSize = lr / (1 - beta1 ** step);
  const invBc2Sqrt = 1 / Math.sqrt(1 - beta2 ** step);
  const keep = decoupled ? 1 - lr * weightDecay : 1;
  kernels.trainAdamStep(tensors, stepSize, invBc2Sqrt, keep, decoupled ? 0 : weightDecay, beta1, beta2, eps);
}

export interface SgdHyper {
  lr: number;
  momentum: number;
  dampening: number;
  nesterov: boolean;
  weightDecay: number;
  /** True on the first step (the momentum buffer starts as the gradient, as PyTorch). */
  first: boolean;
}

/** One SGD update of every tensor in `tensors` (groups of [param, grad, buffer or null]), as PyTorch's `_single_tensor_sgd`. */
export function sgdStep(tensors: readonly (Float32Array | null)[], h: SgdHyper): void {
  kernels.trainSgdStep(tensors, h.lr, h.momentum, 1 - h.dampening, h.weightDecay, h.nesterov, h.first);
}
