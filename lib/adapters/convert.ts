/** {@link convertAdapter}: any adapter file eigenlorax reads, written in any format it writes. */
import { argumentPlace, parse } from '../schema.js';
import { invalid } from '../validate.js';
import { ConvertAdapterOptionsSchema } from './options.js';
import { openAdapter } from './open.js';
import { saveAdapter } from './save.js';
import type { AdapterFormat, SaveAdapterOptions, SavedAdapter } from './types.js';

export interface ConvertAdapterOptions extends SaveAdapterOptions {
  /** Read the input as this format instead of detecting it. */
  from?: AdapterFormat;
}

/**
 * Reads the adapter at `input` (PEFT folder, diffusers / kohya `.safetensors`, GGUF LoRA)
 * and writes it to `output` as `options.format`, streaming one factor at a time: what
 * llama.cpp's convert_lora_to_gguf.py does for GGUF (without needing the base model when
 * `options.gguf` names the architecture), and the reverse. Names are mapped between
 * formats (HF <-> GGUF for llama, mistral, qwen2 and gpt2; diffusers <-> kohya for Stable
 * Diffusion); what the target cannot express is refused before anything is written
 * (ERR_ADAPTER_UNSUPPORTED). Atomic as {@link saveAdapter} is.
 */
export async function convertAdapter(input: string, output: string, options: ConvertAdapterOptions): Promise<SavedAdapter> {
  if (typeof input !== 'string' || input.length === 0) throw invalid('a path (non-empty string)', 'input', input);
  const { from, ...save } = parse(ConvertAdapterOptionsSchema, options, argumentPlace('options'));
  const opened = await openAdapter(input, {
    ...(from === undefined ? {} : { format: from }),
    ...(save.allowNonFinite === undefined ? {} : { allowNonFinite: save.allowNonFinite }),
  });
  try {
    return await saveAdapter(opened, output, save);
  } finally {
    await opened.close();
  }
}
