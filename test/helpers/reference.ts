/**
 * Float64 references computed another way than the native code, in plain TypeScript:
 * products, a one-sided Jacobi SVD, principal angles and error measures. Matrices are
 * row-major `{ rows, cols, data }` with f32 or f64 data; results are f64.
 */
import { matrix, type Matrix } from '../../lib/index.js';
import { gaussian, rng } from './random.js';

export interface Mat {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float32Array | Float64Array;
}

export interface Mat64 {
  rows: number;
  cols: number;
  data: Float64Array;
}

export function zeros(rows: number, cols: number): Mat64 {
  return { rows, cols, data: new Float64Array(rows * cols) };
}

export function toF64(a: Mat): Mat64 {
  return { rows: a.rows, cols: a.cols, data: Float64Array.from(a.data) };
}

/** Rounds to an f32 Matrix (the type the package takes). */
export function toF32(a: Mat): Matrix {
  return matrix(a.rows, a.cols, Float32Array.from(a.data));
}

export function transpose(a: Mat): Mat64 {
  const t = zeros(a.cols, a.rows);
  for (let i = 0; i < a.rows; i++) for (let j = 0; j < a.cols; j++) t.data[j * a.rows + i] = a.data[i * a.cols + j]!;
  return t;
}

/** a b in f64. */
export function matmul(a: Mat, b: Mat): Mat64 {
  if (a.cols !== b.rows) throw new Error(`matmul: ${a.rows}x${a.cols} times ${b.rows}x${b.cols}`);
  const c = zeros(a.rows, b.cols);
  for (let i = 0; i < a.rows; i++) {
    for (let p = 0; p < a.cols; p++) {
      const x = a.data[i * a.cols + p]!;
      if (x === 0) continue;
      const row = p * b.cols;
      const out = i * b.cols;
      for (let j = 0; j < b.cols; j++) c.data[out + j]! += x * b.data[row + j]!;
    }
  }
  return c;
}

/** a^T b in f64. */
export function matmulTN(a: Mat, b: Mat): Mat64 {
  return matmul(transpose(a), b);
}

/** The first k columns. */
export function leftCols(a: Mat, k: number): Mat64 {
  const out = zeros(a.rows, k);
  for (let i = 0; i < a.rows; i++) for (let j = 0; j < k; j++) out.data[i * k + j] = a.data[i * a.cols + j]!;
  return out;
}

/** u diag(s) v^T in f64 (u: m x k, s: k, v: n x k). */
export function reconstruct(u: Mat, s: ArrayLike<number>, v: Mat): Mat64 {
  const us = toF64(u);
  for (let i = 0; i < us.rows; i++) for (let j = 0; j < us.cols; j++) us.data[i * us.cols + j]! *= s[j]!;
  return matmul(us, transpose(v));
}

export function frobenius(a: Mat): number {
  let sum = 0;
  for (const x of a.data) sum += x * x;
  return Math.sqrt(sum);
}

/** ||a - b||_F. */
export function frobeniusDistance(a: Mat, b: Mat): number {
  if (a.rows !== b.rows || a.cols !== b.cols) throw new Error('frobeniusDistance: shapes differ');
  let sum = 0;
  for (let i = 0; i < a.data.length; i++) sum += (a.data[i]! - b.data[i]!) ** 2;
  return Math.sqrt(sum);
}

/** ||approx - exact||_F / ||exact||_F. */
export function relativeError(approx: Mat, exact: Mat): number {
  return frobeniusDistance(approx, exact) / frobenius(exact);
}

/** max |q^T q - I|: 0 for orthonormal columns. */
export function orthonormalityDefect(q: Mat): number {
  const g = matmulTN(q, q);
  let worst = 0;
  for (let i = 0; i < g.rows; i++) {
    for (let j = 0; j < g.cols; j++) worst = Math.max(worst, Math.abs(g.data[i * g.cols + j]! - (i === j ? 1 : 0)));
  }
  return worst;
}

export function maxAbs(a: Mat | ArrayLike<number>): number {
  const data = 'data' in a ? a.data : a;
  let worst = 0;
  for (let i = 0; i < data.length; i++) worst = Math.max(worst, Math.abs(data[i]!));
  return worst;
}

export interface Svd64 {
  /** m x r, r = min(m, n). */
  U: Mat64;
  /** r values, descending. */
  S: Float64Array;
  /** n x r. */
  V: Mat64;
}

/**
 * Thin SVD by one-sided Jacobi (Hestenes) rotations in f64: rotate column pairs of A
 * (or A^T when wide) until all are orthogonal; the column norms are the singular values.
 * Relative accuracy ~1e-13 on the sizes used in tests.
 */
