/**
 * GGUF LoRA adapters: PEFT -> GGUF -> PEFT for the llama family (with rank and alpha
 * patterns and rsLoRA folded into B, q/k rows permuted as convert_hf_to_gguf.py permutes
 * them) and GPT-2 (fan_in_fan_out); every written file parsed by @huggingface/gguf too;
 * each refusal typed.
 */
import test from 'ava';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import {
  EigenLoraxError,
  convertAdapter,
  loadAdapter,
  openGguf,
  saveAdapter,
  writeGguf,
  type LoraAdapter,
  type LoraModule,
} from '../lib/index.js';
import { basePeftConfig, peftTensors, tempDir, writeGpt2Like, writePeft } from './helpers/adapter-fixtures.js';
import { parseWithHuggingFace } from './helpers/gguf-fixtures.js';

/** scale B A in float64, `out x in`. */
function delta(m: LoraModule): Float64Array {
  const { rank: r, inFeatures: n, outFeatures: o } = m;
  const out = new Float64Array(o * n);
  for (let i = 0; i < o; i++)
    for (let k = 0; k < r; k++) {
      const b = (m.B.data[i * r + k] as number) * m.scale;
      for (let j = 0; j < n; j++) out[i * n + j] = (out[i * n + j] as number) + b * (m.A.data[k * n + j] as number);
    }
  return out;
}

/** The rows of an `out x in` matrix in llama.cpp's order (LlamaModel.permute, by numpy's definition). */
function permuted(dw: Float64Array, rows: number, cols: number, heads: number): Float64Array {
  const out = new Float64Array(dw.length);
  const hd = rows / heads;
  // numpy: w.reshape(heads, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)
  let row = 0;
  for (let h = 0; h < heads; h++)
    for (let k = 0; k < hd / 2; k++)
      for (let j = 0; j < 2; j++) {
        const src = h * hd + j * (hd / 2) + k;
        out.set(dw.subarray(src * cols, (src + 1) * cols), row * cols);
        row++;
      }
  return out;
}

function close(t: import('ava').ExecutionContext, a: Float64Array, b: Float64Array, what: string, tol = 1e-6) {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs((a[i] as number) - (b[i] as number)));
  t.true(a.length === b.length && worst <= tol, `${what}: max |difference| ${worst}`);
}

const llamaModules = (layers: number) =>
  Array.from({ length: layers }, (_, i) => [
    { name: `model.layers.${i}.self_attn.q_proj`, rank: 4, in: 16, out: 16 },
    { name: `model.layers.${i}.self_attn.k_proj`, rank: 4, in: 16, out: 8 },
    { name: `model.layers.${i}.self_attn.v_proj`, rank: 4, in: 16, out: 8 },
    { name: `model.layers.${i}.self_attn.o_proj`, rank: 4, in: 16, out: 16 },
    { name: `model.layers.${i}.mlp.gate_proj`, rank: 2, in: 16, out: 24 },
    { name: `model.layers.${i}.mlp.up_proj`, rank: 4, in: 16, out: 24 },
    { name: `model.layers.${i}.mlp.down_proj`, rank: 4, in: 24, out: 16 },
  ]).flat();

async function llamaPeft(dir: string, extra: Record<string, unknown> = {}) {
  return writePeft(dir, peftTensors(llamaModules(2)), {
    ...basePeftConfig(),
    base_model_name_or_path: 'tiny-llama',
    r: 4,
    lora_alpha: 8,
    rank_pattern: { gate_proj: 2 },
    alpha_pattern: { 'layers.1.self_attn.v_proj': 3 },
    target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
    ...extra,
  });
}

