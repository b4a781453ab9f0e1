/**
 * The one in-memory model of a LoRA adapter, whatever file format it came from.
 *
 * Conventions (see README "Adapters" and DESIGN §1):
 *  - `A` is `rank x inFeatures` and `B` is `outFeatures x rank`, row-major f32; the update is
 *    `dW = scale * B A`.
 *  - Conv LoRA (`layout: 'conv'`): the down-projection `rank x in x kh x kw` is flattened to
 *    `A` = `rank x (in * kh * kw)` (row-major, so the flattening is a reinterpretation, not
 *    a copy), and the up-projection `out x rank x 1 x 1` to `B` = `out x rank`.
 *  - Embedding LoRA (`layout: 'embedding'`, PEFT `lora_embedding_A/B`): `A` is
 *    `rank x numEmbeddings`, `B` is `embeddingDim x rank`, so `B A` is the transpose of the
 *    embedding table's shape (`numEmbeddings x embeddingDim`), as PEFT stores it.
 *  - `fanInFanOut`: the base weight is stored `in x out` (GPT-2 `Conv1D`), the transpose
 *    of `dW`; the factors themselves are stored the usual way.
 */
import type { Matrix } from '../matrix.js';
import type { RawTensor, SafetensorsDType, SafetensorsFloatDType } from '../io/safetensors.js';

/** The adapter file formats eigenlorax reads and writes. */
export type AdapterFormat = 'peft' | 'diffusers' | 'kohya' | 'gguf';
export const adapterFormats: readonly AdapterFormat[] = ['peft', 'diffusers', 'kohya', 'gguf'];

export type LoraLayout = 'linear' | 'conv' | 'embedding';

/** Where an adapter was read from. */
export interface AdapterSource {
  /** The path that was opened (absolute). */
  path: string;
  /** The files read: the config (if any) and the weights file (absolute). */
  files: string[];
}

/** Everything about one adapted module except its factors. */
export interface LoraModuleInfo {
  /**
   * The module's name, normalised to the base model's parameter path without `.weight`:
   *  - PEFT: the key without `base_model.model.` (`transformer.h.0.attn.c_attn`);
   *  - diffusers: the pipeline component, then the module path in it
   *    (`unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`,
   *    `text_encoder.text_model.encoder.layers.0.self_attn.q_proj`), whatever key spelling
   *    the file used;
   *  - kohya: the same diffusers-style name when every module of the file is a standard
   *    SD 1.x/2.x U-Net or CLIP text-encoder path (recovered by a strict grammar), else the
   *    kohya name itself (`lora_unet_input_blocks_4_1_proj_in`).
   */
  name: string;
  rank: number;
  alpha: number;
  /** `alpha / rank`, or `alpha / sqrt(rank)` when `rslora`. */
  scale: number;
  /** rsLoRA scaling (PEFT `use_rslora`). */
  rslora: boolean;
  layout: LoraLayout;
  /** Conv LoRA: the spatial kernel of the down-projection (`[kh, kw]` for conv2d). */
  convKernel?: number[];
  /** The factors' shapes as stored in the file (4-D for conv LoRA). */
  shapes: { A: number[]; B: number[] };
  /** Columns of `A` (flattened for conv). */
  inFeatures: number;
  /** Rows of `B`. */
  outFeatures: number;
  fanInFanOut: boolean;
  /** The original tensor keys, reused when saving to the same format. */
  keys: { A: string; B: string; alpha?: string };
  /** Stored dtypes; `saveAdapter` keeps them unless told otherwise. */
  dtypes: { A: SafetensorsFloatDType; B: SafetensorsFloatDType; alpha?: SafetensorsDType };
}

/** One adapted module with its factors. */
export interface LoraModule extends LoraModuleInfo {
  /** `rank x inFeatures`. */
  A: Matrix;
  /** `outFeatures x rank`. */
  B: Matrix;
}

/** A tensor that is not a LoRA factor (classifier head, bias, ...), kept byte for byte. */
export type AdapterExtra = RawTensor;

/** A LoRA adapter in memory. */
export interface LoraAdapter {
  format: AdapterFormat;
  /** `base_model_name_or_path` (PEFT), `ss_sd_model_name` (kohya), else null. */
  baseModel: string | null;
  source: AdapterSource | null;
  /** By name, in natural name order. */
  modules: Map<string, LoraModule>;
  /** Non-LoRA tensors by their original key. */
  extras: Map<string, AdapterExtra>;
  /**
   * PEFT: `adapter_config.json` as read. diffusers: the parsed `lora_adapter_metadata`
   * when the file has one. Otherwise null.
   */
  config: Record<string, unknown> | null;
  /** The weights file's safetensors `__metadata__`. */
  metadata: Record<string, string>;
}

export interface OpenAdapterOptions {
  /** Skip detection and read the path as this format. */
  format?: AdapterFormat;
  /** Accept NaN and Inf in factors (default false: ERR_NON_FINITE naming file and key). */
  allowNonFinite?: boolean;
}

export type LoadAdapterOptions = OpenAdapterOptions;

export interface SaveAdapterOptions {
  format: AdapterFormat;
  /** Storage dtype of the factors; default: each factor's own dtype (F64 is kept as F64). */
  dtype?: 'F32' | 'F16' | 'BF16';
  /**
   * Non-LoRA tensors: 'keep' (default) writes them under their original keys, which is
   * only allowed when saving to the format they came from (a kohya file cannot hold a PEFT
   * classifier head); 'drop' leaves them out.
   */
  extras?: 'keep' | 'drop';
  /** Write NaN/Inf factors instead of refusing them. */
  allowNonFinite?: boolean;
  /**
   * GGUF only: which model the adapter is for (the architecture and, for Llama/Mistral
   * `q_proj`/`k_proj`, the head counts), when saving to GGUF from HF names or from GGUF to
   * HF names. See lib/adapters/gguf.ts.
   */
  gguf?: GgufAdapterOptions;
}

/** How GGUF LoRA names and layouts relate to the model (lib/adapters/gguf-names.ts). */
export interface GgufAdapterOptions {
  /** 'llama', 'mistral', 'qwen2' or 'gpt2'; default: the adapter's own (GGUF) or `base`'s. */
  architecture?: string;
  /** Attention heads (`num_attention_heads`); Llama/Mistral q_proj needs it. */
  headCount?: number;
  /** Key/value heads (`num_key_value_heads`, default headCount); Llama/Mistral k_proj needs it. */
  headCountKv?: number;
  /** A GGUF model file to take the architecture and head counts from. */
  base?: string;
}

export interface SavedAdapter {
  format: AdapterFormat;
  /** The files written (absolute). */
  files: string[];
}
