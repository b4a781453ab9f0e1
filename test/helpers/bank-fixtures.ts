/**
 * Banks of adapters on small random components, and the f64 reference of a batch: each
 * row's adapter applied on its own (test/multiadapter.test.ts, test/pair-cache.test.ts).
 */
import { mixingMatrix, orthonormalize, type Matrix } from '../../lib/index.js';
import { randomMatrix } from './random.js';
import { matmul, toF64, transpose, type Mat64 } from './reference.js';

export const dIn = 48;
export const dOut = 40;

export function maxRelDiff(got: Matrix, want: Mat64): number {
  let scale = 0;
  let worst = 0;
  for (let i = 0; i < want.data.length; i++) scale = Math.max(scale, Math.abs(want.data[i]!));
  for (let i = 0; i < want.data.length; i++) worst = Math.max(worst, Math.abs(got.data[i]! - want.data[i]!));
  return worst / scale;
}

/** Row b of x times (W^T) plus bias plus the row's own dense delta. */
export function denseRows(x: Matrix, weight: Matrix | null, bias: Float32Array | null, deltaOf: (b: number) => Mat64 | null): Mat64 {
  const y = { rows: x.rows, cols: dOut, data: new Float64Array(x.rows * dOut) };
  for (let b = 0; b < x.rows; b++) {
    const row = { rows: 1, cols: dIn, data: Float64Array.from(x.data.subarray(b * dIn, (b + 1) * dIn)) };
    const delta = deltaOf(b);
    for (const m of [weight ? toF64(weight) : null, delta]) {
      if (!m) continue;
      const out = matmul(row, transpose(m));
      for (let j = 0; j < dOut; j++) y.data[b * dOut + j]! += out.data[j]!;
    }
    if (bias) for (let j = 0; j < dOut; j++) y.data[b * dOut + j]! += bias[j]!;
  }
  return y;
}

export async function bank(seed: number, count: number, kA: number, kB: number, r: number) {
  const componentsA = await orthonormalize(randomMatrix(dIn, kA, seed));
  const componentsB = await orthonormalize(randomMatrix(dOut, kB, seed + 1));
  const coefficients = Array.from({ length: count }, (_, i) => ({
    alpha: randomMatrix(kA, r, seed + 10 + 2 * i),
    beta: randomMatrix(kB, r, seed + 11 + 2 * i),
    scale: 0.5 + i / 4,
  }));
  const mixing = new Float32Array(count * kA * kB);
  coefficients.forEach((c, i) => mixingMatrix(c.alpha, c.beta, c.scale, mixing.subarray(i * kA * kB, (i + 1) * kA * kB)));
  return { componentsA, componentsB, coefficients, mixing, count };
}

/** The dense delta of each adapter of a bank: s (U_B beta)(alpha^T V_A^T), in f64. */
export function bankDeltas(b: Awaited<ReturnType<typeof bank>>): Mat64[] {
  return b.coefficients.map((c) => {
    const d = matmul(matmul(toF64(b.componentsB), toF64(c.beta)), transpose(matmul(toF64(b.componentsA), toF64(c.alpha))));
    for (let i = 0; i < d.data.length; i++) d.data[i]! *= c.scale;
    return d;
  });
}

