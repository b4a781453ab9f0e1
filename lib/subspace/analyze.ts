/**
 * analyzeAdapters: do these adapters share a subspace, and what would a basis built from
 * them cost and lose?
 *
 * Three measurements, all with the options a subspace would be built with:
 *  - the explained-variance curve of every module and side against K (from a build with
 *    `curveComponents` components: the top singular values of the stacked side over its
 *    energy);
 *  - the reconstruction errors: in-sample (the basis built from all the adapters, each
 *    projected on it) and held-out (each adapter projected on the basis built from the
 *    others), both as DESIGN's mean over modules of the mean over adapters of
 *    `||dW - dW_hat||_F / ||dW||_F`;
 *  - the overlap: for each adapter, module and side, the principal angles between the
 *    span of the adapter's factor (the row space of `A_i`, i.e. the span of `A_i^T`, on
 *    the A side; the column space of `B_i` on the B side) and the K-dimensional basis built
 *    from the others (the same basis the held-out error uses). The overlap is the mean
 *    squared cosine of those angles, `||Q_i^T P||_F^2 / min(r_i, K)` with `Q_i` and `P`
 *    orthonormal: 1 when the smaller space lies inside the larger, 0 when they are
 *    orthogonal. For a uniformly random `r`-dimensional subspace of `R^d` its expected value
 *    is exactly `max(r, K) / d` (`E ||Q^T P||_F^2 = r K / d`): that is the random reference
 *    printed next to it. Unlike the errors it ignores the singular values: it asks whether
 *    the adapter's directions lie in the others' basis, whatever their weight.
 * Then a plain verdict (thresholds on the held-out error, with the overlap against its
 * random reference as the supporting figure) and advice.
 */
import { integer, invalid, object } from '../validate.js';
import { withScratch } from '../native/scratch.js';
import { defaultMemoryBudget, inMemoryModuleBytes } from './budget.js';
import { buildFromInputs, resolveBuildOptions, type BuildSubspaceOptions, type ResolvedBuild } from './build.js';
import { meanRelativeError, relativeErrorsByModule } from './coefficients.js';
import { heldOutByFolds } from './folds.js';
import { heldOutByBuilds, restrictTo } from './heldout.js';
import { openInputs, type AdapterInput, type InputAdapter } from './inputs.js';
import { explainedVarianceCurve } from './spectrum.js';
import type { AdapterCoefficients, PerSide, SubspaceBuildReport, SubspaceSettings } from './types.js';
import { PARTLY_SHARED_HELD_OUT_ERROR, SHARED_HELD_OUT_ERROR, verdictOf } from './verdict.js';

export { PARTLY_SHARED_HELD_OUT_ERROR, SHARED_HELD_OUT_ERROR, verdictOf };

/** Components of the explained-variance curve when `curveComponents` is not given. */
export const DEFAULT_CURVE_COMPONENTS = 64;

export interface AnalyzeProgress {
  /** 'spectrum': the curves (per module); 'in-sample': the build at K; 'held-out': the bases without each fold (per fold and module). */
  phase: 'spectrum' | 'in-sample' | 'held-out';
  /** What was just finished: a module, or `<adapter>: <module>` in the held-out phase. */
  item: string;
  /** Done so far in this phase (this one included), and the phase's total. */
  done: number;
  total: number;
}

export interface AnalyzeOptions extends Omit<BuildSubspaceOptions, 'onProgress' | 'hashSources'> {
  /** The longest explained-variance curve per side: min(this, d, sum of ranks) components (default 64). */
  curveComponents?: number;
  /** Called after each module of each build. */
  onProgress?: (progress: AnalyzeProgress) => void;
  /**
   * How adapters are held out: 'auto' (default: leave-one-out up to 20 adapters, 5-fold
   * cross-validation above), 'leave-one-out', or a number k of folds (2 <= k <= N; adapter i
   * is in fold i mod k). One build per fold, each adapter projected on the basis of the
   * folds it is not in.
   */
  heldOut?: 'auto' | 'leave-one-out' | number;
}

