/**
 * analyze's fold bases on stacks large enough for the approximate path (lib/subspace/folds.ts:
 * a Nystrom approximation of each fold's Gram, warm-started from the in-sample basis): every
 * adapter's held-out error against the exact reference (for each fold, the other folds'
 * stack decomposed by an exact SVD in float64 — a build with an oversample that forces
 * rsvd's exact path — and the adapter projected on it), the curve against the exact
 * singular values of the whole stack, and no leak: an adapter whose directions are in the
 * in-sample basis but in no other adapter's span keeps a held-out error near 1.
 */
import test from 'ava';
import { analyzeAdapters, buildSubspace, projectAdapter, type LoraAdapter } from '../lib/index.js';
import { matrix, type Matrix } from '../lib/matrix.js';
import * as ops from '../lib/native/ops.js';
import { freshSeed, gaussian, rng } from './helpers/random.js';
import { memoryAdapter, normal, plantedBases, plantedFactors } from './helpers/subspace-fixtures.js';

const D_IN = 160;
const D_OUT = 144;
const RANK = 8;
const N = 25; // above 20: 5-fold; each fold's stack (160 rows) is far above rsvd's exact threshold
const FOLDS = 5;
const MODULE = 'layers.0.q_proj';
/** A build whose rsvd takes the exact path (min(rows, d) <= 2 (K + oversample)): float64 SVD of the whole stack. */
const EXACT = { oversample: 1000 } as const;

function zoo(seed: number, planted: number, noise: number): LoraAdapter[] {
  const bases = plantedBases(D_IN, D_OUT, planted, planted, seed);
  return Array.from({ length: N }, (_, i) => memoryAdapter([{ name: MODULE, ...plantedFactors(bases, RANK, seed + 31 * i + 1, noise), alpha: 16 }]));
}

/** Per adapter, its held-out relative error against the exact basis of the other folds. */
async function exactHeldOut(adapters: LoraAdapter[], options: Record<string, unknown>): Promise<number[]> {
  const out: number[] = new Array(adapters.length);
  for (let f = 0; f < FOLDS; f++) {
    const basis = await buildSubspace(
      adapters.filter((_, i) => i % FOLDS !== f),
      { ...options, ...EXACT, hashSources: false },
    );
    for (let i = f; i < adapters.length; i += FOLDS) out[i] = (await projectAdapter(basis, adapters[i]!, { hashSources: false })).relativeError;
  }
  return out;
}

test('the native job is registered and refuses bad folds', async (t) => {
  const a = normal(2, 8, 1);
  const b = normal(6, 2, 2);
  const args = {
    adapters: [{ A: a, B: b, scale: 1 }],
    folds: Int32Array.of(3),
    foldCount: 2,
    stacking: 'canonical' as const,
    weighting: 'equal' as const,
    oversample: 2,
    powerIters: 1,
    seed: 1,
    componentsA: 1,
    componentsB: 1,
    curveA: 1,
    curveB: 1,
    warmA: null,
    warmB: null,
  };
  await t.throwsAsync(ops.foldBases(args), { code: 'ERR_INVALID_ARGUMENT', message: /folds\[0\]/ });
  await t.throwsAsync(ops.foldBases({ ...args, folds: Int32Array.of(0, 1) }), { code: 'ERR_SHAPE_MISMATCH', message: /folds/ });
  const ok = await ops.foldBases({ ...args, folds: Int32Array.of(1) });
  t.is(ok.folds[1], null, 'fold 1 holds every adapter: no basis');
  t.true(ok.folds[0] !== null && ok.folds[0]!.A.components.rows === 8);
});

