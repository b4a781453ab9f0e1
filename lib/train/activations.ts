/**
 * Activation layers for training: ReLU (native, kernels.ts) and GELU (exact or tanh).
 * Each keeps what its backward needs from the last forward, in buffers it owns (one per
 * batch size), overwritten by the next forward of the same batch size.
 */
import { checkMatrix, type Matrix } from '../matrix.js';
import { invalid, knownKeys, object, oneOf } from '../validate.js';
import { BufferPool } from './buffers.js';
import { geluErfBackward, geluErfForward, geluTanhBackward, geluTanhForward, reluBackward, reluForward } from './kernels.js';
import { checkDy, noForward, type BackwardOptions, type Layer, type NamedTensor, type Parameter } from './layer.js';

/** max(x, 0), elementwise. */
export class ReLU implements Layer {
  readonly kind = 'relu' as const;
  readonly name: string;
  readonly inFeatures = null;
  readonly outFeatures = null;
  readonly #pool = new BufferPool();
  #y: Matrix | null = null;

  constructor(name = '') {
    if (typeof name !== 'string') throw invalid('a string', 'ReLU name', name);
    this.name = name;
  }

  async forward(x: Matrix): Promise<Matrix> {
    checkMatrix(x, `${this.name || 'ReLU'}: x`);
    const y = this.#pool.get('y', x.rows, x.cols);
    reluForward(x.data, y.data);
    this.#y = y;
    return y;
  }

  async backward(dy: Matrix, options: BackwardOptions = {}): Promise<Matrix | null> {
    const y = this.#y;
    if (y === null) throw noForward(this.name || 'ReLU');
    checkDy(dy, y, y.cols, this.name || 'ReLU');
    if (options.inputGrad === false) return null;
    const dx = this.#pool.get('dx', y.rows, y.cols);
    reluBackward(y.data, dy.data, dx.data);
    return dx;
  }

  parameters(): Parameter[] {
    return [];
  }

  tensors(): NamedTensor[] {
    return [];
  }
}

export type GeluApproximation = 'none' | 'tanh';

/**
 * GELU. `approximate: 'none'` (default, PyTorch's default) is x Phi(x) with the normal
 * CDF through erf (evaluated to ~1.2e-7); `'tanh'` is PyTorch's tanh approximation.
 */
export class GELU implements Layer {
  readonly kind = 'gelu' as const;
  readonly name: string;
  readonly approximate: GeluApproximation;
  readonly inFeatures = null;
  readonly outFeatures = null;
  readonly #pool = new BufferPool();
  #x: Matrix | null = null;
  #aux: Matrix | null = null;

  constructor(name = '', options: { approximate?: GeluApproximation } = {}) {
    if (typeof name !== 'string') throw invalid('a string', 'GELU name', name);
    this.name = name;
    const o = object(options, 'GELU options');
    knownKeys(o, 'GELU options', ['approximate']);
    this.approximate = oneOf(o.approximate ?? 'none', 'GELU options.approximate', ['none', 'tanh'] as const);
  }

  async forward(x: Matrix): Promise<Matrix> {
    checkMatrix(x, `${this.name || 'GELU'}: x`);
    const y = this.#pool.get('y', x.rows, x.cols);
    const aux = this.#pool.get('aux', x.rows, x.cols);
    if (this.approximate === 'tanh') geluTanhForward(x.data, y.data, aux.data);
    else geluErfForward(x.data, y.data, aux.data);
    this.#x = x;
    this.#aux = aux;
    return y;
  }

  async backward(dy: Matrix, options: BackwardOptions = {}): Promise<Matrix | null> {
    const x = this.#x;
    const aux = this.#aux;
    if (x === null || aux === null) throw noForward(this.name || 'GELU');
    checkDy(dy, x, x.cols, this.name || 'GELU');
    if (options.inputGrad === false) return null;
    const dx = this.#pool.get('dx', x.rows, x.cols);
    if (this.approximate === 'tanh') geluTanhBackward(x.data, aux.data, dy.data, dx.data);
    else geluErfBackward(x.data, aux.data, dy.data, dx.data);
    return dx;
  }

  parameters(): Parameter[] {
    return [];
  }

  tensors(): NamedTensor[] {
    return [];
  }
}
