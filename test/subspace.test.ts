/**
 * EigenLoRAx subspaces on synthetic adapters drawn from planted subspaces (fresh seeds per
 * run; the seed is in every message): recovery of the planted components, errors against
 * float64 dense references (dW formed explicitly), the gauge freedom, centring, the
 * variance threshold, augmentation, mixed ranks / alphas / formats, partial modules,
 * projection, reconstruction and export, save/load and its validation, savings and
 * leave-one-out.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  EigenLoraxError,
  buildSubspace,
  exportAdapter,
  explainedVarianceCurve,
  leaveOneOut,
  loadAdapter,
  loadCoefficients,
  loadSubspace,
  meanRelativeError,
  openAdapter,
  openSafetensors,
  projectAdapter,
  reconstructAdapter,
  saveAdapter,
  saveCoefficients,
  saveSubspace,
  subspaceKeys,
  subspaceSavings,
  writeSafetensors,
  type AdapterCoefficients,
  type BuildSubspaceOptions,
  type LoraAdapter,
  type Subspace,
} from '../lib/index.js';
import { tempDir } from './helpers/safetensors-fixtures.js';
import { freshSeed } from './helpers/random.js';
import * as ref from './helpers/reference.js';
import {
  denseDelta,
  distance,
  frobenius,
  invertible,
  memoryAdapter,
  normal,
  orthonormalityDefect,
  plantedBases,
  plantedFactors,
  regauge,
  type ModuleSpec,
  type Planted,
} from './helpers/subspace-fixtures.js';

const code = (c: string) => ({ instanceOf: EigenLoraxError, code: c }) as const;
const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

const D_IN = 48;
const D_OUT = 40;
const K = 5;

/** N adapters, each with the given modules drawn from one planted subspace per module. */
function plantedSet(
  seed: number,
  count: number,
  options: { modules?: string[]; rank?: (i: number) => number; alpha?: (i: number) => number; noise?: number; planted?: Map<string, Planted> } = {},
): { adapters: LoraAdapter[]; planted: Map<string, Planted> } {
  const modules = options.modules ?? ['layers.0.q_proj', 'layers.0.v_proj'];
  const planted = options.planted ?? new Map(modules.map((m, j) => [m, plantedBases(D_IN, D_OUT, K, K, seed + 101 * j)]));
  const adapters = Array.from({ length: count }, (_, i) => {
    const rank = options.rank?.(i) ?? 4;
    const specs: ModuleSpec[] = modules.map((name, j) => ({
      name,
      ...plantedFactors(planted.get(name)!, rank, seed * 31 + i * 1009 + j, options.noise ?? 0.01),
      alpha: options.alpha?.(i) ?? rank,
    }));
    return memoryAdapter(specs);
  });
  return { adapters, planted };
}

/** For each module of `coefficients`: ||dW - dW_hat||_F and ||dW||_F by f64 dense products. */
async function denseErrors(subspace: Subspace, coefficients: AdapterCoefficients, original: LoraAdapter) {
  const rebuilt = await reconstructAdapter(subspace, coefficients);
  const out = new Map<string, { error: number; norm: number; dw: ref.Mat64; dwHat: ref.Mat64 }>();
  for (const name of coefficients.modules.keys()) {
    const o = original.modules.get(name)!;
    const r = rebuilt.modules.get(name)!;
    const dw = denseDelta(o.A, o.B, o.scale);
    const dwHat = denseDelta(r.A, r.B, r.scale);
    out.set(name, { error: distance(dw, dwHat), norm: frobenius(dw), dw, dwHat });
  }
  return out;
}

function meanError(subspace: Subspace): number {
  return meanRelativeError(subspace.coefficients);
}

// ---- recovery, errors, held-out ----------------------------------------------------------

for (const stacking of ['canonical', 'raw'] as const) {
  test(`planted subspace (${stacking}): components recovered, in-sample error near the noise, held-out in-subspace adapter reconstructs, outside one does not`, async (t) => {
    const seed = freshSeed();
    const what = `seed ${seed}`;
    const noise = 0.01;
    const { adapters, planted } = plantedSet(seed, 7, { noise });
    const subspace = await buildSubspace(adapters, { stacking, components: K, seed: seed % 1000 });
    t.is(subspace.modules.size, 2);
    for (const [name, m] of subspace.modules) {
      const p = planted.get(name)!;
      t.deepEqual([m.kA, m.kB, m.augmentA, m.augmentB], [K, K, 0, 0], what);
      t.true(orthonormalityDefect(m.componentsA) < 1e-5, `${what}: V_A orthonormal`);
      t.true(orthonormalityDefect(m.componentsB) < 1e-5, `${what}: U_B orthonormal`);
      const cosA = ref.principalCosines(p.V, m.componentsA);
      const cosB = ref.principalCosines(p.U, m.componentsB);
      t.true(cosA[K - 1]! > 0.99, `${what}, ${name}: A side principal cosines ${Array.from(cosA).map((c) => c.toFixed(4))}`);
      t.true(cosB[K - 1]! > 0.99, `${what}, ${name}: B side principal cosines ${Array.from(cosB).map((c) => c.toFixed(4))}`);
      t.true(m.explainedA > 0.99 && m.explainedB > 0.99, `${what}: explained ${m.explainedA}, ${m.explainedB}`);
      t.is(m.singularA.length, K);
      for (let i = 1; i < K; i++) t.true(m.singularA[i]! <= m.singularA[i - 1]!, `${what}: singular values descending`);
    }
    // In-sample: the error is the noise (relative 0.01 per factor, so ~0.014 for dW) or less.
    const inSample = meanError(subspace);
    t.true(inSample < 3 * noise, `${what}: in-sample mean relative error ${inSample}`);
    t.true(inSample > 0.1 * noise, `${what}: in-sample error ${inSample} is implausibly small for noise ${noise}`);
    t.is(subspace.report!.inSampleError, inSample);
    t.is(subspace.coefficients.length, 7);
    for (const c of subspace.coefficients) {
      t.is(c.subspaceId, subspace.id);
      t.true(c.relativeError < 3 * noise, `${what}: adapter ${c.adapter.name} relative error ${c.relativeError}`);
    }

    // Held out, same planted subspaces: reconstructs well. Outside: does not.
    const [inside] = plantedSet(seed + 5, 1, { noise, planted }).adapters;
    const good = await projectAdapter(subspace, inside!);
    t.true(good.relativeError < 3 * noise, `${what}: held-out in-subspace relative error ${good.relativeError}`);
    const outside = memoryAdapter([...planted.keys()].map((name, j) => ({ name, A: normal(4, D_IN, seed + 77 + j), B: normal(D_OUT, 4, seed + 99 + j) })));
    const bad = await projectAdapter(subspace, outside);
    t.true(bad.relativeError > 0.8, `${what}: an adapter from outside reconstructs with relative error ${bad.relativeError}`);
  });
}

