/**
 * AdapterBank and LoraBank: a batch where each row names its adapter equals applying each
 * row's adapter alone (eigenLoraForward with its alpha, beta and scale; loraForward with
 * its reconstruction), rows without an adapter get the base only, registration and
 * removal while a batch is in flight, the memory report, and every refusal.
 */
import test from 'ava';
import {
  AdapterBank,
  EigenLoraxError,
  LoraBank,
  buildSubspace,
  combineCoefficients,
  eigenLoraForward,
  linearForward,
  loraForward,
  matrix,
  reconstructAdapter,
  type AdapterCoefficients,
  type LoraAdapter,
  type Matrix,
  type Subspace,
} from '../lib/index.js';
import { freshSeed, randomMatrix, rng } from './helpers/random.js';
import { memoryAdapter, plantedBases, plantedFactors } from './helpers/subspace-fixtures.js';

const D_IN = 24;
const D_OUT = 18;
const NAMES = ['layers.0.q_proj', 'layers.0.v_proj'];

function plantedAdapters(seed: number, count: number): LoraAdapter[] {
  const bases = NAMES.map((_, j) => plantedBases(D_IN, D_OUT, 4, 4, seed + 7 * j));
  return Array.from({ length: count }, (_, i) =>
    memoryAdapter(NAMES.map((name, j) => ({ name, ...plantedFactors(bases[j]!, 2 + (i % 2), seed + 31 * i + j, 0.05), alpha: 2 + i }))),
  );
}

function row(x: Matrix, b: number): Matrix {
  return matrix(1, x.cols, x.data.slice(b * x.cols, (b + 1) * x.cols));
}

function maxRel(got: Float32Array, want: Float32Array): number {
  let scale = 0;
  let worst = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]!));
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  return worst / Math.max(scale, 1e-30);
}

/** Row by row: the base (weight, bias) plus the row's adapter alone, via `alone`. */
async function rowByRow(
  x: Matrix,
  rows: ReadonlyArray<string | null>,
  base: { weight: Matrix; bias: Float32Array },
  alone: (name: string, xb: Matrix) => Promise<Matrix>,
): Promise<Float32Array> {
  const out = new Float32Array(x.rows * D_OUT);
  for (let b = 0; b < x.rows; b++) {
    const name = rows[b];
    const y = name === null || name === undefined ? await linearForward(row(x, b), base) : await alone(name, row(x, b));
    out.set(y.data, b * D_OUT);
  }
  return out;
}

async function setup(seed: number, options: { stacking?: 'canonical' | 'raw'; center?: boolean } = {}) {
  const adapters = plantedAdapters(seed, 5);
  const subspace = await buildSubspace(adapters, { components: 4, seed: 1, hashSources: false, ...options });
  const names = ['alpha', 'bravo', 'charlie', 'delta', 'echo'];
  const byName = new Map(names.map((n, i) => [n, subspace.coefficients[i]!]));
  return { adapters, subspace, names, byName };
}

function randomRows(seed: number, n: number, names: readonly string[]): Array<string | null> {
  const random = rng(seed);
  return Array.from({ length: n }, () => {
    const i = Math.floor(random() * (names.length + 1));
    return i === names.length ? null : names[i]!;
  });
}

