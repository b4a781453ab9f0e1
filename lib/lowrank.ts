/**
 * Fused low-rank layers (DESIGN §1), forward and backward, computed natively off the
 * event loop without ever forming a d_out x d_in matrix.
 *
 *   LoRA:      y = x W^T + b + s (x A^T) B^T
 *   EigenLoRA: y = x W^T + b + s ((x V_A) alpha) beta^T U_B^T
 *
 * `weight` (W, d_out x d_in, as PyTorch's nn.Linear stores it) and `bias` are optional;
 * without them the result is the adapter's contribution alone. Outputs are new matrices
 * unless `out` buffers are given (reuse them in training loops).
 *
 * Every call takes `device` (lib/cuda.ts); inputs may be DeviceMatrix operands kept on the
 * GPU, outputs are host matrices. On the GPU the EigenLoRA order is always 'project'.
 */
import { checkOperand, deviceArgs, onDevice, type Device, type Operand } from './cuda.js';
import { EigenLoraxError } from './errors.js';
import { checkMatrix, checkVector, matrix, type Matrix } from './matrix.js';
import * as ops from './native/ops.js';
import type { NativeOrder, OrderName } from './native/ops.js';
import { float32Scale, knownKeys, object, oneOf } from './validate.js';

/** M: Matrix (host), or Operand where DeviceMatrix inputs are allowed (every call here). */
export interface LoraLayer<M extends Operand = Matrix> {
  /** r x d_in */
  A: M;
  /** d_out x r */
  B: M;
  /** s = lora_alpha / r (default 1). */
  scale?: number;
  weight?: M;
  bias?: Float32Array;
}

export interface EigenLoraLayer<M extends Operand = Matrix> {
  /** V_A: d_in x K_A, orthonormal columns (the A-side components). */
  componentsA: M;
  /** K_A x r, trainable. */
  alpha: M;
  /** K_B x r, trainable. */
  beta: M;
  /** U_B: d_out x K_B (the B-side components). */
  componentsB: M;
  scale?: number;
  weight?: M;
  bias?: Float32Array;
}

export type ProductOrder = 'auto' | OrderName;
const orders = ['auto', 'project', 'rebuild'] as const;

export interface LoraGradients {
  /** n x d_in, or null when `inputGrad: false`. */
  dx: Matrix | null;
  dA: Matrix;
  dB: Matrix;
}

export interface EigenLoraGradients {
  dx: Matrix | null;
  dAlpha: Matrix;
  dBeta: Matrix;
}

interface BackwardOptions<Out> {
  /** Compute dx (default true); turn off for the first layer of a network. */
  inputGrad?: boolean;
  out?: Partial<Out>;
  device?: Device;
}

interface LoraArgs {
  A: Operand;
  B: Operand;
  scale: number;
  weight: Operand | null;
  bias: Float32Array | null;
}

interface EigenLoraArgs {
  componentsA: Operand;
  alpha: Operand;
  beta: Operand;
  componentsB: Operand;
  scale: number;
  weight: Operand | null;
  bias: Float32Array | null;
}

function outMatrix(given: Matrix | null | undefined, name: string, rows: number, cols: number): Matrix {
  return given ? checkMatrix(given, name, { rows, cols }) : matrix(rows, cols);
}

function baseArgs(layer: { weight?: Operand; bias?: Float32Array }, dOut: number, dIn: number) {
  return {
    weight: layer.weight === undefined ? null : checkOperand(layer.weight, 'layer.weight', { rows: dOut, cols: dIn }),
    bias: layer.bias === undefined ? null : checkVector(layer.bias, 'layer.bias', dOut),
  };
}

function loraArgs(x: Operand, layerInput: LoraLayer<Operand>): LoraArgs {
  const layer = object(layerInput, 'layer') as unknown as LoraLayer<Operand>;
  knownKeys(layer as unknown as Record<string, unknown>, 'layer', ['A', 'B', 'scale', 'weight', 'bias']);
  const A = checkOperand(layer.A, 'layer.A', { cols: x.cols });
  const B = checkOperand(layer.B, 'layer.B', { cols: A.rows });
  return { A, B, scale: float32Scale(layer.scale ?? 1, 'layer.scale'), ...baseArgs(layer, B.rows, x.cols) };
}

