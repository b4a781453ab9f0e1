/**
 * Layers for training: `Linear` (frozen or trainable), `LoRA`, `EigenLoRA` (the
 * activations `ReLU` and `GELU` are in activations.ts, re-exported here).
 *
 * Every layer maps an `n x in` batch to an `n x out` batch. `forward` keeps a reference to
 * its input for `backward`, and writes its output into a buffer it owns (one per batch
 * size), overwritten by the next forward of the same batch size: copy it to keep it.
 * `backward(dy)` writes the gradients of the trainable tensors into their `grad` arrays
 * (overwriting, not accumulating) and returns dL/dx (or null when `inputGrad: false`).
 *
 * The large products run in the native kernels (DESIGN §1): `linearForward` /
 * `linearBackward` (dx = dy W, dW = dy^T x, db = column sums of dy) for Linear,
 * `loraForward`/`loraBackward` for LoRA, `eigenLoraForward`/`eigenLoraBackward` for
 * EigenLoRA.
 *
 * Tensor names follow PyTorch's `state_dict`: `<name>.weight` (`out x in`) and
 * `<name>.bias` for the (base) linear layer, `<name>.lora_A.weight` (`r x in`) and
 * `<name>.lora_B.weight` (`out x r`) for LoRA, `<name>.eigenlora_A.components`
 * (`in x K_A`), `<name>.eigenlora_B.components` (`out x K_B`),
 * `<name>.eigenlora_A.loadings` (alpha, `K_A x r`) and `<name>.eigenlora_B.loadings`
 * (beta, `K_B x r`) for EigenLoRA (DESIGN §4 key names).
 */
import { completeBasis } from '../linalg.js';
import {
  eigenLoraBackward,
  eigenLoraForward,
  linearBackward,
  linearForward,
  loraBackward,
  loraForward,
  type ProductOrder,
} from '../lowrank.js';
import { checkMatrix, checkVector, matrix, type Matrix } from '../matrix.js';
import { ownedMatrix } from '../native/ops.js';
import { finiteNumber, integer, invalid, knownKeys, object, oneOf } from '../validate.js';
import { BufferPool } from './buffers.js';
import { checkDy, checkInput, checkName, noForward, type BackwardOptions, type Layer, type NamedTensor, type Parameter } from './layer.js';
import { Random } from '../random.js';

export type { BackwardOptions, Layer, LayerKind, NamedTensor, Parameter } from './layer.js';
export { GELU, ReLU, type GeluApproximation } from './activations.js';

/** U(-1/sqrt(fanIn), 1/sqrt(fanIn)): PyTorch's kaiming_uniform_(a=sqrt(5)) and nn.Linear's bias init. */
function kaimingUniform(out: Float32Array, fanIn: number, random: Random): Float32Array {
  const bound = 1 / Math.sqrt(fanIn);
  return random.fillUniform(out, -bound, bound);
}

/** The frozen base of LoRA/EigenLoRA layers, or a plain Linear layer's weights. */
export interface LinearWeights {
  /** `out x in`, as nn.Linear stores it. */
  weight: Matrix;
  /** `out`, or null/absent for no bias. */
  bias?: Float32Array | null;
}

function checkWeights(value: unknown, what: string): { weight: Matrix; bias: Float32Array | null } {
  const w = object(value, what) as unknown as LinearWeights;
  const weight = checkMatrix(w.weight, `${what}.weight`);
  const bias = w.bias === undefined || w.bias === null ? null : checkVector(w.bias, `${what}.bias`, weight.rows);
  return { weight, bias };
}

function baseTensors(name: string, weight: Matrix, bias: Float32Array | null, trainable: boolean): NamedTensor[] {
  const out: NamedTensor[] = [{ name: `${name}.weight`, shape: [weight.rows, weight.cols], data: weight.data, trainable }];
  if (bias !== null) out.push({ name: `${name}.bias`, shape: [bias.length], data: bias, trainable });
  return out;
}

// ---------------------------------------------------------------------------------------
// Linear

export interface LinearOptions extends LinearWeights {
  /** Train the weight and bias (default false: frozen). */
  trainable?: boolean;
}

export interface CreateLinearOptions {
  /** With a bias (default true). */
  bias?: boolean;
  /** Seed of the initialisation (default 0). */
  seed?: number;
  /** Default true. */
  trainable?: boolean;
}

