/**
 * The options of a subspace build, and their checks: resolveBuildOptions turns what a
 * caller passed into a ResolvedBuild (settings, filter, limits) or throws
 * ERR_INVALID_ARGUMENT naming the option. build.ts runs the build from it.
 */
import type { OpenAdapterOptions } from '../adapters/types.js';
import { integer, invalid, knownKeys, object, oneOf } from '../validate.js';
import { parseSize } from './budget.js';
import { DEFAULT_MAX_OPEN_FILES } from './inputs.js';
import { resolveShard, type ShardSpec } from './shard-plan.js';
import type { PerSide, Stacking, SubspaceSettings, Weighting } from './types.js';

/** Components per side when neither `components` nor `variance` is given. */
export const DEFAULT_COMPONENTS = 16;
/** The cap on K per side in variance mode when `maxComponents` is not given. */
export const DEFAULT_MAX_COMPONENTS = 64;

export interface BuildProgress {
  /** The module just finished. */
  module: string;
  /** Modules finished so far (this one included). */
  done: number;
  total: number;
}

export interface BuildSubspaceOptions {
  /** 'canonical' (default): balanced SVD factors of each dW, scale inside; 'raw': the published factors. */
  stacking?: Stacking;
  /**
   * Canonical stacking only (refused with raw): 'equal' (default) gives every adapter the
   * same weight (factors times `||dW||^-1/2` while the basis is built); 'scale' keeps them
   * as they are. Loadings and errors are always in each adapter's own scale.
   */
  weighting?: Weighting;
  /** Subtract the row mean of each stacked side; the means are stored and added back on reconstruction (default false). */
  center?: boolean;
  /** K per side, fixed (default 16 when `variance` is not given); a number for both sides or `{ A, B }`. */
  components?: number | PerSide<number>;
  /**
   * Choose K per module and side: the smallest K whose explained variance (sum of the first K
   * squared singular values over the stacked side's energy) reaches this fraction, in (0, 1].
   * Capped by `maxComponents` (default 64) and by the stack's size; where the cap is reached
   * first, the report's `belowThreshold` says so.
   */
  variance?: number;
  /** Variance mode only: the most components per side (a number or `{ A, B }`). */
  maxComponents?: number | PerSide<number>;
  /** P random orthonormal directions per side (seeded), orthogonal to the components, appended after them (default 0). */
  augment?: number | PerSide<number>;
  /** rsvd oversampling (default 10). */
  oversample?: number;
  /** rsvd power iterations (default 2). */
  powerIters?: number;
  /** Seed (default 0, at most 2^52); module m uses `moduleSeed(seed, m)`. */
  seed?: number;
  /** Only these modules (names, each must exist in some adapter) or those the predicate accepts. */
  modules?: readonly string[] | ((name: string) => boolean);
  /** Unique names for the adapters (default: folder or file names, `adapter-<i>` for adapters in memory). */
  names?: readonly string[];
  /** Modules in flight at once: one computes while the others' factors are read (default 2). */
  concurrency?: number;
  /** Hash every source file with sha256 for the record (default true). */
  hashSources?: boolean;
  /** Options for the paths that are opened (format, allowNonFinite). */
  open?: OpenAdapterOptions;
  /** Paths kept open for the whole build (default 256); the others are opened for each read and closed. */
  maxOpenFiles?: number;
  /** Called after each module. */
  onProgress?: (progress: BuildProgress) => void;
  /**
   * Bytes (a number, or a size such as '512MB', '4GB') a module may take in memory
   * (default: half of the memory available when the build starts). A module whose stacks
   * would take more is built out of core: its adapters are read in chunks once per pass
   * (about powerIters + 3 reads of each), with the same results within float32 rounding.
   */
  memoryBudget?: number | string;
  /**
   * Build only shard `index` of `count` (0-based; or the string 'index/count'): modules
   * are split by shard-plan.ts (balanced by stack size, the same split in every shard),
   * with the same per-module seeds as the whole build. gatherShards joins the shards.
   */
  shard?: ShardSpec | string;
}

/** @internal The options after checking. */
export interface ResolvedBuild {
  settings: SubspaceSettings;
  filter: ((name: string) => boolean) | null;
  names: readonly string[] | null;
  concurrency: number;
  hashSources: boolean;
  open: OpenAdapterOptions;
  maxOpenFiles: number;
  onProgress: ((progress: BuildProgress) => void) | null;
  /** null: the default, computed when the build starts. */
  memoryBudget: number | null;
  shard: ShardSpec | null;
}

