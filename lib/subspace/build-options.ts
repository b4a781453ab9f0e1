/**
 * The options of a subspace build, and their checks: resolveBuildOptions turns what a
 * caller passed into a ResolvedBuild (settings, filter, limits) or throws
 * ERR_INVALID_ARGUMENT naming the option. build.ts runs the build from it.
 */
import type { OpenAdapterOptions } from '../adapters/types.js';
import { argumentPlace, Count, FunctionOption, OneOf, Options, parse, Sized, Type, type SameOptionNames } from '../schema.js';
import { invalid } from '../validate.js';
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

/** K or P per side: one number for both sides, or `{ A, B }`. */
function PerSideCount(minimum: number) {
  const count = Count(minimum);
  return Type.Union([count, Options({ A: count, B: count })], { description: `an integer >= ${minimum} or { A, B } of such integers` });
}

/** The names, types and ranges of BuildSubspaceOptions; the rules between options are in resolveBuildOptions. */
export const BuildOptionsSchema = Options({
  stacking: Type.Optional(OneOf(['canonical', 'raw'] as const)),
  weighting: Type.Optional(OneOf(['equal', 'scale'] as const)),
  center: Type.Optional(Type.Boolean()),
  components: Type.Optional(PerSideCount(1)),
  variance: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, description: 'a fraction in (0, 1]' })),
  maxComponents: Type.Optional(PerSideCount(1)),
  augment: Type.Optional(PerSideCount(0)),
  oversample: Type.Optional(Count(0)),
  powerIters: Type.Optional(Count(0, 1000)),
  seed: Type.Optional(Count(0, MAX_SEED)),
  modules: Type.Optional(Type.Union([Type.Array(Type.String()), FunctionOption], { description: 'an array of module names or a function (name) => boolean' })),
  names: Type.Optional(Type.Array(Type.String())),
  concurrency: Type.Optional(Count(1, 64)),
  hashSources: Type.Optional(Type.Boolean()),
  // Checked where the adapters are opened (adapters/open.ts).
  open: Type.Optional(Type.Object({})),
  maxOpenFiles: Type.Optional(Count(1)),
  onProgress: Type.Optional(FunctionOption),
  memoryBudget: Type.Optional(Sized),
  // Checked by resolveShard (an object or 'index/count').
  shard: Type.Optional(Type.Unknown()),
});
const buildOptionNames: SameOptionNames<typeof BuildOptionsSchema, BuildSubspaceOptions> = true;
void buildOptionNames;

const bothSides = (v: number | PerSide<number>): PerSide<number> => (typeof v === 'number' ? { A: v, B: v } : v);

/** @internal Checks build options (throws ERR_INVALID_ARGUMENT naming the option). */
export function resolveBuildOptions(options: unknown): ResolvedBuild {
  const o = parse(BuildOptionsSchema, options, argumentPlace('options'));
  const stacking = o.stacking ?? 'canonical';
  let weighting: Weighting | null = null;
  if (stacking === 'raw') {
    if (o.weighting !== undefined) {
      throw invalid("no weighting with stacking 'raw' (weighting applies to canonical factors only)", 'options.weighting', o.weighting);
    }
  } else {
    weighting = o.weighting ?? 'equal';
  }
  if (o.components !== undefined && o.variance !== undefined) {
    throw invalid('either components or variance, not both', 'options.variance', o.variance);
  }
  let components: PerSide<number> | null = null;
  let variance: number | null = null;
  let maxComponents: PerSide<number> | null = null;
  if (o.variance !== undefined) {
    variance = o.variance;
    maxComponents = bothSides(o.maxComponents ?? DEFAULT_MAX_COMPONENTS);
  } else {
    if (o.maxComponents !== undefined) throw invalid('maxComponents only with variance', 'options.maxComponents', o.maxComponents);
    components = bothSides(o.components ?? DEFAULT_COMPONENTS);
  }
  let filter: ((name: string) => boolean) | null = null;
  if (typeof o.modules === 'function') filter = o.modules as (name: string) => boolean;
  else if (Array.isArray(o.modules)) {
    const wanted = new Set(o.modules as string[]);
    filter = (name) => wanted.has(name);
    (filter as { names?: string[] }).names = [...wanted];
  }
  return {
    settings: {
      stacking,
      weighting,
      center: o.center === true,
      components,
      variance,
      maxComponents,
      augment: bothSides(o.augment ?? 0),
      oversample: o.oversample ?? 10,
      powerIters: o.powerIters ?? 2,
      seed: o.seed ?? 0,
    },
    filter,
    names: o.names ?? null,
    concurrency: o.concurrency ?? 2,
    hashSources: o.hashSources !== false,
    open: (o.open ?? {}) as OpenAdapterOptions,
    maxOpenFiles: o.maxOpenFiles ?? DEFAULT_MAX_OPEN_FILES,
    onProgress: (o.onProgress as ((p: BuildProgress) => void) | undefined) ?? null,
    memoryBudget: o.memoryBudget === undefined ? null : parseSize(o.memoryBudget, 'options.memoryBudget'),
    shard: o.shard === undefined ? null : resolveShard(o.shard),
  };
}
