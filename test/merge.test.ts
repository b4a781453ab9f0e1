/**
 * mergeIntoBase and `eigenlorax merge` on checkpoints and adapters generated here: every
 * changed weight against a float64 reference computed entry by entry, merge then unmerge
 * per dtype within a stated bound, fan_in_fan_out and conv LoRA by hand, sharded bases,
 * several weighted adapters, and every refusal with nothing written.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import {
  EigenLoraxError,
  loadAdapter,
  mergeIntoBase,
  openAdapter,
  type ErrorCode,
  type LoraAdapter,
  type LoraModule,
  type Matrix,
  type MergeIntoBaseOptions,
  type MergeReport,
} from '../lib/index.js';
import { addLowRankUpdates, type UpdateTerm } from '../lib/merge/update.js';
import { eigenlorax as runCli } from './helpers/cli.js';
import { basePeftConfig, kohyaSdModules, peftTensors, writeKohya, writePeft, writeTensors, type FixtureTensor } from './helpers/adapter-fixtures.js';
import {
  differingBytesOutside,
  floatTensor,
  logStats,
  rawTensor,
  readCheckpoint,
  referenceDelta,
  referenceMagnitude,
  tempDir,
  temporaryFiles,
  ulp,
  writeSharded,
  type StoredTensor,
} from './helpers/merge-fixtures.js';
import { randomMatrix } from './helpers/random.js';

const U32 = 2 ** -24; // f32 unit roundoff

// ---------------------------------------------------------------------------------------
// Fixtures

/** A small Llama-like base: two adapted projections per layer, other tensors of every kind. */
function llamaBase(dtype: 'F32' | 'F16' | 'BF16', layers = 2): FixtureTensor[] {
  const tensors: FixtureTensor[] = [];
  let seed = 100;
  for (let l = 0; l < layers; l++) {
    for (const p of ['q_proj', 'k_proj', 'v_proj']) tensors.push(floatTensor(`model.layers.${l}.self_attn.${p}.weight`, [24, 16], seed++, dtype));
    tensors.push(floatTensor(`model.layers.${l}.input_layernorm.weight`, [16], seed++, dtype));
  }
  tensors.push(floatTensor('model.embed_tokens.weight', [40, 16], seed++, dtype));
  tensors.push(floatTensor('lm_head.weight', [40, 16], seed++, 'F32'));
  tensors.push(rawTensor('model.position_ids', [1, 4], 'I64', new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0])));
  tensors.push(rawTensor('model.mask', [5], 'U8', new Uint8Array([1, 0, 1, 1, 0])));
  return tensors;
}

const llamaMetadata = { format: 'pt', note: 'synthetic base' };

/** A PEFT adapter on q_proj and v_proj of `layers` layers (rank 4, alpha 8: scale 2). */
async function llamaAdapter(dir: string, options: { layers?: number; alpha?: number; names?: string[] } = {}) {
  const names =
    options.names ??
    Array.from({ length: options.layers ?? 2 }, (_, l) => [`model.layers.${l}.self_attn.q_proj`, `model.layers.${l}.self_attn.v_proj`]).flat();
  const tensors = peftTensors(names.map((name) => ({ name, rank: 4, in: 16, out: 24 })));
  await writePeft(dir, tensors, { ...basePeftConfig(), lora_alpha: options.alpha ?? 8, target_modules: ['q_proj', 'v_proj'] });
  return dir;
}

interface Term {
  A: Matrix;
  B: Matrix;
  coefficient: number;
  transposed: boolean;
}

/** The terms each module of `adapter` adds, by base key (`<name>.weight` unless mapped). */
function termsOf(adapter: LoraAdapter, coefficient: number, keyOf: (name: string) => string = (n) => `${n}.weight`): Map<string, Term[]> {
  const out = new Map<string, Term[]>();
  for (const m of adapter.modules.values()) {
    const key = keyOf(m.name);
    const list = out.get(key) ?? [];
    list.push({ A: m.A, B: m.B, coefficient: coefficient * m.scale, transposed: m.layout === 'embedding' || m.fanInFanOut });
    out.set(key, list);
  }
  return out;
}

function mergeTerms(...maps: Array<Map<string, Term[]>>): Map<string, Term[]> {
  const out = new Map<string, Term[]>();
  for (const map of maps) for (const [k, v] of map) out.set(k, [...(out.get(k) ?? []), ...v]);
  return out;
}

/** W + sum of terms in f64, and the magnitude that bounds the f32 product's rounding. */
function reference(w: Float32Array, terms: Term[]): { ref: Float64Array; magnitude: Float64Array } {
  const ref = Float64Array.from(w);
  const magnitude = Float64Array.from(w, Math.abs);
  for (const term of terms) {
    const d = referenceDelta(term.A, term.B, term.coefficient, term.transposed);
    const m = referenceMagnitude(term.A, term.B, term.coefficient, term.transposed);
    for (let i = 0; i < ref.length; i++) {
      ref[i] = (ref[i] as number) + (d[i] as number);
      magnitude[i] = (magnitude[i] as number) + (m[i] as number);
    }
  }
  return { ref, magnitude };
}

/**
 * Checks every changed tensor against W + sum of its terms (f64), and every other tensor
 * byte for byte. Bounds, per entry, with M = |W| + sum_k |c B_ik A_kj| (the magnitude of
 * what is summed):
 *  - F32: |W' - ref| <= (r + 4) u M, u = 2^-24 (the f32 product and the one addition);
 *  - BF16/F16: |W' - ref| <= 1/2 ulp_dtype(ref) + 2 (r + 4) u M: the f32 value v is within
 *    d = (r + 4) u M of ref, and rounding v to the dtype's grid moves it by at most
 *    dist(v, grid) <= dist(ref, grid) + d <= 1/2 ulp(ref) + d.
 */