for (const [arch, permute] of [
  ['llama', true],
  ['mistral', true],
  ['qwen2', false],
] as const) {
  test(`PEFT ${arch} -> GGUF: llama.cpp's names and layout, per-module scales exact, q/k ${permute ? '' : 'not '}permuted; back to PEFT unchanged`, async (t) => {
    const dir = await tempDir(t);
    const { dir: peft } = await llamaPeft(path.join(dir, 'peft'));
    const original = await loadAdapter(peft);
    const file = path.join(dir, 'a.gguf');
    const saved = await convertAdapter(peft, file, { format: 'gguf', gguf: { architecture: arch, headCount: 4, headCountKv: 2 } });
    t.deepEqual(saved, { format: 'gguf', files: [file] });

    await using reader = await openGguf(file);
    t.is(reader.getString('general.architecture'), arch === 'qwen2' ? 'qwen2' : 'llama');
    t.is(reader.getString('general.type'), 'adapter');
    t.is(reader.getString('adapter.type'), 'lora');
    t.is(reader.getNumber('adapter.lora.alpha'), 8);
    t.deepEqual(reader.tensors.get('blk.0.attn_q.weight.lora_a')?.ne, [16, 4], 'lora_a: ne [in, r]');
    t.deepEqual(reader.tensors.get('blk.0.attn_q.weight.lora_b')?.ne, [4, 16], 'lora_b: ne [r, out]');
    t.deepEqual(
      [...reader.tensors.keys()].filter((k) => k.startsWith('blk.0.')).sort(),
      ['attn_k', 'attn_output', 'attn_q', 'attn_v', 'ffn_down', 'ffn_gate', 'ffn_up'].flatMap((n) => [`blk.0.${n}.weight.lora_a`, `blk.0.${n}.weight.lora_b`]),
    );
    const hf = await parseWithHuggingFace(file);
    t.is(hf.tensorInfos.length, 28);
    t.is(hf.typedMetadata['adapter.lora.alpha']?.value, 8);

    const gguf = await loadAdapter(file);
    t.is(gguf.format, 'gguf');
    for (const m of original.modules.values()) {
      const g = m.name.replace(/^model\.layers\.(\d+)\.(self_attn|mlp)\./, 'blk.$1.').replace('q_proj', 'attn_q').replace('k_proj', 'attn_k').replace('v_proj', 'attn_v').replace('o_proj', 'attn_output').replace(/(gate|up|down)_proj/, 'ffn_$1');
      const read = gguf.modules.get(g);
      t.truthy(read, g);
      if (!read) continue;
      t.is(read.scale, 8 / read.rank, 'llama.cpp applies the file alpha / r');
      let want = delta(m);
      const heads = g.endsWith('attn_q') ? 4 : g.endsWith('attn_k') ? 2 : 0;
      if (permute && heads > 0) want = permuted(want, m.outFeatures, m.inFeatures, heads);
      close(t, delta(read), want, `${m.name} -> ${g}`);
    }
    const v = gguf.modules.get('blk.1.attn_v')!;
    t.not(v.B.data[0], original.modules.get('model.layers.1.self_attn.v_proj')!.B.data[0], 'the alpha_pattern module has its ratio folded into B');

    const back = path.join(dir, 'back');
    await convertAdapter(file, back, { format: 'peft', gguf: { architecture: arch, headCount: 4, headCountKv: 2 } });
    const again = await loadAdapter(back);
    t.deepEqual([...again.modules.keys()], [...original.modules.keys()]);
    for (const m of original.modules.values()) close(t, delta(again.modules.get(m.name)!), delta(m), `round trip ${m.name}`);
  });
}

test('rsLoRA scales fold into B; f16 factors stay f16; the head counts can come from a GGUF base model', async (t) => {
  const dir = await tempDir(t);
  const { dir: peft } = await llamaPeft(path.join(dir, 'peft'), { use_rslora: true, alpha_pattern: {} });
  const base = path.join(dir, 'base.gguf');
  await writeGguf(base, [{ name: 'token_embd.weight', shape: [4, 16], data: new Float32Array(64) }], {
    metadata: [
      ['general.architecture', { type: 'STRING', value: 'llama' }],
      ['llama.attention.head_count', { type: 'UINT32', value: 4 }],
      ['llama.attention.head_count_kv', { type: 'UINT32', value: 2 }],
    ],
  });
  const original = await loadAdapter(peft);
  const file = path.join(dir, 'r.gguf');
  await convertAdapter(peft, file, { format: 'gguf', dtype: 'F16', gguf: { base } });
  const read = await loadAdapter(file);
  await using reader = await openGguf(file);
  t.is(reader.tensors.get('blk.0.attn_v.weight.lora_a')?.dtype, 'F16');
  const m = original.modules.get('model.layers.0.self_attn.v_proj')!;
  t.is(m.scale, 8 / 2, 'rsLoRA: alpha / sqrt(r)');
  close(t, delta(read.modules.get('blk.0.attn_v')!), delta(m), 'rsLoRA module through f16', 2e-3);
});