test('errors and norms match a float64 dense reference (dW formed explicitly), with and without centring, both stackings, mixed ranks and alphas', async (t) => {
  const seed = freshSeed();
  for (const stacking of ['canonical', 'raw'] as const) {
    for (const center of [false, true]) {
      const what = `seed ${seed}, ${stacking}, center ${center}`;
      const { adapters } = plantedSet(seed, 4, { rank: (i) => 2 + i, alpha: (i) => [1, 8, 3, 16][i]!, noise: 0.2 });
      // One adapter with rsLoRA.
      const rs = adapters[3]!.modules.get('layers.0.q_proj')!;
      rs.rslora = true;
      rs.scale = rs.alpha / Math.sqrt(rs.rank);
      const subspace = await buildSubspace(adapters, { stacking, center, components: 3, seed: 3 });
      let worst = 0;
      for (let i = 0; i < adapters.length; i++) {
        const c = subspace.coefficients[i]!;
        const dense = await denseErrors(subspace, c, adapters[i]!);
        let n2 = 0;
        let e2 = 0;
        for (const [name, m] of c.modules) {
          const d = dense.get(name)!;
          t.is(m.rank, 2 + i);
          t.deepEqual([m.alpha.rows, m.alpha.cols, m.beta.rows, m.beta.cols], [3, 2 + i, 3, 2 + i], what);
          t.true(Math.abs(m.norm - d.norm) <= 1e-5 * d.norm, `${what}: norm ${m.norm} vs dense ${d.norm}`);
          worst = Math.max(worst, Math.abs(m.error - d.error) / d.norm);
          t.true(Math.abs(m.relativeError - m.error / m.norm) < 1e-15);
          t.is(m.scale, stacking === 'canonical' ? 1 : adapters[i]!.modules.get(name)!.scale);
          n2 += d.norm ** 2;
          e2 += d.error ** 2;
        }
        t.true(Math.abs(c.relativeError - Math.sqrt(e2 / n2)) < 1e-4, `${what}: whole-adapter error ${c.relativeError} vs ${Math.sqrt(e2 / n2)}`);
      }
      t.true(worst < 1e-4, `${what}: |error - dense error| / ||dW|| up to ${worst}`);
      t.true(meanError(subspace) > 0.05, `${what}: K = 3 < 5 planted leaves an error (${meanError(subspace)})`);
      if (center) {
        for (const m of subspace.modules.values()) {
          t.true(m.meanA instanceof Float32Array && m.meanA.length === D_IN, `${what}: meanA stored`);
          t.true(m.meanB instanceof Float32Array && m.meanB.length === D_OUT, `${what}: meanB stored`);
          t.true(ref.maxAbs(m.meanA!) > 0, `${what}: meanA is not zero`);
        }
      } else {
        for (const m of subspace.modules.values()) t.true(m.meanA === null && m.meanB === null);
      }
    }
  }
});

test('centring: the reconstruction adds the stored means back (A = alpha^T V_A^T + meanA, B = U_B beta + meanB)', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  // Adapters that share a large common offset in every A row and B column.
  const { adapters } = plantedSet(seed, 5, { noise: 0.05 });
  const offsetA = normal(1, D_IN, seed + 1, 0.5);
  const offsetB = normal(D_OUT, 1, seed + 2, 0.5);
  for (const a of adapters) {
    for (const m of a.modules.values()) {
      for (let i = 0; i < m.A.rows; i++) for (let j = 0; j < D_IN; j++) m.A.data[i * D_IN + j]! += offsetA.data[j]!;
      for (let i = 0; i < D_OUT; i++) for (let j = 0; j < m.B.cols; j++) m.B.data[i * m.B.cols + j]! += offsetB.data[i]!;
    }
  }
  const centred = await buildSubspace(adapters, { stacking: 'raw', center: true, components: K, seed: 1 });
  const plain = await buildSubspace(adapters, { stacking: 'raw', components: K, seed: 1 });
  t.true(meanError(centred) < meanError(plain), `${what}: centred ${meanError(centred)} vs plain ${meanError(plain)} with a common offset`);
  const m = centred.modules.get('layers.0.q_proj')!;
  // Raw stacking: the A-side mean is the mean row of the stacked A's.
  const expectedMean = new Float64Array(D_IN);
  let rows = 0;
  for (const a of adapters) {
    const f = a.modules.get('layers.0.q_proj')!;
    for (let i = 0; i < f.A.rows; i++, rows++) for (let j = 0; j < D_IN; j++) expectedMean[j]! += f.A.data[i * D_IN + j]!;
  }
  for (let j = 0; j < D_IN; j++) expectedMean[j]! /= rows;
  t.true(ref.relativeError({ rows: 1, cols: D_IN, data: m.meanA! }, { rows: 1, cols: D_IN, data: expectedMean }) < 1e-5, `${what}: meanA is the row mean`);
  const c = centred.coefficients[0]!.modules.get('layers.0.q_proj')!;
  const rebuilt = (await reconstructAdapter(centred, centred.coefficients[0]!)).modules.get('layers.0.q_proj')!;
  const aRef = ref.matmul(ref.transpose(c.alpha), ref.transpose(m.componentsA));
  for (let i = 0; i < aRef.rows; i++) for (let j = 0; j < D_IN; j++) aRef.data[i * D_IN + j]! += m.meanA![j]!;
  const bRef = ref.matmul(m.componentsB, c.beta);
  for (let i = 0; i < D_OUT; i++) for (let j = 0; j < bRef.cols; j++) bRef.data[i * bRef.cols + j]! += m.meanB![i]!;
  t.true(ref.relativeError(rebuilt.A, aRef) < 1e-5, `${what}: A rebuilt with meanA`);
  t.true(ref.relativeError(rebuilt.B, bRef) < 1e-5, `${what}: B rebuilt with meanB`);
});

// ---- gauge ---------------------------------------------------------------------------------