function checkMerged(t: ExecutionContext, base: Map<string, StoredTensor>, merged: Map<string, StoredTensor>, expected: Map<string, Term[]>, label: string) {
  t.deepEqual([...merged.keys()].sort(), [...base.keys()].sort(), `${label}: same keys`);
  let worst = 0;
  let changed = 0;
  for (const [key, before] of base) {
    const after = merged.get(key) as StoredTensor;
    t.is(after.dtype, before.dtype, `${label}: ${key} dtype`);
    t.deepEqual(after.shape, before.shape, `${label}: ${key} shape`);
    const terms = expected.get(key);
    if (terms === undefined) continue;
    changed++;
    const { ref, magnitude } = reference(before.values as Float32Array, terms);
    const rank = terms.reduce((n, term) => n + term.A.rows, 0);
    const values = after.values as Float32Array;
    let bad = 0;
    for (let i = 0; i < ref.length; i++) {
      const productBound = (rank + 4) * U32 * (magnitude[i] as number);
      const bound = before.dtype === 'F32' || before.dtype === 'F64' ? productBound : 0.5 * ulp(ref[i] as number, before.dtype as 'BF16' | 'F16') + 2 * productBound;
      const error = Math.abs((values[i] as number) - (ref[i] as number));
      worst = Math.max(worst, error / bound);
      if (error > bound) bad++;
    }
    t.is(bad, 0, `${label}: ${key}: ${bad} of ${ref.length} entries outside the bound`);
  }
  t.is(changed, expected.size, `${label}: every expected tensor is in the base`);
  t.log(`${label}: worst error / bound = ${worst.toPrecision(3)} over ${changed} changed tensors`);
}

/** The byte ranges (in the output) of the tensors a report says it changed. */
function changedRanges(report: MergeReport, out: Map<string, StoredTensor>, file?: string): Array<[number, number]> {
  return report.merged
    .map((m) => out.get(m.key) as StoredTensor)
    .filter((s) => file === undefined || s.file === file)
    .map((s) => [s.offset, s.byteLength] as [number, number]);
}

async function mergeAndRead(options: MergeIntoBaseOptions): Promise<{ report: MergeReport; out: Map<string, StoredTensor> }> {
  const report = await mergeIntoBase(options);
  return { report, out: await readCheckpoint(report.output) };
}

async function expectRefused(t: ExecutionContext, options: MergeIntoBaseOptions, code: ErrorCode, includes: string[] = []): Promise<EigenLoraxError> {
  const error = await t.throwsAsync(mergeIntoBase(options), { instanceOf: EigenLoraxError });
  t.is(error?.code, code, error?.message);
  for (const s of includes) t.true(error?.message.includes(s), `message names ${s}: ${error?.message}`);
  return error as EigenLoraxError;
}

// ---------------------------------------------------------------------------------------
// Merge and unmerge per dtype

test('f32: each changed weight is W + s B A (f64 reference); header, metadata and untouched tensors byte for byte; unmerge restores W within 2 f32 roundings', async (t) => {
  const dir = await tempDir(t);
  const baseFile = path.join(dir, 'base.safetensors');
  await writeTensors(baseFile, llamaBase('F32'), llamaMetadata);
  const adapterDir = await llamaAdapter(path.join(dir, 'adapter'));
  const adapter = await loadAdapter(adapterDir);
  const base = await readCheckpoint(baseFile);

  const { report, out } = await mergeAndRead({ base: baseFile, adapters: [{ adapter: adapterDir }], output: path.join(dir, 'merged.safetensors') });
  t.is(report.tensors.touched, 4);
  t.is(report.tensors.total, base.size);
  t.is(report.tensors.copied, base.size - 4);
  t.deepEqual(
    report.merged.map((m) => m.key),
    ['model.layers.0.self_attn.q_proj.weight', 'model.layers.0.self_attn.v_proj.weight', 'model.layers.1.self_attn.q_proj.weight', 'model.layers.1.self_attn.v_proj.weight'],
  );
  t.true(report.merged.every((m) => m.modules.length === 1 && m.modules[0]?.coefficient === 2 && !m.modules[0]?.transposed));
  t.is(report.bytes.touched, 4 * 24 * 16 * 4);
  t.is(report.files.length, 1);
  checkMerged(t, base, out, termsOf(adapter, 1), 'f32 merge');

  // Everything but the changed tensors' bytes (header with __metadata__, the other tensors) is identical.
  const same = await differingBytesOutside(baseFile, report.output, changedRanges(report, out));
  t.deepEqual(same, { sameSize: true, differing: 0 });
  t.deepEqual(await temporaryFiles(await readdir(dir)), []);

  // Unmerge: |W'' - W| <= 2^-24 (|W'| + |W''|) <= 2^-23 max(|W|, |W'|) (1 + 2^-22): the update
  // subtracted is the same f32 product, negated exactly, so only the two additions round.
  const back = await mergeAndRead({ base: report.output, adapters: [adapterDir], output: path.join(dir, 'unmerged.safetensors'), unmerge: true });
  t.true(back.report.unmerge);
  let exact = 0;
  let total = 0;
  for (const m of report.merged) {
    const w = base.get(m.key)?.values as Float32Array;
    const w1 = out.get(m.key)?.values as Float32Array;
    const w2 = back.out.get(m.key)?.values as Float32Array;
    for (let i = 0; i < w.length; i++) {
      const bound = 2 ** -23 * Math.max(Math.abs(w[i] as number), Math.abs(w1[i] as number)) * (1 + 2 ** -22);
      if (Math.abs((w2[i] as number) - (w[i] as number)) > bound) t.fail(`${m.key}[${i}]: ${w2[i]} vs ${w[i]}`);
      if (w2[i] === w[i]) exact++;
      total++;
    }
  }
  logStats(t, 'f32 round trip', { 'bit-exact entries': `${exact} of ${total}` });
  t.deepEqual(await differingBytesOutside(baseFile, back.report.output, changedRanges(report, out)), { sameSize: true, differing: 0 });
});

