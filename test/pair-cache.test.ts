/**
 * The pair cache of an adapter bank (lib/multiadapter.ts PairCache, native/core/pair_cache.h):
 * batches of few adapters run through rank pairs kept between calls. Against the f64
 * reference of each row's adapter alone; the same batch gives the same bits whatever the
 * cache held before (cold, warm, after other batches, concurrently); the budget holds.
 */
import test from 'ava';
import { AdapterBank, EigenLoraxError, PairCache, eigenBankApply, matrix, type EigenAdapterBank, type Matrix } from '../lib/index.js';
import { bank, bankDeltas, denseRows, dIn, dOut, maxRelDiff } from './helpers/bank-fixtures.js';
import { freshSeed, randomMatrix, rng } from './helpers/random.js';

const K = 16;
const R = 3;
const MiB = 2 ** 20;

/** Row assignments: pairs (few adapters, many rows each) and shared (many adapters, a row each). */
function batches(seed: number) {
  const random = rng(seed);
  const make = (n: number, rows: (b: number) => number) => ({ n, rows: Int32Array.from({ length: n }, (_, b) => rows(b)) });
  return [
    { what: 'one adapter, 64 rows', ...make(64, () => 2) },
    { what: 'two adapters interleaved with empty rows', ...make(80, (b) => [0, 4, -1, 4, 0][b % 5]!) },
    { what: 'three contiguous runs', ...make(72, (b) => (b < 30 ? 1 : b < 50 ? 5 : 3)) },
    { what: 'a row each, random (shared products)', ...make(6, () => Math.floor(random() * 7) - 1) },
  ];
}

type Batch = ReturnType<typeof batches>[number];

/** y for each batch, with weight and bias, bias only, and into a dirty buffer (adapters only). */
async function run(b: EigenAdapterBank, list: Batch[], x: Matrix, weight: Matrix, bias: Float32Array): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const c of list) {
    const xs = matrix(c.n, dIn, x.data.subarray(0, c.n * dIn));
    out.push((await eigenBankApply(xs, b, c.rows, { weight, bias })).data);
    out.push((await eigenBankApply(xs, b, c.rows, { bias })).data);
    const dirty = matrix(c.n, dOut);
    dirty.data.fill(Number.NaN);
    out.push((await eigenBankApply(xs, b, c.rows, { out: dirty })).data);
  }
  return out;
}

function sameBits(t: import('ava').ExecutionContext, got: Float32Array[], want: Float32Array[], what: string): void {
  t.is(got.length, want.length);
  const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  const differing = got.findIndex((g, i) => !bytes(g).equals(bytes(want[i]!)));
  t.is(differing, -1, `${what}: output ${differing} differs`);
}

test('with a pair cache each row gets its own adapter, and a batch gives the same bits cold, warm, after other batches and with ranks', async (t) => {
  const seed = freshSeed();
  const b = await bank(seed, 6, K, K, R);
  const deltas = bankDeltas(b);
  const x = randomMatrix(80, dIn, seed + 99);
  const weight = randomMatrix(dOut, dIn, seed + 98);
  const bias = randomMatrix(1, dOut, seed + 97).data;
  const list = batches(seed);

  const cache = new PairCache(b.componentsA, b.componentsB, { budget: MiB });
  const cold = await run({ ...b, pairCache: cache }, list, x, weight, bias);
  const held = cache.stats();
  t.true(held.pairs >= 5, `seed ${seed}: the few-adapter batches went through pairs (${held.pairs} cached)`);
  t.true(held.bytes <= held.budget && held.componentsBytes === 4 * K * (dIn + dOut));
  let k = 0;
  for (const c of list) {
    const xs = matrix(c.n, dIn, x.data.subarray(0, c.n * dIn));
    const deltaOf = (row: number) => (c.rows[row]! >= 0 ? deltas[c.rows[row]!]! : null);
    const wants = [denseRows(xs, weight, bias, deltaOf), denseRows(xs, null, bias, deltaOf), denseRows(xs, null, null, deltaOf)];
    for (const want of wants) {
      const got = matrix(c.n, dOut, cold[k++]!);
      t.true(maxRelDiff(got, want) < 1e-5, `seed ${seed}, ${c.what}: ${maxRelDiff(got, want)}`);
    }
  }
  sameBits(t, await run({ ...b, pairCache: cache }, list, x, weight, bias), cold, 'warm');
  const other = new PairCache(b.componentsA, b.componentsB, { budget: MiB });
  const reversed = await run({ ...b, pairCache: other }, [...list].reverse(), x, weight, bias);
  const back = list.flatMap((_, i) => reversed.slice(3 * (list.length - 1 - i), 3 * (list.length - i)));
  sameBits(t, back, cold, 'another cache, batches in reverse order');
  // Ranks given with the bank (an upper bound each) choose the path without factorising.
  const ranks = new Int32Array(b.count).fill(R);
  const withRanks = await run({ ...b, ranks, pairCache: new PairCache(b.componentsA, b.componentsB, { budget: MiB }) }, list, x, weight, bias);
  sameBits(t, await run({ ...b, ranks, pairCache: cache }, list, x, weight, bias), withRanks, 'ranks, warm cache');
});

