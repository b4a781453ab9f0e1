/**
 * extractLora: a LoRA from a base and a tuned checkpoint. Synthetic pairs whose difference
 * is a planted low-rank update plus small noise are recovered to the noise level and
 * compared with the truncation of an exact float64 SVD (one-sided Jacobi) of the same
 * difference; identical inputs, missing and mis-shaped weights, and module filters are
 * refused or honoured with typed errors naming the tensor.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { EigenLoraxError, extractLora, loadAdapter, type ErrorCode, type LoraModule } from '../lib/index.js';
import { writeTensors, type FixtureTensor } from './helpers/adapter-fixtures.js';
import { floatTensor, tempDir, writeSharded } from './helpers/merge-fixtures.js';
import { gaussian, rng } from './helpers/random.js';
import * as ref from './helpers/reference.js';

async function refused(t: ExecutionContext, call: () => Promise<unknown>, code: ErrorCode, mentions: string[]) {
  const error = await t.throwsAsync(call, { instanceOf: EigenLoraxError });
  t.is(error?.code, code, error?.message);
  for (const m of mentions) t.true(error?.message.includes(m), `message should mention ${JSON.stringify(m)}: ${error?.message}`);
}

interface Planted {
  /** The planted update (rows x cols, f64). */
  update: ref.Mat64;
  spectrum: number[];
}

/** tuned = base + U diag(s) V^T + noise (sd `noise`), flattened as `shape` ([out, ...]). */
function plant(base: FixtureTensor, spectrum: number[], seed: number, noise: number): { tuned: FixtureTensor; planted: Planted } {
  const rows = base.shape[0] as number;
  const cols = (base.data as Float32Array).length / rows;
  const known = ref.withSpectrum(rows, cols, spectrum, seed);
  const update = ref.reconstruct(known.U, known.s, known.V);
  const g = gaussian(rng(seed + 7));
  const data = new Float32Array(rows * cols);
  for (let i = 0; i < data.length; i++) data[i] = (base.data as Float32Array)[i]! + update.data[i]! + noise * g();
  return { tuned: { key: base.key, shape: base.shape, data, dtype: base.dtype ?? 'F32' }, planted: { update, spectrum } };
}

/** The f64 difference of what was stored. */
function difference(base: FixtureTensor, tuned: FixtureTensor): ref.Mat64 {
  const rows = base.shape[0] as number;
  const cols = (base.data as Float32Array).length / rows;
  const out = ref.zeros(rows, cols);
  for (let i = 0; i < out.data.length; i++) out.data[i] = tuned.data![i]! - base.data![i]!;
  return out;
}

/** scale * B A as f64 (rows x cols), transposed when asked. */
function product(m: LoraModule, transposed = false): ref.Mat64 {
  const ba = ref.matmul(m.B, m.A);
  for (let i = 0; i < ba.data.length; i++) ba.data[i] = ba.data[i]! * m.scale;
  return transposed ? ref.transpose(ba) : ba;
}

/** Truncated exact SVD: U_k S_k V_k^T and the energy fraction it holds. */
function exactTruncation(d: ref.Mat64, k: number): { approx: ref.Mat64; captured: number } {
  const svd = ref.jacobiSvd(d);
  const approx = ref.reconstruct(ref.leftCols(svd.U, k), svd.S.subarray(0, k), ref.leftCols(svd.V, k));
  let kept = 0;
  let all = 0;
  svd.S.forEach((s, i) => {
    all += s * s;
    if (i < k) kept += s * s;
  });
  return { approx, captured: kept / all };
}

const layer = (i: number) => `model.layers.${i}`;

async function pair(dir: string) {
  const base: FixtureTensor[] = [
    floatTensor(`${layer(0)}.self_attn.q_proj.weight`, [48, 40], 1),
    floatTensor(`${layer(0)}.self_attn.q_proj.bias`, [48], 2),
    floatTensor(`${layer(0)}.mlp.up_proj.weight`, [64, 40], 3),
    floatTensor(`${layer(1)}.self_attn.q_proj.weight`, [48, 40], 4),
    floatTensor('conv.weight', [12, 6, 3, 3], 5),
    floatTensor('model.embed_tokens.weight', [30, 40], 6),
    floatTensor('model.norm.weight', [40], 7),
  ];
  const planted = new Map<string, Planted>();
  const tuned: FixtureTensor[] = [];
  base.forEach((b, i) => {
    if (b.shape.length < 2) {
      tuned.push({ ...b, data: b.data!.map((v) => v + 0.01) });
      return;
    }
    const p = plant(b, [4, 3, 2, 1], 100 + i, 1e-4);
    tuned.push(p.tuned);
    planted.set(b.key, p.planted);
  });
  await writeTensors(path.join(dir, 'base.safetensors'), base);
  await writeTensors(path.join(dir, 'tuned.safetensors'), tuned);
  return { base: new Map(base.map((b) => [b.key, b])), tuned: new Map(tuned.map((b) => [b.key, b])), planted };
}

