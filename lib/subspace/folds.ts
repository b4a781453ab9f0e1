/**
 * analyze's held-out figures and curves with one native call per module (issue 11 item 3):
 * each module's factors are read once and stacked once (native/core/folds.cpp), and that
 * stack gives the whole stack's top singular values (the explained-variance curve) and the
 * basis of every fold (the top components of the stack without the fold's adapters).
 *
 * Small stacks, where rsvd takes its exact path, get exactly the basis a build of the other
 * folds gets. Larger ones get a Nystrom approximation of the fold's Gram `G_f`, with the
 * test matrix `Omega = [Q0, orth(G Q0)]` (Q0: the in-sample basis plus random directions,
 * max(K, curve / 2) + oversample columns; G the whole stack's Gram): `G_f ~ Y_f M_f^+ Y_f^T`,
 * `Y_f = G_f Omega`, `M_f = Omega^T G_f Omega`, each the whole stack's product less the
 * fold's own rows. Y_f lies in the span of the other folds' factors, so a held-out adapter's
 * own directions never enter its fold's basis; test/analyze-folds.test.ts bounds the
 * held-out errors against an exact float64 SVD per fold.
 * K per fold (variance), augmentation, loadings and errors are then the build's own steps
 * (chooseK, completeBasis with the module's seeds, projectModule).
 */
import { completeBasis } from '../linalg.js';
import { matrix, type Matrix } from '../matrix.js';
import * as ops from '../native/ops.js';
import type { NativeModulePair } from '../native/ops.js';
import { besides, chooseK, leftColumns } from './build-parts.js';
import type { ResolvedBuild } from './build-options.js';
import { adapterCoefficients, moduleCoefficients } from './coefficients.js';
import { describeSources, moduleSeed, runPool, type InputAdapter, type ModuleInfo } from './inputs.js';
import { FactorArenas, pairFloats, readPairs } from './stream.js';
import type { AdapterCoefficients, ModuleCoefficients, PerSide, Subspace, SubspaceSettings } from './types.js';

/** One adapter's overlap with its fold's basis on one side of one module, and the random reference. */
export interface OverlapEntry {
  adapter: string;
  overlap: number;
  random: number;
}

/** The whole stack's singular values and energy per side (for the curves). */
export interface ModuleSpectrum {
  singularA: Float32Array;
  singularB: Float32Array;
  energyA: number;
  energyB: number;
}

export interface HeldOutFigures {
  spectrum: Map<string, ModuleSpectrum>;
  /** Per adapter (input order): its modules projected on their folds' bases, or null when no module has other holders. */
  heldOut: Array<AdapterCoefficients | null>;
  overlaps: Map<string, PerSide<OverlapEntry[]>>;
  /** Time of a separate build for the curves (0 when the curves come from the folds' stacks). */
  spectrumMs: number;
}

export type HeldOutProgress = (phase: 'spectrum' | 'held-out', item: string) => void;

/** The build's K choice (variance) and augmentation, on one side of a fold basis. */
async function finishSide(components: Matrix, singular: Float32Array, energy: number, settings: SubspaceSettings, side: 'A' | 'B', seed: number): Promise<Matrix> {
  let basis = settings.variance === null ? components : leftColumns(components, chooseK(singular, energy, settings.variance).k);
  const p = Math.min(settings.augment[side], basis.rows - basis.cols);
  if (p > 0) basis = besides(basis, await completeBasis(basis, p, { seed: seed + (side === 'A' ? 2 : 3) }));
  return basis;
}

/** The expected overlap of a random r-dimensional span with a K-column basis in R^d: max(r, K) / d (1 when r or K >= d, as the overlap itself). */
export function randomOverlap(r: number, k: number, d: number): number {
  return r >= d || k >= d ? 1 : Math.max(r, k) / d;
}

/**
 * The held-out figures of `all` with fold `folds[i]` for adapter i, over the modules of the
 * in-sample build `inSample` (whose bases warm-start the folds'), and each module's curve
 * (`curveComponents` singular values at most). Needs no centring (the caller builds per fold
 * otherwise).
 */
