/**
 * Projection of adapters on one module's components (native), and the bookkeeping of
 * coefficients: whole-adapter errors, mean relative errors over modules and adapters.
 */
import { EigenLoraxError } from '../errors.js';
import { matrix, type Matrix } from '../matrix.js';
import * as ops from '../native/ops.js';
import type { NativeModulePair } from '../native/ops.js';
import type { ModuleInfo } from './inputs.js';
import type { AdapterCoefficients, ModuleCoefficients, Stacking, SubspaceModule, SubspaceSource } from './types.js';

/** Loadings, norms and errors of `pairs` on `module` (one native call). */
export async function projectPairs(
  module: SubspaceModule,
  stacking: Stacking,
  pairs: NativeModulePair[],
): Promise<{ alphas: Matrix[]; betas: Matrix[]; norms: Float64Array; errors: Float64Array }> {
  const alphas = pairs.map((p) => matrix(module.kA, p.A.rows));
  const betas = pairs.map((p) => matrix(module.kB, p.A.rows));
  const norms = new Float64Array(pairs.length);
  const errors = new Float64Array(pairs.length);
  const { componentsA, componentsB, meanA, meanB } = module;
  await ops.projectModule({ adapters: pairs, stacking, componentsA, componentsB, meanA, meanB, alphas, betas, norms, errors });
  return { alphas, betas, norms, errors };
}

export function relative(error: number, norm: number): number {
  if (norm > 0) return error / norm;
  return error > 0 ? Infinity : 0;
}

/** One module's coefficients record. */
export function moduleCoefficients(
  info: ModuleInfo,
  stacking: Stacking,
  alpha: Matrix,
  beta: Matrix,
  norm: number,
  error: number,
): ModuleCoefficients {
  return {
    name: info.name,
    rank: info.rank,
    alpha,
    beta,
    scale: stacking === 'canonical' ? 1 : info.scale,
    adapterAlpha: info.alpha,
    rslora: info.rslora,
    adapterScale: info.scale,
    norm,
    error,
    relativeError: relative(error, norm),
  };
}

/** Assembles an adapter's coefficients, with the whole-adapter errors. */
export function adapterCoefficients(
  subspaceId: string,
  stacking: Stacking,
  adapter: SubspaceSource,
  modules: Map<string, ModuleCoefficients>,
  skipped: string[],
): AdapterCoefficients {
  let n2 = 0;
  let e2 = 0;
  for (const m of modules.values()) {
    n2 += m.norm * m.norm;
    e2 += m.error * m.error;
  }
  const norm = Math.sqrt(n2);
  const error = Math.sqrt(e2);
  return { subspaceId, stacking, adapter, modules, skipped, norm, error, relativeError: relative(error, norm) };
}

/**
 * The summary error of a set of coefficients (DESIGN's `inSampleError` / `heldOutError`):
 * for each module, the mean over the adapters that have it of `||dW - dW_hat||_F /
 * ||dW||_F`; then the mean over modules. NaN when there is no module at all.
 */
export function meanRelativeError(coefficients: readonly AdapterCoefficients[]): number {
  const perModule = relativeErrorsByModule(coefficients);
  if (perModule.size === 0) return NaN;
  let sum = 0;
  for (const v of perModule.values()) sum += v;
  return sum / perModule.size;
}

/** For each module, the mean over adapters of the relative error (module order: first seen). */
export function relativeErrorsByModule(coefficients: readonly AdapterCoefficients[]): Map<string, number> {
  const sums = new Map<string, { sum: number; count: number }>();
  for (const c of coefficients) {
    if (c === null || typeof c !== 'object' || !(c.modules instanceof Map)) {
      throw new EigenLoraxError('Expected adapter coefficients (from buildSubspace or projectAdapter)', 'ERR_INVALID_ARGUMENT');
    }
    for (const [name, m] of c.modules) {
      const s = sums.get(name) ?? { sum: 0, count: 0 };
      s.sum += m.relativeError;
      s.count++;
      sums.set(name, s);
    }
  }
  return new Map([...sums].map(([name, s]) => [name, s.sum / s.count]));
}
