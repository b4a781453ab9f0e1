/** Checks shared by combineCoefficients and combineAdapters: inputs, weights, module sets. */
import { EigenLoraxError } from '../errors.js';
import { checkMatrix } from '../matrix.js';
import type { AdapterCoefficients, Subspace } from '../subspace/types.js';
import { OneOf, Type } from '../schema.js';
import { finiteNumber } from '../validate.js';

export function isCoefficients(value: unknown): value is AdapterCoefficients {
  return (
    typeof value === 'object' &&
    value !== null &&
    (value as { modules?: unknown }).modules instanceof Map &&
    typeof (value as { subspaceId?: unknown }).subspaceId === 'string'
  );
}

/** The `weights` option of both combiners: finite numbers (one per adapter, counted by checkWeightCount). */
export const WeightsOption = Type.Array(Type.Number(), { description: 'an array of numbers, one per adapter' });
/** The `modules` option of both combiners. */
export const ModulePolicyOption = OneOf(['same', 'union'] as const);

export function checkWeightCount(weights: readonly number[], count: number): number[] {
  if (weights.length !== count) {
    throw new EigenLoraxError(`options.weights: expected ${count} weights (one per adapter), received ${weights.length}`, 'ERR_INVALID_ARGUMENT');
  }
  return [...weights];
}

export function checkCoefficientsOn(subspace: Subspace, c: AdapterCoefficients, i: number): void {
  const label = `adapters[${i}]${c.adapter?.name ? ` (${c.adapter.name})` : ''}`;
  if (c.subspaceId !== subspace.id) {
    throw new EigenLoraxError(
      `${label}: coefficients of subspace ${c.subspaceId.slice(0, 12)}, not of options.subspace ${subspace.id.slice(0, 12)}`,
      'ERR_SUBSPACE_MISMATCH',
    );
  }
  if (c.stacking !== subspace.settings.stacking) {
    throw new EigenLoraxError(`${label}: stacking ${String(c.stacking)} but the subspace's is ${subspace.settings.stacking}`, 'ERR_SUBSPACE_MISMATCH');
  }
  for (const [name, mc] of c.modules) {
    const m = subspace.modules.get(name);
    if (m === undefined) throw new EigenLoraxError(`${label}: module ${JSON.stringify(name)} is not in the subspace`, 'ERR_SUBSPACE_MISMATCH');
    const where = `${label}.modules[${JSON.stringify(name)}]`;
    try {
      const alpha = checkMatrix(mc.alpha, `${where}.alpha`, { rows: m.kA });
      checkMatrix(mc.beta, `${where}.beta`, { rows: m.kB, cols: alpha.cols });
    } catch (error) {
      if (error instanceof EigenLoraxError && error.code === 'ERR_SHAPE_MISMATCH') {
        throw new EigenLoraxError(`${error.message} (subspace module: K_A ${m.kA}, K_B ${m.kB})`, 'ERR_SUBSPACE_MISMATCH');
      }
      throw error;
    }
    finiteNumber(mc.scale, `${where}.scale`);
  }
}

/** Module names in first-seen order, each with the indices of the inputs that have it. */
export function moduleUnion(sets: ReadonlyArray<Iterable<string>>, policy: 'same' | 'union', labels: readonly string[]): Map<string, number[]> {
  const union = new Map<string, number[]>();
  sets.forEach((names, i) => {
    for (const name of names) {
      const list = union.get(name) ?? [];
      list.push(i);
      union.set(name, list);
    }
  });
  if (policy === 'same') {
    const partial = [...union].filter(([, has]) => has.length !== sets.length);
    if (partial.length > 0) {
      const lines = partial.slice(0, 5).map(([name, has]) => {
        const missing = labels.filter((_, i) => !has.includes(i));
        return `${JSON.stringify(name)} (missing in ${missing.join(', ')})`;
      });
      throw new EigenLoraxError(
        `The adapters do not have the same modules: ${lines.join('; ')}${partial.length > 5 ? `; and ${partial.length - 5} more` : ''}; ` +
          "pass modules: 'union' to combine each module over the adapters that have it",
        'ERR_INVALID_ARGUMENT',
      );
    }
  }
  return union;
}

// ---------------------------------------------------------------------------------------
