#!/usr/bin/env node
/**
 * The `eigenlorax` command: version, usage, native build facts, `inspect` (a summary of
 * LoRA adapter files from their headers and configs) and `merge` (adapters into base
 * weights).
 *
 * Each subcommand is one entry of `commands`: its lines of usage, and a `run` that parses
 * its own arguments (`parseCommand`) and returns the exit code. Add a command by adding an
 * entry; the usage text is assembled from them.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { version } from './version.js';

type Options = NonNullable<ParseArgsConfig['options']>;

interface Command {
  /** Lines for the usage text, the first starting with `eigenlorax <name>`. */
  usage: string;
  /** Runs the command on the arguments after its name (and any flags before it). */
  run(args: string[]): Promise<number>;
}

/** Thrown by a command for a usage mistake: printed with the usage, exit code 2. */
class UsageError extends Error {}

const commands: Record<string, Command> = {
  info: {
    usage: `  eigenlorax info [--json]      native build: Eigen version, SIMD, OpenMP, threads`,
    async run(args) {
      const { values, positionals } = parseCommand(args, { json: { type: 'boolean' } });
      if (positionals.length > 0) return unknownCommand(['info', ...positionals]);
      const { buildInfo, getThreads } = await import('./runtime.js');
      const info = { ...buildInfo(), threads: getThreads() };
      if (values.json) process.stdout.write(`${JSON.stringify(info, null, 2)}\n`);
      else for (const [key, value] of Object.entries(info)) process.stdout.write(`${key.padEnd(16)} ${String(value)}\n`);
      return 0;
    },
  },
  devices: {
    usage: `  eigenlorax devices [--json]   where operations can run: the CPU, and each CUDA GPU
                                or why the GPU backend cannot run here`,
    async run(args) {
      const { values, positionals } = parseCommand(args, { json: { type: 'boolean' } });
      if (positionals.length > 0) return unknownCommand(['devices', ...positionals]);
      const { buildInfo, getThreads } = await import('./runtime.js');
      const { cudaStatus } = await import('./cuda.js');
      const cpu = buildInfo();
      const cuda = await cudaStatus();
      if (values.json) {
        process.stdout.write(`${JSON.stringify({ cpu: { ...cpu, threads: getThreads() }, cuda }, null, 2)}\n`);
        return 0;
      }
      const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;
      const version = (v: number) => (v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : 'none');
      const lines = [`cpu     available  ${cpu.simd}, ${getThreads()} threads${cpu.openmp ? ' (OpenMP)' : ''}`];
      if (cuda.available) {
        for (const d of cuda.devices) {
          const memory = d.index === 0 ? `${gib(d.freeBytes)} free of ${gib(d.totalBytes)}` : gib(d.totalBytes);
          lines.push(`cuda:${d.index}  ${d.index === 0 ? 'available' : 'present  '}  ${d.name}, compute ${d.computeCapability}, ${d.multiprocessors} SMs, ${memory}`);
        }
        lines.push(`        CUDA runtime ${version(cuda.runtimeVersion)}, driver ${version(cuda.driverVersion)}, cuBLAS ${cuda.cublasVersion} (${cuda.cublasLibrary})`);
        if (cuda.devices.length > 1) lines.push('        (operations run on device 0)');
      } else {
        lines.push(`cuda    unavailable: ${cuda.reason}`);
        for (const d of cuda.devices) lines.push(`cuda:${d.index}  ${d.name}, compute ${d.computeCapability}, ${gib(d.totalBytes)}`);
      }
      process.stdout.write(`${lines.join('\n')}\n`);
      return 0;
    },
  },
  inspect: {
    usage: `  eigenlorax inspect <path...> [--json] [--format peft|diffusers|kohya]
                                LoRA adapters (PEFT folders, diffusers and kohya files):
                                format, base model, modules, ranks, alphas, scales,
                                dtypes, parameters, bytes, extras; reads headers only`,
    async run(args) {
      const { values, positionals } = parseCommand(args, { json: { type: 'boolean' }, format: { type: 'string' } });
      if (positionals.length === 0) throw new UsageError('inspect needs at least one adapter path');
      return inspect(positionals, values.json === true, values.format as string | undefined);
    },
  },
  merge: {
    usage: `  eigenlorax merge --base <model> --adapter <adapter> [--weight w] [--adapter <adapter> [--weight w] ...]
                   [--scale s] [--unmerge] -o <out> [--json]
                                merge LoRA adapters into base weights: W + scale * sum
                                w_i s_i B_i A_i, written in each weight's dtype; the base
                                is a .safetensors file, a shard index or a folder (the
                                output is sharded the same way); --weight applies to the
                                --adapter before it (default 1); --unmerge subtracts`,
    run: merge,
  },
  build: {
    usage: `  eigenlorax build <adapters...> -o <dir> [--components K | --variance 0.9 [--max-components M]]
                   [--augment P] [--stacking canonical|raw] [--weighting equal|scale] [--center]
                   [--seed N] [--max-open-files F] [--json]
                                build a subspace: <dir>/subspace.json + subspace.safetensors and
                                every adapter's coefficients in <dir>/coefficients/<name>.safetensors;
                                prints K, explained variance, in-sample error, savings, timings`,
    run: (args) => subspaceCommand('build', args),
  },
  project: {
    usage: `  eigenlorax project <subspace> <adapter...> -o <dir> [--skip-missing] [--json]
                                coefficients of adapters on a subspace, <dir>/<name>.safetensors,
                                with each adapter's relative dW error`,
    run: (args) => subspaceCommand('project', args),
  },
  export: {
    usage: `  eigenlorax export <subspace> <coefficients> -o <out> [--format peft|kohya|diffusers]
                   [--dtype F32|F16|BF16] [--json]
                                an adapter rebuilt from its coefficients, as a LoRA adapter
                                (kohya: <out>/<name>.safetensors unless <out> ends in .safetensors)`,
    run: (args) => subspaceCommand('export', args),
  },
  analyze: {
    usage: `  eigenlorax analyze <adapters...> [--components K | --variance f] [--stacking canonical|raw]
                   [--weighting equal|scale] [--center] [--augment P] [--seed N]
                   [--curve-components M] [--max-open-files F] [--svg file] [--json]
                                do the adapters share a subspace? explained variance against K,
                                in-sample and held-out (leave-one-out) errors, overlap of each
                                adapter with the others' basis against random, a verdict; --svg
                                writes the explained-variance chart`,
    run: (args) => subspaceCommand('analyze', args),
  },
  demo: {
    usage: `  eigenlorax demo [--out dir] [--cache dir] [--seed n] [--quick] [--json]
                                the EigenLoRAx workflow on Fashion-MNIST (needs the
                                fashion-mnist package): a base MLP, a zoo of LoRAs on rotated
                                versions of the task and their subspace; on held-out tasks
                                LoRA vs EigenLoRA vs EigenLoRAx vs the base; zero-shot
                                reconstruction. Prints the table; writes --out (default
                                eigenlorax-demo/): results.json, results.md, SVG curves;
                                caches base and zoo in --cache (default .eigenlorax-cache);
                                --quick is a small version`,
    async run(args) {
      const { runDemoCommand } = await import('./demo/command.js');
      return runDemoCommand(args, { parse: (a, options) => parseCommand(a, options), usageError: (message) => new UsageError(message) });
    },
  },
  serve: {
    usage: `  eigenlorax serve [folder] [--host h] [--port p] [--max-batch n] [--batch-window-ms ms]
                   [--max-rows n] [--body-limit bytes] [--threads n] [--log]
                                HTTP server over a served-model folder (default
                                eigenlorax-demo/serve, written by demo): POST /v1/predict
                                with an adapter name per request, requests micro-batched
                                into one pass across adapters; PUT/DELETE /v1/adapters/<name>
                                while it runs; listens on 127.0.0.1:8080 unless told
                                (--port 0: a free port); SIGINT/SIGTERM finish what is in
                                flight, then exit`,
    async run(args) {
      const { runServeCommand } = await import('./serve/command.js');
      return runServeCommand(args, { parse: (a, options) => parseCommand(a, options), usageError: (message) => new UsageError(message) });
    },
  },
};