test('a planted rank-4 update is recovered to the noise level, as an exact f64 SVD truncates it', async (t) => {
  const dir = await tempDir(t);
  const p = await pair(dir);
  const out = path.join(dir, 'adapter');
  const report = await extractLora({ base: path.join(dir, 'base.safetensors'), tuned: path.join(dir, 'tuned.safetensors'), out, rank: 4 });
  t.deepEqual(report.modules.map((m) => m.name).sort(), ['conv', 'model.layers.0.mlp.up_proj', 'model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj']);
  t.deepEqual(
    report.skipped.map((s) => s.tensor).sort(),
    ['model.embed_tokens.weight', 'model.norm.weight'],
  );
  t.deepEqual(report.unchanged, []);
  const adapter = await loadAdapter(out);
  t.is(adapter.format, 'peft');
  let energy = 0;
  let kept = 0;
  for (const m of report.modules) {
    const key = m.tensor;
    const module = adapter.modules.get(m.name) as LoraModule;
    t.is(module.rank, 4);
    t.is(m.rank, 4);
    const d = difference(p.base.get(key)!, p.tuned.get(key)!);
    const exact = exactTruncation(d, 4);
    const ba = product(module);
    const norm = ref.frobenius(d);
    // Same rank-4 truncation as the exact SVD, to f32 rounding.
    t.true(ref.frobeniusDistance(ba, exact.approx) / norm < 2e-5, `${key}: ${ref.frobeniusDistance(ba, exact.approx) / norm}`);
    // The planted update, to the noise level (noise norm ~ 1e-4 sqrt(n) against ||D|| ~ 5.5).
    const noiseNorm = 1e-4 * Math.sqrt(d.data.length);
    t.true(ref.frobeniusDistance(ba, p.planted.get(key)!.update) < 1.5 * noiseNorm, `${key}: ${ref.frobeniusDistance(ba, p.planted.get(key)!.update)} vs noise ${noiseNorm}`);
    t.true(Math.abs(m.norm - norm) / norm < 1e-6);
    t.true(Math.abs(m.captured - exact.captured) < 1e-5, `${m.captured} vs ${exact.captured}`);
    t.true(Math.abs(m.relativeError - ref.frobeniusDistance(ba, d) / norm) < 1e-4);
    energy += norm * norm;
    kept += exact.captured * norm * norm;
  }
  t.true(Math.abs(report.total.captured - kept / energy) < 1e-5);
  t.true(Math.abs(report.total.norm - Math.sqrt(energy)) / Math.sqrt(energy) < 1e-6);
  // Conv: A stored [r, in, kh, kw], B [out, r, 1, 1], A flattened as kohya does.
  const conv = adapter.modules.get('conv') as LoraModule;
  t.deepEqual(conv.shapes, { A: [4, 6, 3, 3], B: [12, 4, 1, 1] });
  t.is(conv.layout, 'conv');
  t.deepEqual(conv.convKernel, [3, 3]);
});

test('threshold picks the smallest rank holding that energy; rank caps it', async (t) => {
  const dir = await tempDir(t);
  await pair(dir);
  const common = { base: path.join(dir, 'base.safetensors'), tuned: path.join(dir, 'tuned.safetensors'), modules: ['q_proj'] };
  // Spectrum [4, 3, 2, 1]: energies 16, 25, 29, 30 of 30.
  const r90 = await extractLora({ ...common, out: path.join(dir, 'a'), threshold: 0.9 });
  t.deepEqual(r90.modules.map((m) => m.rank), [3, 3]);
  for (const m of r90.modules) t.true(Math.abs(m.captured - 29 / 30) < 1e-3, String(m.captured));
  const capped = await extractLora({ ...common, out: path.join(dir, 'b'), threshold: 0.99, rank: 2 });
  t.deepEqual(capped.modules.map((m) => m.rank), [2, 2]);
  const half = await extractLora({ ...common, out: path.join(dir, 'c'), threshold: 0.5 });
  t.deepEqual(half.modules.map((m) => m.rank), [1, 1]);
  t.deepEqual((await loadAdapter(path.join(dir, 'a'))).modules.get('model.layers.0.self_attn.q_proj')?.rank, 3);
});

