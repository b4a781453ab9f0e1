import test from 'ava';
import { EigenLoraxError, completeBasis, matrix, orthonormalize, rsvd, type Matrix } from '../lib/index.js';
import { freshSeed, randomMatrix } from './helpers/random.js';
import * as ref from './helpers/reference.js';

const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const invalidArgument = { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT' } as const;

function maxDiff(a: ref.Mat, b: ref.Mat): number {
  let worst = 0;
  for (let i = 0; i < a.data.length; i++) worst = Math.max(worst, Math.abs(a.data[i]! - b.data[i]!));
  return worst;
}

/** [a, b] side by side. */
function concat(a: Matrix, b: Matrix): ref.Mat64 {
  const out = ref.zeros(a.rows, a.cols + b.cols);
  for (let i = 0; i < a.rows; i++) {
    for (let j = 0; j < a.cols; j++) out.data[i * out.cols + j] = a.data[i * a.cols + j]!;
    for (let j = 0; j < b.cols; j++) out.data[i * out.cols + a.cols + j] = b.data[i * b.cols + j]!;
  }
  return out;
}

// ---- orthonormalize -----------------------------------------------------------------------

for (const [rows, cols] of [
  [200, 30],
  [50, 50],
  [64, 1],
] as const) {
  test(`orthonormalize ${rows} x ${cols}: orthonormal Q spanning the input, Q^T A upper triangular with diag >= 0`, async (t) => {
    const seed = freshSeed();
    const what = `seed ${seed}, ${rows} x ${cols}`;
    const a = randomMatrix(rows, cols, seed);
    const before = Float32Array.from(a.data);
    const q = await orthonormalize(a);
    t.true(bytes(a.data).equals(bytes(before)), `${what}: the input was modified`);
    t.deepEqual([q.rows, q.cols], [rows, cols], `${what}: shape`);

    const defect = ref.orthonormalityDefect(q);
    t.true(defect < 1e-5, `${what}: |Q^T Q - I| = ${defect}`);
    const agreement = ref.subspaceAgreement(q, ref.gramSchmidt(a));
    t.true(agreement > 1 - 1e-6, `${what}: smallest principal cosine with span(A) = ${agreement}`);

    // R = Q^T A is upper triangular with a non-negative diagonal.
    const r = ref.matmulTN(q, a);
    const scale = ref.maxAbs(r);
    let below = 0;
    for (let i = 0; i < cols; i++) for (let j = 0; j < i; j++) below = Math.max(below, Math.abs(r.data[i * cols + j]!));
    t.true(below < 1e-5 * scale, `${what}: largest entry below the diagonal of Q^T A = ${below}`);
    for (let j = 0; j < cols; j++) t.true(r.data[j * cols + j]! > 0, `${what}: R[${j}][${j}] = ${r.data[j * cols + j]}`);

    // With diag(R) > 0 the Q factor is unique: it is the Gram-Schmidt Q, up to the f32
    // forward error, which grows with the condition number (square Gaussians can reach 1e4).
    const sv = ref.jacobiSvd(a).S;
    const cond = sv[0]! / sv[cols - 1]!;
    const d = maxDiff(q, ref.gramSchmidt(a));
    t.true(d < 1e-5 + 1e-7 * cond, `${what}: Q differs from the f64 Gram-Schmidt Q by ${d} (condition ${cond})`);
  });
}

// Across conditioning: CholeskyQR2 (in f64) where cond(A) is below ~1e6, Householder past it
// and for rank-deficient input. Either way Q is orthonormal, spans A, and Q^T A is upper
// triangular with diag >= 0; on the CholeskyQR2 side Q is also the f64 Gram-Schmidt Q to
// f32 rounding, whatever the condition number.
for (const [label, spectrum, choleskyRange] of [
  ['condition 1e3', ref.geometric(24, 10 ** (-3 / 23)), true],
  ['condition 1e5', ref.geometric(24, 10 ** (-5 / 23)), true],
  ['condition 1e9', ref.geometric(24, 10 ** (-9 / 23)), false],
  ['rank 5 of 24 columns', Float64Array.from([...ref.geometric(5, 0.5), ...new Array(19).fill(0)]), false],
] as const) {
  test(`orthonormalize of a 300 x 24 matrix of ${label}: orthonormal Q spanning A, Q^T A upper triangular`, async (t) => {
    const seed = freshSeed();
    const what = `seed ${seed}, ${label}`;
    const a = ref.withSpectrum(300, 24, spectrum, seed).A;
    const q = await orthonormalize(a);
    const defect = ref.orthonormalityDefect(q);
    t.true(defect < 1e-5, `${what}: |Q^T Q - I| = ${defect}`);
    const r = ref.matmulTN(q, a);
    const residual = ref.frobeniusDistance(a, ref.matmul(q, r)) / ref.frobenius(a);
    t.true(residual < 1e-6, `${what}: |A - Q Q^T A| / |A| = ${residual}`);
    let below = 0;
    for (let i = 0; i < 24; i++) for (let j = 0; j < i; j++) below = Math.max(below, Math.abs(r.data[i * 24 + j]!));
    t.true(below < 1e-6 * spectrum[0]!, `${what}: largest entry below the diagonal of Q^T A = ${below}`);
    for (let j = 0; j < 24; j++) t.true(r.data[j * 24 + j]! >= -1e-6 * spectrum[0]!, `${what}: R[${j}][${j}] = ${r.data[j * 24 + j]}`);
    if (choleskyRange) {
      const d = maxDiff(q, ref.gramSchmidt(a));
      t.true(d < 2e-6, `${what}: Q differs from the f64 Gram-Schmidt Q by ${d}`);
    }
  });
}

test('orthonormalize ignores positive column scaling (Q of A D equals Q of A)', async (t) => {
  const seed = freshSeed();
  const a = randomMatrix(120, 20, seed);
  const scaled = matrix(120, 20);
  for (let i = 0; i < 120; i++) for (let j = 0; j < 20; j++) scaled.data[i * 20 + j] = a.data[i * 20 + j]! * 10 ** ((j % 7) - 3);
  const d = maxDiff(await orthonormalize(a), await orthonormalize(scaled));
  t.true(d < 1e-4, `seed ${seed}: Q of A and of A D differ by ${d}`);
});

test('orthonormalize of a wide matrix (rows < cols) is refused with ERR_INVALID_ARGUMENT', async (t) => {
  await t.throwsAsync(orthonormalize(randomMatrix(10, 11, freshSeed())), invalidArgument);
});

// ---- completeBasis ------------------------------------------------------------------------

test('completeBasis: new directions orthonormal and orthogonal to the basis', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  const basis = ref.toF32(ref.randomOrthonormal(120, 12, seed));
  const before = Float32Array.from(basis.data);
  const extra = await completeBasis(basis, 20, { seed });
  t.true(bytes(basis.data).equals(bytes(before)), `${what}: the basis was modified`);
  t.deepEqual([extra.rows, extra.cols], [120, 20], `${what}: shape`);
  const defect = ref.orthonormalityDefect(extra);
  t.true(defect < 1e-6, `${what}: |E^T E - I| = ${defect}`);
  const leak = ref.maxAbs(ref.matmulTN(basis, extra));
  t.true(leak < 1e-6, `${what}: max |B^T E| = ${leak}`);
});