/** One side of one module. */
export interface SideAnalysis {
  /** d_in (A side) or d_out (B side). */
  dimension: number;
  /** Upper bound of the stacked side's rank: min(d, sum of the ranks). */
  stackRank: number;
  /** Columns of the basis at K (principal components plus augmentation). */
  components: number;
  /** Fraction of the stacked side's energy that the principal components at K explain. */
  explained: number;
  /** Entry k - 1: the fraction the top k components explain, k = 1 .. min(curveComponents, stackRank). */
  curve: number[];
  /** The singular values behind the curve, descending. */
  singularValues: number[];
  /** Squared Frobenius norm of the stacked side (after weighting and centring). */
  energy: number;
  /** Whether the curve runs to the stack rank (then its last value is the whole energy, 1). */
  curveComplete: boolean;
  /** The smallest k whose explained variance reaches 0.9, or null when the curve does not reach it. */
  componentsFor90: number | null;
  /** Mean over the adapters of the overlap with the basis built from the others (null: no held-out build had this module). */
  overlap: number | null;
  /** Its expected value for random subspaces of the same dimensions (mean over the same adapters of max(r, K) / d). */
  randomOverlap: number | null;
}

export interface ModuleAnalysis {
  name: string;
  dIn: number;
  dOut: number;
  /** The adapters that have the module, and their ranks. */
  adapters: string[];
  ranks: number[];
  A: SideAnalysis;
  B: SideAnalysis;
  /** Mean over the adapters of `||dW - dW_hat||_F / ||dW||_F`, in-sample. */
  inSampleError: number;
  /** The same, each adapter projected on the basis built without it (null when no other adapter has the module). */
  heldOutError: number | null;
}

export interface AdapterAnalysis {
  name: string;
  /** Mean over the adapter's modules of its relative dW error, in-sample. */
  inSampleError: number;
  /** The same held out (null when no other adapter shares a module with it). */
  heldOutError: number | null;
  /** The whole adapter's held-out relative error `sqrt(sum err^2 / sum norm^2)` (null as above). */
  heldOutAdapterError: number | null;
  /** Mean over its modules of the overlap with the others' basis, per side (null as above). */
  overlap: PerSide<number> | null;
  randomOverlap: PerSide<number> | null;
}

/** Mean, min and max over modules, point by point. */
export interface CurveBand {
  mean: number[];
  min: number[];
  max: number[];
}

export interface SubspaceAnalysis {
  /** The settings of the builds (K is `settings.components`, or chosen per module by `settings.variance`). */
  settings: SubspaceSettings;
  adapters: string[];
  modules: ModuleAnalysis[];
  perAdapter: AdapterAnalysis[];
  /** Mean over modules of the mean over adapters of `||dW - dW_hat||_F / ||dW||_F`, the basis built from all of them. */
  inSampleError: number;
  /** The same, each adapter projected on the basis built from the others. */
  heldOutError: number;
  /** Mean over modules of the per-module overlaps, per side, and of their random references. */
  overlap: PerSide<number>;
  randomOverlap: PerSide<number>;
  /** Mean, min and max over modules of the explained variance at K, per side. */
  explained: PerSide<{ mean: number; min: number; max: number }>;
  /** The explained-variance curves across modules, per side. */
  curve: PerSide<CurveBand>;
  /** 'yes': held-out error <= 0.35; 'partly': <= 0.7; 'no': above. */
  shared: 'yes' | 'partly' | 'no';
  /** One or two plain sentences, with the numbers. */
  verdict: string;
  /** What to do with these adapters. */
  advice: string;
  /** How each figure is computed. */
  method: { errors: string; overlap: string; curve: string };
  /** From the in-sample build: modules only some adapters have, K clamped, thresholds not reached. */
  notes: Pick<SubspaceBuildReport, 'partialModules' | 'clamped' | 'belowThreshold' | 'augmentClamped'>;
  /** spectrumMs: the build for the curves (0 when the curves come from the held-out stacks, inside heldOutMs). */
  timings: { totalMs: number; spectrumMs: number; inSampleMs: number; heldOutMs: number };
}