for (const settings of [{ stacking: 'canonical' }, { stacking: 'raw' }, { stacking: 'raw', center: true }] as const) {
  const label = `${settings.stacking}${'center' in settings ? ', centred' : ''}`;
  test(`AdapterBank (${label}): the batch equals each row's adapter alone; null rows get the base only`, async (t) => {
    const seed = freshSeed();
    const what = `seed ${seed}`;
    const { subspace, names, byName } = await setup(seed, settings);
    const bank = new AdapterBank(subspace, { capacity: 2 });
    for (const n of names) bank.register(n, byName.get(n)!);
    t.deepEqual(bank.names, names);
    t.true(bank.capacity >= 5);
    const n = 19;
    const x = randomMatrix(n, D_IN, seed + 1);
    const rows = randomRows(seed + 2, n, names);
    rows[0] = null;
    rows[1] = 'charlie';
    const base = { weight: randomMatrix(D_OUT, D_IN, seed + 3, 0.2), bias: randomMatrix(1, D_OUT, seed + 4).data };
    for (const moduleName of NAMES) {
      const m = subspace.modules.get(moduleName)!;
      const reference = async (batch: ReadonlyArray<string | null>) => {
        if (m.meanA === null && m.meanB === null) {
          return rowByRow(x, batch, base, async (name, xb) => {
            const c = byName.get(name)!.modules.get(moduleName)!;
            return eigenLoraForward(xb, { componentsA: m.componentsA, alpha: c.alpha, beta: c.beta, componentsB: m.componentsB, scale: c.scale, ...base });
          });
        }
        const lora = new Map<string, LoraAdapter>();
        for (const [name, c] of byName) lora.set(name, await reconstructAdapter(subspace, c));
        return rowByRow(x, batch, base, async (name, xb) => {
          const f = lora.get(name)!.modules.get(moduleName)!;
          return loraForward(xb, { A: f.A, B: f.B, scale: f.scale, ...base });
        });
      };
      const y = await bank.apply(moduleName, x, rows, base);
      const want = await reference(rows);
      t.true(maxRel(y.data, want) < 1e-5, `${what} ${moduleName}: ${maxRel(y.data, want)}`);
      // A batch that uses one adapter of five passes only its mixing matrix (the bank's
      // compact path): the same result.
      const few = rows.map((_, b) => (b % 3 === 1 ? 'delta' : null));
      const yFew = await bank.apply(moduleName, x, few, base);
      t.true(maxRel(yFew.data, await reference(few)) < 1e-5, `${what} ${moduleName}, one adapter`);
      // The same through slots, into an out buffer, and without the base (adapters only).
      const out = matrix(n, D_OUT);
      const again = await bank.apply(moduleName, x, bank.rows(rows), { ...base, out });
      t.is(again, out);
      t.true(maxRel(out.data, y.data) === 0, what);
      const delta = await bank.apply(moduleName, x, rows);
      const baseOnly = await linearForward(x, base);
      const sum = delta.data.map((v, i) => v + baseOnly.data[i]!);
      t.true(maxRel(sum, y.data) < 1e-5, what);
      for (let b = 0; b < n; b++) if (rows[b] === null) t.true(delta.data.subarray(b * D_OUT, (b + 1) * D_OUT).every((v) => v === 0), what);
    }
  });
}

test('LoraBank (the per-row LoRA baseline) gives the AdapterBank result on the reconstructions, and each row alone', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  const { subspace, names, byName } = await setup(seed);
  const eigen = new AdapterBank(subspace);
  const lora = new LoraBank();
  for (const n of names) {
    eigen.register(n, byName.get(n)!);
    lora.register(n, await reconstructAdapter(subspace, byName.get(n)!));
  }
  t.deepEqual(lora.names, names);
  t.deepEqual(lora.moduleNames, NAMES);
  const n = 23;
  const x = randomMatrix(n, D_IN, seed + 1);
  const rows = randomRows(seed + 2, n, names);
  const base = { weight: randomMatrix(D_OUT, D_IN, seed + 3, 0.2), bias: randomMatrix(1, D_OUT, seed + 4).data };
  for (const moduleName of NAMES) {
    const a = await eigen.apply(moduleName, x, rows, base);
    const b = await lora.apply(moduleName, x, rows, base);
    t.true(maxRel(b.data, a.data) < 1e-5, `${what}: ${maxRel(b.data, a.data)}`);
    const want = await rowByRow(x, rows, base, async (name, xb) => {
      const f = (await reconstructAdapter(subspace, byName.get(name)!)).modules.get(moduleName)!;
      return loraForward(xb, { A: f.A, B: f.B, scale: f.scale, ...base });
    });
    t.true(maxRel(b.data, want) < 1e-5, what);
  }
  // Loaded LoRA adapters of other ranks and scales, with a module only one of them has.
  const own = plantedAdapters(seed + 9, 2);
  const extra = memoryAdapter([{ name: 'layers.1.o_proj', A: randomMatrix(3, 10, seed + 5), B: randomMatrix(6, 3, seed + 6), alpha: 12 }]);
  const plain = new LoraBank();
  plain.register('p', own[0]!);
  plain.register('q', own[1]!);
  plain.register('r', extra);
  const xo = randomMatrix(4, 10, seed + 7);
  const yo = await plain.apply('layers.1.o_proj', xo, ['r', 'p', null, 'r']);
  const mo = extra.modules.get('layers.1.o_proj')!;
  for (const b of [0, 3]) {
    const alone = await loraForward(row(xo, b), { A: mo.A, B: mo.B, scale: mo.scale });
    t.true(maxRel(yo.data.subarray(b * 6, b * 6 + 6), alone.data) < 1e-5, what);
  }
  t.true(yo.data.subarray(6, 18).every((v) => v === 0), 'p lacks the module; null rows: nothing');
  const mem = plain.memory();
  t.is(mem.adapters, 3);
  t.is(mem.total.loraBytes, [...own, extra].reduce((s, a) => s + [...a.modules.values()].reduce((n, m) => n + 4 * (m.A.data.length + m.B.data.length), 0), 0));
});

