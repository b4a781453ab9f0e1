/** `eigenlorax extract --base <model> --tuned <model> -o <out>`: a LoRA from a fine-tune (extractLora). */
import path from 'node:path';
import { Command, Option } from 'commander';
import type { AdapterFormat } from '../adapters/types.js';
import type { ExtractLoraOptions } from '../extract/types.js';
import { ProgressBar } from '../progress.js';
import { columnsTable, examples, f3, keyValues, printJson, seconds } from './format.js';
import { addGgufOptions, ggufOptionsFrom, type GgufFlags } from './gguf-options.js';
import { choice, integer, nonEmpty, number, UsageError } from './options.js';
import { jsonErrors } from './report.js';

const FORMATS = ['peft', 'kohya', 'diffusers', 'gguf'] as const satisfies readonly AdapterFormat[];

interface ExtractFlags extends GgufFlags {
  base?: string;
  tuned?: string;
  output?: string;
  rank?: number;
  threshold?: number;
  modules?: string[];
  format?: AdapterFormat;
  dtype?: 'F32' | 'F16' | 'BF16';
  namePrefix?: string;
  fanInFanOut?: boolean;
  seed?: number;
  json?: boolean;
  quiet?: boolean;
}

/** "q_proj,v_proj" as patterns. */
function patternList(text: string): string[] {
  const parts = text.split(',').map((p) => p.trim());
  if (parts.some((p) => p.length === 0)) throw new UsageError(`--modules expects comma-separated patterns, not ${JSON.stringify(text)}`);
  return parts;
}

