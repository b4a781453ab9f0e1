/**
 * SDXL and Flux names across kohya and diffusers files, on synthetic adapters whose module
 * lists are generated from the published architectures (test/helpers/sd-fixtures.ts):
 * round trips kohya -> diffusers -> kohya keep keys and factors; names are checked against
 * pairs written down from sd-scripts' and diffusers' conventions; Flux's fused q/k/v and
 * linear1 split and fuse exactly (compared as dense updates in float64); LyCORIS files are
 * refused naming the algorithm.
 */
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import {
  buildSubspace,
  EigenLoraxError,
  exportAdapter,
  loadAdapter,
  projectAdapter,
  openSafetensors,
  saveAdapter,
  type ErrorCode,
  type LoraAdapter,
  type LoraModule,
} from '../lib/index.js';
import { factorPair, randomValues, tempDir, writeKohya, writeTensors } from './helpers/adapter-fixtures.js';
import * as ref from './helpers/reference.js';
import { fluxKohyaModules, sdxlTextEncoders, sdxlUnetModules, type ArchModule } from './helpers/sd-fixtures.js';

async function refused(t: ExecutionContext, call: () => Promise<unknown>, code: ErrorCode, mentions: string[]) {
  const error = await t.throwsAsync(call, { instanceOf: EigenLoraxError });
  t.is(error?.code, code, error?.message);
  for (const m of mentions) t.true(error?.message.includes(m), `message should mention ${JSON.stringify(m)}: ${error?.message}`);
}

const sameBits = (a: Float32Array, b: Float32Array) =>
  a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;

let seed = 1;
function moduleOf(m: ArchModule, rank: number, alpha: number): LoraModule {
  const f = factorPair(rank, m.in, m.out, { ...(m.kernel ? { kernel: m.kernel } : {}), seed: seed++ });
  const conv = m.kernel !== undefined;
  return {
    name: m.name,
    A: { rows: rank, cols: f.A.length / rank, data: f.A },
    B: { rows: m.out, cols: rank, data: f.B },
    rank,
    alpha,
    scale: alpha / rank,
    rslora: false,
    layout: conv ? 'conv' : 'linear',
    ...(conv ? { convKernel: m.kernel } : {}),
    shapes: { A: f.aShape, B: f.bShape },
    inFeatures: f.A.length / rank,
    outFeatures: m.out,
    fanInFanOut: false,
    keys: { A: '', B: '' },
    dtypes: { A: 'F32', B: 'F32' },
  };
}

function adapterOf(modules: LoraModule[], format: LoraAdapter['format']): LoraAdapter {
  return { format, baseModel: 'sdxl', source: null, modules: new Map(modules.map((m) => [m.name, m])), extras: new Map(), config: null, metadata: {} };
}

function sameModules(t: ExecutionContext, a: LoraAdapter, b: LoraAdapter, what: string) {
  t.deepEqual([...b.modules.keys()].sort(), [...a.modules.keys()].sort(), `${what}: names`);
  for (const [name, x] of a.modules) {
    const y = b.modules.get(name) as LoraModule;
    t.true(sameBits(x.A.data, y.A.data) && sameBits(x.B.data, y.B.data), `${what}: ${name} factors`);
    t.is(y.scale, x.scale, `${what}: ${name} scale`);
    t.deepEqual([y.layout, y.convKernel], [x.layout, x.convKernel], `${what}: ${name} layout`);
  }
}

