/**
 * Types of {@link mergeIntoBase}: folding LoRA updates into a base checkpoint's weights
 * (DESIGN §1, "Merging").
 */
import type { OpenedAdapter } from '../adapters/open.js';
import type { LoraAdapter, LoraLayout } from '../adapters/types.js';
import type { SafetensorsDType } from '../io/safetensors.js';
import type { GgmlType } from '../io/gguf-format.js';

/**
 * An adapter to merge: a path (PEFT folder, diffusers or kohya file, read with
 * `openAdapter`), an adapter opened with `openAdapter` (its factors are read, it is not
 * closed), or an adapter in memory in the shape `loadAdapter` returns (also what
 * `reconstructAdapter(subspace, coefficients)` returns, so coefficients on a subspace merge
 * through their reconstruction).
 */
export type MergeAdapterInput = string | LoraAdapter | OpenedAdapter;

export interface MergeAdapterSpec {
  adapter: MergeAdapterInput;
  /** Multiplies this adapter's update (default 1). */
  weight?: number;
}

export interface MergeIntoBaseOptions {
  /**
   * The base checkpoint: a `.safetensors` file, a shard index
   * (`*.safetensors.index.json`), or a folder holding one of them; or a GGUF model
   * (then the output is a GGUF file: a `.gguf` path, or a folder).
   */
  base: string;
  /** The adapters, each with an optional weight; plain adapters mean weight 1. */
  adapters: ReadonlyArray<MergeAdapterSpec | MergeAdapterInput>;
  /**
   * Where to write. A single-file base: a `.safetensors` path, or a folder (created if
   * needed) that receives a file of the base's name. A sharded base: a folder (created if
   * needed) that receives the shards under their names and the index under its name, or
   * the path of the index to write (its folder receives the shards).
   */
  output: string;
  /** A global multiplier on every update (default 1). */
  scale?: number;
  /** Subtract the updates instead of adding them (undo an earlier merge). Default false. */
  unmerge?: boolean;
  /** Output dtypes: 'keep' (the default and only choice for now) writes every tensor in its stored dtype. */
  dtype?: 'keep';
}

/** One adapter module's part in a merged tensor. */
export interface MergedModule {
  /** Index into `MergeReport.adapters`. */
  adapter: number;
  /** The adapter's module name. */
  module: string;
  layout: LoraLayout;
  rank: number;
  /** The adapter's own scale (`alpha / r`, ...). */
  scale: number;
  /** What multiplies `B A` in the end: `+-(options.scale x weight x scale)`. */
  coefficient: number;
  /** True when the stored weight is the transpose of `B A` (fan_in_fan_out, embedding). */
  transposed: boolean;
}

/** One base tensor that was changed. */
export interface MergedTensor {
  key: string;
  /** The stored type (a safetensors dtype, or a ggml type for a GGUF base). */
  dtype: SafetensorsDType | GgmlType;
  shape: number[];
  /** The file (shard) it is in, relative to the output folder. */
  file: string;
  modules: MergedModule[];
}

export interface MergedAdapterReport {
  /** The adapter's path (absolute), or null for one built in memory. */
  source: string | null;
  format: string;
  weight: number;
  /** Modules merged (all of the adapter's modules). */
  modules: number;
  /** Non-LoRA tensors of the adapter (classifier heads, ...): not merged. */
  extrasSkipped: string[];
}

export interface MergeReport {
  /** What was opened as the base (the file or the shard index, absolute). */
  base: string;
  /** What was written: the file, or the shard index (absolute). */
  output: string;
  /** Every file written (absolute): the shards, then the index. */
  files: string[];
  unmerge: boolean;
  scale: number;
  adapters: MergedAdapterReport[];
  /** The changed tensors, in base order. */
  merged: MergedTensor[];
  tensors: { total: number; touched: number; copied: number };
  bytes: {
    /** Bytes of all files written. */
    written: number;
    /** Stored bytes of the changed tensors. */
    touched: number;
    /** Multiply-adds of the low-rank products (sum of rows x cols x rank). */
    flops: number;
  };
  seconds: number;
}
