/** `eigenlorax worker --redis <url>`: takes the shard jobs of `eigenlorax queue build` (BullMQ Worker, lib/queue/worker.ts). */
import { Command, Option } from 'commander';
import { examples } from './format.js';
import { integer, UsageError } from './options.js';
import { addQueueOptions, queueName } from './queue.js';

interface WorkerFlags {
  redis?: string;
  queue?: string;
  name?: string;
  concurrency: number;
  exitWhenIdle?: boolean;
  lockDuration?: number;
  stalledInterval?: number;
  pretendVersion?: string;
}

/** How often --exit-when-idle looks at the queue, and how many idle looks in a row end the worker. */
const IDLE_POLL_MS = 1000;
const IDLE_LOOKS = 2;

export function workerCommand(): Command {
  const command = new Command('worker')
    .usage('--redis <url> [--queue name] [--name name] [--concurrency n] [--exit-when-idle] [--lock-duration ms] [--stalled-interval ms]')
    .summary('take the jobs of `eigenlorax queue build` from Redis (a BullMQ worker) until stopped')
    .description(
      'A BullMQ worker on the queue at --redis: each job builds one shard of a `queue build` (as `build --shard i/n` does) into the ' +
        'run\'s staging folder, so the adapters and the output must be at the same paths here as where `queue build` runs. One job at ' +
        'a time by default (the kernels use every core). A job of another eigenlorax version is failed, not run. SIGINT or SIGTERM ' +
        'finishes the current job and exits 0; a second signal exits at once (the job goes back to the queue when its lock expires). ' +
        'A worker killed mid-job holds its job until its lock (--lock-duration) expires; another worker then finds it stalled ' +
        '(every --stalled-interval) and runs it again.',
    )
    .option('--name <name>', 'the worker\'s name shown by queue build (default host:pid)')
    .addOption(new Option('--concurrency <n>', 'jobs at once').default(1).argParser(integer('--concurrency', { min: 1, max: 64 })))
    .option('--exit-when-idle', 'exit once the queue has no waiting, delayed or active job (batch clusters: start after queue build has enqueued)')
    .addOption(new Option('--lock-duration <ms>', 'BullMQ lock on a job, renewed at half of it (default 30000)').argParser(integer('--lock-duration', { min: 100, max: 3_600_000 })))
    .addOption(new Option('--stalled-interval <ms>', 'how often to look for stalled jobs (default 30000)').argParser(integer('--stalled-interval', { min: 100, max: 3_600_000 })))
    // Tests of the version check only: the worker claims this eigenlorax version.
    .addOption(new Option('--pretend-version <version>').hideHelp());
  addQueueOptions(command).addHelpText(
    'after',
    examples([
      ['eigenlorax worker --redis redis://queue-host:6379', 'take jobs until Ctrl-C'],
      ['eigenlorax worker --redis redis://queue-host:6379 --exit-when-idle', 'in a batch job: exit when the queue is empty'],
    ]),
  );
  command.action(async (flags: WorkerFlags) => {
    if (flags.redis === undefined) throw new UsageError('worker needs --redis <url>');
    const queue = await queueName(flags.queue);
    const { connectRedis, shownUrl } = await import('../queue/connection.js');
    const { startShardWorker } = await import('../queue/worker.js');
    const { Queue } = await import('bullmq');
    let lostConnection: (e: Error) => void = () => undefined;
    const lost = new Promise<never>((_, reject) => (lostConnection = reject));
    const redis = await connectRedis(flags.redis, (e) => lostConnection(e));
    const say = (line: string) => process.stdout.write(`${line}\n`);
    const { worker, name } = startShardWorker(redis, {
      queue,
      ...(flags.name === undefined ? {} : { name: flags.name }),
      concurrency: flags.concurrency,
      ...(flags.lockDuration === undefined ? {} : { lockDuration: flags.lockDuration }),
      ...(flags.stalledInterval === undefined ? {} : { stalledInterval: flags.stalledInterval }),
      ...(flags.pretendVersion === undefined ? {} : { version: flags.pretendVersion }),
      onJob: (e) => say(`job ${e.id} (shard ${e.index} of ${e.count}) ${e.state}${e.message === undefined ? '' : `: ${e.message}`}`),
    });
    // Each distinct error once (while Redis is away the connection retries and repeats it).
    let lastError = '';
    worker.on('error', (e) => {
      if (e.message !== lastError) process.stderr.write(`eigenlorax worker: ${e.message}\n`);
      lastError = e.message;
    });
    await worker.waitUntilReady();
    say(`worker ${name} on ${queue} at ${shownUrl(flags.redis)}`);
    const stopped = new Promise<void>((resolve) => {
      let signals = 0;
      const stop = (signal: NodeJS.Signals) => {
        signals++;
        if (signals === 1 && redis.status === 'ready') {
          say(`${signal}: finishing the current job, then exiting`);
          void worker.close().then(resolve);
        } else if (signals === 1) {
          // Redis is away: nothing can be handed back (a job in hand returns to the queue when its
          // lock expires) and BullMQ's own connections would keep retrying: exit now.
          say(`${signal}: Redis is not connected, exiting now`);
          process.exit(0);
        } else {
          void worker.close(true).finally(() => process.exit(130));
        }
      };
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
      if (flags.exitWhenIdle === true) {
        const counts = new Queue(queue, { connection: redis });
        counts.on('error', () => undefined); // the worker reports connection errors
        let idle = 0;
        const look = async () => {
          const c = await counts.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'waiting-children');
          idle = Object.values(c).every((n) => n === 0) ? idle + 1 : 0;
          if (idle >= IDLE_LOOKS) {
            say('the queue is empty: exiting');
            await counts.close();
            await worker.close();
            resolve();
          } else setTimeout(() => void look().catch(() => setTimeout(() => void look(), IDLE_POLL_MS)), IDLE_POLL_MS);
        };
        void look();
      }
    });
    try {
      await Promise.race([stopped, lost]);
    } finally {
      if (redis.status === 'ready') await worker.close(true).catch(() => undefined);
      redis.disconnect();
    }
  });
  return command;
}