test('gauge: the same dW split as (B G, G^-1 A) gives the same reconstruction and error in canonical mode, not in raw mode', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  const { adapters } = plantedSet(seed, 6, { modules: ['m'], noise: 0.3, alpha: (i) => [2, 4, 8, 16, 1, 3][i]! });
  // G's singular values run from SPREAD to 1/SPREAD: rounding B G and G^-1 A to f32 moves dW by up to
  // about eps32 cond(G) = 2^-24 SPREAD^2 of its norm (1.09e-5 seen at seed 1270062282); the bound allows 4x that.
  const SPREAD = 20;
  const ROUNDING = 2 ** -22 * SPREAD ** 2;
  const regauged = adapters.map((a, i) => {
    const m = a.modules.get('m')!;
    const { A, B } = regauge(m.A, m.B, invertible(4, seed + 13 * i, SPREAD));
    return memoryAdapter([{ name: 'm', A, B, alpha: m.alpha }]);
  });
  for (const [a, b] of adapters.map((a, i) => [a, regauged[i]!] as const)) {
    const x = a.modules.get('m')!;
    const y = b.modules.get('m')!;
    const drift = ref.relativeError(denseDelta(y.A, y.B, y.scale), denseDelta(x.A, x.B, x.scale));
    t.true(drift < ROUNDING, `${what}: same dW up to f32 rounding (${drift})`);
  }
  const results: Record<string, number> = {};
  for (const options of [{ stacking: 'canonical', weighting: 'equal' }, { stacking: 'canonical', weighting: 'scale' }, { stacking: 'raw' }] as BuildSubspaceOptions[]) {
    const label = `${options.stacking}${options.weighting ? `+${options.weighting}` : ''}`;
    const one = await buildSubspace(adapters, { ...options, components: 3 });
    const two = await buildSubspace(regauged, { ...options, components: 3 });
    let worstHat = 0;
    let worstError = 0;
    for (let i = 0; i < adapters.length; i++) {
      const d1 = (await denseErrors(one, one.coefficients[i]!, adapters[i]!)).get('m')!;
      const d2 = (await denseErrors(two, two.coefficients[i]!, regauged[i]!)).get('m')!;
      worstHat = Math.max(worstHat, distance(d1.dwHat, d2.dwHat) / d1.norm);
      const e1 = one.coefficients[i]!.modules.get('m')!.relativeError;
      const e2 = two.coefficients[i]!.modules.get('m')!.relativeError;
      worstError = Math.max(worstError, Math.abs(e1 - e2));
    }
    results[label] = worstHat;
    if (options.stacking === 'canonical') {
      t.true(worstHat < 1e-4, `${what}, ${label}: dW_hat differs by ${worstHat} of ||dW|| between the two gauges`);
      t.true(worstError < 1e-4, `${what}, ${label}: relative errors differ by ${worstError}`);
    } else {
      t.true(worstHat > 1e-2, `${what}, raw: dW_hat differs by only ${worstHat} between gauges (raw stacking should depend on the gauge)`);
    }
  }
  t.log(`${what}: max ||dW_hat(gauge 1) - dW_hat(gauge 2)|| / ||dW||: ${JSON.stringify(results)}`);
});

// ---- choosing K, augmentation ---------------------------------------------------------------

test('variance threshold: the smallest K whose explained variance reaches it, per module and side; capped and reported', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  // q_proj: planted K = 5 with little noise; v_proj: 3 planted directions on A, 5 on B.
  const planted = new Map<string, Planted>([
    ['q_proj', plantedBases(D_IN, D_OUT, 5, 5, seed)],
    ['v_proj', plantedBases(D_IN, D_OUT, 3, 5, seed + 1)],
  ]);
  const { adapters } = plantedSet(seed, 6, { modules: ['q_proj', 'v_proj'], planted, noise: 0.001 });
  const s = await buildSubspace(adapters, { variance: 0.999, seed: 2 });
  t.deepEqual([s.modules.get('q_proj')!.kA, s.modules.get('q_proj')!.kB], [5, 5], `${what}: q_proj K`);
  t.deepEqual([s.modules.get('v_proj')!.kA, s.modules.get('v_proj')!.kB], [3, 5], `${what}: v_proj K`);
  t.deepEqual(s.settings.components, null);
  t.deepEqual(s.settings.maxComponents, { A: 64, B: 64 });
  // Against the definition, from a build with all components: sum_{k<K} s_k^2 / energy.
  const full = await buildSubspace(adapters, { components: 24, seed: 2 });
  for (const threshold of [0.5, 0.8, 0.95]) {
    const v = await buildSubspace(adapters, { variance: threshold, seed: 2 });
    for (const [name, m] of v.modules) {
      const f = full.modules.get(name)!;
      for (const side of ['A', 'B'] as const) {
        const singular = side === 'A' ? f.singularA : f.singularB;
        const energy = side === 'A' ? f.energyA : f.energyB;
        let sum = 0;
        let expected = 0;
        for (let k = 0; k < singular.length; k++) {
          sum += singular[k]! ** 2;
          if (sum >= threshold * energy) {
            expected = k + 1;
            break;
          }
        }
        const got = side === 'A' ? m.kA : m.kB;
        const explained = side === 'A' ? m.explainedA : m.explainedB;
        t.is(got, expected, `${what}: ${name} side ${side} at ${threshold}`);
        t.true(explained >= threshold * (1 - 1e-9), `${what}: explained ${explained} >= ${threshold}`);
      }
    }
  }
  const curve = explainedVarianceCurve(full.modules.get('v_proj')!);
  t.is(curve.A.length, 24);
  t.true(curve.A[2]! > 0.999 && curve.A[1]! < 0.999, `${what}: v_proj A-side curve ${curve.A.slice(0, 4)}`);
  for (let k = 1; k < curve.B.length; k++) t.true(curve.B[k]! >= curve.B[k - 1]!);
  t.is(curve.A[23], full.modules.get('v_proj')!.explainedA);
  const capped = await buildSubspace(adapters, { variance: 0.999, maxComponents: 2 });
  t.is(capped.modules.get('q_proj')!.kA, 2);
  t.true(capped.report!.belowThreshold.some((b) => b.module === 'q_proj' && b.side === 'A' && b.components === 2 && b.explained < 0.999));
});

test('augmentation: P orthonormal directions orthogonal to the components, appended after them; clamped where d - K < P', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  const { adapters } = plantedSet(seed, 4, { noise: 0.05 });
  const plain = await buildSubspace(adapters, { components: 3, seed: 9 });
  const s = await buildSubspace(adapters, { components: 3, augment: { A: 4, B: 2 }, seed: 9 });
  for (const [name, m] of s.modules) {
    const p = plain.modules.get(name)!;
    t.deepEqual([m.kA, m.kB, m.augmentA, m.augmentB, m.singularA.length, m.singularB.length], [7, 5, 4, 2, 3, 3], what);
    t.true(orthonormalityDefect(m.componentsA) < 1e-5, `${what}: [V_A, augmentation] orthonormal (${orthonormalityDefect(m.componentsA)})`);
    t.true(orthonormalityDefect(m.componentsB) < 1e-5, `${what}: [U_B, augmentation] orthonormal`);
    // The first K columns are the unaugmented components, bit for bit.
    for (let i = 0; i < D_IN; i++) {
      t.true(bytes(m.componentsA.data.subarray(i * 7, i * 7 + 3)).equals(bytes(p.componentsA.data.subarray(i * 3, i * 3 + 3))), `${what}: row ${i}`);
    }
    t.is(m.explainedA, p.explainedA);
  }
  // Loadings on the extra directions: in-sample errors can only go down.
  t.true(meanError(s) <= meanError(plain) + 1e-6, `${what}: ${meanError(s)} vs ${meanError(plain)}`);
  t.deepEqual(s.coefficients[0]!.modules.get('layers.0.q_proj')!.alpha.rows, 7);
  // Room for only d - K directions.
  const tight = await buildSubspace([memoryAdapter([{ name: 'm', A: normal(3, 6, seed), B: normal(5, 3, seed + 1) }])], { components: 2, augment: 10 });
  const m = tight.modules.get('m')!;
  t.deepEqual([m.kA, m.augmentA, m.kB, m.augmentB], [6, 4, 5, 3]);
  t.deepEqual(tight.report!.augmentClamped, [
    { module: 'm', side: 'A', requested: 10, used: 4 },
    { module: 'm', side: 'B', requested: 10, used: 3 },
  ]);
  t.true(orthonormalityDefect(m.componentsA) < 1e-5);
});

