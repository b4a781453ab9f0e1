import test, { type ExecutionContext } from 'ava';
import { EigenLoraxError, matrix, rsvd, type Matrix, type RsvdOptions, type SvdResult } from '../lib/index.js';
import { freshSeed, randomMatrix } from './helpers/random.js';
import * as ref from './helpers/reference.js';

type Method = NonNullable<RsvdOptions['method']>;

const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** The 'auto' rule of the documentation: exact when min(rows, cols) <= 2 (k + p). */
const autoIsExact = (rows: number, cols: number, k: number, p: number) => Math.min(rows, cols) <= 2 * (k + p);

/** Shape, order, orthonormality and sign convention that every result must have. */
function checkStructure(t: ExecutionContext, r: SvdResult, a: Matrix, k: number, what: string): void {
  t.deepEqual([r.U.rows, r.U.cols, r.V.rows, r.V.cols, r.S.length], [a.rows, k, a.cols, k, k], `${what}: shapes`);
  for (let j = 0; j < k; j++) {
    t.true(r.S[j]! >= 0, `${what}: S[${j}] = ${r.S[j]} is negative`);
    if (j > 0) t.true(r.S[j]! <= r.S[j - 1]!, `${what}: S not descending at ${j}: ${r.S[j - 1]} then ${r.S[j]}`);
  }
  const du = ref.orthonormalityDefect(r.U);
  const dv = ref.orthonormalityDefect(r.V);
  t.true(du < 1e-5, `${what}: |U^T U - I| = ${du}`);
  t.true(dv < 1e-5, `${what}: |V^T V - I| = ${dv}`);
  // Documented sign convention: each U column's largest-magnitude entry is positive.
  for (let j = 0; j < k; j++) {
    let at = 0;
    for (let i = 1; i < r.U.rows; i++) if (Math.abs(r.U.data[i * k + j]!) > Math.abs(r.U.data[at * k + j]!)) at = i;
    t.true(r.U.data[at * k + j]! > 0, `${what}: column ${j} of U has a negative largest entry`);
  }
}

/** Relative error of each of the top k singular values. */
function worstRelative(s: Float32Array, truth: ArrayLike<number>, k: number): number {
  let worst = 0;
  for (let j = 0; j < k; j++) worst = Math.max(worst, Math.abs(s[j]! - truth[j]!) / truth[j]!);
  return worst;
}

// ---- decaying spectrum, tall and wide, every method -------------------------------------

interface DecayCase {
  rows: number;
  cols: number;
  method: Method;
}

const decayTest = test.macro({
  async exec(t, { rows, cols, method }: DecayCase) {
    const seed = freshSeed();
    const k = 10;
    const p = 10;
    const known = ref.withSpectrum(rows, cols, ref.geometric(Math.min(rows, cols), 0.8), seed);
    const before = Float32Array.from(known.A.data);
    const truth = ref.jacobiSvd(known.A); // SVD of the f32-rounded input, in f64
    const what = `seed ${seed}, ${rows} x ${cols}, ${method}`;

    // The reference itself agrees with the spectrum the matrix was built from.
    t.true(worstRelative(Float32Array.from(truth.S), known.s, k) < 1e-5, `${what}: Jacobi reference vs known s`);

    const r = await rsvd(known.A, { rank: k, oversample: p, powerIters: 2, seed, method });
    t.true(bytes(known.A.data).equals(bytes(before)), `${what}: the input was modified`);
    const exact = method === 'exact' || (method === 'auto' && autoIsExact(rows, cols, k, p));
    t.is(r.exact, exact, `${what}: exact flag`);
    checkStructure(t, r, known.A, k, what);

    // Singular values: f32 rounding for the exact path; randomized with q = 2 at gap 0.8
    // lands near 1e-7 too (q = 0 would give ~5e-3), so 1e-5 leaves a wide margin.
    const sTol = 1e-5;
    const sErr = worstRelative(r.S, truth.S, k);
    t.true(sErr < sTol, `${what}: top-${k} singular values off by ${sErr} relative`);

    // Subspaces: principal angles with the exact top-k singular subspaces.
    const cosTol = exact ? 1 - 1e-6 : 1 - 1e-5;
    const cu = ref.subspaceAgreement(r.U, ref.leftCols(truth.U, k));
    const cv = ref.subspaceAgreement(r.V, ref.leftCols(truth.V, k));
    t.true(cu > cosTol, `${what}: smallest principal cosine of U = ${cu}`);
    t.true(cv > cosTol, `${what}: smallest principal cosine of V = ${cv}`);

    // Reconstruction error next to the optimal sqrt(sum of the tail s^2) (Eckart-Young).
    let tail = 0;
    for (let j = k; j < truth.S.length; j++) tail += truth.S[j]! ** 2;
    const optimal = Math.sqrt(tail);
    const error = ref.frobeniusDistance(known.A, ref.reconstruct(r.U, r.S, r.V));
    t.true(error >= optimal * (1 - 1e-4), `${what}: error ${error} below the optimum ${optimal}`);
    t.true(error <= optimal * (exact ? 1.0001 : 1.001), `${what}: error ${error} vs optimum ${optimal}`);
  },
  title: (_title, { rows, cols, method }: DecayCase) =>
    `rsvd on a ${rows > cols ? 'tall' : 'wide'} ${rows} x ${cols} matrix with s_i = 0.8^i, method '${method}'`,
});

