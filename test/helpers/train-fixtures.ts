/**
 * Fixtures of the training tests: float64 reference layers and losses written directly
 * from the formulas (no code shared with lib/train), finite differences, small synthetic
 * data sets, temporary folders, and bit-level comparisons.
 */
import { matrix, type Matrix } from '../../lib/index.js';
import { type Dataset } from '../../lib/data/index.js';
import { gaussian, rng } from './random.js';

export { tempDir } from './safetensors-fixtures.js';

/** f64 copy of a typed array. */
export function f64(a: ArrayLike<number>): Float64Array {
  return Float64Array.from(a as ArrayLike<number>);
}

export function randomF32(count: number, seed: number, scale = 1): Float32Array {
  const g = gaussian(rng(seed));
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = g() * scale;
  return out;
}

export function randomMat(rows: number, cols: number, seed: number, scale = 1): Matrix {
  return matrix(rows, cols, randomF32(rows * cols, seed, scale));
}

/** Values away from 0 (|v| >= margin), for activations with a kink at 0. */
export function awayFromZero(a: Float32Array, margin = 0.05): Float32Array {
  for (let i = 0; i < a.length; i++) {
    const v = a[i] as number;
    if (Math.abs(v) < margin) a[i] = v < 0 ? v - margin : v + margin;
  }
  return a;
}

// ---------------------------------------------------------------------------------------
// f64 references: row-major arrays with explicit shapes.

/** y (n x out) = x (n x in) W^T (W out x in) + b. */
export function refLinear(x: Float64Array, n: number, dIn: number, W: Float64Array, dOut: number, b: Float64Array | null): Float64Array {
  const y = new Float64Array(n * dOut);
  for (let i = 0; i < n; i++) {
    for (let o = 0; o < dOut; o++) {
      let s = b === null ? 0 : (b[o] as number);
      for (let k = 0; k < dIn; k++) s += (x[i * dIn + k] as number) * (W[o * dIn + k] as number);
      y[i * dOut + o] = s;
    }
  }
  return y;
}

/** c (m x p) = a (m x k) b (k x p). */
export function refMatmul(a: Float64Array, m: number, k: number, b: Float64Array, p: number): Float64Array {
  const c = new Float64Array(m * p);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < p; j++) {
      let s = 0;
      for (let q = 0; q < k; q++) s += (a[i * k + q] as number) * (b[q * p + j] as number);
      c[i * p + j] = s;
    }
  }
  return c;
}

export function refTranspose(a: Float64Array, rows: number, cols: number): Float64Array {
  const t = new Float64Array(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) t[j * rows + i] = a[i * cols + j] as number;
  return t;
}

/** LoRA: x W^T + b + s (x A^T) B^T, forming dW = s B A (d_out x d_in) explicitly. */
export function refLora(
  x: Float64Array,
  n: number,
  dIn: number,
  W: Float64Array,
  dOut: number,
  b: Float64Array | null,
  A: Float64Array,
  B: Float64Array,
  r: number,
  s: number,
): Float64Array {
  const dW = refMatmul(B, dOut, r, A, dIn);
  const total = W.map((w, i) => w + s * (dW[i] as number));
  return refLinear(x, n, dIn, total, dOut, b);
}

/** EigenLoRA: A = alpha^T V_A^T (r x in), B = U_B beta (out x r), then LoRA. */
export function refEigenLora(
  x: Float64Array,
  n: number,
  dIn: number,
  W: Float64Array,
  dOut: number,
  b: Float64Array | null,
  VA: Float64Array,
  kA: number,
  alpha: Float64Array,
  UB: Float64Array,
  kB: number,
  beta: Float64Array,
  r: number,
  s: number,
): Float64Array {
  const A = refTranspose(refMatmul(VA, dIn, kA, alpha, r), dIn, r);
  const B = refMatmul(UB, dOut, kB, beta, r);
  return refLora(x, n, dIn, W, dOut, b, A, B, r, s);
}

export function refRelu(x: Float64Array): Float64Array {
  return x.map((v) => (v > 0 ? v : 0));
}