/** build / project / export / analyze live in lib/cli/subspace.ts. */
async function subspaceCommand(name: 'build' | 'project' | 'export' | 'analyze', args: string[]): Promise<number> {
  const { runSubspaceCommand } = await import('./cli/subspace.js');
  return runSubspaceCommand(name, args, {
    parse: (a, options) => parseCommand(a, options),
    usageError: (message) => new UsageError(message),
  });
}

const usage = `eigenlorax ${version}: recycle LoRA adapters into a shared principal subspace

Usage:
  eigenlorax --version          print the version
  eigenlorax --help             print this help
${Object.values(commands)
  .map((c) => c.usage)
  .join('\n')}

Library: import { rsvd, eigenLoraForward, mergeIntoBase, ... } from 'eigenlorax'
`;

/** What {@link parseCommand} returns: option values by name, positionals, and (when asked) tokens. */
interface Parsed {
  values: Record<string, string | boolean | Array<string | boolean> | undefined>;
  positionals: string[];
  tokens?: Array<{ kind: string; name?: string; value?: string | undefined }>;
}

/** parseArgs with the command's options plus --help and --version (handled by main). */
function parseCommand(args: string[], options: Options, tokens = false): Parsed {
  return parseArgs({
    args,
    options: { ...options, help: { type: 'boolean', short: 'h' }, version: { type: 'boolean', short: 'v' } },
    allowPositionals: true,
    strict: true,
    tokens,
  }) as Parsed;
}

