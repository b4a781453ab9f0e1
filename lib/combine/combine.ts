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
import { adapterFormats, type AdapterFormat, type LoraAdapter, type LoraModule } from '../adapters/types.js';
import { EigenLoraxError } from '../errors.js';
import type { Matrix } from '../matrix.js';
import { resolveAdapter } from '../merge/adapters.js';
import type { MergeAdapterInput } from '../merge/types.js';
import { moduleSeed } from '../subspace/inputs.js';
import { checkSubspace, reconstructAdapter } from '../subspace/project.js';
import type { AdapterCoefficients, ModuleCoefficients, Subspace } from '../subspace/types.js';
import { argumentPlace, Count, OneOf, Options, parse, Type, type SameOptionNames } from '../schema.js';
import { invalid } from '../validate.js';
import { checkCoefficientsOn, checkWeightCount, isCoefficients, ModulePolicyOption, moduleUnion, WeightsOption } from './checks.js';
import { combineCoefficients } from './coefficients.js';
import { DEFAULT_MAX_DENSE_ELEMENTS, denseCombination, type DenseMethod, type MajoritySignMethod } from './dense.js';
import { concatenate, groupModules, outputModule, peftLinear, refactor, resolveInput, stackedSvd, type ModuleGroup, type Resolved } from './factors.js';
import { combineMethodNames } from './methods.js';

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

/** The options of combineAdapters, checked. */
interface Settings {
  /** The method as named (a PEFT `_svd` name stays as given, for messages). */
  named: MethodName;
  method: CombineMethod;
  /** An element-wise method (works on the full delta). */
  dense: boolean;
  weights: number[];
  rank: number | null;
  density: number;
  majoritySignMethod: MajoritySignMethod;
  seed: number;
  policy: 'same' | 'union';
  format: AdapterFormat | null;
  maxDenseElements: number;
  oversample: number | undefined;
  powerIters: number | undefined;
}

/** The names, types and ranges of CombineAdaptersOptions; the rules between them are in checkOptions. */
const CombineOptionsSchema = Options({
  method: OneOf(methodNames),
  weights: WeightsOption,
  rank: Type.Optional(Count(1)),
  density: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, description: 'a density in (0, 1]' })),
  majoritySignMethod: Type.Optional(OneOf(['total', 'frequency'] as const)),
  seed: Type.Optional(Count(0)),
  // Checked by checkSubspace (a Subspace from buildSubspace or loadSubspace).
  subspace: Type.Optional(Type.Unknown()),
  modules: Type.Optional(ModulePolicyOption),
  format: Type.Optional(OneOf(adapterFormats)),
  maxDenseElements: Type.Optional(Count(1)),
  oversample: Type.Optional(Count(0)),
  powerIters: Type.Optional(Count(0, 1000)),
});
const combineOptionNames: SameOptionNames<typeof CombineOptionsSchema, CombineAdaptersOptions> = true;
void combineOptionNames;

function checkOptions(options: unknown, count: number): Settings & { subspace: unknown } {
  const o = parse(CombineOptionsSchema, options, argumentPlace('options'));
  const named = o.method;
  const method: CombineMethod = (named.endsWith('_svd') ? named.slice(0, -4) : named) as CombineMethod;
  const weights = checkWeightCount(o.weights, count);
  const dense = denseMethods.includes(method);
  if (dense && o.density === undefined) throw invalid(`a density in (0, 1] for method '${named}'`, 'options.density', o.density);
  if (!dense && o.density !== undefined) throw invalid(`no density: method '${named}' does not prune`, 'options.density', o.density);
  return {
    named,
    method,
    dense,
    weights,
    rank: o.rank ?? null,
    density: o.density ?? 1,
    majoritySignMethod: o.majoritySignMethod ?? 'total',
    seed: o.seed ?? 0,
    policy: o.modules ?? 'same',
    format: o.format ?? null,
    maxDenseElements: o.maxDenseElements ?? DEFAULT_MAX_DENSE_ELEMENTS,
    oversample: o.oversample,
    powerIters: o.powerIters,
    subspace: o.subspace,
  };
}

/** Which inputs are coefficients, and the subspace they are checked against (null when none is). */
function checkCoefficientInputs(
  adapters: readonly CombineInput[],
  subspaceOption: unknown,
  method: CombineMethod,
): { isCoefficientInput: boolean[]; allCoefficients: boolean; subspace: Subspace | null } {
  const isCoefficientInput = adapters.map((a) => isCoefficients(a));
  const anyCoefficients = isCoefficientInput.some(Boolean);
  const allCoefficients = isCoefficientInput.every(Boolean);
  let subspace: Subspace | null = null;
  if (anyCoefficients) {
    if (subspaceOption === undefined) throw invalid('the subspace that the coefficient inputs belong to', 'options.subspace', undefined);
    const s = checkSubspace(subspaceOption as Subspace);
    adapters.forEach((a, i) => {
      if (isCoefficientInput[i]) checkCoefficientsOn(s, a as AdapterCoefficients, i);
    });
    subspace = s;
  } else if (subspaceOption !== undefined) {
    checkSubspace(subspaceOption as Subspace);
  }
  if (method === 'linear' && anyCoefficients && !allCoefficients) {
    throw new EigenLoraxError(
      "method 'linear': either every input is coefficients on the subspace (the exact weighted sum) or none is (PEFT's linear); " +
        'for a mix, use cat or svd',
      'ERR_INVALID_ARGUMENT',
    );
  }
  return { isCoefficientInput, allCoefficients, subspace };
}

const coefficientsLabel = (c: AdapterCoefficients, i: number) => `adapters[${i}]${c.adapter?.name ? ` (${c.adapter.name})` : ''}`;

