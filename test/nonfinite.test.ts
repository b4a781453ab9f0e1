/**
 * No silent non-finite results (issue 13, defect 8): rsvd gets representable singular
 * values right however large or small the entries (it scales internally) and refuses with
 * ERR_NON_FINITE, naming the value, those beyond float32; low-rank ops refuse a scale that
 * is Infinity in float32 and report float32 overflow of their result as ERR_NON_FINITE
 * naming the op, while NaN or Inf given in still propagates.
 */
import test from 'ava';
import {
  addLowRank,
  EigenLoraxError,
  eigenLoraForward,
  linearForward,
  loraBankApply,
  loraForward,
  matrix,
  rsvd,
  type Matrix,
} from '../lib/index.js';
import { native } from '../lib/native.js';
import { randomMatrix } from './helpers/random.js';
import { geometric, withSpectrum } from './helpers/reference.js';

const scaled = (m: Matrix, factor: number): Matrix => matrix(m.rows, m.cols, m.data.map((v) => v * factor));
const filled = (rows: number, cols: number, value: number): Matrix => matrix(rows, cols, new Float32Array(rows * cols).fill(value));

function close(t: { true: (v: boolean, m?: string) => void }, got: ArrayLike<number>, want: ArrayLike<number>, rel: number, what: string) {
  let top = 0;
  for (let i = 0; i < want.length; i++) top = Math.max(top, Math.abs(want[i]!));
  for (let i = 0; i < want.length; i++) {
    const ok = Math.abs(got[i]! - want[i]!) <= rel * top;
    t.true(ok, `${what}[${i}]: ${got[i]} against ${want[i]}`);
    if (!ok) return;
  }
}

test('rsvd of a 300 x 200 matrix of 3e38: sigma_1 = 7.3e40 is beyond float32, a typed error naming S[0]', async (t) => {
  for (const method of ['randomized', 'exact'] as const) {
    const e = await t.throwsAsync(rsvd(filled(300, 200, 3e38), { rank: 5, method }), { instanceOf: EigenLoraxError });
    t.is(e?.code, 'ERR_NON_FINITE', method);
    t.regex(e!.message, /S\[0\].*7\.3\d*e\+40.*float32/, method);
  }
});

test('rsvd of a 300 x 200 matrix of 1e36 (sigma_1 = 2.45e38, sums of squares overflow): the right value', async (t) => {
  const want = 1e36 * Math.sqrt(300 * 200);
  for (const method of ['randomized', 'exact'] as const) {
    const r = await rsvd(filled(300, 200, 1e36), { rank: 3, method });
    t.true(Math.abs(r.S[0]! - want) <= 1e-5 * want, `${method}: S[0] = ${r.S[0]} against ${want}`);
    t.true(r.S[1]! <= 1e-4 * want, `${method}: S[1] = ${r.S[1]}`);
  }
});

for (const [label, factor] of [
  ['2^120 (1e36)', 2 ** 120],
  ['2^-120 (1e-36)', 2 ** -120],
  ['3e30 (not a power of two)', 3e30],
  ['1e-30', 1e-30],
] as const) {
  test(`rsvd of a known spectrum times ${label}: the singular values and vectors of the unscaled one, scaled`, async (t) => {
    const { A, s } = withSpectrum(300, 200, geometric(20, 0.8), 77);
    const options = { rank: 8, powerIters: 3, seed: 1, method: 'randomized' } as const;
    const base = await rsvd(A, options);
    const big = await rsvd(scaled(A, factor), options);
    close(t, Array.from(base.S, (v) => v * factor), Array.from(s.subarray(0, 8), (v) => v * factor), 1e-4, 'S vs truth');
    close(t, big.S, Array.from(base.S, (v) => v * factor), 1e-4, 'S');
    close(t, big.U.data, base.U.data, 1e-3, 'U');
    close(t, big.V.data, base.V.data, 1e-3, 'V');
  });
}

test('rsvd: zeros are not scaled (S = 0), NaN still refused', async (t) => {
  const r = await rsvd(matrix(300, 200), { rank: 2, method: 'randomized' });
  t.deepEqual(Array.from(r.S), [0, 0]);
  const bad = filled(300, 200, 1);
  bad.data[17] = Number.NaN;
  const e = await t.throwsAsync(rsvd(bad, { rank: 2 }), { instanceOf: EigenLoraxError });
  t.is(e?.code, 'ERR_NON_FINITE');
});

// ---- low-rank ops

const x = randomMatrix(4, 16, 1);
const A = randomMatrix(2, 16, 2);
const B = randomMatrix(8, 2, 3);

