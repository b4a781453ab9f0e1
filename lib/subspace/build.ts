/**
 * buildSubspace: the principal components of many adapters, module by module (DESIGN §1).
 */
import { EigenLoraxError } from '../errors.js';
import { completeBasis } from '../linalg.js';
import { matrix, type Matrix } from '../matrix.js';
import * as ops from '../native/ops.js';
import type { NativeFactorPair } from '../native/ops.js';
import { naturalCompare } from '../adapters/common.js';
import type { OpenAdapterOptions } from '../adapters/types.js';
import { version } from '../version.js';
import { integer, invalid, knownKeys, object, oneOf } from '../validate.js';
import { adapterCoefficients, meanRelativeError, moduleCoefficients, projectPairs } from './coefficients.js';
import { SUBSPACE_FORMAT_VERSION, subspaceId } from './identity.js';
import { BusyClock, besides, chooseK, explainedBy, leftColumns } from './build-parts.js';
import { defaultMemoryBudget, inMemoryModuleBytes, parseSize, streamChunkAdapters } from './budget.js';
import { storedSavings } from './savings.js';
import { readPairs, streamModuleComponents, streamProjections } from './stream.js';
import { assignShards, resolveShard, type ShardSpec } from './shard-plan.js';
import { DEFAULT_MAX_OPEN_FILES, describeSources, moduleSeed, openInputs, runPool, type AdapterInput, type InputAdapter, type ModuleInfo } from './inputs.js';
import {
  type AdapterCoefficients,
  type ModuleCoefficients,
  type PerSide,
  type Stacking,
  type Subspace,
  type SubspaceBuildReport,
  type SubspaceModule,
  type SubspaceSettings,
  type SubspaceSource,
  type Weighting,
} from './types.js';

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

/** A module to build: its name, shape, and which adapters have it. */
interface ModulePlan {
  name: string;
  info: ModuleInfo;
  holders: Array<{ adapter: InputAdapter; info: ModuleInfo }>;
}

function shapeOf(info: ModuleInfo): string {
  const kernel = info.convKernel ? ` kernel ${info.convKernel.join('x')}` : '';
  return `${info.inFeatures} -> ${info.outFeatures} ${info.layout}${kernel}${info.fanInFanOut ? ' fan_in_fan_out' : ''}`;
}

/**
 * The modules to build: the union over `adapters`, filtered, in natural name order, each
 * checked to have one shape (d_in, d_out, layout, conv kernel, fan_in_fan_out) across the
 * adapters that have it.
 */
function planModules(adapters: readonly InputAdapter[], filter: ResolvedBuild['filter']): ModulePlan[] {
  const byName = new Map<string, ModulePlan>();
  for (const adapter of adapters) {
    for (const [name, info] of adapter.modules) {
      let plan = byName.get(name);
      if (plan === undefined) byName.set(name, (plan = { name, info, holders: [] }));
      plan.holders.push({ adapter, info });
    }
  }
  const wantedNames = (filter as { names?: string[] } | null)?.names;
  if (wantedNames) {
    const unknown = wantedNames.filter((n) => !byName.has(n));
    if (unknown.length > 0) {
      throw invalid(
        `names of modules the adapters have (e.g. ${[...byName.keys()].slice(0, 3).map((n) => JSON.stringify(n)).join(', ')})`,
        'options.modules',
        unknown[0],
      );
    }
  }
  const plans = [...byName.values()].filter((p) => filter === null || filter(p.name)).sort((a, b) => naturalCompare(a.name, b.name));
  if (plans.length === 0) throw invalid('at least one module to build (the filter left none)', 'options.modules', wantedNames ?? 'a function');
  for (const plan of plans) {
    const shapes = new Map<string, string[]>();
    for (const h of plan.holders) {
      const key = shapeOf(h.info);
      shapes.set(key, [...(shapes.get(key) ?? []), h.adapter.name]);
    }
    if (shapes.size > 1) {
      const detail = [...shapes].map(([shape, names]) => `${shape} in ${names.join(', ')}`).join('; ');
      throw new EigenLoraxError(`module ${JSON.stringify(plan.name)} has different shapes across the adapters: ${detail}`, 'ERR_SHAPE_MISMATCH');
    }
  }
  return plans;
}

