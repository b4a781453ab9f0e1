/**
 * `eigenlorax serve [folder] [--host h] [--port p] [--max-batch n] [--batch-window-ms ms]
 * [--max-rows n] [--body-limit bytes] [--threads n] [--log]`: loads a served-model folder (default
 * `eigenlorax-demo/serve`, what `eigenlorax demo` writes), listens (default
 * 127.0.0.1:8080), prints the URL, and serves until SIGINT or SIGTERM; then it stops
 * taking connections, answers the requests in flight, and exits 0.
 */
import path from 'node:path';
import { DEFAULT_DEMO_OUT } from '../demo/run.js';
import { getThreads, setThreads } from '../runtime.js';
import { loadServedModel } from './folder.js';
import {
  DEFAULT_BATCH_WINDOW_MS,
  DEFAULT_BODY_LIMIT,
  DEFAULT_HOST,
  DEFAULT_MAX_BATCH_ROWS,
  DEFAULT_MAX_ROWS_PER_REQUEST,
  DEFAULT_PORT,
  startServer,
  type StartedServer,
} from './server.js';

type OptionSpec = Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }>;

export interface ServeCliContext {
  /** Parses the command's arguments (strict; adds --help and --version). */
  parse(args: string[], options: OptionSpec): { values: Record<string, unknown>; positionals: string[] };
  /** An error that the caller prints with the usage, exit code 2. */
  usageError(message: string): Error;
}

/** The folder `eigenlorax demo` writes the served model to, with its default --out. */
export const DEFAULT_SERVE_FOLDER = path.join(DEFAULT_DEMO_OUT, 'serve');

/** Runs `eigenlorax serve` until a signal stops it; returns the exit code. */
export async function runServeCommand(args: string[], context: ServeCliContext): Promise<number> {
  const { values, positionals } = context.parse(args, {
    host: { type: 'string' },
    port: { type: 'string', short: 'p' },
    'max-batch': { type: 'string' },
    'batch-window-ms': { type: 'string' },
    'max-rows': { type: 'string' },
    'body-limit': { type: 'string' },
    threads: { type: 'string' },
    log: { type: 'boolean' },
  });
  if (positionals.length > 1) throw context.usageError(`serve takes one folder (got ${positionals.join(' ')})`);
  const integerFlag = (flag: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const text = values[flag];
    if (text === undefined) return fallback;
    const value = /^\d+$/.test(String(text)) ? Number(text) : Number.NaN;
    if (!Number.isSafeInteger(value) || value < min || value > max) {
      throw context.usageError(`--${flag} expects an integer from ${min}${max === Number.MAX_SAFE_INTEGER ? ' up' : ` to ${max}`}, not ${JSON.stringify(text)}`);
    }
    return value;
  };
  const port = integerFlag('port', DEFAULT_PORT, 0, 65535);
  const maxBatchRows = integerFlag('max-batch', DEFAULT_MAX_BATCH_ROWS, 1);
  const maxRowsPerRequest = integerFlag('max-rows', DEFAULT_MAX_ROWS_PER_REQUEST, 1);
  const bodyLimit = integerFlag('body-limit', DEFAULT_BODY_LIMIT, 1);
  const threads = integerFlag('threads', 0, 1, 1024);
  let batchWindowMs = DEFAULT_BATCH_WINDOW_MS;
  if (values['batch-window-ms'] !== undefined) {
    const text = String(values['batch-window-ms']);
    batchWindowMs = text.trim() === '' ? Number.NaN : Number(text);
    if (!Number.isFinite(batchWindowMs) || batchWindowMs < 0) throw context.usageError(`--batch-window-ms expects a number of milliseconds >= 0, not ${JSON.stringify(text)}`);
  }
  const host = values.host === undefined ? DEFAULT_HOST : String(values.host);
  if (host.length === 0) throw context.usageError('--host expects a host name or address');
  const folder = positionals[0] ?? DEFAULT_SERVE_FOLDER;

  let server: StartedServer;
  try {
    // Small batches on a busy machine can run far faster on one thread than on an OpenMP
    // team that waits for a descheduled member (bench/README.md, serve-load).
    if (threads > 0) setThreads(threads);
    const model = await loadServedModel(folder);
    server = await startServer({ model, host, port, maxBatchRows, batchWindowMs, maxRowsPerRequest, bodyLimit, logger: values.log === true });
    const widths = [model.inFeatures, ...model.layers.flatMap((l) => (l.kind === 'linear' ? [l.weight.rows] : []))].join('-');
    const modules = [...model.subspace.modules.values()].map((m) => `${m.name} K ${m.kA}/${m.kB}`).join(', ');
    const names = model.adapterNames;
    process.stdout.write(
      `eigenlorax serve: listening on ${server.url}\n` +
        `  model     ${path.resolve(folder)}: ${widths}, subspace ${model.subspace.id.slice(0, 12)} (${modules})\n` +
        `  adapters  ${names.length === 0 ? 'none yet' : `${names.length}: ${names.join(', ')}`}\n` +
        `  batching  up to ${maxBatchRows} rows, window ${batchWindowMs} ms; up to ${maxRowsPerRequest} rows and ${bodyLimit} bytes per request; ${getThreads()} kernel threads\n` +
        `  try       curl ${server.url}/v1/adapters   (POST /v1/predict, PUT/DELETE /v1/adapters/<name>, GET /v1/stats; Ctrl-C stops)\n`,
    );
  } catch (error) {
    const e = error as { code?: string; message?: string };
    // EigenLoraxErrors (the folder) and system errors (EADDRINUSE, EACCES) are the user's to fix.
    if (typeof e.code !== 'string') throw error;
    process.stderr.write(`eigenlorax: ${e.message ?? String(error)} (${e.code})\n`);
    return 1;
  }

  await new Promise<void>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        process.stderr.write(`eigenlorax serve: ${signal} again, exiting at once\n`);
        process.exit(130);
      }
      stopping = true;
      process.stderr.write(`eigenlorax serve: ${signal}: finishing the requests in flight (${signal} again to quit at once)\n`);
      server.app
        .close()
        .catch((error: unknown) => process.stderr.write(`eigenlorax serve: closing failed: ${(error as Error).message}\n`))
        .finally(() => {
          process.off('SIGINT', onSignal);
          process.off('SIGTERM', onSignal);
          resolve();
        });
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  process.stderr.write('eigenlorax serve: stopped\n');
  return 0;
}
