/**
 * Small pieces of buildSubspace: column slices, K from explained variance, and a clock of
 * busy time.
 */
import { matrix, type Matrix } from '../matrix.js';

/** The first `k` columns of a `rows x cols` matrix. */
export function leftColumns(m: Matrix, k: number): Matrix {
  if (k === m.cols) return m;
  const out = matrix(m.rows, k);
  for (let i = 0; i < m.rows; i++) out.data.set(m.data.subarray(i * m.cols, i * m.cols + k), i * k);
  return out;
}

/** [a, b] side by side. */
export function besides(a: Matrix, b: Matrix): Matrix {
  const cols = a.cols + b.cols;
  const out = matrix(a.rows, cols);
  for (let i = 0; i < a.rows; i++) {
    out.data.set(a.data.subarray(i * a.cols, (i + 1) * a.cols), i * cols);
    out.data.set(b.data.subarray(i * b.cols, (i + 1) * b.cols), i * cols + a.cols);
  }
  return out;
}

/** Smallest K with sum_{k<K} s_k^2 >= threshold * energy (or all of them). */
export function chooseK(singular: Float32Array, energy: number, threshold: number): { k: number; explained: number; reached: boolean } {
  if (!(energy > 0)) return { k: 1, explained: 1, reached: true };
  let sum = 0;
  for (let k = 0; k < singular.length; k++) {
    const s = singular[k] as number;
    sum += s * s;
    if (sum >= threshold * energy * (1 - 1e-12)) return { k: k + 1, explained: Math.min(1, sum / energy), reached: true };
  }
  return { k: singular.length, explained: Math.min(1, sum / energy), reached: false };
}

export function explainedBy(singular: Float32Array, energy: number): number {
  if (!(energy > 0)) return 1;
  let sum = 0;
  for (const s of singular) sum += s * s;
  return Math.min(1, sum / energy);
}

/**
 * Wall time during which at least one operation of a kind was in flight (the union of
 * the intervals, so overlapping operations are not counted twice).
 */
export class BusyClock {
  #active = 0;
  #since = 0;
  total = 0;

  async time<T>(body: () => Promise<T>): Promise<T> {
    if (this.#active++ === 0) this.#since = performance.now();
    try {
      return await body();
    } finally {
      if (--this.#active === 0) this.total += performance.now() - this.#since;
    }
  }
}