for (const stacking of ['canonical', 'raw'] as const) {
  test(`foldBases with projectHeldOut (${stacking}): each adapter's loadings, norm, error and overlaps are bit for bit projectModule's and factorOverlaps' on its fold's basis`, async (t) => {
    const seed = freshSeed();
    const adapters = zoo(seed, 6, 0.3);
    const pairs = adapters.map((a) => {
      const m = a.modules.get(MODULE)!;
      return { A: m.A, B: m.B, scale: m.scale };
    });
    const folds = Int32Array.from(pairs, (_, i) => i % FOLDS);
    const result = await ops.foldBases({
      adapters: pairs, folds, foldCount: FOLDS, stacking, weighting: 'equal', oversample: 10, powerIters: 2, seed,
      componentsA: 6, componentsB: 6, curveA: 12, curveB: 12, warmA: null, warmB: null, projectHeldOut: true,
    });
    t.is(result.heldOut?.length, N);
    for (let f = 0; f < FOLDS; f++) {
      const fold = result.folds[f]!;
      const left = pairs.filter((_, i) => folds[i] === f);
      const alphas = left.map((p) => matrix(fold.A.components.cols, p.A.rows));
      const betas = left.map((p) => matrix(fold.B.components.cols, p.A.rows));
      const norms = new Float64Array(left.length);
      const errors = new Float64Array(left.length);
      const basis = { componentsA: fold.A.components, componentsB: fold.B.components };
      await ops.projectModule({ adapters: left, stacking, ...basis, meanA: null, meanB: null, alphas, betas, norms, errors });
      const overlapA = new Float64Array(left.length);
      const overlapB = new Float64Array(left.length);
      await ops.factorOverlaps({ adapters: left, basisA: basis.componentsA, basisB: basis.componentsB, overlapA, overlapB });
      const held = result.heldOut!.filter((_, i) => folds[i] === f);
      t.deepEqual(held.map((h) => h!.alpha), alphas, `seed ${seed}: fold ${f} alphas`);
      t.deepEqual(held.map((h) => h!.beta), betas, `seed ${seed}: fold ${f} betas`);
      t.deepEqual(held.map((h) => [h!.norm, h!.error, h!.overlapA, h!.overlapB]), left.map((_, j) => [norms[j], errors[j], overlapA[j], overlapB[j]]), `seed ${seed}: fold ${f}`);
      t.true(errors.every((e) => e > 0), `seed ${seed}: held-out adapters are not inside their fold's basis`);
    }
  });
}

test("approximate fold bases: every held-out error within 1% of the exact per-fold SVD (a build's rsvd per fold: 0.5%), the curve within 0.01", async (t) => {
  const seed = freshSeed();
  const options = { components: 6, seed: 5 };
  const adapters = zoo(seed, 30, 1); // a slowly decaying spectrum: the hard case for a sketch
  const a = await analyzeAdapters(adapters, { ...options, curveComponents: 20 });
  const exact = await exactHeldOut(adapters, options);
  let worst = 0;
  a.perAdapter.forEach((p, i) => {
    const deviation = Math.abs(p.heldOutError! - exact[i]!) / exact[i]!;
    worst = Math.max(worst, deviation);
    t.true(deviation < 0.01, `seed ${seed}: ${p.name}: ${p.heldOutError} vs exact ${exact[i]}`);
  });
  t.log(`seed ${seed}: largest relative deviation of a held-out error from the exact fold basis: ${worst.toExponential(2)}`);
  const whole = (await buildSubspace(adapters, { ...options, ...EXACT, components: 20, hashSources: false })).modules.get(MODULE)!;
  const m = a.modules[0]!;
  for (const side of ['A', 'B'] as const) {
    const reference = side === 'A' ? whole.singularA : whole.singularB;
    const energy = side === 'A' ? whole.energyA : whole.energyB;
    t.is(m[side].singularValues.length, 20);
    // The top K singular values within 1%; the curve (explained variance) within 0.01 all along.
    m[side].singularValues.slice(0, 6).forEach((s, k) => t.true(Math.abs(s - reference[k]!) <= 0.01 * reference[k]!, `seed ${seed}: ${side} sigma ${k + 1}: ${s} vs ${reference[k]}`));
    let running = 0;
    let worstCurve = 0;
    m[side].curve.forEach((v, k) => {
      running += reference[k]! ** 2;
      worstCurve = Math.max(worstCurve, Math.abs(v - running / energy));
    });
    t.log(`seed ${seed}: ${side}: largest deviation of the curve from the exact one: ${worstCurve.toExponential(2)}`);
    t.true(worstCurve < 0.01, `seed ${seed}: ${side}: ${worstCurve}`);
  }
});