test('completeBasis of an rsvd basis up to rows - cols columns gives an orthogonal square matrix', async (t) => {
  const seed = freshSeed();
  const { U } = await rsvd(randomMatrix(40, 60, seed), { rank: 15, seed });
  const extra = await completeBasis(U, 40 - 15, { seed });
  const full = concat(U, extra);
  const defect = ref.orthonormalityDefect(full);
  t.true(defect < 1e-5, `seed ${seed}: |[U E]^T [U E] - I| = ${defect}`);
});

test('completeBasis is seeded: equal seeds give equal bits, other seeds other directions', async (t) => {
  const seed = freshSeed();
  const basis = ref.toF32(ref.randomOrthonormal(80, 10, seed));
  const first = await completeBasis(basis, 5, { seed });
  const again = await completeBasis(basis, 5, { seed });
  const other = await completeBasis(basis, 5, { seed: seed + 1 });
  const byDefault = await completeBasis(basis, 5);
  const zero = await completeBasis(basis, 5, { seed: 0 });
  t.true(bytes(first.data).equals(bytes(again.data)), `seed ${seed}: equal seeds differ`);
  t.true(bytes(byDefault.data).equals(bytes(zero.data)), `seed ${seed}: the default seed is not 0`);
  // Two random 5-dimensional subspaces of a 70-dimensional complement are far apart.
  const agreement = ref.subspaceAgreement(first, other);
  t.true(agreement < 0.99, `seed ${seed}: seeds ${seed} and ${seed + 1} gave the same span (cos ${agreement})`);
});

test('completeBasis refuses extra > rows - cols with ERR_INVALID_ARGUMENT', async (t) => {
  const basis = ref.toF32(ref.randomOrthonormal(30, 10, freshSeed()));
  await t.throwsAsync(completeBasis(basis, 21), invalidArgument);
});

test('completeBasis refuses extra = 0 with ERR_INVALID_ARGUMENT', async (t) => {
  const basis = ref.toF32(ref.randomOrthonormal(30, 10, freshSeed()));
  await t.throwsAsync(completeBasis(basis, 0), invalidArgument);
});

test('completeBasis refuses a basis without orthonormal columns with ERR_INVALID_ARGUMENT', async (t) => {
  const seed = freshSeed();
  await t.throwsAsync(completeBasis(randomMatrix(30, 5, seed), 3), invalidArgument, `seed ${seed}: Gaussian basis`);
  const stretched = ref.toF32(ref.randomOrthonormal(30, 5, seed));
  for (let i = 0; i < stretched.data.length; i++) stretched.data[i]! *= 1.01;
  await t.throwsAsync(completeBasis(stretched, 3), invalidArgument, `seed ${seed}: basis scaled by 1.01`);
});