test('K larger than the stack allows is clamped and reported', async (t) => {
  const seed = freshSeed();
  const adapters = [0, 1].map((i) => memoryAdapter([{ name: 'm', A: normal(2, 30, seed + i), B: normal(20, 2, seed + 10 + i) }]));
  const s = await buildSubspace(adapters, { components: 16 });
  t.deepEqual([s.modules.get('m')!.kA, s.modules.get('m')!.kB], [4, 4]);
  t.deepEqual(s.report!.clamped, [
    { module: 'm', side: 'A', requested: 16, used: 4 },
    { module: 'm', side: 'B', requested: 16, used: 4 },
  ]);
  // K = total rank: every adapter is reconstructed exactly.
  t.true(meanError(s) < 1e-5, `seed ${seed}: ${meanError(s)}`);
});

// ---- inputs: formats, partial modules, shapes ---------------------------------------------------

test('mixed formats (PEFT folder, diffusers file, kohya file, opened, in memory), ranks and alphas; sources with sha256', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  const dir = await tempDir(t);
  const names = ['unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q', 'unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k'];
  const planted = new Map(names.map((n, j) => [n, plantedBases(D_IN, D_OUT, K, K, seed + j)]));
  const { adapters } = plantedSet(seed, 5, { modules: names, planted, rank: (i) => [2, 4, 6, 4, 3][i]!, alpha: (i) => [2, 1, 12, 4, 6][i]!, noise: 0.05 });
  const peftDir = path.join(dir, 'peft-one');
  await saveAdapter(adapters[0]!, peftDir, { format: 'peft' });
  const diffusersFile = path.join(dir, 'two.safetensors');
  await saveAdapter({ ...adapters[1]!, format: 'diffusers' }, diffusersFile, { format: 'diffusers' });
  const kohyaFile = path.join(dir, 'three.safetensors');
  await saveAdapter({ ...adapters[2]!, format: 'kohya' }, kohyaFile, { format: 'kohya' });
  const opened = await openAdapter(peftDir); // a second handle on adapter 0's files
  t.teardown(() => opened.close());
  const inputs = [peftDir, diffusersFile, kohyaFile, adapters[3]!, opened, adapters[4]!];
  const s = await buildSubspace(inputs, { components: K, seed: 4 });
  t.deepEqual(
    s.sources.map((x) => [x.name, x.format]),
    [
      ['peft-one', 'peft'],
      ['two', 'diffusers'],
      ['three', 'kohya'],
      ['adapter-3', 'peft'],
      ['peft-one#2', 'peft'],
      ['adapter-5', 'peft'],
    ],
  );
  for (const source of s.sources.slice(0, 3)) {
    t.true(source.files.length >= 1);
    for (const f of source.files) {
      const expected = createHash('sha256').update(await readFile(f.path)).digest('hex');
      t.is(f.sha256, expected, `${what}: sha256 of ${f.path}`);
      t.is(f.bytes, (await readFile(f.path)).byteLength);
    }
  }
  t.deepEqual(s.sources[3]!.files, []);
  t.deepEqual([...s.modules.keys()], [...names].sort());
  t.deepEqual(s.modules.get(names[0]!)!.ranks, [2, 4, 6, 4, 2, 3]);
  const originals = [adapters[0]!, adapters[1]!, adapters[2]!, adapters[3]!, adapters[0]!, adapters[4]!];
  for (let i = 0; i < inputs.length; i++) {
    const c = s.coefficients[i]!;
    const dense = await denseErrors(s, c, originals[i]!);
    for (const [name, m] of c.modules) {
      const d = dense.get(name)!;
      t.true(Math.abs(m.error - d.error) <= 1e-4 * d.norm, `${what}: adapter ${i} ${name}: ${m.error} vs ${d.error}`);
      t.is(m.adapterAlpha, originals[i]!.modules.get(name)!.alpha);
    }
    t.true(c.relativeError < 0.2, `${what}: adapter ${i} relative error ${c.relativeError}`);
  }
  // Export the kohya adapter's reconstruction as kohya: canonical, so alpha = rank (scale 1).
  const rebuilt = await reconstructAdapter(s, s.coefficients[2]!);
  t.is(rebuilt.format, 'kohya');
  const kohyaOut = path.join(dir, 'rebuilt-kohya.safetensors');
  await exportAdapter(s, s.coefficients[2]!, kohyaOut);
  const back = await loadAdapter(kohyaOut);
  t.deepEqual([...back.modules.keys()].sort(), [...names].sort());
  for (const [name, m] of back.modules) {
    t.deepEqual([m.rank, m.alpha, m.scale], [6, 6, 1]);
    t.true(bytes(m.A.data).equals(bytes(rebuilt.modules.get(name)!.A.data)));
    t.true(bytes(m.B.data).equals(bytes(rebuilt.modules.get(name)!.B.data)));
  }
  // The same adapter read from a path and from an opened handle: identical coefficients.
  for (const name of names) {
    t.true(bytes(s.coefficients[0]!.modules.get(name)!.alpha.data).equals(bytes(s.coefficients[4]!.modules.get(name)!.alpha.data)));
  }
});

test('a module present in only some adapters is built from those, reported, and left out of the others coefficients', async (t) => {
  const seed = freshSeed();
  const { adapters } = plantedSet(seed, 4, { modules: ['a', 'b'] });
  const extra = plantedSet(seed + 1, 2, { modules: ['only'] }).adapters;
  for (const i of [1, 3]) adapters[i]!.modules.set('only', extra[i === 1 ? 0 : 1]!.modules.get('only')!);
  const progress: string[] = [];
  const s = await buildSubspace(adapters, { components: 3, names: ['w', 'x', 'y', 'z'], onProgress: (p) => progress.push(`${p.done}/${p.total}`) });
  t.deepEqual([...s.modules.keys()], ['a', 'b', 'only']);
  t.deepEqual(progress.sort(), ['1/3', '2/3', '3/3']);
  t.deepEqual(s.modules.get('only')!.adapters, ['x', 'z']);
  t.deepEqual(s.modules.get('a')!.adapters, ['w', 'x', 'y', 'z']);
  t.deepEqual(s.report!.partialModules, [{ module: 'only', adapters: ['x', 'z'], missing: ['w', 'y'] }]);
  t.deepEqual([...s.coefficients[0]!.modules.keys()], ['a', 'b']);
  t.deepEqual([...s.coefficients[1]!.modules.keys()], ['a', 'b', 'only']);
  // The modules filter.
  const filtered = await buildSubspace(adapters, { components: 3, modules: ['b'] });
  t.deepEqual([...filtered.modules.keys()], ['b']);
  t.deepEqual(filtered.coefficients[1]!.skipped, ['a', 'only']);
  await t.throwsAsync(buildSubspace(adapters, { modules: ['nope'] }), { ...code('ERR_INVALID_ARGUMENT'), message: /"nope"/ });
});