test('no leak: an adapter outside the others\' span keeps a held-out error near 1 although the in-sample basis holds its directions', async (t) => {
  const seed = freshSeed();
  // 24 adapters in a planted 10-dimensional subspace with little noise; adapter 0 random.
  const adapters = zoo(seed, 10, 0.02);
  adapters[0] = memoryAdapter([{ name: MODULE, A: normal(RANK, D_IN, seed + 5), B: normal(D_OUT, RANK, seed + 6), alpha: 16 }]);
  const options = { components: 14, seed: 2 };
  const a = await analyzeAdapters(adapters, options);
  const exact = await exactHeldOut(adapters, options);
  const outsider = a.perAdapter[0]!;
  t.log(`seed ${seed}: outsider in-sample ${outsider.inSampleError.toFixed(4)}, held-out ${outsider.heldOutError!.toFixed(4)} (exact ${exact[0]!.toFixed(4)})`);
  t.true(outsider.inSampleError < 0.95, `seed ${seed}: the in-sample basis holds some of adapter 0's directions (${outsider.inSampleError})`);
  t.true(outsider.heldOutError! > 0.98, `seed ${seed}: held out, adapter 0 is not reconstructed (${outsider.heldOutError})`);
  t.true(Math.abs(outsider.heldOutError! - exact[0]!) < 0.01, `seed ${seed}: ${outsider.heldOutError} vs exact ${exact[0]}`);
  for (let i = 1; i < N; i++) t.true(a.perAdapter[i]!.heldOutError! < 0.2, `seed ${seed}: adapter ${i}: ${a.perAdapter[i]!.heldOutError}`);
});

test('the builds path (centring, or a module over the memory budget) and the stack path agree', async (t) => {
  const seed = freshSeed();
  const adapters = zoo(seed, 10, 0.3);
  const options = { components: 6, seed: 5 };
  const stacked = await analyzeAdapters(adapters, options);
  const built = await analyzeAdapters(adapters, { ...options, memoryBudget: 1 });
  t.true(stacked.timings.spectrumMs === 0 && built.timings.spectrumMs > 0, 'the builds path builds for the curves');
  t.true(Math.abs(stacked.heldOutError - built.heldOutError) <= 1e-3 * built.heldOutError, `seed ${seed}: ${stacked.heldOutError} vs ${built.heldOutError}`);
  for (const side of ['A', 'B'] as const) t.true(Math.abs(stacked.overlap[side] - built.overlap[side]) < 1e-3, `seed ${seed}: overlap ${side}`);
  const centred = await analyzeAdapters(adapters, { ...options, center: true });
  t.true(centred.timings.spectrumMs > 0, 'centring builds per fold');
  t.true(centred.heldOutError > 0 && centred.heldOutError < 1, `seed ${seed}: ${centred.heldOutError}`);
});

test('analyze is bit-reproducible: modules finishing in any order give the same figures, in the modules\' order', async (t) => {
  const seed = freshSeed();
  // Modules of very different sizes, so the pool finishes them out of order.
  const shapes = [
    ['layers.0.mlp.up_proj', 400, 96],
    ['layers.0.q_proj', 24, 20],
    ['layers.1.mlp.up_proj', 320, 112],
    ['layers.1.q_proj', 16, 28],
  ] as const;
  const bases = shapes.map(([, dOut, dIn], m) => plantedBases(dIn, dOut, 6, 6, seed + 101 * m));
  const adapters = Array.from({ length: 8 }, (_, i) =>
    memoryAdapter(shapes.map(([name], m) => ({ name, ...plantedFactors(bases[m]!, 4, seed + 1000 * i + m, 0.3), alpha: 8 }))),
  );
  const figures = async () => {
    const a = await analyzeAdapters(adapters, { components: 3, heldOut: 'leave-one-out', concurrency: 4 });
    return {
      heldOutError: a.heldOutError,
      overlap: a.overlap,
      modules: a.modules.map((m) => [m.name, m.A, m.B]),
      perAdapter: a.perAdapter.map((p) => [p.heldOutError, p.overlap]),
    };
  };
  const first = await figures();
  t.deepEqual(first.modules.map((m) => m[0]), shapes.map(([name]) => name).sort());
  for (let run = 0; run < 3; run++) t.deepEqual(await figures(), first, `seed ${seed}, run ${run + 2}`);
});

