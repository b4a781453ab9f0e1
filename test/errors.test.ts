/**
 * Bad inputs: each is refused with an EigenLoraxError carrying the exact code, never a
 * crash. The second half calls the raw addon with hand-made arguments, bypassing the
 * TypeScript checks, to show that the C++ checks hold on their own.
 */
import test from 'ava';
import {
  EigenLoraxError,
  completeBasis,
  matrix,
  orthonormalize,
  rsvd,
  setThreads,
  type ErrorCode,
  type Matrix,
  type RsvdOptions,
} from '../lib/index.js';
import { native } from '../lib/native.js';
import { randomMatrix } from './helpers/random.js';
import { randomOrthonormal, toF32 } from './helpers/reference.js';

/** One call that must throw or reject with EigenLoraxError and `code`. */
const refused = test.macro({
  async exec(t, call: () => unknown, code: ErrorCode) {
    await t.throwsAsync(async () => await call(), { instanceOf: EigenLoraxError, code });
  },
  title: (title, _call, code: ErrorCode) => `${title ?? ''} -> ${code}`,
});

/** A hand-made value typed as whatever the signature wants (bypasses TS checks). */
const as = <T>(value: unknown) => value as T;

const mat = (rows: unknown, cols: unknown, data: unknown) => as<Matrix>({ rows, cols, data });

function detached(rows: number, cols: number): Matrix {
  const m = randomMatrix(rows, cols, 1);
  const buffer = m.data.buffer as ArrayBuffer;
  structuredClone(buffer, { transfer: [buffer] });
  return m;
}

function withValue(rows: number, cols: number, at: number, value: number): Matrix {
  const m = randomMatrix(rows, cols, 2);
  m.data[at] = value;
  return m;
}

const basis = () => toF32(randomOrthonormal(20, 4, 3));

// ---- shapes -------------------------------------------------------------------------------

test('rsvd: data shorter than rows x cols', refused, () => rsvd(mat(3, 4, new Float32Array(11)), { rank: 1 }), 'ERR_SHAPE_MISMATCH');
test('rsvd: data longer than rows x cols', refused, () => rsvd(mat(3, 4, new Float32Array(13)), { rank: 1 }), 'ERR_SHAPE_MISMATCH');
test('orthonormalize: data length != rows x cols', refused, () => orthonormalize(mat(4, 3, new Float32Array(4))), 'ERR_SHAPE_MISMATCH');
test('completeBasis: data length != rows x cols', refused, () => completeBasis(mat(20, 4, new Float32Array(79)), 2), 'ERR_SHAPE_MISMATCH');
test('matrix(): data length != rows x cols', refused, () => matrix(3, 4, new Float32Array(5)), 'ERR_SHAPE_MISMATCH');

// ---- non-finite values --------------------------------------------------------------------

test('rsvd (randomized): NaN in the input', refused, () => rsvd(withValue(100, 80, 517, NaN), { rank: 2, method: 'randomized' }), 'ERR_NON_FINITE');
test('rsvd (auto, exact path): +Infinity in the input', refused, () => rsvd(withValue(10, 8, 0, Infinity), { rank: 2 }), 'ERR_NON_FINITE');
test('rsvd (exact): -Infinity in the input', refused, () => rsvd(withValue(10, 8, 79, -Infinity), { rank: 2, method: 'exact' }), 'ERR_NON_FINITE');
test('rsvd (auto, randomized path): NaN in the last entry', refused, () => rsvd(withValue(100, 80, 7999, NaN), { rank: 2 }), 'ERR_NON_FINITE');
test('orthonormalize: NaN in the input', refused, () => orthonormalize(withValue(10, 4, 17, NaN)), 'ERR_NON_FINITE');
test('orthonormalize: Infinity in the input', refused, () => orthonormalize(withValue(10, 4, 39, Infinity)), 'ERR_NON_FINITE');
test('completeBasis: NaN in the basis', refused, () => {
  const b = basis();
  b.data[5] = NaN;
  return completeBasis(b, 2);
}, 'ERR_NON_FINITE');

// ---- dimensions ---------------------------------------------------------------------------