export async function heldOutByFolds(
  all: readonly InputAdapter[],
  folds: readonly number[],
  inSample: Subspace,
  resolved: ResolvedBuild,
  curveComponents: PerSide<number>,
  progress: HeldOutProgress,
): Promise<HeldOutFigures> {
  const { settings } = resolved;
  const foldCount = Math.max(...folds) + 1;
  const wanted = settings.components ?? settings.maxComponents!;
  const spectrum = new Map<string, ModuleSpectrum>();
  const overlaps = new Map<string, PerSide<OverlapEntry[]>>();
  const perAdapter = all.map(() => new Map<string, ModuleCoefficients>());
  const modules = [...inSample.modules.values()];
  const arenas = new FactorArenas();
  // Fold bases used as they come (no variance threshold, no augmentation): the foldBases
  // call projects the held-out adapters itself, from the factors it stacked.
  const basesAsBuilt = settings.variance === null && settings.augment.A === 0 && settings.augment.B === 0;
  await runPool(modules, resolved.concurrency, async (m) => {
    const holders = all.flatMap((adapter, i) => {
      const info = adapter.modules.get(m.name);
      return info === undefined ? [] : [{ adapter, info, i }];
    });
    await arenas.with(pairFloats({ name: m.name, holders }), async (arena) => {
      const pairs = await readPairs({ name: m.name, holders }, 0, holders.length, arena);
      const seed = moduleSeed(settings.seed, m.name);
      const result = await ops.foldBases({
        adapters: pairs,
        folds: Int32Array.from(holders, (h) => folds[h.i]!),
        foldCount,
        stacking: settings.stacking,
        weighting: settings.weighting ?? 'equal',
        oversample: settings.oversample,
        powerIters: settings.powerIters,
        seed,
        componentsA: wanted.A,
        componentsB: wanted.B,
        curveA: curveComponents.A,
        curveB: curveComponents.B,
        warmA: leftColumns(m.componentsA, m.kA - m.augmentA),
        warmB: leftColumns(m.componentsB, m.kB - m.augmentB),
        projectHeldOut: basesAsBuilt,
      });
      spectrum.set(m.name, { singularA: result.curveA.singular, singularB: result.curveB.singular, energyA: result.curveA.energy, energyB: result.curveB.energy });
      progress('spectrum', m.name);
      const entry: PerSide<OverlapEntry[]> = { A: [], B: [] };
      for (let f = 0; f < foldCount; f++) {
        const fold = result.folds[f];
        const left = holders.map((h, j) => ({ ...h, pair: pairs[j]!, held: result.heldOut?.[j] ?? null })).filter((h) => folds[h.i] === f);
        if (fold === null || fold === undefined) continue;
        if (basesAsBuilt) {
          for (const h of left) {
            const p = h.held!;
            perAdapter[h.i]!.set(m.name, moduleCoefficients(h.info, settings.stacking, p.alpha, p.beta, p.norm, p.error));
            entry.A.push({ adapter: h.adapter.name, overlap: p.overlapA, random: randomOverlap(h.info.rank, p.alpha.rows, m.dIn) });
            entry.B.push({ adapter: h.adapter.name, overlap: p.overlapB, random: randomOverlap(h.info.rank, p.beta.rows, m.dOut) });
          }
        } else if (left.length > 0) {
          await projectFold(m.name, left, fold, settings, seed, perAdapter, entry);
        }
        progress('held-out', `fold ${f + 1}/${foldCount}: ${m.name}`);
      }
      if (entry.A.length > 0) overlaps.set(m.name, entry);
    });
  });
  const sources = await describeSources(all, false);
  // The pool finishes modules in any order: every map in the modules' own order, so sums
  // over them (the mean errors) are the same to the last bit from run to run.
  const byModule = <T>(map: Map<string, T>, names: Iterable<string>) => new Map([...names].flatMap((n): Array<[string, T]> => (map.has(n) ? [[n, map.get(n)!]] : [])));
  const names = modules.map((m) => m.name);
  const heldOut = all.map((a, i) => {
    const own = byModule(perAdapter[i]!, a.modules.keys());
    if (own.size === 0) return null;
    return adapterCoefficients('', settings.stacking, sources[i]!, own, [...a.modules.keys()].filter((n) => !own.has(n)));
  });
  return { spectrum: byModule(spectrum, names), heldOut, overlaps: byModule(overlaps, names), spectrumMs: 0 };
}

/** One fold's held-out adapters of one module: the fold basis finished as a build finishes it, loadings, errors, overlaps. */
async function projectFold(
  name: string,
  left: Array<{ adapter: InputAdapter; info: ModuleInfo; i: number; pair: NativeModulePair }>,
  fold: { A: { components: Matrix; singular: Float32Array; energy: number }; B: { components: Matrix; singular: Float32Array; energy: number } },
  settings: SubspaceSettings,
  seed: number,
  perAdapter: Array<Map<string, ModuleCoefficients>>,
  entry: PerSide<OverlapEntry[]>,
): Promise<void> {
  const componentsA = await finishSide(fold.A.components, fold.A.singular, fold.A.energy, settings, 'A', seed);
  const componentsB = await finishSide(fold.B.components, fold.B.singular, fold.B.energy, settings, 'B', seed);
  const adapters = left.map((h) => h.pair);
  const alphas = left.map((h) => matrix(componentsA.cols, h.info.rank));
  const betas = left.map((h) => matrix(componentsB.cols, h.info.rank));
  const norms = new Float64Array(left.length);
  const errors = new Float64Array(left.length);
  await ops.projectModule({ adapters, stacking: settings.stacking, componentsA, componentsB, meanA: null, meanB: null, alphas, betas, norms, errors });
  const overlapA = new Float64Array(left.length);
  const overlapB = new Float64Array(left.length);
  await ops.factorOverlaps({ adapters, basisA: componentsA, basisB: componentsB, overlapA, overlapB });
  left.forEach((h, j) => {
    perAdapter[h.i]!.set(name, moduleCoefficients(h.info, settings.stacking, alphas[j]!, betas[j]!, norms[j]!, errors[j]!));
    entry.A.push({ adapter: h.adapter.name, overlap: overlapA[j]!, random: randomOverlap(h.info.rank, componentsA.cols, componentsA.rows) });
    entry.B.push({ adapter: h.adapter.name, overlap: overlapB[j]!, random: randomOverlap(h.info.rank, componentsB.cols, componentsB.rows) });
  });
}