export const ANALYSIS_METHOD = {
  errors:
    'relative dW error ||dW - dW_hat||_F / ||dW||_F per adapter and module, averaged over the adapters of each module, then over modules; ' +
    'in-sample: the basis built from all the adapters; held-out: each adapter projected on the basis built from the others ' +
    '(leave-one-out up to 20 adapters, else 5-fold cross-validation: the basis built from the other folds; options.heldOut; ' +
    "above rsvd's exact threshold each fold's basis is a Nystrom approximation of the other folds' stack, within their span)",
  overlap:
    "mean squared cosine of the principal angles between the span of an adapter's factor (A side: span of A_i^T; B side: span of B_i) " +
    'and the K-dimensional basis built from the others, ||Q_i^T P||_F^2 / min(r_i, K); 1: inside it, 0: orthogonal; ' +
    'random reference: max(r_i, K) / d, its exact expectation for a uniformly random subspace of the same dimension',
  curve: 'explained variance against K: sum of the top K squared singular values of the stacked side over its squared Frobenius norm',
} as const;

function mean(values: readonly number[]): number {
  return values.length === 0 ? NaN : values.reduce((a, b) => a + b, 0) / values.length;
}

/** Above this many adapters, 'auto' holds out by k-fold cross-validation instead of leave-one-out. */
export const LEAVE_ONE_OUT_MAX_ADAPTERS = 20;
export const DEFAULT_FOLDS = 5;

/** The fold of every adapter (adapter i in fold i mod k); leave-one-out is k = N. */
export function foldsOf(n: number, option: unknown): number[] {
  let k: number;
  if (option === undefined || option === 'auto') k = n > LEAVE_ONE_OUT_MAX_ADAPTERS ? DEFAULT_FOLDS : n;
  else if (option === 'leave-one-out') k = n;
  else k = integer(option, 'options.heldOut', 2, Math.max(2, n));
  return Array.from({ length: n }, (_, i) => i % k);
}

/** Modules a build of `subset` will have. */
function plannedModules(subset: readonly InputAdapter[], filter: ResolvedBuild['filter']): number {
  const names = new Set<string>();
  for (const a of subset) for (const n of a.modules.keys()) if (filter === null || filter(n)) names.add(n);
  return names.size;
}

function band(curves: Array<{ curve: number[]; complete: boolean }>): CurveBand {
  const length = Math.max(0, ...curves.map((c) => c.curve.length));
  const out: CurveBand = { mean: [], min: [], max: [] };
  for (let k = 0; k < length; k++) {
    const values: number[] = [];
    for (const c of curves) {
      if (k < c.curve.length) values.push(c.curve[k]!);
      else if (c.complete && c.curve.length > 0) values.push(c.curve[c.curve.length - 1]!);
    }
    if (values.length === 0) break;
    out.mean.push(mean(values));
    out.min.push(Math.min(...values));
    out.max.push(Math.max(...values));
  }
  return out;
}

/**
 * Analyzes `adapters` (paths, opened or loaded adapters, at least two) with the options a
 * subspace would be built with (`components` or `variance`, `stacking`, `weighting`,
 * `center`, `augment`, `seed`, ...): explained-variance curves per module and side, the
 * in-sample and held-out errors (`inSampleError`, `heldOutError`: mean over modules of the
 * mean over adapters of `||dW - dW_hat||_F / ||dW||_F`), the overlap of each adapter's
 * factor spans with the basis built from the others against its random reference, and a
 * plain verdict with advice. See the top of this file for the definitions.
 *
 * Cost: one build (in-sample) and one more read and stack of each module, from which the
 * curve and every fold's basis come (folds.ts); with `center`, or a module over the memory
 * budget, a build for the curves and one per fold instead (heldout.ts). Paths are opened
 * once, factors read module by module. The result is plain JSON-serialisable data.
 */
