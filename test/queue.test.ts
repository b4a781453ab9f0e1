/**
 * `eigenlorax queue build` and `eigenlorax worker` (BullMQ over Redis), as real processes
 * against a real redis-server started here on a free loopback port: several workers, one
 * SIGKILLed while it holds a job, and the gathered folder byte-identical to the one-machine
 * `eigenlorax build` of the same adapters; the waiting process SIGKILLed and its run
 * finished by `queue build --resume`; two runs at once on one queue; Redis
 * unreachable, a worker of another version and bad arguments refused with nothing at -o.
 * Skipped (with the reason) when redis-server is not on PATH; CI installs it.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { tempDir } from './helpers/adapter-fixtures.js';
import { cliPath, eigenlorax } from './helpers/cli.js';
import { freshSeed } from './helpers/random.js';
import { writePlantedPeft } from './helpers/subspace-fixtures.js';

const hasRedis = spawnSync('redis-server', ['--version']).status === 0;
const maybe = hasRedis ? test.serial : test.skip;
if (!hasRedis) test('queue tests skipped: redis-server is not on PATH (apt-get install redis-server; .ci/run installs it)', (t) => t.pass());

/** A loopback port nothing listens on (just released by the OS). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

let redisUrl = '';
let redisServer: ChildProcess | null = null;
let redisDir = '';

test.before(async () => {
  if (!hasRedis) return;
  const port = await freePort();
  redisDir = await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-redis-'));
  redisServer = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', redisDir], { stdio: 'ignore' });
  redisUrl = `redis://127.0.0.1:${port}`;
  // Up once it answers PING (a few tries while it starts).
  for (let attempt = 0; ; attempt++) {
    const client = new Redis(redisUrl, { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.ping();
      break;
    } catch (error) {
      if (attempt > 50) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    } finally {
      client.disconnect();
    }
  }
});

test.after.always(async () => {
  redisServer?.kill('SIGKILL');
  if (redisDir !== '') await rm(redisDir, { recursive: true, force: true });
});

const MODULES = Array.from({ length: 6 }, (_, i) => `model.layers.${i}.self_attn.q_proj`);
const D = 96;
const RANK = 8;

/** `count` PEFT folders, factors from one planted 10-dimensional subspace per module and side. */
const writeAdapters = (dir: string, count: number, seed: number): Promise<string[]> =>
  writePlantedPeft(dir, count, seed, { modules: MODULES, d: D, rank: RANK, planted: 10, noise: 0.05, alpha: 16, targetModules: ['q_proj'], baseModel: 'tiny' });

/** Every file under `dir`, relative, sorted. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

async function sameBytes(t: ExecutionContext, got: string, want: string): Promise<void> {
  const files = await filesUnder(want);
  t.deepEqual(await filesUnder(got), files, 'the same files');
  for (const f of files) t.true((await readFile(path.join(got, f))).equals(await readFile(path.join(want, f))), `${f} byte-identical`);
}

/** A running `eigenlorax ...` with its output so far and a way to wait for a line. */
interface Proc {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  waitFor: (stream: 'stdout' | 'stderr', pattern: RegExp, ms?: number) => Promise<RegExpExecArray>;
}