/** Pairs written down from sd-scripts' SDXL (SGM) naming and diffusers' names. */
const sdxlPairs: Array<[string, string]> = [
  ['unet.conv_in', 'lora_unet_input_blocks_0_0'],
  ['unet.time_embedding.linear_1', 'lora_unet_time_embed_0'],
  ['unet.add_embedding.linear_2', 'lora_unet_label_emb_0_2'],
  ['unet.down_blocks.0.resnets.1.conv2', 'lora_unet_input_blocks_2_0_out_layers_3'],
  ['unet.down_blocks.0.downsamplers.0.conv', 'lora_unet_input_blocks_3_0_op'],
  ['unet.down_blocks.1.resnets.0.conv_shortcut', 'lora_unet_input_blocks_4_0_skip_connection'],
  ['unet.down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k', 'lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k'],
  ['unet.down_blocks.1.downsamplers.0.conv', 'lora_unet_input_blocks_6_0_op'],
  ['unet.down_blocks.2.attentions.1.proj_out', 'lora_unet_input_blocks_8_1_proj_out'],
  ['unet.mid_block.resnets.0.conv1', 'lora_unet_middle_block_0_in_layers_2'],
  ['unet.mid_block.attentions.0.transformer_blocks.9.ff.net.2', 'lora_unet_middle_block_1_transformer_blocks_9_ff_net_2'],
  ['unet.mid_block.resnets.1.time_emb_proj', 'lora_unet_middle_block_2_emb_layers_1'],
  ['unet.up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0', 'lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_out_0'],
  ['unet.up_blocks.0.upsamplers.0.conv', 'lora_unet_output_blocks_2_2_conv'],
  ['unet.up_blocks.1.resnets.2.conv1', 'lora_unet_output_blocks_5_0_in_layers_2'],
  ['unet.up_blocks.1.upsamplers.0.conv', 'lora_unet_output_blocks_5_2_conv'],
  ['unet.up_blocks.2.resnets.0.conv_shortcut', 'lora_unet_output_blocks_6_0_skip_connection'],
  ['unet.up_blocks.2.resnets.2.conv2', 'lora_unet_output_blocks_8_0_out_layers_3'],
  ['unet.conv_out', 'lora_unet_out_2'],
  ['text_encoder.text_model.encoder.layers.11.mlp.fc2', 'lora_te1_text_model_encoder_layers_11_mlp_fc2'],
  ['text_encoder_2.text_model.encoder.layers.31.self_attn.out_proj', 'lora_te2_text_model_encoder_layers_31_self_attn_out_proj'],
];

test('SDXL architecture lists: 70 transformer blocks, 2 text encoders of 12 and 32 layers', (t) => {
  const unet = sdxlUnetModules(8);
  t.is(unet.filter((m) => m.name.endsWith('.attn1.to_q')).length, 70);
  t.is(unet.filter((m) => /resnets\.\d+\.conv1$/.test(m.name)).length, 6 + 2 + 9);
  t.is(sdxlTextEncoders(8).length, 12 * 6 + 32 * 6);
  for (const [name] of sdxlPairs) t.true([...unet, ...sdxlTextEncoders(8)].some((m) => m.name === name), name);
});

test('SDXL: diffusers -> kohya (SGM names) -> diffusers -> kohya keeps keys, factors and scales', async (t) => {
  const dir = await tempDir(t);
  const modules = [...sdxlUnetModules(16), ...sdxlTextEncoders(16)].map((m, i) => moduleOf(m, 2, i % 3 === 0 ? 1 : 2));
  const original = adapterOf(modules, 'diffusers');
  const k1 = path.join(dir, 'k1.safetensors');
  await saveAdapter(original, k1, { format: 'kohya' });
  const reader = await openSafetensors(k1);
  const keys = [...reader.tensors.keys()];
  await reader.close();
  const loraNames = new Set(keys.map((k) => k.slice(0, k.indexOf('.'))));
  t.is(loraNames.size, modules.length);
  for (const [, kohya] of sdxlPairs) t.true(loraNames.has(kohya), kohya);
  t.false([...loraNames].some((n) => /^lora_unet_(down_blocks|mid_block|up_blocks)/.test(n) || n.startsWith('lora_te_')), 'SGM and te1/te2 names only');

  const kohya = await loadAdapter(k1);
  t.is(kohya.format, 'kohya');
  sameModules(t, original, kohya, 'kohya read back');
  const d = path.join(dir, 'd.safetensors');
  await saveAdapter(kohya, d, { format: 'diffusers' });
  const diffusers = await loadAdapter(d);
  sameModules(t, original, diffusers, 'kohya -> diffusers');
  const k2 = path.join(dir, 'k2.safetensors');
  await saveAdapter(diffusers, k2, { format: 'kohya' });
  const again = await openSafetensors(k2);
  t.deepEqual([...again.tensors.keys()].sort(), [...keys].sort());
  await again.close();
  sameModules(t, original, await loadAdapter(k2), 'kohya -> diffusers -> kohya');
});

test('SDXL: a UNet-only adapter is still written with SGM names (recognised by its 2048-wide cross-attention)', async (t) => {
  const dir = await tempDir(t);
  const only = sdxlUnetModules(1).filter((m) => /down_blocks\.1\.attentions\.0\.transformer_blocks\.0\.attn2\.to_[kv]$/.test(m.name));
  const file = path.join(dir, 'k.safetensors');
  await saveAdapter(adapterOf(only.map((m) => moduleOf(m, 1, 1)), 'peft'), file, { format: 'kohya' });
  const reader = await openSafetensors(file);
  t.true(reader.has('lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight'));
  await reader.close();
});

