/**
 * Many adapters in one batch, the plain linear layer, and in-place low-rank updates,
 * against f64 dense references (each row's adapter applied on its own).
 */
import test from 'ava';
import {
  EigenLoraxError,
  addLowRank,
  eigenBankApply,
  linearBackward,
  linearForward,
  loraBankApply,
  matrix,
} from '../lib/index.js';
import { freshSeed, randomMatrix, rng } from './helpers/random.js';
import { bank, bankDeltas, denseRows, dIn, dOut, maxRelDiff } from './helpers/bank-fixtures.js';
import { matmul, toF64, transpose } from './helpers/reference.js';

test('eigenBankApply equals applying each row’s adapter alone, with rows of no adapter', async (t) => {
  const seed = freshSeed();
  const b = await bank(seed, 5, 6, 7, 3);
  const n = 23;
  const x = randomMatrix(n, dIn, seed + 99);
  const random = rng(seed);
  const rows = Int32Array.from({ length: n }, () => Math.floor(random() * 6) - 1); // -1 .. 4
  const weight = randomMatrix(dOut, dIn, seed + 98);
  const bias = randomMatrix(1, dOut, seed + 97).data;
  const y = await eigenBankApply(x, b, rows, { weight, bias });
  // Dense delta of adapter i: s (U_B beta)(alpha^T V_A^T).
  const deltas = b.coefficients.map((c) => {
    const B = matmul(toF64(b.componentsB), toF64(c.beta));
    const A = transpose(matmul(toF64(b.componentsA), toF64(c.alpha)));
    const d = matmul(B, A);
    for (let i = 0; i < d.data.length; i++) d.data[i]! *= c.scale;
    return d;
  });
  const want = denseRows(x, weight, bias, (row) => (rows[row]! >= 0 ? deltas[rows[row]!]! : null));
  t.true(maxRelDiff(y, want) < 1e-5, `seed ${seed}: ${maxRelDiff(y, want)}`);
  // Without a base layer: the adapters' deltas alone.
  const delta = await eigenBankApply(x, b, rows);
  const wantDelta = denseRows(x, null, null, (row) => (rows[row]! >= 0 ? deltas[rows[row]!]! : null));
  t.true(maxRelDiff(delta, wantDelta) < 1e-5, `seed ${seed}: delta only`);
});

// Few distinct low-rank adapters take the per-call LoRA pairs (M_i = L_i R_i); many, or
// full-rank mixings, the shared products; batches past ~4e6 multiply-adds split their rows
// across threads. Every route must give each row its own adapter.
test('eigenBankApply: one adapter for all rows, a few interleaved with empty rows, full rank, and a batch split across threads', async (t) => {
  const seed = freshSeed();
  const cases: Array<{ what: string; count: number; kA: number; kB: number; r: number; n: number; rows: (b: number, random: () => number) => number }> = [
    { what: 'one low-rank adapter for every row', count: 3, kA: 16, kB: 12, r: 2, n: 37, rows: () => 1 },
    { what: 'two low-rank adapters interleaved with empty rows', count: 4, kA: 16, kB: 16, r: 2, n: 41, rows: (b) => [0, 3, -1, 3, 0][b % 5]! },
    { what: 'full-rank mixings (r = K)', count: 3, kA: 5, kB: 5, r: 5, n: 29, rows: (_, random) => Math.floor(random() * 4) - 1 },
    { what: '3000 rows, one adapter (threads, pairs)', count: 2, kA: 16, kB: 16, r: 3, n: 3000, rows: () => 0 },
    { what: '3000 rows, many adapters and empty rows (threads, shared)', count: 40, kA: 24, kB: 24, r: 6, n: 3000, rows: (_, random) => Math.floor(random() * 41) - 1 },
  ];
  for (const c of cases) {
    const b = await bank(seed + c.n, c.count, c.kA, c.kB, c.r);
    const x = randomMatrix(c.n, dIn, seed + 99);
    const random = rng(seed);
    const rows = Int32Array.from({ length: c.n }, (_, i) => c.rows(i, random));
    const deltas = bankDeltas(b);
    const deltaOf = (row: number) => (rows[row]! >= 0 ? deltas[rows[row]!]! : null);
    const weight = randomMatrix(dOut, dIn, seed + 98);
    const bias = randomMatrix(1, dOut, seed + 97).data;
    const full = await eigenBankApply(x, b, rows, { weight, bias });
    t.true(maxRelDiff(full, denseRows(x, weight, bias, deltaOf)) < 1e-5, `seed ${seed}, ${c.what}: with weight and bias`);
    const onlyBias = await eigenBankApply(x, b, rows, { bias });
    t.true(maxRelDiff(onlyBias, denseRows(x, null, bias, deltaOf)) < 1e-5, `seed ${seed}, ${c.what}: bias only`);
    // Into a dirty output buffer: every element must be written, not accumulated.
    const out = matrix(c.n, dOut);
    out.data.fill(Number.NaN);
    const delta = await eigenBankApply(x, b, rows, { out });
    t.true(maxRelDiff(delta, denseRows(x, null, null, deltaOf)) < 1e-5, `seed ${seed}, ${c.what}: adapters only`);
  }
});

