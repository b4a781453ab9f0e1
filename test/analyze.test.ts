/**
 * analyzeAdapters and its SVG chart: adapters drawn from a planted subspace plus noise are
 * said to share it (held-out error near the noise level, overlap far above its random
 * reference); adapters drawn independently at random are said not to (held-out error near
 * 1, overlap at its random reference); the explained-variance curve is monotone, ends at
 * most at 1 and matches singular values computed independently in float64; the figures
 * agree with buildSubspace and leaveOneOut; the SVG is well-formed and written atomically.
 * On ../shared/realdata (when present) the five c_attn GPT-2 adapters at K = 16 give the
 * figures the realdata README and DESIGN §1 report.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  EigenLoraxError,
  analyzeAdapters,
  buildSubspace,
  explainedVarianceSvg,
  leaveOneOut,
  writeExplainedVarianceSvg,
  type AnalyzeProgress,
  type LoraAdapter,
  type SubspaceAnalysis,
} from '../lib/index.js';
import { freshSeed } from './helpers/random.js';
import * as ref from './helpers/reference.js';
import { tempDir } from './helpers/safetensors-fixtures.js';
import { memoryAdapter, normal, plantedBases, plantedFactors, type ModuleSpec } from './helpers/subspace-fixtures.js';

const code = (c: string) => ({ instanceOf: EigenLoraxError, code: c }) as const;

const D_IN = 48;
const D_OUT = 40;
const RANK = 4;
const PLANTED = 6;
const N = 6;
const NOISE = 0.05;
const MODULES = ['layers.0.q_proj', 'layers.0.v_proj'];

/** N adapters whose factors lie in one planted PLANTED-dimensional subspace per module and side, plus NOISE. */
function plantedAdapters(seed: number, noise = NOISE): LoraAdapter[] {
  const bases = MODULES.map((_, m) => plantedBases(D_IN, D_OUT, PLANTED, PLANTED, seed + 1000 * m));
  return Array.from({ length: N }, (_, i) =>
    memoryAdapter(MODULES.map((name, m): ModuleSpec => ({ name, ...plantedFactors(bases[m]!, RANK, seed + 17 * i + 1000 * m + 1, noise), alpha: 8 }))),
  );
}

/** N adapters with independent Gaussian factors. */
function randomAdapters(seed: number): LoraAdapter[] {
  return Array.from({ length: N }, (_, i) =>
    memoryAdapter(MODULES.map((name, m) => ({ name, A: normal(RANK, D_IN, seed + 31 * i + m), B: normal(D_OUT, RANK, seed + 31 * i + m + 7), alpha: 8 }))),
  );
}

// The analyses are shared by several tests (each takes about a second on two cores).
const seed = freshSeed();
let plantedRun: Promise<SubspaceAnalysis> | undefined;
let randomRun: Promise<SubspaceAnalysis> | undefined;
const planted = () => (plantedRun ??= analyzeAdapters(plantedAdapters(seed), { components: PLANTED, seed: 3 }));
const independent = () => (randomRun ??= analyzeAdapters(randomAdapters(seed + 99), { components: PLANTED, seed: 3 }));

