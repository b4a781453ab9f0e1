/** Flags and text shared by the subspace commands (build, project, export, analyze). */
import { Option, type Command } from 'commander';
import type { BuildSubspaceOptions } from '../subspace/build.js';
import type { AdapterCoefficients, Subspace } from '../subspace/types.js';
import { choice, integer, number, UsageError } from './options.js';

/** The flag values of {@link addBuildOptions}, parsed. */
export interface BuildFlags {
  components?: number;
  variance?: number;
  maxComponents?: number;
  augment?: number;
  stacking?: 'canonical' | 'raw';
  weighting?: 'equal' | 'scale';
  center?: boolean;
  seed?: number;
  maxOpenFiles?: number;
  json?: boolean;
  quiet?: boolean;
}

/** The flags of a subspace build (build and analyze). */
export function addBuildOptions(command: Command): Command {
  return command
    .addOption(new Option('-k, --components <K>', 'components per module and side').argParser(integer('--components', { min: 1 })))
    .addOption(
      new Option('--variance <f>', 'instead of K: the fewest components explaining this fraction of the variance').argParser(
        number('--variance', { noun: 'a fraction', above: 0, max: 1 }),
      ),
    )
    .addOption(new Option('--max-components <M>', 'with --variance: at most M components').argParser(integer('--max-components', { min: 1 })))
    .addOption(new Option('--augment <P>', 'P extra orthogonal components per side (EigenLoRAx augmentation)').argParser(integer('--augment', { min: 0 })))
    .addOption(new Option('--stacking <how>', 'canonical (default) or raw').argParser(choice('--stacking', ['canonical', 'raw'] as const)))
    .addOption(new Option('--weighting <how>', 'canonical stacking: equal (default) or scale').argParser(choice('--weighting', ['equal', 'scale'] as const)))
    .option('--center', 'subtract the mean adapter before the SVD')
    .addOption(new Option('--seed <N>', 'seed of the randomized SVD (default 0)').argParser(integer('--seed', { min: 0, max: 2 ** 52 })))
    .addOption(new Option('--max-open-files <F>', 'adapter files open at once').argParser(integer('--max-open-files', { min: 1 })))
    .option('--json', 'print the result as JSON')
    .option('-q, --quiet', 'no progress bar');
}

/** The build options from the flags, with the checks across flags. */
export function buildOptionsFrom(f: BuildFlags): Omit<BuildSubspaceOptions, 'onProgress'> {
  const options: Omit<BuildSubspaceOptions, 'onProgress'> = {};
  if (f.components !== undefined && f.variance !== undefined) throw new UsageError('give --components or --variance, not both');
  if (f.components !== undefined) options.components = f.components;
  if (f.variance !== undefined) options.variance = f.variance;
  if (f.maxComponents !== undefined) {
    if (options.variance === undefined) throw new UsageError('--max-components goes with --variance');
    options.maxComponents = f.maxComponents;
  }
  if (f.augment !== undefined) options.augment = f.augment;
  if (f.stacking !== undefined) options.stacking = f.stacking;
  if (f.weighting !== undefined) {
    if (options.stacking === 'raw') throw new UsageError('--weighting applies to --stacking canonical only');
    options.weighting = f.weighting;
  }
  if (f.center === true) options.center = true;
  if (f.seed !== undefined) options.seed = f.seed;
  if (f.maxOpenFiles !== undefined) options.maxOpenFiles = f.maxOpenFiles;
  return options;
}

/** -o as an absolute path, or a usage error naming the command. */
export function outputFlag(command: string, output: string | undefined): string {
  if (typeof output !== 'string' || output.length === 0) throw new UsageError(`${command} needs -o <dir>`);
  return output;
}

export function meanModuleError(c: AdapterCoefficients): number {
  const values = [...c.modules.values()].map((m) => m.relativeError);
  return values.length === 0 ? Number.NaN : values.reduce((a, b) => a + b, 0) / values.length;
}

export function stackingText(s: Subspace['settings']): string {
  return `${s.stacking === 'raw' ? 'raw' : `canonical + ${s.weighting}`}${s.center ? ', centred' : ''}, seed ${s.seed}`;
}
