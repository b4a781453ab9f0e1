/**
 * A sequential model: layers applied in order, backward in reverse, its trainable
 * parameters, and its state dict in safetensors (PyTorch names: `fc1.weight`, ...).
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { ioError } from '../io/files.js';
import { openSafetensors, writeSafetensors, type SafetensorsWriteDType } from '../io/safetensors.js';
import { checkMatrix, matrix, type Matrix } from '../matrix.js';
import { integer, invalid, knownKeys, object } from '../validate.js';
import { checkDataset, type Dataset } from '../data/dataset.js';
import { FusedPasses } from './fused.js';
import type { Layer, NamedTensor, Parameter } from './layers.js';
import { crossEntropyLoss, isLabels, mseLoss, resolveLoss, type Labels, type Loss, type LossName, type LossValue, type Targets } from './losses.js';

/** A tensor of a state dict: its shape and row-major f32 values. */
export interface StateTensor {
  shape: readonly number[];
  data: Float32Array;
}

export type StateDict = Map<string, StateTensor>;

export interface LoadStateResult {
  /** Tensors of the model that were set. */
  loaded: string[];
  /** Tensors of the model that the source did not have (only without `strict`). */
  missing: string[];
  /** Tensors of the source that the model does not have (only without `strict`). */
  unexpected: string[];
}

export interface EvaluateOptions {
  /** 'cross-entropy' (default) or 'mse' or a Loss. */
  loss?: LossName | Loss;
  /** Rows per forward pass (default 1024). */
  batchSize?: number;
}