test('adapters from a planted subspace: they share it, held-out error near the noise level, overlap far above random', async (t) => {
  const a = await planted();
  const where = `seed ${seed}`;
  t.log(`${where}: in-sample ${a.inSampleError.toFixed(4)}, held-out ${a.heldOutError.toFixed(4)}, overlap A ${a.overlap.A.toFixed(3)} B ${a.overlap.B.toFixed(3)}`);
  t.is(a.shared, 'yes', where);
  t.regex(a.verdict, /^These adapters share a subspace/, where);
  t.false(/do not share/.test(a.verdict), where);
  t.true(a.verdict.includes(a.heldOutError.toFixed(3)), `${where}: the verdict quotes the held-out error`);
  t.true(a.verdict.includes(a.inSampleError.toFixed(3)), `${where}: and the in-sample error`);
  t.regex(a.advice, /coefficients/, where);
  // Each factor has relative noise NOISE, so dW has about sqrt(2) NOISE of it, most outside the planted span.
  t.true(a.inSampleError < 3 * NOISE, `${where}: in-sample ${a.inSampleError}`);
  t.true(a.heldOutError < 3 * NOISE, `${where}: held-out ${a.heldOutError}`);
  t.true(a.heldOutError >= a.inSampleError * 0.9, `${where}: held-out ${a.heldOutError} vs in-sample ${a.inSampleError}`);
  for (const side of ['A', 'B'] as const) {
    const d = side === 'A' ? D_IN : D_OUT;
    t.true(Math.abs(a.randomOverlap[side] - Math.max(RANK, PLANTED) / d) < 1e-12, `${where}: random reference of side ${side}`);
    t.true(a.overlap[side] > 0.9, `${where}: overlap ${side} ${a.overlap[side]}`);
    t.true(a.overlap[side] > 4 * a.randomOverlap[side], `${where}: overlap ${side} ${a.overlap[side]} vs random ${a.randomOverlap[side]}`);
  }
  t.deepEqual(a.adapters, Array.from({ length: N }, (_, i) => `adapter-${i}`));
  t.is(a.perAdapter.length, N);
  for (const p of a.perAdapter) {
    t.true(p.heldOutError !== null && p.heldOutError < 3 * NOISE, `${where}: ${p.name} held-out ${p.heldOutError}`);
    t.true(p.overlap !== null && p.overlap.A > 0.8 && p.overlap.B > 0.8, `${where}: ${p.name}`);
  }
  t.deepEqual(
    a.modules.map((m) => m.name),
    MODULES,
  );
  for (const m of a.modules) {
    t.is(m.A.components, PLANTED);
    t.is(m.B.components, PLANTED);
    t.true(m.heldOutError !== null && m.heldOutError < 3 * NOISE, `${where}: ${m.name}`);
    t.deepEqual(m.ranks, Array(N).fill(RANK));
  }
  t.notThrows(() => JSON.parse(JSON.stringify(a)), 'plain JSON data');
});

test('adapters drawn independently at random: no shared subspace, held-out error near 1, overlap at its random reference', async (t) => {
  const a = await independent();
  const where = `seed ${seed + 99}`;
  t.log(`${where}: in-sample ${a.inSampleError.toFixed(4)}, held-out ${a.heldOutError.toFixed(4)}, overlap A ${a.overlap.A.toFixed(3)} (${a.randomOverlap.A.toFixed(3)}) B ${a.overlap.B.toFixed(3)} (${a.randomOverlap.B.toFixed(3)})`);
  t.is(a.shared, 'no', where);
  t.regex(a.verdict, /^These adapters do not share a subspace/, where);
  t.regex(a.advice, /training new tasks with coefficients/, where);
  t.true(a.heldOutError > 0.9 && a.heldOutError <= 1 + 1e-6, `${where}: held-out ${a.heldOutError}`);
  for (const side of ['A', 'B'] as const) {
    const r = a.randomOverlap[side];
    t.true(Math.abs(a.overlap[side] - r) < 0.1, `${where}: overlap ${side} ${a.overlap[side]} vs random ${r}`);
    t.true(a.overlap[side] < 2 * r, `${where}: overlap ${side} ${a.overlap[side]} vs random ${r}`);
  }
});

