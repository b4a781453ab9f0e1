/**
 * The training loop: seeded shuffling and batching, forward/loss/backward/update with
 * optional gradient clipping and a learning-rate schedule, evaluation every epoch or every
 * N updates, early stopping, checkpoints with exact resume, a progress bar on terminals,
 * events for programmatic use, and an AbortSignal that stops after the current update.
 *
 * This file checks the options and the data and sets up the run's state (fresh, or
 * resumed: checkpoint.ts); run.ts makes the updates, in named steps. Every update awaits
 * the native layer kernels (on the addon's compute thread), so the event loop keeps turning while
 * a model trains: a model of Linear, LoRA, EigenLoRA and ReLU layers with a built-in loss
 * in one job per update (forward, loss, backward: fused.ts), other models one job per layer.
 * The batch's gathering, the optimiser and the finiteness scan are one synchronous native
 * call each (kernels.ts, data/dataset.ts).
 *
 * Exact resume: a run resumed from a checkpoint makes the same updates, bit for bit, as an
 * uninterrupted run with the same options: the checkpoint holds the parameters, the
 * optimiser state, the shuffling generator's state at the start of the current epoch and
 * the position in it, the schedule and early-stopping state and the running sums.
 */
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { exists } from '../io/files.js';
import { finiteNumber, integer, invalid, knownKeys, object, oneOf } from '../validate.js';
import { checkDataset, type Dataset } from '../data/dataset.js';
import { freshState, frozenDigest, resumeState, type EpochRecord, type EvalRecord, type RunFingerprint } from './checkpoint.js';
import { checkTrainOptions } from './options.js';
import type { Parameter } from './layers.js';
import { resolveLoss, type Loss, type LossName } from './losses.js';
import type { Sequential } from './model.js';
import { createOptimizer, createSchedule, CosineSchedule, type LrSchedule, type Optimizer, type OptimizerSpec, type ScheduleSpec } from './optim.js';
import { ProgressBar, type ProgressStream } from '../progress.js';
import { TrainingRun } from './run.js';

export interface TrainData {
  train: Dataset;
  /** Evaluated every epoch (or every `evalEvery` updates); drives early stopping and plateau schedules. */
  validation?: Dataset;
}

export interface EarlyStoppingOptions {
  /** Evaluations without improvement before stopping. */
  patience: number;
  /** Smallest change of the monitored metric that counts as an improvement (default 0). */
  minDelta?: number;
  /**
   * Put back the best parameters when the run ends (default true); not when it is aborted,
   * so that the checkpoint it leaves resumes where it stopped.
   */
  restoreBest?: boolean;
}

export interface CheckpointOptions {
  /** The checkpoint file (`.safetensors`), overwritten atomically each time. */
  path: string;
  /** Also write every this many updates. */
  everySteps?: number;
  /** Write every this many epochs (default 1). */
  everyEpochs?: number;
}

export interface TrainOptions {
  /** 'cross-entropy' (default), 'mse', or a Loss. */
  loss?: LossName | Loss;
  /** Default `{ type: 'adamw', lr: 1e-3 }`. */
  optimizer?: OptimizerSpec | Optimizer;
  /** Default constant. A cosine schedule without totalSteps decays over the whole run. */
  schedule?: ScheduleSpec | LrSchedule;
  /** Epochs (default 1). */
  epochs?: number;
  /** Stop after this many updates in total (counting those before a resume). */
  maxSteps?: number;
  /** Rows per update (default 64). */
  batchSize?: number;
  /** Skip the last, smaller batch of each epoch (default false). */
  dropLast?: boolean;
  /** Shuffle each epoch (default true). */
  shuffle?: boolean;
  /** Seed of the shuffling (default 0). */
  seed?: number;
  /** Clip gradients to this global L2 norm. */
  clipGradNorm?: number;
  /** Evaluate every N updates, or 'epoch' (default). */
  evalEvery?: number | 'epoch';
  /** Rows per evaluation forward pass (default 1024). */
  evalBatchSize?: number;
  /** Metric for early stopping, plateau schedules and "best": 'loss' (default) or 'accuracy'. */
  monitor?: 'loss' | 'accuracy';
  earlyStopping?: EarlyStoppingOptions;
  checkpoint?: CheckpointOptions;
  /**
   * Continue from a checkpoint: true resumes from `checkpoint.path` when that file exists
   * (and starts fresh when not); a path resumes from that file (which must exist).
   */
  resume?: boolean | string;
  /** 'auto' (default): a bar on stderr when it is a TTY; true forces it; a stream to draw on; a caller's ProgressBar (stopped at the end). */
  progress?: boolean | 'auto' | ProgressStream | ProgressBar;
  onEvent?: (event: TrainEvent) => void | Promise<void>;
  /** Stops after the current update, writes a checkpoint (when configured) and resolves. */
  signal?: AbortSignal;
}