test('module patterns: PEFT-style trailing matches and regular expressions; a pattern that selects nothing is refused', async (t) => {
  const dir = await tempDir(t);
  await pair(dir);
  const common = { base: path.join(dir, 'base.safetensors'), tuned: path.join(dir, 'tuned.safetensors'), rank: 2 };
  const q = await extractLora({ ...common, out: path.join(dir, 'q'), modules: ['q_proj'] });
  t.deepEqual(q.modules.map((m) => m.name), ['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj']);
  const layer0 = await extractLora({ ...common, out: path.join(dir, 'l0'), modules: ['layers\\.0\\..*', 'conv'] });
  t.deepEqual(layer0.modules.map((m) => m.name).sort(), ['conv', 'model.layers.0.mlp.up_proj', 'model.layers.0.self_attn.q_proj']);
  const fn = await extractLora({ ...common, out: path.join(dir, 'f'), modules: (name) => name.endsWith('up_proj') });
  t.deepEqual(fn.modules.map((m) => m.name), ['model.layers.0.mlp.up_proj']);
  await refused(t, () => extractLora({ ...common, out: path.join(dir, 'x'), modules: ['q_proj', 'k_proj'] }), 'ERR_INVALID_ARGUMENT', ['options.modules', 'k_proj']);
  // An embedding table is extracted (as an embedding LoRA, B A = D^T) only when selected.
  const emb = await extractLora({ ...common, out: path.join(dir, 'e'), modules: ['embed_tokens'], rank: 4 });
  t.is(emb.modules[0]?.layout, 'embedding');
  const adapter = await loadAdapter(path.join(dir, 'e'));
  const m = adapter.modules.get('model.embed_tokens') as LoraModule;
  t.is(m.layout, 'embedding');
  t.deepEqual(m.shapes, { A: [4, 30], B: [40, 4] });
  t.true(emb.modules[0]!.captured > 0.9999);
});

test('identical checkpoints: nothing to extract; unchanged weights are listed and left out', async (t) => {
  const dir = await tempDir(t);
  const p = await pair(dir);
  const out = path.join(dir, 'out');
  await refused(
    t,
    () => extractLora({ base: path.join(dir, 'base.safetensors'), tuned: path.join(dir, 'base.safetensors'), out, rank: 4 }),
    'ERR_NOTHING_TO_EXTRACT',
    ['nothing to extract', 'identical'],
  );
  // One weight changed, the others not.
  const tuned = [...p.base.values()].map((b) => (b.key === 'conv.weight' ? p.tuned.get(b.key)! : b));
  await writeTensors(path.join(dir, 'one.safetensors'), tuned);
  const report = await extractLora({ base: path.join(dir, 'base.safetensors'), tuned: path.join(dir, 'one.safetensors'), out, rank: 4 });
  t.deepEqual(report.modules.map((m) => m.name), ['conv']);
  t.is(report.unchanged.length, 3);
  t.deepEqual([...(await loadAdapter(out)).modules.keys()], ['conv']);
});

test('shape mismatch and missing weights are refused naming the tensor, before anything is written', async (t) => {
  const dir = await tempDir(t);
  const p = await pair(dir);
  const out = path.join(dir, 'out');
  const bad = [...p.tuned.values()].map((x) => (x.key === 'model.layers.0.mlp.up_proj.weight' ? floatTensor(x.key, [64, 41], 9) : x));
  await writeTensors(path.join(dir, 'bad.safetensors'), bad);
  const call = () => extractLora({ base: path.join(dir, 'base.safetensors'), tuned: path.join(dir, 'bad.safetensors'), out, rank: 2 });
  await refused(t, call, 'ERR_SHAPE_MISMATCH', ['model.layers.0.mlp.up_proj.weight', '[64, 40]', '[64, 41]']);
  // Filtering the module out makes it work.
  const ok = await extractLora({ base: path.join(dir, 'base.safetensors'), tuned: path.join(dir, 'bad.safetensors'), out, rank: 2, modules: ['q_proj'] });
  t.is(ok.modules.length, 2);
  const missing = [...p.tuned.values()].filter((x) => x.key !== 'conv.weight');
  await writeTensors(path.join(dir, 'missing.safetensors'), missing);
  await refused(t, () => extractLora({ base: path.join(dir, 'base.safetensors'), tuned: path.join(dir, 'missing.safetensors'), out: path.join(dir, 'o2'), rank: 2 }), 'ERR_TENSOR_NOT_FOUND', ['conv.weight']);
  await t.throwsAsync(() => import('node:fs/promises').then((fs) => fs.stat(path.join(dir, 'o2'))));
});

