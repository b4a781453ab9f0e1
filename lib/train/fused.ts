/**
 * A Sequential model's forward and backward passes as one native job each, or a whole
 * training step (forward, built-in loss, backward) as one
 * (native/addon/train_model_jobs.cpp), when every layer is a Linear, LoRA or EigenLoRA
 * layer, each optionally followed by one ReLU: the ReLU runs in the layer's epilogue, and
 * the gradients flowing between layers stay in native memory. One hand-off per step or
 * direction instead of one per layer, and no per-layer argument building in JavaScript.
 *
 * The job calls the same kernels as the layers' own forward/backward, in the same order
 * and with the same thread counts, so the numbers are the same bit for bit
 * (test/train-fused.test.ts compares). Other layers (GELU, user-defined ones) take the
 * per-layer path.
 */
import { EigenLoraxError } from '../errors.js';
import { checkMatrix, type Matrix } from '../matrix.js';
import { ownedMatrix, trainModelBackward, trainModelForward, trainModelStep, type NativeModelLayer } from '../native/ops.js';
import type { LossValue, Targets } from './losses.js';
import { ReLU } from './activations.js';
import { noForward, type Layer } from './layer.js';
import { EigenLoRA, Linear, LoRA } from './layers.js';

type WeightLayer = Linear | LoRA | EigenLoRA;

/** Batch sizes whose activations are kept (a loop uses one or two: the batch and the last, smaller one). */
const MAX_BATCH_SIZES = 8;

interface Stage {
  layer: WeightLayer;
  /** A ReLU follows the layer. */
  relu: boolean;
}

/** `{ rows, cols, data }` over an existing array (no checks: the layers made the shapes). */
function view(rows: number, cols: number, data: Float32Array): Matrix {
  return { rows, cols, data };
}

/** The native description of a stage; with `grads`, its gradient arrays too (trainable layers). */
function describe(s: Stage, grads: boolean): NativeModelLayer {
  const l = s.layer;
  const bias = l.bias === null ? null : view(1, l.outFeatures, l.bias);
  const base = { relu: s.relu, weight: l.weight, bias };
  const p = grads ? l.parameters() : [];
  if (l instanceof LoRA) {
    const layer = { ...base, kind: 'lora' as const, A: l.A, B: l.B, scale: l.scale };
    if (!grads) return layer;
    return { ...layer, dA: view(l.rank, l.inFeatures, (p[0] as { grad: Float32Array }).grad), dB: view(l.outFeatures, l.rank, (p[1] as { grad: Float32Array }).grad) };
  }
  if (l instanceof EigenLoRA) {
    const layer = {
      ...base,
      kind: 'eigenlora' as const,
      componentsA: l.componentsA,
      alpha: l.alpha,
      beta: l.beta,
      componentsB: l.componentsB,
      scale: l.scale,
      order: l.order,
    };
    if (!grads) return layer;
    return {
      ...layer,
      dAlpha: view(l.alpha.rows, l.rank, (p[0] as { grad: Float32Array }).grad),
      dBeta: view(l.beta.rows, l.rank, (p[1] as { grad: Float32Array }).grad),
    };
  }
  const layer = { ...base, kind: 'linear' as const };
  if (p.length === 0) return layer;
  const dBias = p[1] === undefined ? null : view(1, l.outFeatures, p[1].grad);
  return { ...layer, dWeight: view(l.outFeatures, l.inFeatures, (p[0] as { grad: Float32Array }).grad), dBias };
}

export class FusedPasses {
  readonly #stages: readonly Stage[];
  /** The layers as the forward job reads them: fixed, since a layer's tensors are never replaced (only written in place). */
  readonly #forwardLayers: readonly NativeModelLayer[];
  /** The same with the gradient arrays, and which Linear layers were trainable when made (Linear.trainable may change). */
  #backwardLayers: { layers: readonly NativeModelLayer[]; trainable: boolean[]; any: boolean } | null = null;
  /** The activations of each batch size. */
  readonly #outputs = new Map<number, Matrix[]>();
  #last: { x: Matrix; outputs: Matrix[] } | null = null;