for (const [rows, cols] of [
  [0, 4],
  [4, 0],
  [-2, 4],
  [4, -1],
  [2.5, 4],
  [4, 1.5],
  [NaN, 4],
  [Infinity, 4],
  ['3', 4],
  [undefined, 4],
] as const) {
  test(`rsvd: rows ${String(rows)}, cols ${String(cols)}`, refused, () => rsvd(mat(rows, cols, new Float32Array(12)), { rank: 1 }), 'ERR_INVALID_ARGUMENT');
}
test('matrix(0, 3)', refused, () => matrix(0, 3), 'ERR_INVALID_ARGUMENT');
test('matrix(3, -1)', refused, () => matrix(3, -1), 'ERR_INVALID_ARGUMENT');
test('matrix(1.5, 2)', refused, () => matrix(1.5, 2), 'ERR_INVALID_ARGUMENT');
test('orthonormalize: rows 0', refused, () => orthonormalize(mat(0, 3, new Float32Array(0))), 'ERR_INVALID_ARGUMENT');
test('completeBasis: cols 1.5', refused, () => completeBasis(mat(4, 1.5, new Float32Array(6)), 1), 'ERR_INVALID_ARGUMENT');

// ---- data that is not a Float32Array ------------------------------------------------------

test('rsvd: data is a Float64Array', refused, () => rsvd(mat(3, 4, new Float64Array(12)), { rank: 1 }), 'ERR_INVALID_ARGUMENT');
test('rsvd: data is a plain array', refused, () => rsvd(mat(3, 4, new Array<number>(12).fill(1)), { rank: 1 }), 'ERR_INVALID_ARGUMENT');
test('rsvd: data is a Uint8Array', refused, () => rsvd(mat(3, 4, new Uint8Array(12)), { rank: 1 }), 'ERR_INVALID_ARGUMENT');
test('rsvd: data is missing', refused, () => rsvd(mat(3, 4, undefined), { rank: 1 }), 'ERR_INVALID_ARGUMENT');
test('rsvd: the matrix is null', refused, () => rsvd(as<Matrix>(null), { rank: 1 }), 'ERR_INVALID_ARGUMENT');
test('rsvd: the matrix is a bare Float32Array', refused, () => rsvd(as<Matrix>(new Float32Array(12)), { rank: 1 }), 'ERR_INVALID_ARGUMENT');
test('orthonormalize: data is a Float64Array', refused, () => orthonormalize(mat(4, 3, new Float64Array(12))), 'ERR_INVALID_ARGUMENT');
test('orthonormalize: data is a plain array', refused, () => orthonormalize(mat(4, 3, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])), 'ERR_INVALID_ARGUMENT');
test('completeBasis: data is a Float64Array', refused, () => completeBasis(mat(20, 4, new Float64Array(80)), 1), 'ERR_INVALID_ARGUMENT');

// ---- detached buffers ---------------------------------------------------------------------

test('rsvd: detached input buffer', refused, () => rsvd(detached(6, 5), { rank: 2 }), 'ERR_DETACHED_BUFFER');
test('orthonormalize: detached input buffer', refused, () => orthonormalize(detached(6, 5)), 'ERR_DETACHED_BUFFER');
test('completeBasis: detached basis buffer', refused, () => completeBasis(detached(6, 2), 1), 'ERR_DETACHED_BUFFER');

// ---- options ------------------------------------------------------------------------------