function start(t: ExecutionContext, args: string[]): Proc {
  const child = spawn(process.execPath, [cliPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const text = { stdout: '', stderr: '' };
  const waiters: Array<() => void> = [];
  for (const s of ['stdout', 'stderr'] as const) {
    child[s]!.on('data', (chunk: Buffer) => {
      text[s] += chunk.toString();
      for (const w of [...waiters]) w();
    });
  }
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const waitFor = (stream: 'stdout' | 'stderr', pattern: RegExp, ms = 60_000) =>
    new Promise<RegExpExecArray>((resolve, reject) => {
      const check = () => {
        const m = pattern.exec(text[stream]);
        if (m === null) return;
        waiters.splice(waiters.indexOf(check), 1);
        clearTimeout(timer);
        resolve(m);
      };
      const timer = setTimeout(() => reject(new Error(`no ${pattern} on ${stream} of eigenlorax ${args.join(' ')} within ${ms} ms:\n${text.stdout}\n${text.stderr}`)), ms);
      waiters.push(check);
      check();
    });
  return { child, stdout: () => text.stdout, stderr: () => text.stderr, exited, waitFor };
}

/** Fast stall detection for the tests: a killed worker's job is back in the queue within about 2 s. */
const FAST_STALLS = ['--lock-duration', '1000', '--stalled-interval', '500'];

async function stagingLeft(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.includes('.queue-'));
}

maybe('3 workers, one SIGKILLed mid-job: the job is retried and the result is byte-identical to the one-machine build', async (t) => {
  const dir = await tempDir(t);
  const adapters = await writeAdapters(dir, 10, freshSeed());
  const flags = ['-k', '5', '--seed', '7'];
  const ref = path.join(dir, 'one-machine');
  const built = await eigenlorax(['build', ...adapters, '-o', ref, ...flags, '--quiet']);
  t.is(built.code, 0, built.stderr);

  const out = path.join(dir, 'queued');
  const run = start(t, ['queue', 'build', ...adapters, '-o', out, ...flags, '--jobs', '4', '--redis', redisUrl, '--queue', 'test-kill']);
  await run.waitFor('stderr', /enqueued 4 jobs/);
  const workers = [0, 1, 2].map((i) => start(t, ['worker', '--redis', redisUrl, '--queue', 'test-kill', '--name', `w${i}`, '--exit-when-idle', ...FAST_STALLS]));
  // Kill whichever worker starts a job first, while it holds the job.
  const victim = await Promise.race(workers.map((w, i) => w.waitFor('stdout', /job (\S+) \(shard \d+ of 4\) started/).then((m) => ({ i, job: m[1]! }))));
  workers[victim.i]!.child.kill('SIGKILL');

  const end = await run.exited;
  t.is(end.code, 0, run.stderr());
  t.regex(run.stderr(), new RegExp(`job ${victim.job} \\(shard \\d\\) stalled`), 'the killed worker\'s job was found stalled and run again');
  t.regex(run.stdout(), /built a subspace of 10 adapters through 4 jobs on test-kill/);
  t.notRegex(run.stdout(), new RegExp(`workers +.*\\bw${victim.i}\\b`), 'the killed worker finished no job');
  for (const [i, w] of workers.entries()) {
    if (i === victim.i) continue;
    const e = await w.exited;
    t.is(e.code, 0, `worker ${i} exits when the queue is empty: ${w.stderr()}`);
  }
  await sameBytes(t, out, ref);
  t.deepEqual(await stagingLeft(dir), [], 'staging removed');
});

maybe('the waiting process SIGKILLed: the workers go on, queue build --resume gathers the same bytes and enqueues again a job Redis lost; bad resumes are refused', async (t) => {
  const dir = await tempDir(t);
  const adapters = await writeAdapters(dir, 8, freshSeed());
  const flags = ['-k', '4', '--seed', '3'];
  const ref = path.join(dir, 'one-machine');
  const built = await eigenlorax(['build', ...adapters, '-o', ref, ...flags, '--quiet']);
  t.is(built.code, 0, built.stderr);

  const out = path.join(dir, 'queued');
  const queueFlags = ['--redis', redisUrl, '--queue', 'test-resume'];
  const run = start(t, ['queue', 'build', ...adapters, '-o', out, ...flags, '--jobs', '3', ...queueFlags]);
  const runId = (await run.waitFor('stderr', /enqueued 3 jobs on test-resume at \S+ \(run (\S+), staging/))[1]!;
  run.child.kill('SIGKILL');
  await run.exited;
  // Nobody waits: a worker takes every job anyway, then exits.
  const worker = start(t, ['worker', ...queueFlags, '--name', 'lone', '--exit-when-idle']);
  t.is((await worker.exited).code, 0, worker.stderr());
  for (let i = 0; i < 3; i++) t.regex(worker.stdout(), new RegExp(`job ${runId}-shard-${i} \\(shard ${i} of 3\\) done`));
  t.false(existsSync(out), 'nothing at -o until someone gathers');
  // A job Redis no longer holds (as when its record expired) and whose shard is gone: enqueued again.
  const connection = new Redis(redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue('test-resume', { connection });
  try {
    t.is(await queue.remove(`${runId}-shard-1`), 1);
  } finally {
    await queue.close();
    connection.disconnect();
  }
  await rm(path.join(`${out}.queue-${runId}`, 'shard-1'), { recursive: true });

  const resumed = start(t, ['queue', 'build', '--resume', runId, '-o', out, ...queueFlags]);
  await resumed.waitFor('stderr', new RegExp(`resumed run ${runId} on test-resume .*: 2 of 3 jobs done, 1 enqueued again`));
  const second = start(t, ['worker', ...queueFlags, '--name', 'second', '--exit-when-idle']);
  const end = await resumed.exited;
  t.is(end.code, 0, resumed.stderr());
  t.regex(resumed.stdout(), /built a subspace of 8 adapters through 3 jobs on test-resume/);
  t.is((await second.exited).code, 0, second.stderr());
  await sameBytes(t, out, ref);
  t.deepEqual(await stagingLeft(dir), [], 'staging removed');

  // The run is over: nothing left to resume. Bad arguments exit 2.
  const gone = await eigenlorax(['queue', 'build', '--resume', runId, '-o', out, ...queueFlags]);
  t.is(gone.code, 1);
  t.regex(gone.stderr, new RegExp(`no run ${runId} is staged for .*\\(ERR_NOT_FOUND\\)\\n$`));
  for (const [args, pattern] of [
    [['queue', 'build', '--resume', '../x', '-o', out, ...queueFlags], /--resume expects the run id queue build printed/],
    [['queue', 'build', ...adapters, '--resume', runId, '-o', out, ...queueFlags], /--resume takes no adapter paths/],
  ] as const) {
    const r = await eigenlorax(args);
    t.is(r.code, 2, r.stderr);
    t.regex(r.stderr, pattern);
  }
});

maybe('two runs at once on one queue do not mix: each is byte-identical to its own one-machine build; at most one job per module', async (t) => {
  const dir = await tempDir(t);
  const adapters = await writeAdapters(dir, 6, freshSeed());
  const settings = [
    ['-k', '4', '--seed', '1'],
    ['-k', '3', '--seed', '2', '--center'],
  ];
  // The second asks for more jobs than there are modules: one job per module.
  const jobs = [3, MODULES.length];
  const runs = settings.map((flags, i) => start(t, ['queue', 'build', ...adapters, '-o', path.join(dir, `queued-${i}`), ...flags, '--jobs', i === 0 ? '3' : '20', '--redis', redisUrl, '--json']));
  const workers = [0, 1].map((i) => start(t, ['worker', '--redis', redisUrl, '--name', `shared-${i}`]));
  await Promise.all(workers.map((w) => w.waitFor('stdout', /^worker shared-\d on eigenlorax-build/m)));
  for (const [i, flags] of settings.entries()) {
    const ref = path.join(dir, `one-machine-${i}`);
    const built = await eigenlorax(['build', ...adapters, '-o', ref, ...flags, '--quiet']);
    t.is(built.code, 0, built.stderr);
    const end = await runs[i]!.exited;
    t.is(end.code, 0, runs[i]!.stderr());
    const result = JSON.parse(runs[i]!.stdout()) as { jobs: number; queue: string; modules: number };
    t.like(result, { jobs: jobs[i], queue: 'eigenlorax-build', modules: MODULES.length });
    await sameBytes(t, path.join(dir, `queued-${i}`), ref);
  }
  // SIGTERM: a graceful close, exit 0.
  for (const w of workers) w.child.kill('SIGTERM');
  for (const w of workers) t.is((await w.exited).code, 0, w.stderr());
  t.deepEqual(await stagingLeft(dir), []);
});

maybe('a worker of another version fails the job (not retried): queue build exits 1 naming both versions, nothing at -o', async (t) => {
  const dir = await tempDir(t);
  const adapters = await writeAdapters(dir, 3, freshSeed());
  const out = path.join(dir, 'queued');
  const run = start(t, ['queue', 'build', ...adapters, '-o', out, '--jobs', '2', '--redis', redisUrl, '--queue', 'test-version']);
  await run.waitFor('stderr', /enqueued 2 jobs/);
  const worker = start(t, ['worker', '--redis', redisUrl, '--queue', 'test-version', '--exit-when-idle', '--pretend-version', '0.0.0-other']);
  const end = await run.exited;
  t.is(end.code, 1);
  t.regex(run.stderr(), /failed: job \S+ was enqueued by eigenlorax \d+\.\d+\.\d+\S* but worker \S+ is eigenlorax 0\.0\.0-other.*\(ERR_QUEUE\)\n$/);
  t.false(existsSync(out), 'nothing at -o');
  t.deepEqual(await stagingLeft(dir), [], 'staging removed');
  t.is((await worker.exited).code, 0, worker.stderr());
  t.regex(worker.stdout(), /failed: job .* was enqueued by eigenlorax/);
});

maybe('Redis unreachable: ERR_QUEUE naming the URL within seconds, nothing written; a missing adapter before enqueueing; bad arguments exit 2', async (t) => {
  const dir = await tempDir(t);
  const adapters = await writeAdapters(dir, 2, freshSeed());
  const out = path.join(dir, 'queued');
  const nobody = `redis://127.0.0.1:${await freePort()}`;
  const started = Date.now();
  const refused = await eigenlorax(['queue', 'build', ...adapters, '-o', out, '--redis', nobody]);
  t.is(refused.code, 1);
  t.regex(refused.stderr, new RegExp(`Redis at ${nobody.replace(/\./g, '\\.')}/?: cannot connect \\(.*ECONNREFUSED.*\\(ERR_QUEUE\\)\\n$`));
  t.true(Date.now() - started < 20_000, 'fails fast instead of retrying forever');
  t.deepEqual(await readdir(dir), ['task-0', 'task-1'], 'nothing written: no -o, no staging');
  const json = await eigenlorax(['queue', 'build', ...adapters, '-o', out, '--redis', nobody, '--json']);
  t.is(json.code, 1);
  t.is((JSON.parse(json.stdout) as { error: { code: string } }).error.code, 'ERR_QUEUE');
  const worker = await eigenlorax(['worker', '--redis', nobody]);
  t.is(worker.code, 1);
  t.regex(worker.stderr, /cannot connect .*\(ERR_QUEUE\)\n$/);

  // A missing adapter is found before anything is enqueued (the headers are read first).
  const missing = await eigenlorax(['queue', 'build', ...adapters, path.join(dir, 'nope'), '-o', out, '--redis', redisUrl]);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /nope: cannot open the adapter: .*\(ERR_NOT_FOUND\)\n$/);
  t.notRegex(missing.stderr, /enqueued/);

  const usage: Array<[string[], RegExp]> = [
    [['queue', 'build', ...adapters, '-o', out], /queue build needs --redis <url>/],
    [['queue', 'build', ...adapters, '--redis', redisUrl], /queue build needs -o <dir>/],
    [['queue', 'build', '-o', out, '--redis', redisUrl], /queue build needs at least one adapter path/],
    [['queue', 'build', ...adapters, '-o', out, '--redis', 'http://127.0.0.1:6379'], /--redis expects a URL such as redis:\/\/host:6379/],
    [['queue', 'build', ...adapters, '-o', out, '--redis', 'localhost'], /--redis expects a URL/],
    [['queue', 'build', ...adapters, '-o', out, '--redis', redisUrl, '--jobs', '0'], /--jobs/],
    [['queue', 'build', ...adapters, '-o', out, '--redis', redisUrl, '--queue', 'a b'], /--queue expects a name/],
    [['queue', 'build', ...adapters, '-o', out, '--redis', redisUrl, '--components', '2', '--variance', '0.9'], /give --components or --variance, not both/],
    [['queue', 'frobnicate'], /unknown command 'frobnicate'/],
    [['worker'], /worker needs --redis <url>/],
    [['worker', '--redis', redisUrl, '--concurrency', '0'], /--concurrency/],
  ];
  for (const [args, pattern] of usage) {
    const r = await eigenlorax(args);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    t.regex(r.stderr, pattern, args.join(' '));
    t.regex(r.stderr, /Usage: eigenlorax (queue|worker)/, args.join(' '));
  }
  t.false(existsSync(out));
});
