/**
 * combineAdapters / combineCoefficients against float64 dense references computed here
 * (dW = s B A formed entry by entry): linear on a subspace equals the weighted sum of
 * the individual reconstructions (and merging it equals merging them one by one), cat is
 * exact, svd is the best rank-k approximation, PEFT linear, TIES / DARE / magnitude
 * pruning by hand on a 2 x 3 module and against a plain reference on a 6 x 5 one, saving
 * the result, and the refusals.
 */
import test from 'ava';
import path from 'node:path';
import {
  EigenLoraxError,
  buildSubspace,
  combineAdapters,
  combineCoefficients,
  loadAdapter,
  matrix,
  mergeIntoBase,
  openSafetensors,
  reconstructAdapter,
  saveAdapter,
  writeSafetensors,
  type LoraAdapter,
  type Subspace,
} from '../lib/index.js';
import { freshSeed, rng } from './helpers/random.js';
import { jacobiSvd, type Mat64 } from './helpers/reference.js';
import { tempDir } from './helpers/safetensors-fixtures.js';
import { denseDelta, distance, frobenius, memoryAdapter, normal, plantedBases, plantedFactors, type ModuleSpec } from './helpers/subspace-fixtures.js';

// ---------------------------------------------------------------------------------------
// References

function zeros(rows: number, cols: number): Mat64 {
  return { rows, cols, data: new Float64Array(rows * cols) };
}

/** sum_i w_i dW_i of every module, dW_i = s_i B_i A_i (f64). */
function weightedSum(adapters: readonly LoraAdapter[], weights: readonly number[]): Map<string, Mat64> {
  const out = new Map<string, Mat64>();
  adapters.forEach((a, i) => {
    for (const [name, m] of a.modules) {
      const d = denseDelta(m.A, m.B, m.scale);
      const acc = out.get(name) ?? zeros(d.rows, d.cols);
      for (let e = 0; e < d.data.length; e++) acc.data[e]! += weights[i]! * d.data[e]!;
      out.set(name, acc);
    }
  });
  return out;
}

/** The update of a module of a combined adapter (scale included). */
function deltaOf(adapter: LoraAdapter, name: string): Mat64 {
  const m = adapter.modules.get(name)!;
  return denseDelta(m.A, m.B, m.scale);
}

function relative(a: Mat64, b: Mat64): number {
  return distance(a, b) / Math.max(frobenius(b), 1e-30);
}

const D_IN = 20;
const D_OUT = 16;
const NAMES = ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj'];

/** Adapters of the given ranks, alphas and rsLoRA flags on NAMES (random factors). */
function loraSet(
  seed: number,
  specs: ReadonlyArray<{ rank: number; alpha?: number; rslora?: boolean }>,
  dIn = D_IN,
  dOut = D_OUT,
  names: readonly string[] = NAMES,
): LoraAdapter[] {
  return specs.map((s, i) =>
    memoryAdapter(
      names.map((name, j) => ({
        name,
        A: normal(s.rank, dIn, seed + 100 * i + 2 * j),
        B: normal(dOut, s.rank, seed + 100 * i + 2 * j + 1, 0.5),
        ...(s.alpha === undefined ? {} : { alpha: s.alpha }),
        ...(s.rslora === undefined ? {} : { rslora: s.rslora }),
      })),
    ),
  );
}

/** Adapters from a planted subspace (so a subspace of K components fits them). */
function plantedAdapters(seed: number, count: number, rank: number, kPlanted: number, alphas: number[]): LoraAdapter[] {
  const bases = NAMES.map((_, j) => plantedBases(D_IN, D_OUT, kPlanted, kPlanted, seed + 7 * j));
  return Array.from({ length: count }, (_, i) =>
    memoryAdapter(
      NAMES.map((name, j): ModuleSpec => ({ name, ...plantedFactors(bases[j]!, rank, seed + 31 * i + j, 0.05), alpha: alphas[i % alphas.length]! })),
    ),
  );
}

// ---------------------------------------------------------------------------------------
// linear on a subspace

