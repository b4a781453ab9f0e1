/** `eigenlorax analyze <adapters...>`: do the adapters share a subspace? */
import { Command, Option } from 'commander';
import { ProgressBar } from '../progress.js';
import type { AnalyzeOptions, SubspaceAnalysis } from '../subspace/analyze.js';
import { columnsTable, counted, examples, f3, keyValues, printJson, seconds } from './format.js';
import { integer, parseInteger, UsageError } from './options.js';
import { jsonErrors } from './report.js';
import { addBuildOptions, buildOptionsFrom, type BuildFlags } from './subspace-options.js';

const MAX_ROWS = 24;

export function analyzeCommand(): Command {
  const command = new Command('analyze')
    .usage(
      '<adapters...> [--components K | --variance f] [--stacking canonical|raw] [--weighting equal|scale] [--center] [--augment P] ' +
        '[--seed N] [--curve-components M] [--held-out auto|loo|k] [--max-open-files F] [--svg file] [--json] [--quiet]',
    )
    .summary('do the adapters share a subspace? explained variance against K, in-sample and held-out errors, overlap against random, a verdict')
    .description(
      'Explained variance against K, in-sample and held-out errors (--held-out: auto is leave-one-out up to 20 adapters, else 5-fold ' +
        'cross-validation; loo; or k folds), overlap of each adapter with the others\' basis ' +
        'against random, and a verdict on whether the adapters share a subspace; --svg writes the explained-variance chart.',
    )
    .argument('[adapters...]', 'at least two adapter folders or .safetensors files');
  addBuildOptions(command)
    .addOption(new Option('--curve-components <M>', 'components of the explained-variance curves').argParser(integer('--curve-components', { min: 1 })))
    .addOption(new Option('--held-out <how>', 'auto (default), loo (leave-one-out) or k folds (2 <= k <= adapters)').argParser(heldOutFlag))
    .option('--svg <file>', 'write the explained-variance chart')
    .addHelpText(
      'after',
      examples([
        ['eigenlorax analyze adapters/* -k 8', 'errors and overlap at K = 8'],
        ['eigenlorax analyze adapters/* --svg variance.svg --json', 'the chart, and the analysis as JSON'],
        ['eigenlorax analyze adapters/* -k 16 --held-out 10', 'held-out errors by 10-fold cross-validation'],
      ]),
    )
    .action(async (adapters: string[], flags: BuildFlags & { curveComponents?: number; svg?: string; heldOut?: AnalyzeOptions['heldOut'] }) => {
      if (adapters.length < 2) throw new UsageError('analyze needs at least two adapter paths');
      const options: AnalyzeOptions = buildOptionsFrom(flags);
      if (typeof flags.heldOut === 'number' && flags.heldOut > adapters.length) throw new UsageError(`--held-out ${flags.heldOut} folds need at least ${flags.heldOut} adapters, not ${adapters.length}`);
      if (flags.heldOut !== undefined) options.heldOut = flags.heldOut;
      if (flags.curveComponents !== undefined) options.curveComponents = flags.curveComponents;
      if (flags.svg !== undefined && flags.svg.length === 0) throw new UsageError('--svg needs a file name');
      const { analyzeAdapters } = await import('../subspace/analyze.js');
      const { writeExplainedVarianceSvg } = await import('../subspace/svg.js');
      const bar = ProgressBar.forTerminal(flags.quiet === true || flags.json === true);
      const labels = { spectrum: 'curves', 'in-sample': 'in-sample', 'held-out': 'held-out' } as const;
      let analysis: SubspaceAnalysis;
      try {
        analysis = await analyzeAdapters(adapters, { ...options, onProgress: (p) => bar.update({ label: labels[p.phase].padEnd(9), value: p.done, total: p.total, item: p.item }) });
      } finally {
        bar.stop();
      }
      const svg = flags.svg === undefined ? null : (await writeExplainedVarianceSvg(analysis, flags.svg)).file;
      if (flags.json === true) printJson({ ...analysis, svg });
      else process.stdout.write(formatAnalysis(analysis, svg));
    });
  return jsonErrors(command);
}

/** auto, loo (or leave-one-out), or a number of folds >= 2. */
function heldOutFlag(text: string): NonNullable<AnalyzeOptions['heldOut']> {
  if (text === 'auto') return 'auto';
  if (text === 'loo' || text === 'leave-one-out') return 'leave-one-out';
  if (/^\d+$/.test(text.trim())) return parseInteger('--held-out', text, { min: 2 });
  throw new UsageError(`--held-out expects auto, loo or a number of folds >= 2, not ${JSON.stringify(text)}`);
}