for (const dtype of ['BF16', 'F16'] as const) {
  test(`${dtype}: merged weights are the dtype's rounding of W + s B A; merge then unmerge restores W within 1 ulp`, async (t) => {
    const dir = await tempDir(t);
    const baseFile = path.join(dir, 'base.safetensors');
    await writeTensors(baseFile, llamaBase(dtype), llamaMetadata);
    const adapterDir = await llamaAdapter(path.join(dir, 'adapter'));
    const adapter = await loadAdapter(adapterDir);
    const base = await readCheckpoint(baseFile);

    const { report, out } = await mergeAndRead({ base: baseFile, adapters: [{ adapter: adapterDir }], output: path.join(dir, 'merged.safetensors') });
    t.true(report.merged.every((m) => m.dtype === dtype));
    checkMerged(t, base, out, termsOf(adapter, 1), `${dtype} merge`);
    t.deepEqual(await differingBytesOutside(baseFile, report.output, changedRanges(report, out)), { sameSize: true, differing: 0 });

    // Unmerge. W' = W + D + e1 with |e1| <= ulp(W')/2; W'' = round(W' - D) = round(W + e1), so
    // |W'' - W| <= ulp(W')/2 + ulp(W'')/2 <= 1 ulp of max(|W|, |W'|) (plus f32 noise far below it).
    const back = await mergeAndRead({ base: report.output, adapters: [adapterDir], output: path.join(dir, 'unmerged.safetensors'), unmerge: true });
    let exact = 0;
    let total = 0;
    let worstUlps = 0;
    let changedByMerge = 0;
    for (const m of report.merged) {
      const w = base.get(m.key)?.values as Float32Array;
      const w1 = out.get(m.key)?.values as Float32Array;
      const w2 = back.out.get(m.key)?.values as Float32Array;
      for (let i = 0; i < w.length; i++) {
        const unit = ulp(Math.max(Math.abs(w[i] as number), Math.abs(w1[i] as number)), dtype);
        const error = Math.abs((w2[i] as number) - (w[i] as number));
        worstUlps = Math.max(worstUlps, error / unit);
        if (error > unit) t.fail(`${m.key}[${i}]: ${w2[i]} vs ${w[i]} (${error / unit} ulp)`);
        if (w2[i] === w[i]) exact++;
        if (w1[i] !== w[i]) changedByMerge++;
        total++;
      }
    }
    t.true(changedByMerge > total / 2, 'the update is large enough to change most entries');
    logStats(t, `${dtype} round trip`, { 'restored exactly': `${exact} of ${total}`, 'changed by the merge': changedByMerge, 'worst error (ulp)': worstUlps });
    t.pass();
  });
}

test('mixed dtypes in one file (F32, BF16, F16, F64 weights, in any order) are each written back in their own dtype', async (t) => {
  const dir = await tempDir(t);
  const baseFile = path.join(dir, 'base.safetensors');
  const dtypes = ['F32', 'BF16', 'F16', 'F64', 'F32', 'F32', 'BF16', 'F64'] as const;
  const names = dtypes.map((_, i) => `model.layers.${i}.self_attn.q_proj`);
  await writeTensors(baseFile, [...names.map((n, i) => floatTensor(`${n}.weight`, [24, 16], 50 + i, dtypes[i])), floatTensor('model.norm.weight', [16], 9, 'F16')]);
  const adapterDir = await llamaAdapter(path.join(dir, 'adapter'), { names });
  const base = await readCheckpoint(baseFile);
  const { report, out } = await mergeAndRead({ base: baseFile, adapters: [adapterDir], output: path.join(dir, 'm.safetensors') });
  t.is(report.tensors.touched, 8);
  t.deepEqual(report.merged.map((m) => m.dtype).sort(), [...dtypes].sort());
  checkMerged(t, base, out, termsOf(await loadAdapter(adapterDir), 1), 'mixed dtypes');
  t.deepEqual(await differingBytesOutside(baseFile, report.output, changedRanges(report, out)), { sameSize: true, differing: 0 });
});

// ---------------------------------------------------------------------------------------
// Orientation and layouts

test('fan_in_fan_out (GPT-2 Conv1D, stored in x out): W[i][j] += s sum_k A[k][i] B[j][k], also on a square weight', async (t) => {
  const dir = await tempDir(t);
  const baseFile = path.join(dir, 'gpt2.safetensors');
  const tensors: FixtureTensor[] = [];
  for (let l = 0; l < 2; l++) {
    tensors.push(floatTensor(`transformer.h.${l}.attn.c_attn.weight`, [16, 48], 10 + l));
    tensors.push(floatTensor(`transformer.h.${l}.attn.c_attn.bias`, [48], 20 + l));
    tensors.push(floatTensor(`transformer.h.${l}.attn.c_proj.weight`, [16, 16], 30 + l));
  }
  tensors.push(floatTensor('transformer.wte.weight', [50, 16], 40));
  await writeTensors(baseFile, tensors, { format: 'pt' });
  const names = ['transformer.h.0.attn.c_attn', 'transformer.h.1.attn.c_attn', 'transformer.h.0.attn.c_proj'];
  const adapterTensors = peftTensors(names.map((name) => ({ name, rank: 4, in: 16, out: name.endsWith('c_proj') ? 16 : 48 })));
  const adapterDir = path.join(dir, 'adapter');
  await writePeft(adapterDir, adapterTensors, { ...basePeftConfig(), fan_in_fan_out: true, lora_alpha: 6, target_modules: ['c_attn', 'c_proj'] });
  const adapter = await loadAdapter(adapterDir);
  const base = await readCheckpoint(baseFile);
  const { report, out } = await mergeAndRead({ base: baseFile, adapters: [adapterDir], output: path.join(dir, 'out') });
  t.is(report.output, path.join(dir, 'out', 'gpt2.safetensors'));
  t.deepEqual(report.merged.map((m) => m.key).sort(), names.map((n) => `${n}.weight`).sort());
  t.true(report.merged.every((m) => m.modules[0]?.transposed === true));

  // By hand, in f64, straight from the definition of Conv1D: y = x W + b with W in x out.
  let worst = 0;
  for (const name of names) {
    const m = adapter.modules.get(name) as LoraModule;
    const w = base.get(`${name}.weight`)?.values as Float32Array;
    const merged = out.get(`${name}.weight`)?.values as Float32Array;
    const dIn = m.A.cols;
    const dOut = m.B.rows;
    for (let i = 0; i < dIn; i++) {
      for (let j = 0; j < dOut; j++) {
        let sum = 0;
        let magnitude = Math.abs(w[i * dOut + j] as number);
        for (let k = 0; k < m.rank; k++) {
          const p = (m.A.data[k * dIn + i] as number) * (m.B.data[j * m.rank + k] as number);
          sum += p;
          magnitude += Math.abs(m.scale * p);
        }
        const expected = (w[i * dOut + j] as number) + m.scale * sum;
        const error = Math.abs((merged[i * dOut + j] as number) - expected);
        worst = Math.max(worst, error / magnitude);
        if (error > 8 * U32 * magnitude) t.fail(`${name}[${i}][${j}]: ${merged[i * dOut + j]} vs ${expected}`);
      }
    }
  }
  t.log(`fan_in_fan_out: worst relative error ${worst.toExponential(2)} (bound ${(8 * U32).toExponential(2)})`);
  // The untransposed update would have been wrong on the square c_proj.
  const m = adapter.modules.get('transformer.h.0.attn.c_proj') as LoraModule;
  const wrong = referenceDelta(m.A, m.B, m.scale, false);
  const right = referenceDelta(m.A, m.B, m.scale, true);
  t.true(wrong.some((v, i) => Math.abs(v - (right[i] as number)) > 1e-3));
});