export interface Evaluation {
  /** Mean loss over all rows. */
  loss: number;
  /** Fraction of rows classified correctly (classification losses), else null. */
  accuracy: number | null;
  rows: number;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export class Sequential {
  readonly layers: readonly Layer[];
  /** Input width of the model. */
  readonly inFeatures: number;
  /** Output width of the model. */
  readonly outFeatures: number;
  /** One native job per pass (or per training step) when every layer allows it (fused.ts), else null. */
  readonly #fused: FusedPasses | null;

  constructor(layers: readonly Layer[]) {
    if (!Array.isArray(layers) || layers.length === 0) throw invalid('a non-empty array of layers', 'layers', layers);
    const names = new Set<string>();
    let width: number | null = null;
    let first: number | null = null;
    for (const [i, layer] of layers.entries()) {
      if (typeof layer !== 'object' || layer === null || typeof (layer as Layer).forward !== 'function') {
        throw invalid('a layer', `layers[${i}]`, layer);
      }
      if (layer.name !== '') {
        if (names.has(layer.name)) throw invalid('unique layer names', `layers[${i}].name`, layer.name);
        names.add(layer.name);
      }
      if (layer.inFeatures !== null) {
        if (width !== null && width !== layer.inFeatures) {
          throw new EigenLoraxError(
            `layers[${i}] (${layer.name || layer.kind}) takes ${layer.inFeatures} features but the layer before it gives ${width}`,
            'ERR_SHAPE_MISMATCH',
          );
        }
        first ??= layer.inFeatures;
      }
      if (layer.outFeatures !== null) width = layer.outFeatures;
    }
    if (first === null || width === null) throw invalid('at least one layer with weights', 'layers', layers);
    this.layers = [...layers];
    this.inFeatures = first;
    this.outFeatures = width;
    this.#fused = FusedPasses.of(this.layers);
  }

  /** A layer by name. */
  layer(name: string): Layer {
    const found = this.layers.find((l) => l.name === name);
    if (found === undefined) throw invalid(`one of the layer names ${this.layers.filter((l) => l.name).map((l) => l.name).join(', ')}`, 'name', name);
    return found;
  }

  /**
   * The output for `x` (`n x in`), in a buffer overwritten by the next forward. A model of
   * Linear, LoRA, EigenLoRA and ReLU layers runs as one native job (fused.ts) and keeps
   * the activations itself: its layers' own backward() does not see this forward.
   */
  async forward(x: Matrix): Promise<Matrix> {
    let h = checkMatrix(x, 'x');
    if (h.cols !== this.inFeatures) {
      throw new EigenLoraxError(`x has ${h.cols} features but the model takes ${this.inFeatures}`, 'ERR_SHAPE_MISMATCH');
    }
    if (this.#fused !== null) return this.#fused.forward(h);
    for (const layer of this.layers) h = await layer.forward(h);
    return h;
  }

  /**
   * One training step's passes on a batch: forward, `loss` against `targets` (writing
   * dL/doutput into `grad`, `n x out`), then backward, unless the loss is not finite (then
   * no gradient is written). A fused model (fused.ts) with a built-in loss runs the three as
   * one native job, one hand-off per step; any other model or loss runs forward(),
   * loss.compute() and backward(). The same numbers either way.
   */
  async trainStep(x: Matrix, targets: Targets, loss: Loss, grad: Matrix): Promise<LossValue> {
    const h = checkMatrix(x, 'x');
    if (h.cols !== this.inFeatures) {
      throw new EigenLoraxError(`x has ${h.cols} features but the model takes ${this.inFeatures}`, 'ERR_SHAPE_MISMATCH');
    }
    const builtIn = loss === crossEntropyLoss ? 'cross-entropy' : loss === mseLoss ? 'mse' : null;
    if (this.#fused !== null && builtIn !== null) {
      checkMatrix(grad, 'grad', { rows: h.rows, cols: this.outFeatures });
      const fused = await this.#fused.step(h, builtIn, targets, grad);
      if (fused !== null) return fused;
    }
    const y = await this.forward(h);
    const v = loss.compute(y, targets, grad);
    if (Number.isFinite(v.loss)) await this.backward(grad);
    return v;
  }

  /**
   * Backpropagates dL/doutput through the last forward: writes every trainable tensor's
   * gradient. Input gradients are only computed where a trainable layer lies before.
   */
  async backward(dy: Matrix): Promise<void> {
    if (this.#fused !== null) return this.#fused.backward(dy);
    const trainableBefore: boolean[] = [];
    let any = false;
    for (const layer of this.layers) {
      trainableBefore.push(any);
      if (layer.parameters().length > 0) any = true;
    }
    let g: Matrix | null = checkMatrix(dy, 'dy');
    for (let i = this.layers.length - 1; i >= 0; i--) {
      const layer = this.layers[i] as Layer;
      const inputGrad = trainableBefore[i] as boolean;
      if (!inputGrad && layer.parameters().length === 0) break;
      g = await layer.backward(g as Matrix, { inputGrad });
      if (!inputGrad) break;
    }
  }

  /** The trainable tensors, in layer order. */
  parameters(): Parameter[] {
    return this.layers.flatMap((l) => l.parameters());
  }

  /** Every tensor, trainable or not, in layer order. */
  tensors(): NamedTensor[] {
    return this.layers.flatMap((l) => l.tensors());
  }

  /** Number of scalars: all, or only the trainable ones. */
  parameterCount(options: { trainable?: boolean } = {}): number {
    const list = options.trainable === true ? this.tensors().filter((t) => t.trainable) : this.tensors();
    return list.reduce((sum, t) => sum + t.data.length, 0);
  }

  /**
   * The state dict: name -> { shape, data } with the live arrays (no copy: copy them to
   * keep a snapshot). `trainableOnly` leaves the frozen tensors out.
   */
  stateDict(options: { trainableOnly?: boolean } = {}): StateDict {
    const o = object(options, 'options');
    knownKeys(o, 'options', ['trainableOnly']);
    const out: StateDict = new Map();
    for (const t of this.tensors()) if (o.trainableOnly !== true || t.trainable) out.set(t.name, { shape: [...t.shape], data: t.data });
    return out;
  }

  /**
   * Copies tensors into the model by name. Everything is checked before anything is
   * written: with `strict` (default) the source must hold exactly the model's tensors
   * (only its trainable ones with `trainableOnly`), else ERR_TENSOR_NOT_FOUND naming the
   * first missing or unexpected one; shapes must match (ERR_SHAPE_MISMATCH).
   */
  loadStateDict(
    source: ReadonlyMap<string, StateTensor> | Readonly<Record<string, StateTensor>>,
    options: { strict?: boolean; trainableOnly?: boolean } = {},
  ): LoadStateResult {
    const o = object(options, 'options');
    knownKeys(o, 'options', ['strict', 'trainableOnly']);
    const entries = source instanceof Map ? source : new Map(Object.entries(object(source, 'source') as Record<string, StateTensor>));
    const plan = this.#plan(
      new Map([...entries].map(([k, v]) => [k, v.shape])),
      o.strict !== false,
      o.trainableOnly === true,
      'the state dict',
    );
    for (const t of plan.targets) {
      const s = entries.get(t.name) as StateTensor;
      if (!(s.data instanceof Float32Array) || s.data.length !== t.data.length) {
        throw new EigenLoraxError(`the state dict's tensor ${JSON.stringify(t.name)} has ${s.data?.length} values, expected ${t.data.length}`, 'ERR_SHAPE_MISMATCH');
      }
    }
    for (const t of plan.targets) t.data.set((entries.get(t.name) as StateTensor).data);
    return { loaded: plan.targets.map((t) => t.name), missing: plan.missing, unexpected: plan.unexpected };
  }

  #plan(shapes: Map<string, readonly number[]>, strict: boolean, trainableOnly: boolean, what: string) {
    const tensors = this.tensors().filter((t) => !trainableOnly || t.trainable);
    const known = new Set(this.tensors().map((t) => t.name));
    const missing = tensors.filter((t) => !shapes.has(t.name)).map((t) => t.name);
    const unexpected = [...shapes.keys()].filter((k) => !known.has(k));
    if (strict && missing.length > 0) {
      throw new EigenLoraxError(`${what} has no tensor ${JSON.stringify(missing[0])}${missing.length > 1 ? ` (and ${missing.length - 1} more missing)` : ''}`, 'ERR_TENSOR_NOT_FOUND');
    }
    if (strict && unexpected.length > 0) {
      throw new EigenLoraxError(
        `${what} holds ${JSON.stringify(unexpected[0])}, which the model does not have${unexpected.length > 1 ? ` (and ${unexpected.length - 1} more)` : ''}; pass strict: false to ignore extra tensors`,
        'ERR_TENSOR_NOT_FOUND',
      );
    }
    const targets = tensors.filter((t) => shapes.has(t.name));
    for (const t of targets) {
      const shape = shapes.get(t.name) as readonly number[];
      if (!sameShape(shape, t.shape)) {
        throw new EigenLoraxError(`${what}: tensor ${JSON.stringify(t.name)} has shape ${shapeText(shape)} but the model's is ${shapeText(t.shape)}`, 'ERR_SHAPE_MISMATCH');
      }
    }
    return { targets, missing, unexpected };
  }

  /**
   * Writes the state dict as safetensors (atomically; the folder is created). Keys are the
   * tensor names (`fc1.weight`, `fc1.bias`, ...), F32 unless `dtype` says otherwise.
   */
  async save(
    file: string,
    options: { trainableOnly?: boolean; metadata?: Record<string, string>; dtype?: SafetensorsWriteDType } = {},
  ): Promise<void> {
    const o = object(options, 'options');
    knownKeys(o, 'options', ['trainableOnly', 'metadata', 'dtype']);
    if (typeof file !== 'string' || file.length === 0) throw invalid('a path', 'file', file);
    const entries = [...this.stateDict({ trainableOnly: o.trainableOnly === true })].map(([name, t]) => ({ name, shape: t.shape, data: t.data }));
    await mkdir(path.dirname(path.resolve(file)), { recursive: true }).catch((cause: unknown) => {
      throw ioError(cause, file, 'create the folder');
    });
    await writeSafetensors(file, entries, {
      ...(o.metadata === undefined ? {} : { metadata: o.metadata as Record<string, string> }),
      ...(o.dtype === undefined ? {} : { dtype: o.dtype as SafetensorsWriteDType }),
    });
  }

  /**
   * Reads tensors from a safetensors file into the model (any float dtype, converted to
   * f32), with the checks of {@link loadStateDict}, all made on the header before anything
   * is read. A base model's file (`fc1.weight`, `fc1.bias`) loads into a LoRA or EigenLoRA
   * model built on it with `strict: false` (its adapter tensors are reported missing).
   */
  async load(file: string, options: { strict?: boolean; trainableOnly?: boolean } = {}): Promise<LoadStateResult> {
    const o = object(options, 'options');
    knownKeys(o, 'options', ['strict', 'trainableOnly']);
    const reader = await openSafetensors(file);
    try {
      const plan = this.#plan(
        new Map([...reader.tensors].map(([k, v]) => [k, v.shape])),
        o.strict !== false,
        o.trainableOnly === true,
        reader.path,
      );
      // Read into new arrays first, so that a failing read leaves the model unchanged.
      const values: Float32Array[] = [];
      for (const t of plan.targets) values.push((await reader.readFloat32(t.name)).data);
      plan.targets.forEach((t, i) => t.data.set(values[i] as Float32Array));
      return { loaded: plan.targets.map((t) => t.name), missing: plan.missing, unexpected: plan.unexpected };
    } finally {
      await reader.close();
    }
  }