// Segments: random rows; one adapter for a whole batch (split into chunks across threads);
// contiguous runs of two adapters (used in place).
test('loraBankApply equals applying each row’s LoRA pair alone', async (t) => {
  const seed = freshSeed();
  const adapters = [2, 5, 3, 1].map((r, i) => ({
    A: randomMatrix(r, dIn, seed + 2 * i),
    B: randomMatrix(dOut, r, seed + 2 * i + 1),
    scale: 1 + i,
  }));
  const deltas = adapters.map((p) => {
    const d = matmul(toF64(p.B), toF64(p.A));
    for (let i = 0; i < d.data.length; i++) d.data[i]! *= p.scale;
    return d;
  });
  const random = rng(seed + 5);
  const cases: Array<{ what: string; n: number; rows: (b: number) => number }> = [
    { what: 'random rows', n: 17, rows: () => Math.floor(random() * 5) - 1 },
    { what: 'one adapter, 100 rows', n: 100, rows: () => 1 },
    { what: 'two contiguous runs', n: 90, rows: (b) => (b < 60 ? 2 : 0) },
  ];
  for (const c of cases) {
    const rows = Int32Array.from({ length: c.n }, (_, b) => c.rows(b));
    const x = randomMatrix(c.n, dIn, seed + 50);
    const weight = randomMatrix(dOut, dIn, seed + 51);
    const y = await loraBankApply(x, adapters, rows, { weight });
    const want = denseRows(x, weight, null, (row) => (rows[row]! >= 0 ? deltas[rows[row]!]! : null));
    t.true(maxRelDiff(y, want) < 1e-5, `seed ${seed}, ${c.what}: ${maxRelDiff(y, want)}`);
  }
});