test('conv LoRA (kohya, 3x3 and 1x1) adds up x down flattened to the out x in x kh x kw weight; a linear LoRA on the same U-Net; unet. prefix dropped to find the keys', async (t) => {
  const dir = await tempDir(t);
  const all = kohyaSdModules();
  const specs = all.filter((m) => /resnets_0_conv1|proj_in|attn1_to_q$/.test(m.loraName));
  t.is(specs.length, 3);
  const loraFile = path.join(dir, 'lora.safetensors');
  await writeKohya(loraFile, specs);
  const adapter = await loadAdapter(loraFile);
  const conv = adapter.modules.get('unet.down_blocks.0.resnets.0.conv1') as LoraModule;
  t.is(conv.layout, 'conv');
  t.deepEqual(conv.convKernel, [3, 3]);

  const baseFile = path.join(dir, 'diffusion_pytorch_model.safetensors');
  await writeTensors(baseFile, [
    floatTensor('down_blocks.0.resnets.0.conv1.weight', [32, 16, 3, 3], 1, 'F16'),
    floatTensor('down_blocks.0.resnets.0.conv1.bias', [32], 2, 'F16'),
    floatTensor('down_blocks.0.attentions.0.proj_in.weight', [32, 32, 1, 1], 3, 'F16'),
    floatTensor('down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight', [32, 32], 4, 'F16'),
    floatTensor('down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight', [32, 32], 5, 'F16'),
  ]);
  const base = await readCheckpoint(baseFile);
  const { report, out } = await mergeAndRead({ base: baseFile, adapters: [loraFile], output: path.join(dir, 'out') });
  t.is(report.output, path.join(dir, 'out', 'diffusion_pytorch_model.safetensors'));
  t.is(report.tensors.touched, 3);

  // By hand for the 3x3 conv: dW[o][c][y][x] = s sum_k up[o][k] down[k][c][y][x], rounded once to f16.
  const w = base.get('down_blocks.0.resnets.0.conv1.weight')?.values as Float32Array;
  const merged = out.get('down_blocks.0.resnets.0.conv1.weight')?.values as Float32Array;
  const down = conv.A.data; // r x (16*3*3)
  const up = conv.B.data; // 32 x r
  for (let o = 0; o < 32; o++) {
    for (let c = 0; c < 16; c++) {
      for (let y = 0; y < 3; y++) {
        for (let x = 0; x < 3; x++) {
          const flat = (c * 3 + y) * 3 + x;
          let sum = 0;
          let magnitude = 0;
          for (let k = 0; k < conv.rank; k++) {
            const p = (up[o * conv.rank + k] as number) * (down[k * 144 + flat] as number);
            sum += p;
            magnitude += Math.abs(p * conv.scale);
          }
          const at = o * 144 + flat;
          const expected = (w[at] as number) + conv.scale * sum;
          const bound = 0.5 * ulp(expected, 'F16') + 16 * U32 * (magnitude + Math.abs(w[at] as number));
          if (Math.abs((merged[at] as number) - expected) > bound) t.fail(`conv1[${o}][${c}][${y}][${x}]: ${merged[at]} vs ${expected}`);
        }
      }
    }
  }
  checkMerged(t, base, out, termsOf(adapter, 1, (n) => `${n.slice('unet.'.length)}.weight`), 'kohya conv + linear');
  t.deepEqual(await differingBytesOutside(baseFile, report.output, changedRanges(report, out)), { sameSize: true, differing: 0 });
});

test('embedding LoRA (PEFT lora_embedding_A/B) adds (B A)^T to the num_embeddings x dim table', async (t) => {
  const dir = await tempDir(t);
  const baseFile = path.join(dir, 'base.safetensors');
  await writeTensors(baseFile, llamaBase('F32', 1));
  const adapterDir = path.join(dir, 'adapter');
  await writePeft(
    adapterDir,
    peftTensors([
      { name: 'model.embed_tokens', rank: 4, in: 40, out: 16, embedding: true },
      { name: 'model.layers.0.self_attn.q_proj', rank: 4, in: 16, out: 24 },
    ]),
    { ...basePeftConfig(), target_modules: ['embed_tokens', 'q_proj'] },
  );
  const adapter = await loadAdapter(adapterDir);
  t.is(adapter.modules.get('model.embed_tokens')?.layout, 'embedding');
  const base = await readCheckpoint(baseFile);
  const { report, out } = await mergeAndRead({ base: baseFile, adapters: [adapterDir], output: path.join(dir, 'm.safetensors') });
  t.deepEqual(
    report.merged.map((m) => [m.key, m.modules[0]?.transposed]).sort(),
    [
      ['model.embed_tokens.weight', true],
      ['model.layers.0.self_attn.q_proj.weight', false],
    ],
  );
  checkMerged(t, base, out, termsOf(adapter, 1), 'embedding');
});