/** y = x W^T + b, nn.Linear. Frozen unless `trainable`. */
export class Linear implements Layer {
  readonly kind = 'linear' as const;
  readonly name: string;
  readonly weight: Matrix;
  readonly bias: Float32Array | null;
  readonly inFeatures: number;
  readonly outFeatures: number;
  #trainable: boolean;
  #gradW: Matrix | null = null;
  #gradB: Float32Array | null = null;
  readonly #pool = new BufferPool();
  #x: Matrix | null = null;

  constructor(name: string, options: LinearOptions) {
    this.name = checkName(name, 'Linear');
    const o = object(options, `Linear ${name} options`);
    knownKeys(o, `Linear ${name} options`, ['weight', 'bias', 'trainable']);
    const { weight, bias } = checkWeights(o, `Linear ${name}`);
    this.weight = weight;
    this.bias = bias;
    this.inFeatures = weight.cols;
    this.outFeatures = weight.rows;
    this.#trainable = false;
    if (o.trainable !== undefined && typeof o.trainable !== 'boolean') throw invalid('true or false', `Linear ${name} options.trainable`, o.trainable);
    this.trainable = o.trainable === true;
  }

  /** A new layer initialised as PyTorch's nn.Linear: weight and bias ~ U(-1/sqrt(in), 1/sqrt(in)). */
  static create(name: string, inFeatures: number, outFeatures: number, options: CreateLinearOptions = {}): Linear {
    const o = object(options, 'options');
    knownKeys(o, 'options', ['bias', 'seed', 'trainable']);
    const dIn = integer(inFeatures, 'inFeatures', 1);
    const dOut = integer(outFeatures, 'outFeatures', 1);
    const random = new Random(integer(o.seed ?? 0, 'options.seed', 0));
    const weight = ownedMatrix(dOut, dIn); // every call reads it: owned memory spares the copy
    kaimingUniform(weight.data, dIn, random);
    const bias = o.bias === false ? null : kaimingUniform(new Float32Array(dOut), dIn, random);
    return new Linear(name, { weight, bias, trainable: o.trainable !== false });
  }

  get trainable(): boolean {
    return this.#trainable;
  }

  set trainable(value: boolean) {
    this.#trainable = value === true;
    if (this.#trainable && this.#gradW === null) {
      this.#gradW = matrix(this.outFeatures, this.inFeatures);
      if (this.bias !== null) this.#gradB = new Float32Array(this.bias.length);
    }
  }

  async forward(x: Matrix): Promise<Matrix> {
    checkInput(x, this.inFeatures, this.name);
    const y = this.#pool.get('y', x.rows, this.outFeatures);
    await linearForward(x, this.bias === null ? { weight: this.weight } : { weight: this.weight, bias: this.bias }, { out: y });
    this.#x = x;
    return y;
  }