test('the cache holds at most its budget, least recently used first out; batches whose pairs do not fit are still right', async (t) => {
  const seed = freshSeed();
  const b = await bank(seed, 6, K, K, R);
  const deltas = bankDeltas(b);
  const x = randomMatrix(64, dIn, seed + 1);
  const entry = 4 * (R * (dIn + dOut) + K * K);
  const cache = new PairCache(b.componentsA, b.componentsB, { budget: 2 * entry + entry / 2 });
  const one = (i: number) => Int32Array.from({ length: 64 }, () => i);
  for (const i of [0, 1, 2, 1, 3]) {
    const y = await eigenBankApply(x, { ...b, pairCache: cache }, one(i));
    t.true(maxRelDiff(y, denseRows(x, null, null, () => deltas[i]!)) < 1e-5, `seed ${seed}: adapter ${i}`);
    const s = cache.stats();
    t.true(s.pairs <= 2 && s.bytes <= s.budget, `seed ${seed}: ${s.pairs} pairs, ${s.bytes} bytes of ${s.budget}`);
  }
  t.is(cache.stats().pairs, 2);
  // Three adapters' pairs exceed the budget: built for the batch, not kept.
  const three = Int32Array.from({ length: 64 }, (_, r) => r % 3);
  const y = await eigenBankApply(x, { ...b, pairCache: cache }, three);
  t.true(maxRelDiff(y, denseRows(x, null, null, (r) => deltas[r % 3]!)) < 1e-5, `seed ${seed}: three adapters`);
  t.true(cache.stats().bytes <= cache.budget);
  const none = new PairCache(b.componentsA, b.componentsB, { budget: 0 });
  const y0 = await eigenBankApply(x, { ...b, pairCache: none }, one(4));
  t.true(maxRelDiff(y0, denseRows(x, null, null, () => deltas[4]!)) < 1e-5, `seed ${seed}: budget 0`);
  t.deepEqual({ pairs: none.stats().pairs, bytes: none.stats().bytes }, { pairs: 0, bytes: 0 });
});

test('concurrent batches on one cache give the bits each gives alone', async (t) => {
  const seed = freshSeed();
  const b = await bank(seed, 6, K, K, R);
  const x = randomMatrix(64, dIn, seed + 2);
  const random = rng(seed + 3);
  const list = Array.from({ length: 12 }, () => {
    const a = Math.floor(random() * 6);
    const c = Math.floor(random() * 6);
    return Int32Array.from({ length: 64 }, (_, r) => (r % 3 === 0 ? a : c));
  });
  const alone: Float32Array[] = [];
  for (const rows of list) alone.push((await eigenBankApply(x, { ...b, pairCache: new PairCache(b.componentsA, b.componentsB) }, rows)).data);
  const shared = new PairCache(b.componentsA, b.componentsB);
  const together = await Promise.all(list.map((rows) => eigenBankApply(x, { ...b, pairCache: shared }, rows)));
  sameBits(t, together.map((y) => y.data), alone, `seed ${seed}: concurrent`);
});

