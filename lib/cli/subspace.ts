/**
 * The subspace subcommands of `eigenlorax`: build, project, export, analyze.
 *
 * lib/cli.ts dispatches here with its argument parser and its usage-error factory (a usage
 * mistake is printed with the usage and exits 2). Library errors (EigenLoraxError) are
 * printed with their code and exit 1 (with `--json`, also `{ error: { code, message } }` on
 * stdout). Progress goes to stderr, only when it is a terminal and `--json` is off.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import type { AdapterFormat } from '../adapters/types.js';
import type { AnalyzeOptions, SubspaceAnalysis } from '../subspace/analyze.js';
import type { BuildSubspaceOptions } from '../subspace/build.js';
import type { AdapterCoefficients, Subspace } from '../subspace/types.js';

type OptionSpec = Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }>;

export interface SubspaceCliContext {
  /** Parses a command's arguments (strict; adds --help and --version). */
  parse(args: string[], options: OptionSpec): { values: Record<string, unknown>; positionals: string[] };
  /** An error that the caller prints with the usage, exit code 2. */
  usageError(message: string): Error;
}

export type SubspaceCommand = 'build' | 'project' | 'export' | 'analyze';

/** Runs one subspace subcommand; returns the exit code. */
export async function runSubspaceCommand(name: SubspaceCommand, args: string[], context: SubspaceCliContext): Promise<number> {
  const run = { build, project, export: exportCommand, analyze }[name];
  return run(args, context);
}

// ---------------------------------------------------------------------------------------
// shared pieces

/** Prints a library error (and its JSON form with --json); exit code 1. Other errors are rethrown. */
function failed(error: unknown, json: boolean): number {
  if (!(error instanceof EigenLoraxError)) throw error;
  process.stderr.write(`eigenlorax: ${error.message} (${error.code})\n`);
  if (json) process.stdout.write(`${JSON.stringify({ error: { code: error.code, message: error.message } }, null, 2)}\n`);
  return 1;
}

function integerArgument(ctx: SubspaceCliContext, flag: string, text: unknown, min: number): number {
  const s = String(text).trim();
  const value = /^[+]?\d+$/.test(s) ? Number(s) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min) throw ctx.usageError(`${flag} expects an integer >= ${min}, not ${JSON.stringify(text)}`);
  return value;
}

function choice<T extends string>(ctx: SubspaceCliContext, flag: string, text: unknown, choices: readonly T[]): T {
  if (!(choices as readonly unknown[]).includes(text)) throw ctx.usageError(`${flag} must be one of ${choices.join(', ')}, not ${JSON.stringify(text)}`);
  return text as T;
}

/** The build options shared by build and analyze, from the flags. */
function buildOptionsFrom(ctx: SubspaceCliContext, v: Record<string, unknown>, allowVariance: boolean): Omit<BuildSubspaceOptions, 'onProgress'> {
  const options: Omit<BuildSubspaceOptions, 'onProgress'> = {};
  if (v.components !== undefined && v.variance !== undefined) throw ctx.usageError('give --components or --variance, not both');
  if (v.components !== undefined) options.components = integerArgument(ctx, '--components', v.components, 1);
  if (v.variance !== undefined) {
    if (!allowVariance) throw ctx.usageError('--variance is not an option of this command');
    const text = String(v.variance).trim();
    const value = text === '' ? Number.NaN : Number(text);
    if (!(value > 0 && value <= 1)) throw ctx.usageError(`--variance expects a fraction in (0, 1], not ${JSON.stringify(v.variance)}`);
    options.variance = value;
  }
  if (v['max-components'] !== undefined) {
    if (options.variance === undefined) throw ctx.usageError('--max-components goes with --variance');
    options.maxComponents = integerArgument(ctx, '--max-components', v['max-components'], 1);
  }
  if (v.augment !== undefined) options.augment = integerArgument(ctx, '--augment', v.augment, 0);
  if (v.stacking !== undefined) options.stacking = choice(ctx, '--stacking', v.stacking, ['canonical', 'raw'] as const);
  if (v.weighting !== undefined) {
    if (options.stacking === 'raw') throw ctx.usageError('--weighting applies to --stacking canonical only');
    options.weighting = choice(ctx, '--weighting', v.weighting, ['equal', 'scale'] as const);
  }
  if (v.center === true) options.center = true;
  if (v.seed !== undefined) options.seed = integerArgument(ctx, '--seed', v.seed, 0);
  if (v['max-open-files'] !== undefined) options.maxOpenFiles = integerArgument(ctx, '--max-open-files', v['max-open-files'], 1);
  if (options.seed !== undefined && options.seed > 2 ** 52) throw ctx.usageError('--seed is at most 2^52');
  return options;
}