test('bank arguments are checked: adapter index out of range, wrong mixing size, wrong rows type', async (t) => {
  const b = await bank(1, 2, 4, 4, 2);
  const x = randomMatrix(3, dIn, 2);
  await t.throwsAsync(eigenBankApply(x, b, Int32Array.of(0, 2, -1)), {
    instanceOf: EigenLoraxError,
    code: 'ERR_INVALID_ARGUMENT',
    message: /rows\[1\]/,
  });
  await t.throwsAsync(eigenBankApply(x, b, Int32Array.of(0, -2, -1)), { instanceOf: EigenLoraxError, message: /rows\[1\]/ });
  await t.throwsAsync(eigenBankApply(x, { ...b, mixing: new Float32Array(5) }, Int32Array.of(0, 0, 0)), {
    instanceOf: EigenLoraxError,
    code: 'ERR_SHAPE_MISMATCH',
  });
  await t.throwsAsync(eigenBankApply(x, b, new Int32Array(2)), { instanceOf: EigenLoraxError, code: 'ERR_SHAPE_MISMATCH' });
  await t.throwsAsync(eigenBankApply(x, b, [0, 0, 0] as unknown as Int32Array), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT' });
  await t.throwsAsync(loraBankApply(x, [{ A: matrix(2, dIn), B: matrix(dOut, 2) }], Int32Array.of(1, 0, 0)), {
    instanceOf: EigenLoraxError,
    message: /rows\[0\]/,
  });
});

test('linearForward and linearBackward match the dense layer and its gradients', async (t) => {
  const seed = freshSeed();
  for (const n of [1, 3, 37]) {
    const x = randomMatrix(n, dIn, seed + n);
    const weight = randomMatrix(dOut, dIn, seed + n + 1);
    const bias = randomMatrix(1, dOut, seed + n + 2).data;
    const y = await linearForward(x, { weight, bias });
    t.true(maxRelDiff(y, denseRows(x, weight, bias, () => null)) < 1e-5, `seed ${seed}, n ${n}: forward`);
    const dy = randomMatrix(n, dOut, seed + n + 3);
    const g = await linearBackward(x, dy, { weight }, { weightGrad: true, biasGrad: true });
    t.true(maxRelDiff(g.dx!, matmul(toF64(dy), toF64(weight))) < 1e-5, `seed ${seed}, n ${n}: dx`);
    t.true(maxRelDiff(g.dWeight!, matmul(transpose(dy), toF64(x))) < 1e-5, `seed ${seed}, n ${n}: dWeight`);
    const colSums = new Float64Array(dOut);
    for (let b = 0; b < n; b++) for (let j = 0; j < dOut; j++) colSums[j]! += dy.data[b * dOut + j]!;
    t.true(maxRelDiff({ rows: 1, cols: dOut, data: g.dBias! }, { rows: 1, cols: dOut, data: colSums }) < 1e-5, `dBias`);
    const onlyDx = await linearBackward(x, dy, { weight });
    t.is(onlyDx.dWeight, null);
    t.is(onlyDx.dBias, null);
  }
  await t.throwsAsync(linearForward(randomMatrix(2, dIn + 1, 1), { weight: randomMatrix(dOut, dIn, 2) }), {
    instanceOf: EigenLoraxError,
    code: 'ERR_SHAPE_MISMATCH',
  });
});

test('addLowRank adds s B A (or its transpose) in place, and a negative scale undoes it', async (t) => {
  const seed = freshSeed();
  const A = randomMatrix(4, dIn, seed);
  const B = randomMatrix(dOut, 4, seed + 1);
  for (const transposed of [false, true]) {
    const target = transposed ? randomMatrix(dIn, dOut, seed + 2) : randomMatrix(dOut, dIn, seed + 2);
    const original = Float32Array.from(target.data);
    const same = await addLowRank(target, { A, B, scale: 0.75 }, { transposed });
    t.is(same, target);
    const delta = matmul(toF64(B), toF64(A));
    const d = transposed ? transpose(delta) : delta;
    const want = { rows: target.rows, cols: target.cols, data: Float64Array.from(original, (v, i) => v + 0.75 * d.data[i]!) };
    t.true(maxRelDiff(target, want) < 1e-5, `seed ${seed}, transposed ${transposed}`);
    await addLowRank(target, { A, B, scale: -0.75 }, { transposed });
    let worst = 0;
    for (let i = 0; i < original.length; i++) worst = Math.max(worst, Math.abs(target.data[i]! - original[i]!));
    t.true(worst < 1e-5, `seed ${seed}: unmerge restores within float rounding (${worst})`);
  }
  await t.throwsAsync(addLowRank(matrix(dOut, dIn), { A, B }, { transposed: true }), {
    instanceOf: EigenLoraxError,
    code: 'ERR_SHAPE_MISMATCH',
  });
});
