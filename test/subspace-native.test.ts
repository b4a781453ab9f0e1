/**
 * The per-module native kernels behind the subspace library (native/core/subspace.cpp),
 * checked against f64 dense references written here: dW formed in full, stacked
 * matrices decomposed by Jacobi SVD.
 */
import test from 'ava';
import { EigenLoraxError, matrix, type Matrix } from '../lib/index.js';
import { native, type NativeFactorPair, type NativeStacking, type NativeWeighting } from '../lib/native.js';
import * as ops from '../lib/native/ops.js';
import { freshSeed, randomMatrix } from './helpers/random.js';
import { invertible, regauge } from './helpers/subspace-fixtures.js';
import {
  frobenius,
  frobeniusDistance,
  jacobiSvd,
  leftCols,
  matmul,
  subspaceAgreement,
  toF64,
  transpose,
  zeros,
  type Mat64,
} from './helpers/reference.js';

const dIn = 36;
const dOut = 28;

function adapters(seed: number, count: number, ranks = [3, 4, 2, 5]): NativeFactorPair[] {
  return Array.from({ length: count }, (_, i) => {
    const r = ranks[i % ranks.length]!;
    return { A: randomMatrix(r, dIn, seed + 2 * i), B: randomMatrix(dOut, r, seed + 2 * i + 1), scale: 0.25 + i };
  });
}

/** scale * B A in f64. */
function deltaW(p: { A: Matrix; B: Matrix }, scale: number): Mat64 {
  const w = matmul(toF64(p.B), toF64(p.A));
  for (let i = 0; i < w.data.length; i++) w.data[i]! *= scale;
  return w;
}

async function build(list: NativeFactorPair[], stacking: NativeStacking, weighting: NativeWeighting, k: number, center = false) {
  const componentsA = matrix(dIn, k);
  const componentsB = matrix(dOut, k);
  const singularA = new Float32Array(k);
  const singularB = new Float32Array(k);
  const meanA = center ? new Float32Array(dIn) : null;
  const meanB = center ? new Float32Array(dOut) : null;
  const info = await native.buildModuleSubspace({
    adapters: list,
    stacking,
    weighting,
    center,
    oversample: 10,
    powerIters: 2,
    seed: 3,
    componentsA,
    componentsB,
    singularA,
    singularB,
    meanA,
    meanB,
  });
  return { componentsA, componentsB, singularA, singularB, meanA, meanB, info };
}

async function project(list: NativeFactorPair[], stacking: NativeStacking, basis: Awaited<ReturnType<typeof build>>) {
  const kA = basis.componentsA.cols;
  const kB = basis.componentsB.cols;
  const alphas = list.map((p) => matrix(kA, p.A.rows));
  const betas = list.map((p) => matrix(kB, p.A.rows));
  const norms = new Float64Array(list.length);
  const errors = new Float64Array(list.length);
  await native.projectModule({
    adapters: list,
    stacking,
    componentsA: basis.componentsA,
    componentsB: basis.componentsB,
    meanA: basis.meanA,
    meanB: basis.meanB,
    alphas,
    betas,
    norms,
    errors,
  });
  const reconstructions = await Promise.all(
    list.map(async (p, i) => {
      const A = matrix(p.A.rows, dIn);
      const B = matrix(dOut, p.A.rows);
      await native.reconstructFactors({
        componentsA: basis.componentsA,
        componentsB: basis.componentsB,
        meanA: basis.meanA,
        meanB: basis.meanB,
        alpha: alphas[i]!,
        beta: betas[i]!,
        A,
        B,
      });
      return { A, B };
    }),
  );
  return { alphas, betas, norms, errors, reconstructions };
}