test('a combined adapter in the bank equals the weighted sum of its parts, row by row', async (t) => {
  const seed = freshSeed();
  const { subspace, names, byName } = await setup(seed);
  const weights = [0.5, -1, 2, 0, 0.25];
  const combined = await combineCoefficients(subspace, names.map((n) => byName.get(n)!), { weights });
  const bank = new AdapterBank(subspace);
  for (const n of names) bank.register(n, byName.get(n)!);
  bank.register('mix', combined);
  const x = randomMatrix(3, D_IN, seed + 1);
  for (const moduleName of NAMES) {
    const mixed = await bank.apply(moduleName, x, ['mix', 'mix', 'mix']);
    const want = new Float32Array(3 * D_OUT);
    for (let i = 0; i < names.length; i++) {
      const y = await bank.apply(moduleName, x, [names[i]!, names[i]!, names[i]!]);
      for (let e = 0; e < want.length; e++) want[e]! += weights[i]! * y.data[e]!;
    }
    t.true(maxRel(mixed.data, want) < 1e-5, `seed ${seed}: ${maxRel(mixed.data, want)}`);
  }
});

/** The result of `name` alone on every row (no base). */
async function alone(bank: AdapterBank, moduleName: string, x: Matrix, name: string): Promise<Float32Array> {
  return (await bank.apply(moduleName, x, Array.from({ length: x.rows }, () => name))).data;
}

test('register and remove while a batch is in flight: the batch keeps its adapters, slots are reused only afterwards', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  const { subspace, names, byName } = await setup(seed);
  const moduleName = NAMES[0]!;
  const bank = new AdapterBank(subspace, { capacity: 2 });
  bank.register('a', byName.get(names[0]!)!);
  bank.register('b', byName.get(names[1]!)!);
  const x = randomMatrix(64, D_IN, seed + 1);
  const wantA = await alone(bank, moduleName, x, 'a');
  const wantB = await alone(bank, moduleName, x, 'b');
  const slotA = bank.indexOf('a');
  // In flight: remove a, register two more (the second one grows the buffers).
  const inFlight = bank.apply(moduleName, x, Array.from({ length: 64 }, (_, b) => (b % 2 === 0 ? 'a' : 'b')));
  t.true(bank.remove('a'));
  t.false(bank.has('a'));
  t.false(bank.remove('a'));
  const slotC = bank.register('c', byName.get(names[2]!)!);
  t.not(slotC, slotA, 'the removed slot is not reused while the batch runs');
  bank.register('d', byName.get(names[3]!)!);
  t.true(bank.capacity >= 4);
  const y = await inFlight;
  for (let b = 0; b < 64; b++) {
    const want = (b % 2 === 0 ? wantA : wantB).subarray(b * D_OUT, (b + 1) * D_OUT);
    t.true(maxRel(y.data.subarray(b * D_OUT, (b + 1) * D_OUT), want) < 1e-6, `${what}: row ${b}`);
  }
  // Now the slot comes back, and the new adapter in it is applied correctly.
  const slotE = bank.register('e', byName.get(names[4]!)!);
  t.is(slotE, slotA);
  const check = new AdapterBank(subspace);
  check.register('e', byName.get(names[4]!)!);
  check.register('c', byName.get(names[2]!)!);
  t.true(maxRel(await alone(bank, moduleName, x, 'e'), await alone(check, moduleName, x, 'e')) < 1e-6, what);
  t.true(maxRel(await alone(bank, moduleName, x, 'c'), await alone(check, moduleName, x, 'c')) < 1e-6, what);
  t.deepEqual(bank.names.sort(), ['b', 'c', 'd', 'e']);
  // A slot index taken before a removal no longer resolves.
  const stale = Int32Array.from({ length: 64 }, () => bank.indexOf('d'));
  bank.remove('d');
  await t.throwsAsync(bank.apply(moduleName, x, stale), { instanceOf: EigenLoraxError, code: 'ERR_UNKNOWN_ADAPTER', message: /rows\[0\]: slot/ });
  // Replacing.
  t.throws(() => bank.register('b', byName.get(names[0]!)!), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT', message: /already registered/ });
  bank.register('b', byName.get(names[0]!)!, { replace: true });
  t.true(maxRel(await alone(bank, moduleName, x, 'b'), wantA) < 1e-6, what);
});