export interface StepEvent {
  type: 'step';
  step: number;
  epoch: number;
  /** Batch index within the epoch (0-based). */
  batch: number;
  batches: number;
  /** The batch's mean loss. */
  loss: number;
  /** The batch's accuracy (classification), else null. */
  accuracy: number | null;
  /** Learning rate of this update. */
  lr: number;
  /** Global gradient norm before clipping (only with clipGradNorm), else null. */
  gradNorm: number | null;
  /** Training throughput of this call so far. */
  samplesPerSecond: number;
}

export interface EvalEvent extends EvalRecord {
  type: 'eval';
  /** Whether this evaluation is the best so far on the monitored metric. */
  improved: boolean;
}

export interface EpochEvent extends EpochRecord {
  type: 'epoch';
}

export interface CheckpointEvent {
  type: 'checkpoint';
  step: number;
  epoch: number;
  path: string;
  reason: 'interval' | 'epoch' | 'abort' | 'end';
}

export interface DoneEvent {
  type: 'done';
  result: TrainResult;
}

export type TrainEvent = StepEvent | EvalEvent | EpochEvent | CheckpointEvent | DoneEvent;

export type StopReason = 'completed' | 'max-steps' | 'early-stopping' | 'aborted';

export interface TrainResult {
  stoppedBy: StopReason;
  /** Updates made in total (including those before a resume). */
  steps: number;
  /** Epochs completed. */
  epochs: number;
  /** Updates made by this call. */
  stepsThisRun: number;
  /** Wall time of this call. */
  seconds: number;
  /** Training samples per second in this call. */
  samplesPerSecond: number;
  /** Every evaluation of the run, resumed parts included. */
  evals: EvalRecord[];
  /** Every finished epoch. */
  epochHistory: EpochRecord[];
  /** The last evaluation (or null). */
  lastEval: EvalRecord | null;
  /** The best evaluation on the monitored metric (or null). */
  best: EvalRecord | null;
  /** Whether the best parameters were put back at the end. */
  restoredBest: boolean;
  /** The last checkpoint written, or null. */
  checkpoint: string | null;
  /** Whether this call continued from a checkpoint. */
  resumed: boolean;
}

export interface Resolved {
  loss: Loss;
  optimizer: Optimizer;
  schedule: LrSchedule;
  epochs: number;
  maxSteps: number | null;
  batchSize: number;
  dropLast: boolean;
  shuffle: boolean;
  seed: number;
  clip: number | null;
  evalEvery: number | 'epoch';
  evalBatchSize: number;
  monitor: 'loss' | 'accuracy';
  early: { patience: number; minDelta: number; restoreBest: boolean } | null;
  checkpoint: { path: string; everySteps: number | null; everyEpochs: number } | null;
  resume: boolean | string;
  progress: ProgressStream | ProgressBar | null;
  onEvent: ((event: TrainEvent) => void | Promise<void>) | null;
  signal: AbortSignal | null;
}

function bool(value: unknown, name: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw invalid('true or false', name, value);
  return value;
}

function positive(value: unknown, name: string): number {
  const v = finiteNumber(value, name);
  if (!(v > 0)) throw invalid('a number > 0', name, value);
  return v;
}