for (const settings of [
  { stacking: 'canonical', center: false },
  { stacking: 'raw', center: false },
  { stacking: 'raw', center: true },
] as const) {
  test(`linear on a subspace (${settings.stacking}${settings.center ? ', centred' : ''}) equals the weighted sum of the individual reconstructions`, async (t) => {
    const seed = freshSeed();
    const what = `seed ${seed}`;
    const adapters = plantedAdapters(seed, 4, 3, 4, [3, 6, 1.5, 12]);
    const subspace = await buildSubspace(adapters, { ...settings, components: 5, seed: 1, hashSources: false });
    const weights = [0.5, -1.25, 2, 0.3];
    const reconstructions = await Promise.all(subspace.coefficients.map((c) => reconstructAdapter(subspace, c)));
    const want = weightedSum(reconstructions, weights);
    const combined = await combineAdapters(subspace.coefficients, { method: 'linear', weights, subspace });
    t.deepEqual([...combined.modules.keys()], NAMES, what);
    for (const name of NAMES) {
      const m = combined.modules.get(name)!;
      t.is(m.scale, 1, what);
      t.is(m.alpha, m.rank, what);
      t.true(m.rank <= 5 + (settings.center ? 1 : 0), `${what}: rank ${m.rank}`);
      const err = relative(deltaOf(combined, name), want.get(name)!);
      t.true(err < 2e-5, `${what} ${name}: ${err}`);
    }
    if (!settings.center) {
      // The same through combineCoefficients: one rank-K update per module, error 0 at full rank.
      const c = await combineCoefficients(subspace, subspace.coefficients, { weights });
      for (const [name, mc] of c.modules) {
        t.true(mc.rank <= 5, what);
        t.true(mc.relativeError < 1e-6, `${what}: ${mc.relativeError}`);
        t.true(Math.abs(mc.norm - frobenius(want.get(name)!)) < 1e-4 * mc.norm, `${what}: norm ${mc.norm}`);
      }
      // Truncated to rank 2: the best rank-2 approximation of the exact sum.
      const two = await combineAdapters(subspace.coefficients, { method: 'linear', weights, subspace, rank: 2 });
      for (const name of NAMES) {
        const exact = jacobiSvd(want.get(name)!).S;
        let tail = 0;
        for (let j = 2; j < exact.length; j++) tail += exact[j]! ** 2;
        const got = distance(deltaOf(two, name), want.get(name)!);
        t.true(Math.abs(got - Math.sqrt(tail)) < 1e-4 * exact[0]!, `${what}: ${got} vs ${Math.sqrt(tail)}`);
      }
    }
  });
}

test('merging the linear combination equals merging each reconstruction with its weight', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const adapters = plantedAdapters(seed, 3, 2, 3, [2, 4, 1]);
  const subspace = await buildSubspace(adapters, { components: 4, seed: 2, hashSources: false });
  const weights = [1, -0.5, 0.75];
  const base = path.join(dir, 'base.safetensors');
  await writeSafetensors(
    base,
    NAMES.map((name, j) => ({ name: `${name}.weight`, shape: [D_OUT, D_IN], data: normal(D_OUT, D_IN, seed + 900 + j, 0.1).data })),
  );
  const combined = await combineAdapters(subspace.coefficients, { method: 'linear', weights, subspace });
  const one = await mergeIntoBase({ base, adapters: [combined], output: path.join(dir, 'one.safetensors') });
  const reconstructions = await Promise.all(subspace.coefficients.map((c) => reconstructAdapter(subspace, c)));
  const many = await mergeIntoBase({
    base,
    adapters: reconstructions.map((adapter, i) => ({ adapter, weight: weights[i]! })),
    output: path.join(dir, 'many.safetensors'),
  });
  const a = await openSafetensors(one.output);
  const b = await openSafetensors(many.output);
  const o = await openSafetensors(base);
  try {
    for (const name of NAMES) {
      const key = `${name}.weight`;
      const [x, y, w] = [(await a.readFloat32(key)).data, (await b.readFloat32(key)).data, (await o.readFloat32(key)).data];
      let diff = 0;
      let change = 0;
      for (let e = 0; e < x.length; e++) {
        diff = Math.max(diff, Math.abs(x[e]! - y[e]!));
        change = Math.max(change, Math.abs(y[e]! - w[e]!));
      }
      t.true(change > 1e-3, `seed ${seed}: the merge changed ${key}`);
      t.true(diff < 1e-5 * Math.max(1, change) + 1e-6, `seed ${seed} ${key}: ${diff}`);
    }
  } finally {
    await Promise.all([a.close(), b.close(), o.close()]);
  }
});

