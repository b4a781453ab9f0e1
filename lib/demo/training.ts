/**
 * The demo's held-out training: a method (LoRA, EigenLoRA, EigenLoRAx) trained `repeats`
 * times on a task with the same optimiser budget, its curve, final accuracy and times.
 */
import type { Dataset } from '../data/dataset.js';
import { EigenLoraxError } from '../errors.js';
import { trainModel, type TrainEvent } from '../train/loop.js';
import type { Sequential } from '../train/model.js';
import type { DemoSettings } from './settings.js';
import type { CurvePoint, MethodId, MethodResult } from './types.js';

function stepsTo95(curve: readonly CurvePoint[]): number | null {
  const last = curve[curve.length - 1];
  if (last === undefined) return null;
  const goal = 0.95 * last.accuracy;
  for (const p of curve) if (p.accuracy >= goal) return p.step;
  return last.step;
}


export interface MethodSpec {
  id: Exclude<MethodId, 'base'>;
  label: string;
  formula: string;
  lr: number;
  make: (seed: number) => Sequential;
  trainable: number;
}

interface SingleRun {
  accuracy: number;
  loss: number;
  steps: number;
  trainSeconds: number;
  totalSeconds: number;
  samples: number;
  curve: CurvePoint[];
  trainLoss: Array<{ step: number; loss: number }>;
}

/** One training run of a method: the curve every evalEvery updates, the final test accuracy, the times. */
async function trainOnce(
  spec: MethodSpec,
  train: Dataset,
  curveSet: Dataset,
  evalSet: Dataset,
  h: DemoSettings['heldOut'],
  seed: number,
  signal: AbortSignal | null,
): Promise<SingleRun> {
  const model = spec.make(seed);
  const trainable = model.parameterCount({ trainable: true });
  if (trainable !== spec.trainable) {
    throw new EigenLoraxError(`${spec.label}: ${trainable} trainable parameters, but the shapes give ${spec.trainable}`, 'ERR_INTERNAL');
  }
  const start = await model.evaluate(curveSet);
  const curve: CurvePoint[] = [{ step: 0, accuracy: start.accuracy ?? 0, loss: start.loss }];
  const trainLoss: Array<{ step: number; loss: number }> = [];
  let windowSum = 0;
  let windowCount = 0;
  let lastStepAt = 0;
  let evalSeconds = 0;
  const stepsPerEpoch = Math.ceil(train.inputs.rows / h.batchSize);
  const onEvent = (e: TrainEvent) => {
    if (e.type === 'step') {
      windowSum += e.loss;
      windowCount++;
      if (e.step % h.evalEvery === 0) {
        trainLoss.push({ step: e.step, loss: windowSum / windowCount });
        windowSum = 0;
        windowCount = 0;
      }
      lastStepAt = performance.now();
    } else if (e.type === 'eval' && e.source === 'validation') {
      // The evaluation runs between the step event and this one.
      evalSeconds += (performance.now() - lastStepAt) / 1000;
      curve.push({ step: e.step, accuracy: e.accuracy ?? 0, loss: e.loss });
    }
  };
  const r = await trainModel(model, { train, validation: curveSet }, {
    epochs: h.epochs,
    batchSize: h.batchSize,
    optimizer: { type: 'adamw', lr: spec.lr, weightDecay: 0 },
    schedule: { type: 'cosine', warmupSteps: Math.max(1, Math.round(0.1 * h.epochs * stepsPerEpoch)) },
    seed,
    evalEvery: h.evalEvery,
    progress: false,
    onEvent,
    ...(signal === null ? {} : { signal }),
  });
  signal?.throwIfAborted();
  if (windowCount > 0) trainLoss.push({ step: r.steps, loss: windowSum / windowCount });
  if ((curve[curve.length - 1] as CurvePoint).step !== r.steps) {
    const last = await model.evaluate(curveSet);
    curve.push({ step: r.steps, accuracy: last.accuracy ?? 0, loss: last.loss });
  }
  const final = await model.evaluate(evalSet);
  return {
    accuracy: final.accuracy ?? 0,
    loss: final.loss,
    steps: r.steps,
    trainSeconds: Math.max(1e-9, r.seconds - evalSeconds),
    totalSeconds: r.seconds,
    samples: r.epochs * train.inputs.rows,
    curve,
    trainLoss,
  };
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

const mean = (values: readonly number[]) => values.reduce((a, b) => a + b, 0) / Math.max(1, values.length);

function sd(values: readonly number[]): number {
  if (values.length < 2) return 0;
  const m = mean(values);
  return Math.sqrt(values.reduce((s, v) => s + (v - m) ** 2, 0) / (values.length - 1));
}

/** Point-wise mean of curves evaluated at the same steps. */
function meanCurve<T extends { step: number }>(curves: readonly T[][], fields: ReadonlyArray<keyof T>): T[] {
  const first = curves[0] ?? [];
  return first.map((p, i) => {
    const out = { ...p };
    for (const f of fields) (out[f] as unknown as number) = mean(curves.map((c) => (c[i]?.[f] as unknown as number) ?? Number.NaN));
    return out;
  });
}

/** `repeats` runs of a method (seeds seed, seed + 1, ...: initialisation and shuffling), averaged. */
export async function trainMethod(
  spec: MethodSpec,
  train: Dataset,
  curveSet: Dataset,
  evalSet: Dataset,
  h: DemoSettings['heldOut'],
  seed: number,
  signal: AbortSignal | null,
): Promise<MethodResult> {
  const runs: SingleRun[] = [];
  for (let k = 0; k < h.repeats; k++) runs.push(await trainOnce(spec, train, curveSet, evalSet, h, seed + k, signal));
  const curve = meanCurve(runs.map((r) => r.curve), ['accuracy', 'loss']);
  const trainSeconds = mean(runs.map((r) => r.trainSeconds));
  const steps = (runs[0] as SingleRun).steps;
  const accuracies = runs.map((r) => r.accuracy);
  return {
    method: spec.id,
    label: spec.label,
    trainable: spec.trainable,
    trainableFormula: spec.formula,
    accuracy: mean(accuracies),
    accuracySd: sd(accuracies),
    accuracies,
    loss: mean(runs.map((r) => r.loss)),
    lr: spec.lr,
    steps,
    repeats: runs.length,
    trainSeconds,
    runSeconds: runs.map((r) => r.trainSeconds),
    totalSeconds: mean(runs.map((r) => r.totalSeconds)),
    samplesPerSecond: runs.reduce((s, r) => s + r.samples, 0) / runs.reduce((s, r) => s + r.trainSeconds, 0),
    msPerStep: (1000 * trainSeconds) / Math.max(1, steps),
    stepsTo95: stepsTo95(curve),
    curve,
    trainLoss: meanCurve(runs.map((r) => r.trainLoss), ['loss']),
  };
}
