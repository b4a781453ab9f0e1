/** `eigenlorax inspect <path...>`: a summary of LoRA adapters from their headers and configs. */
import { Command, Option } from 'commander';
import type { AdapterReport } from '../adapters/inspect.js';
import { examples, keyLines, printJson } from './format.js';
import { choice, UsageError } from './options.js';
import { codedError, failureLine, ReportedFailure } from './report.js';

const FORMATS = ['peft', 'diffusers', 'kohya', 'gguf'] as const;

export function inspectCommand(): Command {
  return new Command('inspect')
    .usage('<path...> [--json] [--format peft|diffusers|kohya|gguf]')
    .summary('LoRA adapters (PEFT folders, diffusers and kohya files, GGUF LoRAs): format, base model, modules, ranks, alphas, scales, dtypes, sizes; reads headers only')
    .description(
      'Reports each adapter: its format, base model, files, modules and layouts, ranks, alphas, scales, dtypes, parameter and byte counts, ' +
        'and extra (non-LoRA) tensors. Only headers and configs are read. A path that fails is reported and the others go on (exit code 1).',
    )
    .argument('[paths...]', 'adapter folders, .safetensors or .gguf files')
    .option('--json', 'print an array of reports (failed paths as { path, error })')
    .addOption(new Option('--format <format>', 'read every path as this format instead of detecting it').argParser(choice('--format', FORMATS)))
    .addHelpText(
      'after',
      examples([
        ['eigenlorax inspect adapters/imdb', 'one PEFT folder'],
        ['eigenlorax inspect --json lora.safetensors other/', 'several, as JSON'],
      ]),
    )
    .action(async (paths: string[], options: { json?: boolean; format?: (typeof FORMATS)[number] }) => {
      if (paths.length === 0) throw new UsageError('inspect needs at least one adapter path');
      const { inspectAdapter } = await import('../adapters/inspect.js');
      const json = options.json === true;
      const results: unknown[] = [];
      let failed = 0;
      for (const target of paths) {
        try {
          const report = await inspectAdapter(target, options.format === undefined ? {} : { format: options.format });
          results.push(report);
          if (!json) process.stdout.write(formatReport(report));
        } catch (error) {
          const coded = codedError(error) ?? { code: 'ERR_INTERNAL', message: (error as Error).message ?? String(error) };
          failed++;
          process.stderr.write(failureLine(coded));
          results.push({ path: target, error: coded });
        }
      }
      if (json) printJson(results);
      if (failed > 0) throw new ReportedFailure(`${failed} of ${paths.length} paths failed`);
    });
}

function formatReport(r: AdapterReport): string {
  const counts = (values: Array<{ value: number | string; count: number }>) =>
    values.map((v) => `${typeof v.value === 'number' ? Number(v.value.toPrecision(6)) : v.value} (${v.count})`).join(', ');
  const lines: Array<[string, string]> = [
    ['format', r.format],
    ['base model', r.baseModel ?? '-'],
    ['files', r.files.join(', ')],
    ['modules', `${r.modules} (${r.layouts.map((l) => `${l.value} ${l.count}`).join(', ')})`],
    ['ranks', counts(r.ranks)],
    ['alphas', counts(r.alphas)],
    ['scales', counts(r.scales)],
  ];
  if (r.rslora > 0) lines.push(['rslora', `${r.rslora} modules`]);
  if (r.fanInFanOut > 0) lines.push(['fan_in_fan_out', `${r.fanInFanOut} modules`]);
  lines.push(
    ['dtypes', counts(r.dtypes)],
    ['lora params', r.loraParameters.toLocaleString('en-US')],
    ['lora bytes', r.loraBytes.toLocaleString('en-US')],
    ['file bytes', r.fileBytes.toLocaleString('en-US')],
    ['extras', r.extras.length === 0 ? '-' : `${r.extras.length} (${r.extraBytes.toLocaleString('en-US')} bytes)`],
  );
  for (const e of r.extras) lines.push(['', `${e.key} ${e.dtype} [${e.shape.join(', ')}]`]);
  return `${r.path}\n${keyLines(lines, 15)}`;
}