// ---------------------------------------------------------------------------------------
// cat, svd, PEFT linear

test('cat is exact: rank sum r_i, B A = sum w_i s_i B_i A_i, and it saves and reloads (PEFT, kohya)', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  const dir = await tempDir(t);
  // kohya files hold Stable Diffusion modules only: that round trip uses U-Net names.
  const unet = ['unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q', 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v'];
  for (const [format, names] of [
    ['peft', NAMES],
    ['kohya', unet],
  ] as const) {
    const adapters = loraSet(seed, [{ rank: 2, alpha: 4 }, { rank: 3, alpha: 3, rslora: true }, { rank: 1 }], D_IN, D_OUT, names);
    const weights = [0.7, -1.5, 2];
    const combined = await combineAdapters(adapters, { method: 'cat', weights, format });
    const want = weightedSum(adapters, weights);
    for (const name of names) {
      const m = combined.modules.get(name)!;
      t.is(m.rank, 6, what);
      t.is(m.scale, 1, what);
      t.true(relative(deltaOf(combined, name), want.get(name)!) < 1e-6, what);
    }
    const where = path.join(dir, format === 'peft' ? 'peft' : 'combined.safetensors');
    await saveAdapter(combined, where, { format });
    const back = await loadAdapter(where);
    t.is(back.format, format);
    t.deepEqual([...back.modules.keys()], [...names], `${what} ${format}`);
    for (const [name, m] of back.modules) t.true(relative(denseDelta(m.A, m.B, m.scale), want.get(name)!) < 1e-6, `${what} ${format} ${name}`);
  }
});

test('svd: the best rank-k approximation of the exact weighted sum, without forming d_out x d_in', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  const adapters = loraSet(seed, [{ rank: 3, alpha: 6 }, { rank: 4, alpha: 4 }, { rank: 2, alpha: 1, rslora: true }]);
  const weights = [1, 0.6, -2];
  const want = weightedSum(adapters, weights);
  for (const k of [undefined, 2, 9]) {
    const combined = await combineAdapters(adapters, { method: 'svd', weights, ...(k === undefined ? {} : { rank: k }) });
    const rank = k ?? 4; // PEFT's default: the largest input rank
    for (const name of NAMES) {
      const m = combined.modules.get(name)!;
      t.is(m.rank, rank, what);
      const exact = jacobiSvd(want.get(name)!).S;
      const got = jacobiSvd(deltaOf(combined, name)).S;
      for (let j = 0; j < rank; j++) t.true(Math.abs(got[j]! - exact[j]!) < 1e-5 * exact[0]!, `${what} k ${rank}: sigma ${j} ${got[j]} vs ${exact[j]}`);
      let tail = 0;
      for (let j = rank; j < exact.length; j++) tail += exact[j]! ** 2;
      const err = distance(deltaOf(combined, name), want.get(name)!);
      t.true(Math.abs(err - Math.sqrt(tail)) < 1e-5 * exact[0]!, `${what} k ${rank}: error ${err} vs ${Math.sqrt(tail)}`);
      // PEFT's convention: A = V^T has orthonormal rows.
      let worst = 0;
      for (let p = 0; p < rank; p++) {
        for (let q = 0; q < rank; q++) {
          let dot = 0;
          for (let j = 0; j < D_IN; j++) dot += m.A.data[p * D_IN + j]! * m.A.data[q * D_IN + j]!;
          worst = Math.max(worst, Math.abs(dot - (p === q ? 1 : 0)));
        }
      }
      t.true(worst < 1e-5, `${what}: A rows orthonormal (${worst})`);
    }
  }
  // Stacked rank above a side (wide adapters on a thin module): still exact at full rank.
  const thin = loraSet(seed + 5, [{ rank: 5 }, { rank: 5 }], 12, 6);
  const thinWant = weightedSum(thin, [1, -1]);
  const thinSvd = await combineAdapters(thin, { method: 'svd', weights: [1, -1], rank: 6 });
  for (const name of NAMES) t.true(relative(deltaOf(thinSvd, name), thinWant.get(name)!) < 1e-5, what);
});