test('GPT-2 (fan_in_fan_out Conv1D): factors carry over unchanged, back to PEFT with fan_in_fan_out', async (t) => {
  const dir = await tempDir(t);
  const { dir: peft } = await writeGpt2Like(path.join(dir, 'gpt2'), 2);
  const original = await loadAdapter(peft);
  const file = path.join(dir, 'g.gguf');
  await t.throwsAsync(convertAdapter(peft, file, { format: 'gguf' }), { code: 'ERR_ADAPTER_UNSUPPORTED', message: /non-LoRA tensor/ } as never);
  await convertAdapter(peft, file, { format: 'gguf', extras: 'drop' });
  const read = await loadAdapter(file);
  t.deepEqual([...read.modules.keys()], ['blk.0.attn_qkv', 'blk.1.attn_qkv']);
  const m = original.modules.get('transformer.h.0.attn.c_attn')!;
  t.deepEqual([...read.modules.get('blk.0.attn_qkv')!.A.data], [...m.A.data]);
  t.deepEqual([...read.modules.get('blk.0.attn_qkv')!.B.data], [...m.B.data]);
  await using reader = await openGguf(file);
  t.is(reader.getString('general.architecture'), 'gpt2');
  const back = path.join(dir, 'back');
  await saveAdapter(read, back, { format: 'peft' });
  const again = await loadAdapter(back);
  const b = again.modules.get('transformer.h.1.attn.c_attn')!;
  t.true(b.fanInFanOut);
  close(t, delta(b), delta(original.modules.get('transformer.h.1.attn.c_attn')!), 'gpt2 round trip');
});

test('GGUF adapter refusals are typed and list what is missing; nothing is written', async (t) => {
  const dir = await tempDir(t);
  const { dir: peft } = await llamaPeft(path.join(dir, 'peft'));
  const out = path.join(dir, 'x.gguf');
  const cases: Array<[Parameters<typeof convertAdapter>[2], string, RegExp]> = [
    [{ format: 'gguf' }, 'ERR_ADAPTER_UNSUPPORTED', /pass gguf.architecture \(llama, mistral, qwen2, gpt2\)/],
    [{ format: 'gguf', gguf: { architecture: 'phi3' } }, 'ERR_ADAPTER_UNSUPPORTED', /"phi3" has no HF-to-GGUF name mapping/],
    [{ format: 'gguf', gguf: { architecture: 'llama' } }, 'ERR_INVALID_ARGUMENT', /head counts are needed[\s\S]*model.layers.0.self_attn.q_proj/],
    [{ format: 'gguf', gguf: { architecture: 'gpt2' } }, 'ERR_ADAPTER_UNSUPPORTED', /14 modules cannot be written to GGUF[\s\S]*model.layers.0.self_attn.q_proj: no GGUF name/],
  ];
  for (const [options, code, pattern] of cases) {
    const error = await t.throwsAsync(convertAdapter(peft, out, options), { instanceOf: EigenLoraxError });
    t.is(error?.code as string, code, error?.message);
    t.regex(error?.message ?? '', pattern);
  }
  t.deepEqual((await readdir(dir)).sort(), ['peft']);

  // GGUF files that are not LoRA adapters
  const model = path.join(dir, 'model.gguf');
  await writeGguf(model, [{ name: 'w', shape: [2], data: new Float32Array(2) }], { metadata: [['general.architecture', { type: 'STRING', value: 'llama' }]] });
  await t.throwsAsync(loadAdapter(model), { code: 'ERR_ADAPTER_FORMAT', message: /GGUF model, not a LoRA adapter/ } as never);
  const meta = (extra: Array<[string, string]> = []) => ({
    metadata: [
      ['general.architecture', { type: 'STRING', value: 'llama' }],
      ['general.type', { type: 'STRING', value: 'adapter' }],
      ['adapter.type', { type: 'STRING', value: 'lora' }],
      ...extra.map(([k, v]) => [k, { type: 'STRING', value: v }]),
    ] as never,
  });
  const orphan = path.join(dir, 'orphan.gguf');
  await writeGguf(orphan, [{ name: 'blk.0.attn_q.weight.lora_a', shape: [2, 4], data: new Float32Array(8) }], meta());
  await t.throwsAsync(loadAdapter(orphan), { code: 'ERR_ADAPTER_FORMAT', message: /no partner "blk.0.attn_q.weight.lora_b"/ } as never);
  const cv = path.join(dir, 'cv.gguf');
  await writeGguf(cv, [{ name: 'x', shape: [2], data: new Float32Array(2) }], { metadata: [['general.type', { type: 'STRING', value: 'adapter' }], ['adapter.type', { type: 'STRING', value: 'control_vector' }]] });
  await t.throwsAsync(loadAdapter(cv), { code: 'ERR_ADAPTER_UNSUPPORTED', message: /"control_vector"/ } as never);
  const rank = path.join(dir, 'rank.gguf');
  await writeGguf(
    rank,
    [
      { name: 'blk.0.attn_q.weight.lora_a', shape: [2, 4], data: new Float32Array(8) },
      { name: 'blk.0.attn_q.weight.lora_b', shape: [4, 3], data: new Float32Array(12) },
    ],
    meta(),
  );
  await t.throwsAsync(loadAdapter(rank), { code: 'ERR_SHAPE_MISMATCH' } as never);
  // no alpha: llama.cpp applies no alpha / r, so the scale reads as 1
  const noAlpha = path.join(dir, 'noalpha.gguf');
  await writeGguf(
    noAlpha,
    [
      { name: 'blk.0.attn_q.weight.lora_a', shape: [2, 4], data: new Float32Array(8) },
      { name: 'blk.0.attn_q.weight.lora_b', shape: [4, 2], data: new Float32Array(8) },
    ],
    meta(),
  );
  const a: LoraAdapter = await loadAdapter(noAlpha);
  t.is(a.modules.get('blk.0.attn_q')?.scale, 1);
  // a GGUF adapter of an unmapped architecture cannot become PEFT
  const phi = path.join(dir, 'phi.gguf');
  await writeGguf(phi, [{ name: 'blk.0.attn_qkv.weight.lora_a', shape: [2, 4], data: new Float32Array(8) }, { name: 'blk.0.attn_qkv.weight.lora_b', shape: [4, 2], data: new Float32Array(8) }], {
    metadata: [['general.architecture', { type: 'STRING', value: 'phi3' }], ['general.type', { type: 'STRING', value: 'adapter' }], ['adapter.type', { type: 'STRING', value: 'lora' }]],
  });
  await t.throwsAsync(convertAdapter(phi, path.join(dir, 'phi'), { format: 'peft' }), { code: 'ERR_ADAPTER_UNSUPPORTED', message: /"phi3" has no GGUF-to-HF name mapping/ } as never);
  // ... but GGUF to GGUF keeps the names and the architecture
  await convertAdapter(phi, path.join(dir, 'phi2.gguf'), { format: 'gguf' });
  await using reader = await openGguf(path.join(dir, 'phi2.gguf'));
  t.is(reader.getString('general.architecture'), 'phi3');
});

