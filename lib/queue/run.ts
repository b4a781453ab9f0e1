/**
 * The waiting side of the work queue (`eigenlorax queue build`): one BullMQ job per shard
 * of the build, their completion followed through QueueEvents, then the gather here.
 *
 * The gather runs in this process, not in a flow parent job on the worker finishing last:
 * this process must wait anyway to report the result and its exit code, `-o` is its path,
 * and a gather failure (or Ctrl-C) is then reported where the run was started, with one
 * place that cleans up; a parent job would add a job type whose failure nobody waits for.
 *
 * Should this process die (killed, its machine gone), the workers go on: the run's
 * manifest (`run.json` in its staging folder) lets `queue build --resume <run id>` take
 * the wait over, count the jobs already done from Redis, enqueue again any job Redis no
 * longer holds whose shard is missing, and gather as the first process would have.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Job, Queue, QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import { openAdapter } from '../adapters/open.js';
import { EigenLoraxError } from '../errors.js';
import { writeFileAtomic } from '../io/files.js';
import { Count, filePlace, parse, Type, type Static } from '../schema.js';
import { gatherShards } from '../subspace/shard.js';
import type { Subspace } from '../subspace/types.js';
import { version } from '../version.js';
import { JOB_FORMAT, JOB_FORMAT_VERSION, JOB_NAME, jobId, type ShardJobData } from './connection.js';
import type { ShardJobProgress, ShardJobResult } from './worker.js';

/** What the waiting side needs, for a new run and for a resumed one. */
interface WaitOptions {
  queue: string;
  /** The output folder (absolute). */
  out: string;
  /** Every change: jobs done, what runs where. */
  onProgress?: (p: { done: number; total: number; running: Map<number, ShardJobProgress> }) => void;
  /** A line worth printing (a stalled job back in the queue). */
  onNote?: (message: string) => void;
  /** Aborts the wait (Ctrl-C): the run's jobs are removed, nothing is written. */
  signal?: AbortSignal;
  /** Rejects the wait when the Redis connection is lost for good. */
  lost: Promise<never>;
}

export interface QueueBuildOptions extends WaitOptions {
  /** Absolute adapter paths. */
  adapters: string[];
  /** buildSubspace's options (JSON), without `shard`. */
  options: Record<string, unknown>;
  /** The number of jobs (shards). */
  jobs: number;
  /** BullMQ attempts per job for errors thrown by the build (a killed worker's job is retried by stall detection regardless). */
  attempts: number;
  onEnqueued?: (run: { runId: string; staging: string; jobs: number }) => void;
}

export interface QueueResumeOptions extends WaitOptions {
  runId: string;
  /** Called once the run's manifest is read and the jobs' states are known. */
  onResumed?: (run: { staging: string; jobs: number; done: number; requeued: number }) => void;
}

const RUN_FORMAT = 'eigenlorax-queue-run';

/** The run's manifest, `<staging>/run.json`: what a resumed wait needs to finish the run. */
const RunManifestSchema = Type.Object({
  format: Type.Literal(RUN_FORMAT),
  version: Type.String(),
  runId: Type.String({ minLength: 1 }),
  queue: Type.String({ minLength: 1 }),
  adapters: Type.Array(Type.String()),
  options: Type.Record(Type.String(), Type.Unknown()),
  jobs: Count(1),
  attempts: Count(1),
});
type RunManifest = Static<typeof RunManifestSchema>;

const MANIFEST = 'run.json';

export interface QueueBuildResult {
  runId: string;
  subspace: Subspace;
  workers: string[];
}

