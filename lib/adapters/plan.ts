/** What a format reader works out from a file's header (and config) before any factor is read. */
import type { SafetensorsReader } from '../io/safetensors.js';
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
