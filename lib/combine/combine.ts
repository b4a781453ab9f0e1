/**
 * Combining adapters into one (PEFT's `add_weighted_adapter`, and the exact weighted sum
 * on one EigenLoRAx subspace, DESIGN §1).
 *
 * Every method returns an adapter in the shape `loadAdapter` returns, with scale 1 in
 * every module (`lora_alpha = r`, no rsLoRA, as PEFT's combined adapters have): the
 * weights and the adapters' own scales are inside the factors. So `saveAdapter` writes it
 * (PEFT, diffusers or kohya) and `mergeIntoBase` merges it.
 */
import { naturalCompare } from '../adapters/common.js';
import { openAdapter, OpenedAdapter } from '../adapters/open.js';
import { adapterFormats, type AdapterFormat, type LoraAdapter, type LoraLayout, type LoraModule } from '../adapters/types.js';
import { EigenLoraxError } from '../errors.js';
import { orthonormalize, rsvd } from '../linalg.js';
import { addLowRank, linearBackward, linearForward } from '../lowrank.js';
import { checkMatrix, matrix, type Matrix } from '../matrix.js';
import { resolveAdapter, type ResolvedAdapter } from '../merge/adapters.js';
import type { MergeAdapterInput } from '../merge/types.js';
import { moduleSeed } from '../subspace/inputs.js';
import { checkSubspace, reconstructAdapter } from '../subspace/project.js';
import type { AdapterCoefficients, ModuleCoefficients, Subspace, SubspaceModule } from '../subspace/types.js';
import { finiteNumber, integer, invalid, knownKeys, object, oneOf } from '../validate.js';
import { DEFAULT_MAX_DENSE_ELEMENTS, denseCombination, type DenseMethod, type MajoritySignMethod } from './dense.js';
import { combineMethodNames } from './methods.js';
import { numericalRank, SMALL_SVD_LIMIT, smallSvd } from './small.js';

/**
 * How adapters are combined:
 *  - `linear`: on one subspace (coefficient inputs), the exact weighted sum
 *    `U_B (sum_i w_i s_i beta_i alpha_i^T) V_A^T` re-factored to rank <= min(K_A, K_B):
 *    one rank-K update per module. For LoRA inputs, PEFT's `linear`: equal ranks,
 *    `A = sum_i sqrt(w_i s_i) A_i`, `B = sum_i sqrt(w_i s_i) B_i` (not the weighted sum
 *    of the updates: cross terms `B_i A_j` remain; PEFT's semantics).
 *  - `cat`: PEFT's `cat`, `A = [w_1 s_1 A_1; ...]`, `B = [B_1 ... ]`, rank sum r_i: exact.
 *  - `svd`: PEFT's `svd`, the best rank-k approximation of the exact weighted sum, found
 *    from the stacked factors (QR of both sides, SVD of the small core) without forming
 *    `d_out x d_in`; `B = U_k S_k`, `A = V_k^T`.
 *  - `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: PEFT's `ties_svd`,
 *    `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd` (the PEFT names are
 *    accepted too): element-wise on each module's full delta weights, then `rsvd` to
 *    `rank`.
 */
export type CombineMethod = 'linear' | 'cat' | 'svd' | DenseMethod;
type MethodName = CombineMethod | 'ties_svd' | 'dare_linear_svd' | 'dare_ties_svd' | 'magnitude_prune_svd';

const methodNames: readonly MethodName[] = combineMethodNames;
const denseMethods: readonly string[] = ['ties', 'dare_linear', 'dare_ties', 'magnitude_prune'];

/** An adapter to combine: a path, an opened or loaded adapter, or coefficients on `options.subspace`. */
export type CombineInput = MergeAdapterInput | AdapterCoefficients;

