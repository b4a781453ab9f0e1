/** `eigenlorax demo`: the EigenLoRAx workflow on Fashion-MNIST (lib/demo), its table and results folder. */
import { Command, Option } from 'commander';
import { EigenLoraxError } from '../errors.js';
import { ProgressBar } from '../progress.js';
import { examples, printJson } from './format.js';
import { integer } from './options.js';
import { jsonErrors } from './report.js';

interface DemoFlags {
  out?: string;
  cache?: string;
  seed?: number;
  quick?: boolean;
  json?: boolean;
  quiet?: boolean;
}

export function demoCommand(): Command {
  const command = new Command('demo')
    .usage('[--out dir] [--cache dir] [--seed n] [--quick] [--json] [--quiet]')
    .summary('the EigenLoRAx workflow on Fashion-MNIST: LoRA vs EigenLoRA vs EigenLoRAx vs the base on held-out tasks (needs fashion-mnist)')
    .description(
      'The EigenLoRAx workflow on Fashion-MNIST (needs the fashion-mnist package): a base MLP, a zoo of LoRAs on rotated versions of ' +
        'the task and their subspace; on held-out tasks LoRA vs EigenLoRA vs EigenLoRAx vs the base; zero-shot reconstruction. Prints ' +
        'the table; writes --out (default eigenlorax-demo/): results.json, results.md, SVG curves and a served-model folder (serve/); ' +
        'caches base and zoo in --cache (default .eigenlorax-cache). Progress lines go to stderr; Ctrl-C stops after the current step ' +
        '(exit code 130).',
    )
    .option('-o, --out <dir>', 'results folder (default eigenlorax-demo)')
    .option('--cache <dir>', 'cache folder (default $EIGENLORAX_CACHE_DIR or .eigenlorax-cache)')
    .addOption(new Option('--seed <n>', 'seed of everything (default 0)').argParser(integer('--seed', { min: 0, max: 2 ** 24 })))
    .option('--quick', 'the small version (a minute or two)')
    .option('--json', 'print the results as JSON')
    .option('-q, --quiet', 'no progress bar (the progress lines stay)')
    .addHelpText(
      'after',
      examples([
        ['eigenlorax demo --quick', 'the small version, results in eigenlorax-demo/'],
        ['eigenlorax demo --seed 3 --out runs/3 --json > runs/3.json', 'another seed, as JSON'],
      ]),
    )
    .action(async (flags: DemoFlags) => {
      const { runDemo } = await import('../demo/run.js');
      const { formatDemoText } = await import('../demo/report.js');
      const controller = new AbortController();
      const onSignal = () => {
        process.stderr.write('eigenlorax demo: stopping after the current step (Ctrl-C again to quit at once)\n');
        controller.abort(new EigenLoraxError('the demo was interrupted', 'ERR_ABORTED'));
        process.off('SIGINT', onSignal);
      };
      process.on('SIGINT', onSignal);
      const started = performance.now();
      const bar = ProgressBar.forTerminal(flags.quiet === true || flags.json === true);
      const log = (line: string) => {
        const text = `[${((performance.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}`;
        if (bar.enabled) bar.log(text);
        else process.stderr.write(`${text}\n`);
      };
      try {
        const results = await runDemo({
          ...(flags.out === undefined ? {} : { out: flags.out }),
          ...(flags.cache === undefined ? {} : { cacheDir: flags.cache }),
          seed: flags.seed ?? 0,
          quick: flags.quick === true,
          onLog: log,
          ...(bar.enabled ? { progress: bar } : {}),
          signal: controller.signal,
        });
        if (flags.json === true) printJson(results);
        else process.stdout.write(formatDemoText(results));
      } finally {
        bar.stop();
        process.off('SIGINT', onSignal);
      }
    });
  return jsonErrors(command);
}