function resolveOptions(options: TrainOptions): Resolved {
  const o = checkTrainOptions(options);
  const monitor = oneOf(o.monitor ?? 'loss', 'options.monitor', ['loss', 'accuracy'] as const);
  let scheduleSpec = o.schedule as ScheduleSpec | LrSchedule | undefined;
  if (typeof scheduleSpec === 'object' && scheduleSpec !== null && (scheduleSpec as { type?: string }).type === 'plateau' && !('mode' in scheduleSpec)) {
    scheduleSpec = { ...(scheduleSpec as object), mode: monitor === 'loss' ? 'min' : 'max' } as ScheduleSpec;
  }
  let early: Resolved['early'] = null;
  if (o.earlyStopping !== undefined) {
    const e = object(o.earlyStopping, 'options.earlyStopping');
    early = {
      patience: integer(e.patience, 'options.earlyStopping.patience', 1),
      minDelta: finiteNumber(e.minDelta ?? 0, 'options.earlyStopping.minDelta'),
      restoreBest: bool(e.restoreBest, 'options.earlyStopping.restoreBest', true),
    };
  }
  let checkpoint: Resolved['checkpoint'] = null;
  if (o.checkpoint !== undefined) {
    const c = object(o.checkpoint, 'options.checkpoint');
    if (typeof c.path !== 'string' || c.path.length === 0) throw invalid('a file path', 'options.checkpoint.path', c.path);
    checkpoint = {
      path: path.resolve(c.path),
      everySteps: c.everySteps === undefined ? null : integer(c.everySteps, 'options.checkpoint.everySteps', 1),
      everyEpochs: integer(c.everyEpochs ?? 1, 'options.checkpoint.everyEpochs', 1),
    };
  }
  const resume = o.resume ?? false;
  if (typeof resume !== 'boolean' && (typeof resume !== 'string' || resume.length === 0)) throw invalid('true, false or a checkpoint path', 'options.resume', resume);
  if (resume === true && checkpoint === null) throw invalid('options.checkpoint.path to resume from (or a path)', 'options.resume', resume);
  let progress: ProgressStream | ProgressBar | null = null;
  const p = o.progress ?? 'auto';
  if (p === 'auto') progress = process.stderr.isTTY ? process.stderr : null;
  else if (p === true) progress = process.stderr;
  else if (p === false) progress = null;
  else if (p instanceof ProgressBar) progress = p;
  else if (typeof p === 'object' && p !== null && typeof (p as ProgressStream).write === 'function') progress = p as ProgressStream;
  else throw invalid("'auto', true, false, a writable stream or a ProgressBar", 'options.progress', p);
  if (o.onEvent !== undefined && typeof o.onEvent !== 'function') throw invalid('a function', 'options.onEvent', o.onEvent);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw invalid('an AbortSignal', 'options.signal', o.signal);
  return {
    loss: resolveLoss(o.loss ?? 'cross-entropy', 'options.loss'),
    optimizer: createOptimizer((o.optimizer ?? { type: 'adamw', lr: 1e-3 }) as OptimizerSpec | Optimizer),
    schedule: createSchedule(scheduleSpec),
    epochs: integer(o.epochs ?? 1, 'options.epochs', 1),
    maxSteps: o.maxSteps === undefined ? null : integer(o.maxSteps, 'options.maxSteps', 1),
    batchSize: integer(o.batchSize ?? 64, 'options.batchSize', 1),
    dropLast: bool(o.dropLast, 'options.dropLast', false),
    shuffle: bool(o.shuffle, 'options.shuffle', true),
    seed: integer(o.seed ?? 0, 'options.seed', 0, 0xffffffff),
    clip: o.clipGradNorm === undefined ? null : positive(o.clipGradNorm, 'options.clipGradNorm'),
    evalEvery: o.evalEvery === undefined || o.evalEvery === 'epoch' ? 'epoch' : integer(o.evalEvery, 'options.evalEvery', 1),
    evalBatchSize: integer(o.evalBatchSize ?? 1024, 'options.evalBatchSize', 1),
    monitor,
    early,
    checkpoint,
    resume: resume as boolean | string,
    progress,
    onEvent: (o.onEvent as Resolved['onEvent']) ?? null,
    signal: (o.signal as AbortSignal | undefined) ?? null,
  };
}

