/**
 * In-memory data sets: an `n x features` f32 input matrix and, per row, a class label or a
 * row of regression targets.
 */
import { EigenLoraxError } from '../errors.js';
import { checkMatrix, matrix, type Matrix } from '../matrix.js';
import { integer, invalid, object } from '../validate.js';
import { trainGatherRows } from '../native/ops.js';

/** Integer class labels, one per row. */
export type Labels = Uint8Array | Uint16Array | Int32Array;

/** Targets of a batch: labels (classification) or an `n x out` matrix (regression). */
export type Targets = Labels | Matrix;

export function isLabels(value: unknown): value is Labels {
  return value instanceof Uint8Array || value instanceof Uint16Array || value instanceof Int32Array;
}

export interface Dataset {
  /** `n x features`, row-major f32. */
  inputs: Matrix;
  /** `n` class labels, or an `n x outputs` target matrix. */
  targets: Targets;
  /** Number of classes (classification), when known. */
  classes?: number;
}

/** Rows of a data set. */
export function datasetSize(dataset: Dataset): number {
  return dataset.inputs.rows;
}

/** Checks a data set's shapes (inputs and targets agree) and returns it. */
export function checkDataset(value: unknown, name: string): Dataset {
  const d = object(value, name) as unknown as Dataset;
  const inputs = checkMatrix(d.inputs, `${name}.inputs`);
  if (isLabels(d.targets)) {
    if (d.targets.length !== inputs.rows) {
      throw new EigenLoraxError(`${name}: ${d.targets.length} labels for ${inputs.rows} input rows`, 'ERR_SHAPE_MISMATCH');
    }
  } else {
    const t = checkMatrix(d.targets, `${name}.targets`);
    if (t.rows !== inputs.rows) throw new EigenLoraxError(`${name}: ${t.rows} target rows for ${inputs.rows} input rows`, 'ERR_SHAPE_MISMATCH');
  }
  if (d.classes !== undefined) integer(d.classes, `${name}.classes`, 1);
  return d;
}

function sliceTargets(targets: Targets, start: number, end: number): Targets {
  if (isLabels(targets)) return targets.subarray(start, end);
  return matrix(end - start, targets.cols, targets.data.subarray(start * targets.cols, end * targets.cols));
}

/** Rows [start, end) as views (no copy). */
export function sliceDataset(dataset: Dataset, start: number, end: number): Dataset {
  const d = checkDataset(dataset, 'dataset');
  const n = d.inputs.rows;
  const s = integer(start, 'start', 0, n);
  const e = integer(end, 'end', s + 1, n);
  const cols = d.inputs.cols;
  return {
    inputs: matrix(e - s, cols, d.inputs.data.subarray(s * cols, e * cols)),
    targets: sliceTargets(d.targets, s, e),
    ...(d.classes === undefined ? {} : { classes: d.classes }),
  };
}

function newLabelsLike(labels: Labels, length: number): Labels {
  if (labels instanceof Uint8Array) return new Uint8Array(length);
  if (labels instanceof Uint16Array) return new Uint16Array(length);
  return new Int32Array(length);
}

/** The rows `indices` (in that order) as a new data set (copies). */
export function subsetDataset(dataset: Dataset, indices: ArrayLike<number>): Dataset {
  const d = checkDataset(dataset, 'dataset');
  const n = d.inputs.rows;
  if (indices.length < 1) throw invalid('at least one index', 'indices', indices);
  for (let i = 0; i < indices.length; i++) {
    const v = indices[i] as number;
    if (!Number.isInteger(v) || v < 0 || v >= n) throw invalid(`row indices in [0, ${n - 1}]`, `indices[${i}]`, v);
  }
  const inputs = matrix(indices.length, d.inputs.cols);
  const targets = isLabels(d.targets) ? newLabelsLike(d.targets, indices.length) : matrix(indices.length, d.targets.cols);
  gatherRows(d, indices, 0, indices.length, inputs, targets);
  return { inputs, targets, ...(d.classes === undefined ? {} : { classes: d.classes }) };
}

/**
 * Copies rows `order[start..end)` of `dataset` into `inputs` / `targets` (which have
 * exactly end - start rows): one native call copies the input rows (a memcpy each; a
 * typed-array `set` a row cost an object per row, a third of a training step's JavaScript).
 */
export function gatherRows(
  dataset: Dataset,
  order: ArrayLike<number>,
  start: number,
  end: number,
  inputs: Matrix,
  targets: Targets,
): void {
  const indices = order instanceof Uint32Array ? order : Uint32Array.from(order);
  trainGatherRows(dataset.inputs.data, dataset.inputs.cols, indices, start, end, inputs.data);
  const t = dataset.targets;
  if (isLabels(t)) {
    const out = targets as Labels;
    for (let k = start; k < end; k++) out[k - start] = t[indices[k] as number] as number;
  } else {
    trainGatherRows(t.data, t.cols, indices, start, end, (targets as Matrix).data);
  }
}