test('the figures are those of buildSubspace (in-sample) and leaveOneOut (held-out) with the same options', async (t) => {
  const a = await planted();
  const adapters = plantedAdapters(seed);
  const built = await buildSubspace(adapters, { components: PLANTED, seed: 3, hashSources: false });
  t.true(Math.abs(a.inSampleError - built.report!.inSampleError) < 1e-9, `${a.inSampleError} vs ${built.report!.inSampleError}`);
  const loo = await leaveOneOut(adapters, { components: PLANTED, seed: 3 });
  t.true(Math.abs(a.heldOutError - loo.heldOutError) < 1e-9, `${a.heldOutError} vs ${loo.heldOutError}`);
  for (const m of a.modules) {
    t.true(Math.abs(m.heldOutError! - loo.perModule.get(m.name)!) < 1e-9, m.name);
    const b = built.modules.get(m.name)!;
    t.true(Math.abs(m.A.explained - b.explainedA) < 1e-12, m.name);
    t.true(Math.abs(m.A.curve[PLANTED - 1]! - b.explainedA) < 1e-5, `${m.name}: the curve at K is the explained variance at K`);
    t.true(Math.abs(m.B.curve[PLANTED - 1]! - b.explainedB) < 1e-5, m.name);
  }
});

test('explained-variance curves: monotone, at most 1, complete at the stack rank, and equal to float64 singular values (raw stacking)', async (t) => {
  const adapters = randomAdapters(seed + 5);
  const a = await analyzeAdapters(adapters, { stacking: 'raw', components: 4 });
  const stackRank = Math.min(N * RANK, D_IN);
  for (const m of a.modules) {
    for (const side of ['A', 'B'] as const) {
      const s = m[side];
      const what = `${m.name} ${side}`;
      t.is(s.curve.length, Math.min(64, s.stackRank), what);
      t.is(s.stackRank, Math.min(N * RANK, side === 'A' ? D_IN : D_OUT), what);
      t.true(s.curveComplete, what);
      for (let k = 1; k < s.curve.length; k++) t.true(s.curve[k]! >= s.curve[k - 1]! - 1e-7, `${what}: monotone at ${k}`);
      t.true(s.curve.every((v) => v > 0 && v <= 1), what);
      t.true(Math.abs(s.curve[s.curve.length - 1]! - 1) < 1e-4, `${what}: the whole energy at the stack rank (${s.curve.at(-1)})`);
      // The curve is the running sum of the squared singular values over the energy.
      let sum = 0;
      s.singularValues.forEach((v, k) => {
        sum += v * v;
        t.true(Math.abs(s.curve[k]! - Math.min(1, sum / s.energy)) < 1e-6, `${what}: k ${k + 1}`);
      });
      // Against float64: the stack [A_1^T ... A_N^T] (or [B_1 ... B_N]) and its Jacobi SVD.
      const blocks = adapters.map((ad) => {
        const mod = ad.modules.get(m.name)!;
        return side === 'A' ? ref.transpose(mod.A) : ref.toF64(mod.B);
      });
      const rows = blocks[0]!.rows;
      const stack = ref.zeros(rows, N * RANK);
      blocks.forEach((b, i) => {
        for (let r = 0; r < rows; r++) for (let c = 0; c < RANK; c++) stack.data[r * N * RANK + i * RANK + c] = b.data[r * RANK + c]!;
      });
      const exact = ref.jacobiSvd(stack).S;
      const energy = exact.reduce((x, v) => x + v * v, 0);
      t.true(Math.abs(s.energy - energy) / energy < 1e-5, `${what}: energy ${s.energy} vs ${energy}`);
      let running = 0;
      for (let k = 0; k < stackRank && k < s.curve.length; k++) {
        running += exact[k]! ** 2;
        t.true(Math.abs(s.curve[k]! - running / energy) < 1e-5, `${what}: curve at ${k + 1}: ${s.curve[k]} vs ${running / energy}`);
      }
      t.is(s.componentsFor90, s.curve.findIndex((v) => v >= 0.9 * (1 - 1e-9)) + 1, what);
    }
  }
  // The band across modules: min <= mean <= max, as long as the longest curve.
  for (const side of ['A', 'B'] as const) {
    const band = a.curve[side];
    t.is(band.mean.length, Math.max(...a.modules.map((m) => m[side].curve.length)));
    band.mean.forEach((v, k) => t.true(band.min[k]! <= v + 1e-12 && v <= band.max[k]! + 1e-12));
  }
});