function eigenLoraArgs(x: Operand, layerInput: EigenLoraLayer<Operand>): EigenLoraArgs {
  const layer = object(layerInput, 'layer') as unknown as EigenLoraLayer<Operand>;
  knownKeys(layer as unknown as Record<string, unknown>, 'layer', [
    'componentsA',
    'alpha',
    'beta',
    'componentsB',
    'scale',
    'weight',
    'bias',
  ]);
  const componentsA = checkOperand(layer.componentsA, 'layer.componentsA', { rows: x.cols });
  const alpha = checkOperand(layer.alpha, 'layer.alpha', { rows: componentsA.cols });
  const componentsB = checkOperand(layer.componentsB, 'layer.componentsB');
  const beta = checkOperand(layer.beta, 'layer.beta', { rows: componentsB.cols, cols: alpha.cols });
  return {
    componentsA,
    alpha,
    beta,
    componentsB,
    scale: float32Scale(layer.scale ?? 1, 'layer.scale'),
    ...baseArgs(layer, componentsB.rows, x.cols),
  };
}

function orderOption(value: unknown): NativeOrder {
  return oneOf(value ?? 'auto', 'options.order', orders);
}

// The GPU computes EigenLoRA layers in the 'project' order only.
function checkGpuOrder(order: NativeOrder): void {
  if (order === 'rebuild') throw new EigenLoraxError("options.order: 'rebuild' is not available on the GPU (use 'auto' or 'project')", 'ERR_INVALID_ARGUMENT');
}

/** y = x W^T + b + s (x A^T) B^T, x: n x d_in, y: n x d_out. */
export async function loraForward(x: Operand, layer: LoraLayer<Operand>, options: { out?: Matrix; device?: Device } = {}): Promise<Matrix> {
  const xm = checkOperand(x, 'x');
  const args = { ...loraArgs(xm, layer), x: xm };
  const o = object(options, 'options');
  const y = outMatrix(o.out as Matrix | undefined, 'options.out', xm.rows, args.B.rows);
  await onDevice(o.device, Object.values(args), (device) => ops.loraForward(device, { ...deviceArgs(args), y }));
  return y;
}

/** Gradients of a LoRA layer given dy = dL/dy: dA, dB and (by default) dx. W is frozen. */
export async function loraBackward(
  x: Operand,
  dy: Operand,
  layer: LoraLayer<Operand>,
  options: BackwardOptions<LoraGradients> = {},
): Promise<LoraGradients> {
  const xm = checkOperand(x, 'x');
  const layerArgs = loraArgs(xm, layer);
  const args = { ...layerArgs, x: xm, dy: checkOperand(dy, 'dy', { rows: xm.rows, cols: layerArgs.B.rows }) };
  const o = object(options, 'options') as BackwardOptions<LoraGradients>;
  const out = o.out ?? {};
  const dx = o.inputGrad === false ? null : outMatrix(out.dx, 'options.out.dx', xm.rows, xm.cols);
  const dA = outMatrix(out.dA, 'options.out.dA', args.A.rows, args.A.cols);
  const dB = outMatrix(out.dB, 'options.out.dB', args.B.rows, args.B.cols);
  await onDevice(o.device, Object.values(args), (device) => ops.loraBackward(device, { ...deviceArgs(args), dx, dA, dB }));
  return { dx, dA, dB };
}

/** y = x W^T + b + s ((x V_A) alpha) beta^T U_B^T, in the cheaper order of products. */
export async function eigenLoraForward(
  x: Operand,
  layer: EigenLoraLayer<Operand>,
  options: { out?: Matrix; order?: ProductOrder; device?: Device } = {},
): Promise<Matrix> {
  const xm = checkOperand(x, 'x');
  const args = { ...eigenLoraArgs(xm, layer), x: xm };
  const o = object(options, 'options');
  const order = orderOption(o.order);
  const y = outMatrix(o.out as Matrix | undefined, 'options.out', xm.rows, args.componentsB.rows);
  await onDevice(o.device, Object.values(args), (device) => {
    if (device === 'cuda') checkGpuOrder(order);
    return ops.eigenLoraForward(device, { ...deviceArgs(args), y, order });
  });
  return y;
}

/** Gradients of an EigenLoRA layer: dAlpha, dBeta and (by default) dx. Components and W are frozen. */
export async function eigenLoraBackward(
  x: Operand,
  dy: Operand,
  layer: EigenLoraLayer<Operand>,
  options: BackwardOptions<EigenLoraGradients> & { order?: ProductOrder } = {},
): Promise<EigenLoraGradients> {
  const xm = checkOperand(x, 'x');
  const layerArgs = eigenLoraArgs(xm, layer);
  const args = { ...layerArgs, x: xm, dy: checkOperand(dy, 'dy', { rows: xm.rows, cols: layerArgs.componentsB.rows }) };
  const o = object(options, 'options') as BackwardOptions<EigenLoraGradients> & { order?: ProductOrder };
  const order = orderOption(o.order);
  const out = o.out ?? {};
  const dx = o.inputGrad === false ? null : outMatrix(out.dx, 'options.out.dx', xm.rows, xm.cols);
  const dAlpha = outMatrix(out.dAlpha, 'options.out.dAlpha', args.alpha.rows, args.alpha.cols);
  const dBeta = outMatrix(out.dBeta, 'options.out.dBeta', args.beta.rows, args.beta.cols);
  await onDevice(o.device, Object.values(args), (device) => {
    if (device === 'cuda') checkGpuOrder(order);
    return ops.eigenLoraBackward(device, { ...deviceArgs(args), dx, dAlpha, dBeta, order });
  });
  return { dx, dAlpha, dBeta };
}

