/**
 * Load test of the reference server (`eigenlorax serve`) on loopback: micro-batching on
 * against the same server with batching off (max batch 1), in the same run.
 *
 *   npm run bench:serve-load
 *   node dist/bench/serve-load.js [--clients 32] [--adapters 64] [--k 16] [--rank 8] [--rounds 3]
 *                                 [--seconds 3] [--requests 20000] [--max-batch 64] [--window 1] [--threads 1]
 *   node dist/bench/serve-load.js --help      the flags
 *
 * The model has the demo's shapes: a 784-256-256-10 ReLU MLP (random weights), and a
 * subspace with K = 16 components per side over both hidden layers (fc1, fc2), built by
 * `buildSubspace` from `--adapters` random LoRA adapters of rank 8 whose coefficients are
 * all registered (the values do not change the work). Two servers run as child processes
 * (so the clients do not share their event loop): batching on (`--max-batch` rows,
 * `--window` ms) and off (max batch 1: every request is its own forward pass). Each server
 * runs its kernels on `--threads` threads (default 1; 0: all cores): two servers and the
 * clients share the machine, and an OpenMP team on oversubscribed cores turns millisecond
 * products into tens of milliseconds, which would measure the oversubscription instead of
 * the batching (bench/README.md shows a run with 0).
 *
 * `--clients` concurrent keep-alive clients (node:http, one socket each) send
 * POST /v1/predict with one row and a random adapter each (256 bodies prepared up front),
 * back to back, for `--seconds` or `--requests` requests per measurement, whichever comes
 * first. Each round measures both servers (the order alternating) after one untimed warm-up
 * per server; the table gives the median over rounds of requests/s, client-side latency
 * percentiles, the mean rows per batch (from /v1/stats) and the server process's CPU time
 * per request (all its threads, from /proc: what batching saves even where the clients,
 * on the same cores, limit the rate). Prints; never passes or fails on time.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { Option } from 'commander';
import { buildSubspace, getThreads, matrix, setThreads, type LoraAdapter, type LoraModule } from '../lib/index.js';
import { Linear, ReLU, Sequential } from '../lib/train/index.js';
import { ServedModel, startServer } from '../lib/serve/index.js';
import { benchCommand, cpuSnapshot, fillGaussian, integerArg, machineLines, median, numberArg, otherLoadLine, sig, table } from './common.js';
import { mulberry32 } from '../lib/random.js';

const WIDTHS = [784, 256, 256, 10];
const ADAPTED = ['fc1', 'fc2'];

interface Options {
  clients: number;
  adapters: number;
  k: number;
  rank: number;
  rounds: number;
  seconds: number;
  requests: number;
  maxBatch: number;
  window: number;
  /** Kernel threads of each server (setThreads; default 1); 0: the library's default (all cores). */
  threads: number;
}

function parseOptions(argv: string[]): Options & { serve?: boolean } {
  return benchCommand('serve-load.js', 'the HTTP server (eigenlorax serve) under load on loopback: micro-batching on against off (max batch 1)')
    .addOption(new Option('--clients <n>', 'concurrent keep-alive clients').default(32).argParser(integerArg()))
    .addOption(new Option('--adapters <n>', 'random rank-r LoRA adapters the subspace is built from, all registered').default(64).argParser(integerArg()))
    .addOption(new Option('--k <n>', 'components K per side (fc1, fc2)').default(16).argParser(integerArg()))
    .addOption(new Option('--rank <n>', 'rank r of the adapters').default(8).argParser(integerArg()))
    .addOption(new Option('--rounds <n>', 'rounds, each measuring both servers (medians)').default(3).argParser(integerArg()))
    .addOption(new Option('--seconds <s>', 'length of one measurement in seconds (or --requests, whichever comes first)').default(3).argParser(numberArg({ min: 0 })))
    .addOption(new Option('--requests <n>', 'requests in one measurement (or --seconds, whichever comes first)').default(20_000).argParser(integerArg()))
    .addOption(new Option('--max-batch <n>', 'rows per batch of the batching server').default(64).argParser(integerArg()))
    .addOption(new Option('--window <ms>', "batching server's window in ms after the first waiting request").default(1).argParser(numberArg({ min: 0 })))
    .addOption(new Option('--threads <n>', "each server's kernel threads (0: the library default, all cores)").default(1).argParser(integerArg(0)))
    // The server child that startChild starts with the flags above: builds the model, serves it, prints its URL.
    .addOption(new Option('--serve').hideHelp())
    .parse(argv, { from: 'user' })
    .opts<Options & { serve?: boolean }>();
}