test('curveComponents caps the curve; the curve covers K at least; progress is reported per module and phase', async (t) => {
  const phases = new Map<string, AnalyzeProgress[]>();
  const a = await analyzeAdapters(plantedAdapters(seed + 1), {
    components: 10,
    curveComponents: 3,
    onProgress: (p) => phases.set(p.phase, [...(phases.get(p.phase) ?? []), p]),
  });
  for (const m of a.modules) {
    t.is(m.A.curve.length, 10, 'at least K');
    t.false(m.A.curveComplete);
  }
  t.deepEqual([...phases.keys()].sort(), ['held-out', 'in-sample', 'spectrum']);
  t.is(phases.get('spectrum')!.length, MODULES.length);
  t.is(phases.get('in-sample')!.at(-1)!.done, MODULES.length);
  const held = phases.get('held-out')!;
  t.is(held.length, N * MODULES.length);
  t.deepEqual(
    held.map((p) => p.done),
    held.map((_, i) => i + 1),
  );
  t.true(held.every((p) => p.total === N * MODULES.length));
  const b = await analyzeAdapters(plantedAdapters(seed + 1), { components: 2, curveComponents: 3 });
  t.is(b.modules[0]!.A.curve.length, 3);
});

test('a module held by one adapter only: no held-out figures for it, noted as partial', async (t) => {
  const adapters = plantedAdapters(seed + 2).slice(0, 3);
  adapters[0]!.modules.set('extra.proj', { ...adapters[0]!.modules.get(MODULES[0]!)!, name: 'extra.proj' });
  const a = await analyzeAdapters(adapters, { components: 4 });
  const extra = a.modules.find((m) => m.name === 'extra.proj')!;
  t.is(extra.heldOutError, null);
  t.is(extra.A.overlap, null);
  t.is(extra.A.randomOverlap, null);
  t.deepEqual(extra.adapters, ['adapter-0']);
  t.deepEqual(
    a.notes.partialModules.map((p) => p.module),
    ['extra.proj'],
  );
  t.true(Number.isFinite(a.heldOutError));
  t.true(Number.isFinite(a.overlap.A));
});

test('bad arguments are refused', async (t) => {
  const adapters = randomAdapters(seed + 3);
  await t.throwsAsync(analyzeAdapters(adapters.slice(0, 1)), code('ERR_INVALID_ARGUMENT'));
  await t.throwsAsync(analyzeAdapters(adapters, { curveComponents: 0 }), code('ERR_INVALID_ARGUMENT'));
  await t.throwsAsync(analyzeAdapters(adapters, { bogus: 1 } as never), code('ERR_INVALID_ARGUMENT'));
  await t.throwsAsync(analyzeAdapters(adapters, { stacking: 'raw', weighting: 'equal' }), code('ERR_INVALID_ARGUMENT'));
  await t.throwsAsync(analyzeAdapters(adapters, { onProgress: 3 } as never), code('ERR_INVALID_ARGUMENT'));
  await t.throwsAsync(analyzeAdapters(['/nonexistent/adapter', adapters[0]!]), code('ERR_NOT_FOUND'));
});

// ---- SVG ---------------------------------------------------------------------------------------

interface XmlElement {
  name: string;
  attributes: Map<string, string>;
  children: XmlElement[];
}

/**
 * A minimal XML parser for the chart: one root, elements with quoted attributes, text,
 * self-closing tags, an XML declaration; throws on an unbalanced or malformed tag.
 */