test('modules must have one shape across the adapters: ERR_SHAPE_MISMATCH naming the module and the adapters', async (t) => {
  const seed = freshSeed();
  const one = memoryAdapter([{ name: 'm', A: normal(2, 10, seed), B: normal(8, 2, seed + 1) }]);
  const two = memoryAdapter([{ name: 'm', A: normal(2, 12, seed), B: normal(8, 2, seed + 1) }]);
  await t.throwsAsync(buildSubspace([one, two], { names: ['first', 'second'] }), {
    ...code('ERR_SHAPE_MISMATCH'),
    message: /module "m".*10 -> 8 linear in first; 12 -> 8 linear in second/,
  });
  const fanned = memoryAdapter([{ name: 'm', A: normal(2, 10, seed), B: normal(8, 2, seed + 1), fanInFanOut: true }]);
  await t.throwsAsync(buildSubspace([one, fanned]), { ...code('ERR_SHAPE_MISMATCH'), message: /fan_in_fan_out/ });
});

test('non-finite factors are refused naming the module and the adapter', async (t) => {
  const good = memoryAdapter([{ name: 'm', A: normal(2, 10, 1), B: normal(8, 2, 2) }]);
  const bad = memoryAdapter([{ name: 'm', A: normal(2, 10, 3), B: normal(8, 2, 4) }]);
  bad.modules.get('m')!.B.data[5] = NaN;
  await t.throwsAsync(buildSubspace([good, bad], { names: ['good', 'bad'], components: 2 }), {
    ...code('ERR_NON_FINITE'),
    message: /module "m": .*adapter "bad": factors contain NaN/,
  });
});

test('options are checked: weighting with raw stacking, components with variance, unknown options, bad values', async (t) => {
  const a = memoryAdapter([{ name: 'm', A: normal(2, 10, 1), B: normal(8, 2, 2) }]);
  const bad = code('ERR_INVALID_ARGUMENT');
  await t.throwsAsync(buildSubspace([a], { stacking: 'raw', weighting: 'equal' }), { ...bad, message: /options\.weighting/ });
  await t.throwsAsync(buildSubspace([a], { components: 2, variance: 0.9 }), { ...bad, message: /options\.variance/ });
  await t.throwsAsync(buildSubspace([a], { variance: 1.5 }), bad);
  await t.throwsAsync(buildSubspace([a], { components: 0 }), bad);
  await t.throwsAsync(buildSubspace([a], { maxComponents: 3 }), bad);
  await t.throwsAsync(buildSubspace([a], { stacking: 'flat' as never }), bad);
  await t.throwsAsync(buildSubspace([a], { colour: 1 } as never), { ...bad, message: /options\.colour/ });
  await t.throwsAsync(buildSubspace([]), bad);
  await t.throwsAsync(buildSubspace([42 as never]), bad);
  const s = await buildSubspace([a], { stacking: 'raw', components: 1 });
  t.is(s.settings.weighting, null);
  t.deepEqual(s.settings.components, { A: 1, B: 1 });
});

test('seeded: the same inputs and seed give bit-identical subspaces (and ids); the module seed does not depend on the other modules', async (t) => {
  const seed = freshSeed();
  const { adapters } = plantedSet(seed, 5, { noise: 0.5 });
  const one = await buildSubspace(adapters, { components: 4, augment: 2, seed: 17 });
  const two = await buildSubspace(adapters, { components: 4, augment: 2, seed: 17 });
  t.is(one.id, two.id);
  const only = await buildSubspace(adapters, { components: 4, augment: 2, seed: 17, modules: ['layers.0.v_proj'] });
  const a = one.modules.get('layers.0.v_proj')!;
  const b = only.modules.get('layers.0.v_proj')!;
  t.true(bytes(a.componentsA.data).equals(bytes(b.componentsA.data)));
  t.true(bytes(a.componentsB.data).equals(bytes(b.componentsB.data)));
});

// ---- project, reconstruct, export -------------------------------------------------------------

test('projectAdapter: modules the subspace lacks are an error unless skipped; shapes must match; whole-adapter error', async (t) => {
  const seed = freshSeed();
  const { adapters, planted } = plantedSet(seed, 4);
  const s = await buildSubspace(adapters, { components: K });
  const [newcomer] = plantedSet(seed + 3, 1, { planted }).adapters;
  newcomer!.modules.set('lm_head', memoryAdapter([{ name: 'lm_head', A: normal(2, 8, seed), B: normal(8, 2, seed) }]).modules.get('lm_head')!);
  await t.throwsAsync(projectAdapter(s, newcomer!), { ...code('ERR_SUBSPACE_MISMATCH'), message: /"lm_head"/ });
  const c = await projectAdapter(s, newcomer!, { missing: 'skip', name: 'newcomer' });
  t.deepEqual(c.skipped, ['lm_head']);
  t.deepEqual([...c.modules.keys()], ['layers.0.q_proj', 'layers.0.v_proj']);
  t.is(c.adapter.name, 'newcomer');
  let n2 = 0;
  let e2 = 0;
  for (const m of c.modules.values()) {
    n2 += m.norm ** 2;
    e2 += m.error ** 2;
  }
  t.true(Math.abs(c.relativeError - Math.sqrt(e2 / n2)) < 1e-12);
  // In-set adapter projected again: the coefficients of the build, bit for bit.
  const again = await projectAdapter(s, adapters[2]!);
  for (const [name, m] of again.modules) {
    const b = s.coefficients[2]!.modules.get(name)!;
    t.true(bytes(m.alpha.data).equals(bytes(b.alpha.data)));
    t.true(bytes(m.beta.data).equals(bytes(b.beta.data)));
    t.is(m.error, b.error);
  }
  const wrong = memoryAdapter([{ name: 'layers.0.q_proj', A: normal(2, D_IN + 1, seed), B: normal(D_OUT, 2, seed) }]);
  await t.throwsAsync(projectAdapter(s, wrong), { ...code('ERR_SUBSPACE_MISMATCH'), message: /layers\.0\.q_proj/ });
});

for (const stacking of ['canonical', 'raw'] as const) {
  test(`reconstructAdapter / exportAdapter (${stacking}): PEFT files that load back with the reconstructed factors, scale convention, fan_in_fan_out kept`, async (t) => {
    const seed = freshSeed();
    const dir = await tempDir(t);
    const { adapters } = plantedSet(seed, 3, { alpha: (i) => [16, 2, 6][i]!, rank: (i) => [4, 8, 2][i]! });
    for (const a of adapters) for (const m of a.modules.values()) m.fanInFanOut = true;
    const s = await buildSubspace(adapters, { stacking, components: K });
    const c = s.coefficients[0]!;
    const rebuilt = await reconstructAdapter(s, c);
    t.is(rebuilt.format, 'peft');
    t.is(rebuilt.baseModel, 'tiny-base');
    for (const m of rebuilt.modules.values()) {
      t.is(m.rank, 4);
      t.true(m.fanInFanOut);
      if (stacking === 'canonical') t.deepEqual([m.alpha, m.scale, m.rslora], [4, 1, false]);
      else t.deepEqual([m.alpha, m.scale], [16, 4]);
    }
    const out = path.join(dir, 'exported');
    const saved = await exportAdapter(s, c, out, { format: 'peft' });
    t.is(saved.files.length, 2);
    const back = await loadAdapter(out);
    for (const [name, m] of rebuilt.modules) {
      const b = back.modules.get(name)!;
      t.true(bytes(b.A.data).equals(bytes(m.A.data)));
      t.true(bytes(b.B.data).equals(bytes(m.B.data)));
      t.is(b.scale, m.scale);
      t.true(b.fanInFanOut);
    }
    // kohya cannot hold fan_in_fan_out modules: refused before anything is written.
    await t.throwsAsync(exportAdapter(s, c, path.join(dir, 'k.safetensors'), { format: 'kohya' }), code('ERR_ADAPTER_UNSUPPORTED'));
    // Coefficients of another subspace are refused.
    const other = await buildSubspace(adapters, { stacking, components: K - 1 });
    await t.throwsAsync(reconstructAdapter(other, c), code('ERR_SUBSPACE_MISMATCH'));
  });
}

