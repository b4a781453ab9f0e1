/** `eigenlorax combine <adapters...> --method m -o <out>`: one adapter from several (combineAdapters). */
import path from 'node:path';
import { Command, Option } from 'commander';
import type { AdapterFormat, LoraAdapter } from '../adapters/types.js';
import type { CombineAdaptersOptions, CombineInput } from '../combine/combine.js';
import { combineMethodNames } from '../combine/methods.js';
import { counted, examples, keyValues, plural, printJson } from './format.js';
import { choice, integer, number, parseNumber, UsageError } from './options.js';
import { jsonErrors } from './report.js';

type Method = CombineAdaptersOptions['method'];

const METHODS = combineMethodNames satisfies readonly Method[];

/** The methods that prune element-wise and need --density. */
const PRUNING = new Set<string>(METHODS.filter((m) => !['linear', 'cat', 'svd'].includes(m)));

interface CombineFlags {
  output?: string;
  method: Method;
  weights?: number[];
  rank?: number;
  density?: number;
  majoritySign?: 'total' | 'frequency';
  seed?: number;
  subspace?: string;
  modules?: 'same' | 'union';
  format?: AdapterFormat;
  dtype?: 'F32' | 'F16' | 'BF16';
  maxDenseElements?: number;
  json?: boolean;
}

/** "1,0.5,0.25" as numbers. */
function weightList(text: string): number[] {
  return text.split(',').map((part) => parseNumber('--weights', part.trim()));
}