const small = () => randomMatrix(12, 8, 4);
const badOptions: Array<[string, unknown]> = [
  ['unknown option name "sed"', { rank: 2, sed: 1 }],
  ['unknown option name "power_iters"', { rank: 2, power_iters: 1 }],
  ['seed -1', { rank: 2, seed: -1 }],
  ['seed 1.5', { rank: 2, seed: 1.5 }],
  ['seed 2^53', { rank: 2, seed: 2 ** 53 }],
  ['seed "1"', { rank: 2, seed: '1' }],
  ['powerIters 1.5', { rank: 2, powerIters: 1.5 }],
  ['powerIters -1', { rank: 2, powerIters: -1 }],
  ['powerIters 1001', { rank: 2, powerIters: 1001 }],
  ['oversample -1', { rank: 2, oversample: -1 }],
  ['oversample NaN', { rank: 2, oversample: NaN }],
  ["method 'fast'", { rank: 2, method: 'fast' }],
  ['method 1', { rank: 2, method: 1 }],
  ['rank "2"', { rank: '2' }],
  ['rank 2.5', { rank: 2.5 }],
  ['rank missing', {}],
  ['options null', null],
  ['options missing', undefined],
  ['options an array', [2]],
];
for (const [name, options] of badOptions) {
  test(`rsvd: ${name}`, refused, () => rsvd(small(), as<RsvdOptions>(options)), 'ERR_INVALID_ARGUMENT');
}
test('completeBasis: unknown option name', refused, () => completeBasis(basis(), 2, as<{ seed: number }>({ sed: 1 })), 'ERR_INVALID_ARGUMENT');
test('completeBasis: seed -1', refused, () => completeBasis(basis(), 2, { seed: -1 }), 'ERR_INVALID_ARGUMENT');
test('completeBasis: extra 1.5', refused, () => completeBasis(basis(), 1.5), 'ERR_INVALID_ARGUMENT');
test('completeBasis: extra "2"', refused, () => completeBasis(basis(), as<number>('2')), 'ERR_INVALID_ARGUMENT');
test('setThreads("2")', refused, () => setThreads(as<number>('2')), 'ERR_INVALID_ARGUMENT');

test('an error raised while running leaves the outputs unwritten', async (t) => {
  const U = matrix(100, 2, new Float32Array(200).fill(7));
  const S = new Float32Array(2).fill(7);
  const V = matrix(80, 2, new Float32Array(160).fill(7));
  const args = { matrix: withValue(100, 80, 4321, NaN), rank: 2, oversample: 10, powerIters: 2, seed: 0, method: 'randomized' as const, U, S, V };
  await t.throwsAsync(async () => await native.rsvd(args), { instanceOf: EigenLoraxError, code: 'ERR_NON_FINITE' });
  t.true([...U.data, ...S, ...V.data].every((x) => x === 7), 'an output was written before the error');
});

// ---- the raw addon, past the TypeScript checks ---------------------------------------------

/** Valid native.rsvd arguments for an 8 x 6 matrix, k = 3, with `changes` applied. */
function rsvdArgs(changes: Record<string, unknown> = {}) {
  const base: Record<string, unknown> = {
    matrix: randomMatrix(8, 6, 5),
    rank: 3,
    oversample: 2,
    powerIters: 1,
    seed: 0,
    method: 'auto',
    U: matrix(8, 3),
    S: new Float32Array(3),
    V: matrix(6, 3),
  };
  for (const [key, value] of Object.entries(changes)) {
    if (value === undefined) delete base[key];
    else base[key] = value;
  }
  return as<Parameters<typeof native.rsvd>[0]>(base);
}

test('native.rsvd accepts the hand-made base arguments (so each case below fails for its one change)', async (t) => {
  const args = rsvdArgs();
  const info = await native.rsvd(args);
  t.deepEqual(info, { exact: true, sketchSize: 0 });
  t.true(args.S[0]! > 0);
});

