/** `eigenlorax gather <shard dirs...> -o <dir>`: the folders of a sharded build joined into one (gatherShards). */
import path from 'node:path';
import { Command } from 'commander';
import { examples, keyValues, plural, printJson } from './format.js';
import { UsageError } from './options.js';
import { jsonErrors } from './report.js';
import { outputFlag } from './subspace-options.js';

export function gatherCommand(): Command {
  const command = new Command('gather')
    .usage('<shard dirs...> -o <dir> [--json]')
    .summary('join the folders of a sharded build (build --shard i/n) into one, byte-identical to a one-machine build')
    .description(
      'Joins the folders written by `eigenlorax build --shard i/n` (n of them, in any order) into one subspace folder with gatherShards: ' +
        'the same subspace.json, subspace.safetensors and coefficients as a one-machine build of the same adapters and flags, byte for ' +
        'byte. Shards that do not make one build (another shard count, seed, settings, source file, library version, a shard missing ' +
        'or given twice) are refused naming the shard folder and the field (ERR_SHARD_MISMATCH, exit 1), before anything is written.',
    )
    .argument('[shards...]', 'the shard folders')
    .option('-o, --output <dir>', 'the gathered subspace folder')
    .option('--json', 'print the result as JSON')
    .addHelpText(
      'after',
      examples([
        ['eigenlorax gather shards/0 shards/1 shards/2 shards/3 -o subspace', 'four shards into one folder'],
        ['eigenlorax gather shards/* -o subspace --json', 'the same, with the files as JSON'],
      ]),
    )
    .action(async (shards: string[], flags: { output?: string; json?: boolean }) => {
      if (shards.length === 0) throw new UsageError('gather needs the shard folders');
      const out = path.resolve(outputFlag('gather', flags.output));
      const { gatherShards } = await import('../subspace/shard.js');
      const subspace = await gatherShards(shards, out);
      const result = { subspace: { id: subspace.id, folder: out }, shards: shards.length, modules: subspace.modules.size, adapters: subspace.sources.length };
      if (flags.json === true) {
        printJson(result);
        return;
      }
      process.stdout.write(
        `gathered ${plural(shards.length, 'shard')} -> ${out}\n` +
          keyValues([
            ['subspace', subspace.id.slice(0, 12)],
            ['modules', String(result.modules)],
            ['adapters', String(result.adapters)],
          ]),
      );
    });
  return jsonErrors(command);
}