  private constructor(stages: Stage[]) {
    this.#stages = stages;
    this.#forwardLayers = stages.map((s) => describe(s, false));
  }

  /** The fused passes of `layers`, or null when a layer is of another kind (or a ReLU does not follow a layer with weights). */
  static of(layers: readonly Layer[]): FusedPasses | null {
    const stages: Stage[] = [];
    for (const layer of layers) {
      // Exact classes: a subclass may override forward or backward.
      const proto: unknown = Object.getPrototypeOf(layer);
      if (proto === ReLU.prototype) {
        const previous = stages[stages.length - 1];
        if (previous === undefined || previous.relu) return null;
        previous.relu = true;
      } else if (proto === Linear.prototype || proto === LoRA.prototype || proto === EigenLoRA.prototype) {
        stages.push({ layer: layer as WeightLayer, relu: false });
      } else {
        return null;
      }
    }
    return stages.length === 0 ? null : new FusedPasses(stages);
  }

  /** The activations of a batch of `rows`. */
  #outputsFor(rows: number): Matrix[] {
    let outputs = this.#outputs.get(rows);
    if (outputs === undefined) {
      if (this.#outputs.size >= MAX_BATCH_SIZES) this.#outputs.clear();
      // Owned memory: the backward job reads the activations without copying them.
      outputs = this.#stages.map((s) => ownedMatrix(rows, s.layer.outFeatures));
      this.#outputs.set(rows, outputs);
    }
    return outputs;
  }

  /** The model's output for `x` (checked by the caller), in a buffer overwritten by the next forward of the same batch size. */
  async forward(x: Matrix): Promise<Matrix> {
    const outputs = this.#outputsFor(x.rows);
    await trainModelForward({ x, layers: this.#forwardLayers, outputs });
    this.#last = { x, outputs };
    return outputs[outputs.length - 1] as Matrix;
  }

  /**
   * Forward, the built-in `loss` (dL/doutput into `grad`) and backward as one job; no
   * backward when the loss is not finite. Null, with nothing run, when no layer has
   * gradients (there is no backward to fuse). `x` and `grad` are checked by the caller, the
   * targets by the job (labels in range, the target matrix's shape).
   */
  async step(x: Matrix, loss: 'cross-entropy' | 'mse', targets: Targets, grad: Matrix): Promise<LossValue | null> {
    const { layers, any } = this.#backward();
    if (!any) return null;
    const outputs = this.#outputsFor(x.rows);
    this.#last = null; // the activations are being rewritten
    const value = await trainModelStep({ x, layers, outputs, loss, targets, grad });
    this.#last = { x, outputs };
    return value;
  }

  /** The backward job's layers, remade only when a Linear layer was made trainable or frozen. */
  #backward(): { layers: readonly NativeModelLayer[]; any: boolean } {
    const cached = this.#backwardLayers;
    if (cached !== null && this.#stages.every((s, i) => !(s.layer instanceof Linear) || s.layer.trainable === cached.trainable[i])) return cached;
    const made = {
      layers: this.#stages.map((s) => describe(s, true)),
      trainable: this.#stages.map((s) => !(s.layer instanceof Linear) || s.layer.trainable),
      any: this.#stages.some((s) => s.layer.parameters().length > 0),
    };
    this.#backwardLayers = made;
    return made;
  }

  /** Every trainable layer's gradient from dL/doutput of the last forward. */
  async backward(dy: Matrix): Promise<void> {
    const last = this.#last;
    if (last === null) throw noForward('model');
    const out = last.outputs[last.outputs.length - 1] as Matrix;
    checkMatrix(dy, 'dy');
    if (dy.rows !== out.rows || dy.cols !== out.cols) {
      throw new EigenLoraxError(`model: dy is ${dy.rows} x ${dy.cols} but the last forward's output was ${out.rows} x ${out.cols}`, 'ERR_SHAPE_MISMATCH');
    }
    const { layers, any } = this.#backward();
    if (!any) return;
    await trainModelBackward({ x: last.x, layers, outputs: last.outputs, dy });
  }
}