const a8x6 = randomMatrix(8, 6, 6);
const a6x6 = randomMatrix(6, 6, 7);
const uSharing = new Float32Array(6 * 6);
const nativeRsvdCases: Array<[string, Record<string, unknown>, ErrorCode]> = [
  ['U of the wrong shape (9 x 3)', { U: matrix(9, 3) }, 'ERR_SHAPE_MISMATCH'],
  ['U of the wrong shape (8 x 4)', { U: matrix(8, 4) }, 'ERR_SHAPE_MISMATCH'],
  ['V of the wrong shape (6 x 2)', { V: matrix(6, 2) }, 'ERR_SHAPE_MISMATCH'],
  ['S of the wrong length', { S: new Float32Array(4) }, 'ERR_SHAPE_MISMATCH'],
  ['U.data shorter than its rows x cols', { U: mat(8, 3, new Float32Array(23)) }, 'ERR_SHAPE_MISMATCH'],
  ['rows x cols overflowing (2^40 x 2^40)', { matrix: mat(2 ** 40, 2 ** 40, new Float32Array(48)) }, 'ERR_SHAPE_MISMATCH'],
  ['U.data is matrix.data (8 x 6, k = 6)', { matrix: a8x6, rank: 6, U: mat(8, 6, a8x6.data), S: new Float32Array(6), V: matrix(6, 6) }, 'ERR_INVALID_ARGUMENT'],
  ['U.data a view into matrix.data', { U: mat(8, 3, rsvdArgsMatrixView(a8x6, 10, 24)), matrix: a8x6 }, 'ERR_INVALID_ARGUMENT'],
  ['U.data and V.data the same array', { matrix: a6x6, U: mat(6, 6, uSharing), V: mat(6, 6, uSharing), rank: 6, S: new Float32Array(6) }, 'ERR_INVALID_ARGUMENT'],
  ['S a view into U.data', sharedS(), 'ERR_INVALID_ARGUMENT'],
  ['matrix missing', { matrix: undefined }, 'ERR_INVALID_ARGUMENT'],
  ['U missing', { U: undefined }, 'ERR_INVALID_ARGUMENT'],
  ['S missing', { S: undefined }, 'ERR_INVALID_ARGUMENT'],
  ['seed missing', { seed: undefined }, 'ERR_INVALID_ARGUMENT'],
  ['rank missing', { rank: undefined }, 'ERR_INVALID_ARGUMENT'],
  ['rows as a string', { matrix: mat('8', 6, new Float32Array(48)) }, 'ERR_INVALID_ARGUMENT'],
  ['rows 0', { matrix: mat(0, 6, new Float32Array(0)) }, 'ERR_INVALID_ARGUMENT'],
  ['rows -8', { matrix: mat(-8, -6, new Float32Array(48)) }, 'ERR_INVALID_ARGUMENT'],
  ['rows 7.5', { matrix: mat(7.5, 6, new Float32Array(45)) }, 'ERR_INVALID_ARGUMENT'],
  ['cols NaN', { matrix: mat(8, NaN, new Float32Array(48)) }, 'ERR_INVALID_ARGUMENT'],
  ['U.rows Infinity', { U: mat(Infinity, 3, new Float32Array(24)) }, 'ERR_INVALID_ARGUMENT'],
  ['matrix.data a Float64Array', { matrix: mat(8, 6, new Float64Array(48)) }, 'ERR_INVALID_ARGUMENT'],
  ['matrix.data a plain array', { matrix: mat(8, 6, new Array<number>(48).fill(0)) }, 'ERR_INVALID_ARGUMENT'],
  ['S a Float64Array', { S: new Float64Array(3) }, 'ERR_INVALID_ARGUMENT'],
  ['matrix a bare Float32Array', { matrix: new Float32Array(48) }, 'ERR_INVALID_ARGUMENT'],
  ['matrix a number', { matrix: 48 }, 'ERR_INVALID_ARGUMENT'],
  ['matrix.data detached', { matrix: detached(8, 6) }, 'ERR_DETACHED_BUFFER'],
  ['V.data detached', { V: detached(6, 3) }, 'ERR_DETACHED_BUFFER'],
  ['rank 0', { rank: 0, S: new Float32Array(0) }, 'ERR_INVALID_ARGUMENT'],
  ['rank 7 > min(8, 6)', { rank: 7, U: matrix(8, 7), S: new Float32Array(7), V: matrix(6, 7) }, 'ERR_INVALID_ARGUMENT'],
  ['rank 2.5', { rank: 2.5 }, 'ERR_INVALID_ARGUMENT'],
  ['method 3', { method: 3 }, 'ERR_INVALID_ARGUMENT'],
  ['method 2 (enums cross the boundary as strings)', { method: 2 }, 'ERR_INVALID_ARGUMENT'],
  ["method 'fast'", { method: 'fast' }, 'ERR_INVALID_ARGUMENT'],
  ['seed -1', { seed: -1 }, 'ERR_INVALID_ARGUMENT'],
  ['seed 2^53', { seed: 2 ** 53 }, 'ERR_INVALID_ARGUMENT'],
  ['powerIters 1001', { powerIters: 1001 }, 'ERR_INVALID_ARGUMENT'],
  ['powerIters 1.5', { powerIters: 1.5 }, 'ERR_INVALID_ARGUMENT'],
  ['oversample -1', { oversample: -1 }, 'ERR_INVALID_ARGUMENT'],
  ['oversample a string', { oversample: '2' }, 'ERR_INVALID_ARGUMENT'],
  ['NaN in the matrix (randomized)', { matrix: withValue(8, 6, 11, NaN), method: 'randomized' }, 'ERR_NON_FINITE'],
  ['Infinity in the matrix (exact)', { matrix: withValue(8, 6, 47, Infinity), method: 'exact' }, 'ERR_NON_FINITE'],
];