for (const stacking of ['raw', 'canonical'] as const) {
  const name = stacking;
  for (const center of [false, true]) {
    test(`projectModule (${name}${center ? ', centred' : ''}): norms and errors equal the dense f64 ones`, async (t) => {
      const seed = freshSeed();
      const list = adapters(seed, 6);
      const basis = await build(list, stacking, 'equal', 6, center);
      const { norms, errors, reconstructions } = await project(list, stacking, basis);
      list.forEach((p, i) => {
        const dW = deltaW(p, p.scale);
        // Raw reconstructions carry the adapter's scale outside; canonical ones inside.
        const dWHat = deltaW(reconstructions[i]!, stacking === 'raw' ? p.scale : 1);
        const want = frobeniusDistance(dW, dWHat);
        t.true(Math.abs(norms[i]! - frobenius(dW)) <= 1e-5 * frobenius(dW), `seed ${seed}, adapter ${i}: norm`);
        t.true(Math.abs(errors[i]! - want) <= 1e-4 * frobenius(dW), `seed ${seed}, adapter ${i}: ${errors[i]} vs ${want}`);
      });
    });
  }
}

/** dW = B A with singular values (2, 2, 1, 1) x scale: A's rows and B's columns on coordinate axes. */
function repeatedSingularValues(): { A: Matrix; B: Matrix } {
  const A = matrix(4, dIn);
  const B = matrix(dOut, 4);
  [2, 2, 1, 1].forEach((s, j) => {
    A.data[j * dIn + 3 * j + 1] = 1;
    B.data[(2 * j + 5) * 4 + j] = s;
  });
  return { A, B };
}

// Canonical factors across conditioning: well-conditioned factors take R from the r x r
// Grams (no Q formed), cond ~1e5 takes CholeskyQR2, ~1e7 and a zero column Householder.
// With a complete basis (K = total rank) the reconstruction is the canonical pair itself:
// B' A' = dW and B'^T B' = A' A'^T = diag(singular values of dW), against f64 references.
// Repeated singular values: the core's SVD is unique only up to rotations inside each pair.
for (const [label, spread, zeroColumn, repeated] of [
  ['well-conditioned', 3, false, false],
  ['cond ~1e5', 300, false, false],
  ['cond ~1e7', 3000, false, false],
  ['rank-deficient B', 3, true, false],
  ['repeated singular values', 3, false, true],
] as const) {
  test(`canonical factors of ${label} adapters are balanced SVD factors of dW (f64 reference)`, async (t) => {
    const seed = freshSeed();
    const r = 4;
    const list = adapters(seed, 3, [r]).map((p, i) => {
      const { A, B } = repeated ? repeatedSingularValues() : p;
      const g = regauge(A, B, invertible(r, seed + 10 * i, spread));
      if (zeroColumn) for (let j = 0; j < dOut; j++) g.B.data[j * r + r - 1] = 0;
      return { ...g, scale: p.scale };
    });
    const basis = await build(list, 'canonical', 'scale', 3 * r);
    const { reconstructions } = await project(list, 'canonical', basis);
    list.forEach((p, i) => {
      const what = `seed ${seed}, ${label}, adapter ${i}`;
      const dW = deltaW(p, p.scale);
      const sv = jacobiSvd(dW).S;
      const { A, B } = reconstructions[i]!;
      t.true(frobeniusDistance(deltaW({ A, B }, 1), dW) <= 1e-5 * frobenius(dW), `${what}: B' A' != dW`);
      const bb = matmul(transpose(B), toF64(B));
      const aa = matmul(toF64(A), transpose(A));
      let worst = 0;
      for (let a = 0; a < r; a++) {
        for (let b = 0; b < r; b++) {
          const want = a === b ? sv[a]! : 0;
          worst = Math.max(worst, Math.abs(bb.data[a * r + b]! - want), Math.abs(aa.data[a * r + b]! - want));
        }
      }
      t.true(worst <= 1e-5 * sv[0]!, `${what}: B'^T B', A' A'^T differ from diag(s) by ${worst} (s_1 = ${sv[0]})`);
    });
  });
}