const BUILD_FLAGS: OptionSpec = {
  components: { type: 'string', short: 'k' },
  variance: { type: 'string' },
  'max-components': { type: 'string' },
  augment: { type: 'string' },
  stacking: { type: 'string' },
  weighting: { type: 'string' },
  center: { type: 'boolean' },
  seed: { type: 'string' },
  'max-open-files': { type: 'string' },
  json: { type: 'boolean' },
};

/** A progress bar on stderr: one line, redrawn; only on a terminal. */
class ProgressBar {
  readonly #enabled: boolean;
  #drawn = false;

  constructor(json: boolean) {
    this.#enabled = !json && process.stderr.isTTY === true;
  }

  update(label: string, done: number, total: number, item: string): void {
    if (!this.#enabled) return;
    const width = 24;
    const filled = total > 0 ? Math.round((done / total) * width) : width;
    const columns = process.stderr.columns || 100;
    const head = `${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} `;
    const room = Math.max(0, columns - head.length - 1);
    const tail = item.length > room ? `...${item.slice(item.length - Math.max(0, room - 3))}` : item;
    process.stderr.write(`\r\x1b[K${head}${room > 3 ? tail : ''}`);
    this.#drawn = true;
  }

  clear(): void {
    if (this.#drawn) process.stderr.write('\r\x1b[K');
    this.#drawn = false;
  }
}

/** A file name from an adapter name: unsafe characters replaced, unique in `used`. */
function fileNameFor(name: string, used: Set<string>): string {
  const base = name.replace(/[^A-Za-z0-9._#+-]/g, '_').replace(/^\.+/, '_') || 'adapter';
  let candidate = base;
  for (let k = 2; used.has(candidate.toLowerCase()); k++) candidate = `${base}#${k}`;
  used.add(candidate.toLowerCase());
  return `${candidate}.safetensors`;
}

const f3 = (x: number | null | undefined) => (x === null || x === undefined ? '-' : Number.isFinite(x) ? x.toFixed(3) : String(x));

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

function bytesText(n: number): string {
  if (n < 1e3) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let value = n / 1e3;
  let unit = 0;
  while (value >= 1e3 && unit < units.length - 1) {
    value /= 1e3;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

/** Unique values with their counts, most common first: "16 (12), 8 (2)". */
function counted(values: number[]): { text: string; values: Array<{ value: number; count: number }> } {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  const list = [...counts].map(([value, count]) => ({ value, count })).sort((a, b) => b.count - a.count || a.value - b.value);
  return { text: list.map((c) => `${c.value} (${c.count})`).join(', '), values: list };
}

function stats(values: number[]): { mean: number; min: number; max: number } {
  return { mean: values.reduce((a, b) => a + b, 0) / Math.max(1, values.length), min: Math.min(...values), max: Math.max(...values) };
}

/** Key-value lines, keys padded. Long values wrap under their start. */
function keyValues(lines: Array<[string, string]>, keyWidth = 16, columns = 100): string {
  const out: string[] = [];
  for (const [key, value] of lines) {
    const indent = ' '.repeat(2 + keyWidth + 1);
    const wrapped = wrap(value, Math.max(40, columns - indent.length));
    wrapped.forEach((line, i) => out.push(i === 0 ? `  ${key.padEnd(keyWidth)} ${line}` : `${indent}${line}`));
  }
  return `${out.join('\n')}\n`;
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line.length > 0 && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line.length === 0 ? word : `${line} ${word}`;
  }
  if (line.length > 0 || lines.length === 0) lines.push(line);
  return lines;
}

/** Aligned columns: numbers right-aligned, text left-aligned, two spaces between. */
function columnsTable(header: string[], rows: string[][], indent = '  '): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const numeric = header.map((_, i) => rows.length > 0 && rows.every((r) => /^(-|[-+]?[\d.]+(e[-+]?\d+)?(x\d+)?( \([\d.]+\))?)$/.test(r[i] ?? '')));
  const line = (cells: string[]) =>
    indent + cells.map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return `${[line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n')}\n`;
}

function stackingText(s: Subspace['settings']): string {
  return `${s.stacking === 'raw' ? 'raw' : `canonical + ${s.weighting}`}${s.center ? ', centred' : ''}, seed ${s.seed}`;
}

const MAX_ROWS = 24;

// ---------------------------------------------------------------------------------------
// build

async function build(args: string[], ctx: SubspaceCliContext): Promise<number> {
  const { values: v, positionals } = ctx.parse(args, { ...BUILD_FLAGS, output: { type: 'string', short: 'o' } });
  if (positionals.length === 0) throw ctx.usageError('build needs at least one adapter path');
  if (typeof v.output !== 'string' || v.output.length === 0) throw ctx.usageError('build needs -o <dir>');
  const options = buildOptionsFrom(ctx, v, true);
  const json = v.json === true;
  const out = path.resolve(v.output);

  const { buildSubspace, saveSubspace, saveCoefficients, subspaceSavings } = await import('../subspace/index.js');
  const bar = new ProgressBar(json);
  try {
    const subspace = await buildSubspace(positionals, { ...options, onProgress: (p) => bar.update('build', p.done, p.total, p.module) });
    bar.clear();
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
    if (json) {
      process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
      return 0;
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
    return 0;
  } catch (error) {
    bar.clear();
    return failed(error, json);
  }
}

function meanModuleError(c: AdapterCoefficients): number {
  const values = [...c.modules.values()].map((m) => m.relativeError);
  return values.length === 0 ? Number.NaN : values.reduce((a, b) => a + b, 0) / values.length;
}

// ---------------------------------------------------------------------------------------
// project

async function project(args: string[], ctx: SubspaceCliContext): Promise<number> {
  const { values: v, positionals } = ctx.parse(args, { output: { type: 'string', short: 'o' }, json: { type: 'boolean' }, 'skip-missing': { type: 'boolean' } });
  if (positionals.length < 2) throw ctx.usageError('project needs a subspace and at least one adapter path');
  if (typeof v.output !== 'string' || v.output.length === 0) throw ctx.usageError('project needs -o <dir>');
  const json = v.json === true;
  const out = path.resolve(v.output);
  const [subspacePath, ...adapters] = positionals as [string, ...string[]];
  const { loadSubspace, projectAdapter, saveCoefficients } = await import('../subspace/index.js');
  let subspace: Subspace;
  try {
    subspace = await loadSubspace(subspacePath);
    await mkdir(out, { recursive: true });
  } catch (error) {
    return failed(error, json);
  }
  const bar = new ProgressBar(json);
  const used = new Set<string>();
  const results: unknown[] = [];
  const rows: string[][] = [];
  let failures = 0;
  for (const [i, adapter] of adapters.entries()) {
    bar.update('project', i, adapters.length, adapter);
    try {
      const c = await projectAdapter(subspace, adapter, { missing: v['skip-missing'] === true ? 'skip' : 'error' });
      const file = path.join(out, fileNameFor(c.adapter.name, used));
      await saveCoefficients(c, file);
      const entry = {
        path: adapter,
        adapter: c.adapter.name,
        file,
        modules: c.modules.size,
        skipped: c.skipped,
        relativeError: c.relativeError,
        meanModuleError: meanModuleError(c),
      };
      results.push(entry);
      rows.push([c.adapter.name, String(c.modules.size), f3(c.relativeError), f3(entry.meanModuleError), path.basename(file)]);
    } catch (error) {
      if (!(error instanceof EigenLoraxError)) throw error;
      failures++;
      bar.clear();
      const message = error.message.replace("pass missing: 'skip' to project the others", 'pass --skip-missing to project the others');
      process.stderr.write(`eigenlorax: ${message} (${error.code})\n`);
      results.push({ path: adapter, error: { code: error.code, message } });
    }
  }
  bar.clear();
  if (json) process.stdout.write(`${JSON.stringify({ subspace: subspace.id, output: out, adapters: results }, null, 2)}\n`);
  else {
    process.stdout.write(`projected ${rows.length} of ${adapters.length} adapter${adapters.length === 1 ? '' : 's'} on subspace ${subspace.id.slice(0, 12)} -> ${out}\n`);
    if (rows.length > 0) process.stdout.write(columnsTable(['adapter', 'modules', 'rel. error', 'mean module error', 'file'], rows));
  }
  return failures > 0 ? 1 : 0;
}

// ---------------------------------------------------------------------------------------
// export

async function exportCommand(args: string[], ctx: SubspaceCliContext): Promise<number> {
  const { values: v, positionals } = ctx.parse(args, {
    output: { type: 'string', short: 'o' },
    format: { type: 'string' },
    dtype: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (positionals.length !== 2) throw ctx.usageError('export needs a subspace and one coefficients file');
  if (typeof v.output !== 'string' || v.output.length === 0) throw ctx.usageError('export needs -o <dir>');
  const format = v.format === undefined ? undefined : choice(ctx, '--format', v.format, ['peft', 'kohya', 'diffusers'] as const);
  const dtype = v.dtype === undefined ? undefined : choice(ctx, '--dtype', String(v.dtype).toUpperCase(), ['F32', 'F16', 'BF16'] as const);
  const json = v.json === true;
  const [subspacePath, coefficientsPath] = positionals as [string, string];
  const { loadSubspace, loadCoefficients, exportAdapter } = await import('../subspace/index.js');
  try {
    const subspace = await loadSubspace(subspacePath);
    const coefficients = await loadCoefficients(coefficientsPath, subspace);
    const target: AdapterFormat = format ?? coefficients.adapter.format;
    let destination = path.resolve(v.output);
    // kohya writes one file: <dir>/<adapter>.safetensors when -o is not a .safetensors name.
    if (target === 'kohya' && !destination.endsWith('.safetensors')) {
      destination = path.join(destination, fileNameFor(coefficients.adapter.name, new Set()));
    }
    const saved = await exportAdapter(subspace, coefficients, destination, { format: target, ...(dtype ? { dtype } : {}) });
    const result = {
      adapter: coefficients.adapter.name,
      format: saved.format,
      modules: coefficients.modules.size,
      relativeError: coefficients.relativeError,
      files: saved.files,
    };
    if (json) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
    else {
      process.stdout.write(
        `exported ${result.adapter} (${result.modules} module${result.modules === 1 ? '' : 's'}, relative dW error ${f3(result.relativeError)}) as ${result.format}\n` +
          keyValues(saved.files.map((f, i) => [i === 0 ? 'files' : '', f])),
      );
    }
    return 0;
  } catch (error) {
    return failed(error, json);
  }
}

// ---------------------------------------------------------------------------------------
// analyze

async function analyze(args: string[], ctx: SubspaceCliContext): Promise<number> {
  const { values: v, positionals } = ctx.parse(args, { ...BUILD_FLAGS, svg: { type: 'string' }, 'curve-components': { type: 'string' } });
  if (positionals.length < 2) throw ctx.usageError('analyze needs at least two adapter paths');
  const options: AnalyzeOptions = buildOptionsFrom(ctx, v, true);
  if (v['curve-components'] !== undefined) options.curveComponents = integerArgument(ctx, '--curve-components', v['curve-components'], 1);
  if (v.svg !== undefined && (typeof v.svg !== 'string' || v.svg.length === 0)) throw ctx.usageError('--svg needs a file name');
  const json = v.json === true;
  const { analyzeAdapters } = await import('../subspace/analyze.js');
  const { writeExplainedVarianceSvg } = await import('../subspace/svg.js');
  const bar = new ProgressBar(json);
  const labels = { spectrum: 'curves', 'in-sample': 'in-sample', 'held-out': 'held-out' } as const;
  try {
    const analysis = await analyzeAdapters(positionals, { ...options, onProgress: (p) => bar.update(labels[p.phase].padEnd(9), p.done, p.total, p.item) });
    bar.clear();
    const svg = typeof v.svg === 'string' ? (await writeExplainedVarianceSvg(analysis, v.svg)).file : null;
    if (json) process.stdout.write(`${JSON.stringify({ ...analysis, svg }, null, 2)}\n`);
    else process.stdout.write(formatAnalysis(analysis, svg));
    return 0;
  } catch (error) {
    bar.clear();
    return failed(error, json);
  }
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
