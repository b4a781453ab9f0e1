/**
 * Leave-one-out: how well a subspace built without an adapter reconstructs it.
 */
import { invalid } from '../validate.js';
import { buildFromInputs, resolveBuildOptions, type BuildSubspaceOptions } from './build.js';
import { meanRelativeError, relativeErrorsByModule } from './coefficients.js';
import { openInputs, type AdapterInput } from './inputs.js';
import { projectInput } from './project.js';
import type { AdapterCoefficients } from './types.js';

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
function restrictTo(filter: ((name: string) => boolean) | null, subset: ReadonlyArray<{ modules: ReadonlyMap<string, unknown> }>) {
  if (filter === null) return null;
  const names = (filter as { names?: string[] }).names;
  if (names === undefined) return filter;
  const kept = names.filter((n) => subset.some((a) => a.modules.has(n)));
  const restricted = (name: string) => filter(name);
  (restricted as { names?: string[] }).names = kept;
  return restricted;
}