test('SDXL kohya LoRAs into a subspace and back: the rebuilt adapter gets SGM kohya names, or diffusers names', async (t) => {
  const dir = await tempDir(t);
  const arch = sdxlUnetModules(16).filter((m) => /down_blocks\.2\.attentions\.0\.transformer_blocks\.[0-2]\.attn2\.to_[kv]$/.test(m.name));
  const files: string[] = [];
  for (let i = 0; i < 4; i++) {
    const file = path.join(dir, `sdxl-${i}.safetensors`);
    await saveAdapter(adapterOf(arch.map((m) => moduleOf(m, 2, 2)), 'diffusers'), file, { format: 'kohya' });
    files.push(file);
  }
  const subspace = await buildSubspace(files.slice(0, 3), { components: 6, seed: 1 });
  t.true(subspace.modules.has('unet.down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k'));
  const coefficients = await projectAdapter(subspace, files[3]!);
  const back = path.join(dir, 'back.safetensors');
  await exportAdapter(subspace, coefficients, back, { format: 'kohya' });
  const reader = await openSafetensors(back);
  t.true(reader.has('lora_unet_input_blocks_7_1_transformer_blocks_1_attn2_to_k.lora_down.weight'), [...reader.tensors.keys()][0]);
  await reader.close();
  await exportAdapter(subspace, coefficients, path.join(dir, 'back-diffusers.safetensors'), { format: 'diffusers' });
  const asDiffusers = await loadAdapter(path.join(dir, 'back-diffusers.safetensors'));
  t.deepEqual([...asDiffusers.modules.keys()].sort(), arch.map((m) => m.name).sort());
});

// ---------------------------------------------------------------------------------------
// Flux

const fluxDiv = 32;
const h = 3072 / fluxDiv;

/** s B A in float64. */
function update(m: LoraModule): ref.Mat64 {
  const d = ref.matmul(m.B, m.A);
  for (let i = 0; i < d.data.length; i++) d.data[i] = d.data[i]! * m.scale;
  return d;
}

/** Rows [first, first + count) of a dense matrix. */
function rows(d: ref.Mat64, first: number, count: number): ref.Mat64 {
  return { rows: count, cols: d.cols, data: d.data.slice(first * d.cols, (first + count) * d.cols) };
}

test('Flux: kohya -> diffusers splits qkv and linear1 (A shared, B by rows), maps every block; -> kohya gives the same file', async (t) => {
  const dir = await tempDir(t);
  const specs = fluxKohyaModules(fluxDiv).map((m, i) => ({ ...m, rank: 2, alpha: { value: i % 2 === 0 ? 1 : 4 } }));
  const k1 = path.join(dir, 'flux.safetensors');
  await writeKohya(k1, specs, { metadata: { ss_network_module: 'networks.lora_flux' } });
  const kohya = await loadAdapter(k1);
  t.is(kohya.modules.size, specs.length);
  t.true(kohya.modules.has('lora_unet_double_blocks_0_img_attn_qkv'), 'Flux names stay kohya names on read');

  const d = path.join(dir, 'diffusers.safetensors');
  await saveAdapter(kohya, d, { format: 'diffusers' });
  const diffusers = await loadAdapter(d);
  t.is(diffusers.modules.size, 19 * 14 + 38 * 6 + 10);
  for (const name of [
    'transformer.transformer_blocks.0.attn.to_q',
    'transformer.transformer_blocks.18.attn.add_v_proj',
    'transformer.transformer_blocks.5.attn.to_out.0',
    'transformer.transformer_blocks.5.attn.to_add_out',
    'transformer.transformer_blocks.7.ff_context.net.0.proj',
    'transformer.transformer_blocks.7.norm1_context.linear',
    'transformer.single_transformer_blocks.37.proj_mlp',
    'transformer.single_transformer_blocks.0.norm.linear',
    'transformer.single_transformer_blocks.12.proj_out',
    'transformer.x_embedder',
    'transformer.context_embedder',
    'transformer.time_text_embed.guidance_embedder.linear_2',
    'transformer.time_text_embed.text_embedder.linear_1',
    'transformer.proj_out',
    'transformer.norm_out.linear',
  ]) t.true(diffusers.modules.has(name), name);

  // Dense updates: the parts stacked are the fused update.
  const linear1 = update(kohya.modules.get('lora_unet_single_blocks_3_linear1')!);
  const parts = ['attn.to_q', 'attn.to_k', 'attn.to_v', 'proj_mlp'].map((p) => update(diffusers.modules.get(`transformer.single_transformer_blocks.3.${p}`)!));
  t.deepEqual(parts.map((p) => p.rows), [h, h, h, 4 * h]);
  let row = 0;
  for (const p of parts) {
    t.true(ref.frobeniusDistance(p, rows(linear1, row, p.rows)) <= 1e-12 * (1 + ref.frobenius(p)));
    row += p.rows;
  }
  const qkv = update(kohya.modules.get('lora_unet_double_blocks_4_txt_attn_qkv')!);
  const v = update(diffusers.modules.get('transformer.transformer_blocks.4.attn.add_v_proj')!);
  t.true(ref.frobeniusDistance(v, rows(qkv, 2 * h, h)) <= 1e-12 * ref.frobenius(v));
  t.true(sameBits(diffusers.modules.get('transformer.transformer_blocks.4.attn.add_k_proj')!.A.data, kohya.modules.get('lora_unet_double_blocks_4_txt_attn_qkv')!.A.data));
  // final_layer.adaLN_modulation.1 is norm_out.linear with shift and scale swapped.
  const fin = update(kohya.modules.get('lora_unet_final_layer_adaLN_modulation_1')!);
  const norm = update(diffusers.modules.get('transformer.norm_out.linear')!);
  t.true(ref.frobeniusDistance(rows(norm, 0, h), rows(fin, h, h)) <= 1e-12 * ref.frobenius(fin));

  const k2 = path.join(dir, 'back.safetensors');
  await saveAdapter(diffusers, k2, { format: 'kohya' });
  const back = await loadAdapter(k2);
  t.deepEqual([...back.modules.keys()].sort(), [...kohya.modules.keys()].sort());
  for (const [name, x] of kohya.modules) {
    const y = back.modules.get(name)!;
    t.true(sameBits(x.A.data, y.A.data) && sameBits(x.B.data, y.B.data), `${name} factors`);
    t.is(y.scale, x.scale, name);
  }
});

