/**
 * Many adapters in one batch (DESIGN §1, serving): each row of x names its adapter
 * (an index, or -1 for none).
 *
 * - `eigenBankApply`: adapters as coefficient sets on one EigenLoRA basis. Adapter i is
 *   the K_A x K_B matrix M_i = s_i alpha_i beta_i^T (`mixingMatrix`); the batch shares
 *   x V_A and T U_B^T, and only the tiny middle step is grouped by adapter.
 * - `loraBankApply`: the plain-LoRA baseline that gathers each row's own A_i, B_i, one
 *   segment per adapter (as Punica and S-LoRA do), for comparison on the same batch.
 *
 * Both take `device` (lib/cuda.ts); on the GPU, x, the components, the weight, the
 * factors and the mixing matrices may be DeviceMatrix operands kept there.
 *
 * A batch with few distinct adapters, each with many rows, runs through their rank-r LoRA
 * pairs (A_i = V_A L_i, B_i = U_B R_i^T from M_i = L_i R_i) instead of the shared K-wide
 * products when that is cheaper. A {@link PairCache} keeps those pairs between calls, so a
 * hot adapter's pair is built once, and keeps the components native-side (not copied in
 * with each call). Which path a batch takes depends on the batch and the cache's budget
 * only, never on what the cache holds: the same batch gives the same bits either way.
 */
import { checkOperand, DeviceMatrix, deviceArgs, nativeOperand, onDevice, type Device, type Operand } from './cuda.js';
import { EigenLoraxError } from './errors.js';
import { checkMatrix, checkVector, matrix, type Matrix } from './matrix.js';
import * as ops from './native/ops.js';
import type { NativePairCache } from './native/ops.js';
import { float32Scale, integer, invalid, knownKeys, object } from './validate.js';

/**
 * Rank pairs of a bank's hot adapters, kept native-side between calls: at most `budget`
 * bytes (default 16 MiB; least recently used dropped first), each entry `r (d_in + d_out)`
 * floats plus its `K_A K_B` mixing matrix. Holds its own copy of the components, taken
 * now: a bank given this cache applies that copy, and must name the same two matrices
 * (changing their numbers afterwards does not reach the cache). CPU only.
 */
export class PairCache {
  readonly componentsA: Matrix;
  readonly componentsB: Matrix;
  readonly budget: number;
  /** @internal */
  readonly handle: NativePairCache;

  constructor(componentsA: Matrix, componentsB: Matrix, options: { budget?: number } = {}) {
    this.componentsA = checkMatrix(componentsA, 'componentsA');
    this.componentsB = checkMatrix(componentsB, 'componentsB');
    const o = object(options, 'options');
    knownKeys(o, 'options', ['budget']);
    this.budget = integer(o.budget ?? 16 * 2 ** 20, 'options.budget', 0);
    this.handle = ops.createPairCache({ componentsA: this.componentsA, componentsB: this.componentsB, budget: this.budget });
  }

  /** Pairs held now, and their bytes (with their mixing matrices and, not counted, the components' copy). */
  stats(): { pairs: number; bytes: number; budget: number; componentsBytes: number } {
    return { ...ops.pairCacheStats(this.handle), componentsBytes: this.componentsA.data.byteLength + this.componentsB.data.byteLength };
  }
}

export interface EigenAdapterBank {
  /** V_A: d_in x K_A. */
  componentsA: Operand;
  /** U_B: d_out x K_B. */
  componentsB: Operand;
  /**
   * count x K_A x K_B, adapter after adapter, each row-major; on the GPU also a
   * DeviceMatrix of (count K_A) x K_B (the same numbers).
   */
  mixing: Float32Array | DeviceMatrix;
  count: number;
  /**
   * Each adapter's rank r_i (count entries; an upper bound of M_i's): lets the CPU choose
   * between the shared products and rank pairs without factorising every M_i.
   */
  ranks?: Int32Array;
  /** Pairs of hot adapters kept between calls ({@link PairCache}, on these components); used on the CPU. */
  pairCache?: PairCache;
}

interface BaseLayer {
  weight?: Operand;
  bias?: Float32Array;
  device?: Device;
}

/** M = scale alpha beta^T (K_A x K_B), written into `out` (length K_A K_B) when given. */
export function mixingMatrix(alpha: Matrix, beta: Matrix, scale = 1, out?: Float32Array): Float32Array {
  const a = checkMatrix(alpha, 'alpha');
  const b = checkMatrix(beta, 'beta', { cols: a.cols });
  const m = out ?? new Float32Array(a.rows * b.rows);
  if (m.length !== a.rows * b.rows) throw new EigenLoraxError(`out: expected ${a.rows * b.rows} elements`, 'ERR_SHAPE_MISMATCH');
  // K_A x K_B x r multiply-adds: tiny (64 x 64 x 16 = 65k), done once per adapter.
  const r = a.cols;
  for (let i = 0; i < a.rows; i++) {
    for (let j = 0; j < b.rows; j++) {
      let sum = 0;
      for (let t = 0; t < r; t++) sum += a.data[i * r + t]! * b.data[j * r + t]!;
      m[i * b.rows + j] = scale * sum;
    }
  }
  return m;
}

