/**
 * What a subspace saves: storage of N adapters as LoRA factors against one basis plus N
 * coefficient sets, and trainable parameters of a new task, LoRA against EigenLoRA.
 */
import { EigenLoraxError } from '../errors.js';
import { argumentPlace, Count, OneOf, Options, parse, Type, type SameOptionNames } from '../schema.js';
import { invalid } from '../validate.js';
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

const SavingsOptionsSchema = Options({
  adapters: Type.Optional(Count(0)),
  rank: Type.Optional(Count(1)),
  dtype: Type.Optional(OneOf(['F32', 'F16', 'BF16'] as const)),
});
const savingsOptionNames: SameOptionNames<typeof SavingsOptionsSchema, SavingsOptions> = true;
void savingsOptionNames;

/**
 * Parameters and bytes: N LoRA adapters against the basis plus N coefficient sets, and the
 * trainable parameters of a new task (LoRA against EigenLoRA), all over the subspace's
 * modules. Singular values are not counted (not needed to use the subspace).
 */
export function subspaceSavings(subspace: Subspace, options: SavingsOptions = {}): SubspaceSavings {
  const s = checkSubspace(subspace);
  const o = parse(SavingsOptionsSchema, options, argumentPlace('options'));
  const dtype = o.dtype ?? 'F32';
  const bytesPerParameter = dtype === 'F32' ? 4 : 2;
  const counts = new Map<number, number>();
  for (const m of s.modules.values()) for (const r of m.ranks) counts.set(r, (counts.get(r) ?? 0) + 1);
  let common = 0;
  let best = -1;
  for (const [r, c] of counts) if (c > best || (c === best && r < common)) [common, best] = [r, c];
  const rank = o.rank ?? common;
  if (rank < 1) throw new EigenLoraxError('subspaceSavings: no ranks recorded in the subspace; pass options.rank', 'ERR_INVALID_ARGUMENT');
  const perSourceRanks = o.adapters === undefined;
  const n = o.adapters ?? s.sources.length;
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

/** Bytes per element of the float dtypes adapters are stored in (F32 when unknown). */
const DTYPE_BYTES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1 };

/** One side of the storage comparison: bytes, and the dtypes they are in. */
export interface StoredBytes {
  bytes: number;
  dtypes: string[];
}

/**
 * Storage as it is on disk, like with like: the adapters' factors of the subspace's modules
 * in the dtypes they are stored in, against the basis (components, singular values, means)
 * and the coefficients (loadings) as the subspace files write them (F32).
 */
export interface StoredSavings {
  adapters: StoredBytes;
  basis: StoredBytes;
  coefficients: StoredBytes;
  /** basis + coefficients. */
  eigenlora: StoredBytes;
  /** adapters / eigenlora bytes: above 1, the subspace files take less than the adapters' factors. */
  ratio: number;
}

/**
 * Stored bytes of the adapters' factors (each module of each holder: r (d_in + d_out) in
 * its stored dtype; `dtypes` per holder as the build read them, F32 where unknown) against
 * what saveSubspace and saveCoefficients write for the tensors (F32; headers not counted).
 */
export function storedSavings(
  modules: Iterable<{ dIn: number; dOut: number; kA: number; kB: number; singularA: Float32Array; singularB: Float32Array; meanA: Float32Array | null; meanB: Float32Array | null; ranks: number[] }>,
  holderDtypes: ReadonlyArray<ReadonlyArray<{ A: string; B: string } | undefined>>,
): StoredSavings {
  let adapters = 0;
  let basis = 0;
  let coefficients = 0;
  const seen = new Set<string>();
  let index = 0;
  for (const m of modules) {
    const dtypes = holderDtypes[index++] ?? [];
    m.ranks.forEach((r, i) => {
      const d = dtypes[i] ?? { A: 'F32', B: 'F32' };
      seen.add(d.A);
      seen.add(d.B);
      adapters += r * m.dIn * (DTYPE_BYTES[d.A] ?? 4) + r * m.dOut * (DTYPE_BYTES[d.B] ?? 4);
      coefficients += 4 * (m.kA + m.kB) * r;
    });
    basis += 4 * (m.kA * m.dIn + m.kB * m.dOut + m.singularA.length + m.singularB.length + (m.meanA?.length ?? 0) + (m.meanB?.length ?? 0));
  }
  const f32 = ['F32'];
  return {
    adapters: { bytes: adapters, dtypes: [...seen].sort() },
    basis: { bytes: basis, dtypes: f32 },
    coefficients: { bytes: coefficients, dtypes: f32 },
    eigenlora: { bytes: basis + coefficients, dtypes: f32 },
    ratio: basis + coefficients > 0 ? adapters / (basis + coefficients) : Infinity,
  };
}