const MAX_SEED = 2 ** 52;

function perSide(value: unknown, name: string, min: number): PerSide<number> {
  if (typeof value === 'number') {
    const v = integer(value, name, min);
    return { A: v, B: v };
  }
  const o = object(value, name);
  knownKeys(o, name, ['A', 'B']);
  return { A: integer(o.A, `${name}.A`, min), B: integer(o.B, `${name}.B`, min) };
}

/** @internal Checks build options (throws ERR_INVALID_ARGUMENT naming the option). */
export function resolveBuildOptions(options: unknown): ResolvedBuild {
  const o = object(options, 'options');
  knownKeys(o, 'options', [
    'stacking',
    'weighting',
    'center',
    'components',
    'variance',
    'maxComponents',
    'augment',
    'oversample',
    'powerIters',
    'seed',
    'modules',
    'names',
    'concurrency',
    'hashSources',
    'open',
    'maxOpenFiles',
    'onProgress',
    'memoryBudget',
    'shard',
  ]);
  const stacking = oneOf(o.stacking ?? 'canonical', 'options.stacking', ['canonical', 'raw'] as const);
  let weighting: Weighting | null = null;
  if (stacking === 'raw') {
    if (o.weighting !== undefined) {
      throw invalid("no weighting with stacking 'raw' (weighting applies to canonical factors only)", 'options.weighting', o.weighting);
    }
  } else {
    weighting = oneOf(o.weighting ?? 'equal', 'options.weighting', ['equal', 'scale'] as const);
  }
  for (const flag of ['center', 'hashSources'] as const) {
    if (o[flag] !== undefined && typeof o[flag] !== 'boolean') throw invalid('true or false', `options.${flag}`, o[flag]);
  }
  if (o.components !== undefined && o.variance !== undefined) {
    throw invalid('either components or variance, not both', 'options.variance', o.variance);
  }
  let components: PerSide<number> | null = null;
  let variance: number | null = null;
  let maxComponents: PerSide<number> | null = null;
  if (o.variance !== undefined) {
    const v = o.variance;
    if (typeof v !== 'number' || !(v > 0 && v <= 1)) throw invalid('a fraction in (0, 1]', 'options.variance', v);
    variance = v;
    maxComponents = perSide(o.maxComponents ?? DEFAULT_MAX_COMPONENTS, 'options.maxComponents', 1);
  } else {
    if (o.maxComponents !== undefined) throw invalid('maxComponents only with variance', 'options.maxComponents', o.maxComponents);
    components = perSide(o.components ?? DEFAULT_COMPONENTS, 'options.components', 1);
  }
  const augment = perSide(o.augment ?? 0, 'options.augment', 0);
  const oversample = integer(o.oversample ?? 10, 'options.oversample', 0);
  const powerIters = integer(o.powerIters ?? 2, 'options.powerIters', 0, 1000);
  const seed = integer(o.seed ?? 0, 'options.seed', 0, MAX_SEED);
  let filter: ((name: string) => boolean) | null = null;
  if (o.modules !== undefined) {
    if (typeof o.modules === 'function') filter = o.modules as (name: string) => boolean;
    else if (Array.isArray(o.modules) && o.modules.every((m) => typeof m === 'string')) {
      const wanted = new Set(o.modules as string[]);
      filter = (name) => wanted.has(name);
      (filter as { names?: string[] }).names = [...wanted];
    } else throw invalid('an array of module names or a function (name) => boolean', 'options.modules', o.modules);
  }
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw invalid('a function', 'options.onProgress', o.onProgress);
  const open = o.open === undefined ? {} : (object(o.open, 'options.open') as OpenAdapterOptions);
  return {
    settings: {
      stacking,
      weighting,
      center: o.center === true,
      components,
      variance,
      maxComponents,
      augment,
      oversample,
      powerIters,
      seed,
    },
    filter,
    names: (o.names as readonly string[] | undefined) ?? null,
    concurrency: integer(o.concurrency ?? 2, 'options.concurrency', 1, 64),
    hashSources: o.hashSources !== false,
    open,
    maxOpenFiles: integer(o.maxOpenFiles ?? DEFAULT_MAX_OPEN_FILES, 'options.maxOpenFiles', 1),
    onProgress: (o.onProgress as ((p: BuildProgress) => void) | undefined) ?? null,
    memoryBudget: o.memoryBudget === undefined ? null : parseSize(o.memoryBudget, 'options.memoryBudget'),
    shard: o.shard === undefined ? null : resolveShard(o.shard),
  };
}