function parseXml(text: string): XmlElement {
  const body = text.replace(/^<\?xml[^?]*\?>\s*/, '');
  const tag = /<(\/?)([A-Za-z][\w:.-]*)((?:\s+[\w:.-]+="[^"<]*")*)\s*(\/?)>/g;
  const stack: XmlElement[] = [];
  let root: XmlElement | null = null;
  let at = 0;
  for (let m = tag.exec(body); m !== null; m = tag.exec(body)) {
    const between = body.slice(at, m.index);
    if (between.includes('<') || between.includes('>')) throw new Error(`malformed markup near ${JSON.stringify(between.slice(0, 40))}`);
    if (/&(?!(amp|lt|gt|quot|apos);)/.test(between)) throw new Error('unescaped &');
    at = tag.lastIndex;
    const [, closing, name, attrs, selfClosing] = m;
    if (closing) {
      const open = stack.pop();
      if (open?.name !== name) throw new Error(`</${name}> closes <${open?.name}>`);
      continue;
    }
    const attributes = new Map<string, string>();
    for (const a of attrs!.matchAll(/([\w:.-]+)="([^"]*)"/g)) {
      if (attributes.has(a[1]!)) throw new Error(`duplicate attribute ${a[1]}`);
      attributes.set(a[1]!, a[2]!);
    }
    const element: XmlElement = { name: name!, attributes, children: [] };
    if (stack.length > 0) stack.at(-1)!.children.push(element);
    else if (root === null) root = element;
    else throw new Error('two root elements');
    if (!selfClosing) stack.push(element);
  }
  if (body.slice(at).trim() !== '') throw new Error('text after the root');
  if (stack.length > 0) throw new Error(`<${stack.at(-1)!.name}> is never closed`);
  if (root === null) throw new Error('no root element');
  return root;
}

function all(e: XmlElement, name: string): XmlElement[] {
  return [...(e.name === name ? [e] : []), ...e.children.flatMap((c) => all(c, name))];
}

