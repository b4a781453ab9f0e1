/**
 * Losses: softmax cross-entropy (mean over the batch, numerically stable) and mean
 * squared error (mean over all elements), as PyTorch's `cross_entropy` and `mse_loss` with
 * `reduction='mean'`.
 */
import { EigenLoraxError } from '../errors.js';
import { checkMatrix, type Matrix } from '../matrix.js';
import { invalid } from '../validate.js';
import { meanSquaredError, softmaxCrossEntropy } from './kernels.js';

// Labels and targets belong to the data sets (data/ does not import train/).
import { isLabels, type Labels, type Targets } from '../data/dataset.js';

export { isLabels, type Labels, type Targets };

export interface LossValue {
  /** The mean loss of the batch. */
  loss: number;
  /** Rows whose argmax is the label (classification losses), else null. */
  correct: number | null;
}

export interface Loss {
  readonly name: string;
  /** Whether targets are class labels (and accuracy is meaningful). */
  readonly classification: boolean;
  /**
   * The mean loss of `output` (`n x out`) against `targets`; writes dL/doutput into `grad`
   * (same shape as `output`) when given. Throws ERR_INVALID_ARGUMENT for a label out of
   * range, ERR_SHAPE_MISMATCH for targets of the wrong size.
   */
  compute(output: Matrix, targets: Targets, grad?: Matrix | null): LossValue;
  /** Checks a whole data set's targets against an output width (before training). */
  checkTargets(targets: Targets, rows: number, outputs: number, where: string): void;
}

function checkGrad(grad: Matrix | null | undefined, output: Matrix): Matrix | null {
  if (grad === undefined || grad === null) return null;
  return checkMatrix(grad, 'grad', { rows: output.rows, cols: output.cols });
}

/** Index of the first label outside [0, classes), or -1. */
function firstBadLabel(labels: Labels, classes: number): number {
  for (let i = 0; i < labels.length; i++) {
    const v = labels[i] as number;
    if (v < 0 || v >= classes) return i;
  }
  return -1;
}

class SoftmaxCrossEntropy implements Loss {
  readonly name = 'cross-entropy';
  readonly classification = true;

  checkTargets(targets: Targets, rows: number, classes: number, where: string): void {
    if (!isLabels(targets)) throw invalid('class labels (Uint8Array, Uint16Array or Int32Array)', `${where} targets`, targets);
    if (targets.length !== rows) {
      throw new EigenLoraxError(`${where}: ${targets.length} labels for ${rows} rows`, 'ERR_SHAPE_MISMATCH');
    }
    const bad = firstBadLabel(targets, classes);
    if (bad >= 0) {
      throw new EigenLoraxError(
        `${where}: label ${targets[bad]} at row ${bad} is out of range: the model has ${classes} outputs, so labels must be in [0, ${classes - 1}]`,
        'ERR_INVALID_ARGUMENT',
      );
    }
  }

  compute(output: Matrix, targets: Targets, grad?: Matrix | null): LossValue {
    checkMatrix(output, 'output');
    this.checkTargets(targets, output.rows, output.cols, 'cross-entropy');
    const g = checkGrad(grad, output);
    const { loss, correct } = softmaxCrossEntropy(output.data, output.rows, output.cols, targets as Labels, g === null ? null : g.data);
    return { loss, correct };
  }
}

class MeanSquaredError implements Loss {
  readonly name = 'mse';
  readonly classification = false;

  checkTargets(targets: Targets, rows: number, outputs: number, where: string): void {
    if (isLabels(targets)) throw invalid('an n x out target matrix', `${where} targets`, targets);
    checkMatrix(targets, `${where} targets`);
    if (targets.rows !== rows || targets.cols !== outputs) {
      throw new EigenLoraxError(
        `${where}: targets are ${targets.rows} x ${targets.cols} but the outputs are ${rows} x ${outputs}`,
        'ERR_SHAPE_MISMATCH',
      );
    }
  }

  compute(output: Matrix, targets: Targets, grad?: Matrix | null): LossValue {
    checkMatrix(output, 'output');
    this.checkTargets(targets, output.rows, output.cols, 'mse');
    const g = checkGrad(grad, output);
    return { loss: meanSquaredError(output.data, (targets as Matrix).data, g === null ? null : g.data), correct: null };
  }
}

/** Softmax cross-entropy over integer labels, mean over the batch. */
export const crossEntropyLoss: Loss = new SoftmaxCrossEntropy();
/** Mean squared error over all elements. */
export const mseLoss: Loss = new MeanSquaredError();

export type LossName = 'cross-entropy' | 'mse';

export function resolveLoss(value: unknown, name: string): Loss {
  if (value === 'cross-entropy') return crossEntropyLoss;
  if (value === 'mse') return mseLoss;
  if (typeof value === 'object' && value !== null && typeof (value as Loss).compute === 'function') return value as Loss;
  throw invalid("'cross-entropy', 'mse' or a Loss object", name, value);
}