test('buildModuleSubspace (raw): components are the top singular vectors of the stacked factors', async (t) => {
  const seed = freshSeed();
  const list = adapters(seed, 5);
  const k = 6;
  const { componentsA, componentsB, singularA, singularB, info } = await build(list, 'raw', 'equal', k);
  // Stack A rows (sum r x d_in) and B columns (as rows: sum r x d_out) by hand.
  const total = list.reduce((n, p) => n + p.A.rows, 0);
  const stackA = zeros(total, dIn);
  const stackB = zeros(total, dOut);
  let row = 0;
  for (const p of list) {
    const bt = transpose(p.B);
    for (let i = 0; i < p.A.rows; i++, row++) {
      for (let j = 0; j < dIn; j++) stackA.data[row * dIn + j] = p.A.data[i * dIn + j]!;
      for (let j = 0; j < dOut; j++) stackB.data[row * dOut + j] = bt.data[i * dOut + j]!;
    }
  }
  for (const [stack, components, singular, energy, side] of [
    [stackA, componentsA, singularA, info.energyA, 'A'],
    [stackB, componentsB, singularB, info.energyB, 'B'],
  ] as const) {
    const exact = jacobiSvd(stack);
    t.true(Math.abs(energy - frobenius(stack) ** 2) <= 1e-5 * energy, `seed ${seed}: energy ${side}`);
    for (let j = 0; j < k; j++) {
      t.true(Math.abs(singular[j]! - exact.S[j]!) <= 2e-3 * exact.S[0]!, `seed ${seed}: ${side} s_${j}`);
    }
    // Random factors have no spectral gap to speak of: compare the leading directions,
    // whose gaps are large enough, rather than all k.
    t.true(subspaceAgreement(leftCols(exact.V, 2), leftCols(toF64(components), 4)) > 0.99, `seed ${seed}: ${side} span`);
  }
  t.deepEqual(
    Array.from(info.norms, (x) => Number(x.toPrecision(5))),
    list.map((p) => Number(frobenius(deltaW(p, p.scale)).toPrecision(5))),
  );
});

test('canonical stacking removes the gauge freedom: (B G, G^-1 A) gives the same components and errors', async (t) => {
  const seed = freshSeed();
  const list = adapters(seed, 4, [3]);
  // G = I + small random, so G^-1 is well conditioned; G^-1 A solved in f64 via Jacobi SVD.
  const regauged = list.map((p, i) => {
    const g = toF64(randomMatrix(3, 3, seed + 100 + i, 0.3));
    for (let d = 0; d < 3; d++) g.data[d * 4]! += 1;
    const svd = jacobiSvd(g);
    const ginv = zeros(3, 3);
    for (let a = 0; a < 3; a++)
      for (let b = 0; b < 3; b++) {
        let v = 0;
        for (let c = 0; c < 3; c++) v += (svd.V.data[a * 3 + c]! * svd.U.data[b * 3 + c]!) / svd.S[c]!;
        ginv.data[a * 3 + b] = v;
      }
    const B = matmul(toF64(p.B), g);
    const A = matmul(ginv, toF64(p.A));
    return { A: matrix(3, dIn, Float32Array.from(A.data)), B: matrix(dOut, 3, Float32Array.from(B.data)), scale: p.scale };
  });
  const k = 5;
  const first = await build(list, 'canonical', 'equal', k);
  const second = await build(regauged, 'canonical', 'equal', k);
  t.true(subspaceAgreement(toF64(first.componentsA), toF64(second.componentsA)) > 0.999, `seed ${seed}: A side`);
  t.true(subspaceAgreement(toF64(first.componentsB), toF64(second.componentsB)) > 0.999, `seed ${seed}: B side`);
  const e1 = (await project(list, 'canonical', first)).errors;
  const e2 = (await project(regauged, 'canonical', first)).errors;
  e1.forEach((e, i) => t.true(Math.abs(e - e2[i]!) <= 1e-3 * (1 + e), `seed ${seed}: adapter ${i} error ${e} vs ${e2[i]}`));
  // Raw stacking sees the two gauges as different factors.
  const raw1 = await build(list, 'raw', 'equal', k);
  const raw2 = await build(regauged, 'raw', 'equal', k);
  t.true(subspaceAgreement(toF64(raw1.componentsA), toF64(raw2.componentsA)) < 0.99, `seed ${seed}: raw differs`);
});

