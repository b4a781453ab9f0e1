/**
 * The worker side of the work queue: a BullMQ Worker whose job is one shard of a subspace
 * build (buildSubspace with `shard`, written by writeBuildFolder, as `build --shard` does).
 */
import { randomBytes } from 'node:crypto';
import { stat, rename, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { Redis } from 'ioredis';
import { EigenLoraxError } from '../errors.js';
import { version as packageVersion } from '../version.js';
import { buildSubspace } from '../subspace/build.js';
import { writeBuildFolder } from '../subspace/output.js';
import { JOB_NAME, jobDataProblem, type ShardJobData } from './connection.js';

export interface ShardWorkerOptions {
  queue: string;
  /** The worker's name, shown by `queue build` (default host:pid). */
  name?: string;
  /** Jobs at once (default 1: the kernels use every core already). */
  concurrency?: number;
  /** BullMQ's lock on an active job, renewed at half of it; a worker silent longer is stalled (default 30000 ms). */
  lockDuration?: number;
  /** How often stalled jobs are looked for (default 30000 ms). */
  stalledInterval?: number;
  /** The version this worker claims (tests of the version check only; default the package's). */
  version?: string;
  /** Called as a job starts and ends. */
  onJob?: (event: { id: string; index: number; count: number; state: 'started' | 'done' | 'failed'; message?: string }) => void;
}

/** Progress a worker reports on its job (job.updateProgress), shown by `queue build`. */
export interface ShardJobProgress {
  worker: string;
  done: number;
  total: number;
  module?: string;
}

/** What a finished job returns. */
export interface ShardJobResult {
  worker: string;
  shard: string;
  modules: number;
}

/** Builds one shard; the shard folder appears whole (staged beside it, then renamed), so a retried job never sees a half-written one. */
async function processShard(job: Job, worker: string, version: string): Promise<ShardJobResult> {
  // The version first: a job of another version may also have another layout.
  const enqueuedBy = (job.data as Partial<ShardJobData> | null)?.version;
  if (typeof enqueuedBy === 'string' && enqueuedBy !== version) {
    throw new UnrecoverableError(
      `job ${job.id} was enqueued by eigenlorax ${enqueuedBy} but worker ${worker} is eigenlorax ${version}: run workers of the same version as queue build (ERR_QUEUE)`,
    );
  }
  const problem = jobDataProblem(job.data);
  if (problem !== null) throw new UnrecoverableError(`job ${job.id}: ${problem}`);
  const data = job.data as ShardJobData;
  const staging = async () => {
    // The waiting `queue build` removes the staging folder when the run ends or fails: nothing left to do.
    if (!(await stat(data.staging).then((s) => s.isDirectory(), () => false))) {
      throw new UnrecoverableError(`job ${job.id}: the staging folder ${data.staging} is gone (the run ended) or not visible from this machine`);
    }
  };
  await staging();
  // Shown by queue build as soon as the job runs.
  await job.updateProgress({ worker, done: 0, total: 0 } satisfies ShardJobProgress);
  let lastReport = 0;
  const subspace = await buildSubspace(data.adapters, {
    ...data.options,
    shard: { index: data.index, count: data.count },
    onProgress: (p) => {
      const now = Date.now();
      if (now - lastReport < 250 && p.done < p.total) return;
      lastReport = now;
      void job.updateProgress({ worker, done: p.done, total: p.total, module: p.module } satisfies ShardJobProgress).catch(() => undefined);
    },
  });
  await staging();
  const folder = path.join(data.staging, `shard-${data.index}`);
  const temporary = `${folder}.part-${randomBytes(4).toString('hex')}`;
  try {
    await writeBuildFolder(subspace, temporary);
    await rm(folder, { recursive: true, force: true });
    await rename(temporary, folder);
  } catch (error) {
    await rm(temporary, { recursive: true, force: true }).catch(() => undefined);
    throw error;
  }
  return { worker, shard: folder, modules: subspace.modules.size };
}

/** An error's message with its code, as BullMQ stores it (failedReason is a string). */
function withCode(error: unknown): Error {
  if (error instanceof UnrecoverableError) return error;
  if (error instanceof EigenLoraxError) {
    const e = new Error(`${error.message} (${error.code})`);
    e.stack = error.stack;
    return e;
  }
  return error instanceof Error ? error : new Error(String(error));
}

/** Starts a BullMQ Worker on `redis` for the shard jobs of `options.queue`; `name` is the one queue build shows. */
export function startShardWorker(redis: Redis, options: ShardWorkerOptions): { worker: Worker; name: string } {
  const name = options.name ?? `${os.hostname()}:${process.pid}`;
  const version = options.version ?? packageVersion;
  const worker = new Worker(
    options.queue,
    async (job: Job) => {
      const d = job.data as Partial<ShardJobData>;
      const event = { id: String(job.id), index: d.index ?? -1, count: d.count ?? -1 };
      if (job.name !== JOB_NAME) throw new UnrecoverableError(`job ${job.id}: not an eigenlorax job (name ${JSON.stringify(job.name)})`);
      options.onJob?.({ ...event, state: 'started' });
      try {
        const result = await processShard(job, name, version);
        options.onJob?.({ ...event, state: 'done' });
        return result;
      } catch (error) {
        const e = withCode(error);
        options.onJob?.({ ...event, state: 'failed', message: e.message });
        throw e;
      }
    },
    {
      connection: redis,
      name,
      concurrency: options.concurrency ?? 1,
      ...(options.lockDuration === undefined ? {} : { lockDuration: options.lockDuration }),
      ...(options.stalledInterval === undefined ? {} : { stalledInterval: options.stalledInterval }),
    },
  );
  return { worker, name };
}