interface BuiltModule {
  module: SubspaceModule;
  /** Per holder (same order as plan.holders): loadings, norm, error. */
  projections: Array<{ alpha: Matrix; beta: Matrix; norm: number; error: number }>;
}

/** @internal Builds a subspace from normalised inputs (not closed here). */
export async function buildFromInputs(
  adapters: readonly InputAdapter[],
  resolved: ResolvedBuild,
  hash: boolean,
): Promise<Subspace> {
  const started = performance.now();
  const { settings } = resolved;
  const allPlans = planModules(adapters, resolved.filter);
  const shard = resolved.shard;
  const partition = shard === null ? null : assignShards(allPlans.map((p) => ({ name: p.name, cost: stackCost(p) })), shard.count);
  const plans = partition === null ? allPlans : allPlans.filter((p) => partition.get(p.name) === shard!.index);
  const budget = resolved.memoryBudget ?? defaultMemoryBudget();
  const report: SubspaceBuildReport = {
    partialModules: [],
    clamped: [],
    belowThreshold: [],
    augmentClamped: [],
    inSampleError: NaN,
    timings: { totalMs: 0, readMs: 0, nativeMs: 0, hashMs: 0 },
    streamedModules: [],
    shard: shard === null ? null : { index: shard.index, count: shard.count, modules: allPlans.map((p) => [p.name, partition!.get(p.name)!] as [string, number]) },
  };
  const hashStarted = performance.now();
  const sources = describeSources(adapters, hash).then((s) => {
    report.timings.hashMs = performance.now() - hashStarted;
    return s;
  });
  sources.catch(() => undefined); // awaited below; a failure of the build itself comes first

  const built: BuiltModule[] = new Array(plans.length);
  const clocks = { read: new BusyClock(), native: new BusyClock() };
  let done = 0;
  await runPool(plans, resolved.concurrency, async (plan, index) => {
    built[index] = await buildModule(plan, budget, settings, report, clocks);
    done++;
    resolved.onProgress?.({ module: plan.name, done, total: plans.length });
  });

  // The subspace, then the coefficients of every adapter (which need its id).
  const modules = new Map<string, SubspaceModule>();
  for (const b of built) modules.set(b.module.name, b.module);
  for (const plan of plans) {
    if (plan.holders.length < adapters.length) {
      const have = new Set(plan.holders.map((h) => h.adapter));
      report.partialModules.push({
        module: plan.name,
        adapters: plan.holders.map((h) => h.adapter.name),
        missing: adapters.filter((a) => !have.has(a)).map((a) => a.name),
      });
    }
  }
  const sourceList = await sources;
  const baseModels = new Set(sourceList.map((s) => s.baseModel));
  const subspace: Subspace = {
    formatVersion: SUBSPACE_FORMAT_VERSION,
    id: '',
    libraryVersion: version,
    settings,
    sources: sourceList,
    baseModel: baseModels.size === 1 ? ([...baseModels][0] ?? null) : null,
    modules,
    coefficients: [],
    report,
  };
  subspace.id = subspaceId(subspace);

  const perAdapter = new Map(adapters.map((a) => [a, new Map<string, ModuleCoefficients>()]));
  plans.forEach((plan, p) => {
    plan.holders.forEach((h, i) => {
      const proj = built[p]!.projections[i]!;
      perAdapter.get(h.adapter)!.set(
        plan.name,
        moduleCoefficients(h.info, settings.stacking, proj.alpha, proj.beta, proj.norm, proj.error),
      );
    });
  });
  subspace.coefficients = adapters.map((a, i) =>
    adapterCoefficients(
      subspace.id,
      settings.stacking,
      sourceList[i]!,
      perAdapter.get(a)!,
      [...a.modules.keys()].filter((n) => !modules.has(n)),
    ),
  );
  report.inSampleError = meanRelativeError(subspace.coefficients);
  report.storage = storedSavings(
    plans.map((_, i) => built[i]!.module),
    plans.map((p) => p.holders.map((h) => h.info.dtypes)),
  );
  report.timings.readMs = clocks.read.total;
  report.timings.nativeMs = clocks.native.total;
  report.timings.totalMs = performance.now() - started;
  return subspace;
}

