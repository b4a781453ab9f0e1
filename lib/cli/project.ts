/** `eigenlorax project <subspace> <adapter...> -o <dir>`: coefficients of adapters on a subspace. */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { Command } from 'commander';
import { EigenLoraxError } from '../errors.js';
import { ProgressBar } from '../progress.js';
import { columnsTable, examples, f3, fileNameFor, printJson } from './format.js';
import { UsageError } from './options.js';
import { failureLine, jsonErrors, ReportedFailure } from './report.js';
import { meanModuleError, outputFlag } from './subspace-options.js';

interface ProjectFlags {
  output?: string;
  skipMissing?: boolean;
  json?: boolean;
  quiet?: boolean;
}

export function projectCommand(): Command {
  const command = new Command('project')
    .usage('<subspace> <adapter...> -o <dir> [--skip-missing] [--json] [--quiet]')
    .summary('coefficients of adapters on a subspace, <dir>/<name>.safetensors, with each adapter\'s relative dW error')
    .description(
      'Projects each adapter on the subspace and writes its coefficients to <dir>/<name>.safetensors, with the relative error of the ' +
        'reconstructed updates. An adapter that fails is reported and the others go on (exit code 1).',
    )
    .argument('[subspace]', 'a subspace folder (or its subspace.json)')
    .argument('[adapters...]', 'adapter folders or .safetensors files')
    .option('-o, --output <dir>', 'the coefficients folder')
    .option('--skip-missing', 'project adapters that lack some of the subspace\'s modules on the modules they have')
    .option('--json', 'print the results as JSON')
    .option('-q, --quiet', 'no progress bar')
    .addHelpText('after', examples([['eigenlorax project subspace new-adapters/* -o coefficients', 'coefficients of adapters the subspace was not built from']]))
    .action(async (subspacePath: string | undefined, adapters: string[], flags: ProjectFlags) => {
      if (subspacePath === undefined || adapters.length === 0) throw new UsageError('project needs a subspace and at least one adapter path');
      const out = path.resolve(outputFlag('project', flags.output));
      const json = flags.json === true;
      const { loadSubspace, projectAdapter, saveCoefficients } = await import('../subspace/index.js');
      const subspace = await loadSubspace(subspacePath);
      await mkdir(out, { recursive: true });
      const bar = ProgressBar.forTerminal(flags.quiet === true || json);
      const used = new Set<string>();
      const results: unknown[] = [];
      const rows: string[][] = [];
      let failures = 0;
      try {
        for (const [i, adapter] of adapters.entries()) {
          bar.update({ label: 'project', value: i, total: adapters.length, item: adapter });
          try {
            const c = await projectAdapter(subspace, adapter, { missing: flags.skipMissing === true ? 'skip' : 'error' });
            const file = path.join(out, fileNameFor(c.adapter.name, used));
            await saveCoefficients(c, file);
            const entry = { path: adapter, adapter: c.adapter.name, file, modules: c.modules.size, skipped: c.skipped, relativeError: c.relativeError, meanModuleError: meanModuleError(c) };
            results.push(entry);
            rows.push([c.adapter.name, String(c.modules.size), f3(c.relativeError), f3(entry.meanModuleError), path.basename(file)]);
          } catch (error) {
            if (!(error instanceof EigenLoraxError)) throw error;
            failures++;
            const message = error.message.replace("pass missing: 'skip' to project the others", 'pass --skip-missing to project the others');
            bar.log(failureLine({ code: error.code, message }).trimEnd());
            if (!bar.enabled) process.stderr.write(failureLine({ code: error.code, message }));
            results.push({ path: adapter, error: { code: error.code, message } });
          }
        }
      } finally {
        bar.stop();
      }
      if (json) printJson({ subspace: subspace.id, output: out, adapters: results });
      else {
        process.stdout.write(`projected ${rows.length} of ${adapters.length} adapter${adapters.length === 1 ? '' : 's'} on subspace ${subspace.id.slice(0, 12)} -> ${out}\n`);
        if (rows.length > 0) process.stdout.write(columnsTable(['adapter', 'modules', 'rel. error', 'mean module error', 'file'], rows));
      }
      if (failures > 0) throw new ReportedFailure(`${failures} of ${adapters.length} adapters failed`);
    });
  return jsonErrors(command);
}