function checkRows(rows: unknown, n: number): Int32Array {
  if (!(rows instanceof Int32Array)) throw invalid('an Int32Array of adapter indices', 'rows', rows);
  if (rows.length !== n) throw new EigenLoraxError(`rows: expected ${n} entries (one per row of x), received ${rows.length}`, 'ERR_SHAPE_MISMATCH');
  return rows;
}

/** y = x W^T + b + for each row b with rows[b] = i >= 0: (x_b V_A) M_i U_B^T. */
export async function eigenBankApply(
  x: Operand,
  bank: EigenAdapterBank,
  rows: Int32Array,
  options: BaseLayer & { out?: Matrix } = {},
): Promise<Matrix> {
  const xm = checkOperand(x, 'x');
  const componentsA = checkOperand(bank.componentsA, 'bank.componentsA', { rows: xm.cols });
  const componentsB = checkOperand(bank.componentsB, 'bank.componentsB');
  const count = integer(bank.count, 'bank.count', 0);
  const mixing =
    bank.mixing instanceof DeviceMatrix
      ? (checkOperand(bank.mixing, 'bank.mixing', { rows: count * componentsA.cols, cols: componentsB.cols }) as DeviceMatrix)
      : checkVector(bank.mixing, 'bank.mixing', count * componentsA.cols * componentsB.cols);
  const o = object(options, 'options') as BaseLayer & { out?: Matrix };
  const dOut = componentsB.rows;
  const weight = o.weight === undefined ? null : checkOperand(o.weight, 'options.weight', { rows: dOut, cols: xm.cols });
  const bias = o.bias === undefined ? null : checkVector(o.bias, 'options.bias', dOut);
  const y = o.out ? checkMatrix(o.out, 'options.out', { rows: xm.rows, cols: dOut }) : matrix(xm.rows, dOut);
  const cache = bank.pairCache;
  if (cache !== undefined && !(cache instanceof PairCache)) throw invalid('a PairCache', 'bank.pairCache', cache);
  if (cache !== undefined && (cache.componentsA !== bank.componentsA || cache.componentsB !== bank.componentsB)) {
    throw new EigenLoraxError('bank.pairCache: made from other components than bank.componentsA and bank.componentsB', 'ERR_INVALID_ARGUMENT');
  }
  const args = { x: xm, componentsA, componentsB, mixing, weight };
  if (bank.ranks !== undefined && (!(bank.ranks instanceof Int32Array) || bank.ranks.length !== count)) {
    throw invalid(`an Int32Array of ${count} ranks`, 'bank.ranks', bank.ranks);
  }
  const fixed = { count, ranks: bank.ranks, rows: checkRows(rows, xm.rows), bias, y };
  await onDevice(o.device, Object.values(args), (device) => {
    const operands = deviceArgs(args);
    if (cache === undefined || device !== 'cpu') return ops.eigenBankApply(device, { ...operands, ...fixed });
    const { componentsA: _a, componentsB: _b, ...rest } = operands;
    return ops.eigenBankApply(device, { ...rest, ...fixed, pairCache: cache.handle });
  });
  return y;
}

/** y = x W^T + b + for each row b with rows[b] = i >= 0: s_i (x_b A_i^T) B_i^T. */
export async function loraBankApply(
  x: Operand,
  adapters: ReadonlyArray<{ A: Operand; B: Operand; scale?: number }>,
  rows: Int32Array,
  options: BaseLayer & { dOut?: number; out?: Matrix } = {},
): Promise<Matrix> {
  const xm = checkOperand(x, 'x');
  if (!Array.isArray(adapters)) throw invalid('an array of { A, B, scale }', 'adapters', adapters);
  const o = object(options, 'options') as BaseLayer & { dOut?: number; out?: Matrix };
  const dOut = adapters[0]?.B.rows ?? o.weight?.rows ?? o.dOut;
  if (dOut === undefined) throw invalid('an adapter, a weight or options.dOut', 'the output width', undefined);
  const list = adapters.map((p, i) => {
    const A = checkOperand(p.A, `adapters[${i}].A`, { cols: xm.cols });
    const B = checkOperand(p.B, `adapters[${i}].B`, { rows: dOut, cols: A.rows });
    return { A, B, scale: float32Scale(p.scale ?? 1, `adapters[${i}].scale`) };
  });
  const weight = o.weight === undefined ? null : checkOperand(o.weight, 'options.weight', { rows: dOut, cols: xm.cols });
  const bias = o.bias === undefined ? null : checkVector(o.bias, 'options.bias', dOut);
  const y = o.out ? checkMatrix(o.out, 'options.out', { rows: xm.rows, cols: dOut }) : matrix(xm.rows, dOut);
  const fixed = { rows: checkRows(rows, xm.rows), bias, y };
  await onDevice(o.device, [xm, weight, ...list.flatMap((p) => [p.A, p.B])], (device) =>
    ops.loraBankApply(device, {
      x: nativeOperand(xm, 'x'),
      adapters: list.map((p, i) => ({ A: nativeOperand(p.A, `adapters[${i}].A`), B: nativeOperand(p.B, `adapters[${i}].B`), scale: p.scale })),
      weight: weight === null ? null : nativeOperand(weight, 'options.weight'),
      ...fixed,
    }),
  );
  return y;
}
