/**
 * Module names between Hugging Face models and llama.cpp's GGUF tensors, for LoRA
 * adapters, as llama.cpp's convert_hf_to_gguf.py / gguf-py tensor_mapping.py name them:
 *
 * | HF module (PEFT name)                         | GGUF (`<name>.weight`)   |
 * |-----------------------------------------------|--------------------------|
 * | `model.layers.N.self_attn.{q,k,v,o}_proj`     | `blk.N.attn_{q,k,v,output}` |
 * | `model.layers.N.mlp.{gate,up,down}_proj`      | `blk.N.ffn_{gate,up,down}` |
 * | `lm_head`                                     | `output`                 |
 * | gpt2 `transformer.h.N.attn.c_attn`            | `blk.N.attn_qkv`         |
 * | gpt2 `transformer.h.N.attn.c_proj`            | `blk.N.attn_output`      |
 * | gpt2 `transformer.h.N.mlp.c_fc` / `.c_proj`   | `blk.N.ffn_up` / `ffn_down` |
 *
 * Llama and Mistral (GGUF architecture `llama`): convert_hf_to_gguf.py permutes the rows of
 * `q_proj` and `k_proj` (`LlamaModel.permute`, from HF's rotary layout back to the
 * interleaved one llama.cpp uses), so a LoRA's `B` rows on those modules are permuted the
 * same way, which needs the head counts. Qwen2 (`qwen2`) and GPT-2 are not permuted.
 * GPT-2's Conv1D weights are transposed to `[out, in]` in GGUF; PEFT stores their factors
 * the usual way (`A` is `r x in`, `B` is `out x r`, `fan_in_fan_out` on the module), so the
 * factors carry over unchanged. (convert_lora_to_gguf.py transposes the LoRA as a whole
 * there, which swaps A and B: we do not.)
 */
import { EigenLoraxError } from '../errors.js';

/** The model families whose LoRA module names are mapped. */
export const ggufLoraArchitectures = ['llama', 'mistral', 'qwen2', 'gpt2'] as const;
export type GgufLoraArchitecture = (typeof ggufLoraArchitectures)[number];

/** `general.architecture` of each family in GGUF (Mistral models are `llama` there). */
export const ggufArchitectureName: Readonly<Record<GgufLoraArchitecture, string>> = {
  llama: 'llama',
  mistral: 'llama',
  qwen2: 'qwen2',
  gpt2: 'gpt2',
};

const llamaModules: Record<string, string> = {
  'self_attn.q_proj': 'attn_q',
  'self_attn.k_proj': 'attn_k',
  'self_attn.v_proj': 'attn_v',
  'self_attn.o_proj': 'attn_output',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down',
};
const gpt2Modules: Record<string, string> = {
  'attn.c_attn': 'attn_qkv',
  'attn.c_proj': 'attn_output',
  'mlp.c_fc': 'ffn_up',
  'mlp.c_proj': 'ffn_down',
};
const invert = (m: Record<string, string>) => Object.fromEntries(Object.entries(m).map(([k, v]) => [v, k]));
const llamaBack = invert(llamaModules);
const gpt2Back = invert(gpt2Modules);

/** True for names already in GGUF's spelling (`blk.3.attn_q`, `output`, `token_embd`). */
export function isGgufModuleName(name: string): boolean {
  return /^blk\.\d+\.[a-z0-9_]+$/.test(name) || name === 'output' || name === 'token_embd';
}

/** The GGUF name of an HF module name for `arch`, or null when it has none. */
export function ggufModuleName(arch: GgufLoraArchitecture, name: string): string | null {
  if (isGgufModuleName(name)) return name;
  if (arch === 'gpt2') {
    const m = /^(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)$/.exec(name);
    return m ? `blk.${m[1]}.${gpt2Modules[m[2] as string]}` : null;
  }
  if (name === 'lm_head') return 'output';
  const m = /^(?:model\.)?layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)$/.exec(name);
  return m ? `blk.${m[1]}.${llamaModules[m[2] as string]}` : null;
}

/** The HF module name (as PEFT names it on the CausalLM model) of a GGUF name, or null. */
export function hfModuleName(arch: GgufLoraArchitecture, name: string): string | null {
  const m = /^blk\.(\d+)\.([a-z0-9_]+)$/.exec(name);
  if (arch === 'gpt2') {
    const path = m ? gpt2Back[m[2] as string] : undefined;
    return path === undefined ? null : `transformer.h.${m?.[1]}.${path}`;
  }
  if (name === 'output') return 'lm_head';
  const path = m ? llamaBack[m[2] as string] : undefined;
  return path === undefined ? null : `model.layers.${m?.[1]}.${path}`;
}

/** The head count whose permutation the B rows of this GGUF module get, or null (no permutation). */
export function permutedHeads(arch: GgufLoraArchitecture, ggufName: string, heads: { headCount?: number; headCountKv?: number }): number | null {
  if (arch !== 'llama' && arch !== 'mistral') return null;
  if (/\.attn_q$/.test(ggufName)) return heads.headCount ?? NaN;
  if (/\.attn_k$/.test(ggufName)) return heads.headCountKv ?? heads.headCount ?? NaN;
  return null;
}

/**
 * Permutes the rows of `B` (`rows x cols`, row-major) as LlamaModel.permute does
 * (`reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2)`), or back (`inverse`).
 */
export function permuteRows(B: Float32Array, rows: number, cols: number, heads: number, inverse: boolean, where: string): Float32Array {
  if (!Number.isSafeInteger(heads) || heads < 1 || rows % (2 * heads) !== 0) {
    throw new EigenLoraxError(
      `${where}: ${rows} rows cannot be split into ${heads} rotary heads of an even size (check headCount / headCountKv)`,
      'ERR_SHAPE_MISMATCH',
    );
  }
  const headDim = rows / heads;
  const half = headDim / 2;
  const out = new Float32Array(B.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < 2; j++) {
      for (let k = 0; k < half; k++) {
        const hf = h * headDim + j * half + k;
        const gg = h * headDim + 2 * k + j;
        const [from, to] = inverse ? [gg, hf] : [hf, gg];
        out.set(B.subarray(from * cols, (from + 1) * cols), to * cols);
      }
    }
  }
  return out;
}

/** The family of a GGUF `general.architecture` (llama for Mistral too), or null. */
export function familyOfGgufArchitecture(arch: string): GgufLoraArchitecture | null {
  return arch === 'llama' || arch === 'qwen2' || arch === 'gpt2' ? arch : null;
}