/** A random LoRA adapter of rank `rank` on fc1 and fc2 (what buildSubspace reads). */
function randomAdapter(index: number, rank: number): LoraAdapter {
  const modules = new Map<string, LoraModule>();
  ADAPTED.forEach((name, j) => {
    const dIn = WIDTHS[j]!;
    const dOut = WIDTHS[j + 1]!;
    const A = matrix(rank, dIn);
    const B = matrix(dOut, rank);
    fillGaussian(A.data, 1000 + 4 * index + 2 * j, 1 / Math.sqrt(dIn));
    fillGaussian(B.data, 1001 + 4 * index + 2 * j, 0.05);
    modules.set(name, {
      name,
      A,
      B,
      rank,
      alpha: rank,
      scale: 1,
      rslora: false,
      layout: 'linear',
      shapes: { A: [rank, dIn], B: [dOut, rank] },
      inFeatures: dIn,
      outFeatures: dOut,
      fanInFanOut: false,
      keys: { A: '', B: '' },
      dtypes: { A: 'F32', B: 'F32' },
    });
  });
  return { format: 'peft', baseModel: 'bench-serve-load', source: null, modules, extras: new Map(), config: null, metadata: {} };
}

/** Child process: builds the model, serves it on 127.0.0.1, prints its URL as JSON, stops on SIGTERM. */
async function serve(o: Options): Promise<void> {
  const started = performance.now();
  if (o.threads > 0) setThreads(o.threads);
  const layers = [];
  for (let i = 0; i + 1 < WIDTHS.length; i++) {
    if (i > 0) layers.push(new ReLU());
    layers.push(Linear.create(`fc${i + 1}`, WIDTHS[i]!, WIDTHS[i + 1]!, { seed: i + 1, trainable: false }));
  }
  const names = Array.from({ length: o.adapters }, (_, i) => `adapter-${i}`);
  const adapters = names.map((_, i) => randomAdapter(i, o.rank));
  const subspace = await buildSubspace(adapters, { components: o.k, seed: 0, hashSources: false, names });
  const model = new ServedModel(new Sequential(layers), subspace, { capacity: o.adapters });
  for (const [i, name] of names.entries()) await model.register(name, subspace.coefficients[i]!);
  const server = await startServer({ model, port: 0, maxBatchRows: o.maxBatch, batchWindowMs: o.window });
  const info = { url: server.url, port: server.port, adapters: names, threads: getThreads(), setupSeconds: (performance.now() - started) / 1000 };
  process.stdout.write(`${JSON.stringify(info)}\n`);
  process.once('SIGTERM', () => {
    void server.app.close();
  });
}

interface Server {
  label: string;
  child: ChildProcess;
  port: number;
  adapters: string[];
  threads: number;
  setupSeconds: number;
}

function startChild(label: string, o: Options, maxBatch: number): Promise<Server> {
  const script = fileURLToPath(import.meta.url);
  const args = [script, '--serve', '--adapters', String(o.adapters), '--k', String(o.k), '--rank', String(o.rank), '--max-batch', String(maxBatch), '--window', String(o.window), '--threads', String(o.threads)];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  process.once('exit', () => child.kill('SIGKILL'));
  return new Promise((resolve, reject) => {
    let text = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      const line = text.split('\n')[0];
      if (text.includes('\n') && line !== undefined) {
        const info = JSON.parse(line) as { port: number; adapters: string[]; threads: number; setupSeconds: number };
        resolve({ label, child, port: info.port, adapters: info.adapters, threads: info.threads, setupSeconds: info.setupSeconds });
      }
    });
    child.once('exit', (code) => reject(new Error(`${label} server exited with code ${code} before listening`)));
  });
}

function request(agent: http.Agent, port: number, method: string, path: string, body?: Buffer): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const headers: http.OutgoingHttpHeaders = body === undefined ? {} : { 'content-type': 'application/json', 'content-length': body.length };
    const req = http.request({ agent, host: '127.0.0.1', port, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** One row per request, a random adapter each: 256 prepared JSON bodies. */
function bodies(adapters: string[]): Buffer[] {
  const random = mulberry32(7);
  return Array.from({ length: 256 }, () => {
    const inputs = Array.from({ length: WIDTHS[0]! }, () => Number((Math.floor(random() * 256) / 255).toFixed(4)));
    const adapter = adapters[Math.floor(random() * adapters.length)]!;
    return Buffer.from(JSON.stringify({ adapter, inputs }));
  });
}

interface Measurement {
  requests: number;
  errors: number;
  seconds: number;
  latencies: number[];
  rowsPerBatch: number;
  /** CPU time of the server process (all its threads) per request, ms; NaN without /proc. */
  cpuMsPerRequest: number;
}

/** user + system CPU seconds of a process, from /proc (null elsewhere). */
function processCpuSeconds(pid: number): number | null {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    // utime and stime are fields 14 and 15 of the line, in clock ticks (100 per second on Linux).
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return null;
  }
}

async function batchStats(agent: http.Agent, port: number): Promise<{ count: number; rows: number }> {
  const r = await request(agent, port, 'GET', '/v1/stats');
  return (JSON.parse(r.text) as { batches: { count: number; rows: number } }).batches;
}

/** `clients` loops sending back to back until `seconds` or `limit` requests. */
async function load(server: Server, payloads: Buffer[], clients: number, seconds: number, limit: number): Promise<Measurement> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: clients });
  const before = await batchStats(agent, server.port);
  const cpuBefore = processCpuSeconds(server.child.pid!);
  const latencies: number[] = [];
  let issued = 0;
  let errors = 0;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  const loop = async (client: number) => {
    let next = client * 7;
    while (issued < limit && performance.now() < deadline) {
      issued++;
      const body = payloads[next++ % payloads.length]!;
      const t0 = performance.now();
      const r = await request(agent, server.port, 'POST', '/v1/predict', body);
      latencies.push(performance.now() - t0);
      if (r.status !== 200) errors++;
    }
  };
  await Promise.all(Array.from({ length: clients }, (_, c) => loop(c)));
  const elapsed = (performance.now() - start) / 1000;
  const cpuAfter = processCpuSeconds(server.child.pid!);
  const after = await batchStats(agent, server.port);
  agent.destroy();
  const batches = after.count - before.count;
  const cpuMsPerRequest = cpuBefore === null || cpuAfter === null ? Number.NaN : (1000 * (cpuAfter - cpuBefore)) / latencies.length;
  return { requests: latencies.length, errors, seconds: elapsed, latencies, rowsPerBatch: batches > 0 ? (after.rows - before.rows) / batches : 0, cpuMsPerRequest };
}