test('a subspace adapter exported as GGUF: llama.cpp layout of the reconstruction, q/k permuted with the head counts', async (t) => {
  const dir = await tempDir(t);
  const { buildSubspace, projectAdapter, reconstructAdapter, exportAdapter } = await import('../lib/index.js');
  const paths: string[] = [];
  for (let i = 0; i < 3; i++) paths.push((await llamaPeft(path.join(dir, `a${i}`))).dir);
  const subspace = await buildSubspace(paths, { components: 4, seed: 7 });
  const coefficients = await projectAdapter(subspace, paths[0]!);
  const rebuilt = await reconstructAdapter(subspace, coefficients);
  const file = path.join(dir, 'export.gguf');
  await t.throwsAsync(exportAdapter(subspace, coefficients, file, { format: 'gguf', gguf: { architecture: 'llama' } }), { code: 'ERR_INVALID_ARGUMENT' } as never);
  await exportAdapter(subspace, coefficients, file, { format: 'gguf', gguf: { architecture: 'llama', headCount: 4, headCountKv: 2 } });
  const read = await loadAdapter(file);
  t.is(read.modules.size, rebuilt.modules.size);
  const q = rebuilt.modules.get('model.layers.1.self_attn.q_proj')!;
  close(t, delta(read.modules.get('blk.1.attn_q')!), permuted(delta(q), q.outFeatures, q.inFeatures, 4), 'q_proj through the subspace');
  const up = rebuilt.modules.get('model.layers.0.mlp.up_proj')!;
  close(t, delta(read.modules.get('blk.0.ffn_up')!), delta(up), 'up_proj through the subspace');
  const hf = await parseWithHuggingFace(file);
  t.is(hf.typedMetadata['general.type']?.value, 'adapter');
});