  /** The outputs for every row of `inputs`, in a new matrix. */
  async predict(inputs: Matrix, options: { batchSize?: number } = {}): Promise<Matrix> {
    const x = checkMatrix(inputs, 'inputs');
    const o = object(options, 'options');
    knownKeys(o, 'options', ['batchSize']);
    const batchSize = integer(o.batchSize ?? 1024, 'options.batchSize', 1);
    const out = matrix(x.rows, this.outFeatures);
    for (let start = 0; start < x.rows; start += batchSize) {
      const end = Math.min(x.rows, start + batchSize);
      const y = await this.forward(matrix(end - start, x.cols, x.data.subarray(start * x.cols, end * x.cols)));
      out.data.set(y.data, start * this.outFeatures);
    }
    return out;
  }

  /** Mean loss (and accuracy for classification) over a data set. */
  async evaluate(dataset: Dataset, options: EvaluateOptions = {}): Promise<Evaluation> {
    const d = checkDataset(dataset, 'dataset');
    const o = object(options, 'options');
    knownKeys(o, 'options', ['loss', 'batchSize']);
    const loss = resolveLoss(o.loss ?? 'cross-entropy', 'options.loss');
    const batchSize = integer(o.batchSize ?? 1024, 'options.batchSize', 1);
    return evaluateWith(this, d, loss, batchSize);
  }
}

