/**
 * mergeIntoBase on a GGUF base: touched F32/F16 weights equal W + s B A computed here in
 * float64 (then rounded to the stored type), everything else (header, metadata, untouched
 * tensors, quantized ones included) byte for byte; a quantized weight that an adapter
 * touches is refused before anything is written.
 */
import test from 'ava';
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError, fromFloat32, mergeIntoBase, openGguf, toFloat32, writeGguf, type LoraAdapter } from '../lib/index.js';
import { parseWithHuggingFace } from './helpers/gguf-fixtures.js';
import { freshSeed, gaussian, rng } from './helpers/random.js';
import { tempDir } from './helpers/safetensors-fixtures.js';

function adapterFor(names: Array<[string, number, number]>, seed: number): LoraAdapter {
  const g = gaussian(rng(seed));
  const modules = new Map(
    names.map(([name, out, inp]) => {
      const r = 2;
      return [
        name,
        {
          name,
          A: { rows: r, cols: inp, data: Float32Array.from({ length: r * inp }, () => g()) },
          B: { rows: out, cols: r, data: Float32Array.from({ length: out * r }, () => g()) },
          rank: r,
          alpha: 4,
          scale: 2,
          rslora: false,
          layout: 'linear' as const,
          shapes: { A: [r, inp], B: [out, r] },
          inFeatures: inp,
          outFeatures: out,
          fanInFanOut: false,
          keys: { A: '', B: '' },
          dtypes: { A: 'F32' as const, B: 'F32' as const },
        },
      ];
    }),
  );
  return { format: 'gguf', baseModel: null, source: null, modules, extras: new Map(), config: null, metadata: {} };
}

test('GGUF base: F32 and F16 weights merged in their own type, the rest byte for byte', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const g = gaussian(rng(seed));
  const values = (n: number) => Float32Array.from({ length: n }, () => g());
  const q8 = Uint8Array.from({ length: 34 * 4 }, (_, i) => (i * 37) & 0xff);
  const w32 = values(8 * 6);
  const w16 = values(4 * 6);
  const base = path.join(dir, 'base.gguf');
  await writeGguf(
    base,
    [
      { name: 'token_embd.weight', shape: [4, 32], dtype: 'Q8_0', bytes: q8 },
      { name: 'blk.0.attn_q.weight', shape: [8, 6], data: w32 },
      { name: 'blk.0.attn_k.weight', shape: [4, 6], data: w16, dtype: 'F16' },
      { name: 'blk.0.attn_norm.weight', shape: [6], data: values(6) },
    ],
    { metadata: [['general.architecture', { type: 'STRING', value: 'phi3' }], ['general.name', { type: 'STRING', value: 'x' }]] },
  );
  const adapter = adapterFor([['blk.0.attn_q', 8, 6], ['blk.0.attn_k', 4, 6]], seed + 1);
  const output = path.join(dir, 'out', 'merged.gguf');
  const report = await mergeIntoBase({ base, adapters: [{ adapter, weight: 0.5 }], output });
  t.is(report.output, output);
  t.deepEqual(report.merged.map((m) => [m.key, m.dtype]), [['blk.0.attn_q.weight', 'F32'], ['blk.0.attn_k.weight', 'F16']]);

  const before = await readFile(base);
  const after = await readFile(output);
  t.is(after.byteLength, before.byteLength);
  await using reader = await openGguf(output);
  await using original = await openGguf(base);
  t.deepEqual(after.subarray(0, reader.dataOffset), before.subarray(0, original.dataOffset), 'header and metadata byte for byte');
  for (const name of ['token_embd.weight', 'blk.0.attn_norm.weight']) {
    t.deepEqual((await reader.readRaw(name)).bytes, (await original.readRaw(name)).bytes, `${name} untouched`);
  }
  const expect = async (name: string, w: Float32Array, out: number, inp: number, dtype: 'F32' | 'F16') => {
    const m = adapter.modules.get(name)!;
    const stored = dtype === 'F16' ? await toFloat32(await fromFloat32(w, 'f16'), 'f16') : w;
    const want = new Float32Array(out * inp);
    for (let i = 0; i < out; i++)
      for (let j = 0; j < inp; j++) {
        let d = 0;
        for (let k = 0; k < 2; k++) d += (m.B.data[i * 2 + k] as number) * (m.A.data[k * inp + j] as number);
        want[i * inp + j] = (stored[i * inp + j] as number) + 0.5 * 2 * d;
      }
    const rounded = dtype === 'F16' ? await toFloat32(await fromFloat32(want, 'f16'), 'f16') : want;
    const got = (await reader.readFloat32(`${name}.weight`)).data;
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs((got[i] as number) - (rounded[i] as number)) / (1 + Math.abs(rounded[i] as number)));
    t.true(worst <= (dtype === 'F16' ? 1e-3 : 1e-6), `${name}: ${worst}`);
    t.is(reader.tensors.get(`${name}.weight`)?.dtype, dtype);
  };
  await expect('blk.0.attn_q', w32, 8, 6, 'F32');
  await expect('blk.0.attn_k', w16, 4, 6, 'F16');
  const hf = await parseWithHuggingFace(output);
  t.is(hf.typedMetadata['general.name']?.value, 'x');

  // a quantized weight that the adapter touches: refused, nothing written
  const touchQ = adapterFor([['token_embd', 4, 32]], seed + 2);
  const refused = path.join(dir, 'refused');
  const error = await t.throwsAsync(mergeIntoBase({ base, adapters: [touchQ], output: refused }), { instanceOf: EigenLoraxError });
  t.is(error?.code, 'ERR_UNSUPPORTED_DTYPE');
  t.regex(error?.message ?? '', /token_embd\.weight is Q8_0/);
  t.false((await readdir(dir)).includes('refused'));
  // an HF name that the base's architecture has no mapping for is reported with the names tried
  const hfNamed = adapterFor([['model.layers.0.self_attn.q_proj', 8, 6]], seed + 3);
  await t.throwsAsync(mergeIntoBase({ base, adapters: [hfNamed], output: refused }), { code: 'ERR_MERGE_TARGET_NOT_FOUND' } as never);
});
