/**
 * Adapter files in each format, written by the tests (safetensors through
 * `writeSafetensors`, configs as JSON), with seeded random factors. Each writer returns
 * the tensors it wrote by key so tests can compare what is read back bit for bit.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { writeSafetensors, type SafetensorsEntry } from '../../lib/index.js';
import { gaussian, rng } from './random.js';

export { tempDir } from './safetensors-fixtures.js';

/** `count` N(0, 0.1^2) values from `seed`. */
export function randomValues(count: number, seed: number): Float32Array {
  const g = gaussian(rng(seed));
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = g() * 0.1;
  return out;
}

/** A tensor to write: f32 values (stored as `dtype`) or raw bytes. */
export interface FixtureTensor {
  key: string;
  shape: number[];
  data?: Float32Array;
  dtype?: 'F32' | 'F16' | 'BF16' | 'F64';
  raw?: { dtype: string; bytes: Uint8Array };
}

let seedCounter = 1;
/** Random factors for a module: A `r x in x k...` and B `out x r x 1...`. */
export function factorPair(
  rank: number,
  inFeatures: number,
  outFeatures: number,
  options: { kernel?: number[]; seed?: number } = {},
): { A: Float32Array; B: Float32Array; aShape: number[]; bShape: number[] } {
  const kernel = options.kernel ?? [];
  const seed = options.seed ?? seedCounter++;
  const inFlat = inFeatures * kernel.reduce((n, d) => n * d, 1);
  return {
    A: randomValues(rank * inFlat, seed * 2),
    B: randomValues(outFeatures * rank, seed * 2 + 1),
    aShape: [rank, inFeatures, ...kernel],
    bShape: [outFeatures, rank, ...kernel.map(() => 1)],
  };
}

/** Writes `tensors` with writeSafetensors; returns them by key. */
export async function writeTensors(file: string, tensors: FixtureTensor[], metadata?: Record<string, string>): Promise<Map<string, FixtureTensor>> {
  const entries: SafetensorsEntry[] = tensors.map((t) =>
    t.raw
      ? { name: t.key, shape: t.shape, dtype: t.raw.dtype as never, bytes: t.raw.bytes }
      : { name: t.key, shape: t.shape, data: t.data as Float32Array, dtype: t.dtype ?? 'F32' },
  );
  await writeSafetensors(file, entries, metadata === undefined ? {} : { metadata });
  return new Map(tensors.map((t) => [t.key, t]));
}

/** A scalar tensor (kohya / diffusers alpha) of the given dtype. */
export function scalar(key: string, value: number, dtype: 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' = 'F32'): FixtureTensor {
  if (dtype === 'I64') {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigInt64(0, BigInt(value), true);
    return { key, shape: [], raw: { dtype, bytes } };
  }
  return { key, shape: [], data: new Float32Array([value]), dtype };
}

// ---------------------------------------------------------------------------------------
// PEFT

export interface PeftModuleSpec {
  name: string;
  rank: number;
  in: number;
  out: number;
  kernel?: number[];
  embedding?: boolean;
  dtype?: 'F32' | 'F16' | 'BF16';
}

export const basePeftConfig = (): Record<string, unknown> => ({
  alpha_pattern: {},
  base_model_name_or_path: 'gpt2',
  bias: 'none',
  fan_in_fan_out: false,
  inference_mode: true,
  init_lora_weights: true,
  lora_alpha: 8,
  lora_dropout: 0.0,
  modules_to_save: null,
  peft_type: 'LORA',
  r: 4,
  rank_pattern: {},
  target_modules: ['c_attn'],
  task_type: 'CAUSAL_LM',
  use_dora: false,
  use_rslora: false,
});

/** The factor tensors of PEFT modules, keyed as PEFT saves them. */
export function peftTensors(modules: PeftModuleSpec[]): FixtureTensor[] {
  const out: FixtureTensor[] = [];
  for (const m of modules) {
    const f = factorPair(m.rank, m.in, m.out, m.kernel ? { kernel: m.kernel } : {});
    const [a, b] = m.embedding ? ['lora_embedding_A', 'lora_embedding_B'] : ['lora_A.weight', 'lora_B.weight'];
    out.push({ key: `base_model.model.${m.name}.${a}`, shape: f.aShape, data: f.A, dtype: m.dtype ?? 'F32' });
    out.push({ key: `base_model.model.${m.name}.${b}`, shape: f.bShape, data: f.B, dtype: m.dtype ?? 'F32' });
  }
  return out;
}

