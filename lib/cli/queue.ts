/**
 * `eigenlorax queue build <adapters...> -o <dir> --redis <url>`: a sharded build through a
 * BullMQ work queue on Redis (lib/queue/): one job per shard, taken by any number of
 * `eigenlorax worker` processes, then the gather here.
 */
import path from 'node:path';
import { Command, Option } from 'commander';
import { ProgressBar } from '../progress.js';
import { examples, keyValues, plural, printJson } from './format.js';
import { integer, size, UsageError } from './options.js';
import { jsonErrors } from './report.js';
import { addBuildOptions, buildOptionsFrom, outputFlag, type BuildFlags } from './subspace-options.js';

const DEFAULT_JOBS = 8;

/** A redis:// or rediss:// URL with a host, or a usage error. */
export function redisFlag(text: string): string {
  let url: URL | null = null;
  try {
    url = new URL(text);
  } catch {
    // reported below
  }
  if (url === null || (url.protocol !== 'redis:' && url.protocol !== 'rediss:') || url.hostname === '') {
    throw new UsageError(`--redis expects a URL such as redis://host:6379 (redis:// or rediss://), not ${JSON.stringify(text)}`);
  }
  return text;
}

/** A run id as `queue build` prints it (base-36 time, '-', 8 hex digits), or a usage error. */
function runIdFlag(text: string): string {
  if (!/^[0-9a-z]{1,16}-[0-9a-f]{8}$/.test(text)) throw new UsageError(`--resume expects the run id queue build printed (such as mbx1k2-3f9a0c1d), not ${JSON.stringify(text)}`);
  return text;
}

/** --redis (required) and --queue, shared with `worker`. */
export function addQueueOptions(command: Command): Command {
  return command
    .addOption(new Option('--redis <url>', 'the Redis of the queue: redis://[user:password@]host:port[/db] or rediss://').argParser(redisFlag))
    .option('--queue <name>', 'the BullMQ queue (default eigenlorax-build; runs on one queue are kept apart by run id)');
}

/** The queue name from --queue, checked. */
export async function queueName(flag: string | undefined): Promise<string> {
  const { DEFAULT_QUEUE } = await import('../queue/connection.js');
  if (flag === undefined) return DEFAULT_QUEUE;
  if (!/^[A-Za-z0-9_.-]{1,100}$/.test(flag)) throw new UsageError(`--queue expects a name of letters, digits, '_', '.' and '-', not ${JSON.stringify(flag)}`);
  return flag;
}

type QueueBuildFlags = BuildFlags & { output?: string; redis?: string; queue?: string; jobs: number; attempts: number; memoryBudget?: number; resume?: string };