export interface CombineAdaptersOptions {
  method: MethodName;
  /** One weight per adapter, in order (multiplies the adapter's update `s_i B_i A_i`). */
  weights: readonly number[];
  /**
   * Rank of the result, per module. `svd` and the element-wise methods: default the
   * largest rank among the inputs (PEFT's default), at most min(d_in, d_out) (and at most
   * sum r_i for `svd`). `linear` on a subspace: default the numerical rank of the
   * combined core, at most min(K_A, K_B). Not used by `cat` and PEFT `linear`.
   */
  rank?: number;
  /** Element-wise methods: the fraction of entries kept, in (0, 1] (1: no pruning). */
  density?: number;
  /** TIES variants: elect the sign by the sum of the pruned deltas (`total`, default) or of their signs (`frequency`). */
  majoritySignMethod?: MajoritySignMethod;
  /** Seed of DARE's random masks and of the re-factoring `rsvd` (default 0). */
  seed?: number;
  /** The subspace that coefficient inputs belong to (required with them). */
  subspace?: Subspace;
  /**
   * Modules that only some adapters have: 'same' (default) refuses them
   * (ERR_INVALID_ARGUMENT naming them); 'union' combines, per module, the adapters that
   * have it (what PEFT does).
   */
  modules?: 'same' | 'union';
  /** Format of the result (what saveAdapter writes by default): default the first adapter's. */
  format?: AdapterFormat;
  /**
   * Element-wise methods: the largest `d_out x d_in` accepted (default 2^25 =
   * 33,554,432 entries, about 18 bytes each at the peak: 600 MB).
   */
  maxDenseElements?: number;
  /** rsvd settings of the element-wise methods' re-factoring (defaults of `rsvd`). */
  oversample?: number;
  powerIters?: number;
}

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

// ---------------------------------------------------------------------------------------
// Shared checks

function isCoefficients(value: unknown): value is AdapterCoefficients {
  return (
    typeof value === 'object' &&
    value !== null &&
    (value as { modules?: unknown }).modules instanceof Map &&
    typeof (value as { subspaceId?: unknown }).subspaceId === 'string'
  );
}

function checkWeights(weights: unknown, count: number): number[] {
  if (!Array.isArray(weights)) throw invalid('an array of numbers, one per adapter', 'options.weights', weights);
  if (weights.length !== count) {
    throw new EigenLoraxError(`options.weights: expected ${count} weights (one per adapter) but received ${weights.length}`, 'ERR_INVALID_ARGUMENT');
  }
  return weights.map((w, i) => finiteNumber(w, `options.weights[${i}]`));
}