// ---------------------------------------------------------------------------------------
// Sharded bases

test('sharded base: the output has the same shard names and a byte-identical index; untouched shards and tensors byte for byte', async (t) => {
  const dir = await tempDir(t);
  const baseDir = path.join(dir, 'base');
  await mkdir(baseDir);
  const shards = [
    { name: 'model-00001-of-00003.safetensors', tensors: [floatTensor('model.layers.0.self_attn.q_proj.weight', [24, 16], 1, 'BF16'), floatTensor('model.embed_tokens.weight', [40, 16], 2, 'BF16')], metadata: { format: 'pt', shard: '1' } },
    { name: 'model-00002-of-00003.safetensors', tensors: [floatTensor('model.layers.1.self_attn.q_proj.weight', [24, 16], 3, 'BF16'), floatTensor('model.layers.0.self_attn.v_proj.weight', [24, 16], 4, 'BF16'), floatTensor('model.norm.weight', [16], 5, 'BF16')] },
    { name: 'model-00003-of-00003.safetensors', tensors: [floatTensor('lm_head.weight', [40, 16], 6, 'BF16'), floatTensor('model.layers.1.self_attn.v_proj.weight', [24, 16], 7, 'F32')] },
  ];
  const index = await writeSharded(baseDir, shards);
  const adapterDir = await llamaAdapter(path.join(dir, 'adapter'), { names: ['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.0.self_attn.v_proj'] });
  const adapter = await loadAdapter(adapterDir);
  const base = await readCheckpoint(index);

  // The base given as its folder; the output a new folder.
  const outDir = path.join(dir, 'merged');
  const { report, out } = await mergeAndRead({ base: baseDir, adapters: [adapterDir], output: outDir });
  t.is(report.base, index);
  t.is(report.output, path.join(outDir, 'model.safetensors.index.json'));
  t.deepEqual(report.files, [...shards.map((s) => path.join(outDir, s.name)), path.join(outDir, 'model.safetensors.index.json')]);
  t.deepEqual((await readdir(outDir)).sort(), [...shards.map((s) => s.name), 'model.safetensors.index.json'].sort());
  t.deepEqual(await readFile(report.output), await readFile(index), 'index byte for byte');
  t.deepEqual(
    report.merged.map((m) => [m.key, m.file]),
    [
      ['model.layers.0.self_attn.q_proj.weight', 'model-00001-of-00003.safetensors'],
      ['model.layers.0.self_attn.v_proj.weight', 'model-00002-of-00003.safetensors'],
      ['model.layers.1.self_attn.q_proj.weight', 'model-00002-of-00003.safetensors'],
    ],
  );
  for (const shard of shards) {
    const outFile = path.join(outDir, shard.name);
    const diff = await differingBytesOutside(path.join(baseDir, shard.name), outFile, changedRanges(report, out, outFile));
    t.deepEqual(diff, { sameSize: true, differing: 0 }, shard.name);
  }
  t.deepEqual(await readFile(path.join(outDir, shards[2]!.name)), await readFile(path.join(baseDir, shards[2]!.name)), 'an untouched shard is copied whole');
  checkMerged(t, base, out, termsOf(adapter, 1), 'sharded bf16');

  // The output given as the index path (another name), and the merge undone from there.
  const again = await mergeIntoBase({ base: report.output, adapters: [adapterDir], output: path.join(dir, 'undone', 'weights.safetensors.index.json'), unmerge: true });
  t.is(again.output, path.join(dir, 'undone', 'weights.safetensors.index.json'));
  t.deepEqual((await readdir(path.join(dir, 'undone'))).sort(), [...shards.map((s) => s.name), 'weights.safetensors.index.json'].sort());
  const undone = await readCheckpoint(again.output);
  for (const m of report.merged) {
    const w = base.get(m.key)?.values as Float32Array;
    const w1 = out.get(m.key)?.values as Float32Array;
    const w2 = undone.get(m.key)?.values as Float32Array;
    for (let i = 0; i < w.length; i++) {
      if (Math.abs((w2[i] as number) - (w[i] as number)) > ulp(Math.max(Math.abs(w[i] as number), Math.abs(w1[i] as number)), 'BF16')) t.fail(`${m.key}[${i}]`);
    }
  }
});

// ---------------------------------------------------------------------------------------
// Several adapters