for (const method of ['randomized', 'auto', 'exact'] as const) {
  test(decayTest, { rows: 240, cols: 120, method });
  test(decayTest, { rows: 120, cols: 240, method });
}

// ---- rank-deficient input -----------------------------------------------------------------

for (const method of ['randomized', 'exact'] as const) {
  test(`rsvd of a rank-3 matrix asked for k = 8 (${method}): 3 values right, the rest ~0`, async (t) => {
    const seed = freshSeed();
    const known = ref.withSpectrum(200, 150, [5, 2, 0.5], seed);
    const what = `seed ${seed}, ${method}`;
    const r = await rsvd(known.A, { rank: 8, seed, method });
    t.is(r.exact, method === 'exact', `${what}: exact flag`);
    checkStructure(t, r, known.A, 8, what);
    const sErr = worstRelative(r.S, known.s, 3);
    t.true(sErr < 1e-4, `${what}: first 3 singular values off by ${sErr}`);
    for (let j = 3; j < 8; j++) t.true(r.S[j]! < 1e-4 * known.s[0]!, `${what}: S[${j}] = ${r.S[j]} should be ~0`);
    const cu = ref.subspaceAgreement(ref.leftCols(r.U, 3), known.U);
    const cv = ref.subspaceAgreement(ref.leftCols(r.V, 3), known.V);
    t.true(cu > 1 - 1e-6 && cv > 1 - 1e-6, `${what}: principal cosines U ${cu}, V ${cv}`);
    const rel = ref.relativeError(ref.reconstruct(r.U, r.S, r.V), known.A);
    t.true(rel < 1e-5, `${what}: reconstruction error ${rel}`);
  });
}

// ---- steep spectra: the sketch is ill-conditioned (Householder between power steps) ------

for (const decay of [0.5, 0.3] as const) {
  test(`randomized rsvd of a 300 x 160 matrix with s_i = ${decay}^i: values, subspaces and error as exact`, async (t) => {
    const seed = freshSeed();
    const k = 10;
    const known = ref.withSpectrum(300, 160, ref.geometric(60, decay), seed);
    const truth = ref.jacobiSvd(known.A);
    const what = `seed ${seed}, decay ${decay}`;
    const r = await rsvd(known.A, { rank: k, oversample: 10, powerIters: 2, seed, method: 'randomized' });
    checkStructure(t, r, known.A, k, what);
    // f32 arithmetic resolves singular values to ~1e-7 of the largest, not of their own size.
    for (let j = 0; j < k; j++) {
      const off = Math.abs(r.S[j]! - truth.S[j]!);
      t.true(off < 2e-6 * truth.S[0]!, `${what}: S[${j}] = ${r.S[j]} vs ${truth.S[j]}`);
    }
    let tail = 0;
    for (let j = k; j < truth.S.length; j++) tail += truth.S[j]! ** 2;
    const error = ref.frobeniusDistance(known.A, ref.reconstruct(r.U, r.S, r.V));
    t.true(error <= Math.sqrt(tail) * 1.001 + 2e-6 * truth.S[0]!, `${what}: error ${error} vs optimum ${Math.sqrt(tail)}`);
    // Directions whose value stands well above that resolution (s_4 >= 8e-3 s_0) are exact.
    const cu = ref.subspaceAgreement(ref.leftCols(r.U, 5), ref.leftCols(truth.U, 5));
    const cv = ref.subspaceAgreement(ref.leftCols(r.V, 5), ref.leftCols(truth.V, 5));
    t.true(cu > 1 - 1e-6 && cv > 1 - 1e-6, `${what}: smallest principal cosines of the leading 5: U ${cu}, V ${cv}`);
  });
}