function kText(s: SubspaceAnalysis['settings']): string {
  if (s.components !== null) return s.components.A === s.components.B ? `K=${s.components.A}` : `K_A=${s.components.A}, K_B=${s.components.B}`;
  return `K for ${s.variance} explained variance (at most ${s.maxComponents!.A})`;
}

function ranksText(ranks: number[]): string {
  const c = counted(ranks).values;
  return c.map((x) => `${x.value}x${x.count}`).join(',');
}

/** The analysis as text: a table per module, one per adapter, the summary, the verdict. */
export function formatAnalysis(a: SubspaceAnalysis, svg: string | null = null): string {
  const out: string[] = [];
  const aug = a.settings.augment.A + a.settings.augment.B > 0 ? `, augment ${a.settings.augment.A}/${a.settings.augment.B}` : '';
  out.push(
    `analyzed ${a.adapters.length} adapters, ${a.modules.length} module${a.modules.length === 1 ? '' : 's'}: ` +
      `${a.settings.stacking === 'raw' ? 'raw' : `canonical + ${a.settings.weighting}`}${a.settings.center ? ', centred' : ''}, ${kText(a.settings)}${aug}\n`,
  );
  const ov = (o: number | null, r: number | null) => (o === null ? '-' : `${f3(o)} (${f3(r)})`);
  const shown = a.modules.slice(0, MAX_ROWS);
  const rows = shown.map((m) => [
    m.name,
    ranksText(m.ranks),
    m.A.components === m.B.components ? String(m.A.components) : `${m.A.components}/${m.B.components}`,
    f3(m.A.explained),
    f3(m.B.explained),
    m.A.componentsFor90 === null ? '-' : String(m.A.componentsFor90),
    m.B.componentsFor90 === null ? '-' : String(m.B.componentsFor90),
    ov(m.A.overlap, m.A.randomOverlap),
    ov(m.B.overlap, m.B.randomOverlap),
    f3(m.inSampleError),
    f3(m.heldOutError),
  ]);
  out.push('modules\n');
  out.push(
    columnsTable(['module', 'ranks', 'K', 'expl. A', 'expl. B', 'K90 A', 'K90 B', 'overlap A (random)', 'overlap B (random)', 'in-sample', 'held-out'], rows),
  );
  if (a.modules.length > shown.length) out.push(`  ... and ${a.modules.length - shown.length} more modules (--json lists all)\n`);
  out.push('adapters\n');
  out.push(
    columnsTable(
      ['adapter', 'in-sample', 'held-out', 'held-out (whole)', 'overlap A', 'overlap B'],
      a.perAdapter.slice(0, MAX_ROWS).map((p) => [
        p.name,
        f3(p.inSampleError),
        f3(p.heldOutError),
        f3(p.heldOutAdapterError),
        p.overlap === null ? '-' : f3(p.overlap.A),
        p.overlap === null ? '-' : f3(p.overlap.B),
      ]),
    ),
  );
  if (a.perAdapter.length > MAX_ROWS) out.push(`  ... and ${a.perAdapter.length - MAX_ROWS} more adapters (--json lists all)\n`);
  const lines: Array<[string, string]> = [
    ['in-sample error', `${f3(a.inSampleError)}  basis built from all ${a.adapters.length} adapters`],
    ['held-out error', `${f3(a.heldOutError)}  each adapter projected on the basis built from the others`],
    ['overlap', `A ${f3(a.overlap.A)} (random ${f3(a.randomOverlap.A)}), B ${f3(a.overlap.B)} (random ${f3(a.randomOverlap.B)})`],
    [
      'explained at K',
      `A mean ${f3(a.explained.A.mean)} (min ${f3(a.explained.A.min)}), B mean ${f3(a.explained.B.mean)} (min ${f3(a.explained.B.min)})`,
    ],
    ['verdict', a.verdict],
    ['advice', a.advice],
    ['errors', a.method.errors],
    ['overlap is', a.method.overlap],
    ['K90', 'smallest K whose explained variance reaches 0.9 (- : not within the curve)'],
  ];
  if (svg !== null) lines.push(['chart', svg]);
  if (a.notes.partialModules.length > 0) lines.push(['note', `${a.notes.partialModules.length} module(s) held by only some adapters`]);
  lines.push([
    'time',
    `${seconds(a.timings.totalMs)} (curves ${seconds(a.timings.spectrumMs)}, in-sample ${seconds(a.timings.inSampleMs)}, held-out ${seconds(a.timings.heldOutMs)})`,
  ]);
  out.push('summary\n');
  out.push(keyValues(lines));
  return out.join('');
}
