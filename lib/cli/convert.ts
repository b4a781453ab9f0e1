/** `eigenlorax convert <adapter> -o <out> --format f`: any adapter eigenlorax reads, in any format it writes (convertAdapter). */
import path from 'node:path';
import { Command, Option } from 'commander';
import type { AdapterFormat, SaveAdapterOptions } from '../adapters/types.js';
import { examples, keyValues, printJson } from './format.js';
import { addGgufOptions, ggufOptionsFrom, type GgufFlags } from './gguf-options.js';
import { choice, UsageError } from './options.js';
import { jsonErrors } from './report.js';

const FORMATS = ['peft', 'kohya', 'diffusers', 'gguf'] as const satisfies readonly AdapterFormat[];

interface ConvertFlags extends GgufFlags {
  output?: string;
  format: AdapterFormat;
  from?: AdapterFormat;
  dtype?: 'F32' | 'F16' | 'BF16';
  dropExtras?: boolean;
  json?: boolean;
}

export function convertCommand(): Command {
  const command = new Command('convert')
    .usage(
      '<adapter> -o <out> --format peft|kohya|diffusers|gguf [--from fmt] [--dtype F32|F16|BF16] [--drop-extras] ' +
        '[--arch llama|mistral|qwen2|gpt2] [--gguf-base model.gguf] [--head-count n] [--head-count-kv n] [--json]',
    )
    .summary('an adapter in another format: PEFT, kohya, diffusers, GGUF (llama.cpp) either way, one factor at a time')
    .description(
      'Reads an adapter (PEFT folder, diffusers or kohya .safetensors, GGUF LoRA; the format detected or given by --from) and writes it ' +
        'as --format with convertAdapter, streaming one factor at a time. To GGUF (what llama.cpp\'s convert_lora_to_gguf.py does) the ' +
        'HF names are mapped for --arch llama, mistral, qwen2 or gpt2; Llama and Mistral need the head counts (--head-count, ' +
        '--head-count-kv, or --gguf-base model.gguf to read them from). From GGUF to HF names the same flags apply. What the target ' +
        'cannot hold is refused before anything is written (ERR_ADAPTER_UNSUPPORTED); --drop-extras leaves out non-LoRA tensors.',
    )
    .argument('<adapter>', 'an adapter folder or file')
    .option('-o, --output <out>', 'the converted adapter (a folder for peft, a .safetensors file for kohya and diffusers, a .gguf file for gguf)')
    .addOption(new Option('--format <format>', FORMATS.join(', ')).argParser(choice('--format', FORMATS)).makeOptionMandatory())
    .addOption(new Option('--from <format>', 'read the input as this format instead of detecting it').argParser(choice('--from', FORMATS)))
    .addOption(new Option('--dtype <dtype>', 'F32, F16 or BF16 factors (default: each factor\'s own)').argParser(choice('--dtype', ['F32', 'F16', 'BF16'] as const, true)))
    .option('--drop-extras', 'leave out non-LoRA tensors (classifier heads, biases) instead of refusing a format that cannot hold them');
  addGgufOptions(command)
    .option('--json', 'print what was written as JSON')
    .addHelpText(
      'after',
      examples([
        ['eigenlorax convert adapters/qwen-sql -o qwen-sql.gguf --format gguf --arch qwen2', 'PEFT -> GGUF for llama.cpp / node-llama-cpp'],
        ['eigenlorax convert adapters/llama -o llama.gguf --format gguf --gguf-base llama-3.2-1b-f16.gguf', 'architecture and head counts from the model'],
        ['eigenlorax convert found.gguf -o found-peft --format peft --arch qwen2', 'GGUF -> PEFT'],
        ['eigenlorax convert pytorch_lora_weights.safetensors -o lora.safetensors --format kohya --dtype F16', 'diffusers -> kohya'],
      ]),
    )
    .action(async (input: string, flags: ConvertFlags) => {
      if (flags.output === undefined || flags.output.length === 0) throw new UsageError('convert needs -o <out>');
      const output = path.resolve(flags.output);
      if (flags.format === 'gguf' && !output.endsWith('.gguf')) throw new UsageError(`--format gguf writes one .gguf file, not ${JSON.stringify(flags.output)}`);
      const gguf = ggufOptionsFrom(flags, flags.format === 'gguf' || flags.from === 'gguf' || input.endsWith('.gguf'));
      const options: SaveAdapterOptions & { from?: AdapterFormat } = { format: flags.format };
      if (flags.from !== undefined) options.from = flags.from;
      if (flags.dtype !== undefined) options.dtype = flags.dtype;
      if (flags.dropExtras === true) options.extras = 'drop';
      if (gguf !== undefined) options.gguf = gguf;
      const { convertAdapter } = await import('../adapters/convert.js');
      const saved = await convertAdapter(input, output, options);
      if (flags.json === true) {
        printJson({ input, format: saved.format, files: saved.files });
        return;
      }
      process.stdout.write(`converted ${input} to ${saved.format}\n${keyValues(saved.files.map((f, i) => [i === 0 ? 'files' : '', f]))}`);
    });
  return jsonErrors(command);
}
