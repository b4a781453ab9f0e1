/**
 * A tiny llama-architecture GGUF model that llama.cpp loads (see /work/shared/GGUF-NOTES.md
 * for the keys it needs): a few layers of small widths, a byte-level vocabulary
 * (`<unk>`, `<s>`, `</s>`, `<0x00>`..`<0xFF>`, a few `▁word` pieces), seeded random weights.
 * Also an HF-named LoRA adapter in memory for it, with per-module ranks and alphas.
 */
import { writeGguf, type GgufEntry, type GgufValue, type LoraAdapter, type LoraModule } from '../../lib/index.js';
import { gaussian, rng } from './random.js';

export interface TinyLlama {
  layers: number;
  embd: number;
  ff: number;
  heads: number;
  headsKv: number;
  vocab: number;
}

export const tinyLlama: TinyLlama = { layers: 2, embd: 64, ff: 96, heads: 4, headsKv: 2, vocab: 3 + 256 + 5 };

const words = ['▁the', '▁cat', '▁sat', '▁on', '▁mat'];

/** Writes the model; `dtype` is the storage type of the attention and MLP weights. */
export async function writeTinyLlama(file: string, seed: number, dtype: 'F32' | 'F16' = 'F32', shape: TinyLlama = tinyLlama): Promise<void> {
  const g = gaussian(rng(seed));
  const random = (n: number, scale: number) => Float32Array.from({ length: n }, () => g() * scale);
  const ones = (n: number) => new Float32Array(n).fill(1);
  const { layers, embd, ff, heads, headsKv, vocab } = shape;
  const kv = (embd / heads) * headsKv;
  const tensors: GgufEntry[] = [
    { name: 'token_embd.weight', shape: [vocab, embd], data: random(vocab * embd, 0.3) },
    { name: 'output_norm.weight', shape: [embd], data: ones(embd) },
    { name: 'output.weight', shape: [vocab, embd], data: random(vocab * embd, 0.2) },
  ];
  for (let i = 0; i < layers; i++) {
    const w = (name: string, out: number, inp: number) => tensors.push({ name: `blk.${i}.${name}.weight`, shape: [out, inp], data: random(out * inp, 0.15), dtype });
    tensors.push({ name: `blk.${i}.attn_norm.weight`, shape: [embd], data: ones(embd) });
    w('attn_q', embd, embd);
    w('attn_k', kv, embd);
    w('attn_v', kv, embd);
    w('attn_output', embd, embd);
    tensors.push({ name: `blk.${i}.ffn_norm.weight`, shape: [embd], data: ones(embd) });
    w('ffn_gate', ff, embd);
    w('ffn_up', ff, embd);
    w('ffn_down', embd, ff);
  }
  const tokens = ['<unk>', '<s>', '</s>', ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`), ...words];
  const u32 = (value: number): GgufValue => ({ type: 'UINT32', value });
  const metadata: Array<[string, GgufValue]> = [
    ['general.architecture', { type: 'STRING', value: 'llama' }],
    ['general.name', { type: 'STRING', value: 'eigenlorax tiny llama' }],
    ['llama.context_length', u32(128)],
    ['llama.embedding_length', u32(embd)],
    ['llama.block_count', u32(layers)],
    ['llama.feed_forward_length', u32(ff)],
    ['llama.attention.head_count', u32(heads)],
    ['llama.attention.head_count_kv', u32(headsKv)],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'FLOAT32', value: 1e-5 }],
    ['tokenizer.ggml.model', { type: 'STRING', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'ARRAY', itemType: 'STRING', value: tokens }],
    ['tokenizer.ggml.scores', { type: 'ARRAY', itemType: 'FLOAT32', value: tokens.map((_, i) => (i < 259 ? 0 : -i)) }],
    ['tokenizer.ggml.token_type', { type: 'ARRAY', itemType: 'INT32', value: tokens.map((_, i) => (i === 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1)) }],
    ['tokenizer.ggml.bos_token_id', u32(1)],
    ['tokenizer.ggml.eos_token_id', u32(2)],
    ['tokenizer.ggml.unknown_token_id', u32(0)],
  ];
  await writeGguf(file, tensors, { metadata });
}

/**
 * A LoRA adapter for the tiny model under HF (PEFT) names, every linear layer of every
 * block, rank 4 (gate_proj rank 2), alpha 8 except v_proj (alpha 3): a file alpha cannot
 * give every module its scale, so the writer must fold.
 */
export function tinyLlamaAdapter(seed: number, shape: TinyLlama = tinyLlama): LoraAdapter {
  const g = gaussian(rng(seed));
  const { layers, embd, ff, heads, headsKv } = shape;
  const kv = (embd / heads) * headsKv;
  const modules = new Map<string, LoraModule>();
  const add = (name: string, out: number, inp: number, rank: number, alpha: number) => {
    const A = Float32Array.from({ length: rank * inp }, () => g() * 0.3);
    const B = Float32Array.from({ length: out * rank }, () => g() * 0.3);
    modules.set(name, {
      name,
      A: { rows: rank, cols: inp, data: A },
      B: { rows: out, cols: rank, data: B },
      rank,
      alpha,
      scale: alpha / rank,
      rslora: false,
      layout: 'linear',
      shapes: { A: [rank, inp], B: [out, rank] },
      inFeatures: inp,
      outFeatures: out,
      fanInFanOut: false,
      keys: { A: '', B: '' },
      dtypes: { A: 'F32', B: 'F32' },
    });
  };
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}`;
    add(`${p}.self_attn.q_proj`, embd, embd, 4, 8);
    add(`${p}.self_attn.k_proj`, kv, embd, 4, 8);
    add(`${p}.self_attn.v_proj`, kv, embd, 4, 3);
    add(`${p}.self_attn.o_proj`, embd, embd, 4, 8);
    add(`${p}.mlp.gate_proj`, ff, embd, 2, 8);
    add(`${p}.mlp.up_proj`, ff, embd, 4, 8);
    add(`${p}.mlp.down_proj`, embd, ff, 4, 8);
  }
  return { format: 'peft', baseModel: 'tiny-llama', source: null, modules, extras: new Map(), config: null, metadata: {} };
}