/** A native error of one module, with the module named and `adapters[i]` replaced by the adapter's name. */
function inModule(error: unknown, plan: ModulePlan): unknown {
  if (error instanceof EigenLoraxError) {
    const named = error.message.replace(/adapters\[(\d+)\]/g, (whole, i: string) => {
      const holder = plan.holders[Number(i)];
      return holder === undefined ? whole : `adapter ${JSON.stringify(holder.adapter.name)}`;
    });
    const before = error.message;
    error.message = `module ${JSON.stringify(plan.name)}: ${named}`;
    if (error.stack?.includes(before)) error.stack = error.stack.replace(before, error.message);
  }
  return error;
}

/** A module's stack size: sum of ranks x (d_in + d_out). */
function stackCost(plan: ModulePlan): number {
  return plan.holders.reduce((n, h) => n + h.info.rank, 0) * (plan.info.inFeatures + plan.info.outFeatures);
}

async function buildModule(
  plan: ModulePlan,
  budget: number,
  settings: SubspaceSettings,
  report: SubspaceBuildReport,
  clocks: { read: BusyClock; native: BusyClock },
): Promise<BuiltModule> {
  const { name, info } = plan;
  const clock = clocks.native;
  const dIn = info.inFeatures;
  const dOut = info.outFeatures;
  const totalRank = plan.holders.reduce((n, h) => n + h.info.rank, 0);
  const limit = { A: Math.min(dIn, totalRank), B: Math.min(dOut, totalRank) };
  const wanted = settings.components ?? settings.maxComponents!;
  const k = { A: Math.min(wanted.A, limit.A), B: Math.min(wanted.B, limit.B) };
  if (settings.components !== null) {
    for (const side of ['A', 'B'] as const) {
      if (k[side] < wanted[side]) report.clamped.push({ module: name, side, requested: wanted[side], used: k[side] });
    }
  }
  let componentsA = matrix(dIn, k.A);
  let componentsB = matrix(dOut, k.B);
  let singularA = new Float32Array(k.A);
  let singularB = new Float32Array(k.B);
  const meanA = settings.center ? new Float32Array(dIn) : null;
  const meanB = settings.center ? new Float32Array(dOut) : null;
  const seed = moduleSeed(settings.seed, name);
  // Out of core when the in-memory build would pass the budget (and the stacks are not
  // small enough for rsvd's exact path, which the stream does not repeat).
  const exact = (d: number, kk: number) => Math.min(totalRank, d) <= 2 * (kk + settings.oversample);
  const streamed = inMemoryModuleBytes(totalRank, dIn, dOut) > budget && !exact(dIn, k.A) && !exact(dOut, k.B);
  const chunk = streamChunkAdapters(budget, Math.max(...plan.holders.map((h) => h.info.rank)), dIn, dOut);
  const pairs = streamed ? null : await clocks.read.time(() => readPairs(plan, 0, plan.holders.length));
  if (streamed) report.streamedModules!.push(name);
  const args = {
    dIn,
    dOut,
    stacking: settings.stacking,
    weighting: settings.weighting ?? 'equal',
    center: settings.center,
    oversample: settings.oversample,
    powerIters: settings.powerIters,
    seed,
    componentsA,
    componentsB,
    singularA,
    singularB,
    meanA,
    meanB,
  };
  const build = () => (pairs === null ? streamModuleComponents(plan, args, chunk, clocks) : ops.buildModuleSubspace({ ...args, adapters: pairs }));
  const timed = pairs === null ? build() : clock.time(build);
  const { energyA, energyB } = await timed.catch((error: unknown) => {
    throw inModule(error, plan);
  });

  let explainedA: number;
  let explainedB: number;
  if (settings.variance !== null) {
    const a = chooseK(singularA, energyA, settings.variance);
    const b = chooseK(singularB, energyB, settings.variance);
    if (!a.reached) report.belowThreshold.push({ module: name, side: 'A', components: a.k, explained: a.explained });
    if (!b.reached) report.belowThreshold.push({ module: name, side: 'B', components: b.k, explained: b.explained });
    componentsA = leftColumns(componentsA, a.k);
    componentsB = leftColumns(componentsB, b.k);
    singularA = singularA.slice(0, a.k);
    singularB = singularB.slice(0, b.k);
    explainedA = a.explained;
    explainedB = b.explained;
  } else {
    explainedA = explainedBy(singularA, energyA);
    explainedB = explainedBy(singularB, energyB);
  }

  // Augmentation: P orthonormal random directions orthogonal to the components.
  const augment = { A: 0, B: 0 };
  for (const side of ['A', 'B'] as const) {
    const basis = side === 'A' ? componentsA : componentsB;
    const room = basis.rows - basis.cols;
    const p = Math.min(settings.augment[side], room);
    if (p < settings.augment[side]) report.augmentClamped.push({ module: name, side, requested: settings.augment[side], used: p });
    if (p === 0) continue;
    const extra = await clock.time(() => completeBasis(basis, p, { seed: seed + (side === 'A' ? 2 : 3) }));
    if (side === 'A') componentsA = besides(componentsA, extra);
    else componentsB = besides(componentsB, extra);
    augment[side] = p;
  }

  const module: SubspaceModule = {
    name,
    dIn,
    dOut,
    layout: info.layout,
    convKernel: info.convKernel ? [...info.convKernel] : null,
    fanInFanOut: info.fanInFanOut,
    kA: componentsA.cols,
    kB: componentsB.cols,
    augmentA: augment.A,
    augmentB: augment.B,
    componentsA,
    componentsB,
    singularA,
    singularB,
    energyA,
    energyB,
    explainedA,
    explainedB,
    meanA,
    meanB,
    adapters: plan.holders.map((h) => h.adapter.name),
    ranks: plan.holders.map((h) => h.info.rank),
  };
  const project = async () => {
    if (pairs === null) return streamProjections(plan, module, settings.stacking, chunk, clocks);
    const { alphas, betas, norms, errors } = await clock.time(() => projectPairs(module, settings.stacking, pairs));
    return pairs.map((_, i) => ({ alpha: alphas[i]!, beta: betas[i]!, norm: norms[i]!, error: errors[i]! }));
  };
  const projections = await project().catch((error: unknown) => {
    throw inModule(error, plan);
  });
  return { module, projections };
}