/**
 * A PEFT folder: adapter_config.json (`config`, or text written as is) and
 * adapter_model.safetensors holding `tensors`.
 */
export async function writePeft(
  dir: string,
  tensors: FixtureTensor[],
  config: Record<string, unknown> | string,
): Promise<{ dir: string; tensors: Map<string, FixtureTensor> }> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'adapter_config.json'), typeof config === 'string' ? config : JSON.stringify(config, null, 2));
  const written = await writeTensors(path.join(dir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
  return { dir, tensors: written };
}

/** A small GPT-2-like adapter: `layers` x c_attn (16 -> 48, rank 4), fan_in_fan_out, a score head. */
export async function writeGpt2Like(dir: string, layers = 3, config: Record<string, unknown> = {}) {
  const tensors = peftTensors(Array.from({ length: layers }, (_, i) => ({ name: `transformer.h.${i}.attn.c_attn`, rank: 4, in: 16, out: 48 })));
  tensors.push({ key: 'base_model.model.score.weight', shape: [3, 16], data: randomValues(48, 999) });
  return writePeft(dir, tensors, { ...basePeftConfig(), fan_in_fan_out: true, task_type: 'SEQ_CLS', modules_to_save: ['score'], ...config });
}

// ---------------------------------------------------------------------------------------
// diffusers

/** The U-Net attention modules of a tiny SD-like model, diffusers-named (without `unet.`). */
export const unetAttentionModules = (blocks = 2): string[] => {
  const names: string[] = [];
  for (let b = 0; b < blocks; b++) {
    for (const attn of ['attn1', 'attn2']) {
      for (const proj of ['to_q', 'to_k', 'to_v', 'to_out.0']) {
        names.push(`down_blocks.${b}.attentions.0.transformer_blocks.0.${attn}.${proj}`);
      }
    }
  }
  return names;
};

export type DiffusersSpelling = 'processor' | 'lora.down' | 'lora_A';

/** The key pair of a U-Net module path in one diffusers spelling. */
export function diffusersKeys(path: string, spelling: DiffusersSpelling, component = 'unet'): { A: string; B: string } {
  if (spelling === 'lora_A') return { A: `${component}.${path}.lora_A.weight`, B: `${component}.${path}.lora_B.weight` };
  if (spelling === 'lora.down') return { A: `${component}.${path}.lora.down.weight`, B: `${component}.${path}.lora.up.weight` };
  const m = /^(.*)\.(to_q|to_k|to_v|to_out\.0|q_proj|k_proj|v_proj|out_proj)$/.exec(path);
  if (!m) throw new Error(`no processor spelling for ${path}`);
  const which = { to_q: 'q', to_k: 'k', to_v: 'v', 'to_out.0': 'out', q_proj: 'q', k_proj: 'k', v_proj: 'v', out_proj: 'out' }[m[2] as string];
  if (component === 'unet') return { A: `${m[1]}.processor.to_${which}_lora.down.weight`, B: `${m[1]}.processor.to_${which}_lora.up.weight` };
  return { A: `${component}.${m[1]}.to_${which}_lora.down.weight`, B: `${component}.${m[1]}.to_${which}_lora.up.weight` };
}

/**
 * A diffusers file of U-Net attention modules (rank 4, width 32; cross-attention k/v read
 * 24-wide), the same factors whatever the spelling (factors come from `seed`).
 */
export async function writeDiffusers(
  file: string,
  spelling: DiffusersSpelling,
  options: { blocks?: number; seed?: number; extra?: FixtureTensor[]; alphas?: Record<string, number>; metadata?: Record<string, string>; textEncoder?: boolean } = {},
): Promise<Map<string, FixtureTensor>> {
  const seed = options.seed ?? 7;
  const tensors: FixtureTensor[] = [];
  let i = 0;
  for (const p of unetAttentionModules(options.blocks ?? 2)) {
    const cross = p.includes('attn2') && (p.endsWith('to_k') || p.endsWith('to_v'));
    const f = factorPair(4, cross ? 24 : 32, 32, { seed: seed * 1000 + i++ });
    const keys = diffusersKeys(p, spelling);
    tensors.push({ key: keys.A, shape: f.aShape, data: f.A }, { key: keys.B, shape: f.bShape, data: f.B });
    const alpha = options.alphas?.[p];
    if (alpha !== undefined) tensors.push(scalar(`unet.${p}.alpha`, alpha));
  }
  if (options.textEncoder) {
    for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
      const p = `text_model.encoder.layers.0.self_attn.${proj}`;
      const f = factorPair(2, 24, 24, { seed: seed * 1000 + i++ });
      const keys = diffusersKeys(p, spelling, 'text_encoder');
      tensors.push({ key: keys.A, shape: f.aShape, data: f.A }, { key: keys.B, shape: f.bShape, data: f.B });
    }
  }
  tensors.push(...(options.extra ?? []));
  return writeTensors(file, tensors, options.metadata ?? { format: 'pt' });
}