function rsvdArgsMatrixView(a: Matrix, from: number, length: number): Float32Array {
  return new Float32Array(a.data.buffer, a.data.byteOffset + from * 4, length);
}

function sharedS(): Record<string, unknown> {
  const U = matrix(8, 3);
  return { U, S: U.data.subarray(21, 24) };
}

for (const [name, changes, code] of nativeRsvdCases) {
  test(`native.rsvd: ${name}`, refused, () => native.rsvd(rsvdArgs(changes)), code);
}
for (const [name, args] of [
  ['undefined', undefined],
  ['a number', 42],
  ['a string', 'matrix'],
  ['null', null],
] as const) {
  test(`native.rsvd: arguments ${name}`, refused, () => native.rsvd(as<Parameters<typeof native.rsvd>[0]>(args)), 'ERR_INVALID_ARGUMENT');
}

const q10x4 = randomMatrix(10, 4, 8);
test('native.orthonormalize: out is the input array', refused, () => native.orthonormalize({ matrix: q10x4, out: mat(10, 4, q10x4.data) }), 'ERR_INVALID_ARGUMENT');
test('native.orthonormalize: out of the wrong shape', refused, () => native.orthonormalize({ matrix: randomMatrix(10, 4, 9), out: matrix(10, 3) }), 'ERR_SHAPE_MISMATCH');
test('native.orthonormalize: wide input', refused, () => native.orthonormalize({ matrix: randomMatrix(4, 10, 9), out: matrix(4, 10) }), 'ERR_INVALID_ARGUMENT');
test('native.orthonormalize: NaN in the input', refused, () => native.orthonormalize({ matrix: withValue(10, 4, 3, NaN), out: matrix(10, 4) }), 'ERR_NON_FINITE');
test('native.orthonormalize: out missing', refused, () => native.orthonormalize(as<{ matrix: Matrix; out: Matrix }>({ matrix: randomMatrix(10, 4, 9) })), 'ERR_INVALID_ARGUMENT');

test('native.completeBasis: out with other rows', refused, () => native.completeBasis({ basis: basis(), seed: 0, out: matrix(19, 2) }), 'ERR_SHAPE_MISMATCH');
test('native.completeBasis: out wider than rows - cols', refused, () => native.completeBasis({ basis: basis(), seed: 0, out: matrix(20, 17) }), 'ERR_INVALID_ARGUMENT');
test('native.completeBasis: seed -1', refused, () => native.completeBasis({ basis: basis(), seed: -1, out: matrix(20, 2) }), 'ERR_INVALID_ARGUMENT');
test('native.completeBasis: basis not orthonormal', refused, () => native.completeBasis({ basis: randomMatrix(20, 4, 10), seed: 0, out: matrix(20, 2) }), 'ERR_INVALID_ARGUMENT');
test('native.completeBasis: out overlapping the basis', refused, () => {
  const b = basis();
  return native.completeBasis({ basis: b, seed: 0, out: mat(20, 2, b.data.subarray(0, 40)) });
}, 'ERR_INVALID_ARGUMENT');
test('native.completeBasis: basis.data detached', refused, () => native.completeBasis({ basis: detached(20, 4), seed: 0, out: matrix(20, 2) }), 'ERR_DETACHED_BUFFER');

test('native.setThreads("2")', refused, () => native.setThreads(as<number>('2')), 'ERR_INVALID_ARGUMENT');
test('native.setThreads()', refused, () => as<() => void>(native.setThreads)(), 'ERR_INVALID_ARGUMENT');
test('native.setThreads(0)', refused, () => native.setThreads(0), 'ERR_INVALID_ARGUMENT');
test('native.setThreads(2000)', refused, () => native.setThreads(2000), 'ERR_INVALID_ARGUMENT');
