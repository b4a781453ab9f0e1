/**
 * The Redis side of the work queue: the URL checked, a connection that fails fast when
 * Redis is not there (ioredis alone retries forever), the queue's name and the job record
 * every `queue build` enqueues and every `worker` checks.
 */
import { Redis } from 'ioredis';
import { EigenLoraxError } from '../errors.js';
import { invalid } from '../validate.js';

/** The BullMQ queue both commands use unless told otherwise (runs are kept apart by their run id). */
export const DEFAULT_QUEUE = 'eigenlorax-build';

/** The job's name in BullMQ and the `format` of its data. */
export const JOB_NAME = 'subspace-shard';
export const JOB_FORMAT = 'eigenlorax-queue-job';
export const JOB_FORMAT_VERSION = 1;

/** How long the first connection may take before the run is refused. */
const CONNECT_TIMEOUT_MS = 5000;
/** Reconnection attempts after a connection was made, before the run gives up (about two minutes). */
const RECONNECT_ATTEMPTS = 30;

/** Checks that `url` is a redis:// or rediss:// URL with a host; returns it. */
export function checkRedisUrl(url: unknown): string {
  if (typeof url !== 'string' || url.length === 0) throw invalid('a Redis URL such as redis://host:6379', 'redis', url);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw invalid('a Redis URL such as redis://host:6379', 'redis', url);
  }
  if ((parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') || parsed.hostname === '') {
    throw invalid('a Redis URL such as redis://host:6379 (redis:// or rediss://, with a host)', 'redis', url);
  }
  return url;
}

/** The URL without its password, for messages. */
export function shownUrl(url: string): string {
  const u = new URL(url);
  if (u.password !== '') u.password = '***';
  return u.toString();
}

function queueError(url: string, what: string): EigenLoraxError {
  return new EigenLoraxError(`Redis at ${shownUrl(url)}: ${what}`, 'ERR_QUEUE');
}

/**
 * A connection to the Redis at `url` for BullMQ (maxRetriesPerRequest null, as its
 * workers need), made only after one PING answered within a few seconds: an unreachable
 * host, a closed port or a server that is not Redis is an ERR_QUEUE naming the URL, not a
 * retry loop. Once connected, a lost connection is retried for about two minutes; then
 * `onLost` is called (the run cannot go on).
 */
export async function connectRedis(url: string, onLost: (error: EigenLoraxError) => void): Promise<Redis> {
  checkRedisUrl(url);
  const probe = new Redis(url, { lazyConnect: true, connectTimeout: CONNECT_TIMEOUT_MS, retryStrategy: () => null, maxRetriesPerRequest: 0, enableOfflineQueue: false });
  let timer: NodeJS.Timeout | undefined;
  try {
    // The first error (refused, unknown host, bad password) or the timeout, whichever comes first.
    const failed = new Promise<never>((_, reject) => {
      probe.on('error', reject);
      timer = setTimeout(() => reject(new Error(`no answer within ${CONNECT_TIMEOUT_MS / 1000} s`)), CONNECT_TIMEOUT_MS);
    });
    await Promise.race([probe.connect().then(() => probe.ping()), failed]);
  } catch (cause) {
    throw queueError(url, `cannot connect (${(cause as Error).message}); is redis-server running there and the URL right?`);
  } finally {
    clearTimeout(timer);
    probe.disconnect();
  }
  const redis = new Redis(url, {
    maxRetriesPerRequest: null,
    retryStrategy: (times) => (times > RECONNECT_ATTEMPTS ? null : Math.min(500 * times, 5000)),
  });
  let lastError = '';
  redis.on('error', (e: Error) => (lastError = e.message));
  redis.on('end', () => onLost(queueError(url, `connection lost (${lastError || 'closed'}) and not regained`)));
  return redis;
}

/** What one job carries: everything a worker needs to build its shard. */
export interface ShardJobData {
  format: typeof JOB_FORMAT;
  formatVersion: typeof JOB_FORMAT_VERSION;
  /** The eigenlorax version that enqueued the job; a worker of another version refuses it. */
  version: string;
  runId: string;
  /** Absolute adapter paths, as every worker must see them. */
  adapters: string[];
  /** buildSubspace's options (JSON: no callbacks), without `shard`. */
  options: Record<string, unknown>;
  index: number;
  count: number;
  /** The run's staging folder; the shard goes to `<staging>/shard-<index>`. */
  staging: string;
}

/** The job id of shard `index` of run `runId` (unique across runs on one queue). */
export function jobId(runId: string, index: number): string {
  return `${runId}-shard-${index}`;
}

/** Checks a job's data; returns a message saying what is wrong, or null. */
export function jobDataProblem(data: unknown): string | null {
  const d = data as Partial<ShardJobData> | null;
  if (d === null || typeof d !== 'object' || d.format !== JOB_FORMAT) return `not an eigenlorax job (format ${JSON.stringify(d?.format)})`;
  if (typeof d.version !== 'string') return 'the job names no eigenlorax version';
  if (d.formatVersion !== JOB_FORMAT_VERSION) return `job format version ${String(d.formatVersion)}, this worker reads ${JOB_FORMAT_VERSION}`;
  const ok =
    typeof d.runId === 'string' &&
    Array.isArray(d.adapters) &&
    d.adapters.every((a) => typeof a === 'string') &&
    typeof d.options === 'object' &&
    d.options !== null &&
    Number.isInteger(d.count) &&
    Number.isInteger(d.index) &&
    d.index! >= 0 &&
    d.index! < d.count! &&
    typeof d.staging === 'string';
  return ok ? null : 'a field of the job is missing or ill-typed';
}