test('the SVG chart: a well-formed standalone <svg> with a size and viewBox, one line and one band per side, axes, ticks, a legend', async (t) => {
  const a = await planted();
  const text = explainedVarianceSvg(a);
  t.true(text.startsWith('<?xml version="1.0" encoding="UTF-8"?>\n<svg '));
  const root = parseXml(text);
  t.is(root.name, 'svg');
  t.is(root.attributes.get('xmlns'), 'http://www.w3.org/2000/svg');
  t.is(root.attributes.get('width'), '720');
  t.is(root.attributes.get('height'), '440');
  t.is(root.attributes.get('viewBox'), '0 0 720 440');
  const series = all(root, 'polyline').filter((p) => p.attributes.get('class') === 'series');
  t.deepEqual(
    series.map((p) => p.attributes.get('data-side')),
    ['A', 'B'],
  );
  for (const p of series) {
    const points = p.attributes.get('points')!.split(' ').map((xy) => xy.split(',').map(Number));
    const side = p.attributes.get('data-side') as 'A' | 'B';
    t.is(points.length, a.curve[side].mean.length);
    t.true(points.every(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && x! >= 0 && x! <= 720 && y! >= 0 && y! <= 440));
    // y decreases (the curve rises) from K = 1 on.
    for (let i = 1; i < points.length; i++) t.true(points[i]![1]! <= points[i - 1]![1]! + 1e-9);
  }
  t.is(all(root, 'polygon').filter((p) => p.attributes.get('class') === 'band').length, 2);
  const texts = all(root, 'text');
  t.true(texts.length > 10, 'tick labels, axis labels, legend');
  t.regex(text, />K \(components per side\)</);
  t.regex(text, />explained variance</);
  t.regex(text, />0\.0</);
  t.regex(text, />1\.0</);
  t.regex(text, /A side .*mean over 2 modules/);
  t.is(all(root, 'line').filter((l) => l.attributes.get('class') === 'k-marker').length, 1);
  t.false(/<script|href=|url\(|@import|@font-face/i.test(text), 'standalone: no scripts, links or external fonts');
  t.is(all(root, 'title').length, 1);
  // Options.
  const small = parseXml(explainedVarianceSvg(a, { width: 400, height: 300, title: 'Q & A <test>' }));
  t.is(small.attributes.get('viewBox'), '0 0 400 300');
  t.throws(() => explainedVarianceSvg(a, { width: 10 }), code('ERR_INVALID_ARGUMENT'));
  t.throws(() => explainedVarianceSvg({} as SubspaceAnalysis), code('ERR_INVALID_ARGUMENT'));
});

test('writeExplainedVarianceSvg writes atomically: the whole file or nothing, no temporary left', async (t) => {
  const a = await planted();
  const dir = await tempDir(t);
  const file = path.join(dir, 'chart.svg');
  await writeFile(file, 'old contents');
  const result = await writeExplainedVarianceSvg(a, file);
  t.is(result.file, file);
  t.is(await readFile(file, 'utf8'), explainedVarianceSvg(a));
  t.deepEqual(await readdir(dir), ['chart.svg']);
  // A refused chart leaves the existing file untouched.
  await t.throwsAsync(writeExplainedVarianceSvg(a, file, { height: 1 }), code('ERR_INVALID_ARGUMENT'));
  t.is(await readFile(file, 'utf8'), explainedVarianceSvg(a));
  // A folder that does not exist: an error, nothing written.
  await t.throwsAsync(writeExplainedVarianceSvg(a, path.join(dir, 'missing', 'chart.svg')), code('ERR_NOT_FOUND'));
  t.deepEqual(await readdir(dir), ['chart.svg']);
});

// ---- real adapters -----------------------------------------------------------------------------

const repoRoot = path.resolve(fileURLToPath(new URL('../..', import.meta.url)));
const realdata = path.resolve(repoRoot, '..', 'shared', 'realdata');
const cAttnOnly = [
  'anirudh-ak__peft-gpt2__emotion6',
  'greulist137__Fine-Tuning-Gen-AI-Model__dair-emotion6',
  'stathopoan__Apply-Lightweight-Fine-Tuning-to-a-Foundation-LLM-Model__dair-emotion6',
  'yzzhome__Lightweight-Fine-Tuning__yelp5',
  'ybriz__generative-ai__imdb',
].map((name) => path.join(realdata, 'gpt2', name));

if (!cAttnOnly.every((p) => existsSync(p))) {
  test('realdata: the five c_attn GPT-2 adapters are absent, so the real-data analysis is skipped', (t) => {
    t.log(`skipped: ${realdata}/gpt2 does not hold the five c_attn adapters (see ../shared/realdata/README.md)`);
    t.pass();
  });
} else {
  test('realdata: the five c_attn GPT-2 adapters at K = 16 (canonical + equal) do not share a subspace', async (t) => {
    const a = await analyzeAdapters(cAttnOnly, { components: 16, stacking: 'canonical', weighting: 'equal' });
    t.log(`inSampleError ${a.inSampleError.toFixed(4)}, heldOutError ${a.heldOutError.toFixed(4)}, overlap A ${a.overlap.A.toFixed(3)} B ${a.overlap.B.toFixed(3)}`);
    t.log(a.verdict);
    t.true(Math.abs(a.inSampleError - 0.084) < 0.01, `in-sample ${a.inSampleError}`);
    t.true(Math.abs(a.heldOutError - 0.91) < 0.03, `held-out ${a.heldOutError}`);
    t.is(a.shared, 'no');
    t.regex(a.verdict, /^These adapters do not share a subspace/);
    t.is(a.modules.length, 12);
    for (const m of a.modules) {
      t.is(m.A.stackRank, 40);
      t.is(m.A.curve.length, 40);
      t.true(Math.abs(m.A.curve.at(-1)! - 1) < 1e-3);
    }
    t.true(Math.abs(a.randomOverlap.A - 16 / 768) < 1e-12);
    t.true(Math.abs(a.randomOverlap.B - 16 / 2304) < 1e-12);
  });
}