export interface OrderQuery {
  rows: number;
  dIn: number;
  dOut: number;
  kA: number;
  kB: number;
  rank: number;
  backward?: boolean;
  inputGrad?: boolean;
}

/** The order of products `auto` picks for these shapes (by counting multiply-adds). */
export function chooseProductOrder(query: OrderQuery): OrderName {
  const q = object(query, 'query') as unknown as OrderQuery;
  return ops.chooseOrder({ ...q, backward: q.backward ?? false, inputGrad: q.inputGrad ?? true });
}

/** A plain layer y = x W^T + b (W: d_out x d_in as nn.Linear stores it; bias optional). */
export async function linearForward(
  x: Matrix,
  layer: { weight: Matrix; bias?: Float32Array },
  options: { out?: Matrix } = {},
): Promise<Matrix> {
  const xm = checkMatrix(x, 'x');
  const weight = checkMatrix(layer.weight, 'layer.weight', { cols: xm.cols });
  const bias = layer.bias === undefined ? null : checkVector(layer.bias, 'layer.bias', weight.rows);
  const y = outMatrix(object(options, 'options').out as Matrix | undefined, 'options.out', xm.rows, weight.rows);
  await ops.linearForward({ x: xm, weight, bias, y });
  return y;
}

export interface LinearGradients {
  /** n x d_in (null unless `inputGrad` and a weight were given). */
  dx: Matrix | null;
  /** d_out x d_in (null unless `weightGrad`). */
  dWeight: Matrix | null;
  /** d_out (null unless `biasGrad`). */
  dBias: Float32Array | null;
}

/**
 * Gradients of y = x W^T + b given dy: dx = dy W, dWeight = dy^T x, dBias = sum of dy's
 * rows. Ask only for what is needed (a frozen layer needs dx alone).
 */
export async function linearBackward(
  x: Matrix,
  dy: Matrix,
  layer: { weight?: Matrix },
  options: {
    inputGrad?: boolean;
    weightGrad?: boolean;
    biasGrad?: boolean;
    out?: Partial<LinearGradients>;
  } = {},
): Promise<LinearGradients> {
  const xm = checkMatrix(x, 'x');
  const dym = checkMatrix(dy, 'dy', { rows: xm.rows });
  const o = object(options, 'options') as { inputGrad?: boolean; weightGrad?: boolean; biasGrad?: boolean; out?: Partial<LinearGradients> };
  const weight = layer.weight === undefined ? null : checkMatrix(layer.weight, 'layer.weight', { rows: dym.cols, cols: xm.cols });
  const out = o.out ?? {};
  const dx = o.inputGrad === false || weight === null ? null : outMatrix(out.dx, 'options.out.dx', xm.rows, xm.cols);
  const dWeight = o.weightGrad ? outMatrix(out.dWeight, 'options.out.dWeight', dym.cols, xm.cols) : null;
  const dBias = o.biasGrad ? (out.dBias ? checkVector(out.dBias, 'options.out.dBias', dym.cols) : new Float32Array(dym.cols)) : null;
  await ops.linearBackward({ x: xm, dy: dym, weight, dx, dWeight, dBias });
  return { dx, dWeight, dBias };
}

/**
 * In place: target += scale B A (target d_out x d_in), or target += scale (B A)^T when
 * `transposed` (target d_in x d_out: GPT-2 Conv1D, fan_in_fan_out). Merging an adapter
 * into a base weight (a negative scale unmerges).
 */
export async function addLowRank(
  target: Matrix,
  factors: { A: Matrix; B: Matrix; scale?: number },
  options: { transposed?: boolean } = {},
): Promise<Matrix> {
  const t = checkMatrix(target, 'target');
  const A = checkMatrix(factors.A, 'factors.A');
  const B = checkMatrix(factors.B, 'factors.B', { cols: A.rows });
  const transposed = object(options, 'options').transposed === true;
  checkMatrix(t, 'target', transposed ? { rows: A.cols, cols: B.rows } : { rows: B.rows, cols: A.cols });
  const scale = float32Scale(factors.scale ?? 1, 'factors.scale');
  await ops.addLowRank({ target: t, A, B, scale, transposed });
  return t;
}