test('centring writes the means and reconstruction adds them back', async (t) => {
  const seed = freshSeed();
  // Adapters sharing a common offset in A: centring should capture it in the mean.
  const offset = randomMatrix(1, dIn, seed, 3);
  const list = adapters(seed, 4, [4]).map((p) => {
    const A = matrix(p.A.rows, dIn, Float32Array.from(p.A.data, (v, i) => v + offset.data[i % dIn]!));
    return { ...p, A };
  });
  const basis = await build(list, 'raw', 'equal', 16, true);
  let mean = 0;
  for (const p of list) for (let i = 0; i < p.A.data.length; i++) mean += p.A.data[i]!;
  t.true(Math.abs(basis.meanA!.reduce((s, v) => s + v, 0) - mean / (16)) < 1e-3, `seed ${seed}: mean A`);
  // With as many components as stacked rows minus one, centred raw reconstruction is exact.
  const { reconstructions } = await project(list, 'raw', await build(list, 'raw', 'equal', 15, true));
  list.forEach((p, i) => {
    t.true(frobeniusDistance(toF64(reconstructions[i]!.A), toF64(p.A)) < 1e-4 * frobenius(toF64(p.A)), `seed ${seed}: A_${i}`);
  });
});

for (const [stacking, weighting, center] of [
  ['canonical', 'equal', false],
  ['canonical', 'scale', true],
  ['raw', 'equal', true],
] as const) {
  test(`buildModuleSubspace with project (${stacking}, ${weighting}${center ? ', centred' : ''}): the same components, and loadings, norms and errors bit for bit those of projectModule`, async (t) => {
    const seed = freshSeed();
    const list = adapters(seed, 7);
    const k = 4;
    const separate = await build(list, stacking, weighting, k, center);
    const projected = await project(list, stacking, separate);
    const out = {
      componentsA: matrix(dIn, k),
      componentsB: matrix(dOut, k),
      singularA: new Float32Array(k),
      singularB: new Float32Array(k),
      meanA: center ? new Float32Array(dIn) : null,
      meanB: center ? new Float32Array(dOut) : null,
    };
    const alphas = list.map((p) => matrix(k, p.A.rows));
    const betas = list.map((p) => matrix(k, p.A.rows));
    const norms = new Float64Array(list.length);
    const errors = new Float64Array(list.length);
    const info = await native.buildModuleSubspace({ adapters: list, stacking, weighting, center, oversample: 10, powerIters: 2, seed: 3, ...out, project: { alphas, betas, norms, errors } });
    t.deepEqual(info, separate.info, `seed ${seed}`);
    t.deepEqual(out.componentsA.data, separate.componentsA.data, `seed ${seed}`);
    t.deepEqual(out.componentsB.data, separate.componentsB.data, `seed ${seed}`);
    t.deepEqual(alphas.map((a) => a.data), projected.alphas.map((a) => a.data), `seed ${seed}: alphas`);
    t.deepEqual(betas.map((b) => b.data), projected.betas.map((b) => b.data), `seed ${seed}: betas`);
    t.deepEqual(norms, projected.norms, `seed ${seed}: norms`);
    t.deepEqual(errors, projected.errors, `seed ${seed}: errors`);
    t.true(errors.some((e) => e > 0), `seed ${seed}: some adapter is not inside the basis`);
    // The projection's outputs are checked before any work.
    await t.throwsAsync(ops.buildModuleSubspace({ adapters: list, stacking, weighting, center, oversample: 10, powerIters: 2, seed: 3, ...out, project: { alphas: alphas.slice(1), betas, norms, errors } }), {
      code: 'ERR_INVALID_ARGUMENT',
      message: /alphas, betas: expected one output per adapter \(7\)/,
    });
    const wrong = [...alphas];
    wrong[2] = matrix(k + 1, list[2]!.A.rows);
    await t.throwsAsync(ops.buildModuleSubspace({ adapters: list, stacking, weighting, center, oversample: 10, powerIters: 2, seed: 3, ...out, project: { alphas: wrong, betas, norms, errors } }), {
      code: 'ERR_SHAPE_MISMATCH',
      message: /alphas\[2\]/,
    });
  });
}