test('Flux at its real widths (hidden 3072): double block 0, single block 0 and the final layer split and fuse back bit for bit', async (t) => {
  const dir = await tempDir(t);
  const specs = fluxKohyaModules(1)
    .filter((m) => /_(double_blocks_0|single_blocks_0)_|final_layer/.test(m.loraName))
    .map((m) => ({ ...m, rank: 1, alpha: { value: 1 } }));
  const k1 = path.join(dir, 'flux.safetensors');
  await writeKohya(k1, specs);
  const kohya = await loadAdapter(k1);
  const d = path.join(dir, 'd.safetensors');
  await saveAdapter(kohya, d, { format: 'diffusers' });
  const diffusers = await loadAdapter(d);
  t.is(diffusers.modules.get('transformer.single_transformer_blocks.0.proj_mlp')?.outFeatures, 12288);
  t.is(diffusers.modules.get('transformer.transformer_blocks.0.attn.add_k_proj')?.outFeatures, 3072);
  t.is(diffusers.modules.size, 14 + 6 + 2);
  const k2 = path.join(dir, 'k2.safetensors');
  await saveAdapter(diffusers, k2, { format: 'kohya' });
  const back = await loadAdapter(k2);
  for (const [name, x] of kohya.modules) t.true(sameBits(x.A.data, back.modules.get(name)!.A.data) && sameBits(x.B.data, back.modules.get(name)!.B.data), name);
});

test('Flux: a block-diagonal qkv (sd-scripts split_qkv) splits into rank-r parts and fuses back exactly', async (t) => {
  const dir = await tempDir(t);
  const r = 2;
  const down = randomValues(3 * r * h, 5);
  const up = new Float32Array(3 * h * 3 * r);
  const blocks = randomValues(3 * h * r, 6);
  for (let p = 0; p < 3; p++) for (let i = 0; i < h; i++) for (let c = 0; c < r; c++) up[(p * h + i) * 3 * r + p * r + c] = blocks[(p * h + i) * r + c]!;
  const file = path.join(dir, 'split.safetensors');
  await writeTensors(file, [
    { key: 'lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight', shape: [3 * r, h], data: down },
    { key: 'lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight', shape: [3 * h, 3 * r], data: up },
    { key: 'lora_unet_double_blocks_0_img_attn_qkv.alpha', shape: [], data: new Float32Array([3]) },
  ]);
  const kohya = await loadAdapter(file);
  const d = path.join(dir, 'd.safetensors');
  await saveAdapter(kohya, d, { format: 'diffusers' });
  const diffusers = await loadAdapter(d);
  const fused = update(kohya.modules.get('lora_unet_double_blocks_0_img_attn_qkv')!);
  ['to_q', 'to_k', 'to_v'].forEach((p, i) => {
    const m = diffusers.modules.get(`transformer.transformer_blocks.0.attn.${p}`)!;
    t.is(m.rank, r, p);
    t.is(m.scale, 3 / (3 * r));
    t.true(ref.frobeniusDistance(update(m), rows(fused, i * h, h)) <= 1e-12 * ref.frobenius(fused), p);
  });
  const k2 = path.join(dir, 'k2.safetensors');
  await saveAdapter(diffusers, k2, { format: 'kohya' });
  const back = (await loadAdapter(k2)).modules.get('lora_unet_double_blocks_0_img_attn_qkv')!;
  t.is(back.rank, 3 * r);
  t.true(sameBits(back.A.data, down) && sameBits(back.B.data, up));
  t.is(back.scale, 3 / (3 * r));
});

