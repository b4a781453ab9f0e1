/**
 * Tiny float64 dense matrices for test references. Deliberately naive (triple loops, full
 * d_out x d_in products), so they share no code path or evaluation order with the native
 * kernels.
 */
import type { Matrix } from '../../lib/index.js';

export interface Dense {
  rows: number;
  cols: number;
  data: Float64Array;
}

export function dense(rows: number, cols: number, data?: ArrayLike<number>): Dense {
  const m = { rows, cols, data: new Float64Array(rows * cols) };
  if (data) {
    if (data.length !== rows * cols) throw new Error(`dense: ${data.length} values for ${rows} x ${cols}`);
    m.data.set(data);
  }
  return m;
}

/** f64 copy of an f32 matrix. */
export function toDense(m: Matrix): Dense {
  return dense(m.rows, m.cols, m.data);
}

export function transpose(a: Dense): Dense {
  const t = dense(a.cols, a.rows);
  for (let i = 0; i < a.rows; i++) for (let j = 0; j < a.cols; j++) t.data[j * a.rows + i] = a.data[i * a.cols + j]!;
  return t;
}

/** a b (i-k-j loop, f64 accumulation). */
export function matmul(a: Dense, b: Dense): Dense {
  if (a.cols !== b.rows) throw new Error(`matmul: ${a.rows}x${a.cols} times ${b.rows}x${b.cols}`);
  const c = dense(a.rows, b.cols);
  for (let i = 0; i < a.rows; i++) {
    for (let k = 0; k < a.cols; k++) {
      const aik = a.data[i * a.cols + k]!;
      if (aik === 0) continue;
      const bRow = k * b.cols, cRow = i * b.cols;
      for (let j = 0; j < b.cols; j++) c.data[cRow + j] = c.data[cRow + j]! + aik * b.data[bRow + j]!;
    }
  }
  return c;
}

/** sa a + sb b. */
export function add(a: Dense, b: Dense, sa = 1, sb = 1): Dense {
  if (a.rows !== b.rows || a.cols !== b.cols) throw new Error('add: shape mismatch');
  const c = dense(a.rows, a.cols);
  for (let i = 0; i < c.data.length; i++) c.data[i] = sa * a.data[i]! + sb * b.data[i]!;
  return c;
}

export function scale(a: Dense, s: number): Dense {
  return add(a, a, s, 0);
}

/** Adds vector v (length cols) to every row. */
export function addRow(a: Dense, v: ArrayLike<number>): Dense {
  const c = dense(a.rows, a.cols, a.data);
  for (let i = 0; i < a.rows; i++) for (let j = 0; j < a.cols; j++) c.data[i * a.cols + j] = c.data[i * a.cols + j]! + v[j]!;
  return c;
}

/** sum_ij a_ij b_ij */
export function dot(a: Dense, b: Dense): number {
  let s = 0;
  for (let i = 0; i < a.data.length; i++) s += a.data[i]! * b.data[i]!;
  return s;
}

/** max |a - b| / max |b| (b is the reference). */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error('relativeError: length mismatch');
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    num = Number.isNaN(d) ? Infinity : Math.max(num, d);
    den = Math.max(den, Math.abs(b[i]!));
  }
  return den === 0 ? num : num / den;
}
