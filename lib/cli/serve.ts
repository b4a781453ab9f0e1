/**
 * `eigenlorax serve [folder]`: loads a served-model folder (default what `eigenlorax demo`
 * writes), listens (default 127.0.0.1:8080), prints the URL, and serves until SIGINT or
 * SIGTERM; then it stops taking connections, answers the requests in flight, and exits 0.
 */
import path from 'node:path';
import { Command, Option } from 'commander';
import type { StartedServer, startServer } from '../serve/server.js';
import { examples } from './format.js';
import { integer, nonEmpty, number, size, UsageError } from './options.js';

interface ServeFlags {
  host?: string;
  port?: number;
  maxBatch?: number;
  batchWindowMs?: number;
  maxRows?: number;
  bodyLimit?: number;
  threads?: number;
  pairCache?: number;
  log?: boolean;
  token?: string;
  insecure?: boolean;
  requestTimeoutMs?: number;
  maxUploadsPerClient?: number;
}

/**
 * startServer's options plus the access-control and limit options that lib/serve/server.ts
 * gains on another branch under exactly these names. Declared here as optional so this
 * compiles before that merge and is harmless after it (the intersection then adds nothing);
 * they are passed only when their flag is given.
 */
type ServeOptions = Parameters<typeof startServer>[0] & {
  token?: string;
  insecure?: boolean;
  requestTimeoutMs?: number;
  maxUploadsPerClient?: number;
};

