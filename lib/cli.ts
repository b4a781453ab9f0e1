#!/usr/bin/env node
/**
 * The `eigenlorax` command. Subcommands arrive with later features; for now it reports
 * its version, its build and its usage.
 */
import { parseArgs } from 'node:util';
import { version } from './version.js';

const usage = `eigenlorax ${version}: recycle LoRA adapters into a shared principal subspace

Usage:
  eigenlorax --version          print the version
  eigenlorax --help             print this help
  eigenlorax info [--json]      native build: Eigen version, SIMD, OpenMP, threads

Library: import { rsvd, eigenLoraForward, ... } from 'eigenlorax'
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      version: { type: 'boolean', short: 'v' },
      help: { type: 'boolean', short: 'h' },
      json: { type: 'boolean' },
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
  process.stderr.write(`eigenlorax: unknown command '${[command, ...rest].join(' ')}'\n\n${usage}`);
  return 2;
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
