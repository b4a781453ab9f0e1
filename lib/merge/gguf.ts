/**
 * Merging into a GGUF base model (what llama.cpp's `llama-export-lora` does): the base is
 * opened by its magic, and adapters with HF module names are brought to the base's GGUF
 * names first (gguf-names.ts: `model.layers.3.self_attn.q_proj` -> `blk.3.attn_q`; the
 * Llama q/k rows of B permuted with the base's own head counts; GPT-2's Conv1D modules are
 * `[out, in]` in GGUF, so no longer fan_in_fan_out). The merge itself is the safetensors
 * one: a copy of the file with each changed tensor rewritten in place, in its own type
 * (F32/F16/BF16/F64); a quantized tensor that an adapter touches is refused
 * (ERR_UNSUPPORTED_DTYPE), untouched ones, the header and the metadata stay byte for byte.
 */
import { isGgufModuleName, familyOfGgufArchitecture, ggufModuleName, permutedHeads, permuteRows } from '../adapters/gguf-names.js';
import { isGgufFile, openGguf, type GgufReader } from '../io/gguf.js';
import { openSafetensors, type SafetensorsReader } from '../io/safetensors.js';
import type { ResolvedAdapter } from './adapters.js';

export type BaseReader = SafetensorsReader | GgufReader;

/** Opens the base: GGUF when the file starts with "GGUF", safetensors (file, shards, folder) otherwise. */
export async function openBase(base: string): Promise<BaseReader> {
  return (await isGgufFile(base)) ? openGguf(base) : openSafetensors(base);
}

/** The output file extension that tells a file name from a folder name. */
export function baseExtension(reader: BaseReader): string {
  return 'alignment' in reader ? '.gguf' : '.safetensors';
}

/** The adapters' modules under the GGUF base's names (unchanged for a safetensors base). */
export function toBaseNames(reader: BaseReader, adapters: ResolvedAdapter[]): ResolvedAdapter[] {
  if (!('alignment' in reader)) return adapters;
  const architecture = reader.getString('general.architecture') ?? '';
  const family = familyOfGgufArchitecture(architecture);
  if (family === null) return adapters;
  const heads = {
    headCount: reader.getNumber(`${architecture}.attention.head_count`),
    headCountKv: reader.getNumber(`${architecture}.attention.head_count_kv`) ?? reader.getNumber(`${architecture}.attention.head_count`),
  };
  return adapters.map((adapter) => ({
    ...adapter,
    modules: adapter.modules.map((m) => {
      if (isGgufModuleName(m.name) || m.layout !== 'linear') return m;
      const name = ggufModuleName(family, m.name);
      if (name === null) return m; // reported by planMerge with the names it tried
      const h = permutedHeads(family, name, heads);
      const B = h === null ? m.B : { ...m.B, data: permuteRows(m.B.data, m.B.rows, m.B.cols, h, false, `${adapter.label} module ${JSON.stringify(m.name)}`) };
      return { ...m, name, B, fanInFanOut: false };
    }),
  }));
}