test('several adapters with weights (path, opened, in memory) and a global scale equal the sum of the individual merges', async (t) => {
  const dir = await tempDir(t);
  const baseFile = path.join(dir, 'base.safetensors');
  await writeTensors(baseFile, llamaBase('F32'), llamaMetadata);
  const a1 = await llamaAdapter(path.join(dir, 'a1'));
  const a2 = await llamaAdapter(path.join(dir, 'a2'), { names: ['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.k_proj'], alpha: 4 });
  // An adapter in memory in loadAdapter's shape, made by hand (as reconstructAdapter returns one).
  const mk = (name: string, seed: number, fanInFanOut = false): LoraModule => ({
    name,
    A: randomMatrix(3, 16, seed, 0.1),
    B: randomMatrix(24, 3, seed + 1, 0.1),
    rank: 3,
    alpha: 3,
    scale: 1.5,
    rslora: false,
    layout: 'linear',
    shapes: { A: [3, 16], B: [24, 3] },
    inFeatures: 16,
    outFeatures: 24,
    fanInFanOut,
    keys: { A: `${name}.A`, B: `${name}.B` },
    dtypes: { A: 'F32', B: 'F32' },
  });
  const inMemory: LoraAdapter = {
    format: 'peft',
    baseModel: null,
    source: null,
    modules: new Map([mk('model.layers.0.self_attn.v_proj', 5), mk('model.layers.1.self_attn.k_proj', 7)].map((m) => [m.name, m])),
    extras: new Map(),
    config: null,
    metadata: {},
  };
  const opened = await openAdapter(a2);
  t.teardown(() => opened.close());
  const weights = [0.5, -1.25, 2];
  const scale = 0.8;
  const { report, out } = await mergeAndRead({
    base: baseFile,
    adapters: [{ adapter: a1, weight: weights[0] }, { adapter: opened, weight: weights[1] }, { adapter: inMemory, weight: weights[2] }],
    output: path.join(dir, 'all.safetensors'),
    scale,
  });
  t.deepEqual(report.adapters.map((a) => [a.source, a.weight, a.modules]), [
    [a1, 0.5, 4],
    [a2, -1.25, 2],
    [null, 2, 2],
  ]);
  t.is(report.tensors.touched, 5);
  const q0 = report.merged.find((m) => m.key === 'model.layers.0.self_attn.q_proj.weight');
  t.deepEqual(q0?.modules.map((m) => [m.adapter, m.coefficient]), [
    [0, 0.8 * 0.5 * 2],
    [1, 0.8 * -1.25 * 1],
  ]);
  const base = await readCheckpoint(baseFile);
  const expected = mergeTerms(
    termsOf(await loadAdapter(a1), scale * 0.5),
    termsOf(await loadAdapter(a2), scale * -1.25),
    termsOf(inMemory, scale * 2),
  );
  checkMerged(t, base, out, expected, 'three adapters');

  // The same as merging them one after another.
  let current = baseFile;
  for (const [i, adapter] of [a1, opened, inMemory].entries()) {
    const next = path.join(dir, `step${i}.safetensors`);
    await mergeIntoBase({ base: current, adapters: [{ adapter, weight: weights[i] as number }], output: next, scale });
    current = next;
  }
  const sequential = await readCheckpoint(current);
  let worst = 0;
  for (const m of report.merged) {
    const a = out.get(m.key)?.values as Float32Array;
    const b = sequential.get(m.key)?.values as Float32Array;
    const w = base.get(m.key)?.values as Float32Array;
    for (let i = 0; i < a.length; i++) {
      const d = Math.abs((a[i] as number) - (b[i] as number)) / (Math.abs(w[i] as number) + 0.05);
      worst = Math.max(worst, d);
    }
  }
  t.true(worst < 64 * U32, `one merge vs three in a row: worst ${worst}`);
  // The opened adapter is still open and usable.
  t.is((await opened.readModule('model.layers.0.self_attn.q_proj')).rank, 4);
});

// ---------------------------------------------------------------------------------------
// Name matching

test('names: the exact key wins; else a prefix added or the first part removed, only when exactly one exists', async (t) => {
  const dir = await tempDir(t);
  // GPT-2's own checkpoint has no `transformer.` prefix: h.0.attn.c_attn.weight.
  const plain = path.join(dir, 'plain.safetensors');
  await writeTensors(plain, [floatTensor('h.0.attn.c_attn.weight', [16, 48], 1), floatTensor('wte.weight', [20, 16], 2)]);
  const adapterDir = path.join(dir, 'adapter');
  await writePeft(adapterDir, peftTensors([{ name: 'transformer.h.0.attn.c_attn', rank: 4, in: 16, out: 48 }]), { ...basePeftConfig(), fan_in_fan_out: true });
  const r1 = await mergeIntoBase({ base: plain, adapters: [adapterDir], output: path.join(dir, 'o1.safetensors') });
  t.deepEqual(r1.merged.map((m) => m.key), ['h.0.attn.c_attn.weight']);

  // Both variants exist: ambiguous, refused, both named.
  const both = path.join(dir, 'both.safetensors');
  await writeTensors(both, [floatTensor('h.0.attn.c_attn.weight', [16, 48], 1), floatTensor('model.transformer.h.0.attn.c_attn.weight', [16, 48], 3)]);
  await expectRefused(t, { base: both, adapters: [adapterDir], output: path.join(dir, 'o2.safetensors') }, 'ERR_MERGE_TARGET_NOT_FOUND', [
    'several candidates',
    'h.0.attn.c_attn.weight',
    'model.transformer.h.0.attn.c_attn.weight',
  ]);
  t.false((await readdir(dir)).includes('o2.safetensors'));

  // The exact key exists as well: it wins, the others are untouched.
  const exact = path.join(dir, 'exact.safetensors');
  await writeTensors(exact, [floatTensor('h.0.attn.c_attn.weight', [16, 48], 1), floatTensor('transformer.h.0.attn.c_attn.weight', [16, 48], 3)]);
  const r3 = await mergeIntoBase({ base: exact, adapters: [adapterDir], output: path.join(dir, 'o3.safetensors') });
  t.deepEqual(r3.merged.map((m) => m.key), ['transformer.h.0.attn.c_attn.weight']);
});

// ---------------------------------------------------------------------------------------
// Refusals: nothing written

test('missing modules: every one is listed (all adapters), and nothing is written', async (t) => {
  const dir = await tempDir(t);
  const baseFile = path.join(dir, 'base.safetensors');
  await writeTensors(baseFile, llamaBase('F32'));
  const a1 = await llamaAdapter(path.join(dir, 'a1'), { names: ['model.layers.0.self_attn.q_proj', 'model.layers.7.self_attn.q_proj', 'model.layers.9.mlp.gate_proj'] });
  const a2 = await llamaAdapter(path.join(dir, 'a2'), { names: ['model.layers.8.self_attn.v_proj', 'model.layers.1.self_attn.v_proj'] });
  const before = (await readdir(dir)).sort();
  const outDir = path.join(dir, 'out', 'nested');
  const error = await expectRefused(t, { base: baseFile, adapters: [a1, a2], output: outDir }, 'ERR_MERGE_TARGET_NOT_FOUND', [
    '3 adapter modules have no weight',
    `adapters[0] (${a1}): model.layers.7.self_attn.q_proj`,
    `adapters[0] (${a1}): model.layers.9.mlp.gate_proj`,
    `adapters[1] (${a2}): model.layers.8.self_attn.v_proj`,
    'model.layers.7.self_attn.q_proj.weight',
    baseFile,
  ]);
  t.false(error.message.includes('model.layers.0.self_attn.q_proj '), 'found modules are not listed');
  t.deepEqual((await readdir(dir)).sort(), before, 'no folder, no file, no temporary');

  // Into an existing folder, with an existing output file: both untouched.
  const existing = path.join(dir, 'existing');
  await mkdir(existing);
  await writeFile(path.join(existing, 'base.safetensors'), 'old');
  await expectRefused(t, { base: baseFile, adapters: [a1], output: existing }, 'ERR_MERGE_TARGET_NOT_FOUND');
  t.deepEqual(await readdir(existing), ['base.safetensors']);
  t.is(await readFile(path.join(existing, 'base.safetensors'), 'utf8'), 'old');
});