/**
 * `linear` and `svd` on coefficients of one uncentred subspace: the exact sum as one
 * rank-K update per module, reconstructed. Null when a module is centred (then the sum is
 * no rank-K update on the components, and the reconstructions are combined instead).
 */
async function combineOnSubspace(s: Subspace, coefficients: readonly AdapterCoefficients[], settings: Settings): Promise<LoraAdapter | null> {
  const { method, rank, weights, policy, format } = settings;
  const union = moduleUnion(
    coefficients.map((c) => c.modules.keys()),
    policy,
    coefficients.map(coefficientsLabel),
  );
  const centred = [...union.keys()].some((n) => s.modules.get(n)!.meanA !== null || s.modules.get(n)!.meanB !== null);
  if (centred) return null;
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
  const combined =
    method === 'svd' && rank === null
      ? await combinePerModuleRank(s, coefficients, union, weights)
      : await combineCoefficients(s, coefficients, {
          weights,
          ...(rank === null ? {} : { rank }),
          factors: method === 'svd' ? 'singular' : 'balanced',
          modules: policy,
        });
  return reconstructAdapter(s, combined, format === null ? {} : { format });
}

/** `svd` with no rank: one combineCoefficients call per module, each with its own default rank (the largest input rank). */
async function combinePerModuleRank(
  s: Subspace,
  coefficients: readonly AdapterCoefficients[],
  union: Map<string, number[]>,
  weights: readonly number[],
): Promise<AdapterCoefficients> {
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
  return { ...first!, modules: ordered, norm: Math.sqrt(n2), error: Math.sqrt(e2), relativeError: n2 > 0 ? Math.sqrt(e2 / n2) : 0 };
}

/** Every input as LoRA factors: the coefficient inputs reconstructed on `subspace`. */
async function resolveInputs(adapters: readonly CombineInput[], isCoefficientInput: readonly boolean[], subspace: Subspace | null): Promise<Resolved[]> {
  const resolved: Resolved[] = [];
  for (let i = 0; i < adapters.length; i++) {
    const input = adapters[i]!;
    if (isCoefficientInput[i]) {
      const c = input as AdapterCoefficients;
      const lora = await reconstructAdapter(subspace!, c);
      const r = await resolveAdapter(lora, 1, i);
      resolved.push({ label: coefficientsLabel(c, i), format: lora.format, baseModel: lora.baseModel, modules: r.modules });
    } else {
      resolved.push(await resolveInput(input as MergeAdapterInput, i));
    }
  }
  return resolved;
}

/** The rank of each module's result (null: its numerical rank), checked for every module before any work. */
function targetRanks(groups: readonly ModuleGroup[], settings: Settings, allCoefficients: boolean): Map<string, number | null> {
  const { method, dense, rank } = settings;
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
  return targetRank;
}

/** The element-wise methods form each module's `d_out x d_in` delta: refuse the modules over maxDenseElements up front. */
function checkDenseSizes(groups: readonly ModuleGroup[], settings: Settings): void {
  if (!settings.dense) return;
  const { named, maxDenseElements } = settings;
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

/** One module's combined factors, by the method. */
async function combineModule(
  g: ModuleGroup,
  settings: Settings,
  target: number | null | undefined,
  labels: readonly string[],
  allCoefficients: boolean,
): Promise<{ A: Matrix; B: Matrix }> {
  const { method, maxDenseElements } = settings;
  if (method === 'cat') return concatenate(g, 'A');
  if (method === 'linear' && !allCoefficients) return peftLinear(g, labels);
  if (method === 'linear') return stackedSvd(g, target ?? null, 'balanced', 1e-6, maxDenseElements);
  if (method === 'svd') return stackedSvd(g, target!, 'singular', 0, maxDenseElements);
  const mSeed = moduleSeed(settings.seed, g.name);
  const delta = await denseCombination(`module ${JSON.stringify(g.name)}`, g.dOut, g.dIn, g.terms, {
    method: method as DenseMethod,
    density: settings.density,
    majoritySignMethod: settings.majoritySignMethod,
    seed: mSeed,
    maxDenseElements,
  });
  return refactor(delta, target!, mSeed % 2 ** 32, settings.oversample, settings.powerIters);
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
  const settings = checkOptions(options, adapters.length);
  const { isCoefficientInput, allCoefficients, subspace } = checkCoefficientInputs(adapters, settings.subspace, settings.method);

  if (allCoefficients && (settings.method === 'linear' || settings.method === 'svd')) {
    const exact = await combineOnSubspace(subspace!, adapters as readonly AdapterCoefficients[], settings);
    if (exact !== null) return exact;
  }

  // Everything else works on LoRA factors.
  const resolved = await resolveInputs(adapters, isCoefficientInput, subspace);
  const groups = groupModules(resolved, settings.weights, settings.policy);
  const labels = resolved.map((r) => r.label);
  const targetRank = targetRanks(groups, settings, allCoefficients);
  checkDenseSizes(groups, settings);

  const modules = new Map<string, LoraModule>();
  for (const g of groups) {
    const factors = await combineModule(g, settings, targetRank.get(g.name), labels, allCoefficients);
    modules.set(g.name, outputModule(g, factors.A, factors.B));
  }
  const baseModels = new Set(resolved.map((r) => r.baseModel));
  return {
    format: settings.format ?? resolved[0]!.format ?? 'peft',
    baseModel: baseModels.size === 1 ? [...baseModels][0]! : null,
    source: null,
    modules: new Map([...modules].sort(([a], [b]) => naturalCompare(a, b))),
    extras: new Map(),
    config: null,
    metadata: {},
  };
}
