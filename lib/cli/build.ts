/** `eigenlorax build <adapters...> -o <dir>`: a subspace and every adapter's coefficients. */
import path from 'node:path';
import { Command, Option } from 'commander';
import { ProgressBar } from '../progress.js';
import type { Subspace } from '../subspace/types.js';
import { bytesText, columnsTable, counted, examples, f3, keyValues, printJson, seconds, stats } from './format.js';
import { size, UsageError } from './options.js';
import { jsonErrors } from './report.js';
import { addBuildOptions, buildOptionsFrom, meanModuleError, outputFlag, stackingText, type BuildFlags } from './subspace-options.js';

export function buildCommand(): Command {
  const command = new Command('build')
    .usage(
      '<adapters...> -o <dir> [--components K | --variance 0.9 [--max-components M]] [--augment P] [--stacking canonical|raw] ' +
        '[--weighting equal|scale] [--center] [--seed N] [--max-open-files F] [--memory-budget size] [--shard i/n] [--json] [--quiet]',
    )
    .summary('build a subspace: <dir>/subspace.json + subspace.safetensors and every adapter\'s coefficients in <dir>/coefficients/')
    .description(
      'Builds the shared principal subspace of the adapters (per module and side, by randomized SVD of the stacked factors), writes ' +
        '<dir>/subspace.json + subspace.safetensors and every adapter\'s coefficients in <dir>/coefficients/<name>.safetensors, and ' +
        'prints K, explained variance, in-sample error, storage savings and timings. A module whose stacks would pass --memory-budget ' +
        'is built out of core, streaming the adapters in chunks. --shard i/n builds only shard i (from 0) of n, split by module with ' +
        'the same seeds as the whole build, and writes shard.json beside it; `eigenlorax gather` joins the n folders into one ' +
        'byte-identical to a one-machine build.',
    )
    .argument('[adapters...]', 'adapter folders or .safetensors files')
    .option('-o, --output <dir>', 'the subspace folder')
    .addOption(new Option('--memory-budget <size>', 'memory for a module\'s stacks, as 512MB, 4GB, 1.5GiB or bytes (default half the free memory)').argParser(size('--memory-budget')))
    .addOption(new Option('--shard <i/n>', 'build only shard i (from 0) of n: --shard "$JOB_COMPLETION_INDEX/4"').argParser(shardFlag));
  addBuildOptions(command).addHelpText(
    'after',
    examples([
      ['eigenlorax build adapters/* -o subspace -k 8', 'K = 8 components per module and side'],
      ['eigenlorax build adapters/* -o subspace --variance 0.9 --max-components 32', 'K from the explained variance'],
      ['eigenlorax build adapters/* -o subspace -k 16 --memory-budget 4GB', 'modules past 4 GB built out of core'],
      ['eigenlorax build adapters/* -o shards/$SLURM_ARRAY_TASK_ID -k 16 --shard $SLURM_ARRAY_TASK_ID/8', 'one of 8 shards; then eigenlorax gather shards/* -o subspace'],
    ]),
  );
  command.action(async (adapters: string[], flags: BuildFlags & { output?: string; memoryBudget?: number; shard?: string }) => {
    if (adapters.length === 0) throw new UsageError('build needs at least one adapter path');
    const out = path.resolve(outputFlag('build', flags.output));
    const options = buildOptionsFrom(flags);
    if (flags.memoryBudget !== undefined) options.memoryBudget = flags.memoryBudget;
    if (flags.shard !== undefined) options.shard = flags.shard;
    const { buildSubspace, writeBuildFolder, subspaceSavings } = await import('../subspace/index.js');
    const bar = ProgressBar.forTerminal(flags.quiet === true || flags.json === true);
    let subspace: Subspace;
    try {
      subspace = await buildSubspace(adapters, { ...options, onProgress: (p) => bar.update({ label: 'build', value: p.done, total: p.total, item: p.module }) });
    } finally {
      bar.stop();
    }
    // The same writer as gather's, so a gathered folder is byte-identical to this one.
    const written = await writeBuildFolder(subspace, out);
    const saved = { files: written.subspace };
    const folder = path.join(out, 'coefficients');
    const coefficients = subspace.coefficients.map((c, i) => ({
      adapter: c.adapter.name,
      file: written.coefficients[i]!.file,
      relativeError: c.relativeError,
      meanModuleError: meanModuleError(c),
      modules: c.modules.size,
    }));
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
      storage: report.storage ?? null,
      streamedModules: report.streamedModules ?? [],
      shard: report.shard ?? null,
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
      ...storageLines(report),
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
    const shard = report.shard ?? null;
    if (shard) lines.push(['shard', `${shard.index}/${shard.count}: ${modules.length} of ${shard.modules.length} modules (eigenlorax gather joins the shards)`]);
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

/** "i/n" with 0 <= i < n, kept as the string buildSubspace takes. */
function shardFlag(text: string): string {
  const m = /^\s*(\d+)\/(\d+)\s*$/.exec(text);
  if (m === null || Number(m[2]) < 1 || Number(m[1]) >= Number(m[2])) throw new UsageError(`--shard expects i/n with 0 <= i < n (such as 0/4), not ${JSON.stringify(text)}`);
  return `${Number(m[1])}/${Number(m[2])}`;
}

/** The stored-bytes line (adapters in their dtypes against basis + coefficients) and the streamed modules. */
function storageLines(report: NonNullable<Subspace['report']>): Array<[string, string]> {
  const lines: Array<[string, string]> = [];
  const s = report.storage;
  if (s !== undefined) {
    lines.push([
      'stored',
      `adapters ${bytesText(s.adapters.bytes)} (${s.adapters.dtypes.join(', ')}) against basis ${bytesText(s.basis.bytes)} + coefficients ` +
        `${bytesText(s.coefficients.bytes)} (F32) = ${bytesText(s.eigenlora.bytes)}: ${s.ratio.toFixed(2)}x`,
    ]);
  }
  const streamed = report.streamedModules ?? [];
  lines.push(['streamed', streamed.length === 0 ? 'none (every module fit the memory budget)' : `${streamed.length} module${streamed.length === 1 ? '' : 's'} out of core: ${streamed.slice(0, 4).join(', ')}${streamed.length > 4 ? ', ...' : ''}`]);
  return lines;
}