/** A run id: time and randomness, unique enough that two runs on one queue never share a job id. */
function newRunId(): string {
  return `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
}

const exists = (p: string) => stat(p).then(() => true, () => false);

/** Moves `staged` to `out`; an existing `out` is replaced (two renames, the old folder removed last). */
async function replaceFolder(staged: string, out: string, staging: string): Promise<void> {
  if (!(await exists(out))) {
    await rename(staged, out);
    return;
  }
  const old = path.join(staging, 'previous');
  await rename(out, old);
  await rename(staged, out);
}

/**
 * The number of modules the adapters hold together (their headers read, nothing else), so
 * that no job is enqueued for an empty shard; a missing or broken adapter fails here,
 * before anything is enqueued.
 */
export async function countModules(adapters: readonly string[]): Promise<number> {
  const names = new Set<string>();
  for (let i = 0; i < adapters.length; i += 16) {
    await Promise.all(
      adapters.slice(i, i + 16).map(async (a) => {
        const opened = await openAdapter(a);
        for (const name of opened.modules.keys()) names.add(name);
        await opened.close();
      }),
    );
  }
  return names.size;
}

/** The staging folder of run `runId` for the output folder `out`. */
const stagingOf = (out: string, runId: string) => `${out}.queue-${runId}`;

/** Enqueues the shards of one build on `redis`, waits for every job, gathers them into `options.out`. */
export async function runQueueBuild(redis: Redis, o: QueueBuildOptions): Promise<QueueBuildResult> {
  const manifest: RunManifest = { format: RUN_FORMAT, version, runId: newRunId(), queue: o.queue, adapters: o.adapters, options: o.options, jobs: o.jobs, attempts: o.attempts };
  const staging = stagingOf(o.out, manifest.runId);
  return followRun(redis, o, manifest, async (run) => {
    await mkdir(staging, { recursive: true });
    await writeFileAtomic(path.join(staging, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
    await run.enqueue(Array.from({ length: o.jobs }, (_, i) => i));
    o.onEnqueued?.({ runId: manifest.runId, staging, jobs: o.jobs });
  });
}

/**
 * Takes over the wait of run `o.runId` whose `queue build` process died: reads its manifest,
 * counts the jobs Redis says are done (or whose shard is written although Redis no longer
 * holds the job), enqueues again the jobs Redis lost with no shard, waits for the rest and
 * gathers into `o.out`. A job that failed fails the resume as it would have failed the run.
 */
export async function resumeQueueBuild(redis: Redis, o: QueueResumeOptions): Promise<QueueBuildResult> {
  const staging = stagingOf(o.out, o.runId);
  const file = path.join(staging, MANIFEST);
  const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
    const why = error.code === 'ENOENT' ? `no run ${o.runId} is staged for ${o.out} (its staging folder is removed when a run ends or fails)` : error.message;
    throw new EigenLoraxError(`${file}: ${why}`, error.code === 'ENOENT' ? 'ERR_NOT_FOUND' : 'ERR_IO');
  });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new EigenLoraxError(`${file}: not JSON (${(error as Error).message})`, 'ERR_QUEUE');
  }
  const manifest = parse(RunManifestSchema, json, filePlace(file, 'ERR_QUEUE'));
  if (manifest.runId !== o.runId) throw new EigenLoraxError(`${file}: the manifest of run ${manifest.runId}, not ${o.runId}`, 'ERR_QUEUE');
  if (manifest.version !== version) {
    throw new EigenLoraxError(`run ${o.runId} was enqueued by eigenlorax ${manifest.version}; resume it with that version, not ${version}`, 'ERR_QUEUE');
  }
  if (manifest.queue !== o.queue) throw new EigenLoraxError(`run ${o.runId} is on queue ${manifest.queue}, not ${o.queue}`, 'ERR_QUEUE');
  return followRun(redis, o, manifest, async (run) => {
    const lost: number[] = [];
    for (let i = 0; i < manifest.jobs; i++) {
      const job = await Job.fromId(run.queue, jobId(manifest.runId, i));
      const state = job === undefined ? 'unknown' : await job.getState();
      if (state === 'completed') run.completed(i, job!.returnvalue);
      else if (state === 'failed') run.failed(i, job!.failedReason);
      else if (state === 'unknown') {
        if (await exists(path.join(staging, `shard-${i}`))) run.completed(i, undefined);
        else lost.push(i);
      }
    }
    await run.enqueue(lost);
    o.onResumed?.({ staging, jobs: manifest.jobs, done: run.done.size, requeued: lost.length });
  });
}

/** What `start` gets: the queue, the jobs done so far, and ways to count a job done or failed and to enqueue jobs. */
interface RunHandle {
  queue: Queue;
  done: ReadonlySet<number>;
  completed: (index: number, result: unknown) => void;
  failed: (index: number, reason: string) => void;
  enqueue: (indices: readonly number[]) => Promise<void>;
}

/**
 * The wait of one run: listens to the queue's events (before `start` enqueues or reads
 * anything, so that no event of the run is missed), reports progress, gathers the shards
 * into `o.out` once every job is done. Whatever the outcome, the run's jobs still in the
 * queue and its staging folder are removed.
 */
async function followRun(redis: Redis, o: WaitOptions, manifest: RunManifest, start: (run: RunHandle) => Promise<void>): Promise<QueueBuildResult> {
  const { runId, jobs } = manifest;
  const staging = stagingOf(o.out, runId);
  const queue = new Queue(o.queue, { connection: redis });
  const events = new QueueEvents(o.queue, { connection: redis });
  const ids = Array.from({ length: jobs }, (_, i) => jobId(runId, i));
  const indexOf = new Map(ids.map((id, i) => [id, i]));
  // Connection errors while Redis is away: the connection retries, and `o.lost` ends the run if it never comes back.
  queue.on('error', () => undefined);
  events.on('error', () => undefined);
  try {
    await events.waitUntilReady();
    const done = new Set<number>();
    const running = new Map<number, ShardJobProgress>();
    const workers = new Set<string>();
    let settle: { resolve: () => void; reject: (e: unknown) => void } = { resolve: () => undefined, reject: () => undefined };
    const finished = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
    finished.catch(() => undefined);
    const report = () => o.onProgress?.({ done: done.size, total: jobs, running });
    const completed = (i: number, result: unknown) => {
      running.delete(i);
      done.add(i);
      const worker = (result as ShardJobResult | undefined)?.worker;
      if (typeof worker === 'string') workers.add(worker);
      report();
      if (done.size === jobs) settle.resolve();
    };
    const failed = (i: number, reason: string) => {
      void (async () => {
        const id = ids[i]!;
        const job = await Job.fromId(queue, id);
        const where = job?.processedBy !== undefined ? ` on worker ${job.processedBy}` : '';
        settle.reject(new EigenLoraxError(`job ${id} (shard ${i} of ${jobs})${where} failed: ${reason}`, 'ERR_QUEUE'));
      })().catch(settle.reject);
    };
    events.on('active', ({ jobId: id }) => {
      const i = indexOf.get(id);
      if (i !== undefined && !running.has(i) && !done.has(i)) {
        running.set(i, { worker: '?', done: 0, total: 0 });
        report();
      }
    });
    events.on('progress', ({ jobId: id, data }) => {
      const i = indexOf.get(id);
      if (i === undefined || typeof data !== 'object' || data === null) return;
      running.set(i, data as ShardJobProgress);
      report();
    });
    events.on('stalled', ({ jobId: id }) => {
      const i = indexOf.get(id);
      if (i === undefined) return;
      o.onNote?.(`job ${id} (shard ${i}) stalled: its worker ${running.get(i)?.worker ?? ''} stopped answering; the job is back in the queue`);
      running.delete(i);
      report();
    });
    events.on('completed', ({ jobId: id, returnvalue }) => {
      const i = indexOf.get(id);
      if (i !== undefined) completed(i, returnvalue);
    });
    events.on('failed', ({ jobId: id, failedReason }) => {
      const i = indexOf.get(id);
      if (i !== undefined) failed(i, failedReason);
    });
    o.signal?.addEventListener('abort', () => settle.reject(new EigenLoraxError('queue build interrupted: its jobs are removed, nothing written', 'ERR_ABORTED')), { once: true });
    o.lost.catch(settle.reject);
    const data = (index: number): ShardJobData => ({
      format: JOB_FORMAT,
      formatVersion: JOB_FORMAT_VERSION,
      version,
      runId,
      adapters: manifest.adapters,
      options: manifest.options,
      index,
      count: jobs,
      staging,
    });
    const enqueue = async (indices: readonly number[]) => {
      if (indices.length === 0) return;
      await queue.addBulk(
        indices.map((i) => ({
          name: JOB_NAME,
          data: data(i),
          opts: { jobId: ids[i]!, attempts: manifest.attempts, removeOnComplete: { age: 24 * 3600 }, removeOnFail: { age: 7 * 24 * 3600 } },
        })),
      );
    };
    await start({ queue, done, completed, failed, enqueue });
    await finished;
    const gathered = path.join(staging, 'gathered');
    const subspace = await gatherShards(
      ids.map((_, i) => path.join(staging, `shard-${i}`)),
      gathered,
    );
    await replaceFolder(gathered, o.out, staging);
    return { runId, subspace, workers: [...workers].sort() };
  } finally {
    // Jobs of this run still waiting (after a failure or Ctrl-C) are removed; an active one
    // finds the staging folder gone and ends.
    await Promise.all(ids.map((id) => queue.remove(id).catch(() => undefined)));
    await rm(staging, { recursive: true, force: true });
    await events.close().catch(() => undefined);
    await queue.close().catch(() => undefined);
  }
}
