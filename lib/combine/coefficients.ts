/**
 * Coefficients on one subspace: the exact weighted sum as one rank-K update per module
 * (DESIGN §1).
 */
import { EigenLoraxError } from '../errors.js';
import { rsvd } from '../linalg.js';
import { matrix } from '../matrix.js';
import { checkSubspace } from '../subspace/project.js';
import type { AdapterCoefficients, ModuleCoefficients, Subspace, SubspaceModule } from '../subspace/types.js';
import { argumentPlace, Count, OneOf, Options, parse, Type, type SameOptionNames } from '../schema.js';
import { invalid } from '../validate.js';
import { checkCoefficientsOn, checkWeightCount, isCoefficients, ModulePolicyOption, moduleUnion, WeightsOption } from './checks.js';
import { numericalRank, SMALL_SVD_LIMIT, smallSvd } from './small.js';

export interface CombineCoefficientsOptions {
  weights: readonly number[];
  /** Rank per module: default the numerical rank of the combined core (singular values above 1e-9 of the largest); at most min(K_A, K_B). */
  rank?: number;
  /**
   * How the core's SVD `P S Q^T` becomes loadings: 'balanced' (default) `beta = P S^1/2`,
   * `alpha = Q S^1/2`; 'singular' `beta = P S`, `alpha = Q` (PEFT's svd convention).
   */
  factors?: 'balanced' | 'singular';
  modules?: 'same' | 'union';
  /** The name of the combined adapter in its record (default 'combined'). */
  name?: string;
}

const CombineCoefficientsOptionsSchema = Options({
  weights: WeightsOption,
  rank: Type.Optional(Count(1)),
  factors: Type.Optional(OneOf(['balanced', 'singular'] as const)),
  modules: Type.Optional(ModulePolicyOption),
  name: Type.Optional(Type.String()),
});
const combineCoefficientsOptionNames: SameOptionNames<typeof CombineCoefficientsOptionsSchema, CombineCoefficientsOptions> = true;
void combineCoefficientsOptionNames;

/** sum_i w_i s_i beta_i alpha_i^T (K_B x K_A) in f64. */
function combinedCore(m: SubspaceModule, parts: ReadonlyArray<{ mc: ModuleCoefficients; weight: number }>): Float64Array {
  const kA = m.kA;
  const kB = m.kB;
  const core = new Float64Array(kB * kA);
  for (const { mc, weight } of parts) {
    const c = weight * mc.scale;
    if (c === 0) continue;
    const r = mc.alpha.cols;
    const a = mc.alpha.data;
    const b = mc.beta.data;
    for (let i = 0; i < kB; i++) {
      for (let j = 0; j < kA; j++) {
        let sum = 0;
        for (let t = 0; t < r; t++) sum += b[i * r + t]! * a[j * r + t]!;
        core[i * kA + j]! += c * sum;
      }
    }
  }
  return core;
}

/** The thin SVD of a small f64 matrix: JS Jacobi when it is small, else the native exact SVD (f32). */
export async function coreSvd(core: Float64Array, rows: number, cols: number, keep: number): Promise<{ U: Float64Array; S: Float64Array; V: Float64Array; p: number }> {
  // JS Jacobi costs about min^2 max per sweep: only for genuinely small matrices.
  const small = Math.min(rows, cols);
  if (small <= SMALL_SVD_LIMIT && small * small * Math.max(rows, cols) <= SMALL_SVD_LIMIT ** 3) return smallSvd(core, rows, cols);
  const f = matrix(rows, cols, Float32Array.from(core));
  const k = Math.min(rows, cols, Math.max(1, keep));
  const { U, S, V } = await rsvd(f, { rank: k, method: 'exact' });
  return { U: Float64Array.from(U.data), S: Float64Array.from(S), V: Float64Array.from(V.data), p: k };
}

/**
 * The weighted sum of adapters' coefficients on one subspace, as coefficients on the same
 * subspace (DESIGN §1: a weighted merge on one basis is one rank-K update). Per module
 * `C = sum_i w_i s_i beta_i alpha_i^T` (`K_B x K_A`, f64), its SVD `P S Q^T`, and the
 * loadings of the top `rank` triplets, with scale 1 (`lora_alpha = r`). `norm` is `||C||_F`
 * (the norm of the exact combined update, the bases being orthonormal) and `error` the
 * truncation error `sqrt(sum of the dropped S^2)`.
 *
 * A centred subspace (stored means) is refused: there the sum is not a rank-K update on
 * the components (combineAdapters handles it through the reconstructions).
 */