test('bad arguments are typed errors, checked before any work', async (t) => {
  const list = adapters(1, 3);
  const k = 4;
  const out = () => ({
    componentsA: matrix(dIn, k),
    componentsB: matrix(dOut, k),
    singularA: new Float32Array(k),
    singularB: new Float32Array(k),
    meanA: null,
    meanB: null,
  });
  const base = { stacking: 'canonical', weighting: 'equal', center: false, oversample: 10, powerIters: 2, seed: 0 } as const;
  const mismatch = [...list, { A: matrix(2, dIn + 1), B: matrix(dOut, 2), scale: 1 }];
  await t.throwsAsync(async () => native.buildModuleSubspace({ ...base, ...out(), adapters: mismatch }), {
    instanceOf: EigenLoraxError,
    code: 'ERR_SHAPE_MISMATCH',
    message: /adapters\[3\]\.A/,
  });
  await t.throwsAsync(async () => native.buildModuleSubspace({ ...base, ...out(), adapters: [] }), {
    instanceOf: EigenLoraxError,
    code: 'ERR_INVALID_ARGUMENT',
  });
  const tooMany = { ...out(), componentsA: matrix(dIn, 13), singularA: new Float32Array(13) };
  await t.throwsAsync(async () => native.buildModuleSubspace({ ...base, ...tooMany, adapters: list }), {
    instanceOf: EigenLoraxError,
    code: 'ERR_INVALID_ARGUMENT',
    message: /componentsA/,
  });
  await t.throwsAsync(async () => native.buildModuleSubspace({ ...base, ...out(), center: true, adapters: list }), {
    instanceOf: EigenLoraxError,
    code: 'ERR_INVALID_ARGUMENT',
    message: /mean/,
  });
  const nan = [{ ...list[0]!, A: matrix(3, dIn, new Float32Array(3 * dIn).fill(Number.NaN)) }];
  await t.throwsAsync(async () => native.buildModuleSubspace({ ...base, ...out(), componentsA: matrix(dIn, 1), singularA: new Float32Array(1), componentsB: matrix(dOut, 1), singularB: new Float32Array(1), adapters: nan }), {
    instanceOf: EigenLoraxError,
    code: 'ERR_NON_FINITE',
  });
  const basis = await build(list, 'canonical', 'equal', k);
  await t.throwsAsync(
    async () => native.projectModule({
      adapters: list,
      stacking: 'canonical',
      componentsA: basis.componentsA,
      componentsB: basis.componentsB,
      meanA: null,
      meanB: null,
      alphas: [matrix(k, 3)],
      betas: [matrix(k, 3)],
      norms: new Float64Array(3),
      errors: new Float64Array(3),
    }),
    { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT', message: /one output per adapter/ },
  );
  await t.throwsAsync(
    async () => native.reconstructFactors({
      componentsA: basis.componentsA,
      componentsB: basis.componentsB,
      meanA: null,
      meanB: null,
      alpha: matrix(k, 2),
      beta: matrix(k, 3),
      A: matrix(2, dIn),
      B: matrix(dOut, 2),
    }),
    { instanceOf: EigenLoraxError, code: 'ERR_SHAPE_MISMATCH', message: /beta/ },
  );
});