function checkCoefficientsOn(subspace: Subspace, c: AdapterCoefficients, i: number): void {
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
function moduleUnion(sets: ReadonlyArray<Iterable<string>>, policy: 'same' | 'union', labels: readonly string[]): Map<string, number[]> {
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
// Coefficients on one subspace: the exact weighted sum as one rank-K update.

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
async function coreSvd(core: Float64Array, rows: number, cols: number, keep: number): Promise<{ U: Float64Array; S: Float64Array; V: Float64Array; p: number }> {
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
  const o = object(options, 'options');
  knownKeys(o, 'options', ['weights', 'rank', 'factors', 'modules', 'name']);
  const weights = checkWeights(o.weights, coefficients.length);
  const factors = oneOf(o.factors ?? 'balanced', 'options.factors', ['balanced', 'singular'] as const);
  const policy = oneOf(o.modules ?? 'same', 'options.modules', ['same', 'union'] as const);
  const rank = o.rank === undefined ? null : integer(o.rank, 'options.rank', 1);
  const name = o.name === undefined ? 'combined' : String(o.name);
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
// LoRA factors

interface Term {
  /** Position among the inputs. */
  index: number;
  A: Matrix;
  B: Matrix;
  scale: number;
  weight: number;
}

interface ModuleGroup {
  name: string;
  dIn: number;
  dOut: number;
  layout: LoraLayout;
  convKernel: number[] | null;
  fanInFanOut: boolean;
  terms: Term[];
}

interface Resolved {
  label: string;
  format: AdapterFormat | null;
  baseModel: string | null;
  modules: ResolvedAdapter['modules'];
}

async function resolveInput(input: MergeAdapterInput, i: number): Promise<Resolved> {
  const format = (f: unknown): AdapterFormat | null => ((adapterFormats as readonly unknown[]).includes(f) ? (f as AdapterFormat) : null);
  if (typeof input === 'string') {
    if (input.length === 0) throw invalid('a path (non-empty string)', `adapters[${i}]`, input);
    const opened = await openAdapter(input);
    try {
      const r = await resolveAdapter(opened, 1, i);
      return { label: `adapters[${i}] (${input})`, format: opened.format, baseModel: opened.baseModel, modules: r.modules };
    } finally {
      await opened.close();
    }
  }
  if (input instanceof OpenedAdapter) {
    const r = await resolveAdapter(input, 1, i);
    return { label: r.label, format: input.format, baseModel: input.baseModel, modules: r.modules };
  }
  if (typeof input !== 'object' || input === null || !('modules' in input)) {
    throw invalid('an adapter path, an opened or loaded adapter, or coefficients', `adapters[${i}]`, input);
  }
  const r = await resolveAdapter(input, 1, i);
  const baseModel = typeof input.baseModel === 'string' ? input.baseModel : null;
  return { label: r.label, format: format(input.format), baseModel, modules: r.modules };
}

function groupModules(resolved: readonly Resolved[], weights: readonly number[], policy: 'same' | 'union'): ModuleGroup[] {
  const union = moduleUnion(
    resolved.map((r) => r.modules.map((m) => m.name)),
    policy,
    resolved.map((r) => r.label),
  );
  const groups: ModuleGroup[] = [];
  for (const [name, has] of union) {
    let group: ModuleGroup | null = null;
    for (const i of has) {
      const m = resolved[i]!.modules.find((x) => x.name === name)!;
      const kernel = m.convKernel?.join('x') ?? null;
      if (group === null) {
        group = { name, dIn: m.A.cols, dOut: m.B.rows, layout: m.layout, convKernel: m.convKernel, fanInFanOut: m.fanInFanOut, terms: [] };
      } else if (
        m.A.cols !== group.dIn ||
        m.B.rows !== group.dOut ||
        m.layout !== group.layout ||
        kernel !== (group.convKernel?.join('x') ?? null) ||
        m.fanInFanOut !== group.fanInFanOut
      ) {
        const first = resolved[group.terms[0]!.index]!.label;
        const describe = (dIn: number, dOut: number, layout: string, k: string | null, f: boolean) =>
          `${dIn} -> ${dOut} ${layout}${k ? ` kernel ${k}` : ''}${f ? ' fan_in_fan_out' : ''}`;
        throw new EigenLoraxError(
          `module ${JSON.stringify(name)}: ${resolved[i]!.label} has ${describe(m.A.cols, m.B.rows, m.layout, kernel, m.fanInFanOut)} but ` +
            `${first} has ${describe(group.dIn, group.dOut, group.layout, group.convKernel?.join('x') ?? null, group.fanInFanOut)}`,
          'ERR_SHAPE_MISMATCH',
        );
      }
      group.terms.push({ index: i, A: m.A, B: m.B, scale: m.scale, weight: weights[i]! });
    }
    groups.push(group!);
  }
  return groups;
}

function outputModule(g: ModuleGroup, A: Matrix, B: Matrix): LoraModule {
  const r = A.rows;
  const k = g.convKernel;
  return {
    name: g.name,
    A,
    B,
    rank: r,
    alpha: r,
    scale: 1,
    rslora: false,
    layout: g.layout,
    ...(k ? { convKernel: [...k] } : {}),
    shapes:
      g.layout === 'conv' && k
        ? { A: [r, g.dIn / k.reduce((a, b) => a * b, 1), ...k], B: [g.dOut, r, ...k.map(() => 1)] }
        : { A: [r, g.dIn], B: [g.dOut, r] },
    inFeatures: g.dIn,
    outFeatures: g.dOut,
    fanInFanOut: g.fanInFanOut,
    keys: { A: '', B: '' },
    dtypes: { A: 'F32', B: 'F32' },
  };
}

/** PEFT `linear`: A = sum sqrt(w s) A_i, B = sum sqrt(w s) B_i (equal ranks, w s >= 0). */
function peftLinear(g: ModuleGroup, labels: readonly string[]): { A: Matrix; B: Matrix } {
  const r = g.terms[0]!.A.rows;
  for (const t of g.terms) {
    if (t.A.rows !== r) {
      throw new EigenLoraxError(
        `module ${JSON.stringify(g.name)}: PEFT's linear combination needs equal ranks, but ${labels[t.index]} has rank ${t.A.rows} ` +
          `and ${labels[g.terms[0]!.index]} rank ${r}; use cat or svd (or coefficients on a subspace for the exact weighted sum)`,
        'ERR_SHAPE_MISMATCH',
      );
    }
    if (t.weight * t.scale < 0) {
      throw new EigenLoraxError(
        `module ${JSON.stringify(g.name)}: PEFT's linear combination takes sqrt(weight x scale) of each adapter, but ${labels[t.index]} ` +
          `has weight x scale = ${t.weight * t.scale} < 0; use cat or svd for negative weights`,
        'ERR_INVALID_ARGUMENT',
      );
    }
  }
  const A = new Float64Array(r * g.dIn);
  const B = new Float64Array(g.dOut * r);
  for (const t of g.terms) {
    const c = Math.sqrt(t.weight * t.scale);
    for (let e = 0; e < A.length; e++) A[e]! += c * t.A.data[e]!;
    for (let e = 0; e < B.length; e++) B[e]! += c * t.B.data[e]!;
  }
  return { A: matrix(r, g.dIn, Float32Array.from(A)), B: matrix(g.dOut, r, Float32Array.from(B)) };
}

/** PEFT `cat`: A = [w_1 s_1 A_1; ...] (sum r x d_in), B = [B_1 ...] (d_out x sum r). */
function concatenate(g: ModuleGroup, weighted: 'A' | 'B'): { A: Matrix; B: Matrix } {
  const total = g.terms.reduce((n, t) => n + t.A.rows, 0);
  const A = matrix(total, g.dIn);
  const B = matrix(g.dOut, total);
  let offset = 0;
  for (const t of g.terms) {
    const r = t.A.rows;
    const c = t.weight * t.scale;
    const cA = weighted === 'A' ? c : 1;
    const cB = weighted === 'B' ? c : 1;
    const a = A.data.subarray(offset * g.dIn, (offset + r) * g.dIn);
    for (let e = 0; e < a.length; e++) a[e] = cA * t.A.data[e]!;
    for (let i = 0; i < g.dOut; i++) {
      for (let j = 0; j < r; j++) B.data[i * total + offset + j] = cB * t.B.data[i * r + j]!;
    }
    offset += r;
  }
  return { A, B };
}

/** x^T y for row-major x (n x p) and y (n x q), natively: linearBackward's dWeight = dy^T x. */
async function innerProducts(x: Matrix, y: Matrix): Promise<Matrix> {
  const { dWeight } = await linearBackward(y, x, {}, { inputGrad: false, weightGrad: true });
  return dWeight!;
}

/**
 * The best rank-`keep` approximation of sum_i w_i s_i B_i A_i (keep = a number, or the
 * numerical rank above `tolerance` when keep is null) from the stacked factors:
 * B_cat = [w_i s_i B_i] = Q_B R_B, A_cat^T = [A_i^T] = Q_A R_A, core R_B R_A^T = P S Q^T,
 * so the sum is (Q_B P) S (Q_A Q)^T. Never forms d_out x d_in unless the stacked rank
 * exceeds d_in or d_out (then the sum is at most that small, and is formed).
 */
async function stackedSvd(
  g: ModuleGroup,
  keep: number | null,
  factors: 'balanced' | 'singular',
  tolerance: number,
  maxDenseElements: number,
): Promise<{ A: Matrix; B: Matrix }> {
  const R = g.terms.reduce((n, t) => n + t.A.rows, 0);
  let QB: Matrix | null = null;
  let QA: Matrix | null = null;
  let svd: { U: Float64Array; S: Float64Array; V: Float64Array; p: number };
  if (R <= g.dOut && R <= g.dIn) {
    const { A: Acat, B: Bcat } = concatenate(g, 'B'); // B_cat = [w s B_i], A_cat = [A_i]
    const AcatT = matrix(g.dIn, R);
    for (let t = 0; t < R; t++) for (let j = 0; j < g.dIn; j++) AcatT.data[j * R + t] = Acat.data[t * g.dIn + j]!;
    QB = await orthonormalize(Bcat);
    QA = await orthonormalize(AcatT);
    const RB = await innerProducts(QB, Bcat); // R x R
    const RA = await innerProducts(QA, AcatT); // R x R
    let core: Float64Array;
    if (R <= SMALL_SVD_LIMIT) {
      core = new Float64Array(R * R);
      for (let i = 0; i < R; i++) {
        for (let j = 0; j < R; j++) {
          let sum = 0;
          for (let t = 0; t < R; t++) sum += RB.data[i * R + t]! * RA.data[j * R + t]!;
          core[i * R + j] = sum;
        }
      }
    } else {
      core = Float64Array.from((await linearForward(RB, { weight: RA })).data);
    }
    svd = await coreSvd(core, R, R, keep ?? R);
  } else {
    // The stacked rank exceeds a side: form the sum (natively), as PEFT does.
    if (g.dOut * g.dIn > maxDenseElements) {
      throw new EigenLoraxError(
        `module ${JSON.stringify(g.name)}: the stacked rank ${R} exceeds d_in or d_out, so the ${g.dOut} x ${g.dIn} sum is formed, ` +
          `more than maxDenseElements = ${maxDenseElements} entries; raise maxDenseElements or use cat`,
        'ERR_INVALID_ARGUMENT',
      );
    }
    const dense = matrix(g.dOut, g.dIn);
    for (const t of g.terms) await addLowRank(dense, { A: t.A, B: t.B, scale: t.weight * t.scale });
    svd = await coreSvd(Float64Array.from(dense.data), g.dOut, g.dIn, keep ?? Math.min(g.dOut, g.dIn));
  }
  const k = Math.max(1, Math.min(svd.p, keep ?? numericalRank(svd.S, tolerance)));
  const left = matrix(QB ? R : g.dOut, k);
  const right = matrix(QA ? R : g.dIn, k);
  for (let j = 0; j < k; j++) {
    const sigma = svd.S[j]!;
    const l = factors === 'balanced' ? Math.sqrt(sigma) : sigma;
    const r = factors === 'balanced' ? Math.sqrt(sigma) : 1;
    for (let i = 0; i < left.rows; i++) left.data[i * k + j] = svd.U[i * svd.p + j]! * l;
    for (let i = 0; i < right.rows; i++) right.data[i * k + j] = svd.V[i * svd.p + j]! * r;
  }
  // B = Q_B left (d_out x k); A = right^T Q_A^T (k x d_in).
  const leftT = transpose(left);
  const rightT = transpose(right);
  const B = QB ? await linearForward(QB, { weight: leftT }) : left;
  const A = QA ? await linearForward(rightT, { weight: QA }) : rightT;
  return { A, B };
}

function transpose(m: Matrix): Matrix {
  const t = matrix(m.cols, m.rows);
  for (let i = 0; i < m.rows; i++) for (let j = 0; j < m.cols; j++) t.data[j * m.rows + i] = m.data[i * m.cols + j]!;
  return t;
}

/** rsvd of a combined delta to rank k: B = U S, A = V^T (PEFT's convention). */
async function refactor(delta: Matrix, k: number, seed: number, oversample: number | undefined, powerIters: number | undefined): Promise<{ A: Matrix; B: Matrix }> {
  const { U, S, V } = await rsvd(delta, {
    rank: k,
    seed,
    ...(oversample === undefined ? {} : { oversample }),
    ...(powerIters === undefined ? {} : { powerIters }),
  });
  for (let i = 0; i < U.rows; i++) for (let j = 0; j < k; j++) U.data[i * k + j] = U.data[i * k + j]! * S[j]!;
  return { A: transpose(V), B: U };
}

/**
 * Combines adapters into one adapter, per module, with `method` (see {@link CombineMethod}
 * for each method and the PEFT `combination_type` it mirrors). Inputs are adapter paths,
 * opened or loaded adapters (`loadAdapter`'s shape, e.g. `reconstructAdapter`'s result),
 * or coefficients on `options.subspace`; `weights` has one number per input.
 *
 * Where this differs from PEFT's `add_weighted_adapter`:
 *  - `svd` and the element-wise methods weight each `dW_i = s_i B_i A_i` by `w_i` once.
 *    PEFT multiplies `get_delta_weight` (already `s_i B_i A_i`) by `w_i s_i`, so its
 *    adapters with `s_i != 1` enter with `s_i^2`; both agree when `lora_alpha = r`.
 *  - `svd` finds the best rank-k approximation from the factors (no `d_out x d_in` SVD);
 *    the element-wise methods re-factor with a randomized SVD (exact for small modules),
 *    not a full SVD; no `svd_clamp`.
 *  - DARE's random masks come from our seeded generator (reproducible here, not equal
 *    to torch's draws).
 *  - the result's scale is 1 whatever the inputs' rsLoRA flags (PEFT inherits
 *    `use_rslora` from the first adapter).
 *  - a single adapter is combined with the method asked (PEFT switches to `linear`).
 *  - `linear` on coefficients of one subspace is exact (see {@link combineCoefficients}).
 * Classifier heads and other non-LoRA tensors of the inputs are not carried over.
 */
export async function combineAdapters(adapters: readonly CombineInput[], options: CombineAdaptersOptions): Promise<LoraAdapter> {
  if (!Array.isArray(adapters) || adapters.length === 0) throw invalid('a non-empty array of adapters', 'adapters', adapters);
  const o = object(options, 'options');
  knownKeys(o, 'options', [
    'method',
    'weights',
    'rank',
    'density',
    'majoritySignMethod',
    'seed',
    'subspace',
    'modules',
    'format',
    'maxDenseElements',
    'oversample',
    'powerIters',
  ]);
  const named = oneOf(o.method, 'options.method', methodNames);
  const method: CombineMethod = (named.endsWith('_svd') ? named.slice(0, -4) : named) as CombineMethod;
  const weights = checkWeights(o.weights, adapters.length);
  const rank = o.rank === undefined ? null : integer(o.rank, 'options.rank', 1);
  const dense = denseMethods.includes(method);
  let density = 1;
  if (dense) {
    if (o.density === undefined) throw invalid(`a density in (0, 1] for method '${named}'`, 'options.density', o.density);
    density = finiteNumber(o.density, 'options.density');
    if (!(density > 0 && density <= 1)) throw invalid('a density in (0, 1]', 'options.density', density);
  } else if (o.density !== undefined) {
    throw invalid(`no density: method '${named}' does not prune`, 'options.density', o.density);
  }
  const majoritySignMethod = oneOf(o.majoritySignMethod ?? 'total', 'options.majoritySignMethod', ['total', 'frequency'] as const);
  const seed = integer(o.seed ?? 0, 'options.seed', 0);
  const policy = oneOf(o.modules ?? 'same', 'options.modules', ['same', 'union'] as const);
  const format = o.format === undefined ? null : oneOf(o.format, 'options.format', adapterFormats);
  const maxDenseElements = integer(o.maxDenseElements ?? DEFAULT_MAX_DENSE_ELEMENTS, 'options.maxDenseElements', 1);
  const oversample = o.oversample === undefined ? undefined : integer(o.oversample, 'options.oversample', 0);
  const powerIters = o.powerIters === undefined ? undefined : integer(o.powerIters, 'options.powerIters', 0, 1000);

  const coefficientInputs = adapters.map((a) => isCoefficients(a));
  const anyCoefficients = coefficientInputs.some(Boolean);
  const allCoefficients = coefficientInputs.every(Boolean);
  let subspace: Subspace | null = null;
  if (anyCoefficients) {
    if (o.subspace === undefined) throw invalid('the subspace that the coefficient inputs belong to', 'options.subspace', undefined);
    subspace = checkSubspace(o.subspace);
    adapters.forEach((a, i) => {
      if (coefficientInputs[i]) checkCoefficientsOn(subspace!, a as AdapterCoefficients, i);
    });
  } else if (o.subspace !== undefined) {
    checkSubspace(o.subspace);
  }
  if (method === 'linear' && anyCoefficients && !allCoefficients) {
    throw new EigenLoraxError(
      "method 'linear': either every input is coefficients on the subspace (the exact weighted sum) or none is (PEFT's linear); " +
        'for a mix, use cat or svd',
      'ERR_INVALID_ARGUMENT',
    );
  }

  // Coefficients on an uncentred subspace: the exact sum as one rank-K update per module.
  if (allCoefficients && (method === 'linear' || method === 'svd')) {
    const coefficients = adapters as readonly AdapterCoefficients[];
    const s = subspace!;
    const union = moduleUnion(
      coefficients.map((c) => c.modules.keys()),
      policy,
      coefficients.map((c, i) => `adapters[${i}]${c.adapter?.name ? ` (${c.adapter.name})` : ''}`),
    );
    const centred = [...union.keys()].some((n) => s.modules.get(n)!.meanA !== null || s.modules.get(n)!.meanB !== null);
    if (!centred) {
      for (const [name, has] of union) {
        const m = s.modules.get(name)!;
        const total = has.reduce((n, i) => n + coefficients[i]!.modules.get(name)!.rank, 0);
        const bound = method === 'svd' ? Math.min(m.kA, m.kB, total) : Math.min(m.kA, m.kB);
        if (rank !== null && rank > bound) {
          throw new EigenLoraxError(
            `options.rank: ${rank} is more than module ${JSON.stringify(name)} allows (${method === 'svd' ? 'min(K_A, K_B, sum of ranks)' : 'min(K_A, K_B)'} = ${bound})`,
            'ERR_INVALID_ARGUMENT',
          );
        }
      }
      // svd's default rank is the largest input rank (PEFT); linear keeps the numerical rank.
      const perModuleRank = method === 'svd' && rank === null;
      let combined: AdapterCoefficients;
      if (!perModuleRank) {
        combined = await combineCoefficients(s, coefficients, {
          weights,
          ...(rank === null ? {} : { rank }),
          factors: method === 'svd' ? 'singular' : 'balanced',
          modules: policy,
        });
      } else {
        // One call per module, each with its own default rank.
        const modules = new Map<string, ModuleCoefficients>();
        let first: AdapterCoefficients | null = null;
        for (const [name, has] of union) {
          const m = s.modules.get(name)!;
          const k = Math.min(m.kA, m.kB, Math.max(...has.map((i) => coefficients[i]!.modules.get(name)!.rank)));
          const only = has.map((i) => ({ ...coefficients[i]!, modules: new Map([[name, coefficients[i]!.modules.get(name)!]]) }));
          const one = await combineCoefficients(s, only, { weights: has.map((i) => weights[i]!), rank: k, factors: 'singular' });
          first ??= one;
          modules.set(name, one.modules.get(name)!);
        }
        const ordered = new Map([...s.modules.keys()].filter((n) => modules.has(n)).map((n) => [n, modules.get(n)!]));
        let n2 = 0;
        let e2 = 0;
        for (const mc of ordered.values()) {
          n2 += mc.norm ** 2;
          e2 += mc.error ** 2;
        }
        combined = { ...first!, modules: ordered, norm: Math.sqrt(n2), error: Math.sqrt(e2), relativeError: n2 > 0 ? Math.sqrt(e2 / n2) : 0 };
      }
      return reconstructAdapter(s, combined, format === null ? {} : { format });
    }
  }

  // Everything else works on LoRA factors: reconstruct the coefficient inputs.
  const resolved: Resolved[] = [];
  for (let i = 0; i < adapters.length; i++) {
    const input = adapters[i]!;
    if (coefficientInputs[i]) {
      const c = input as AdapterCoefficients;
      const lora = await reconstructAdapter(subspace!, c);
      const r = await resolveAdapter(lora, 1, i);
      resolved.push({ label: `adapters[${i}]${c.adapter?.name ? ` (${c.adapter.name})` : ''}`, format: lora.format, baseModel: lora.baseModel, modules: r.modules });
    } else {
      resolved.push(await resolveInput(input as MergeAdapterInput, i));
    }
  }
  const groups = groupModules(resolved, weights, policy);
  const labels = resolved.map((r) => r.label);

  // Ranks are checked for every module before any work.
  const targetRank = new Map<string, number | null>();
  for (const g of groups) {
    const total = g.terms.reduce((n, t) => n + t.A.rows, 0);
    const largest = Math.max(...g.terms.map((t) => t.A.rows));
    const side = Math.min(g.dIn, g.dOut);
    if (method === 'svd' || dense) {
      const bound = method === 'svd' ? Math.min(side, total) : side;
      if (rank !== null && rank > bound) {
        throw new EigenLoraxError(
          `options.rank: ${rank} is more than module ${JSON.stringify(g.name)} allows (${method === 'svd' ? 'min(d_in, d_out, sum of ranks)' : 'min(d_in, d_out)'} = ${bound})`,
          'ERR_INVALID_ARGUMENT',
        );
      }
      targetRank.set(g.name, rank ?? Math.min(largest, bound));
    } else if (method === 'linear' && allCoefficients) {
      // Centred subspace: the exact sum, re-factored to its numerical rank (or `rank`).
      const bound = Math.min(side, total);
      if (rank !== null && rank > bound) {
        throw new EigenLoraxError(`options.rank: ${rank} is more than module ${JSON.stringify(g.name)} allows (${bound})`, 'ERR_INVALID_ARGUMENT');
      }
      targetRank.set(g.name, rank);
    }
  }
  if (dense) {
    for (const g of groups) {
      if (g.dIn * g.dOut > maxDenseElements) {
        throw new EigenLoraxError(
          `module ${JSON.stringify(g.name)}: method '${named}' works on the full ${g.dOut} x ${g.dIn} delta, more than ` +
            `maxDenseElements = ${maxDenseElements} entries; raise maxDenseElements if the memory is there (about 18 bytes per entry)`,
          'ERR_INVALID_ARGUMENT',
        );
      }
    }
  }

  const modules = new Map<string, LoraModule>();
  for (const g of groups) {
    let factors: { A: Matrix; B: Matrix };
    if (method === 'cat') factors = concatenate(g, 'A');
    else if (method === 'linear' && !allCoefficients) factors = peftLinear(g, labels);
    else if (method === 'linear') factors = await stackedSvd(g, targetRank.get(g.name) ?? null, 'balanced', 1e-6, maxDenseElements);
    else if (method === 'svd') factors = await stackedSvd(g, targetRank.get(g.name)!, 'singular', 0, maxDenseElements);
    else {
      const mSeed = moduleSeed(seed, g.name);
      const delta = await denseCombination(`module ${JSON.stringify(g.name)}`, g.dOut, g.dIn, g.terms, {
        method: method as DenseMethod,
        density,
        majoritySignMethod,
        seed: mSeed,
        maxDenseElements,
      });
      factors = await refactor(delta, targetRank.get(g.name)!, mSeed % 2 ** 32, oversample, powerIters);
    }
    modules.set(g.name, outputModule(g, factors.A, factors.B));
  }
  const baseModels = new Set(resolved.map((r) => r.baseModel));
  return {
    format: format ?? resolved[0]!.format ?? 'peft',
    baseModel: baseModels.size === 1 ? [...baseModels][0]! : null,
    source: null,
    modules: new Map([...modules].sort(([a], [b]) => naturalCompare(a, b))),
    extras: new Map(),
    config: null,
    metadata: {},
  };
}
