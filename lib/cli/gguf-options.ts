/** The GGUF target flags shared by convert and export: which model a GGUF LoRA is for. */
import { Option, type Command } from 'commander';
import type { GgufAdapterOptions } from '../adapters/types.js';
import { choice, integer, UsageError } from './options.js';

export const GGUF_ARCHITECTURES = ['llama', 'mistral', 'qwen2', 'gpt2'] as const;

export interface GgufFlags {
  arch?: (typeof GGUF_ARCHITECTURES)[number];
  ggufBase?: string;
  headCount?: number;
  headCountKv?: number;
}

/** --arch, --gguf-base, --head-count, --head-count-kv. */
export function addGgufOptions(command: Command): Command {
  return command
    .addOption(new Option('--arch <arch>', 'GGUF: the model architecture, llama, mistral, qwen2 or gpt2 (default: the adapter\'s own or --gguf-base\'s)').argParser(choice('--arch', GGUF_ARCHITECTURES)))
    .option('--gguf-base <model.gguf>', 'GGUF: a GGUF model to take the architecture and head counts from')
    .addOption(new Option('--head-count <n>', 'GGUF: attention heads (Llama/Mistral q_proj needs it)').argParser(integer('--head-count', { min: 1 })))
    .addOption(new Option('--head-count-kv <n>', 'GGUF: key/value heads (default --head-count; Llama/Mistral k_proj)').argParser(integer('--head-count-kv', { min: 1 })));
}

/** The `gguf` option from the flags, or undefined when none was given; refused when the target is not GGUF and no GGUF is read. */
export function ggufOptionsFrom(flags: GgufFlags, ggufInvolved: boolean): GgufAdapterOptions | undefined {
  const gguf: GgufAdapterOptions = {};
  if (flags.arch !== undefined) gguf.architecture = flags.arch;
  if (flags.ggufBase !== undefined) {
    if (flags.ggufBase.length === 0) throw new UsageError('--gguf-base needs a .gguf model file');
    gguf.base = flags.ggufBase;
  }
  if (flags.headCount !== undefined) gguf.headCount = flags.headCount;
  if (flags.headCountKv !== undefined) gguf.headCountKv = flags.headCountKv;
  if (Object.keys(gguf).length === 0) return undefined;
  if (!ggufInvolved) throw new UsageError('--arch, --gguf-base and --head-count* go with --format gguf (or a GGUF input)');
  return gguf;
}