// ---- which path 'auto' takes --------------------------------------------------------------

test('auto takes the exact path exactly when min(rows, cols) <= 2 (k + p)', async (t) => {
  const seed = freshSeed();
  const cases: Array<[rows: number, cols: number, k: number, p: number]> = [
    [50, 30, 5, 10], // 30 <= 30: exact
    [30, 50, 5, 10],
    [60, 31, 5, 10], // 31 > 30: randomized
    [31, 60, 5, 10],
    [40, 40, 20, 0],
    [400, 300, 5, 10],
  ];
  for (const [rows, cols, k, p] of cases) {
    const a = randomMatrix(rows, cols, seed + rows + cols);
    const r = await rsvd(a, { rank: k, oversample: p, seed });
    t.is(r.exact, autoIsExact(rows, cols, k, p), `seed ${seed}: ${rows} x ${cols}, k ${k}, p ${p}`);
  }
  const small = randomMatrix(50, 30, seed);
  t.false((await rsvd(small, { rank: 5, method: 'randomized' })).exact, `seed ${seed}: randomized forced`);
  const large = randomMatrix(400, 300, seed);
  t.true((await rsvd(large, { rank: 5, method: 'exact' })).exact, `seed ${seed}: exact forced`);
});

// ---- reproducibility ----------------------------------------------------------------------

test('same seed: bit-identical results; different seeds: different bits, same values', async (t) => {
  const seed = freshSeed();
  const known = ref.withSpectrum(400, 300, ref.geometric(60, 0.8), seed);
  const options = { rank: 5, oversample: 10, method: 'randomized' } as const;
  const first = await rsvd(known.A, { ...options, seed });
  const again = await rsvd(known.A, { ...options, seed });
  const other = await rsvd(known.A, { ...options, seed: seed + 1 });
  t.false(first.exact, `seed ${seed}: premise, randomized path`);
  for (const name of ['U', 'V'] as const) {
    t.true(bytes(first[name].data).equals(bytes(again[name].data)), `seed ${seed}: ${name} differs between equal seeds`);
  }
  t.true(bytes(first.S).equals(bytes(again.S)), `seed ${seed}: S differs between equal seeds`);

  const differs = ['U', 'V'].some((n) => !bytes(first[n as 'U'].data).equals(bytes(other[n as 'U'].data)));
  t.true(differs || !bytes(first.S).equals(bytes(other.S)), `seed ${seed}: seed ${seed + 1} gave the same bits`);
  const sErr = worstRelative(other.S, first.S, 5);
  t.true(sErr < 1e-4, `seed ${seed}: singular values of two seeds differ by ${sErr}`);
  // Signs are fixed by convention, so the vectors agree entry by entry.
  const du = ref.maxAbs(diff(first.U, other.U));
  const dv = ref.maxAbs(diff(first.V, other.V));
  t.true(du < 1e-3 && dv < 1e-3, `seed ${seed}: vectors of two seeds differ by U ${du}, V ${dv}`);
});

function diff(a: Matrix, b: Matrix): Float64Array {
  return Float64Array.from(a.data, (x, i) => x - b.data[i]!);
}

// ---- rank limits --------------------------------------------------------------------------