test('shape mismatches are all named with both shapes; non-float targets refused; nothing written', async (t) => {
  const dir = await tempDir(t);
  const baseFile = path.join(dir, 'base.safetensors');
  await writeTensors(baseFile, [
    floatTensor('model.layers.0.self_attn.q_proj.weight', [24, 20], 1),
    floatTensor('model.layers.0.self_attn.v_proj.weight', [16, 24], 2),
    floatTensor('model.layers.0.self_attn.k_proj.weight', [24, 16], 3),
    rawTensor('model.layers.0.self_attn.o_proj.weight', [24, 16], 'I32', new Uint8Array(24 * 16 * 4)),
  ]);
  const a = await llamaAdapter(path.join(dir, 'a'), { names: ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.0.self_attn.k_proj'] });
  await expectRefused(t, { base: baseFile, adapters: [a], output: path.join(dir, 'o.safetensors') }, 'ERR_SHAPE_MISMATCH', [
    '2 adapter modules do not fit',
    'model.layers.0.self_attn.q_proj.weight is F32 [24, 20]',
    'model.layers.0.self_attn.v_proj.weight is F32 [16, 24]',
    'needs [24, 16] (out x in)',
    'A 4 x 16',
  ]);
  const o = await llamaAdapter(path.join(dir, 'o'), { names: ['model.layers.0.self_attn.o_proj'] });
  await expectRefused(t, { base: baseFile, adapters: [o], output: path.join(dir, 'o.safetensors') }, 'ERR_UNSUPPORTED_DTYPE', ['o_proj.weight is I32']);
  t.deepEqual(temporaryFiles(await readdir(dir)), []);
  t.false((await readdir(dir)).includes('o.safetensors'));
});

test('the output may not be the base; an existing output is replaced only when the merge succeeds; options are checked', async (t) => {
  const dir = await tempDir(t);
  const baseFile = path.join(dir, 'base.safetensors');
  await writeTensors(baseFile, llamaBase('F32', 1));
  const a = await llamaAdapter(path.join(dir, 'a'), { layers: 1 });
  const original = await readFile(baseFile);
  await expectRefused(t, { base: baseFile, adapters: [a], output: baseFile }, 'ERR_INVALID_ARGUMENT', ['overwrite a file of the base']);
  await expectRefused(t, { base: baseFile, adapters: [a], output: dir }, 'ERR_INVALID_ARGUMENT', ['overwrite a file of the base']);
  t.deepEqual(await readFile(baseFile), original);

  const target = path.join(dir, 'out.safetensors');
  await writeFile(target, 'previous');
  const r = await mergeIntoBase({ base: baseFile, adapters: [a], output: target });
  t.is(r.output, target);
  t.is(r.bytes.written, original.byteLength);
  t.is((await readFile(target)).byteLength, original.byteLength);
  t.deepEqual(temporaryFiles(await readdir(dir)), []);

  const bad = [
    [{ base: baseFile, adapters: [], output: target }, 'options.adapters'],
    [{ base: baseFile, adapters: [{ adapter: a, weight: Number.NaN }], output: target }, 'options.adapters[0].weight'],
    [{ base: baseFile, adapters: [a], output: target, scale: Infinity }, 'options.scale'],
    [{ base: baseFile, adapters: [a], output: target, dtype: 'bf16' }, 'options.dtype'],
    [{ base: baseFile, adapters: [a], output: target, unmerge: 'yes' }, 'options.unmerge'],
    [{ base: baseFile, adapters: [a], output: target, outptu: 'x' }, 'options.outptu'],
    [{ base: baseFile, adapters: [{ adapter: 42 }], output: target }, 'options.adapters[0].adapter'],
  ] as const;
  for (const [options, name] of bad) {
    const error = await t.throwsAsync(mergeIntoBase(options as unknown as MergeIntoBaseOptions), { instanceOf: EigenLoraxError });
    t.is(error?.code, 'ERR_INVALID_ARGUMENT', name);
    t.true(error?.message.includes(name), error?.message);
  }
  // A non-finite factor in an adapter given in memory.
  const loaded = await loadAdapter(a);
  const m = loaded.modules.values().next().value as LoraModule;
  m.B.data[5] = Number.NaN;
  await expectRefused(t, { base: baseFile, adapters: [loaded], output: target }, 'ERR_NON_FINITE', ['B holds NaN at [1, 1]']);
});

// ---------------------------------------------------------------------------------------
// The in-place update

test('addLowRankUpdates: several terms of both orientations equal the f64 sum', async (t) => {
  const rows = 300;
  const cols = 5000;
  const target = randomMatrix(rows, cols, 1, 0.05).data;
  const original = Float32Array.from(target);
  const terms: UpdateTerm[] = [
    { A: randomMatrix(4, cols, 2, 0.1), B: randomMatrix(rows, 4, 3, 0.1), coefficient: 2, transposed: false },
    { A: randomMatrix(3, cols, 4, 0.1), B: randomMatrix(rows, 3, 5, 0.1), coefficient: -0.75, transposed: false },
    { A: randomMatrix(5, rows, 6, 0.1), B: randomMatrix(cols, 5, 7, 0.1), coefficient: 1.5, transposed: true },
  ];
  for (const route of ['addLowRank'] as const) {
    const values = Float32Array.from(original);
    const flops = await addLowRankUpdates(values, rows, cols, terms);
    t.is(flops, rows * cols * 12);
    // Sampled entries against f64 (every 97th).
    for (let at = 0; at < values.length; at += 97) {
      const i = Math.floor(at / cols);
      const j = at % cols;
      let expected = original[at] as number;
      let magnitude = Math.abs(expected);
      for (const term of terms) {
        const r = term.A.rows;
        for (let k = 0; k < r; k++) {
          const p = term.transposed
            ? (term.A.data[k * rows + i] as number) * (term.B.data[j * r + k] as number)
            : (term.B.data[i * r + k] as number) * (term.A.data[k * cols + j] as number);
          expected += term.coefficient * p;
          magnitude += Math.abs(term.coefficient * p);
        }
      }
      if (Math.abs((values[at] as number) - expected) > 32 * U32 * magnitude) t.fail(`${route} [${i}][${j}]: ${values[at]} vs ${expected}`);
    }
    // The update negated takes it out again within f32 rounding.
    await addLowRankUpdates(values, rows, cols, terms.map((term) => ({ ...term, coefficient: -term.coefficient })));
    let worst = 0;
    for (let i = 0; i < values.length; i++) worst = Math.max(worst, Math.abs((values[i] as number) - (original[i] as number)));
    t.true(worst < 1e-6, `${route}: round trip ${worst}`);
  }
});

// ---------------------------------------------------------------------------------------
// CLI

const eigenlorax = (args: string[]) => runCli(args, { timeout: 30_000 });


test('eigenlorax merge: weights pair with the adapter before them; text and --json reports; the file equals the library merge', async (t) => {
  const dir = await tempDir(t);
  const baseFile = path.join(dir, 'base.safetensors');
  await writeTensors(baseFile, llamaBase('BF16'), llamaMetadata);
  const a1 = await llamaAdapter(path.join(dir, 'a1'));
  const a2 = await llamaAdapter(path.join(dir, 'a2'), { names: ['model.layers.1.self_attn.k_proj'] });
  const viaCli = path.join(dir, 'cli.safetensors');
  const r = await eigenlorax(['merge', '--base', baseFile, '--adapter', a1, '--adapter', a2, '--weight', '0.5', '--scale', '2', '-o', viaCli]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^merged 2 adapters into .*base\.safetensors -> .*cli\.safetensors$/m);
  t.regex(r.stdout, /adapter 1 +.*a1 \(peft, 4 modules, weight 1\)/);
  t.regex(r.stdout, /adapter 2 +.*a2 \(peft, 1 module, weight 0\.5\)/);
  t.regex(r.stdout, /tensors +5 of 12 changed, 7 copied unchanged/);
  t.regex(r.stdout, /model\.layers\.1\.self_attn\.k_proj\.weight BF16 \[24, 16\] <- model\.layers\.1\.self_attn\.k_proj \(adapter 2, r 4, x2\)/);
  t.regex(r.stdout, /bytes +\d/);
  t.regex(r.stdout, /time +\d/);
  const viaLibrary = path.join(dir, 'lib.safetensors');
  await mergeIntoBase({ base: baseFile, adapters: [a1, { adapter: a2, weight: 0.5 }], output: viaLibrary, scale: 2 });
  t.deepEqual(await readFile(viaCli), await readFile(viaLibrary));

  const j = await eigenlorax(['merge', '--json', '--unmerge', '--base', viaCli, '--adapter', a1, '--weight', '2', '-o', path.join(dir, 'u.safetensors')]);
  t.is(j.code, 0, j.stderr);
  const report = JSON.parse(j.stdout) as MergeReport;
  t.true(report.unmerge);
  t.is(report.adapters[0]?.weight, 2);
  t.is(report.merged[0]?.modules[0]?.coefficient, -4);
  t.is(report.tensors.touched, 4);
});

test('eigenlorax merge: usage mistakes exit 2; a missing module exits 1 naming it (also as JSON)', async (t) => {
  const dir = await tempDir(t);
  const baseFile = path.join(dir, 'base.safetensors');
  await writeTensors(baseFile, llamaBase('F32', 1));
  const a = await llamaAdapter(path.join(dir, 'a'), { names: ['model.layers.0.self_attn.q_proj', 'model.layers.5.self_attn.q_proj'] });
  const out = path.join(dir, 'o.safetensors');
  for (const [args, message] of [
    [['merge', '--base', baseFile, '-o', out], /at least one --adapter/],
    [['merge', '--adapter', a, '-o', out], /needs --base/],
    [['merge', '--base', baseFile, '--adapter', a], /needs -o/],
    [['merge', '--base', baseFile, '--weight', '2', '--adapter', a, '-o', out], /--weight comes after/],
    [['merge', '--base', baseFile, '--adapter', a, '--weight', 'x', '-o', out], /--weight expects a finite number/],
    [['merge', '--base', baseFile, '--adapter', a, '--weight', '1', '--weight', '2', '-o', out], /two --weight values/],
    [['merge', '--base', baseFile, '--adapter', a, '-o', out, '--frobnicate'], /frobnicate/],
  ] as const) {
    const r = await eigenlorax([...args]);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, message);
    t.is(r.stdout, '');
  }
  const r = await eigenlorax(['merge', '--base', baseFile, '--adapter', a, '-o', out]);
  t.is(r.code, 1);
  t.regex(r.stderr, /ERR_MERGE_TARGET_NOT_FOUND/);
  t.regex(r.stderr, /model\.layers\.5\.self_attn\.q_proj/);
  const j = await eigenlorax(['merge', '--json', '--base', baseFile, '--adapter', a, '-o', out]);
  t.is(j.code, 1);
  t.is((JSON.parse(j.stdout) as { error: { code: string } }).error.code, 'ERR_MERGE_TARGET_NOT_FOUND');
  t.false((await readdir(dir)).includes('o.safetensors'));
  const help = await eigenlorax(['merge', '--help']);
  t.is(help.code, 0);
  t.regex(help.stdout, /eigenlorax merge --base <model>/);
});
