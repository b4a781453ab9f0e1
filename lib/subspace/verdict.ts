/**
 * The verdict and advice of analyzeAdapters, from its summary figures.
 */
import type { PerSide, SubspaceSettings } from './types.js';

/** Held-out error at or below which the adapters are said to share a subspace. */
export const SHARED_HELD_OUT_ERROR = 0.35;
/** Held-out error at or below which they partly share one (above: they do not). */
export const PARTLY_SHARED_HELD_OUT_ERROR = 0.7;

const f3 = (x: number) => (Number.isFinite(x) ? x.toFixed(3) : String(x));

function describeK(settings: SubspaceSettings): string {
  if (settings.components !== null) {
    const { A, B } = settings.components;
    return A === B ? `K=${A}` : `K_A=${A}, K_B=${B}`;
  }
  return `K chosen for ${settings.variance} explained variance`;
}

/** The verdict and the advice, from the summary figures. */
export function verdictOf(figures: {
  settings: SubspaceSettings;
  adapters: number;
  inSampleError: number;
  heldOutError: number;
  overlap: PerSide<number>;
  randomOverlap: PerSide<number>;
}): { shared: 'yes' | 'partly' | 'no'; verdict: string; advice: string } {
  const { inSampleError: s, heldOutError: h } = figures;
  const o = (figures.overlap.A + figures.overlap.B) / 2;
  const ro = (figures.randomOverlap.A + figures.randomOverlap.B) / 2;
  const k = describeK(figures.settings);
  const times = ro > 0 ? o / ro : Infinity;
  const overlapText =
    `their factors' directions overlap the others' basis by ${f3(o)} (A ${f3(figures.overlap.A)}, B ${f3(figures.overlap.B)}; 1 = inside it), ` +
    `against ${f3(ro)} expected for random subspaces of the same dimensions` +
    (Number.isFinite(times) ? ` (${times.toFixed(1)} times that)` : '');
  const basis = figures.settings.components !== null ? `a ${k} basis` : `a basis with ${k} per module`;
  const errorText =
    `an adapter left out is reconstructed from ${basis} built from the other ${figures.adapters - 1} with a mean relative dW error of ${f3(h)} ` +
    `(in-sample, with itself in the basis: ${f3(s)})`;
  if (h <= SHARED_HELD_OUT_ERROR) {
    const weak = times < 2 ? ' Few of their directions are shared, but those that are carry most of the energy.' : '';
    return {
      shared: 'yes',
      verdict: `These adapters share a subspace: ${errorText}; ${overlapText}.${weak}`,
      advice:
        'Store them as coefficients on one basis (eigenlorax build; see the savings it prints) and train new tasks of the same kind ' +
        'with coefficients only; the explained-variance curve shows how far K can go down before the error rises.',
    };
  }
  if (h <= PARTLY_SHARED_HELD_OUT_ERROR) {
    return {
      shared: 'partly',
      verdict: `These adapters partly share a subspace: ${errorText}; ${overlapText}.`,
      advice:
        'A basis from these adapters captures part of a new one: raise K (the curve shows what more components buy) or add ' +
        'augmentation directions (--augment) before storing adapters as coefficients, and check the held-out error again at the new K; ' +
        'for training new tasks with coefficients the basis is a reasonable start.',
    };
  }
  const memorised =
    s <= SHARED_HELD_OUT_ERROR
      ? ` A basis built from all of them stores these adapters well (in-sample ${f3(s)}) only because its components cover much of their total rank; it does not generalise to an adapter it was not built from.`
      : '';
  const spans =
    times >= 5
      ? ' Their spans overlap far more than random ones would, yet that does not carry over to dW: overlapping spans (for example A factors that kept a ' +
        'common random initialisation, which LoRA training moves little) do not help when the directions that carry each dW differ.'
      : '';
  return {
    shared: 'no',
    verdict: `These adapters do not share a subspace: ${errorText}${h > 1.05 ? ', above 1 (the reconstruction is further from dW than zero is)' : h >= 0.85 ? ', close to 1 (little of it is recovered)' : ''}; ${overlapText}.${spans}${memorised}`,
    advice:
      'Independently trained adapters: the subspace pays off for training new tasks with coefficients ' +
      '((K_A + K_B) r trainable parameters per module instead of r (d_in + d_out)), not for compressing these adapters; ' +
      'keep them as LoRA, or build from many more adapters of a common origin (same base, same initialisation, related tasks).',
  };
}