// ---- files ------------------------------------------------------------------------------------

async function builtAndSaved(t: ExecutionContext, options: BuildSubspaceOptions = {}) {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const { adapters } = plantedSet(seed, 4, { noise: 0.1 });
  const s = await buildSubspace(adapters, { components: 4, center: true, augment: 1, ...options });
  const folder = path.join(dir, 'subspace');
  await saveSubspace(s, folder);
  return { seed, dir, adapters, s, folder, sidecar: path.join(folder, 'subspace.json'), tensors: path.join(folder, 'subspace.safetensors') };
}

test('saveSubspace / loadSubspace round trip: every tensor bit-exact, the sidecar complete, same id; coefficients too', async (t) => {
  const { s, folder, sidecar, tensors, dir, adapters } = await builtAndSaved(t);
  const json = JSON.parse(await readFile(sidecar, 'utf8'));
  t.is(json.format, 'eigenlorax-subspace');
  t.is(json.formatVersion, 1);
  t.is(json.id, s.id);
  t.deepEqual(Object.keys(json.settings).sort(), ['augment', 'center', 'components', 'maxComponents', 'oversample', 'powerIters', 'seed', 'stacking', 'variance', 'weighting']);
  t.deepEqual(json.modules[0].kA, 5);
  t.deepEqual(json.modules[0].augmentA, 1);
  const reader = await openSafetensors(tensors);
  const keys = subspaceKeys('layers.0.q_proj');
  t.deepEqual(reader.tensors.get(keys.componentsA)!.shape, [D_IN, 5]);
  t.deepEqual(reader.tensors.get(keys.componentsB)!.shape, [D_OUT, 5]);
  t.deepEqual(reader.tensors.get(keys.meanA)!.shape, [D_IN]);
  t.deepEqual(reader.tensors.get(keys.singularA)!.shape, [4]);
  await reader.close();

  const loaded = await loadSubspace(folder);
  t.is(loaded.id, s.id);
  t.deepEqual(loaded.settings, s.settings);
  t.deepEqual(loaded.sources, s.sources);
  t.deepEqual(loaded.coefficients, []);
  t.is(loaded.report, null);
  for (const [name, m] of s.modules) {
    const l = loaded.modules.get(name)!;
    for (const key of ['componentsA', 'componentsB'] as const) t.true(bytes(l[key].data).equals(bytes(m[key].data)), `${name} ${key}`);
    for (const key of ['singularA', 'singularB', 'meanA', 'meanB'] as const) t.true(bytes(l[key]!).equals(bytes(m[key]!)), `${name} ${key}`);
    const { componentsA, componentsB, singularA, singularB, meanA, meanB, ...rest } = m;
    const { componentsA: a2, componentsB: b2, singularA: c2, singularB: d2, meanA: e2, meanB: f2, ...rest2 } = l;
    t.deepEqual(rest2, rest);
    void [componentsA, componentsB, singularA, singularB, meanA, meanB, a2, b2, c2, d2, e2, f2];
  }
  t.is((await loadSubspace(sidecar)).id, s.id);
  t.is((await loadSubspace(tensors)).id, s.id);

  // Coefficients.
  const file = path.join(dir, 'c0.safetensors');
  await saveCoefficients(s.coefficients[0]!, file);
  const c = await loadCoefficients(file, loaded);
  const original = s.coefficients[0]!;
  t.is(c.subspaceId, s.id);
  t.deepEqual(c.adapter, original.adapter);
  t.is(c.relativeError, original.relativeError);
  for (const [name, m] of original.modules) {
    const l = c.modules.get(name)!;
    t.true(bytes(l.alpha.data).equals(bytes(m.alpha.data)));
    t.true(bytes(l.beta.data).equals(bytes(m.beta.data)));
    t.deepEqual({ ...l, alpha: null, beta: null }, { ...m, alpha: null, beta: null });
  }
  const coefficientReader = await openSafetensors(file);
  const coefficientKeys = [...coefficientReader.tensors.keys()].sort();
  await coefficientReader.close();
  t.deepEqual(coefficientKeys, ['layers.0.q_proj.eigenlora_A.loadings', 'layers.0.q_proj.eigenlora_B.loadings', 'layers.0.v_proj.eigenlora_A.loadings', 'layers.0.v_proj.eigenlora_B.loadings']);
  // The loaded subspace reconstructs what the built one did, bit for bit.
  const r1 = await reconstructAdapter(s, original);
  const r2 = await reconstructAdapter(loaded, c);
  for (const [name, m] of r1.modules) t.true(bytes(r2.modules.get(name)!.A.data).equals(bytes(m.A.data)));
  // And projects a new adapter the same way.
  const p1 = await projectAdapter(s, adapters[1]!);
  const p2 = await projectAdapter(loaded, adapters[1]!);
  t.is(p2.relativeError, p1.relativeError);
});

