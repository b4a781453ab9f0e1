/**
 * `eigenlorax demo [--out dir] [--cache dir] [--seed n] [--quick] [--json]`: runs the
 * experiment (lib/demo/run.ts), prints the comparison table (or the results as JSON with
 * --json) and writes the results folder. Progress lines go to stderr.
 */
import { EigenLoraxError } from '../errors.js';

type OptionSpec = Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }>;

export interface DemoCliContext {
  /** Parses the command's arguments (strict; adds --help and --version). */
  parse(args: string[], options: OptionSpec): { values: Record<string, unknown>; positionals: string[] };
  /** An error that the caller prints with the usage, exit code 2. */
  usageError(message: string): Error;
}

/** Runs `eigenlorax demo`; returns the exit code. */
export async function runDemoCommand(args: string[], context: DemoCliContext): Promise<number> {
  const { values, positionals } = context.parse(args, {
    out: { type: 'string', short: 'o' },
    cache: { type: 'string' },
    seed: { type: 'string' },
    quick: { type: 'boolean' },
    json: { type: 'boolean' },
  });
  if (positionals.length > 0) throw context.usageError(`demo takes no positional arguments (got ${positionals.join(' ')})`);
  let seed = 0;
  if (values.seed !== undefined) {
    const text = String(values.seed);
    seed = /^\d+$/.test(text) ? Number(text) : Number.NaN;
    if (!Number.isSafeInteger(seed) || seed > 2 ** 24) throw context.usageError(`--seed expects an integer from 0 to ${2 ** 24}, not ${JSON.stringify(text)}`);
  }
  const json = values.json === true;
  const { runDemo } = await import('./run.js');
  const { formatDemoText } = await import('./report.js');
  const controller = new AbortController();
  const onSignal = () => {
    process.stderr.write('eigenlorax demo: stopping after the current step (Ctrl-C again to quit at once)\n');
    controller.abort(new EigenLoraxError('the demo was interrupted', 'ERR_ABORTED'));
    process.off('SIGINT', onSignal);
  };
  process.on('SIGINT', onSignal);
  const started = performance.now();
  try {
    const results = await runDemo({
      ...(values.out === undefined ? {} : { out: String(values.out) }),
      ...(values.cache === undefined ? {} : { cacheDir: String(values.cache) }),
      seed,
      quick: values.quick === true,
      onLog: (line) => process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`),
      signal: controller.signal,
    });
    process.stdout.write(json ? `${JSON.stringify(results, null, 2)}\n` : formatDemoText(results));
    return 0;
  } catch (error) {
    const e = error as { code?: string; message?: string };
    if (typeof e.code !== 'string' || !e.code.startsWith('ERR_')) throw error;
    process.stderr.write(`eigenlorax: ${e.message ?? String(error)} (${e.code})\n`);
    if (json) process.stdout.write(`${JSON.stringify({ error: { code: e.code, message: e.message ?? String(error) } }, null, 2)}\n`);
    return e.code === 'ERR_ABORTED' ? 130 : 1;
  } finally {
    process.off('SIGINT', onSignal);
  }
}