export function combineCommand(): Command {
  const command = new Command('combine')
    .usage(
      '<adapters...> --method <m> -o <out> [--weights w1,w2,...] [--rank r] [--density d] [--majority-sign total|frequency] [--seed n] ' +
        '[--subspace <dir>] [--modules same|union] [--format peft|kohya|diffusers] [--dtype F32|F16|BF16] [--max-dense-elements n] [--json]',
    )
    .summary('one adapter from several: exact linear on a subspace, PEFT\'s linear / cat / svd, TIES, DARE, magnitude pruning')
    .description(
      'Combines adapters into one with combineAdapters and writes it as a LoRA adapter (scale 1 in every module, the weights inside ' +
        'the factors). With --subspace the inputs are coefficients files on that subspace and `linear` is the exact weighted sum ' +
        're-factored to rank <= K; otherwise they are adapters and the methods are PEFT\'s add_weighted_adapter ones (ties, dare_* and ' +
        'magnitude_prune need --density). The README\'s "Combining adapters" section says what each method computes.',
    )
    .argument('<adapters...>', 'adapter folders or files (coefficients files with --subspace)')
    .requiredOption('--method <m>', METHODS.join(', '), choice('--method', METHODS))
    .option('-o, --output <out>', 'the combined adapter (a folder for peft; a .safetensors file or folder for kohya and diffusers)')
    .addOption(new Option('--weights <list>', 'one weight per adapter, comma-separated (default 1 each)').argParser(weightList))
    .addOption(new Option('--rank <r>', 'rank of the result per module (svd, pruning methods, linear on a subspace)').argParser(integer('--rank', { min: 1 })))
    .addOption(new Option('--density <d>', 'pruning methods: fraction of entries kept').argParser(number('--density', { noun: 'a fraction', above: 0, max: 1 })))
    .addOption(new Option('--majority-sign <how>', 'TIES: elect signs by total (default) or frequency').argParser(choice('--majority-sign', ['total', 'frequency'] as const)))
    .addOption(new Option('--seed <n>', 'seed of DARE\'s masks and the re-factoring (default 0)').argParser(integer('--seed', { min: 0, max: 2 ** 52 })))
    .option('--subspace <dir>', 'the subspace the coefficients files belong to')
    .addOption(new Option('--modules <policy>', 'modules only some adapters have: same (refuse, default) or union').argParser(choice('--modules', ['same', 'union'] as const)))
    .addOption(new Option('--format <format>', 'format of the result (default the first adapter\'s)').argParser(choice('--format', ['peft', 'kohya', 'diffusers'] as const)))
    .addOption(new Option('--dtype <dtype>', 'F32, F16 or BF16 factors (default as computed)').argParser(choice('--dtype', ['F32', 'F16', 'BF16'] as const, true)))
    .addOption(new Option('--max-dense-elements <n>', 'pruning methods: largest d_out x d_in accepted').argParser(integer('--max-dense-elements', { min: 1 })))
    .option('--json', 'print what was written as JSON')
    .addHelpText(
      'after',
      examples([
        ['eigenlorax combine adapters/imdb adapters/yelp --method svd --weights 1,0.5 --rank 16 -o mixed', 'PEFT\'s svd combination'],
        ['eigenlorax combine a b --method ties --density 0.3 -o ties', 'TIES with 30% of the entries kept'],
        ['eigenlorax combine --subspace sub sub/coefficients/*.safetensors --method linear -o exact', 'the exact weighted sum on a subspace'],
      ]),
    )
    .action(async (inputs: string[], flags: CombineFlags) => {
      if (flags.output === undefined || flags.output.length === 0) throw new UsageError('combine needs -o <out>');
      const weights = flags.weights ?? inputs.map(() => 1);
      if (weights.length !== inputs.length) throw new UsageError(`--weights has ${weights.length} values for ${plural(inputs.length, 'adapter')}`);
      if (PRUNING.has(flags.method) && flags.density === undefined) throw new UsageError(`--method ${flags.method} needs --density`);
      if (!PRUNING.has(flags.method) && flags.density !== undefined) throw new UsageError(`--density goes with a pruning method, not ${flags.method}`);
      const { combineAdapters } = await import('../combine/combine.js');
      const { saveAdapter } = await import('../adapters/save.js');
      const options: CombineAdaptersOptions = { method: flags.method, weights };
      if (flags.rank !== undefined) options.rank = flags.rank;
      if (flags.density !== undefined) options.density = flags.density;
      if (flags.majoritySign !== undefined) options.majoritySignMethod = flags.majoritySign;
      if (flags.seed !== undefined) options.seed = flags.seed;
      if (flags.modules !== undefined) options.modules = flags.modules;
      if (flags.format !== undefined) options.format = flags.format;
      if (flags.maxDenseElements !== undefined) options.maxDenseElements = flags.maxDenseElements;
      let adapters: CombineInput[] = inputs;
      if (flags.subspace !== undefined) {
        const { loadSubspace, loadCoefficients } = await import('../subspace/files.js');
        const subspace = await loadSubspace(flags.subspace);
        adapters = [];
        for (const file of inputs) adapters.push(await loadCoefficients(file, subspace));
        options.subspace = subspace;
      }
      const combined = await combineAdapters(adapters, options);
      let destination = path.resolve(flags.output);
      // kohya writes one file: <out>/combined.safetensors when -o is not a .safetensors name.
      if (combined.format === 'kohya' && !destination.endsWith('.safetensors')) destination = path.join(destination, 'combined.safetensors');
      const saved = await saveAdapter(combined, destination, { format: combined.format, ...(flags.dtype ? { dtype: flags.dtype } : {}) });
      const summary = { method: flags.method, adapters: inputs, weights, format: saved.format, ...describe(combined), files: saved.files };
      if (flags.json === true) {
        printJson(summary);
        return;
      }
      const lines: Array<[string, string]> = [
        ['method', flags.method],
        ['weights', weights.join(', ')],
        ['modules', String(summary.modules)],
        ['ranks', counted(summary.ranks).text],
        ['parameters', summary.parameters.toLocaleString('en-US')],
      ];
      saved.files.forEach((f, i) => lines.push([i === 0 ? 'files' : '', f]));
      process.stdout.write(`combined ${plural(inputs.length, 'adapter')} (${flags.method}) as ${saved.format}\n${keyValues(lines)}`);
    });
  return jsonErrors(command);
}

function describe(adapter: LoraAdapter): { modules: number; ranks: number[]; parameters: number } {
  const modules = [...adapter.modules.values()];
  return {
    modules: modules.length,
    ranks: modules.map((m) => m.rank),
    parameters: modules.reduce((sum, m) => sum + m.A.data.length + m.B.data.length, 0),
  };
}