test('loadSubspace refuses corrupted sidecars with ERR_SUBSPACE_FORMAT naming the file and field', async (t) => {
  const { sidecar } = await builtAndSaved(t);
  const good = await readFile(sidecar, 'utf8');
  const json = () => JSON.parse(good);
  const cases: Array<[string, string, RegExp]> = [
    ['not JSON', good.slice(0, 100), /subspace\.json: expected the subspace sidecar in JSON, received text that is not JSON/],
    ['wrong version', JSON.stringify({ ...json(), formatVersion: 2 }), /field "formatVersion": expected version 1 .*, received 2/],
    ['wrong format', JSON.stringify({ ...json(), format: 'other' }), /field "format"/],
    ['missing settings', JSON.stringify({ ...json(), settings: undefined }), /field "settings": expected an object, received nothing/],
    ['missing field', JSON.stringify({ ...json(), modules: json().modules.map((m: Record<string, unknown>) => ({ ...m, kA: undefined })) }), /field "modules\[0\]\.kA": expected a positive integer, received nothing/],
    ['wrong type', JSON.stringify({ ...json(), settings: { ...json().settings, center: 'yes' } }), /field "settings\.center": expected true or false, received "yes"/],
    ['bad sha256', JSON.stringify({ ...json(), sources: json().sources.map((s: Record<string, unknown>) => ({ ...s, files: [{ path: '/x', bytes: 1, sha256: 'abc' }] })) }), /sources\[0\]\.files\[0\]\.sha256/],
    ['unknown adapter', JSON.stringify({ ...json(), modules: json().modules.map((m: Record<string, unknown>) => ({ ...m, adapters: ['nobody', 'b', 'c', 'd'] })) }), /modules\[0\]\.adapters\[0\]/],
    ['K over the setting', JSON.stringify({ ...json(), settings: { ...json().settings, components: { A: 2, B: 4 } } }), /modules\[0\]\.kA/],
    ['tensors outside the folder', JSON.stringify({ ...json(), tensors: '../x.safetensors' }), /field "tensors"/],
    // A valid sidecar whose content no longer matches the id.
    ['edited value', JSON.stringify({ ...json(), modules: json().modules.map((m: Record<string, unknown>, i: number) => (i === 0 ? { ...m, energyA: 1 } : m)) }), /field "id": expected the id the contents .* give, .*received .*the contents do not match the recorded id/],
    ['shape changed', JSON.stringify({ ...json(), modules: json().modules.map((m: Record<string, unknown>, i: number) => (i === 0 ? { ...m, dIn: D_IN + 1 } : m)) }), /layers\.0\.q_proj\.eigenlora_A\.components.*expected shape \[49, 5\] as the record says .*, received shape \[48, 5\]/],
  ];
  for (const [label, text, message] of cases) {
    await writeFile(sidecar, text);
    const error = await t.throwsAsync(loadSubspace(path.dirname(sidecar)), code('ERR_SUBSPACE_FORMAT'), label);
    t.regex(error?.message ?? '', message, label);
    t.true((error?.message ?? '').includes(path.dirname(sidecar)), `${label}: names the file`);
  }
  await writeFile(sidecar, good);
  await t.notThrowsAsync(loadSubspace(path.dirname(sidecar)));
});

test('loadSubspace refuses missing, mis-shaped, unexpected or changed tensors, and a tensors file from another save', async (t) => {
  const { s, folder, tensors, dir, adapters } = await builtAndSaved(t);
  const original = await readFile(tensors);
  const reader = await openSafetensors(tensors);
  const all = await Promise.all([...reader.tensors.keys()].map(async (k) => ({ name: k, shape: [...reader.tensors.get(k)!.shape], data: (await reader.readFloat32(k)).data })));
  const metadata = { ...reader.metadata };
  await reader.close();
  const keys = subspaceKeys('layers.0.v_proj');
  const rewrite = async (entries: typeof all) => writeSafetensors(tensors, entries, { metadata });
  const expectFormat = async (label: string, message: RegExp) => {
    const error = await t.throwsAsync(loadSubspace(folder), code('ERR_SUBSPACE_FORMAT'), label);
    t.regex(error?.message ?? '', message, label);
  };

  await rewrite(all.filter((e) => e.name !== keys.meanB));
  await expectFormat('missing tensor', /subspace\.safetensors, tensor "layers\.0\.v_proj\.eigenlora_B\.mean": expected a tensor of shape \[40\] .*, received nothing/);
  await rewrite(all.map((e) => (e.name === keys.componentsB ? { ...e, shape: [D_OUT + 1, 5], data: new Float32Array((D_OUT + 1) * 5) } : e)));
  await expectFormat('wrong shape', /tensor "layers\.0\.v_proj\.eigenlora_B\.components": expected shape \[40, 5\] .*, received shape \[41, 5\]/);
  await rewrite([...all, { name: 'stray', shape: [1], data: new Float32Array(1) }]);
  await expectFormat('unexpected tensor', /tensor "stray": expected only the tensors .*, received an unexpected tensor/);
  const changed = all.map((e) => (e.name === keys.componentsA ? { ...e, data: e.data.map((x, i) => (i === 7 ? x + 1e-3 : x)) } : e));
  await rewrite(changed);
  // Under the digest recorded at save time: ERR_INTEGRITY; without a digest, the id still catches it.
  await t.throwsAsync(loadSubspace(folder), code('ERR_INTEGRITY'), 'changed value under the old digest');
  const { 'eigenlorax.data_sha256': _digest, ...undigested } = metadata;
  await writeSafetensors(tensors, changed, { metadata: undigested });
  await expectFormat('changed value', /field "id": expected the id the contents .* give, .*received .*the contents do not match the recorded id/);
  await writeFile(tensors, original);
  await t.notThrowsAsync(loadSubspace(folder));
  // A tensors file from another build of the same shape.
  const other = await buildSubspace(adapters, { components: 4, center: true, augment: 1, seed: 12345 });
  t.not(other.id, s.id);
  const otherFolder = path.join(dir, 'other');
  await saveSubspace(other, otherFolder);
  await writeFile(tensors, await readFile(path.join(otherFolder, 'subspace.safetensors')));
  await expectFormat('another save', /__metadata__\.eigenlorax\.id: expected the id of .*subspace\.json.*received .* \(files from different saves\?\)/);
  await t.throwsAsync(loadSubspace(path.join(dir, 'nothing-here')), code('ERR_NOT_FOUND'));
});

test('loadCoefficients validates the record and the tensors, and that they belong to the subspace', async (t) => {
  const { s, dir, adapters } = await builtAndSaved(t);
  const file = path.join(dir, 'c.safetensors');
  await saveCoefficients(s.coefficients[1]!, file);
  await t.notThrowsAsync(loadCoefficients(file));
  // Another subspace: different id, and different K.
  const other = await buildSubspace(adapters, { components: 3 });
  await t.throwsAsync(loadCoefficients(file, other), { ...code('ERR_SUBSPACE_MISMATCH'), message: /belong to subspace/ });
  // Mismatched shapes against the recorded K.
  const reader = await openSafetensors(file);
  const entries = await Promise.all([...reader.tensors.keys()].map(async (k) => ({ name: k, shape: [...reader.tensors.get(k)!.shape], data: (await reader.readFloat32(k)).data })));
  const metadata = { ...reader.metadata };
  await reader.close();
  const key = 'layers.0.q_proj.eigenlora_A.loadings';
  await writeSafetensors(file, entries.map((e) => (e.name === key ? { ...e, shape: [3, 4], data: new Float32Array(12) } : e)), { metadata });
  await t.throwsAsync(loadCoefficients(file), { ...code('ERR_SUBSPACE_FORMAT'), message: /tensor "layers\.0\.q_proj\.eigenlora_A\.loadings": expected shape \[5, 4\] .*, received shape \[3, 4\]/ });
  await writeSafetensors(file, entries.filter((e) => e.name !== key), { metadata });
  await t.throwsAsync(loadCoefficients(file), { ...code('ERR_SUBSPACE_FORMAT'), message: /"layers\.0\.q_proj\.eigenlora_A\.loadings": expected a tensor .*, received nothing/ });
  const record = JSON.parse(metadata['eigenlorax.coefficients']!);
  await writeSafetensors(file, entries, { metadata: { ...metadata, 'eigenlorax.coefficients': JSON.stringify({ ...record, formatVersion: 9 }) } });
  await t.throwsAsync(loadCoefficients(file), { ...code('ERR_SUBSPACE_FORMAT'), message: /field "formatVersion": expected version 1 .*, received 9/ });
  await writeSafetensors(file, entries, { metadata: { ...metadata, 'eigenlorax.coefficients': '{nope' } });
  await t.throwsAsync(loadCoefficients(file), { ...code('ERR_SUBSPACE_FORMAT'), message: /is not JSON/ });
  await writeSafetensors(file, entries, { metadata: { ...metadata, 'eigenlorax.coefficients': JSON.stringify({ ...record, modules: record.modules.map((m: Record<string, unknown>) => ({ ...m, kA: 3 })) }) } });
  await t.throwsAsync(loadCoefficients(file, s), { ...code('ERR_SUBSPACE_MISMATCH'), message: /K_A 3/ });
});

