/**
 * buildSubspace: the principal components of many adapters, module by module (DESIGN §1).
 */
import { EigenLoraxError } from '../errors.js';
import { completeBasis } from '../linalg.js';
import { matrix, type Matrix } from '../matrix.js';
import * as ops from '../native/ops.js';
import { naturalCompare } from '../adapters/common.js';
import { version } from '../version.js';
import { invalid } from '../validate.js';
import { adapterCoefficients, meanRelativeError, moduleCoefficients, projectPairs } from './coefficients.js';
import { SUBSPACE_FORMAT_VERSION, subspaceId } from './identity.js';
import { resolveBuildOptions, type BuildSubspaceOptions, type ResolvedBuild } from './build-options.js';
export { DEFAULT_COMPONENTS, DEFAULT_MAX_COMPONENTS, resolveBuildOptions, type BuildProgress, type BuildSubspaceOptions, type ResolvedBuild } from './build-options.js';
import { BusyClock, besides, chooseK, explainedBy, leftColumns } from './build-parts.js';
import { defaultMemoryBudget, inMemoryModuleBytes, streamChunkAdapters } from './budget.js';
import { storedSavings } from './savings.js';
import { FactorArenas, pairFloats, readPairs, streamModuleComponents, streamProjections } from './stream.js';
import { assignShards } from './shard-plan.js';
import { withScratch } from '../native/scratch.js';
import { describeSources, hashShare, moduleSeed, openInputs, runPool, type AdapterInput, type InputAdapter, type ModuleInfo } from './inputs.js';
import {
  type ModuleCoefficients,
  type Subspace,
  type SubspaceBuildReport,
  type SubspaceModule,
  type SubspaceSettings,
} from './types.js';

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
    shard: shard === null ? null : { index: shard.index, count: shard.count, modules: allPlans.map((p) => [p.name, partition!.get(p.name)!] as [string, number]), hashed: null },
  };
  const hashStarted = performance.now();
  // A shard hashes its share of the files; the gather takes each file's sha256 from its shard.
  const sources = (async () => {
    const only = hash && shard !== null ? await hashShare(adapters, shard) : null;
    if (report.shard) report.shard.hashed = only;
    const s = await describeSources(adapters, hash, only);
    report.timings.hashMs = performance.now() - hashStarted;
    return s;
  })();
  sources.catch(() => undefined); // awaited below; a failure of the build itself comes first

  const built: BuiltModule[] = new Array(plans.length);
  const clocks = { read: new BusyClock(), native: new BusyClock() };
  let done = 0;
  const arenas = new FactorArenas();
  await runPool(plans, resolved.concurrency, async (plan, index) => {
    built[index] = await buildModule(plan, budget, settings, report, clocks, arenas);
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
  subspace.id = await subspaceId(subspace);

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
  arenas: FactorArenas,
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
  // The pairs live in an arena until the module's last native call (the projection) has ended.
  return arenas.with(streamed ? 0 : pairFloats(plan), async (arena) => {
    const pairs = streamed ? null : await clocks.read.time(() => readPairs(plan, 0, plan.holders.length, arena));
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
    // Components used as built (no variance threshold, no augmentation): the build call
    // projects the adapters too, from the factors it already canonicalised.
    const projectInBuild = pairs !== null && settings.variance === null && settings.augment.A === 0 && settings.augment.B === 0;
    const projected = projectInBuild
      ? { alphas: plan.holders.map((h) => matrix(k.A, h.info.rank)), betas: plan.holders.map((h) => matrix(k.B, h.info.rank)), norms: new Float64Array(pairs.length), errors: new Float64Array(pairs.length) }
      : null;
    const build = () => (pairs === null ? streamModuleComponents(plan, args, chunk, clocks) : ops.buildModuleSubspace({ ...args, adapters: pairs, project: projected }));
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
      if (projected !== null) return projected.alphas.map((alpha, i) => ({ alpha, beta: projected.betas[i]!, norm: projected.norms[i]!, error: projected.errors[i]! }));
      if (pairs === null) return streamProjections(plan, module, settings.stacking, chunk, clocks);
      const { alphas, betas, norms, errors } = await clock.time(() => projectPairs(module, settings.stacking, pairs));
      return pairs.map((_, i) => ({ alpha: alphas[i]!, beta: betas[i]!, norm: norms[i]!, error: errors[i]! }));
    };
    const projections = await project().catch((error: unknown) => {
      throw inModule(error, plan);
    });
    return { module, projections };
  });
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
    return await withScratch(() => buildFromInputs(inputs.adapters, resolved, resolved.hashSources));
  } finally {
    await inputs.close();
  }
}
