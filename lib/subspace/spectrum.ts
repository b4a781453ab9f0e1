/** Explained variance against K, from a subspace's singular values and energies. */
import type { PerSide, SubspaceModule } from './types.js';

/**
 * Cumulative explained variance of one module, per side: entry k - 1 is the fraction of the
 * stacked side's energy that the first k principal components explain (k = 1 .. the number
 * of principal components kept; augmentation directions are not counted). All 1 when the
 * energy is 0. Build with a large `components` (or `variance: 1`) to see the whole curve.
 */
export function explainedVarianceCurve(module: Pick<SubspaceModule, 'singularA' | 'singularB' | 'energyA' | 'energyB'>): PerSide<number[]> {
  const curve = (singular: Float32Array, energy: number) => {
    const out: number[] = [];
    let sum = 0;
    for (const s of singular) {
      sum += s * s;
      out.push(energy > 0 ? Math.min(1, sum / energy) : 1);
    }
    return out;
  };
  return { A: curve(module.singularA, module.energyA), B: curve(module.singularB, module.energyB) };
}
