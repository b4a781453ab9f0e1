/**
 * Held-out reconstruction by building without the held-out adapters: leaveOneOut (public),
 * and analyze's path for centred builds and modules too large to stack in memory
 * (heldOutByBuilds: one build for the curves, one build per fold).
 */
import * as ops from '../native/ops.js';
import { invalid } from '../validate.js';
import { buildFromInputs, resolveBuildOptions, type BuildSubspaceOptions, type ResolvedBuild } from './build.js';
import { meanRelativeError, relativeErrorsByModule } from './coefficients.js';
import { randomOverlap, type HeldOutFigures, type HeldOutProgress, type OverlapEntry } from './folds.js';
import { openInputs, type AdapterInput, type InputAdapter } from './inputs.js';
import { projectInput } from './project.js';
import { readPairs } from './stream.js';
import type { AdapterCoefficients, PerSide } from './types.js';

export interface LeaveOneOutOptions extends Omit<BuildSubspaceOptions, 'onProgress' | 'hashSources'> {
  /** Called after each held-out adapter. */
  onProgress?: (progress: { adapter: string; done: number; total: number }) => void;
}

export interface LeaveOneOutResult {
  /**
   * `heldOutError`: mean over modules of the mean over adapters of
   * `||dW - dW_hat||_F / ||dW||_F`, each adapter projected on the subspace built from the
   * others (with the same options).
   */
  heldOutError: number;
  /** The same mean, per module. */
  perModule: Map<string, number>;
  /**
   * Per adapter, in order: its held-out coefficients (modules that no other adapter has
   * are in `skipped`: there is nothing to build them from), or null when no module could be
   * built without it.
   */
  adapters: Array<{ name: string; coefficients: AdapterCoefficients | null }>;
}

/**
 * For each adapter i: builds a subspace from the others (same options, sources not
 * hashed), projects adapter i on it. Paths are opened once for all N builds. Needs at least
 * two adapters.
 */
export async function leaveOneOut(adapters: readonly AdapterInput[], options: LeaveOneOutOptions = {}): Promise<LeaveOneOutResult> {
  if (!Array.isArray(adapters) || adapters.length < 2) throw invalid('an array of at least two adapters', 'adapters', adapters);
  const { onProgress, ...rest } = options as LeaveOneOutOptions;
  if (onProgress !== undefined && typeof onProgress !== 'function') throw invalid('a function', 'options.onProgress', onProgress);
  const resolved = resolveBuildOptions({ ...rest, hashSources: false });
  const inputs = await openInputs(adapters, 'adapters', {
    ...(resolved.names ? { names: resolved.names } : {}),
    open: resolved.open,
    maxOpenFiles: resolved.maxOpenFiles,
  });
  try {
    const results: LeaveOneOutResult['adapters'] = [];
    for (let i = 0; i < inputs.adapters.length; i++) {
      const heldOut = inputs.adapters[i]!;
      const others = inputs.adapters.filter((_, j) => j !== i);
      const shared = [...heldOut.modules.keys()].some((name) => others.some((o) => o.modules.has(name) && (resolved.filter === null || resolved.filter(name))));
      let coefficients: AdapterCoefficients | null = null;
      if (shared) {
        const subspace = await buildFromInputs(others, { ...resolved, filter: restrictTo(resolved.filter, others) }, false);
        coefficients = await projectInput(subspace, heldOut, { missing: 'skip', hashSources: false, concurrency: resolved.concurrency });
      }
      results.push({ name: heldOut.name, coefficients });
      onProgress?.({ adapter: heldOut.name, done: i + 1, total: inputs.adapters.length });
    }
    const all = results.flatMap((r) => (r.coefficients === null ? [] : [r.coefficients]));
    return { heldOutError: meanRelativeError(all), perModule: relativeErrorsByModule(all), adapters: results };
  } finally {
    await inputs.close();
  }
}

/**
 * The build filter for a subset: a name list keeps only the names the subset has (a module
 * named in the list but held only by the left-out adapter is not an error here).
 */
export function restrictTo(filter: ((name: string) => boolean) | null, subset: ReadonlyArray<{ modules: ReadonlyMap<string, unknown> }>) {
  if (filter === null) return null;
  const names = (filter as { names?: string[] }).names;
  if (names === undefined) return filter;
  const kept = names.filter((n) => subset.some((a) => a.modules.has(n)));
  const restricted = (name: string) => filter(name);
  (restricted as { names?: string[] }).names = kept;
  return restricted;
}

/**
 * analyze's held-out figures by builds: the curves from a build of all the adapters with
 * `curve`'s options, then for each fold a build of the other folds (`resolved`'s options),
 * each adapter of the fold projected on it, and the overlaps of its factors with it.
 */
export async function heldOutByBuilds(
  all: readonly InputAdapter[],
  folds: readonly number[],
  curve: ResolvedBuild,
  resolved: ResolvedBuild,
  progress: HeldOutProgress,
): Promise<HeldOutFigures> {
  const t0 = performance.now();
  const whole = await buildFromInputs(all, { ...curve, onProgress: (p) => progress('spectrum', p.module) }, false);
  const spectrum = new Map([...whole.modules].map(([name, m]) => [name, { singularA: m.singularA, singularB: m.singularB, energyA: m.energyA, energyB: m.energyB }]));
  const spectrumMs = performance.now() - t0;
  const foldCount = Math.max(...folds) + 1;
  const heldOut: Array<AdapterCoefficients | null> = all.map(() => null);
  const overlaps = new Map<string, PerSide<OverlapEntry[]>>();
  const wanted = (name: string) => resolved.filter === null || resolved.filter(name);
  for (let f = 0; f < foldCount; f++) {
    const others = all.filter((_, j) => folds[j] !== f);
    const shares = (left: InputAdapter) => [...left.modules.keys()].some((name) => wanted(name) && others.some((a) => a.modules.has(name)));
    const lefts = all.map((a, i) => ({ a, i })).filter(({ a, i }) => folds[i] === f && shares(a));
    if (lefts.length === 0) continue;
    const basis = await buildFromInputs(
      others,
      { ...resolved, filter: restrictTo(resolved.filter, others), onProgress: (p) => progress('held-out', `fold ${f + 1}/${foldCount}: ${p.module}`) },
      false,
    );
    for (const { a, i } of lefts) heldOut[i] = await projectInput(basis, a, { missing: 'skip', hashSources: false, concurrency: resolved.concurrency });
    for (const [name, m] of basis.modules) {
      const holders = lefts.flatMap(({ a }) => {
        const info = a.modules.get(name);
        return info === undefined ? [] : [{ adapter: a, info }];
      });
      if (holders.length === 0) continue;
      const adapters = await readPairs({ name, holders }, 0, holders.length);
      const overlapA = new Float64Array(holders.length);
      const overlapB = new Float64Array(holders.length);
      await ops.factorOverlaps({ adapters, basisA: m.componentsA, basisB: m.componentsB, overlapA, overlapB });
      let entry = overlaps.get(name);
      if (entry === undefined) overlaps.set(name, (entry = { A: [], B: [] }));
      holders.forEach((h, j) => {
        entry.A.push({ adapter: h.adapter.name, overlap: overlapA[j]!, random: randomOverlap(h.info.rank, m.kA, m.dIn) });
        entry.B.push({ adapter: h.adapter.name, overlap: overlapB[j]!, random: randomOverlap(h.info.rank, m.kB, m.dOut) });
      });
    }
  }
  return { spectrum, heldOut, overlaps, spectrumMs };
}
