/** `eigenlorax build <adapters...> -o <dir>`: a subspace and every adapter's coefficients. */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { Command } from 'commander';
import { ProgressBar } from '../progress.js';
import type { Subspace } from '../subspace/types.js';
import { bytesText, columnsTable, counted, examples, f3, fileNameFor, keyValues, printJson, seconds, stats } from './format.js';
import { UsageError } from './options.js';
import { jsonErrors } from './report.js';
import { addBuildOptions, buildOptionsFrom, meanModuleError, outputFlag, stackingText, type BuildFlags } from './subspace-options.js';

export function buildCommand(): Command {
  const command = new Command('build')
    .usage(
      '<adapters...> -o <dir> [--components K | --variance 0.9 [--max-components M]] [--augment P] [--stacking canonical|raw] ' +
        '[--weighting equal|scale] [--center] [--seed N] [--max-open-files F] [--json] [--quiet]',
    )
    .summary('build a subspace: <dir>/subspace.json + subspace.safetensors and every adapter\'s coefficients in <dir>/coefficients/')
    .description(
      'Builds the shared principal subspace of the adapters (per module and side, by randomized SVD of the stacked factors), writes ' +
        '<dir>/subspace.json + subspace.safetensors and every adapter\'s coefficients in <dir>/coefficients/<name>.safetensors, and ' +
        'prints K, explained variance, in-sample error, storage savings and timings.',
    )
    .argument('[adapters...]', 'adapter folders or .safetensors files')
    .option('-o, --output <dir>', 'the subspace folder');
  addBuildOptions(command).addHelpText(
    'after',
    examples([
      ['eigenlorax build adapters/* -o subspace -k 8', 'K = 8 components per module and side'],
      ['eigenlorax build adapters/* -o subspace --variance 0.9 --max-components 32', 'K from the explained variance'],
    ]),
  );
  command.action(async (adapters: string[], flags: BuildFlags & { output?: string }) => {
    if (adapters.length === 0) throw new UsageError('build needs at least one adapter path');
    const out = path.resolve(outputFlag('build', flags.output));
    const options = buildOptionsFrom(flags);
    const { buildSubspace, saveSubspace, saveCoefficients, subspaceSavings } = await import('../subspace/index.js');
    const bar = ProgressBar.forTerminal(flags.quiet === true || flags.json === true);
    let subspace: Subspace;
    try {
      subspace = await buildSubspace(adapters, { ...options, onProgress: (p) => bar.update({ label: 'build', value: p.done, total: p.total, item: p.module }) });
    } finally {
      bar.stop();
    }
    const saved = await saveSubspace(subspace, out);
    const folder = path.join(out, 'coefficients');
    await mkdir(folder, { recursive: true });
    const used = new Set<string>();
    const coefficients: Array<{ adapter: string; file: string; relativeError: number; meanModuleError: number; modules: number }> = [];
    for (const c of subspace.coefficients) {
      const file = path.join(folder, fileNameFor(c.adapter.name, used));
      await saveCoefficients(c, file);
      coefficients.push({ adapter: c.adapter.name, file, relativeError: c.relativeError, meanModuleError: meanModuleError(c), modules: c.modules.size });
    }
    const modules = [...subspace.modules.values()];
    const report = subspace.report!;
    const savings = subspaceSavings(subspace);
    const summary = {
      subspace: { id: subspace.id, folder: out, files: saved.files },
      adapters: subspace.sources.length,
      settings: subspace.settings,
      modules: modules.length,
      components: { A: counted(modules.map((m) => m.kA)).values, B: counted(modules.map((m) => m.kB)).values },
      augmentation: { A: counted(modules.map((m) => m.augmentA)).values, B: counted(modules.map((m) => m.augmentB)).values },
      explained: { A: stats(modules.map((m) => m.explainedA)), B: stats(modules.map((m) => m.explainedB)) },
      inSampleError: report.inSampleError,
      savings,
      timings: report.timings,
      coefficients,
      notes: { partialModules: report.partialModules, clamped: report.clamped, belowThreshold: report.belowThreshold, augmentClamped: report.augmentClamped },
    };
    if (flags.json === true) {
      printJson(summary);
      return;
    }
    const e = summary.explained;
    const lines: Array<[string, string]> = [
      ['subspace', `${subspace.id.slice(0, 12)}: ${saved.files.join(', ')}`],
      ['settings', stackingText(subspace.settings)],
      ['modules', `${modules.length}${report.partialModules.length > 0 ? ` (${report.partialModules.length} held by only some adapters)` : ''}`],
      ['K_A', counted(modules.map((m) => m.kA)).text],
      ['K_B', counted(modules.map((m) => m.kB)).text],
    ];
    if (modules.some((m) => m.augmentA + m.augmentB > 0)) {
      lines.push(['augmentation', `A ${counted(modules.map((m) => m.augmentA)).text}; B ${counted(modules.map((m) => m.augmentB)).text} (included in K)`]);
    }
    lines.push(
      ['explained A', `mean ${f3(e.A.mean)}, min ${f3(e.A.min)}, max ${f3(e.A.max)}`],
      ['explained B', `mean ${f3(e.B.mean)}, min ${f3(e.B.min)}, max ${f3(e.B.max)}`],
      ['in-sample error', `${f3(report.inSampleError)} (mean over modules of the mean over adapters of ||dW - dW_hat||_F / ||dW||_F)`],
      [
        'storage',
        `${savings.adapters} adapters as LoRA ${bytesText(savings.lora.bytes)}; basis ${bytesText(savings.basis.bytes)} + coefficients ` +
          `${bytesText(savings.coefficients.bytes)} = ${bytesText(savings.eigenlora.bytes)} (${savings.ratio.toFixed(2)}x smaller as coefficients; ` +
          `${savings.breakEven === null ? 'never smaller' : `smaller from ${savings.breakEven} adapters of rank ${savings.rank}`})`,
      ],
      [
        'new task',
        `rank ${savings.rank}: ${savings.trainable.lora.toLocaleString('en-US')} trainable parameters as LoRA, ` +
          `${savings.trainable.eigenlora.toLocaleString('en-US')} as coefficients (${savings.trainable.ratio.toFixed(1)}x fewer)`,
      ],
      [
        'time',
        `${seconds(report.timings.totalMs)} (reading ${seconds(report.timings.readMs)}, native kernels ${seconds(report.timings.nativeMs)}, ` +
          `hashing ${seconds(report.timings.hashMs)} in the background)`,
      ],
    );
    for (const c of report.clamped.slice(0, 4)) lines.push(['note', `${c.module} side ${c.side}: K ${c.used} instead of ${c.requested} (the stack's size)`]);
    for (const c of report.belowThreshold.slice(0, 4)) {
      lines.push(['note', `${c.module} side ${c.side}: ${c.components} components explain ${f3(c.explained)}, below the threshold`]);
    }
    for (const p of report.partialModules.slice(0, 4)) lines.push(['note', `${p.module}: missing in ${p.missing.join(', ')}`]);
    const more = report.clamped.length + report.belowThreshold.length + report.partialModules.length - lines.filter(([k]) => k === 'note').length;
    if (more > 0) lines.push(['note', `... and ${more} more (--json lists all)`]);
    process.stdout.write(`built a subspace of ${subspace.sources.length} adapter${subspace.sources.length === 1 ? '' : 's'} -> ${out}\n`);
    process.stdout.write(keyValues(lines));
    process.stdout.write(`coefficients (${folder})\n`);
    process.stdout.write(
      columnsTable(
        ['adapter', 'modules', 'rel. error', 'mean module error', 'file'],
        coefficients.map((c) => [c.adapter, String(c.modules), f3(c.relativeError), f3(c.meanModuleError), path.basename(c.file)]),
      ),
    );
  });
  return jsonErrors(command);
}