test("PEFT linear: equal ranks, A and B summed with sqrt(w s) each (cross terms included)", async (t) => {
  const seed = freshSeed();
  const adapters = loraSet(seed, [{ rank: 3, alpha: 6 }, { rank: 3, alpha: 3 }]);
  const weights = [0.5, 2];
  const combined = await combineAdapters(adapters, { method: 'linear', weights });
  for (const name of NAMES) {
    const m = combined.modules.get(name)!;
    t.is(m.rank, 3);
    t.is(m.scale, 1);
    const c = adapters.map((a, i) => Math.sqrt(weights[i]! * a.modules.get(name)!.scale));
    for (const which of ['A', 'B'] as const) {
      const got = m[which].data;
      let worst = 0;
      for (let e = 0; e < got.length; e++) {
        const want = c[0]! * adapters[0]!.modules.get(name)![which].data[e]! + c[1]! * adapters[1]!.modules.get(name)![which].data[e]!;
        worst = Math.max(worst, Math.abs(got[e]! - want));
      }
      t.true(worst < 1e-5, `seed ${seed}: ${which} ${worst}`);
    }
  }
  const mixed = loraSet(seed, [{ rank: 3 }, { rank: 2 }]);
  await t.throwsAsync(combineAdapters(mixed, { method: 'linear', weights: [1, 1] }), { instanceOf: EigenLoraxError, code: 'ERR_SHAPE_MISMATCH', message: /equal ranks/ });
  await t.throwsAsync(combineAdapters(adapters, { method: 'linear', weights: [1, -1] }), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT', message: /sqrt/ });
});

// ---------------------------------------------------------------------------------------
// TIES, DARE, magnitude pruning

/** A one-module adapter whose update is exactly `dW` (d_out x d_in, d_out <= d_in): B = I, A = dW, scale 1. */
function exactAdapter(name: string, rows: number[][]): LoraAdapter {
  const dOut = rows.length;
  const dIn = rows[0]!.length;
  const B = matrix(dOut, dOut);
  for (let i = 0; i < dOut; i++) B.data[i * dOut + i] = 1;
  return memoryAdapter([{ name, A: matrix(dOut, dIn, Float32Array.from(rows.flat())), B }]);
}

function asRows(d: Mat64): number[][] {
  return Array.from({ length: d.rows }, (_, i) => Array.from(d.data.subarray(i * d.cols, (i + 1) * d.cols), (v) => Math.round(v * 1e4) / 1e4 + 0));
}

test('TIES, magnitude pruning and DARE by hand on a 2 x 3 module', async (t) => {
  const name = 'layer.proj';
  const adapters = [
    exactAdapter(name, [
      [4, -1, 2],
      [0, 3, -5],
    ]),
    exactAdapter(name, [
      [-2, 2, 1],
      [1, -4, -1],
    ]),
    exactAdapter(name, [
      [3, 1, -3],
      [-2, 1, 6],
    ]),
  ];
  const weights = [1, 2, 0.5];
  // density 0.5: keep 3 of 6 entries per adapter (ties: the first in row-major order):
  //   trim 1 = [4 0 0; 0 3 -5], trim 2 = [-2 2 0; 0 -4 0], trim 3 = [3 0 -3; 0 0 6].
  // Elected signs (sum of the trimmed): [+5 +2 -3; 0 -> + -1 +1] = [+ + -; + - +].
  // Disjoint mean of w_i trim_i over the agreeing adapters:
  //   (1*4 + 0.5*3)/2 = 2.75, 2*2 = 4, 0.5*-3 = -1.5; nothing = 0, 2*-4 = -8, 0.5*6 = 3.
  const ties = await combineAdapters(adapters, { method: 'ties', weights, density: 0.5, rank: 2 });
  t.deepEqual(asRows(deltaOf(ties, name)), [
    [2.75, 4, -1.5],
    [0, -8, 3],
  ]);
  // By sign counts: entry (1, 1) has +1 and -1: a tie, elected +, so only adapter 1 (3) merges there.
  const frequency = await combineAdapters(adapters, { method: 'ties_svd', weights, density: 0.5, rank: 2, majoritySignMethod: 'frequency' });
  t.deepEqual(asRows(deltaOf(frequency, name)), [
    [2.75, 4, -1.5],
    [0, 3, 3],
  ]);
  // Magnitude pruning: the weighted sum of the trimmed deltas.
  const pruned = await combineAdapters(adapters, { method: 'magnitude_prune', weights, density: 0.5, rank: 2 });
  t.deepEqual(asRows(deltaOf(pruned, name)), [
    [1.5, 4, -1.5],
    [0, -5, -2],
  ]);
  // density 1: no pruning; DARE is then the plain weighted sum, DARE-TIES the sign-elected mean.
  const dareAll = await combineAdapters(adapters, { method: 'dare_linear', weights, density: 1, rank: 2 });
  t.deepEqual(asRows(deltaOf(dareAll, name)), [
    [1.5, 3.5, 2.5],
    [1, -4.5, -4],
  ]);
  // Elected signs of the unpruned deltas: sums [5 2 0; -1 0 0] -> [+ + +; - + +]; agreeing means:
  //   (0,0) (4 + 0.5*3)/2 = 2.75   (0,1) (2*2 + 0.5*1)/2 = 2.25   (0,2) (2 + 2*1)/2 = 2
  //   (1,0) 0.5*-2 = -1            (1,1) (3 + 0.5*1)/2 = 1.75     (1,2) 0.5*6 = 3
  const dareTiesAll = await combineAdapters(adapters, { method: 'dare_ties', weights, density: 1, rank: 2 });
  t.deepEqual(asRows(deltaOf(dareTiesAll, name)), [
    [2.75, 2.25, 2],
    [-1, 1.75, 3],
  ]);
});

/** Plain f64 TIES (PEFT's ties on the full deltas): sort by magnitude, keep k, elect, disjoint mean. */
function referenceTies(deltas: Mat64[], weights: number[], density: number, frequency: boolean): Mat64 {
  const n = deltas[0]!.data.length;
  const k = Math.floor(density * n);
  const trimmed = deltas.map((d) => {
    const order = Array.from({ length: n }, (_, e) => e).sort((x, y) => Math.abs(d.data[y]!) - Math.abs(d.data[x]!) || x - y);
    const out = new Float64Array(n);
    for (const e of order.slice(0, k)) out[e] = d.data[e]!;
    return out;
  });
  const result = zeros(deltas[0]!.rows, deltas[0]!.cols);
  for (let e = 0; e < n; e++) {
    let elect = 0;
    for (const tr of trimmed) elect += frequency ? Math.sign(tr[e]!) : tr[e]!;
    const sign = elect >= 0 ? 1 : -1;
    let sum = 0;
    let count = 0;
    trimmed.forEach((tr, i) => {
      if (tr[e] !== 0 && Math.sign(tr[e]!) === sign) {
        sum += weights[i]! * tr[e]!;
        count++;
      }
    });
    result.data[e] = sum / Math.max(count, 1);
  }
  return result;
}

test('TIES on a 6 x 5 module with integer factors (many magnitude ties) against a plain f64 reference', async (t) => {
  const seed = freshSeed();
  const random = rng(seed);
  const int = () => Math.floor(random() * 7) - 3;
  const name = 'm';
  const adapters = [1, 2, 2, 3].map((r, i) => {
    const A = matrix(r, 5, Float32Array.from({ length: r * 5 }, int));
    const B = matrix(6, r, Float32Array.from({ length: 6 * r }, int));
    return memoryAdapter([{ name, A, B, alpha: i === 1 ? 2 * r : r }]);
  });
  const weights = [0.7, 1.3, -0.4, 1];
  const deltas = adapters.map((a) => deltaOf(a, name));
  for (const density of [0.2, 0.5, 0.9]) {
    for (const frequency of [false, true]) {
      const got = await combineAdapters(adapters, {
        method: 'ties',
        weights,
        density,
        rank: 5,
        ...(frequency ? { majoritySignMethod: 'frequency' as const } : {}),
      });
      const want = referenceTies(deltas, weights, density, frequency);
      const err = distance(deltaOf(got, name), want);
      t.true(err < 1e-5 * Math.max(1, frobenius(want)), `seed ${seed} density ${density} frequency ${frequency}: ${err}`);
    }
  }
});

test('DARE: seeded Bernoulli keep-or-drop with rescale; each kept entry is w dW / density', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  const name = 'm';
  const dW = normal(16, 20, seed);
  const adapter = exactAdapter(name, Array.from({ length: 16 }, (_, i) => Array.from(dW.data.subarray(i * 20, (i + 1) * 20))));
  const density = 0.3;
  const one = await combineAdapters([adapter], { method: 'dare_linear', weights: [2], density, rank: 16, seed: 5 });
  const got = deltaOf(one, name);
  // The result is refactored to rank 16 in float32, so each entry carries rounding of the
  // matrix's scale, not its own: every entry must be 0 or w dW / density to 1e-4 of the
  // largest entry (an entry near 0 passes either way, which is as it should be).
  const fulls = Array.from(dW.data, (x) => (2 * x) / density);
  const scale = Math.max(...fulls.map(Math.abs));
  let kept = 0;
  let worst = 0;
  for (let e = 0; e < got.data.length; e++) {
    const v = got.data[e]!;
    const full = fulls[e]!;
    const off = Math.min(Math.abs(v - full), Math.abs(v));
    if (Math.abs(v - full) < Math.abs(v)) kept++;
    worst = Math.max(worst, off / scale);
  }
  t.true(worst < 1e-4, `${what}: ${worst}`);
  // 320 Bernoulli(0.3) draws: mean 96, sd 8.2.
  t.true(kept > 96 - 45 && kept < 96 + 45, `${what}: kept ${kept}`);
  const again = await combineAdapters([adapter], { method: 'dare_linear', weights: [2], density, rank: 16, seed: 5 });
  t.deepEqual(Array.from(again.modules.get(name)!.A.data), Array.from(one.modules.get(name)!.A.data), 'same seed, same result');
  const other = await combineAdapters([adapter], { method: 'dare_linear_svd', weights: [2], density, rank: 16, seed: 6 });
  t.true(distance(deltaOf(other, name), got) > 0, 'another seed, another mask');
  // DARE-TIES of one adapter: the drop, then (one adapter agrees with itself) w times the kept entries.
  const ties = await combineAdapters([adapter], { method: 'dare_ties', weights: [2], density, rank: 16, seed: 5 });
  t.true(distance(deltaOf(ties, name), got) < 1e-4 * frobenius(got), what);
});