function unknownCommand(words: string[]): number {
  process.stderr.write(`eigenlorax: unknown command '${words.join(' ')}'\n\n${usage}`);
  return 2;
}

async function main(argv: string[]): Promise<number> {
  const at = argv.findIndex((a) => !a.startsWith('-'));
  const name = at < 0 ? undefined : (argv[at] as string);
  const command = name !== undefined && Object.prototype.hasOwnProperty.call(commands, name) ? commands[name] : undefined;
  const rest = at < 0 ? argv : [...argv.slice(0, at), ...argv.slice(at + 1)];
  // --version and --help win wherever they are (after a successful parse).
  if (command === undefined || rest.some((a) => a === '--version' || a === '-v' || a === '--help' || a === '-h')) {
    const { values, positionals } = parseArgs({
      args: command === undefined ? argv : rest,
      options: { version: { type: 'boolean', short: 'v' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: command === undefined,
    });
    if (values.version) {
      process.stdout.write(`${version}\n`);
      return 0;
    }
    if (values.help || positionals.length === 0 || positionals[0] === 'help') {
      process.stdout.write(usage);
      return 0;
    }
    if (command === undefined) return unknownCommand(positionals);
  }
  try {
    return await (command as Command).run(rest);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`eigenlorax: ${error.message}\n\n${usage}`);
    return 2;
  }
}

/** `eigenlorax inspect`: one report per path; exit code 1 when any path fails. */
async function inspect(paths: string[], json: boolean, format: string | undefined): Promise<number> {
  const { inspectAdapter } = await import('./adapters/inspect.js');
  const { adapterFormats } = await import('./adapters/types.js');
  if (format !== undefined && !(adapterFormats as readonly string[]).includes(format)) {
    process.stderr.write(`eigenlorax: --format must be one of ${adapterFormats.join(', ')}, not ${JSON.stringify(format)}\n`);
    return 2;
  }
  const results: unknown[] = [];
  let failed = 0;
  for (const target of paths) {
    try {
      const report = await inspectAdapter(target, format === undefined ? {} : { format: format as 'peft' | 'diffusers' | 'kohya' });
      results.push(report);
      if (!json) process.stdout.write(formatReport(report));
    } catch (error) {
      failed++;
      const e = error as { code?: string; message?: string };
      process.stderr.write(`eigenlorax: ${e.message ?? String(error)}${e.code ? ` (${e.code})` : ''}\n`);
      results.push({ path: target, error: { code: e.code ?? 'ERR_INTERNAL', message: e.message ?? String(error) } });
    }
  }
  if (json) process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
  return failed > 0 ? 1 : 0;
}

function formatReport(r: import('./adapters/inspect.js').AdapterReport): string {
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
  return `${r.path}\n${lines.map(([k, v]) => `  ${k.padEnd(15)} ${v}`).join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------
// merge

function finiteArgument(flag: string, text: string): number {
  const value = text.trim() === '' ? Number.NaN : Number(text);
  if (!Number.isFinite(value)) throw new UsageError(`${flag} expects a finite number, not ${JSON.stringify(text)}`);
  return value;
}

/** `eigenlorax merge`: prints what was merged (or the report as JSON); exit code 1 on an error. */
async function merge(args: string[]): Promise<number> {
  const { values, positionals, tokens } = parseCommand(
    args,
    {
      base: { type: 'string' },
      adapter: { type: 'string', multiple: true },
      weight: { type: 'string', multiple: true },
      scale: { type: 'string' },
      unmerge: { type: 'boolean' },
      output: { type: 'string', short: 'o' },
      json: { type: 'boolean' },
    },
    true,
  );
  if (positionals.length > 0) throw new UsageError(`merge takes no positional arguments (got ${positionals.join(' ')}); name each input with --base / --adapter`);
  if (values.base === undefined) throw new UsageError('merge needs --base <model>');
  if (values.output === undefined) throw new UsageError('merge needs -o <out>');
  // Each --weight belongs to the --adapter before it.
  const adapters: Array<{ adapter: string; weight: number; weighted: boolean }> = [];
  for (const token of tokens ?? []) {
    if (token.kind !== 'option') continue;
    if (token.name === 'adapter') adapters.push({ adapter: token.value as string, weight: 1, weighted: false });
    if (token.name === 'weight') {
      const last = adapters[adapters.length - 1];
      if (last === undefined) throw new UsageError('--weight comes after the --adapter it applies to');
      if (last.weighted) throw new UsageError(`two --weight values for --adapter ${last.adapter}`);
      last.weight = finiteArgument('--weight', token.value as string);
      last.weighted = true;
    }
  }
  if (adapters.length === 0) throw new UsageError('merge needs at least one --adapter <adapter>');
  const scale = values.scale === undefined ? 1 : finiteArgument('--scale', values.scale as string);
  const json = values.json === true;

  const { mergeIntoBase } = await import('./merge/merge.js');
  try {
    const report = await mergeIntoBase({
      base: values.base as string,
      adapters: adapters.map(({ adapter, weight }) => ({ adapter, weight })),
      output: values.output as string,
      scale,
      unmerge: values.unmerge === true,
    });
    process.stdout.write(json ? `${JSON.stringify(report, null, 2)}\n` : formatMerge(report));
    return 0;
  } catch (error) {
    const e = error as { code?: string; message?: string };
    process.stderr.write(`eigenlorax: ${e.message ?? String(error)}${e.code ? ` (${e.code})` : ''}\n`);
    if (json) process.stdout.write(`${JSON.stringify({ error: { code: e.code ?? 'ERR_INTERNAL', message: e.message ?? String(error) } }, null, 2)}\n`);
    return 1;
  }
}

const MAX_LISTED = 12;

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

function formatMerge(r: import('./merge/types.js').MergeReport): string {
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
  return `${head}\n${lines.map(([k, v]) => `  ${k.padEnd(12)} ${v}`).join('\n')}\n`;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const e = error as { code?: string; message?: string };
    process.stderr.write(`eigenlorax: ${e.message ?? String(error)}${e.code ? ` (${e.code})` : ''}\n`);
    process.exitCode = typeof e.code === 'string' && e.code.startsWith('ERR_PARSE_ARGS_') ? 2 : 1;
  },
);