function percentile(sorted: number[], q: number): number {
  return sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  if (o.serve) return serve(o);
  console.log('eigenlorax serve under load: micro-batching on against off (max batch 1), loopback');
  for (const line of machineLines()) console.log(line);
  console.log(
    `setup       model 784-256-256-10 ReLU, subspace K = ${o.k} over fc1 and fc2, ${o.adapters} adapters (rank ${o.rank}) registered; ` +
      `${o.clients} keep-alive clients, 1 row per request, random adapter; ${o.rounds} rounds of at most ${o.seconds} s or ${o.requests} requests per server`,
  );
  const [on, off] = await Promise.all([startChild(`batching on (max ${o.maxBatch} rows, window ${o.window} ms)`, o, o.maxBatch), startChild('batching off (max batch 1)', o, 1)]);
  const servers = [on!, off!];
  console.log(
    `servers     ready, ${on!.threads} kernel thread(s) each${o.threads > 0 ? ` (--threads ${o.threads})` : ' (--threads 0: the library default, all cores)'}; setup ${servers.map((s) => `${sig(s.setupSeconds, 2)} s`).join(', ')} (subspace, ${o.adapters} registrations)`,
  );
  const payloads = bodies(on!.adapters);
  const before = cpuSnapshot(servers.map((s) => s.child.pid!));
  for (const s of servers) await load(s, payloads, o.clients, 0.5, o.requests);
  const results = new Map<Server, Measurement[]>(servers.map((s) => [s, []]));
  for (let round = 0; round < o.rounds; round++) {
    const order = round % 2 === 0 ? servers : [...servers].reverse();
    for (const s of order) results.get(s)!.push(await load(s, payloads, o.clients, o.seconds, o.requests));
  }
  const after = cpuSnapshot(servers.map((s) => s.child.pid!));

  const rows = servers.map((s) => {
    const runs = results.get(s)!;
    const pct = (q: number) => median(runs.map((m) => percentile([...m.latencies].sort((a, b) => a - b), q)));
    return {
      s,
      rps: median(runs.map((m) => m.requests / m.seconds)),
      p50: pct(0.5),
      p90: pct(0.9),
      p99: pct(0.99),
      max: median(runs.map((m) => Math.max(...m.latencies))),
      rowsPerBatch: median(runs.map((m) => m.rowsPerBatch)),
      cpu: median(runs.map((m) => m.cpuMsPerRequest)),
      requests: runs.reduce((n, m) => n + m.requests, 0),
      errors: runs.reduce((n, m) => n + m.errors, 0),
    };
  });
  console.log(`\nmedian over ${o.rounds} rounds; latency in ms, measured by the clients (request sent to response read)`);
  console.log(
    table(
      ['server', 'requests/s', 'p50', 'p90', 'p99', 'max', 'rows/batch', 'server CPU ms/request', 'requests', 'errors'],
      rows.map((r) => [r.s.label, sig(r.rps, 4), sig(r.p50, 3), sig(r.p90, 3), sig(r.p99, 3), sig(r.max, 3), sig(r.rowsPerBatch, 3), sig(r.cpu, 3), r.requests, r.errors]),
    ),
  );
  const [a, b] = rows;
  console.log(
    `\nbatching on / off: ${sig(a!.rps / b!.rps, 3)}x the requests/s, ${sig(a!.p50 / b!.p50, 3)}x the median latency, ${sig(a!.p99 / b!.p99, 3)}x the p99, ` +
      `${sig(a!.cpu / b!.cpu, 3)}x the server's CPU time per request`,
  );
  console.log(`\n${otherLoadLine(before, after)}`);
  console.log(`load after  ${machineLines()[2]!.replace(/^memory\s+/, '')}`);
  await Promise.all(
    servers.map(
      (s) =>
        new Promise<void>((resolve) => {
          s.child.once('exit', () => resolve());
          s.child.kill('SIGTERM');
        }),
    ),
  );
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