function checkData(model: Sequential, data: TrainData, loss: Loss): { train: Dataset; validation: Dataset | null } {
  const d = object(data, 'data');
  knownKeys(d, 'data', ['train', 'validation']);
  const train = checkDataset(d.train, 'data.train');
  const validation = d.validation === undefined ? null : checkDataset(d.validation, 'data.validation');
  for (const [set, name] of [
    [train, 'data.train'],
    [validation, 'data.validation'],
  ] as const) {
    if (set === null) continue;
    if (set.inputs.cols !== model.inFeatures) {
      throw new EigenLoraxError(`${name}: the inputs have ${set.inputs.cols} features but the model takes ${model.inFeatures}`, 'ERR_SHAPE_MISMATCH');
    }
    loss.checkTargets(set.targets, set.inputs.rows, model.outFeatures, name);
  }
  return { train, validation };
}


/**
 * Trains `model` on `data.train`. Resolves when the run ends (all epochs, `maxSteps`, early
 * stopping, or the signal), with the histories and the reason it stopped. Bad inputs are
 * refused before the first update: ERR_SHAPE_MISMATCH for data of the wrong width,
 * ERR_INVALID_ARGUMENT for a label out of range; a non-finite loss or gradient stops the run
 * with ERR_NON_FINITE; a checkpoint that does not fit is ERR_CHECKPOINT_MISMATCH.
 */
export async function trainModel(model: Sequential, data: TrainData, options: TrainOptions = {}): Promise<TrainResult> {
  if (training.has(model)) {
    throw new EigenLoraxError('this model is already being trained (a model holds one batch of activations at a time): await the other run first', 'ERR_INVALID_ARGUMENT');
  }
  training.add(model);
  try {
    return await run(model, data, options);
  } finally {
    training.delete(model);
  }
}

/** Models with a run in progress. */
const training = new WeakSet<Sequential>();

/** Checks the options, data and parameters, sets up the state (fresh or resumed), and runs. */
async function run(model: Sequential, data: TrainData, options: TrainOptions): Promise<TrainResult> {
  const started = performance.now();
  const o = resolveOptions(options);
  const { train, validation } = checkData(model, data, o.loss);
  const params: Parameter[] = model.parameters();
  if (params.length === 0) throw invalid('a model with trainable parameters', 'model', model);
  const names = new Set<string>();
  for (const p of params) {
    if (names.has(p.name)) throw invalid('unique parameter names', 'model', p.name);
    names.add(p.name);
  }

  const n = train.inputs.rows;
  const batches = o.dropLast ? Math.floor(n / o.batchSize) : Math.ceil(n / o.batchSize);
  if (batches < 1) throw invalid(`a batch size <= the ${n} training rows when dropLast is set`, 'options.batchSize', o.batchSize);
  const totalSteps = o.maxSteps === null ? o.epochs * batches : Math.min(o.maxSteps, o.epochs * batches);
  if (o.schedule instanceof CosineSchedule && o.schedule.totalSteps === null) o.schedule.totalSteps = totalSteps;

  const fingerprint: RunFingerprint = {
    batchSize: o.batchSize,
    seed: o.seed,
    shuffle: o.shuffle,
    dropLast: o.dropLast,
    trainRows: n,
    loss: o.loss.name,
    parameters: Object.fromEntries(params.map((p) => [p.name, [...p.shape]])),
    frozen: frozenDigest(model.tensors()),
  };
  const resumeFrom = typeof o.resume === 'string' ? path.resolve(o.resume) : o.resume && o.checkpoint !== null && (await exists(o.checkpoint.path)) ? o.checkpoint.path : null;
  const state =
    resumeFrom === null
      ? freshState(o.seed, o.early !== null)
      : await resumeState(resumeFrom, { fingerprint, params, optimizer: o.optimizer, schedule: o.schedule, earlyStopping: o.early !== null });
  return new TrainingRun(o, model, { train, validation }, params, fingerprint, state, { batches, totalSteps }).run(started);
}
