/** `eigenlorax export <subspace> <coefficients> -o <out>`: an adapter rebuilt from its coefficients. */
import path from 'node:path';
import { Command, Option } from 'commander';
import type { AdapterFormat } from '../adapters/types.js';
import { examples, f3, fileNameFor, keyValues, printJson } from './format.js';
import { addGgufOptions, ggufOptionsFrom, type GgufFlags } from './gguf-options.js';
import { choice, UsageError } from './options.js';
import { jsonErrors } from './report.js';
import { outputFlag } from './subspace-options.js';

interface ExportFlags extends GgufFlags {
  output?: string;
  format?: AdapterFormat;
  dtype?: 'F32' | 'F16' | 'BF16';
  json?: boolean;
}

export function exportCommand(): Command {
  const command = new Command('export')
    .usage('<subspace> <coefficients> -o <out> [--format peft|kohya|diffusers|gguf] [--dtype F32|F16|BF16] ' +
        '[--arch llama|mistral|qwen2|gpt2] [--gguf-base model.gguf] [--head-count n] [--head-count-kv n] [--json]')
    .summary('an adapter rebuilt from its coefficients, as a LoRA adapter (kohya: <out>/<name>.safetensors unless <out> ends in .safetensors)')
    .description(
      'Rebuilds an adapter from its coefficients on the subspace and writes it as a LoRA adapter (default: the format it came from). ' +
        'kohya writes one file: <out>/<name>.safetensors unless <out> ends in .safetensors. gguf writes a llama.cpp LoRA to <out>, which ' +
        'must end in .gguf; HF names are mapped for --arch llama, mistral, qwen2 or gpt2 (Llama and Mistral need --head-count and ' +
        '--head-count-kv, or --gguf-base model.gguf to read them from), as convert does.',
    )
    .argument('[subspace]', 'a subspace folder (or its subspace.json)')
    .argument('[coefficients]', 'a coefficients file written by build or project')
    .option('-o, --output <out>', 'the adapter folder or file')
    .addOption(new Option('--format <format>', 'peft, kohya, diffusers or gguf').argParser(choice('--format', ['peft', 'kohya', 'diffusers', 'gguf'] as const)))
    .addOption(new Option('--dtype <dtype>', 'F32, F16 or BF16 factors (default: as stored)').argParser(choice('--dtype', ['F32', 'F16', 'BF16'] as const, true)));
  addGgufOptions(command)
    .option('--json', 'print the result as JSON')
    .addHelpText(
      'after',
      examples([
        ['eigenlorax export subspace subspace/coefficients/imdb.safetensors -o imdb-peft', 'a PEFT folder again'],
        ['eigenlorax export basis basis/coefficients/sql.safetensors -o sql.gguf --format gguf --gguf-base llama-3.2-1b-f16.gguf', 'a GGUF LoRA for llama.cpp'],
      ]),
    )
    .action(async (subspacePath: string | undefined, coefficientsPath: string | undefined, flags: ExportFlags, self: Command) => {
      if (subspacePath === undefined || coefficientsPath === undefined || self.args.length > 2) throw new UsageError('export needs a subspace and one coefficients file');
      const output = outputFlag('export', flags.output);
      const { loadSubspace, loadCoefficients, exportAdapter } = await import('../subspace/index.js');
      const subspace = await loadSubspace(subspacePath);
      const coefficients = await loadCoefficients(coefficientsPath, subspace);
      const target: AdapterFormat = flags.format ?? coefficients.adapter.format;
      let destination = path.resolve(output);
      // gguf writes one file, named as given: refuse a folder-like -o as kohya's folder rule cannot apply.
      if (target === 'gguf' && !destination.endsWith('.gguf')) throw new UsageError(`--format gguf writes one .gguf file, not ${JSON.stringify(output)}`);
      const gguf = ggufOptionsFrom(flags, target === 'gguf' || coefficients.adapter.format === 'gguf');
      // kohya writes one file: <dir>/<adapter>.safetensors when -o is not a .safetensors name.
      if (target === 'kohya' && !destination.endsWith('.safetensors')) destination = path.join(destination, fileNameFor(coefficients.adapter.name, new Set()));
      const saved = await exportAdapter(subspace, coefficients, destination, { format: target, ...(flags.dtype ? { dtype: flags.dtype } : {}), ...(gguf === undefined ? {} : { gguf }) });
      const result = { adapter: coefficients.adapter.name, format: saved.format, modules: coefficients.modules.size, relativeError: coefficients.relativeError, files: saved.files };
      if (flags.json === true) {
        printJson(result);
        return;
      }
      process.stdout.write(
        `exported ${result.adapter} (${result.modules} module${result.modules === 1 ? '' : 's'}, relative dW error ${f3(result.relativeError)}) as ${result.format}\n` +
          keyValues(saved.files.map((f, i) => [i === 0 ? 'files' : '', f])),
      );
    });
  return jsonErrors(command.allowExcessArguments(true));
}