  async backward(dy: Matrix, options: BackwardOptions = {}): Promise<Matrix | null> {
    const x = this.#x;
    if (x === null) throw noForward(this.name);
    checkDy(dy, x, this.outFeatures, this.name);
    const inputGrad = options.inputGrad !== false;
    const weightGrad = this.#trainable;
    const biasGrad = this.#trainable && this.#gradB !== null;
    if (!inputGrad && !weightGrad) return null;
    const dx = inputGrad ? this.#pool.get('dx', x.rows, this.inFeatures) : null;
    await linearBackward(
      x,
      dy,
      { weight: this.weight },
      {
        inputGrad,
        weightGrad,
        biasGrad,
        out: {
          ...(dx === null ? {} : { dx }),
          ...(weightGrad ? { dWeight: this.#gradW as Matrix } : {}),
          ...(biasGrad ? { dBias: this.#gradB as Float32Array } : {}),
        },
      },
    );
    return dx;
  }

  parameters(): Parameter[] {
    if (!this.#trainable) return [];
    const out: Parameter[] = [{ name: `${this.name}.weight`, shape: [this.outFeatures, this.inFeatures], data: this.weight.data, grad: (this.#gradW as Matrix).data }];
    if (this.bias !== null) out.push({ name: `${this.name}.bias`, shape: [this.outFeatures], data: this.bias, grad: this.#gradB as Float32Array });
    return out;
  }

  tensors(): NamedTensor[] {
    return baseTensors(this.name, this.weight, this.bias, this.#trainable);
  }
}

function baseOf(value: unknown, what: string): { weight: Matrix; bias: Float32Array | null } {
  if (value instanceof Linear) return { weight: value.weight, bias: value.bias };
  return checkWeights(value, what);
}

/** What `AdaptedLinear`'s constructor takes: the checked name, options object and frozen base. */
interface AdaptedInit {
  name: string;
  /** How the options are named in messages (`LoRA q options`). */
  where: string;
  options: Record<string, unknown>;
  weight: Matrix;
  bias: Float32Array | null;
}

function adaptedInit(name: string, label: string, options: unknown, keys: readonly string[]): AdaptedInit {
  const checked = checkName(name, label);
  const where = `${label} ${name} options`;
  const o = object(options, where);
  knownKeys(o, where, keys);
  return { name: checked, where, options: o, ...baseOf(o.base, `${where}.base`) };
}

/**
 * A frozen base linear layer plus a trainable low-rank adapter (LoRA, EigenLoRA): the base,
 * the batch buffers and the forward/backward bookkeeping; subclasses supply the kernels and
 * their trainable tensors.
 */
abstract class AdaptedLinear implements Layer {
  abstract readonly kind: 'lora' | 'eigenlora';
  readonly name: string;
  readonly weight: Matrix;
  readonly bias: Float32Array | null;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly #pool = new BufferPool();
  #x: Matrix | null = null;

  protected constructor(init: AdaptedInit) {
    this.name = init.name;
    this.weight = init.weight;
    this.bias = init.bias;
    this.inFeatures = init.weight.cols;
    this.outFeatures = init.weight.rows;
  }

  /** y = the layer's output for x, written into `y`. */
  protected abstract runForward(x: Matrix, y: Matrix): Promise<void>;
  /** The adapter's gradients into its own buffers, and dx into `dx` when not null. */
  protected abstract runBackward(x: Matrix, dy: Matrix, dx: Matrix | null): Promise<void>;
  abstract parameters(): Parameter[];
  /** Frozen tensors of the adapter beyond the base (EigenLoRA's components). */
  protected frozenTensors(): NamedTensor[] {
    return [];
  }

  async forward(x: Matrix): Promise<Matrix> {
    checkInput(x, this.inFeatures, this.name);
    const y = this.#pool.get('y', x.rows, this.outFeatures);
    await this.runForward(x, y);
    this.#x = x;
    return y;
  }

  async backward(dy: Matrix, options: BackwardOptions = {}): Promise<Matrix | null> {
    const x = this.#x;
    if (x === null) throw noForward(this.name);
    checkDy(dy, x, this.outFeatures, this.name);
    const dx = options.inputGrad !== false ? this.#pool.get('dx', x.rows, this.inFeatures) : null;
    await this.runBackward(x, dy, dx);
    return dx;
  }

  tensors(): NamedTensor[] {
    return [
      ...baseTensors(this.name, this.weight, this.bias, false),
      ...this.frozenTensors(),
      ...this.parameters().map((p) => ({ name: p.name, shape: p.shape, data: p.data, trainable: true })),
    ];
  }
}

// ---------------------------------------------------------------------------------------
// LoRA

export interface LoRAOptions {
  /** The frozen base layer (a Linear, whose weight and bias are shared, not copied) or its weights. */
  base: Linear | LinearWeights;
  /** r. */
  rank: number;
  /** PEFT's `lora_alpha` (default: rank, so the scale is 1). */
  alpha?: number;
  /** rsLoRA: scale = alpha / sqrt(r) instead of alpha / r. */
  rslora?: boolean;
  /** Seed of A's initialisation (default 0). */
  seed?: number;
  /** Initial factors instead of PEFT's (A Kaiming-uniform, B = 0). */
  A?: Matrix;
  B?: Matrix;
}

/** y = x W^T + b + s (x A^T) B^T with W, b frozen and A (r x in), B (out x r) trainable. */
export class LoRA extends AdaptedLinear {
  readonly kind = 'lora' as const;
  readonly A: Matrix;
  readonly B: Matrix;
  readonly rank: number;
  /** PEFT lora_alpha. */
  readonly alpha: number;
  readonly rslora: boolean;
  readonly scale: number;
  readonly #gradA: Matrix;
  readonly #gradB: Matrix;

  constructor(name: string, options: LoRAOptions) {
    const init = adaptedInit(name, 'LoRA', options, ['base', 'rank', 'alpha', 'rslora', 'seed', 'A', 'B']);
    super(init);
    const { where, options: o } = init;
    this.rank = integer(o.rank, `${where}.rank`, 1);
    this.alpha = finiteNumber(o.alpha ?? this.rank, `${where}.alpha`);
    if (o.rslora !== undefined && typeof o.rslora !== 'boolean') throw invalid('true or false', `${where}.rslora`, o.rslora);
    this.rslora = o.rslora === true;
    this.scale = this.rslora ? this.alpha / Math.sqrt(this.rank) : this.alpha / this.rank;
    if (o.A !== undefined || o.B !== undefined) {
      if (o.A === undefined || o.B === undefined) throw invalid('both A and B, or neither', where, o.A === undefined ? o.B : o.A);
      this.A = checkMatrix(o.A, `${where}.A`, { rows: this.rank, cols: this.inFeatures });
      this.B = checkMatrix(o.B, `${where}.B`, { rows: this.outFeatures, cols: this.rank });
    } else {
      const random = new Random(integer(o.seed ?? 0, `${where}.seed`, 0));
      this.A = matrix(this.rank, this.inFeatures);
      kaimingUniform(this.A.data, this.inFeatures, random);
      this.B = matrix(this.outFeatures, this.rank);
    }
    this.#gradA = matrix(this.rank, this.inFeatures);
    this.#gradB = matrix(this.outFeatures, this.rank);
  }

  #layer() {
    const l = { A: this.A, B: this.B, scale: this.scale, weight: this.weight };
    return this.bias === null ? l : { ...l, bias: this.bias };
  }

  protected async runForward(x: Matrix, y: Matrix): Promise<void> {
    await loraForward(x, this.#layer(), { out: y });
  }

  protected async runBackward(x: Matrix, dy: Matrix, dx: Matrix | null): Promise<void> {
    await loraBackward(x, dy, this.#layer(), {
      inputGrad: dx !== null,
      out: { ...(dx === null ? {} : { dx }), dA: this.#gradA, dB: this.#gradB },
    });
  }

  parameters(): Parameter[] {
    return [
      { name: `${this.name}.lora_A.weight`, shape: [this.rank, this.inFeatures], data: this.A.data, grad: this.#gradA.data },
      { name: `${this.name}.lora_B.weight`, shape: [this.outFeatures, this.rank], data: this.B.data, grad: this.#gradB.data },
    ];
  }
}

// ---------------------------------------------------------------------------------------
// EigenLoRA

export type EigenLoRAInit = 'zero-beta' | 'uniform' | 'project';
const eigenInits = ['zero-beta', 'uniform', 'project'] as const;

export interface EigenLoRAOptions {
  base: Linear | LinearWeights;
  /** V_A, `in x K_A`, orthonormal columns (augmented directions included). */
  componentsA: Matrix;
  /** U_B, `out x K_B`. */
  componentsB: Matrix;
  /** r: columns of alpha and beta. */
  rank: number;
  /** s (default 1). */
  scale?: number;
  /**
   * - `'zero-beta'` (default): beta = 0 and alpha ~ U(-1/sqrt(K_A), 1/sqrt(K_A)) (PEFT's
   *   A initialisation with fan-in K_A), so training starts at the base model, as LoRA;
   * - `'uniform'`: alpha, beta ~ U(-0.5, 0.5), as the reference implementation;
   * - `'project'`: the given `loadings` (e.g. an adapter projected on the components).
   */
  init?: EigenLoRAInit;
  /** For `init: 'project'`: alpha (`K_A x r`) and beta (`K_B x r`), copied. */
  loadings?: { alpha: Matrix; beta: Matrix };
  /** Seed of the random initialisations (default 0). */
  seed?: number;
  /** Order of products in the kernels (default 'auto': the cheaper by counting). */
  order?: ProductOrder;
}

/**
 * y = x W^T + b + s ((x V_A) alpha) beta^T U_B^T with W, b, V_A, U_B frozen and
 * alpha (K_A x r), beta (K_B x r) trainable.
 */
export class EigenLoRA extends AdaptedLinear {
  readonly kind = 'eigenlora' as const;
  readonly componentsA: Matrix;
  readonly componentsB: Matrix;
  readonly alpha: Matrix;
  readonly beta: Matrix;
  readonly rank: number;
  readonly scale: number;
  readonly order: ProductOrder;
  readonly #gradAlpha: Matrix;
  readonly #gradBeta: Matrix;

  constructor(name: string, options: EigenLoRAOptions) {
    const start = adaptedInit(name, 'EigenLoRA', options, ['base', 'componentsA', 'componentsB', 'rank', 'scale', 'init', 'loadings', 'seed', 'order']);
    super(start);
    const { where, options: o } = start;
    this.componentsA = checkMatrix(o.componentsA, `${where}.componentsA`, { rows: this.inFeatures });
    this.componentsB = checkMatrix(o.componentsB, `${where}.componentsB`, { rows: this.outFeatures });
    const kA = this.componentsA.cols;
    const kB = this.componentsB.cols;
    this.rank = integer(o.rank, `${where}.rank`, 1);
    this.scale = finiteNumber(o.scale ?? 1, `${where}.scale`);
    this.order = oneOf(o.order ?? 'auto', `${where}.order`, ['auto', 'project', 'rebuild'] as const);
    const init = oneOf(o.init ?? 'zero-beta', `${where}.init`, eigenInits);
    const random = new Random(integer(o.seed ?? 0, `${where}.seed`, 0));
    this.alpha = matrix(kA, this.rank);
    this.beta = matrix(kB, this.rank);
    if (init === 'project') {
      const l = object(o.loadings, `${where}.loadings`);
      this.alpha.data.set(checkMatrix(l.alpha, `${where}.loadings.alpha`, { rows: kA, cols: this.rank }).data);
      this.beta.data.set(checkMatrix(l.beta, `${where}.loadings.beta`, { rows: kB, cols: this.rank }).data);
    } else {
      if (o.loadings !== undefined) throw invalid("init: 'project' when loadings are given", `${where}.init`, init);
      if (init === 'uniform') {
        random.fillUniform(this.alpha.data, -0.5, 0.5);
        random.fillUniform(this.beta.data, -0.5, 0.5);
      } else {
        kaimingUniform(this.alpha.data, kA, random);
      }
    }
    this.#gradAlpha = matrix(kA, this.rank);
    this.#gradBeta = matrix(kB, this.rank);
  }

  #layer() {
    const l = {
      componentsA: this.componentsA,
      alpha: this.alpha,
      beta: this.beta,
      componentsB: this.componentsB,
      scale: this.scale,
      weight: this.weight,
    };
    return this.bias === null ? l : { ...l, bias: this.bias };
  }

  protected async runForward(x: Matrix, y: Matrix): Promise<void> {
    await eigenLoraForward(x, this.#layer(), { out: y, order: this.order });
  }

  protected async runBackward(x: Matrix, dy: Matrix, dx: Matrix | null): Promise<void> {
    await eigenLoraBackward(x, dy, this.#layer(), {
      inputGrad: dx !== null,
      order: this.order,
      out: { ...(dx === null ? {} : { dx }), dAlpha: this.#gradAlpha, dBeta: this.#gradBeta },
    });
  }

  parameters(): Parameter[] {
    return [
      { name: `${this.name}.eigenlora_A.loadings`, shape: [this.alpha.rows, this.rank], data: this.alpha.data, grad: this.#gradAlpha.data },
      { name: `${this.name}.eigenlora_B.loadings`, shape: [this.beta.rows, this.rank], data: this.beta.data, grad: this.#gradBeta.data },
    ];
  }

  protected override frozenTensors(): NamedTensor[] {
    const a = this.componentsA;
    const b = this.componentsB;
    return [
      { name: `${this.name}.eigenlora_A.components`, shape: [a.rows, a.cols], data: a.data, trainable: false },
      { name: `${this.name}.eigenlora_B.components`, shape: [b.rows, b.cols], data: b.data, trainable: false },
    ];
  }
}

/**
 * EigenLoRAx augmentation: `components` (orthonormal columns) followed by `extra` random
 * orthonormal directions orthogonal to them (seeded), as one `rows x (K + extra)` matrix.
 */
export async function augmentComponents(components: Matrix, extra: number, options: { seed?: number } = {}): Promise<Matrix> {
  const c = checkMatrix(components, 'components');
  const count = integer(extra, 'extra', 0, c.rows - c.cols);
  if (count === 0) return matrix(c.rows, c.cols, c.data.slice());
  const more = await completeBasis(c, count, options);
  const out = matrix(c.rows, c.cols + count);
  for (let i = 0; i < c.rows; i++) {
    out.data.set(c.data.subarray(i * c.cols, (i + 1) * c.cols), i * out.cols);
    out.data.set(more.data.subarray(i * count, (i + 1) * count), i * out.cols + c.cols);
  }
  return out;
}
