/**
 * What every training layer is: the `Layer` interface, its tensors (`Parameter`,
 * `NamedTensor`), and the argument checks the layers share. The layers themselves are in
 * layers.ts (Linear, LoRA, EigenLoRA) and activations.ts (ReLU, GELU).
 */
import { EigenLoraxError } from '../errors.js';
import { checkMatrix, type Matrix } from '../matrix.js';
import { invalid } from '../validate.js';


/** A trainable tensor: values updated in place by optimisers, gradient written by backward. */
export interface Parameter {
  /** The state-dict key, e.g. `fc1.lora_A.weight`. */
  readonly name: string;
  /** As saved: `[rows, cols]` for matrices, `[length]` for vectors. */
  readonly shape: readonly number[];
  readonly data: Float32Array;
  readonly grad: Float32Array;
}

/** Any tensor of a layer (trainable or frozen), for state dicts. */
export interface NamedTensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: Float32Array;
  readonly trainable: boolean;
}

export type LayerKind = 'linear' | 'lora' | 'eigenlora' | 'relu' | 'gelu';

export interface BackwardOptions {
  /** Compute dL/dx (default true); the first layer of a network does not need it. */
  inputGrad?: boolean;
}

export interface Layer {
  /** The module name (`fc1`); empty for layers without tensors. */
  readonly name: string;
  readonly kind: LayerKind;
  /** Input width, or null when any width is accepted (activations). */
  readonly inFeatures: number | null;
  /** Output width, or null when it equals the input width (activations). */
  readonly outFeatures: number | null;
  forward(x: Matrix): Promise<Matrix>;
  backward(dy: Matrix, options?: BackwardOptions): Promise<Matrix | null>;
  /** The trainable tensors (empty when frozen). */
  parameters(): Parameter[];
  /** Every tensor, trainable or not. */
  tensors(): NamedTensor[];
}

export function checkName(name: unknown, what: string): string {
  if (typeof name !== 'string' || name.length === 0 || /\s/.test(name)) throw invalid('a module name (non-empty, no spaces)', `${what} name`, name);
  return name;
}

export function noForward(layer: string): EigenLoraxError {
  return new EigenLoraxError(`${layer}: backward() called before forward()`, 'ERR_INVALID_ARGUMENT');
}

export function checkDy(dy: Matrix, x: Matrix, cols: number, layer: string): Matrix {
  checkMatrix(dy, `${layer}: dy`);
  if (dy.rows !== x.rows || dy.cols !== cols) {
    throw new EigenLoraxError(
      `${layer}: dy is ${dy.rows} x ${dy.cols} but the last forward's output was ${x.rows} x ${cols}`,
      'ERR_SHAPE_MISMATCH',
    );
  }
  return dy;
}

export function checkInput(x: Matrix, inFeatures: number, layer: string): Matrix {
  checkMatrix(x, `${layer}: x`);
  if (x.cols !== inFeatures) {
    throw new EigenLoraxError(`${layer}: the input has ${x.cols} features but the layer takes ${inFeatures}`, 'ERR_SHAPE_MISMATCH');
  }
  return x;
}