test('the memory report counts every form', async (t) => {
  const seed = freshSeed();
  const { subspace, names, byName } = await setup(seed);
  const bank = new AdapterBank(subspace, { capacity: 4 });
  for (const n of names) bank.register(n, byName.get(n)!);
  const mem = bank.memory();
  t.is(mem.adapters, 5);
  t.is(mem.capacity, 8);
  for (const m of mem.modules) {
    const ranks = names.map((n) => byName.get(n)!.modules.get(m.name)!.rank);
    const rankSum = ranks.reduce((a, b) => a + b, 0);
    t.is(m.mixingBytes, 5 * 4 * 4 * 4);
    t.is(m.mixingAllocatedBytes, 8 * 4 * 4 * 4);
    t.is(m.componentsBytes, (D_IN + D_OUT) * 4 * 4);
    t.is(m.coefficientBytes, rankSum * (4 + 4) * 4);
    t.is(m.loraBytes, rankSum * (D_IN + D_OUT) * 4);
  }
  t.is(mem.total.loraBytes, mem.modules.reduce((n, m) => n + m.loraBytes, 0));
  bank.remove('alpha');
  t.is(bank.memory().adapters, 4);
  t.is(bank.memory().modules[0]!.mixingBytes, 4 * 4 * 4 * 4);
});

test('refusals: unknown adapters and modules, shapes, other subspaces', async (t) => {
  const seed = freshSeed();
  const { subspace, names, byName } = await setup(seed);
  const bank = new AdapterBank(subspace);
  bank.register('a', byName.get(names[0]!)!);
  const x = randomMatrix(3, D_IN, seed);
  const m0 = NAMES[0]!;
  const err = (code: string, message?: RegExp) => ({ instanceOf: EigenLoraxError, code, ...(message ? { message } : {}) });
  await t.throwsAsync(bank.apply(m0, x, ['a', 'zulu', null]), err('ERR_UNKNOWN_ADAPTER', /rows\[1\].*zulu/));
  await t.throwsAsync(bank.apply(m0, x, Int32Array.of(0, 5, -1)), err('ERR_UNKNOWN_ADAPTER', /rows\[1\]: slot 5/));
  await t.throwsAsync(bank.apply(m0, x, Int32Array.of(0, -2, -1)), err('ERR_UNKNOWN_ADAPTER'));
  t.throws(() => bank.rows(['a', 'nope']), err('ERR_UNKNOWN_ADAPTER'));
  await t.throwsAsync(bank.apply(m0, x, ['a', null]), err('ERR_SHAPE_MISMATCH', /3 entries/));
  await t.throwsAsync(bank.apply(m0, x, [1 as unknown as string, null, null]), err('ERR_INVALID_ARGUMENT', /rows\[0\]/));
  await t.throwsAsync(bank.apply('layers.9.nothing', x, ['a', null, null]), err('ERR_INVALID_ARGUMENT', /No module/));
  await t.throwsAsync(bank.apply(m0, randomMatrix(3, D_IN + 1, 1), ['a', null, null]), err('ERR_SHAPE_MISMATCH', /x/));
  await t.throwsAsync(bank.apply(m0, x, ['a', null, null], { weight: randomMatrix(D_OUT, D_IN + 1, 1) }), err('ERR_SHAPE_MISMATCH', /weight/));
  await t.throwsAsync(bank.apply(m0, x, ['a', null, null], { bias: new Float32Array(D_OUT + 1) }), err('ERR_SHAPE_MISMATCH', /bias/));
  await t.throwsAsync(bank.apply(m0, x, ['a', null, null], { out: matrix(3, D_OUT + 1) }), err('ERR_SHAPE_MISMATCH', /out/));
  // Coefficients of the wrong shape or of another subspace; nothing is registered then.
  const c = byName.get(names[1]!)!;
  const wrongK: AdapterCoefficients = {
    ...c,
    modules: new Map([...c.modules].map(([n, mc]) => [n, { ...mc, alpha: matrix(5, mc.rank) }])),
  };
  t.throws(() => bank.register('b', wrongK), err('ERR_SUBSPACE_MISMATCH', /K_A 4/));
  const other: Subspace = await buildSubspace(plantedAdapters(seed + 1, 3), { components: 4, seed: 2, hashSources: false });
  t.throws(() => bank.register('b', other.coefficients[0]!), err('ERR_SUBSPACE_MISMATCH', /subspace/));
  t.throws(() => bank.register('', c), err('ERR_INVALID_ARGUMENT'));
  t.false(bank.has('b'));
  t.deepEqual(bank.names, ['a']);
  // LoraBank: a module of another shape; unknown names.
  const lora = new LoraBank();
  lora.register('a', await reconstructAdapter(subspace, byName.get(names[0]!)!));
  const bad = memoryAdapter([{ name: m0, A: randomMatrix(2, D_IN + 2, 1), B: randomMatrix(D_OUT, 2, 2) }]);
  t.throws(() => lora.register('bad', bad), err('ERR_SHAPE_MISMATCH', /bank's module/));
  await t.throwsAsync(lora.apply(m0, x, ['a', 'bad', null]), err('ERR_UNKNOWN_ADAPTER'));
  await t.throwsAsync(lora.apply('nothing', x, ['a', null, null]), err('ERR_INVALID_ARGUMENT'));
});