// ---------------------------------------------------------------------------------------
// kohya

export interface KohyaModuleSpec {
  loraName: string;
  rank: number;
  in: number;
  out: number;
  kernel?: number[];
  /** Alpha value and dtype; undefined writes no alpha tensor. */
  alpha?: { value: number; dtype?: 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' };
  dtype?: 'F32' | 'F16' | 'BF16';
}

/** The standard SD-like set: attention (linear), proj_in (1x1 conv), resnet conv (3x3), text encoder. */
export const kohyaSdModules = (): KohyaModuleSpec[] => [
  { loraName: 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q', rank: 4, in: 32, out: 32, alpha: { value: 2, dtype: 'F16' } },
  { loraName: 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0', rank: 4, in: 32, out: 32, alpha: { value: 1 } },
  { loraName: 'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj', rank: 4, in: 32, out: 64, alpha: { value: 4, dtype: 'BF16' } },
  { loraName: 'lora_unet_down_blocks_0_attentions_0_proj_in', rank: 4, in: 32, out: 32, kernel: [1, 1], alpha: { value: 2 } },
  { loraName: 'lora_unet_down_blocks_0_resnets_0_conv1', rank: 8, in: 16, out: 32, kernel: [3, 3] },
  { loraName: 'lora_unet_mid_block_resnets_1_time_emb_proj', rank: 2, in: 40, out: 32, alpha: { value: 3, dtype: 'F64' } },
  { loraName: 'lora_te_text_model_encoder_layers_0_self_attn_q_proj', rank: 4, in: 24, out: 24, alpha: { value: 8, dtype: 'I64' } },
  { loraName: 'lora_te_text_model_encoder_layers_0_mlp_fc1', rank: 4, in: 24, out: 48, alpha: { value: 0 } },
];

export async function writeKohya(
  file: string,
  modules: KohyaModuleSpec[],
  options: { metadata?: Record<string, string>; extra?: FixtureTensor[] } = {},
): Promise<Map<string, FixtureTensor>> {
  const tensors: FixtureTensor[] = [];
  for (const m of modules) {
    const f = factorPair(m.rank, m.in, m.out, m.kernel ? { kernel: m.kernel } : {});
    tensors.push({ key: `${m.loraName}.lora_down.weight`, shape: f.aShape, data: f.A, dtype: m.dtype ?? 'F32' });
    tensors.push({ key: `${m.loraName}.lora_up.weight`, shape: f.bShape, data: f.B, dtype: m.dtype ?? 'F32' });
    if (m.alpha !== undefined) tensors.push(scalar(`${m.loraName}.alpha`, m.alpha.value, m.alpha.dtype ?? 'F32'));
  }
  tensors.push(...(options.extra ?? []));
  return writeTensors(file, tensors, options.metadata ?? { ss_network_module: 'networks.lora', ss_sd_model_name: 'v1-5-pruned.safetensors' });
}
