/** What a format reader works out from a file's header (and config) before any factor is read. */
import type { RawTensor, SafetensorsDType, SafetensorsReader, TensorLocation } from '../io/safetensors.js';
import type { AdapterFormat, LoraModuleInfo } from './types.js';

export interface AdapterPlan {
  format: AdapterFormat;
  baseModel: string | null;
  config: Record<string, unknown> | null;
  /** Files read besides the weights (the config). */
  configFiles: string[];
  modules: LoraModuleInfo[];
  /** Keys of the non-LoRA tensors. */
  extras: string[];
}

export type Planner = (reader: SafetensorsReader, weightsFile: string) => Promise<AdapterPlan>;

/**
 * What an opened adapter reads its tensors through: a SafetensorsReader, or the GGUF
 * adapter view (lib/adapters/gguf.ts), which has no extras.
 */
export interface AdapterTensorReader {
  readonly path: string;
  readonly files: readonly string[];
  readonly metadata: Readonly<Record<string, string>>;
  /** The tensors that extras are read from (keys in `AdapterPlan.extras`). */
  readonly tensors: ReadonlyMap<string, { readonly dtype: SafetensorsDType; readonly shape: readonly number[]; readonly byteLength: number }>;
  /** `options.out`: a Float32Array of exactly the tensor's element count to read into. */
  readFloat32(key: string, options?: { out?: Float32Array }): Promise<{ data: Float32Array }>;
  readRaw(key: string): Promise<RawTensor>;
  /** Where the tensor's bytes are, when a native call may read them itself (absent or null: read them here). */
  locate?(key: string): TensorLocation | null;
  close(): Promise<void>;
}