/**
 * Builds an EigenLoRAx subspace from `adapters` (paths, opened or loaded adapters; any mix
 * of formats, ranks and alphas) and projects every adapter on it (DESIGN §1).
 *
 * Module by module (the union over the adapters, in natural name order; a module that only
 * some adapters have is built from those, and `report.partialModules` lists it): the
 * factors of that module are read from each adapter that has it (paths and opened adapters
 * are read lazily, so memory is bounded by the modules in flight, not by the number of
 * modules or files), stacked as `stacking` / `weighting` say, optionally centred; the top
 * K_A and K_B singular vectors are taken by rsvd (exact SVD when small), K fixed or chosen
 * by `variance`; `augment` random orthonormal directions are appended; every adapter that
 * has the module is projected (loadings, `||dW||_F`, `||dW - dW_hat||_F`); then the
 * factors are dropped. `concurrency` modules are in flight at once (default 2: one is read
 * while another computes; the native kernels run one at a time).
 *
 * Before anything is computed, every module is checked to have one shape across the
 * adapters (ERR_SHAPE_MISMATCH naming the module and the adapters of each shape).
 *
 * Returns the {@link Subspace} with `coefficients` (one per adapter, in order) and `report`.
 * Paths opened here are closed before it returns; opened adapters passed in stay open.
 */
export async function buildSubspace(adapters: readonly AdapterInput[], options: BuildSubspaceOptions = {}): Promise<Subspace> {
  const resolved = resolveBuildOptions(options);
  if (!Array.isArray(adapters) || adapters.length === 0) throw invalid('a non-empty array of adapters', 'adapters', adapters);
  const inputs = await openInputs(adapters, 'adapters', {
    ...(resolved.names ? { names: resolved.names } : {}),
    open: resolved.open,
    maxOpenFiles: resolved.maxOpenFiles,
  });
  try {
    return await buildFromInputs(inputs.adapters, resolved, resolved.hashSources);
  } finally {
    await inputs.close();
  }
}