test('Flux: diffusers parts with their own factors (and a missing one) fuse block-diagonally; the missing part stays absent', async (t) => {
  const dir = await tempDir(t);
  const q = moduleOf({ name: 'transformer.transformer_blocks.2.attn.to_q', in: h, out: h }, 2, 4);
  const v = moduleOf({ name: 'transformer.transformer_blocks.2.attn.to_v', in: h, out: h }, 3, 3);
  const k = path.join(dir, 'k.safetensors');
  await saveAdapter(adapterOf([q, v], 'diffusers'), k, { format: 'kohya' });
  const fusedAdapter = await loadAdapter(k);
  const fused = fusedAdapter.modules.get('lora_unet_double_blocks_2_img_attn_qkv')!;
  t.is(fused.rank, 5);
  const dense = update(fused);
  t.true(ref.frobeniusDistance(rows(dense, 0, h), update(q)) <= 1e-6 * ref.frobenius(update(q)));
  t.is(ref.frobenius(rows(dense, h, h)), 0);
  t.true(ref.frobeniusDistance(rows(dense, 2 * h, h), update(v)) <= 1e-6 * ref.frobenius(update(v)));
  const d = path.join(dir, 'd.safetensors');
  await saveAdapter(fusedAdapter, d, { format: 'diffusers' });
  const parts = await loadAdapter(d);
  t.deepEqual([...parts.modules.keys()].sort(), [q.name, v.name]);
  for (const m of [q, v]) t.true(ref.frobeniusDistance(update(parts.modules.get(m.name)!), update(m)) <= 1e-6 * ref.frobenius(update(m)), m.name);
});

// ---------------------------------------------------------------------------------------
// LyCORIS

const lycoris: Array<[string, string[], string]> = [
  ['LoHa', ['hada_w1_a', 'hada_w1_b', 'hada_w2_a', 'hada_w2_b', 'alpha'], 'LoHa'],
  ['LoKr', ['lokr_w1', 'lokr_w2_a', 'lokr_w2_b', 'alpha'], 'LoKr'],
  ['IA3', ['weight', 'on_input'], 'IA3'],
  ['GLoRA', ['a1.weight', 'a2.weight', 'b1.weight', 'b2.weight', 'alpha'], 'GLoRA'],
  ['DoRA', ['lora_down.weight', 'lora_up.weight', 'alpha', 'dora_scale'], 'DoRA'],
  ['LoHa with DoRA', ['hada_w1_a', 'hada_w1_b', 'hada_w2_a', 'hada_w2_b', 'dora_scale'], 'LoHa (hada_*) + DoRA'],
  ['Tucker LoCon', ['lora_down.weight', 'lora_up.weight', 'lora_mid.weight'], 'lora_mid'],
];

for (const [label, suffixes, mention] of lycoris) {
  test(`LyCORIS ${label} files are refused naming the algorithm`, async (t) => {
    const dir = await tempDir(t);
    const file = path.join(dir, `${label}.safetensors`);
    const tensors = suffixes.map((s, i) => ({ key: `lora_unet_down_blocks_0_attentions_0_proj_in.${s}`, shape: s === 'alpha' ? [] : [4, 4], data: randomValues(s === 'alpha' ? 1 : 16, i + 1) }));
    await writeTensors(file, tensors);
    await refused(t, () => loadAdapter(file), 'ERR_ADAPTER_UNSUPPORTED', [file, mention, 'not supported']);
  });
}

test('LyCORIS networks under the lycoris_ prefix are refused naming the algorithm', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'l.safetensors');
  await writeTensors(file, [
    { key: 'lycoris_transformer_blocks_0_attn_to_q.lokr_w1', shape: [4, 4], data: randomValues(16, 1) },
    { key: 'lycoris_transformer_blocks_0_attn_to_q.lokr_w2', shape: [4, 4], data: randomValues(16, 2) },
  ]);
  await refused(t, () => loadAdapter(file), 'ERR_ADAPTER_UNSUPPORTED', [file, 'LoKr']);
});