/** Orthonormal columns spanning `columns` (each of length d), by modified Gram-Schmidt twice, in float64. */
function orthonormalColumns(columns: Float64Array[]): Float64Array[] {
  const q = columns.map((c) => Float64Array.from(c));
  for (let pass = 0; pass < 2; pass++) {
    for (let j = 0; j < q.length; j++) {
      for (let i = 0; i < j; i++) {
        let dot = 0;
        for (let s = 0; s < q[j]!.length; s++) dot += q[i]![s]! * q[j]![s]!;
        for (let s = 0; s < q[j]!.length; s++) q[j]![s]! -= dot * q[i]![s]!;
      }
      const norm = Math.sqrt(q[j]!.reduce((sum, v) => sum + v * v, 0));
      for (let s = 0; s < q[j]!.length; s++) q[j]![s]! /= norm;
    }
  }
  return q;
}

/** ||Q^T P||_F^2 / min(r, K) in float64 for Q spanning the factor's columns and P = basis (d x K). */
function referenceOverlap(columns: Float64Array[], basis: Matrix): number {
  const k = basis.cols;
  let sum = 0;
  for (const column of orthonormalColumns(columns)) {
    for (let c = 0; c < k; c++) {
      let dot = 0;
      for (let s = 0; s < basis.rows; s++) dot += column[s]! * basis.data[s * k + c]!;
      sum += dot * dot;
    }
  }
  return Math.min(1, sum / Math.min(columns.length, k));
}

test('factorOverlaps: each factor span against a float64 reference, well- and ill-conditioned factors alike', async (t) => {
  const seed = freshSeed();
  const g = gaussian(rng(seed));
  const k = 6;
  const basisOf = (d: number): Matrix => {
    const q = orthonormalColumns(Array.from({ length: k }, () => Float64Array.from({ length: d }, () => g())));
    const m = matrix(d, k);
    for (let s = 0; s < d; s++) for (let j = 0; j < k; j++) m.data[s * k + j] = q[j]![s]!;
    return m;
  };
  const basisA = basisOf(D_IN);
  const basisB = basisOf(D_OUT);
  // Adapter 0: random; 1: half of each factor inside the basis; 2: one direction scaled by
  // 1e-5 (cond far above 1e3: not the Gram path).
  const adapters = [0, 1, 2].map((kind) => {
    const A = matrix(RANK, D_IN);
    const B = matrix(D_OUT, RANK);
    for (let i = 0; i < A.data.length; i++) A.data[i] = g();
    for (let i = 0; i < B.data.length; i++) B.data[i] = g();
    if (kind === 1) {
      for (let r = 0; r < RANK / 2; r++) {
        for (let s = 0; s < D_IN; s++) A.data[r * D_IN + s] = basisA.data[s * k + r]! * 3;
        for (let s = 0; s < D_OUT; s++) B.data[s * RANK + r] = basisB.data[s * k + r]! * 2;
      }
    }
    if (kind === 2) {
      for (let s = 0; s < D_IN; s++) A.data[3 * D_IN + s] = A.data[3 * D_IN + s]! * 1e-5;
      for (let s = 0; s < D_OUT; s++) B.data[s * RANK + 5] = B.data[s * RANK + 5]! * 1e-5;
    }
    return { A, B, scale: 1 };
  });
  const overlapA = new Float64Array(adapters.length);
  const overlapB = new Float64Array(adapters.length);
  await ops.factorOverlaps({ adapters, basisA, basisB, overlapA, overlapB });
  for (const [i, a] of adapters.entries()) {
    const columnsA = Array.from({ length: RANK }, (_, r) => Float64Array.from(a.A.data.subarray(r * D_IN, (r + 1) * D_IN)));
    const columnsB = Array.from({ length: RANK }, (_, r) => Float64Array.from({ length: D_OUT }, (_, s) => a.B.data[s * RANK + r]!));
    const wantA = referenceOverlap(columnsA, basisA);
    const wantB = referenceOverlap(columnsB, basisB);
    t.true(Math.abs(overlapA[i]! - wantA) <= 1e-5, `seed ${seed}: adapter ${i} A ${overlapA[i]} against ${wantA}`);
    t.true(Math.abs(overlapB[i]! - wantB) <= 1e-5, `seed ${seed}: adapter ${i} B ${overlapB[i]} against ${wantB}`);
  }
  t.true(overlapA[1]! > 0.5 && overlapB[1]! > 0.5, `seed ${seed}: half inside the basis`);
});