export function serveCommand(): Command {
  return new Command('serve')
    .usage(
      '[folder] [--host h] [--port p] [--max-batch n] [--batch-window-ms ms] [--max-rows n] [--body-limit bytes] [--threads n] [--pair-cache size] [--log] ' +
        '[--token t] [--insecure] [--request-timeout-ms ms] [--max-uploads-per-client n]',
    )
    .summary('HTTP server over a served-model folder (default eigenlorax-demo/serve): POST /v1/predict micro-batched across adapters')
    .description(
      'HTTP server over a served-model folder (default eigenlorax-demo/serve, written by demo): POST /v1/predict with an adapter name ' +
        'per request, requests micro-batched into one pass across adapters; PUT/DELETE /v1/adapters/<name> while it runs; listens on ' +
        '127.0.0.1:8080 unless told (--port 0: a free port); SIGINT/SIGTERM finish what is in flight, then exit 0 (a second signal: 130).',
    )
    .argument('[folder]', 'a served-model folder (model.json, subspace, adapters)')
    .allowExcessArguments(true)
    .addOption(new Option('--host <h>', 'address to listen on (default 127.0.0.1)').argParser(nonEmpty('--host', 'a host name or address')))
    .addOption(new Option('-p, --port <p>', 'port (default 8080; 0: a free one)').argParser(integer('--port', { min: 0, max: 65535 })))
    .addOption(new Option('--max-batch <n>', 'rows that run a batch at once (default 64; 1: no batching)').argParser(integer('--max-batch', { min: 1 })))
    .addOption(
      new Option('--batch-window-ms <ms>', 'how long a batch waits for more rows').argParser(number('--batch-window-ms', { noun: 'a number of milliseconds', min: 0 })),
    )
    .addOption(new Option('--max-rows <n>', 'rows per request').argParser(integer('--max-rows', { min: 1 })))
    .addOption(new Option('--body-limit <bytes>', 'bytes per request body').argParser(integer('--body-limit', { min: 1 })))
    .addOption(new Option('--threads <n>', 'kernel threads (default: the processors)').argParser(integer('--threads', { min: 1, max: 1024 })))
    .addOption(
      new Option('--pair-cache <size>', "each layer's cache of hot adapters' rank pairs, as 16MB or bytes (default 16MiB; 0: none)").argParser(
        size('--pair-cache', true),
      ),
    )
    .option('--log', 'log every request (pino JSON lines on stdout)')
    .addOption(
      new Option('--token <token>', 'PUT and DELETE /v1/adapters need "Authorization: Bearer <token>"').env('EIGENLORAX_SERVE_TOKEN').argParser(nonEmpty('--token', 'a token')),
    )
    .option('--insecure', 'listen beyond loopback without a token (refused otherwise)')
    .addOption(new Option('--request-timeout-ms <n>', 'a request must arrive within this many ms, else 408 (default 30000)').argParser(integer('--request-timeout-ms', { min: 1 })))
    .addOption(new Option('--max-uploads-per-client <n>', 'concurrent adapter uploads (PUT) per client, more get 429 (default 2)').argParser(integer('--max-uploads-per-client', { min: 1 })))
    .addHelpText(
      'after',
      examples([
        ['eigenlorax serve', 'what `eigenlorax demo` wrote, on 127.0.0.1:8080'],
        ['eigenlorax serve served/ --port 0 --max-batch 32 --batch-window-ms 2', 'a free port, smaller batches'],
        ['EIGENLORAX_SERVE_TOKEN=secret eigenlorax serve served/ --host 0.0.0.0', 'on every interface; uploads and removals need the token'],
      ]),
    )
    .action(async (folderArgument: string | undefined, flags: ServeFlags, self: Command) => {
      if (self.args.length > 1) throw new UsageError(`serve takes one folder (got ${self.args.join(' ')})`);
      const { setThreads, getThreads } = await import('../runtime.js');
      const { loadServedModel, DEFAULT_SERVE_FOLDER } = await import('../serve/folder.js');
      const server = await import('../serve/server.js');
      const folder = folderArgument ?? DEFAULT_SERVE_FOLDER;
      const host = flags.host ?? server.DEFAULT_HOST;
      const port = flags.port ?? server.DEFAULT_PORT;
      const maxBatchRows = flags.maxBatch ?? server.DEFAULT_MAX_BATCH_ROWS;
      const batchWindowMs = flags.batchWindowMs ?? server.DEFAULT_BATCH_WINDOW_MS;
      const maxRowsPerRequest = flags.maxRows ?? server.DEFAULT_MAX_ROWS_PER_REQUEST;
      const bodyLimit = flags.bodyLimit ?? server.DEFAULT_BODY_LIMIT;
      // Small batches on a busy machine can run far faster on one thread than on an OpenMP
      // team that waits for a descheduled member (bench/README.md, serve-load).
      if (flags.threads !== undefined) setThreads(flags.threads);
      const model = await loadServedModel(folder, flags.pairCache === undefined ? {} : { pairCacheBytes: flags.pairCache });
      const options: ServeOptions = {
        model,
        host,
        port,
        maxBatchRows,
        batchWindowMs,
        maxRowsPerRequest,
        bodyLimit,
        logger: flags.log === true,
        ...(flags.token === undefined ? {} : { token: flags.token }),
        ...(flags.insecure === true ? { insecure: true } : {}),
        ...(flags.requestTimeoutMs === undefined ? {} : { requestTimeoutMs: flags.requestTimeoutMs }),
        ...(flags.maxUploadsPerClient === undefined ? {} : { maxUploadsPerClient: flags.maxUploadsPerClient }),
      };
      const started = await server.startServer(options);
      const widths = [model.inFeatures, ...model.layers.flatMap((l) => (l.kind === 'linear' ? [l.weight.rows] : []))].join('-');
      const modules = [...model.subspace.modules.values()].map((m) => `${m.name} K ${m.kA}/${m.kB}`).join(', ');
      const names = model.adapterNames;
      process.stdout.write(
        `eigenlorax serve: listening on ${started.url}\n` +
          `  model     ${path.resolve(folder)}: ${widths}, subspace ${model.subspace.id.slice(0, 12)} (${modules})\n` +
          `  adapters  ${names.length === 0 ? 'none yet' : `${names.length}: ${names.join(', ')}`}\n` +
          `  batching  up to ${maxBatchRows} rows, window ${batchWindowMs} ms; up to ${maxRowsPerRequest} rows and ${bodyLimit} bytes per request; ${getThreads()} kernel threads\n` +
          `  try       curl ${started.url}/v1/adapters   (POST /v1/predict, PUT/DELETE /v1/adapters/<name>, GET /v1/stats; Ctrl-C stops)\n`,
      );
      await untilSignal(started);
      process.stderr.write('eigenlorax serve: stopped\n');
    });
}

/** Resolves once a first SIGINT/SIGTERM has let the requests in flight finish; a second one exits 130 at once. */
function untilSignal(server: StartedServer): Promise<void> {
  return new Promise<void>((resolve) => {
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
}