/** erf by its Taylor series (accurate to ~1e-14 for |x| <= 3). */
export function refErf(x: number): number {
  let term = x;
  let sum = x;
  for (let n = 1; n < 200; n++) {
    term *= (-x * x) / n;
    const add = term / (2 * n + 1);
    sum += add;
    if (Math.abs(add) < 1e-17) break;
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

export function refGelu(x: Float64Array, approximate: 'none' | 'tanh'): Float64Array {
  return x.map((v) =>
    approximate === 'tanh'
      ? 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v * v * v)))
      : 0.5 * v * (1 + refErf(v / Math.SQRT2)),
  );
}

/** Mean softmax cross-entropy, f64, naive log(sum exp) (inputs kept small). */
export function refCrossEntropy(logits: Float64Array, n: number, c: number, labels: ArrayLike<number>): number {
  let total = 0;
  for (let i = 0; i < n; i++) {
    let z = 0;
    for (let j = 0; j < c; j++) z += Math.exp(logits[i * c + j] as number);
    total += Math.log(z) - (logits[i * c + (labels[i] as number)] as number);
  }
  return total / n;
}

export function refMse(y: Float64Array, t: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < y.length; i++) s += ((y[i] as number) - (t[i] as number)) ** 2;
  return s / y.length;
}

/** sum(G .* y). */
export function dotLoss(y: Float64Array, G: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < y.length; i++) s += (y[i] as number) * (G[i] as number);
  return s;
}

/**
 * Central finite differences of `loss` with respect to entries `indices` of `values` (an
 * f64 array the loss reads), with step h; restores the entry after each.
 */
export function finiteDifferences(loss: () => number, values: Float64Array, indices: readonly number[], h: number): number[] {
  return indices.map((i) => {
    const keep = values[i] as number;
    values[i] = keep + h;
    const plus = loss();
    values[i] = keep - h;
    const minus = loss();
    values[i] = keep;
    return (plus - minus) / (2 * h);
  });
}

/** Up to `count` distinct indices in [0, length), spread out, seeded. */
export function sampleIndices(length: number, count: number, seed: number): number[] {
  if (length <= count) return Array.from({ length }, (_, i) => i);
  const r = rng(seed);
  const set = new Set<number>();
  while (set.size < count) set.add(Math.floor(r() * length));
  return [...set].sort((a, b) => a - b);
}

/** max |a_i - b_i| / (atol + max |b|) over the pairs: <= 1 passes with rtol folded in. */
export function gradientError(analytic: ArrayLike<number>, reference: ArrayLike<number>): number {
  let scale = 0;
  for (let i = 0; i < reference.length; i++) scale = Math.max(scale, Math.abs(reference[i] as number));
  let worst = 0;
  for (let i = 0; i < reference.length; i++) worst = Math.max(worst, Math.abs((analytic[i] as number) - (reference[i] as number)));
  return worst / Math.max(scale, 1e-12);
}

export function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return false;
  return true;
}

// ---------------------------------------------------------------------------------------
// Synthetic data

/**
 * `classes` Gaussian blobs in `features` dimensions: class c centred at `separation` along
 * axis c (and -separation along axis c + classes when there is room), unit noise.
 */
export function blobs(count: number, features: number, classes: number, seed: number, separation = 2.5): Dataset {
  const g = gaussian(rng(seed));
  const r = rng(seed + 1);
  const inputs = matrix(count, features);
  const targets = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    const c = Math.floor(r() * classes);
    targets[i] = c;
    for (let j = 0; j < features; j++) inputs.data[i * features + j] = g() + (j === c ? separation : 0);
  }
  return { inputs, targets, classes };
}

/** XOR-like: two noisy clusters per class at the corners of a square (not linearly separable). */
export function xorData(count: number, seed: number, noise = 0.35): Dataset {
  const g = gaussian(rng(seed));
  const r = rng(seed + 7);
  const inputs = matrix(count, 2);
  const targets = new Uint8Array(count);
  for (let i = 0; i < count; i++) {
    const a = r() < 0.5 ? -1 : 1;
    const b = r() < 0.5 ? -1 : 1;
    inputs.data[2 * i] = a + noise * g();
    inputs.data[2 * i + 1] = b + noise * g();
    targets[i] = a === b ? 0 : 1;
  }
  return { inputs, targets, classes: 2 };
}