test('a scale that is Infinity in float32 (1e39) is refused, through the library and the addon', async (t) => {
  const e = await t.throwsAsync(loraForward(x, { A, B, scale: 1e39 }), { instanceOf: EigenLoraxError });
  t.is(e?.code, 'ERR_INVALID_ARGUMENT');
  t.regex(e!.message, /layer\.scale: expected .*float32.*, received 1e\+39/);
  const c = randomMatrix(16, 4, 4);
  const el = await t.throwsAsync(
    eigenLoraForward(x, { componentsA: c, alpha: randomMatrix(4, 2, 5), beta: randomMatrix(4, 2, 6), componentsB: randomMatrix(8, 4, 7), scale: -1e39 }),
    { instanceOf: EigenLoraxError },
  );
  t.is(el?.code, 'ERR_INVALID_ARGUMENT');
  const add = await t.throwsAsync(addLowRank(matrix(8, 16), { A, B, scale: 4e38 }), { instanceOf: EigenLoraxError });
  t.is(add?.code, 'ERR_INVALID_ARGUMENT');
  const bank = await t.throwsAsync(loraBankApply(x, [{ A, B, scale: Infinity }], new Int32Array(4)), { instanceOf: EigenLoraxError });
  t.is(bank?.code, 'ERR_INVALID_ARGUMENT');
  const direct = await t.throwsAsync(async () => native.loraForward({ x, A, B, scale: 1e39, weight: null, bias: null, y: matrix(4, 8) }));
  t.is((direct as EigenLoraxError).code, 'ERR_INVALID_ARGUMENT');
  t.regex((direct as Error).message, /scale: expected .*, received 1e\+39/);
  const pairs = await t.throwsAsync(async () =>
    native.buildModuleSubspace({
      adapters: [{ A, B, scale: 1e39 }],
      stacking: 'raw', weighting: 'equal', center: false, oversample: 0, powerIters: 0, seed: 0,
      componentsA: matrix(16, 1), componentsB: matrix(8, 1), singularA: new Float32Array(1), singularB: new Float32Array(1), meanA: null, meanB: null,
    } as unknown as Parameters<typeof native.buildModuleSubspace>[0]),
  );
  t.is((pairs as EigenLoraxError).code, 'ERR_INVALID_ARGUMENT');
});

test('a finite scale whose products overflow float32: ERR_NON_FINITE naming the op and the output', async (t) => {
  const big = filled(4, 16, 1e30);
  const cases: [string, () => Promise<unknown>][] = [
    ['loraForward', () => loraForward(big, { A: filled(2, 16, 1e10), B, scale: 1e3 })],
    ['eigenLoraForward', () =>
      eigenLoraForward(big, { componentsA: filled(16, 4, 1e10), alpha: randomMatrix(4, 2, 5), beta: randomMatrix(4, 2, 6), componentsB: randomMatrix(8, 4, 7), scale: 1 })],
    ['linearForward', () => linearForward(big, { weight: filled(8, 16, 1e10) })],
    ['addLowRank', () => addLowRank(matrix(8, 16), { A: filled(2, 16, 1e20), B: filled(8, 2, 1e20), scale: 1 })],
  ];
  for (const [op, call] of cases) {
    const e = await t.throwsAsync(call(), { instanceOf: EigenLoraxError }, op);
    t.is(e?.code, 'ERR_NON_FINITE', op);
    t.regex(e!.message, new RegExp(`^${op}: (y|target): .*every input is finite.*overflow`), op);
  }
});

test('overflow is caught on the queued path too (large enough to leave the JS thread)', async (t) => {
  const big = filled(512, 512, 1e19);
  const e = await t.throwsAsync(linearForward(big, { weight: filled(512, 512, 1e19) }), { instanceOf: EigenLoraxError });
  t.is(e?.code, 'ERR_NON_FINITE');
});

test('NaN or Inf given in propagates as before (no error), and an in-place target already Inf stays so', async (t) => {
  const withInf = matrix(x.rows, x.cols, x.data.slice());
  withInf.data[0] = Infinity;
  const y = await loraForward(withInf, { A, B, scale: 1 });
  t.true(y.data.some((v) => !Number.isFinite(v)));
  const target = matrix(8, 16);
  target.data[5] = Infinity;
  await addLowRank(target, { A, B, scale: 1 });
  t.is(target.data[5], Infinity);
  t.true(Number.isFinite(target.data[6]!));
});

test('a large but finite scale with a representable result works (no false alarm)', async (t) => {
  const y = await loraForward(x, { A: scaled(A, 1e-30), B, scale: 1e30 });
  const ref = await loraForward(x, { A, B, scale: 1 });
  close(t, y.data, ref.data, 1e-4, 'y');
});