export function extractCommand(): Command {
  const command = new Command('extract')
    .usage(
      '--base <model> --tuned <model> (--rank r | --threshold f [--rank cap]) -o <out> [--modules p1,p2] [--format peft|kohya|diffusers|gguf] ' +
        '[--dtype F32|F16|BF16] [--name-prefix unet.] [--fan-in-fan-out] [--seed n] [--arch a --head-count n --head-count-kv n | --gguf-base m.gguf] [--json] [--quiet]',
    )
    .summary('a LoRA from a fine-tune: the truncated SVD of W_tuned - W_base per weight, written as an adapter')
    .description(
      'Extracts a LoRA adapter from a base and a fine-tuned checkpoint (.safetensors files, shard indexes or folders) with extractLora: ' +
        'per weight the rank-r truncated SVD of W_tuned - W_base, stored as balanced factors with alpha = rank. With --threshold each ' +
        'module gets the smallest rank holding that fraction of the difference\'s energy (at most --rank, default 128). Prints per module ' +
        'its rank, the energy captured, the relative error and the read and SVD times, then the file total. Identical checkpoints are ' +
        'ERR_NOTHING_TO_EXTRACT (exit 1).',
    )
    .option('--base <model>', 'the base checkpoint: a .safetensors file, a shard index, or a folder holding one')
    .option('--tuned <model>', 'the fine-tuned checkpoint, same forms')
    .option('-o, --output <out>', 'the adapter (a folder for peft, a .safetensors file for kohya and diffusers, a .gguf file for gguf)')
    .addOption(new Option('--rank <r>', 'rank per module (with --threshold: the most a module may get)').argParser(integer('--rank', { min: 1 })))
    .addOption(new Option('--threshold <f>', 'energy fraction each module keeps, instead of a fixed rank').argParser(number('--threshold', { noun: 'a fraction', above: 0, max: 1 })))
    .addOption(new Option('--modules <patterns>', 'only these modules: comma-separated PEFT-style patterns (q_proj,v_proj or "layers\\.1\\d\\..*")').argParser(patternList))
    .addOption(new Option('--format <format>', `${FORMATS.join(', ')} (default peft)`).argParser(choice('--format', FORMATS)))
    .addOption(new Option('--dtype <dtype>', 'F32, F16 or BF16 factors (default: the base weight\'s F16/BF16, else F32)').argParser(choice('--dtype', ['F32', 'F16', 'BF16'] as const, true)))
    .addOption(new Option('--name-prefix <prefix>', 'put before every module name (unet. for a diffusers U-Net)').argParser(nonEmpty('--name-prefix', 'a prefix such as unet.')))
    .option('--fan-in-fan-out', 'the base weights are stored in x out (GPT-2 Conv1D)')
    .addOption(new Option('--seed <n>', 'seed of the randomized SVD (default 0)').argParser(integer('--seed', { min: 0, max: 2 ** 52 })))
    .option('--json', 'print the extraction report as JSON')
    .option('-q, --quiet', 'no progress bar');
  addGgufOptions(command)
    .addHelpText(
      'after',
      examples([
        ['eigenlorax extract --base models/llama --tuned models/llama-ft --rank 32 -o extracted', 'rank 32 in every 2-D weight, as PEFT'],
        ['eigenlorax extract --base base.safetensors --tuned ft.safetensors --threshold 0.9 --rank 64 --modules q_proj,v_proj -o out', 'rank by energy, at most 64'],
        ['eigenlorax extract --base qwen --tuned qwen-ft --rank 16 --format gguf --arch qwen2 -o qwen-ft.gguf', 'a GGUF LoRA for llama.cpp'],
        ['eigenlorax extract --base unet --tuned unet-ft --rank 16 --name-prefix unet. --format kohya -o lora.safetensors', 'a kohya LoRA of a U-Net'],
      ]),
    )
    .action(async (flags: ExtractFlags) => {
      if (flags.base === undefined || flags.base.length === 0) throw new UsageError('extract needs --base <model>');
      if (flags.tuned === undefined || flags.tuned.length === 0) throw new UsageError('extract needs --tuned <model>');
      if (flags.output === undefined || flags.output.length === 0) throw new UsageError('extract needs -o <out>');
      if (flags.rank === undefined && flags.threshold === undefined) throw new UsageError('extract needs --rank r or --threshold f');
      const out = path.resolve(flags.output);
      if (flags.format === 'gguf' && !out.endsWith('.gguf')) throw new UsageError(`--format gguf writes one .gguf file, not ${JSON.stringify(flags.output)}`);
      const options: ExtractLoraOptions = { base: flags.base, tuned: flags.tuned, out };
      if (flags.rank !== undefined) options.rank = flags.rank;
      if (flags.threshold !== undefined) options.threshold = flags.threshold;
      if (flags.modules !== undefined) options.modules = flags.modules;
      if (flags.format !== undefined) options.format = flags.format;
      if (flags.dtype !== undefined) options.dtype = flags.dtype;
      if (flags.namePrefix !== undefined) options.namePrefix = flags.namePrefix;
      if (flags.fanInFanOut === true) options.fanInFanOut = true;
      if (flags.seed !== undefined) options.seed = flags.seed;
      const gguf = ggufOptionsFrom(flags, flags.format === 'gguf');
      if (gguf !== undefined) options.gguf = gguf;
      const { extractLora } = await import('../extract/extract.js');
      const bar = ProgressBar.forTerminal(flags.quiet === true || flags.json === true);
      let report;
      try {
        report = await extractLora({ ...options, onProgress: (p) => bar.update({ label: 'extract', value: p.done, total: p.total, item: p.module }) });
      } finally {
        bar.stop();
      }
      if (flags.json === true) {
        printJson(report);
        return;
      }
      const s = (x: number) => x.toFixed(3);
      process.stdout.write(`extracted ${report.modules.length} module${report.modules.length === 1 ? '' : 's'} as ${report.format}\n`);
      process.stdout.write(
        columnsTable(
          ['module', 'rank', 'captured', 'rel. error', 'read s', 'svd s'],
          report.modules.map((m) => [m.name, String(m.rank), m.captured.toFixed(4), m.relativeError.toFixed(4), s(m.seconds.read), s(m.seconds.svd)]),
        ),
      );
      const lines: Array<[string, string]> = [
        ['total', `captured ${report.total.captured.toFixed(4)}, relative error ${report.total.relativeError.toFixed(4)} (||dW||_F ${f3(report.total.norm)})`],
        ['time', seconds(report.seconds * 1000)],
      ];
      if (report.unchanged.length > 0) lines.push(['unchanged', `${report.unchanged.length} weight${report.unchanged.length === 1 ? '' : 's'} equal in both`]);
      if (report.skipped.length > 0) lines.push(['skipped', `${report.skipped.length} (--json lists them)`]);
      report.files.forEach((f, i) => lines.push([i === 0 ? 'files' : '', f]));
      process.stdout.write(keyValues(lines));
    });
  return jsonErrors(command);
}