test('options are checked: rank or threshold, threshold range, formats', async (t) => {
  const dir = await tempDir(t);
  await pair(dir);
  const common = { base: path.join(dir, 'base.safetensors'), tuned: path.join(dir, 'tuned.safetensors'), out: path.join(dir, 'o') };
  await refused(t, () => extractLora({ ...common }), 'ERR_INVALID_ARGUMENT', ['rank']);
  await refused(t, () => extractLora({ ...common, threshold: 1.5 }), 'ERR_INVALID_ARGUMENT', ['options.threshold']);
  await refused(t, () => extractLora({ ...common, rank: 0 }), 'ERR_INVALID_ARGUMENT', ['options.rank']);
  await refused(t, () => extractLora({ ...common, rank: 2, format: 'onnx' as never }), 'ERR_INVALID_ARGUMENT', ['options.format']);
  await refused(t, () => extractLora({ ...common, rank: 2, bogus: 1 } as never), 'ERR_INVALID_ARGUMENT', ['options.bogus']);
  // A kohya file cannot name `model.layers...` without a component prefix: refused before any SVD.
  await refused(t, () => extractLora({ ...common, rank: 2, format: 'kohya', out: path.join(dir, 'k.safetensors') }), 'ERR_ADAPTER_UNSUPPORTED', ['namePrefix']);
});

test('sharded bf16 checkpoints, a diffusers U-Net prefix into a kohya file, fan_in_fan_out weights', async (t) => {
  const dir = await tempDir(t);
  const names = ['down_blocks.0.attentions.0.proj_in.weight', 'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight', 'mid_block.resnets.0.conv1.weight'];
  const base = [floatTensor(names[0]!, [32, 32, 1, 1], 1, 'BF16'), floatTensor(names[1]!, [32, 32], 2, 'BF16'), floatTensor(names[2]!, [16, 8, 3, 3], 3, 'BF16')];
  await mkdir(path.join(dir, 'base'));
  const rounded = (x: FixtureTensor): FixtureTensor => {
    // What a bf16 store keeps: the top 16 bits (round to nearest even).
    const bits = new Uint32Array(new Float32Array(x.data!).buffer);
    for (let i = 0; i < bits.length; i++) bits[i] = ((bits[i]! + 0x7fff + ((bits[i]! >>> 16) & 1)) & 0xffff0000) >>> 0;
    return { ...x, data: new Float32Array(bits.buffer) };
  };
  const baseStored = base.map(rounded);
  const tuned = base.map((b, i) => rounded(plant(b, [2, 1], 50 + i, 0).tuned));
  await writeSharded(path.join(dir, 'base'), [{ name: 'a.safetensors', tensors: baseStored.slice(0, 2) }, { name: 'b.safetensors', tensors: baseStored.slice(2) }], 'diffusion_pytorch_model.safetensors.index.json');
  await writeTensors(path.join(dir, 'tuned.safetensors'), tuned);
  const out = path.join(dir, 'k.safetensors');
  const report = await extractLora({ base: path.join(dir, 'base'), tuned: path.join(dir, 'tuned.safetensors'), out, rank: 8, format: 'kohya', namePrefix: 'unet.' });
  t.is(report.format, 'kohya');
  const adapter = await loadAdapter(out);
  t.is(adapter.format, 'kohya');
  t.deepEqual([...adapter.modules.keys()].sort(), names.map((n) => `unet.${n.slice(0, -'.weight'.length)}`).sort());
  const m = adapter.modules.get('unet.mid_block.resnets.0.conv1') as LoraModule;
  t.is(m.dtypes.A, 'BF16');
  t.deepEqual(m.shapes.A, [8, 8, 3, 3]);
  for (const e of report.modules) t.true(e.captured > 0.999, `${e.name}: ${e.captured}`);

  // GPT-2 Conv1D weights are stored [in, out]: B A is the transpose of the difference.
  const g = [floatTensor('h.0.attn.c_attn.weight', [24, 72], 1)];
  const gp = plant(g[0]!, [3, 2, 1], 9, 0);
  await writeTensors(path.join(dir, 'g0.safetensors'), g);
  await writeTensors(path.join(dir, 'g1.safetensors'), [gp.tuned]);
  await extractLora({ base: path.join(dir, 'g0.safetensors'), tuned: path.join(dir, 'g1.safetensors'), out: path.join(dir, 'g'), rank: 3, fanInFanOut: true, namePrefix: 'transformer.' });
  const ga = await loadAdapter(path.join(dir, 'g'));
  const gm = ga.modules.get('transformer.h.0.attn.c_attn') as LoraModule;
  t.true(gm.fanInFanOut);
  t.deepEqual([gm.inFeatures, gm.outFeatures], [24, 72]);
  const d = difference(g[0]!, gp.tuned);
  t.true(ref.frobeniusDistance(product(gm, true), d) / ref.frobenius(d) < 1e-5);
});