test('saveSubspace refuses a subspace changed after it was built, and writes nothing', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const { adapters } = plantedSet(seed, 3);
  const s = await buildSubspace(adapters, { components: 2 });
  s.modules.get('layers.0.q_proj')!.componentsA.data[0]! += 1;
  await t.throwsAsync(saveSubspace(s, path.join(dir, 'x')), { ...code('ERR_INVALID_ARGUMENT'), message: /changed after it was built/ });
  await t.throwsAsync(readFile(path.join(dir, 'x', 'subspace.json')), { code: 'ENOENT' });
});

// ---- savings, leave-one-out ---------------------------------------------------------------------

test('subspaceSavings: LoRA parameters against basis + coefficients, and trainable parameters, counted by hand', async (t) => {
  const seed = freshSeed();
  const { adapters } = plantedSet(seed, 3, { rank: (i) => [4, 4, 8][i]! });
  const s = await buildSubspace(adapters, { components: { A: 3, B: 2 } });
  // Two modules, 48 -> 40; ranks 4, 4, 8.
  const own = subspaceSavings(s);
  t.is(own.adapters, 3);
  t.is(own.rank, 4);
  t.true(own.perSourceRanks);
  t.is(own.lora.parameters, 2 * (4 + 4 + 8) * (48 + 40));
  t.is(own.basis.parameters, 2 * (3 * 48 + 2 * 40));
  t.is(own.coefficients.parameters, 2 * (3 + 2) * (4 + 4 + 8));
  t.is(own.eigenlora.parameters, own.basis.parameters + own.coefficients.parameters);
  t.is(own.lora.bytes, own.lora.parameters * 4);
  t.is(own.ratio, own.lora.parameters / own.eigenlora.parameters);
  t.deepEqual(own.trainable, { lora: 2 * 4 * 88, eigenlora: 2 * 5 * 4, ratio: 88 / 5 });
  const many = subspaceSavings(s, { adapters: 1000, rank: 8, dtype: 'BF16' });
  t.is(many.lora.parameters, 1000 * 2 * 8 * 88);
  t.is(many.coefficients.parameters, 1000 * 2 * 5 * 8);
  t.is(many.lora.bytes, many.lora.parameters * 2);
  // Break-even: basis + N c < N l from N = floor(basis / (l - c)) + 1.
  const l = 2 * 8 * 88;
  const c = 2 * 5 * 8;
  t.is(many.breakEven, Math.floor(own.basis.parameters / (l - c)) + 1);
  t.throws(() => subspaceSavings(s, { adapters: -1 }), code('ERR_INVALID_ARGUMENT'));
});

test('leaveOneOut: adapters from one planted subspace are reconstructed from the others, an outsider is not', async (t) => {
  const seed = freshSeed();
  const what = `seed ${seed}`;
  const { adapters } = plantedSet(seed, 6, { noise: 0.01 });
  const progress: number[] = [];
  const result = await leaveOneOut(adapters, { components: K, onProgress: (p) => progress.push(p.done) });
  t.deepEqual(progress, [1, 2, 3, 4, 5, 6]);
  t.is(result.adapters.length, 6);
  for (const r of result.adapters) t.true(r.coefficients!.relativeError < 0.05, `${what}: held-out ${r.name}: ${r.coefficients!.relativeError}`);
  t.is(result.heldOutError, meanRelativeError(result.adapters.map((r) => r.coefficients!)));
  t.true(result.heldOutError < 0.05, `${what}: heldOutError ${result.heldOutError}`);
  t.deepEqual([...result.perModule.keys()], ['layers.0.q_proj', 'layers.0.v_proj']);
  // An outsider: room for its 4 directions when it is in the build (K = 9), but held out it
  // is not reconstructed.
  const outsider = memoryAdapter(['layers.0.q_proj', 'layers.0.v_proj'].map((name, j) => ({ name, A: normal(4, D_IN, seed + j), B: normal(D_OUT, 4, seed + 50 + j) })));
  const mixed = await leaveOneOut([...adapters.slice(0, 5), outsider], { components: K + 4 });
  for (const r of mixed.adapters.slice(0, 5)) t.true(r.coefficients!.relativeError < 0.05, `${what}: held-out ${r.name} next to an outsider: ${r.coefficients!.relativeError}`);
  t.true(mixed.adapters[5]!.coefficients!.relativeError > 0.7, `${what}: outsider ${mixed.adapters[5]!.coefficients!.relativeError}`);
  t.true(mixed.heldOutError > result.heldOutError);
});

// ---- paths: bounded reads ------------------------------------------------------------------------

// Serial: it counts the process's open file descriptors.
test.serial('paths are opened, read module by module and closed; more paths than maxOpenFiles are reopened as needed', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const modules = ['h.0.q', 'h.1.q', 'h.2.q'];
  const { adapters } = plantedSet(seed, 5, { modules, noise: 0.05 });
  const paths: string[] = [];
  for (let i = 0; i < adapters.length; i++) {
    const p = path.join(dir, `a${i}`);
    await saveAdapter(adapters[i]!, p, { format: 'peft' });
    paths.push(p);
  }
  const inMemory = await buildSubspace(adapters, { components: 4, hashSources: false });
  const fds = async () => (existsSync('/proc/self/fd') ? (await readdir('/proc/self/fd')).length : 0);
  const before = await fds();
  const fromFiles = await buildSubspace(paths, { components: 4, maxOpenFiles: 2, concurrency: 3 });
  t.is(await fds(), before, 'every file opened by the build is closed');
  const defaults = await buildSubspace(paths, { components: 4, hashSources: false });
  t.is(await fds(), before, 'every file opened by the build is closed');
  t.true(bytes(defaults.modules.get('h.1.q')!.componentsB.data).equals(bytes(fromFiles.modules.get('h.1.q')!.componentsB.data)));
  await t.throwsAsync(buildSubspace([...paths, path.join(dir, 'missing')], { components: 4 }), code('ERR_NOT_FOUND'));
  t.is(await fds(), before, 'nothing left open after a failure');
  for (const [name, m] of inMemory.modules) {
    t.true(bytes(fromFiles.modules.get(name)!.componentsA.data).equals(bytes(m.componentsA.data)), name);
  }
  t.true(fromFiles.sources.every((x) => x.files.every((f) => f.sha256 !== null)));
  t.true(inMemory.sources.every((x) => x.files.length === 0));
  const timings = fromFiles.report!.timings;
  t.true(timings.totalMs >= timings.nativeMs && timings.readMs >= 0, JSON.stringify(timings));
});