export async function analyzeAdapters(adapters: readonly AdapterInput[], options: AnalyzeOptions = {}): Promise<SubspaceAnalysis> {
  const started = performance.now();
  const o = object(options, 'options');
  const { curveComponents: curveOption, onProgress, heldOut: heldOutOption, ...buildOptions } = o as AnalyzeOptions & Record<string, unknown>;
  if (onProgress !== undefined && typeof onProgress !== 'function') throw invalid('a function', 'options.onProgress', onProgress);
  const curveComponents = integer(curveOption ?? DEFAULT_CURVE_COMPONENTS, 'options.curveComponents', 1, 100_000);
  const resolved = resolveBuildOptions({ ...buildOptions, hashSources: false });
  // The curves: the same stacking, weighting and centring, no augmentation, at least as many components as K.
  const k = resolved.settings.components ?? resolved.settings.maxComponents!;
  const curveOptions: Record<string, unknown> = { ...buildOptions, hashSources: false };
  for (const key of ['variance', 'maxComponents', 'augment']) delete curveOptions[key];
  curveOptions.components = { A: Math.max(curveComponents, k.A), B: Math.max(curveComponents, k.B) };
  const curveResolved = resolveBuildOptions(curveOptions);
  if (!Array.isArray(adapters) || adapters.length < 2) throw invalid('an array of at least two adapters', 'adapters', adapters);

  const inputs = await openInputs(adapters, 'adapters', {
    ...(resolved.names ? { names: resolved.names } : {}),
    open: resolved.open,
    maxOpenFiles: resolved.maxOpenFiles,
  });
  try {
    return await withScratch(async () => {
      const all = inputs.adapters;
      const report = (phase: AnalyzeProgress['phase'], total: number, prefix = '') => {
        let done = 0;
        return (p: { module: string }) => onProgress?.({ phase, item: prefix + p.module, done: ++done, total });
      };

      // The in-sample build at K; then the curves and the held-out bases: from one stack per
      // module (folds.ts), or, when centring or a module is too large to stack in memory,
      // from a build per fold (heldout.ts).
      const moduleCount = plannedModules(all, resolved.filter);
      let t0 = performance.now();
      const inSample = await buildFromInputs(all, { ...resolved, onProgress: report('in-sample', moduleCount) }, false);
      const inSampleMs = performance.now() - t0;
      t0 = performance.now();
      const folds = foldsOf(all.length, heldOutOption);
      const foldCount = Math.max(...folds) + 1;
      const othersOf = (f: number) => all.filter((_, j) => folds[j] !== f);
      const heldOutTotal = Array.from({ length: foldCount }, (_, f) => plannedModules(othersOf(f), restrictTo(resolved.filter, othersOf(f)))).reduce((a, b) => a + b, 0);
      const counters = { spectrum: 0, 'held-out': 0 };
      const progress = (phase: 'spectrum' | 'held-out', item: string) =>
        onProgress?.({ phase, item, done: ++counters[phase], total: phase === 'spectrum' ? moduleCount : heldOutTotal });
      const budget = resolved.memoryBudget ?? defaultMemoryBudget();
      const stackable = [...inSample.modules.values()].every((m) => inMemoryModuleBytes(m.ranks.reduce((a, b) => a + b, 0), m.dIn, m.dOut) <= budget);
      const heldOutFigures =
        !resolved.settings.center && stackable
          ? await heldOutByFolds(all, folds, inSample, resolved, curveResolved.settings.components!, progress)
          : await heldOutByBuilds(all, folds, curveResolved, resolved, progress);
      const { spectrum, heldOut, overlaps, spectrumMs } = heldOutFigures;
      const heldOutMs = performance.now() - t0 - spectrumMs;

      // Assemble.
      const heldOutCoefficients = heldOut.filter((c): c is AdapterCoefficients => c !== null);
      const inSampleByModule = relativeErrorsByModule(inSample.coefficients);
      const heldOutByModule = relativeErrorsByModule(heldOutCoefficients);
      const modules: ModuleAnalysis[] = [];
      for (const [name, m] of inSample.modules) {
        const s = spectrum.get(name)!;
        const curves = explainedVarianceCurve(s);
        const ov = overlaps.get(name);
        const totalRank = m.ranks.reduce((a, b) => a + b, 0);
        const side = (which: 'A' | 'B'): SideAnalysis => {
          const dimension = which === 'A' ? m.dIn : m.dOut;
          const stackRank = Math.min(dimension, totalRank);
          const curve = curves[which];
          const singular = which === 'A' ? s.singularA : s.singularB;
          const at90 = curve.findIndex((v) => v >= 0.9 * (1 - 1e-9));
          const list = ov?.[which] ?? [];
          return {
            dimension,
            stackRank,
            components: which === 'A' ? m.kA : m.kB,
            explained: which === 'A' ? m.explainedA : m.explainedB,
            curve,
            singularValues: Array.from(singular),
            energy: which === 'A' ? s.energyA : s.energyB,
            curveComplete: curve.length >= stackRank,
            componentsFor90: at90 < 0 ? null : at90 + 1,
            overlap: list.length === 0 ? null : mean(list.map((x) => x.overlap)),
            randomOverlap: list.length === 0 ? null : mean(list.map((x) => x.random)),
          };
        };
        modules.push({
          name,
          dIn: m.dIn,
          dOut: m.dOut,
          adapters: [...m.adapters],
          ranks: [...m.ranks],
          A: side('A'),
          B: side('B'),
          inSampleError: inSampleByModule.get(name) ?? NaN,
          heldOutError: heldOutByModule.get(name) ?? null,
        });
      }

      const perAdapter: AdapterAnalysis[] = all.map((a, i) => {
        const own = inSample.coefficients[i]!;
        const held = heldOut[i] ?? null;
        const sideMean = (which: 'A' | 'B', key: 'overlap' | 'random') => {
          const values: number[] = [];
          for (const entry of overlaps.values()) for (const x of entry[which]) if (x.adapter === a.name) values.push(x[key]);
          return mean(values);
        };
        const hasOverlap = held !== null && held.modules.size > 0;
        return {
          name: a.name,
          inSampleError: mean([...own.modules.values()].map((m) => m.relativeError)),
          heldOutError: held === null || held.modules.size === 0 ? null : mean([...held.modules.values()].map((m) => m.relativeError)),
          heldOutAdapterError: held === null || held.modules.size === 0 ? null : held.relativeError,
          overlap: hasOverlap ? { A: sideMean('A', 'overlap'), B: sideMean('B', 'overlap') } : null,
          randomOverlap: hasOverlap ? { A: sideMean('A', 'random'), B: sideMean('B', 'random') } : null,
        };
      });

      const withOverlap = modules.filter((m) => m.A.overlap !== null);
      const sideSummary = (which: 'A' | 'B') => {
        const explained = modules.map((m) => m[which].explained);
        return {
          overlap: mean(withOverlap.map((m) => m[which].overlap!)),
          random: mean(withOverlap.map((m) => m[which].randomOverlap!)),
          explained: { mean: mean(explained), min: Math.min(...explained), max: Math.max(...explained) },
          curve: band(modules.map((m) => ({ curve: m[which].curve, complete: m[which].curveComplete }))),
        };
      };
      const A = sideSummary('A');
      const B = sideSummary('B');
      const inSampleError = meanRelativeError(inSample.coefficients);
      const heldOutError = meanRelativeError(heldOutCoefficients);
      const figures = {
        settings: inSample.settings,
        adapters: all.length,
        inSampleError,
        heldOutError,
        overlap: { A: A.overlap, B: B.overlap },
        randomOverlap: { A: A.random, B: B.random },
      };
      const { partialModules, clamped, belowThreshold, augmentClamped } = inSample.report!;
      return {
        settings: inSample.settings,
        adapters: all.map((a) => a.name),
        modules,
        perAdapter,
        inSampleError,
        heldOutError,
        overlap: figures.overlap,
        randomOverlap: figures.randomOverlap,
        explained: { A: A.explained, B: B.explained },
        curve: { A: A.curve, B: B.curve },
        ...(Number.isFinite(heldOutError)
          ? verdictOf(figures)
          : {
              shared: 'no' as const,
              verdict: 'No module is held by two adapters or more: there is nothing to share.',
              advice: 'Analyze adapters of the same base model and target modules.',
            }),
        method: { ...ANALYSIS_METHOD },
        notes: { partialModules, clamped, belowThreshold, augmentClamped },
        timings: { totalMs: performance.now() - started, spectrumMs, inSampleMs, heldOutMs },
      };
    });
  } finally {
    await inputs.close();
  }
}
