/**
 * The element-wise combinations (TIES, DARE, magnitude pruning) of PEFT's
 * `peft.utils.merge_utils`, on one module's full delta weights. Each adapter's
 * `dW_i = s_i B_i A_i` is formed natively (`addLowRank` into a zeroed `d_out x d_in`
 * buffer), one adapter at a time; the sign election and the merge are element loops.
 */
import { EigenLoraxError } from '../errors.js';
import { mulberry32 } from '../random.js';
import { addLowRank } from '../lowrank.js';
import { matrix, type Matrix } from '../matrix.js';

/** The default cap on `d_out x d_in` for the element-wise methods: 2^25 entries (e.g. 4096 x 8192). */
export const DEFAULT_MAX_DENSE_ELEMENTS = 2 ** 25;
/** Bytes per entry at the peak of a TIES merge: delta, |delta| scratch, sign sums, merged (f32 each), counts (u16). */
export const DENSE_BYTES_PER_ELEMENT = 18;

export type DenseMethod = 'ties' | 'dare_linear' | 'dare_ties' | 'magnitude_prune';
export type MajoritySignMethod = 'total' | 'frequency';

export interface DenseTerm {
  A: Matrix;
  B: Matrix;
  /** The adapter's own scale s_i (inside dW_i). */
  scale: number;
  /** The combination weight w_i (applied after pruning, as PEFT does). */
  weight: number;
  /** The adapter's position in the inputs: part of DARE's seed. */
  index: number;
}

/** The seed of DARE's mask for one adapter of one module. */
export function dareSeed(moduleSeed: number, index: number): number {
  return (Math.imul((moduleSeed >>> 0) ^ (moduleSeed / 2 ** 32), 0x9e3779b1) + Math.imul(index + 1, 0x85ebca6b)) >>> 0;
}

/** The value of rank `k` (0-based, ascending) among a[0..n): partial quickselect, reorders a. */
function selectKth(a: Float32Array, n: number, k: number): number {
  let lo = 0;
  let hi = n - 1;
  while (hi > lo) {
    const mid = (lo + hi) >>> 1;
    const x = a[lo]!;
    const y = a[mid]!;
    const z = a[hi]!;
    const pivot = x < y ? (y < z ? y : x < z ? z : x) : x < z ? x : y < z ? z : y;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! < pivot) i++;
      while (a[j]! > pivot) j--;
      if (i <= j) {
        const t = a[i]!;
        a[i] = a[j]!;
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return a[k]!;
  }
  return a[k]!;
}

/**
 * In place: keeps the `floor(density * n)` entries of largest magnitude (PEFT's
 * `magnitude_based_pruning`) and zeroes the others. Among entries of equal magnitude at
 * the threshold, the first in row-major order are kept. density >= 1 keeps everything.
 */
export function trimByMagnitude(data: Float32Array, density: number, scratch: Float32Array): void {
  const n = data.length;
  if (density >= 1) return;
  const k = Math.floor(density * n);
  if (k <= 0) {
    data.fill(0);
    return;
  }
  for (let e = 0; e < n; e++) scratch[e] = Math.abs(data[e]!);
  const threshold = selectKth(scratch, n, n - k);
  let greater = 0;
  for (let e = 0; e < n; e++) if (Math.abs(data[e]!) > threshold) greater++;
  let equal = k - greater;
  for (let e = 0; e < n; e++) {
    const a = Math.abs(data[e]!);
    if (a > threshold) continue;
    if (a === threshold && equal > 0) {
      equal--;
      continue;
    }
    data[e] = 0;
  }
}

/**
 * In place: keeps each entry with probability `density` (an independent Bernoulli draw
 * per entry, row-major, from `seed`) and divides the kept ones by `density` (PEFT's
 * `random_pruning` with rescale). density >= 1 keeps everything unchanged.
 */