test('pair cache refusals: not a cache, other components, bad ranks, bad options; nothing written', async (t) => {
  const b = await bank(5, 3, K, K, R);
  const x = randomMatrix(8, dIn, 6);
  const rows = new Int32Array(8).fill(1);
  const out = matrix(8, dOut);
  out.data.fill(7);
  const cache = new PairCache(b.componentsA, b.componentsB);
  const refuse = async (bankArgs: EigenAdapterBank, message: RegExp) => {
    const error = await t.throwsAsync(eigenBankApply(x, bankArgs, rows, { out }), { instanceOf: EigenLoraxError, message });
    t.is(error?.code, 'ERR_INVALID_ARGUMENT');
  };
  await refuse({ ...b, pairCache: {} as PairCache }, /bank\.pairCache: expected a PairCache/);
  const copyA = matrix(dIn, K, b.componentsA.data.slice());
  await refuse({ ...b, componentsA: copyA, pairCache: cache }, /made from other components/);
  await refuse({ ...b, ranks: new Int32Array(2), pairCache: cache }, /bank\.ranks: expected an Int32Array of 3 ranks/);
  await refuse({ ...b, ranks: Int32Array.of(3, -1, 3), pairCache: cache }, /ranks\[1\]: expected a rank >= 0/);
  t.true(out.data.every((v) => v === 7), 'nothing written');
  t.throws(() => new PairCache(b.componentsA, b.componentsB, { budget: -1 }), { code: 'ERR_INVALID_ARGUMENT' } as never);
  t.throws(() => new PairCache(b.componentsA, b.componentsB, { size: 1 } as never), { code: 'ERR_INVALID_ARGUMENT' } as never);
});

test('AdapterBank reports its pair caches, and pairCacheBytes: 0 keeps none', async (t) => {
  const seed = freshSeed();
  const b = await bank(seed, 2, K, K, R);
  const module = {
    name: 'm', dIn, dOut, layout: 'linear' as const, convKernel: null, fanInFanOut: false, kA: K, kB: K, augmentA: 0, augmentB: 0,
    componentsA: b.componentsA, componentsB: b.componentsB, singularA: new Float32Array(K), singularB: new Float32Array(K),
    energyA: 0, energyB: 0, explainedA: 1, explainedB: 1, meanA: null, meanB: null, adapters: [], ranks: [],
  };
  const subspace = {
    formatVersion: 1, id: 'pair-cache-test', libraryVersion: 'test',
    settings: { stacking: 'canonical' as const, weighting: 'equal' as const, center: false, components: { A: K, B: K }, variance: null, maxComponents: null, augment: { A: 0, B: 0 }, oversample: 10, powerIters: 2, seed: 0 },
    sources: [], baseModel: null, modules: new Map([['m', module]]), coefficients: [], report: null,
  };
  const coefficients = (i: number) => ({
    subspaceId: subspace.id, stacking: 'canonical' as const, adapter: { name: `a${i}`, path: null, format: 'peft' as const, baseModel: null, files: [] },
    modules: new Map([['m', { name: 'm', rank: R, alpha: b.coefficients[i]!.alpha, beta: b.coefficients[i]!.beta, scale: b.coefficients[i]!.scale, adapterAlpha: R, rslora: false, adapterScale: 1, norm: 0, error: 0, relativeError: 0 }]]),
    skipped: [], norm: 0, error: 0, relativeError: 0,
  });
  const x = randomMatrix(64, dIn, seed + 1);
  const names = Array.from({ length: 64 }, (_, r) => (r % 2 === 0 ? 'a0' : 'a1'));
  const deltas = bankDeltas(b);
  for (const pairCacheBytes of [undefined, 0]) {
    const bank = new AdapterBank(subspace as never, pairCacheBytes === undefined ? {} : { pairCacheBytes });
    bank.register('a0', coefficients(0) as never);
    bank.register('a1', coefficients(1) as never);
    const y = await bank.apply('m', x, names);
    t.true(maxRelDiff(y, denseRows(x, null, null, (r) => deltas[r % 2]!)) < 1e-5, `seed ${seed}, pairCacheBytes ${pairCacheBytes}`);
    const total = bank.memory().total;
    if (pairCacheBytes === 0) t.deepEqual([total.pairCacheBytes, total.pairCacheComponentsBytes], [0, 0]);
    else t.deepEqual([total.pairCacheBytes, total.pairCacheComponentsBytes], [2 * 4 * (R * (dIn + dOut) + K * K), 4 * K * (dIn + dOut)]);
  }
});