/** @internal Evaluation shared by Sequential.evaluate and the training loop. */
export async function evaluateWith(model: Sequential, d: Dataset, loss: Loss, batchSize: number): Promise<Evaluation> {
  const n = d.inputs.rows;
  if (d.inputs.cols !== model.inFeatures) {
    throw new EigenLoraxError(`the data has ${d.inputs.cols} features but the model takes ${model.inFeatures}`, 'ERR_SHAPE_MISMATCH');
  }
  loss.checkTargets(d.targets, n, model.outFeatures, 'evaluation data');
  let total = 0;
  let correct = 0;
  for (let start = 0; start < n; start += batchSize) {
    const end = Math.min(n, start + batchSize);
    const rows = end - start;
    const x = matrix(rows, d.inputs.cols, d.inputs.data.subarray(start * d.inputs.cols, end * d.inputs.cols));
    const t: Targets = isLabels(d.targets)
      ? (d.targets.subarray(start, end) as Labels)
      : matrix(rows, d.targets.cols, d.targets.data.subarray(start * d.targets.cols, end * d.targets.cols));
    const y = await model.forward(x);
    const v = loss.compute(y, t, null);
    total += v.loss * rows;
    if (v.correct !== null) correct += v.correct;
  }
  return { loss: total / n, accuracy: loss.classification ? correct / n : null, rows: n };
}
