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
 */
import { checkOperand, DeviceMatrix, deviceArgs, nativeOperand, onDevice, type Device, type Operand } from './cuda.js';
import { EigenLoraxError } from './errors.js';
import { checkMatrix, checkVector, matrix, type Matrix } from './matrix.js';
import * as ops from './native/ops.js';
import { float32Scale, integer, invalid, object } from './validate.js';

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
  const args = { x: xm, componentsA, componentsB, mixing, weight };
  const fixed = { count, rows: checkRows(rows, xm.rows), bias, y };
  await onDevice(o.device, Object.values(args), (device) => ops.eigenBankApply(device, { ...deviceArgs(args), ...fixed }));
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