export function dropAndRescale(data: Float32Array, density: number, seed: number): void {
  if (density >= 1) return;
  const u = mulberry32(seed);
  const inverse = 1 / density;
  for (let e = 0; e < data.length; e++) {
    if (u() < density) data[e] = data[e]! * inverse;
    else data[e] = 0;
  }
}

/**
 * One module's combined delta `d_out x d_in` (f32):
 *  - `magnitude_prune`: sum_i w_i trim(dW_i);
 *  - `dare_linear`:     sum_i w_i drop(dW_i) / density;
 *  - `ties`:            trim each dW_i, elect a sign per entry from the trimmed deltas
 *                       (before weighting: their sum, `total`, or their signs' sum,
 *                       `frequency`; >= 0 elects +), then the mean over the adapters
 *                       whose trimmed entry is non-zero and of the elected sign of
 *                       w_i trim(dW_i)_e (disjoint merge);
 *  - `dare_ties`:       the same with DARE's drop and rescale instead of the trim.
 * Each dW_i is computed twice for the TIES variants (election, then merge) rather than
 * kept: the peak is about {@link DENSE_BYTES_PER_ELEMENT} bytes per entry whatever the
 * number of adapters.
 */
export async function denseCombination(
  where: string,
  dOut: number,
  dIn: number,
  terms: readonly DenseTerm[],
  options: { method: DenseMethod; density: number; majoritySignMethod: MajoritySignMethod; seed: number; maxDenseElements: number },
): Promise<Matrix> {
  const n = dOut * dIn;
  if (n > options.maxDenseElements) {
    throw new EigenLoraxError(
      `${where}: method '${options.method}' works on the full ${dOut} x ${dIn} delta (${n} entries, about ` +
        `${Math.ceil((n * DENSE_BYTES_PER_ELEMENT) / 2 ** 20)} MiB at the peak), over maxDenseElements = ${options.maxDenseElements}; ` +
        'raise maxDenseElements if the memory is there, or use svd or cat',
      'ERR_INVALID_ARGUMENT',
    );
  }
  if (terms.length > 65535) throw new EigenLoraxError(`${where}: at most 65535 adapters per module`, 'ERR_INVALID_ARGUMENT');
  const { method, density } = options;
  const random = method === 'dare_linear' || method === 'dare_ties';
  const work = matrix(dOut, dIn);
  const scratch = random ? null : new Float32Array(n);
  const merged = matrix(dOut, dIn);
  const prunedDelta = async (term: DenseTerm): Promise<Float32Array> => {
    work.data.fill(0);
    await addLowRank(work, { A: term.A, B: term.B, scale: term.scale });
    if (random) dropAndRescale(work.data, density, dareSeed(options.seed, term.index));
    else trimByMagnitude(work.data, density, scratch!);
    return work.data;
  };
  if (method === 'magnitude_prune' || method === 'dare_linear') {
    for (const term of terms) {
      const d = await prunedDelta(term);
      const w = term.weight;
      for (let e = 0; e < n; e++) merged.data[e] = merged.data[e]! + w * d[e]!;
    }
    return merged;
  }
  // TIES: elect, then merge the entries that agree with the elected sign.
  const elect = new Float32Array(n);
  const frequency = options.majoritySignMethod === 'frequency';
  for (const term of terms) {
    const d = await prunedDelta(term);
    if (frequency) {
      for (let e = 0; e < n; e++) elect[e] = elect[e]! + Math.sign(d[e]!);
    } else {
      for (let e = 0; e < n; e++) elect[e] = elect[e]! + d[e]!;
    }
  }
  const count = new Uint16Array(n);
  for (const term of terms) {
    const d = await prunedDelta(term);
    const w = term.weight;
    for (let e = 0; e < n; e++) {
      const v = d[e]!;
      if (v === 0 || v > 0 !== elect[e]! >= 0) continue;
      merged.data[e] = merged.data[e]! + w * v;
      count[e] = count[e]! + 1;
    }
  }
  for (let e = 0; e < n; e++) if (count[e]! > 1) merged.data[e] = merged.data[e]! / count[e]!;
  return merged;
}
