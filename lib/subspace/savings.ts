/**
 * What a subspace saves: storage of N adapters as LoRA factors against one basis plus N
 * coefficient sets, and trainable parameters of a new task, LoRA against EigenLoRA.
 */
import { EigenLoraxError } from '../errors.js';
import { integer, invalid, knownKeys, object, oneOf } from '../validate.js';
import { checkSubspace } from './project.js';
import type { Subspace } from './types.js';

export interface SavingsOptions {
  /**
   * How many adapters to count. Default: the subspace's own sources, each with its own
   * rank on the modules it has. With a number, N adapters of rank `rank` on every module.
   */
  adapters?: number;
  /** The rank of the counted adapters and of a new task (default: the most common rank among the sources' modules). */
  rank?: number;
  /** Storage dtype, for bytes (default F32: 4 bytes per parameter). */
  dtype?: 'F32' | 'F16' | 'BF16';
}

export interface ParameterCount {
  parameters: number;
  bytes: number;
}

export interface SubspaceSavings {
  /** N: adapters counted. */
  adapters: number;
  /** The rank used for `adapters: N` and for `trainable`; the per-source ranks otherwise (then the most common one). */
  rank: number;
  /** Whether the counts use each source's own ranks (no `adapters` option). */
  perSourceRanks: boolean;
  bytesPerParameter: number;
  /** N LoRA adapters: sum over modules of r (d_in + d_out), for each adapter. */
  lora: ParameterCount;
  /** The basis: sum over modules of K_A d_in + K_B d_out (+ d_in + d_out for the means when centred). */
  basis: ParameterCount;
  /** N coefficient sets: sum over modules of (K_A + K_B) r, for each adapter. */
  coefficients: ParameterCount;
  /** basis + coefficients. */
  eigenlora: ParameterCount;
  /** lora / eigenlora (parameters): above 1, the subspace stores the adapters in less. */
  ratio: number;
  /** The N from which basis + N coefficient sets take less than N LoRA adapters of rank `rank` (null: never). */
  breakEven: number | null;
  /** Trainable parameters of a new task of rank `rank` on every module: LoRA r (d_in + d_out) against EigenLoRA (K_A + K_B) r. */
  trainable: { lora: number; eigenlora: number; ratio: number };
}

/**
 * Parameters and bytes: N LoRA adapters against the basis plus N coefficient sets, and the
 * trainable parameters of a new task (LoRA against EigenLoRA), all over the subspace's
 * modules. Singular values are not counted (not needed to use the subspace).
 */
export function subspaceSavings(subspace: Subspace, options: SavingsOptions = {}): SubspaceSavings {
  const s = checkSubspace(subspace);
  const o = object(options, 'options');
  knownKeys(o, 'options', ['adapters', 'rank', 'dtype']);
  const dtype = oneOf(o.dtype ?? 'F32', 'options.dtype', ['F32', 'F16', 'BF16'] as const);
  const bytesPerParameter = dtype === 'F32' ? 4 : 2;
  const counts = new Map<number, number>();
  for (const m of s.modules.values()) for (const r of m.ranks) counts.set(r, (counts.get(r) ?? 0) + 1);
  let common = 0;
  let best = -1;
  for (const [r, c] of counts) if (c > best || (c === best && r < common)) [common, best] = [r, c];
  const rank = o.rank === undefined ? common : integer(o.rank, 'options.rank', 1);
  if (rank < 1) throw new EigenLoraxError('subspaceSavings: no ranks recorded in the subspace; pass options.rank', 'ERR_INVALID_ARGUMENT');
  const perSourceRanks = o.adapters === undefined;
  const n = perSourceRanks ? s.sources.length : integer(o.adapters, 'options.adapters', 0);
  if (perSourceRanks && s.sources.length === 0) throw invalid('a number of adapters (the subspace has no sources)', 'options.adapters', o.adapters);

  let lora = 0;
  let basis = 0;
  let coefficients = 0;
  let loraPerAdapter = 0;
  let coefficientsPerAdapter = 0;
  for (const m of s.modules.values()) {
    basis += m.kA * m.dIn + m.kB * m.dOut + (m.meanA !== null ? m.dIn + m.dOut : 0);
    loraPerAdapter += rank * (m.dIn + m.dOut);
    coefficientsPerAdapter += (m.kA + m.kB) * rank;
    if (perSourceRanks) {
      for (const r of m.ranks) {
        lora += r * (m.dIn + m.dOut);
        coefficients += (m.kA + m.kB) * r;
      }
    }
  }
  if (!perSourceRanks) {
    lora = n * loraPerAdapter;
    coefficients = n * coefficientsPerAdapter;
  }
  const eigenlora = basis + coefficients;
  const count = (parameters: number): ParameterCount => ({ parameters, bytes: parameters * bytesPerParameter });
  const gain = loraPerAdapter - coefficientsPerAdapter;
  return {
    adapters: n,
    rank,
    perSourceRanks,
    bytesPerParameter,
    lora: count(lora),
    basis: count(basis),
    coefficients: count(coefficients),
    eigenlora: count(eigenlora),
    ratio: eigenlora > 0 ? lora / eigenlora : Infinity,
    breakEven: gain > 0 ? Math.floor(basis / gain) + 1 : null,
    trainable: { lora: loraPerAdapter, eigenlora: coefficientsPerAdapter, ratio: loraPerAdapter / coefficientsPerAdapter },
  };
}