export function jacobiSvd(a: Mat): Svd64 {
  const wide = a.rows < a.cols;
  const b = wide ? transpose(a) : toF64(a);
  const m = b.rows;
  const n = b.cols;
  const cols: Float64Array[] = [];
  const vcols: Float64Array[] = [];
  for (let j = 0; j < n; j++) {
    const c = new Float64Array(m);
    for (let i = 0; i < m; i++) c[i] = b.data[i * n + j]!;
    cols.push(c);
    const e = new Float64Array(n);
    e[j] = 1;
    vcols.push(e);
  }
  const dot = (x: Float64Array, y: Float64Array) => {
    let sum = 0;
    for (let i = 0; i < x.length; i++) sum += x[i]! * y[i]!;
    return sum;
  };
  const rotate = (x: Float64Array, y: Float64Array, c: number, s: number) => {
    for (let i = 0; i < x.length; i++) {
      const xi = x[i]!;
      const yi = y[i]!;
      x[i] = c * xi - s * yi;
      y[i] = s * xi + c * yi;
    }
  };
  for (let sweep = 0; sweep < 40; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const cp = cols[p]!;
        const cq = cols[q]!;
        const alpha = dot(cp, cp);
        const beta = dot(cq, cq);
        const gamma = dot(cp, cq);
        if (gamma === 0 || Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        rotate(cp, cq, c, s);
        rotate(vcols[p]!, vcols[q]!, c, s);
      }
    }
    if (!rotated) break;
  }
  const norms = cols.map((c) => Math.sqrt(dot(c, c)));
  const order = norms.map((_, j) => j).sort((x, y) => norms[y]! - norms[x]!);
  const left = zeros(m, n);
  const right = zeros(n, n);
  const S = new Float64Array(n);
  order.forEach((from, to) => {
    const sigma = norms[from]!;
    S[to] = sigma;
    for (let i = 0; i < m; i++) left.data[i * n + to] = sigma > 0 ? cols[from]![i]! / sigma : 0;
    for (let i = 0; i < n; i++) right.data[i * n + to] = vcols[from]![i]!;
  });
  return wide ? { U: right, S, V: left } : { U: left, S, V: right };
}

/**
 * Cosines of the principal angles between the column spaces of q1 and q2 (both with
 * orthonormal columns): the singular values of q1^T q2, descending. All near 1 when the
 * spaces agree; the last one is the cosine of the largest angle.
 */
export function principalCosines(q1: Mat, q2: Mat): Float64Array {
  return jacobiSvd(matmulTN(q1, q2)).S;
}

/** Smallest principal cosine (cosine of the largest angle). */
export function subspaceAgreement(q1: Mat, q2: Mat): number {
  const c = principalCosines(q1, q2);
  return c[c.length - 1]!;
}

/** Thin QR by modified Gram-Schmidt, twice, in f64 (diag(R) > 0): the Q factor. */
export function gramSchmidt(a: Mat): Mat64 {
  const q = toF64(a);
  const { rows: m, cols: n } = q;
  for (let j = 0; j < n; j++) {
    for (let pass = 0; pass < 2; pass++) {
      for (let p = 0; p < j; p++) {
        let d = 0;
        for (let i = 0; i < m; i++) d += q.data[i * n + p]! * q.data[i * n + j]!;
        for (let i = 0; i < m; i++) q.data[i * n + j]! -= d * q.data[i * n + p]!;
      }
    }
    let norm = 0;
    for (let i = 0; i < m; i++) norm += q.data[i * n + j]! ** 2;
    norm = Math.sqrt(norm);
    for (let i = 0; i < m; i++) q.data[i * n + j]! /= norm;
  }
  return q;
}

/** A random rows x cols f64 matrix with orthonormal columns. */
export function randomOrthonormal(rows: number, cols: number, seed: number): Mat64 {
  const g = gaussian(rng(seed));
  const a = zeros(rows, cols);
  for (let i = 0; i < a.data.length; i++) a.data[i] = g();
  return gramSchmidt(a);
}

export interface KnownSvd {
  /** The f32 input A = U diag(s) V^T (rounded to f32). */
  A: Matrix;
  U: Mat64;
  s: Float64Array;
  V: Mat64;
}

/** A rows x cols matrix with the given singular values and random singular vectors. */
export function withSpectrum(rows: number, cols: number, s: ArrayLike<number>, seed: number): KnownSvd {
  const r = s.length;
  const U = randomOrthonormal(rows, r, seed);
  const V = randomOrthonormal(cols, r, seed ^ 0x5bd1e995);
  return { A: toF32(reconstruct(U, s, V)), U, s: Float64Array.from(s), V };
}

/** s_i = decay^i, i < count. */
export function geometric(count: number, decay: number, first = 1): Float64Array {
  return Float64Array.from({ length: count }, (_, i) => first * decay ** i);
}