function queueBuildCommand(): Command {
  const command = new Command('build')
    .usage('<adapters...> -o <dir> --redis <url> [--jobs n] [--queue name] [--attempts n] [build flags] [--json] [--quiet]\n       eigenlorax queue build --resume <run id> -o <dir> --redis <url> [--queue name] [--json] [--quiet]')
    .summary('a sharded build through a BullMQ work queue on Redis: run `eigenlorax worker --redis <url>` anywhere that sees the same paths')
    .description(
      'Enqueues one BullMQ job per shard of the build (--jobs n: the modules split as `build --shard i/n` splits them, with the same ' +
        'seeds) on the Redis at --redis and waits, with a progress bar of jobs done and what each worker builds. Any number of ' +
        '`eigenlorax worker --redis <url>` processes, on any machine that sees the adapters and -o at the same paths, take the jobs ' +
        'and write their shards under <dir>.queue-<run id>/; a worker killed mid-job loses its lock and its job goes back to the ' +
        'queue (BullMQ stall detection). When the last job is done this process gathers the shards into <dir>, byte-identical to a ' +
        'one-machine `eigenlorax build`, and removes the staging folder. Redis unreachable, a job that fails, a worker of another ' +
        'eigenlorax version: exit 1 (ERR_QUEUE) with nothing written to <dir>. If this process dies, the workers go on: ' +
        '`--resume <run id>` with the same -o takes the wait over (the adapters and settings come from the run\'s manifest in its ' +
        'staging folder), enqueues again any job Redis lost, and gathers.',
    )
    .argument('[adapters...]', 'adapter folders or .safetensors files (the same paths on every worker)')
    .option('-o, --output <dir>', 'the subspace folder')
    .addOption(new Option('--jobs <n>', 'jobs (shards) to split the build into, at most one per module').default(DEFAULT_JOBS).argParser(integer('--jobs', { min: 1, max: 10_000 })))
    .addOption(new Option('--attempts <n>', 'tries per job when the build throws (a killed worker\'s job is retried regardless)').default(1).argParser(integer('--attempts', { min: 1, max: 100 })))
    .addOption(new Option('--memory-budget <size>', 'memory for a module\'s stacks on each worker (default half the worker\'s free memory)').argParser(size('--memory-budget')))
    .addOption(new Option('--resume <run id>', 'take over the wait of a run whose queue build process died (the run id it printed), with the same -o').argParser(runIdFlag));
  addQueueOptions(command);
  addBuildOptions(command).addHelpText(
    'after',
    examples([
      ['eigenlorax queue build adapters/* -o subspace -k 16 --jobs 16 --redis redis://queue-host:6379', 'enqueue 16 jobs and wait'],
      ['eigenlorax worker --redis redis://queue-host:6379', 'on each machine: take jobs until stopped'],
      ['eigenlorax queue build --resume mbx1k2-3f9a0c1d -o subspace --redis redis://queue-host:6379', 'finish a run whose waiting process died'],
    ]),
  );
  command.action(async (adapters: string[], flags: QueueBuildFlags) => {
    const resume = flags.resume;
    if (resume !== undefined && adapters.length > 0) throw new UsageError('queue build --resume takes no adapter paths: the run\'s manifest names them');
    if (resume === undefined && adapters.length === 0) throw new UsageError('queue build needs at least one adapter path');
    const out = path.resolve(outputFlag('queue build', flags.output));
    if (flags.redis === undefined) throw new UsageError('queue build needs --redis <url>');
    const queue = await queueName(flags.queue);
    const options: Record<string, unknown> = { ...buildOptionsFrom(flags) };
    if (flags.memoryBudget !== undefined) options.memoryBudget = flags.memoryBudget;
    const { connectRedis, shownUrl } = await import('../queue/connection.js');
    const { countModules, resumeQueueBuild, runQueueBuild } = await import('../queue/run.js');
    const resolved = adapters.map((a) => path.resolve(a));
    // No more jobs than modules: a shard without modules is no subspace (gather refuses it).
    let jobs = resume === undefined ? Math.min(flags.jobs, await countModules(resolved)) : 0;
    let lostConnection: (e: Error) => void = () => undefined;
    const lost = new Promise<never>((_, reject) => (lostConnection = reject));
    lost.catch(() => undefined);
    const redis = await connectRedis(flags.redis, (e) => lostConnection(e));
    const quiet = flags.quiet === true || flags.json === true;
    const bar = ProgressBar.forTerminal(quiet);
    const abort = new AbortController();
    const interrupt = () => abort.abort();
    process.once('SIGINT', interrupt);
    process.once('SIGTERM', interrupt);
    const wait = {
      queue,
      out,
      lost,
      signal: abort.signal,
      onNote: (message: string) => (bar.enabled ? bar.log(message) : !quiet && process.stderr.write(`${message}\n`)),
      onProgress: ({ done, total, running }: { done: number; total: number; running: Map<number, { worker: string; done: number; total: number }> }) => {
        const now = [...running.entries()].map(([i, p]) => `${p.worker}: shard ${i}${p.total > 0 ? ` ${p.done}/${p.total}` : ''}`);
        bar.update({ label: 'jobs', value: done, total, detail: [`${running.size} running`], item: now.join(', ') });
      },
    };
    try {
      const result =
        resume === undefined
          ? await runQueueBuild(redis, {
              ...wait,
              adapters: resolved,
              options,
              jobs,
              attempts: flags.attempts,
              onEnqueued: ({ runId, staging, jobs }) => {
                if (!quiet) process.stderr.write(`enqueued ${plural(jobs, 'job')} on ${queue} at ${shownUrl(flags.redis!)} (run ${runId}, staging ${staging}); waiting for workers\n`);
              },
            })
          : await resumeQueueBuild(redis, {
              ...wait,
              runId: resume,
              onResumed: (run) => {
                jobs = run.jobs;
                if (!quiet) {
                  process.stderr.write(
                    `resumed run ${resume} on ${queue} at ${shownUrl(flags.redis!)} (staging ${run.staging}): ${run.done} of ${plural(run.jobs, 'job')} done, ${run.requeued} enqueued again; waiting for workers\n`,
                  );
                }
              },
            });
      bar.stop();
      const summary = { subspace: { id: result.subspace.id, folder: out }, run: result.runId, queue, jobs, workers: result.workers, modules: result.subspace.modules.size, adapters: result.subspace.sources.length };
      if (flags.json === true) {
        printJson(summary);
        return;
      }
      process.stdout.write(
        `built a subspace of ${plural(summary.adapters, 'adapter')} through ${plural(jobs, 'job')} on ${queue} -> ${out}\n` +
          keyValues([
            ['subspace', result.subspace.id.slice(0, 12)],
            ['modules', String(summary.modules)],
            ['workers', result.workers.join(', ')],
          ]),
      );
    } finally {
      bar.stop();
      process.off('SIGINT', interrupt);
      process.off('SIGTERM', interrupt);
      redis.disconnect();
    }
  });
  return jsonErrors(command);
}

export function queueCommand(): Command {
  return new Command('queue')
    .usage('build <adapters...> -o <dir> --redis <url> [--jobs n] [build flags]')
    .summary('a sharded build through a BullMQ work queue on Redis, taken by `eigenlorax worker` processes')
    .description('Work queue commands (BullMQ over Redis). `queue build` enqueues the shards of a build and waits; `eigenlorax worker` takes them.')
    .addCommand(queueBuildCommand())
    .addHelpText('after', examples([['eigenlorax queue build adapters/* -o subspace -k 16 --redis redis://queue-host:6379', 'see eigenlorax queue build --help']]));
}