// ---------------------------------------------------------------------------------------
// Refusals

test('bad inputs are typed errors, raised before any work', async (t) => {
  const seed = freshSeed();
  const adapters = loraSet(seed, [{ rank: 2 }, { rank: 3 }]);
  const code = (c: string, message?: RegExp) => ({ instanceOf: EigenLoraxError, code: c, ...(message ? { message } : {}) });
  await t.throwsAsync(combineAdapters(adapters, { method: 'cat', weights: [1] }), code('ERR_INVALID_ARGUMENT', /2 weights/));
  await t.throwsAsync(combineAdapters(adapters, { method: 'cat', weights: [1, Number.NaN] }), code('ERR_INVALID_ARGUMENT', /weights\[1\]/));
  await t.throwsAsync(combineAdapters(adapters, { method: 'mean' as never, weights: [1, 1] }), code('ERR_INVALID_ARGUMENT', /method/));
  await t.throwsAsync(combineAdapters([], { method: 'cat', weights: [] }), code('ERR_INVALID_ARGUMENT'));
  // Modules: one adapter lacks a module.
  const partial = memoryAdapter([{ name: NAMES[0]!, A: normal(2, D_IN, 1), B: normal(D_OUT, 2, 2) }]);
  await t.throwsAsync(combineAdapters([adapters[0]!, partial], { method: 'cat', weights: [1, 1] }), code('ERR_INVALID_ARGUMENT', /same modules.*v_proj/));
  const union = await combineAdapters([adapters[0]!, partial], { method: 'cat', weights: [1, 1], modules: 'union' });
  t.is(union.modules.get(NAMES[0]!)!.rank, 4);
  t.is(union.modules.get(NAMES[1]!)!.rank, 2);
  // Shapes: another d_in for the same module.
  const wider = loraSet(seed, [{ rank: 2 }], D_IN + 1);
  await t.throwsAsync(combineAdapters([adapters[0]!, wider[0]!], { method: 'svd', weights: [1, 1] }), code('ERR_SHAPE_MISMATCH', /q_proj/));
  // Rank too large.
  await t.throwsAsync(combineAdapters(adapters, { method: 'svd', weights: [1, 1], rank: 6 }), code('ERR_INVALID_ARGUMENT', /sum of ranks/));
  await t.throwsAsync(combineAdapters(adapters, { method: 'ties', weights: [1, 1], density: 0.5, rank: 17 }), code('ERR_INVALID_ARGUMENT', /min\(d_in, d_out\)/));
  // Density.
  await t.throwsAsync(combineAdapters(adapters, { method: 'ties', weights: [1, 1] }), code('ERR_INVALID_ARGUMENT', /density/));
  await t.throwsAsync(combineAdapters(adapters, { method: 'dare_linear', weights: [1, 1], density: 0 }), code('ERR_INVALID_ARGUMENT', /density/));
  await t.throwsAsync(combineAdapters(adapters, { method: 'svd', weights: [1, 1], density: 0.5 }), code('ERR_INVALID_ARGUMENT', /density/));
  // The dense limit.
  await t.throwsAsync(
    combineAdapters(adapters, { method: 'ties', weights: [1, 1], density: 0.5, maxDenseElements: 100 }),
    code('ERR_INVALID_ARGUMENT', /maxDenseElements/),
  );
  // Coefficients: without their subspace, of another subspace, rank above K, a mix with linear.
  const planted = plantedAdapters(seed, 3, 2, 3, [2]);
  const s1 = await buildSubspace(planted, { components: 3, seed: 1, hashSources: false });
  const s2 = await buildSubspace(planted, { components: 2, seed: 1, hashSources: false });
  await t.throwsAsync(combineAdapters(s1.coefficients, { method: 'linear', weights: [1, 1, 1] }), code('ERR_INVALID_ARGUMENT', /subspace/));
  await t.throwsAsync(combineAdapters(s1.coefficients, { method: 'linear', weights: [1, 1, 1], subspace: s2 }), code('ERR_SUBSPACE_MISMATCH'));
  await t.throwsAsync(combineAdapters(s1.coefficients, { method: 'linear', weights: [1, 1, 1], subspace: s1, rank: 4 }), code('ERR_INVALID_ARGUMENT', /K_A, K_B/));
  await t.throwsAsync(
    combineAdapters([s1.coefficients[0]!, planted[1]!], { method: 'linear', weights: [1, 1], subspace: s1 }),
    code('ERR_INVALID_ARGUMENT', /every input/),
  );
  await t.throwsAsync(combineCoefficients(s1 as Subspace, s1.coefficients, { weights: [1, 1] }), code('ERR_INVALID_ARGUMENT', /3 weights/));
  // A mix works with cat (the coefficients reconstructed).
  const mix = await combineAdapters([s1.coefficients[0]!, planted[1]!], { method: 'cat', weights: [1, 1], subspace: s1 });
  t.is(mix.modules.size, NAMES.length);
});

test('combined adapters carry the format asked and the common base model; inputs are not modified', async (t) => {
  const seed = freshSeed();
  const adapters = loraSet(seed, [{ rank: 2 }, { rank: 2 }]);
  const before = adapters.map((a) => [...a.modules.values()].map((m) => Float32Array.from(m.A.data)));
  const out = await combineAdapters(adapters, { method: 'ties', weights: [1, 1], density: 0.7, format: 'kohya' });
  t.is(out.format, 'kohya');
  t.is(out.baseModel, 'tiny-base');
  t.is(out.extras.size, 0);
  adapters.forEach((a, i) => [...a.modules.values()].forEach((m, j) => t.deepEqual(Array.from(m.A.data), Array.from(before[i]![j]!))));
  t.is(out.modules.get(NAMES[0]!)!.rank, 2);
});
