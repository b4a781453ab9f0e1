/** Types of {@link extractLora}: a LoRA adapter from a base and a fine-tuned checkpoint. */
import type { AdapterFormat, GgufAdapterOptions, LoraLayout } from '../adapters/types.js';

export interface ExtractLoraOptions {
  /** The base checkpoint: a `.safetensors` file, a shard index, or a folder holding one. */
  base: string;
  /** The fine-tuned checkpoint, same forms. */
  tuned: string;
  /** Where the adapter goes (as `saveAdapter` takes it for `format`). */
  out: string;
  /**
   * Rank per module (capped at the weight's smaller side). With `threshold`, the most rank
   * a module may get (default 128).
   */
  rank?: number;
  /**
   * Energy threshold in (0, 1]: each module gets the smallest rank whose singular values
   * hold this fraction of `||W_tuned - W_base||_F^2` (at most `rank`).
   */
  threshold?: number;
  /**
   * Only these modules: patterns matched the way PEFT matches `target_modules` /
   * `rank_pattern` keys (a regular expression over a trailing run of dot-separated parts:
   * `q_proj`, `self_attn\.(q|v)_proj`, `layers\.1\d\..*`), or a predicate. Each pattern
   * must select at least one weight. Names are the weights' keys without `.weight`.
   */
  modules?: readonly string[] | ((name: string) => boolean);
  /** Output format, handed to `saveAdapter` (default 'peft'). */
  format?: AdapterFormat;
  /** GGUF output: the model's architecture / head counts, as saveAdapter takes them. */
  gguf?: GgufAdapterOptions;
  /** Factor dtype (default: the base weight's F16/BF16, else F32). */
  dtype?: 'F32' | 'F16' | 'BF16';
  /**
   * Put before every module name (`unet.` for a diffusers U-Net, so that the names are
   * `unet.down_blocks...` and a kohya or diffusers file can name them). Default ''.
   */
  namePrefix?: string;
  /** The base weights are stored `in x out` (GPT-2 `Conv1D`): the adapter gets fan_in_fan_out. Default false. */
  fanInFanOut?: boolean;
  /** Written as the adapter's base model (`base_model_name_or_path`); default the base path. */
  baseModel?: string | null;
  /** rsvd settings (defaults: oversample 10, powerIters 2, seed 0). */
  oversample?: number;
  powerIters?: number;
  seed?: number;
  /** Called after each module. */
  onProgress?: (progress: ExtractProgress) => void;
}

export interface ExtractProgress {
  module: string;
  done: number;
  total: number;
}

/** One extracted module. */
export interface ExtractedModule {
  /** The adapter's module name (`namePrefix` + the weight key without `.weight`). */
  name: string;
  /** The weight's key in both checkpoints. */
  tensor: string;
  shape: number[];
  layout: LoraLayout;
  rank: number;
  /** `||W_tuned - W_base||_F`. */
  norm: number;
  /** Fraction of `||W_tuned - W_base||_F^2` the rank-`rank` factors hold (sum of kept s_i^2 over the total). */
  captured: number;
  /** `||D - B A||_F / ||D||_F = sqrt(1 - captured)`. */
  relativeError: number;
  /** Time to read both weights and form the difference, and time of the SVD. */
  seconds: { read: number; svd: number };
}

export interface ExtractReport {
  base: string;
  tuned: string;
  format: AdapterFormat;
  files: string[];
  modules: ExtractedModule[];
  /** Selected weights that are equal in both checkpoints (no module written). */
  unchanged: string[];
  /** Float weights that were not extracted and why (1-D tensors, embeddings, dtypes). */
  skipped: Array<{ tensor: string; why: string }>;
  /** Over all extracted modules: `sqrt(sum ||D||^2)`, the fraction of that energy captured, the relative error. */
  total: { norm: number; captured: number; relativeError: number };
  seconds: number;
}