export async function combineCoefficients(
  subspace: Subspace,
  coefficients: readonly AdapterCoefficients[],
  options: CombineCoefficientsOptions,
): Promise<AdapterCoefficients> {
  const s = checkSubspace(subspace);
  if (!Array.isArray(coefficients) || coefficients.length === 0) throw invalid('a non-empty array of coefficients', 'coefficients', coefficients);
  const o = parse(CombineCoefficientsOptionsSchema, options, argumentPlace('options'));
  const weights = checkWeightCount(o.weights, coefficients.length);
  const factors = o.factors ?? 'balanced';
  const policy = o.modules ?? 'same';
  const rank = o.rank ?? null;
  const name = o.name ?? 'combined';
  coefficients.forEach((c, i) => {
    if (!isCoefficients(c)) throw invalid('adapter coefficients (from buildSubspace, projectAdapter or loadCoefficients)', `coefficients[${i}]`, c);
    checkCoefficientsOn(s, c, i);
  });
  const union = moduleUnion(
    coefficients.map((c) => c.modules.keys()),
    policy,
    coefficients.map((c, i) => `coefficients[${i}]${c.adapter?.name ? ` (${c.adapter.name})` : ''}`),
  );
  const ordered = [...s.modules.keys()].filter((n) => union.has(n));
  for (const moduleName of ordered) {
    const m = s.modules.get(moduleName)!;
    if (m.meanA !== null || m.meanB !== null) {
      throw new EigenLoraxError(
        `module ${JSON.stringify(moduleName)}: the subspace is centred (it stores means), so a weighted sum of ` +
          "reconstructions is not a rank-K update on its components; use combineAdapters (method 'linear' or 'svd'), " +
          'which combines the reconstructions instead',
        'ERR_INVALID_ARGUMENT',
      );
    }
    if (rank !== null && rank > Math.min(m.kA, m.kB)) {
      throw new EigenLoraxError(
        `options.rank: ${rank} is more than module ${JSON.stringify(moduleName)} can hold (min(K_A, K_B) = ${Math.min(m.kA, m.kB)})`,
        'ERR_INVALID_ARGUMENT',
      );
    }
  }
  const modules = new Map<string, ModuleCoefficients>();
  let n2 = 0;
  let e2 = 0;
  for (const moduleName of ordered) {
    const m = s.modules.get(moduleName)!;
    const parts = union.get(moduleName)!.map((i) => ({ mc: coefficients[i]!.modules.get(moduleName)!, weight: weights[i]! }));
    const core = combinedCore(m, parts);
    let norm2 = 0;
    for (const v of core) norm2 += v * v;
    const svd = await coreSvd(core, m.kB, m.kA, rank ?? Math.min(m.kA, m.kB));
    const k = Math.max(1, Math.min(svd.p, rank ?? numericalRank(svd.S, 1e-9)));
    let kept2 = 0;
    for (let j = 0; j < k; j++) kept2 += svd.S[j]! ** 2;
    const error = Math.sqrt(Math.max(0, norm2 - kept2));
    const alpha = matrix(m.kA, k);
    const beta = matrix(m.kB, k);
    for (let j = 0; j < k; j++) {
      const sigma = svd.S[j]!;
      const left = factors === 'balanced' ? Math.sqrt(sigma) : sigma;
      const right = factors === 'balanced' ? Math.sqrt(sigma) : 1;
      for (let i = 0; i < m.kB; i++) beta.data[i * k + j] = svd.U[i * svd.p + j]! * left;
      for (let i = 0; i < m.kA; i++) alpha.data[i * k + j] = svd.V[i * svd.p + j]! * right;
    }
    const norm = Math.sqrt(norm2);
    modules.set(moduleName, {
      name: moduleName,
      rank: k,
      alpha,
      beta,
      scale: 1,
      adapterAlpha: k,
      rslora: false,
      adapterScale: 1,
      norm,
      error,
      relativeError: norm > 0 ? error / norm : 0,
    });
    n2 += norm2;
    e2 += error * error;
  }
  const first = coefficients[0]!;
  const baseModels = new Set(coefficients.map((c) => c.adapter?.baseModel ?? null));
  const norm = Math.sqrt(n2);
  const error = Math.sqrt(e2);
  return {
    subspaceId: s.id,
    stacking: s.settings.stacking,
    adapter: {
      name,
      path: null,
      format: first.adapter?.format ?? 'peft',
      baseModel: baseModels.size === 1 ? [...baseModels][0]! : s.baseModel,
      files: [],
    },
    modules,
    skipped: [],
    norm,
    error,
    relativeError: norm > 0 ? error / norm : 0,
  };
}

// ---------------------------------------------------------------------------------------
