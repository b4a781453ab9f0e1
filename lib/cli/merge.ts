/** `eigenlorax merge`: LoRA adapters merged into (or subtracted from) base weights. */
import { Command, Option } from 'commander';
import type { MergeReport } from '../merge/types.js';
import { bytesText, examples, keyLines, printJson } from './format.js';
import { parseNumber, number, UsageError } from './options.js';
import { jsonErrors } from './report.js';

const MAX_LISTED = 12;

interface MergeFlags {
  base?: string;
  adapter?: string[];
  scale?: number;
  unmerge?: boolean;
  output?: string;
  json?: boolean;
}

export function mergeCommand(): Command {
  // Each --weight belongs to the --adapter before it: the parsers see the flags in order.
  const adapters: Array<{ adapter: string; weight: number; weighted: boolean }> = [];
  const command = new Command('merge')
    .usage('--base <model> --adapter <adapter> [--weight w] [--adapter <adapter> [--weight w] ...] [--scale s] [--unmerge] -o <out> [--json]')
    .summary('merge LoRA adapters into base weights: W + scale * sum w_i s_i B_i A_i, in each weight\'s dtype')
    .description(
      'Merges LoRA adapters into base weights: W + scale * sum_i w_i s_i B_i A_i, written in each weight\'s dtype. The base is a ' +
        '.safetensors file, a shard index or a folder (the output is sharded the same way), or a GGUF model (--base model.gguf, detected by ' +
        'its magic: the output is a GGUF copy with the touched F32/F16/BF16 weights rewritten, HF adapter names mapped to GGUF\'s); --weight applies to the --adapter before ' +
        'it (default 1); --unmerge subtracts. Every adapter module must find its weight, or nothing is written.',
    )
    .option('--base <model>', 'base weights: a .safetensors file, a shard index, a folder, or a GGUF model (model.gguf)')
    .addOption(
      new Option('--adapter <adapter>', 'an adapter to merge (repeatable)').argParser((value: string, previous: string[] | undefined) => {
        adapters.push({ adapter: value, weight: 1, weighted: false });
        return [...(previous ?? []), value];
      }),
    )
    .addOption(
      new Option('--weight <w>', 'weight of the --adapter before it (default 1)').argParser((value: string) => {
        const weight = parseNumber('--weight', value);
        const last = adapters[adapters.length - 1];
        if (last === undefined) throw new UsageError('--weight comes after the --adapter it applies to');
        if (last.weighted) throw new UsageError(`two --weight values for --adapter ${last.adapter}`);
        last.weight = weight;
        last.weighted = true;
        return weight;
      }),
    )
    .addOption(new Option('--scale <s>', 'multiplies every update (default 1)').argParser(number('--scale')))
    .option('--unmerge', 'subtract the updates instead of adding them')
    .option('-o, --output <out>', 'the merged weights (file or folder, as the base)')
    .option('--json', 'print the merge report as JSON')
    .addHelpText(
      'after',
      examples([
        ['eigenlorax merge --base model.safetensors --adapter adapters/imdb -o merged.safetensors', 'one adapter at weight 1'],
        ['eigenlorax merge --base llama/ --adapter a --weight 0.7 --adapter b --weight 0.3 -o out/', 'two adapters, weighted, into a sharded folder'],
        ['eigenlorax merge --base llama-3.2-1b-f16.gguf --adapter new-task.gguf -o merged.gguf', 'into a GGUF model (llama-export-lora\'s job)'],
        ['eigenlorax merge --unmerge --base merged.safetensors --adapter adapters/imdb -o base.safetensors', 'subtract it again'],
      ]),
    )
    .action(async (flags: MergeFlags) => {
      if (flags.base === undefined) throw new UsageError('merge needs --base <model>');
      if (flags.output === undefined) throw new UsageError('merge needs -o <out>');
      if (adapters.length === 0) throw new UsageError('merge needs at least one --adapter <adapter>');
      const { mergeIntoBase } = await import('../merge/merge.js');
      const report = await mergeIntoBase({
        base: flags.base,
        adapters: adapters.map(({ adapter, weight }) => ({ adapter, weight })),
        output: flags.output,
        scale: flags.scale ?? 1,
        unmerge: flags.unmerge === true,
      });
      if (flags.json === true) printJson(report);
      else process.stdout.write(formatMerge(report));
    });
  return jsonErrors(command);
}

function formatMerge(r: MergeReport): string {
  const lines: Array<[string, string]> = [];
  r.adapters.forEach((a, i) => {
    lines.push([`adapter ${i + 1}`, `${a.source ?? '(in memory)'} (${a.format}, ${a.modules} module${a.modules === 1 ? '' : 's'}, weight ${a.weight})`]);
  });
  if (r.scale !== 1) lines.push(['scale', String(r.scale)]);
  lines.push(['tensors', `${r.tensors.touched} of ${r.tensors.total} changed, ${r.tensors.copied} copied unchanged`]);
  const shown = r.merged.slice(0, MAX_LISTED);
  shown.forEach((t, i) => {
    const modules = t.modules.map((m) => `${m.module} (adapter ${m.adapter + 1}, r ${m.rank}, x${Number(m.coefficient.toPrecision(6))}${m.transposed ? ', transposed' : ''})`);
    lines.push([i === 0 ? 'changed' : '', `${t.key} ${t.dtype} [${t.shape.join(', ')}] <- ${modules.join(' + ')}`]);
  });
  if (r.merged.length > shown.length) lines.push(['', `... and ${r.merged.length - shown.length} more (--json lists all)`]);
  lines.push(['bytes', `${bytesText(r.bytes.touched)} changed, ${bytesText(r.bytes.written)} written`]);
  const throughput = r.seconds > 0 ? ` (${bytesText(r.bytes.written / r.seconds)}/s)` : '';
  lines.push(['time', `${r.seconds.toFixed(2)} s${throughput}`]);
  r.files.forEach((f, i) => lines.push([i === 0 ? 'files' : '', f]));
  r.adapters.forEach((a, i) => {
    if (a.extrasSkipped.length > 0) lines.push(['not merged', `adapter ${i + 1}: ${a.extrasSkipped.join(', ')} (not LoRA tensors)`]);
  });
  const verb = r.unmerge ? 'unmerged' : 'merged';
  const head = `${verb} ${r.adapters.length} adapter${r.adapters.length === 1 ? '' : 's'} ${r.unmerge ? 'from' : 'into'} ${r.base} -> ${r.output}`;
  return `${head}\n${keyLines(lines, 12)}`;
}