test('rank > min(rows, cols) is refused with ERR_INVALID_ARGUMENT', async (t) => {
  const seed = freshSeed();
  for (const [rows, cols] of [
    [40, 25],
    [25, 40],
  ] as const) {
    const a = randomMatrix(rows, cols, seed);
    for (const method of ['auto', 'exact', 'randomized'] as const) {
      await t.throwsAsync(rsvd(a, { rank: 26, method }), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT' }, `seed ${seed}: ${rows} x ${cols}, ${method}`);
    }
  }
});

test('rank 0 is refused with ERR_INVALID_ARGUMENT', async (t) => {
  const a = randomMatrix(20, 10, freshSeed());
  await t.throwsAsync(rsvd(a, { rank: 0 }), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT' });
});

test('rank == min(rows, cols) works on every path and reconstructs the input', async (t) => {
  const seed = freshSeed();
  for (const [rows, cols] of [
    [40, 25],
    [25, 40],
  ] as const) {
    const a = randomMatrix(rows, cols, seed);
    const truth = ref.jacobiSvd(a);
    for (const method of ['auto', 'exact', 'randomized'] as const) {
      const what = `seed ${seed}, ${rows} x ${cols}, ${method}`;
      const r = await rsvd(a, { rank: 25, seed, method });
      checkStructure(t, r, a, 25, what);
      const sErr = worstRelative(r.S, truth.S, 25);
      t.true(sErr < 1e-4, `${what}: singular values off by ${sErr}`);
      const rel = ref.relativeError(ref.reconstruct(r.U, r.S, r.V), a);
      t.true(rel < 1e-5, `${what}: reconstruction error ${rel}`);
    }
  }
});

// ---- input layout and degenerate shapes ---------------------------------------------------

test('an input that is a view at an offset into a larger buffer gives the same bits as a copy', async (t) => {
  const seed = freshSeed();
  const backing = randomMatrix(1, 2000, seed).data;
  const view = matrix(30, 40, backing.subarray(123, 123 + 1200));
  const copy = matrix(30, 40, Float32Array.from(view.data));
  for (const method of ['exact', 'randomized'] as const) {
    const a = await rsvd(view, { rank: 4, seed, method });
    const b = await rsvd(copy, { rank: 4, seed, method });
    const same = bytes(a.U.data).equals(bytes(b.U.data)) && bytes(a.S).equals(bytes(b.S)) && bytes(a.V.data).equals(bytes(b.V.data));
    t.true(same, `seed ${seed}, ${method}: a view and its copy give different results`);
  }
});

test('rank-1 SVD of a row and of a column vector is its norm and direction', async (t) => {
  const seed = freshSeed();
  const row = randomMatrix(1, 50, seed);
  const norm = ref.frobenius(row);
  for (const method of ['exact', 'randomized'] as const) {
    const what = `seed ${seed}, ${method}`;
    const r = await rsvd(row, { rank: 1, method });
    t.true(Math.abs(r.S[0]! - norm) < 1e-5 * norm, `${what}: row S ${r.S[0]} vs norm ${norm}`);
    t.is(r.U.data[0], 1, `${what}: row U`);
    t.true(ref.maxAbs(Float64Array.from(row.data, (x, i) => x / norm - r.V.data[i]!)) < 1e-6, `${what}: row V`);
    const c = await rsvd(matrix(50, 1, row.data), { rank: 1, method });
    t.true(Math.abs(c.S[0]! - norm) < 1e-5 * norm, `${what}: column S ${c.S[0]} vs norm ${norm}`);
    t.true(ref.maxAbs(Float64Array.from(row.data, (x, i) => Math.abs(x / norm) - Math.abs(c.U.data[i]!))) < 1e-6, `${what}: column U`);
    t.is(Math.abs(c.V.data[0]!), 1, `${what}: column V`);
  }
});

test('a zero matrix gives zero singular values and orthonormal U, V', async (t) => {
  for (const method of ['exact', 'randomized'] as const) {
    const r = await rsvd(matrix(30, 20), { rank: 3, method });
    t.deepEqual([...r.S], [0, 0, 0], method);
    t.true(ref.orthonormalityDefect(r.U) < 1e-5 && ref.orthonormalityDefect(r.V) < 1e-5, `${method}: U, V not orthonormal`);
  }
});
