/**
 * The waiting side of the work queue (`eigenlorax queue build`): one BullMQ job per shard
 * of the build, their completion followed through QueueEvents, then the gather here.
 *
 * The gather runs in this process, not in a flow parent job on the worker finishing last:
 * this process must wait anyway to report the result and its exit code, `-o` is its path,
 * and a gather failure (or Ctrl-C) is then reported where the run was started, with one
 * place that cleans up; a parent job would add a job type whose failure nobody waits for.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Job, Queue, QueueEvents } from 'bullmq';
import type { Redis } from 'ioredis';
import { openAdapter } from '../adapters/open.js';
import { EigenLoraxError } from '../errors.js';
import { gatherShards } from '../subspace/shard.js';
import type { Subspace } from '../subspace/types.js';
import { version } from '../version.js';
import { JOB_FORMAT, JOB_FORMAT_VERSION, JOB_NAME, jobId, type ShardJobData } from './connection.js';
import type { ShardJobProgress, ShardJobResult } from './worker.js';

export interface QueueBuildOptions {
  queue: string;
  /** Absolute adapter paths. */
  adapters: string[];
  /** buildSubspace's options (JSON), without `shard`. */
  options: Record<string, unknown>;
  /** The number of jobs (shards). */
  jobs: number;
  /** The output folder (absolute). */
  out: string;
  /** BullMQ attempts per job for errors thrown by the build (a killed worker's job is retried by stall detection regardless). */
  attempts: number;
  onEnqueued?: (run: { runId: string; staging: string; jobs: number }) => void;
  /** Every change: jobs done, what runs where. */
  onProgress?: (p: { done: number; total: number; running: Map<number, ShardJobProgress> }) => void;
  /** A line worth printing (a stalled job back in the queue). */
  onNote?: (message: string) => void;
  /** Aborts the wait (Ctrl-C): the run's jobs are removed, nothing is written. */
  signal?: AbortSignal;
  /** Rejects the wait when the Redis connection is lost for good. */
  lost: Promise<never>;
}

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

/** Enqueues the shards of one build on `redis`, waits for every job, gathers them into `options.out`. */
export async function runQueueBuild(redis: Redis, o: QueueBuildOptions): Promise<QueueBuildResult> {
  const runId = newRunId();
  const staging = `${o.out}.queue-${runId}`;
  const queue = new Queue(o.queue, { connection: redis });
  const events = new QueueEvents(o.queue, { connection: redis });
  const ids = Array.from({ length: o.jobs }, (_, i) => jobId(runId, i));
  const indexOf = new Map(ids.map((id, i) => [id, i]));
  // Connection errors while Redis is away: the connection retries, and `o.lost` ends the run if it never comes back.
  queue.on('error', () => undefined);
  events.on('error', () => undefined);
  try {
    await mkdir(staging, { recursive: true });
    // Listening before the jobs exist, so no event of this run is missed.
    await events.waitUntilReady();
    const done = new Set<number>();
    const running = new Map<number, ShardJobProgress>();
    const workers = new Set<string>();
    const finished = new Promise<void>((resolve, reject) => {
      const report = () => o.onProgress?.({ done: done.size, total: o.jobs, running });
      const fail = async (id: string, reason: string) => {
        const job = await Job.fromId(queue, id);
        const where = job?.processedBy !== undefined ? ` on worker ${job.processedBy}` : '';
        reject(new EigenLoraxError(`job ${id} (shard ${indexOf.get(id)} of ${o.jobs})${where} failed: ${reason}`, 'ERR_QUEUE'));
      };
      events.on('active', ({ jobId: id }) => {
        const i = indexOf.get(id);
        if (i !== undefined && !running.has(i)) {
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
        if (i === undefined) return;
        running.delete(i);
        done.add(i);
        const worker = (returnvalue as unknown as ShardJobResult | undefined)?.worker;
        if (typeof worker === 'string') workers.add(worker);
        report();
        if (done.size === o.jobs) resolve();
      });
      events.on('failed', ({ jobId: id, failedReason }) => {
        if (indexOf.has(id)) void fail(id, failedReason).catch(reject);
      });
      o.signal?.addEventListener('abort', () => reject(new EigenLoraxError('queue build interrupted: its jobs are removed, nothing written', 'ERR_ABORTED')), { once: true });
      o.lost.catch(reject);
    });
    finished.catch(() => undefined);
    const data = (index: number): ShardJobData => ({
      format: JOB_FORMAT,
      formatVersion: JOB_FORMAT_VERSION,
      version,
      runId,
      adapters: o.adapters,
      options: o.options,
      index,
      count: o.jobs,
      staging,
    });
    await queue.addBulk(
      ids.map((id, i) => ({
        name: JOB_NAME,
        data: data(i),
        opts: { jobId: id, attempts: o.attempts, removeOnComplete: { age: 24 * 3600 }, removeOnFail: { age: 7 * 24 * 3600 } },
      })),
    );
    o.onEnqueued?.({ runId, staging, jobs: o.jobs });
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
