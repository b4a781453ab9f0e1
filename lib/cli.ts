#!/usr/bin/env node
/**
 * The `eigenlorax` command: version, usage, native build facts, and `inspect` (a summary of
 * LoRA adapter files from their headers and configs).
 */
import { parseArgs } from 'node:util';
import { version } from './version.js';

const usage = `eigenlorax ${version}: recycle LoRA adapters into a shared principal subspace

Usage:
  eigenlorax --version          print the version
  eigenlorax --help             print this help
  eigenlorax info [--json]      native build: Eigen version, SIMD, OpenMP, threads
  eigenlorax inspect <path...> [--json] [--format peft|diffusers|kohya]
                                LoRA adapters (PEFT folders, diffusers and kohya files):
                                format, base model, modules, ranks, alphas, scales,
                                dtypes, parameters, bytes, extras; reads headers only

Library: import { rsvd, eigenLoraForward, ... } from 'eigenlorax'
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      version: { type: 'boolean', short: 'v' },
      help: { type: 'boolean', short: 'h' },
      json: { type: 'boolean' },
      format: { type: 'string' },
    },
    allowPositionals: true,
    strict: true,
  });
  if (values.version) {
    process.stdout.write(`${version}\n`);
    return 0;
  }
  const [command, ...rest] = positionals;
  if (values.help || command === undefined || command === 'help') {
    process.stdout.write(usage);
    return 0;
  }
  if (command === 'info' && rest.length === 0) {
    const { buildInfo, getThreads } = await import('./runtime.js');
    const info = { ...buildInfo(), threads: getThreads() };
    if (values.json) process.stdout.write(`${JSON.stringify(info, null, 2)}\n`);
    else for (const [key, value] of Object.entries(info)) process.stdout.write(`${key.padEnd(16)} ${String(value)}\n`);
    return 0;
  }
  if (command === 'inspect') {
    if (rest.length > 0) return inspect(rest, values.json === true, values.format);
    process.stderr.write(`eigenlorax: inspect needs at least one adapter path\n\n${usage}`);
    return 2;
  }
  process.stderr.write(`eigenlorax: unknown command '${[command, ...rest].join(' ')}'\n\n${usage}`);
  return 2;
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

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const e = error as { code?: string; message?: string };
    process.stderr.write(`eigenlorax: ${e.message ?? String(error)}${e.code ? ` (${e.code})` : ''}\n`);
    process.exitCode = e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' ? 2 : 1;
  },
);
