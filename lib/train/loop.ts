/**
 * The training loop: seeded shuffling and batching, forward/loss/backward/update with
 * optional gradient clipping and a learning-rate schedule, evaluation every epoch or every
 * N updates, early stopping, checkpoints with exact resume, a progress bar on terminals,
 * events for programmatic use, and an AbortSignal that stops after the current update.
 *
 * Every update awaits the native kernels (which run on libuv's thread pool), so the event
 * loop keeps turning while a model trains; the JS between awaits is a few per-element
 * loops (activations, loss, optimiser), see kernels.ts.
 *
 * Exact resume: a run resumed from a checkpoint makes the same updates, bit for bit, as an
 * uninterrupted run with the same options: the checkpoint holds the parameters, the
 * optimiser state, the shuffling generator's state at the start of the current epoch and
 * the position in it, the schedule and early-stopping state and the running sums.
 */
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { exists, ioError } from '../io/files.js';
import { matrix } from '../matrix.js';
import { finiteNumber, integer, invalid, knownKeys, object, oneOf } from '../validate.js';
import { checkTrainOptions } from './options.js';
import { checkDataset, gatherRows, type Dataset } from '../data/dataset.js';
import { BufferPool } from './buffers.js';
import {
  checkpointMismatch,
  frozenDigest,
  loadCheckpoint,
  writeCheckpoint,
  type EpochRecord,
  type EvalRecord,
  type LoopState,
  type RunFingerprint,
} from './checkpoint.js';
import { allFinite } from './kernels.js';
import type { Parameter } from './layers.js';
import { isLabels, resolveLoss, type Loss, type LossName, type Targets } from './losses.js';
import { evaluateWith, type Sequential } from './model.js';
import {
  clipGradNorm,
  createOptimizer,
  createSchedule,
  CosineSchedule,
  type LrSchedule,
  type Optimizer,
  type OptimizerSpec,
  type ScheduleSpec,
} from './optim.js';
import { ProgressBar, type ProgressStream } from '../progress.js';
import { trainingBarLine } from './progress.js';
import { Random } from '../random.js';

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

interface Resolved {
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


function newTargets(like: Targets, rows: number): Targets {
  if (isLabels(like)) {
    if (like instanceof Uint8Array) return new Uint8Array(rows);
    if (like instanceof Uint16Array) return new Uint16Array(rows);
    return new Int32Array(rows);
  }
  return matrix(rows, like.cols);
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
  const batchSize = o.batchSize;
  const batches = o.dropLast ? Math.floor(n / batchSize) : Math.ceil(n / batchSize);
  if (batches < 1) throw invalid(`a batch size <= the ${n} training rows when dropLast is set`, 'options.batchSize', batchSize);
  const totalSteps = o.maxSteps === null ? o.epochs * batches : Math.min(o.maxSteps, o.epochs * batches);
  if (o.schedule instanceof CosineSchedule && o.schedule.totalSteps === null) o.schedule.totalSteps = totalSteps;

  const fingerprint: RunFingerprint = {
    batchSize,
    seed: o.seed,
    shuffle: o.shuffle,
    dropLast: o.dropLast,
    trainRows: n,
    loss: o.loss.name,
    parameters: Object.fromEntries(params.map((p) => [p.name, [...p.shape]])),
    frozen: frozenDigest(model.tensors()),
  };

  // ---- state, fresh or from a checkpoint
  let step = 0;
  let epoch = 0;
  let batch = 0;
  let rng = new Random(o.seed);
  let epochLossSum = 0;
  let epochCorrect = 0;
  let epochRows = 0;
  let evals: EvalRecord[] = [];
  let epochHistory: EpochRecord[] = [];
  let early = o.early === null ? null : { best: null as number | null, bestStep: -1, bad: 0, stopped: false };
  let best: Map<string, Float32Array> | null = null;
  let resumed = false;

  const resumeFrom = typeof o.resume === 'string' ? path.resolve(o.resume) : o.resume && o.checkpoint !== null && (await exists(o.checkpoint.path)) ? o.checkpoint.path : null;
  if (resumeFrom !== null) {
    const ckpt = await loadCheckpoint(resumeFrom);
    const s = ckpt.state;
    const f = s.fingerprint;
    for (const key of ['batchSize', 'seed', 'shuffle', 'dropLast', 'trainRows', 'loss'] as const) {
      if (f[key] !== fingerprint[key]) {
        throw checkpointMismatch(ckpt.file, `the checkpoint was made with ${key} = ${JSON.stringify(f[key])} but this run has ${JSON.stringify(fingerprint[key])}; an exact resume needs the same`);
      }
    }
    const mine = Object.keys(fingerprint.parameters);
    const theirs = Object.keys(f.parameters);
    const missing = mine.find((k) => !(k in f.parameters));
    const extra = theirs.find((k) => !(k in fingerprint.parameters));
    if (missing !== undefined || extra !== undefined) {
      throw checkpointMismatch(
        ckpt.file,
        missing !== undefined ? `the checkpoint has no parameter ${JSON.stringify(missing)} of the model` : `the checkpoint's parameter ${JSON.stringify(extra)} is not trainable in the model`,
      );
    }
    for (const p of params) {
      const t = ckpt.parameters.get(p.name);
      if (t === undefined || t.data.length !== p.data.length || t.shape.join('x') !== p.shape.join('x')) {
        throw checkpointMismatch(ckpt.file, `parameter ${JSON.stringify(p.name)} has shape [${t?.shape.join(', ')}] in the checkpoint but [${p.shape.join(', ')}] in the model`);
      }
    }
    if (f.frozen !== fingerprint.frozen) {
      throw checkpointMismatch(ckpt.file, "the model's frozen tensors (base weights, components) differ from those the checkpoint was trained with");
    }
    if (s.schedule.type !== o.schedule.type) {
      throw checkpointMismatch(ckpt.file, `the checkpoint's schedule is ${String(s.schedule.type)} but this run's is ${o.schedule.type}`);
    }
    if ((s.early === null) !== (early === null)) {
      throw checkpointMismatch(ckpt.file, `the checkpoint was made ${s.early === null ? 'without' : 'with'} early stopping and this run is ${early === null ? 'without' : 'with'}`);
    }
    // These two check before they change anything.
    o.optimizer.loadState({ kind: s.optimizer.kind, step: s.optimizer.step, hyper: s.optimizer.hyper, tensors: ckpt.optimizer });
    o.schedule.loadState(s.schedule);
    for (const p of params) p.data.set((ckpt.parameters.get(p.name) as { data: Float32Array }).data);
    step = s.step;
    epoch = s.epoch;
    batch = s.batch;
    rng = Random.fromState(s.rng);
    epochLossSum = s.epochLossSum;
    epochCorrect = s.epochCorrect;
    epochRows = s.epochRows;
    evals = s.evals;
    epochHistory = s.epochs;
    early = s.early === null ? null : { ...s.early };
    best = ckpt.best.size > 0 ? ckpt.best : null;
    resumed = true;
  }

  // ---- helpers
  const bar = o.progress === null ? null : o.progress instanceof ProgressBar ? o.progress : new ProgressBar(o.progress, { keep: true });
  const emit = async (event: TrainEvent) => {
    if (o.onEvent !== null) await o.onEvent(event);
  };
  const monitorValue = (r: { loss: number; accuracy: number | null }) => (o.monitor === 'loss' ? r.loss : (r.accuracy ?? Number.NaN));
  const better = (value: number, than: number | null, delta: number) =>
    than === null || (o.monitor === 'loss' ? value < than - delta : value > than + delta);
  let bestRecord: EvalRecord | null = null;
  for (const r of evals) if (better(monitorValue(r), bestRecord === null ? null : monitorValue(bestRecord), 0)) bestRecord = r;

  let rngAtEpochStart = rng.state();
  let lastCheckpoint: string | null = null;
  const snapshot = (): LoopState => ({
    step,
    epoch,
    batch,
    rng: rngAtEpochStart,
    epochLossSum,
    epochCorrect,
    epochRows,
    optimizer: { kind: o.optimizer.kind, step: o.optimizer.stepCount, hyper: o.optimizer.hyper() },
    schedule: o.schedule.state(),
    early: early === null ? null : { ...early },
    evals,
    epochs: epochHistory,
    fingerprint,
  });
  const saveCheckpoint = async (reason: CheckpointEvent['reason']) => {
    if (o.checkpoint === null) return;
    await writeCheckpoint(o.checkpoint.path, snapshot(), params, o.optimizer.state().tensors, best);
    lastCheckpoint = o.checkpoint.path;
    await emit({ type: 'checkpoint', step, epoch, path: o.checkpoint.path, reason });
  };

  /** Records an evaluation; returns true when early stopping says stop. */
  const recordEval = async (r: { loss: number; accuracy: number | null }, source: EvalRecord['source']): Promise<boolean> => {
    const record: EvalRecord = { step, epoch, source, loss: r.loss, accuracy: r.accuracy };
    evals.push(record);
    const value = monitorValue(record);
    const improved = bestRecord === null || better(value, monitorValue(bestRecord), 0);
    if (improved) bestRecord = record;
    o.schedule.observe(value);
    let stop = false;
    if (early !== null && o.early !== null) {
      if (better(value, early.best, o.early.minDelta)) {
        early.best = value;
        early.bestStep = step;
        early.bad = 0;
        if (o.early.restoreBest) best = new Map(params.map((p) => [p.name, p.data.slice()]));
      } else {
        early.bad++;
        if (early.bad >= o.early.patience) {
          early.stopped = true;
          stop = true;
        }
      }
    }
    bar?.log(
      `${source === 'validation' ? `validation at update ${step}` : 'training'} (epoch ${epoch + 1}): loss ${r.loss.toFixed(4)}${r.accuracy === null ? '' : `, accuracy ${(r.accuracy * 100).toFixed(2)}%`}${improved ? ' *' : ''}`,
    );
    await emit({ type: 'eval', ...record, improved });
    return stop;
  };
  const evaluateValidation = async (): Promise<boolean> => {
    if (validation === null) return false;
    const r = await evaluateWith(model, validation, o.loss, o.evalBatchSize);
    return recordEval(r, 'validation');
  };

  // ---- buffers
  const pool = new BufferPool();
  const targetBuffers = new Map<number, Targets>();
  const targetsFor = (rows: number): Targets => {
    let t = targetBuffers.get(rows);
    if (t === undefined) {
      t = newTargets(train.targets, rows);
      targetBuffers.set(rows, t);
    }
    return t;
  };

  // ---- the loop
  let stoppedBy: StopReason = 'completed';
  let stepsThisRun = 0;
  let samplesThisRun = 0;
  const loopStart = performance.now();
  const aborted = () => o.signal !== null && o.signal.aborted;
  // Small native calls settle at once (they run inline, DESIGN §3), so a loop of them never
  // reaches the timers phase by itself: give the event loop a turn every few ms.
  let lastYield = performance.now();
  const yieldToEventLoop = async () => {
    const now = performance.now();
    if (now - lastYield < 4) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
    lastYield = performance.now();
  };
  if (early !== null && early.stopped) stoppedBy = 'early-stopping';
  else if (o.maxSteps !== null && step >= o.maxSteps) stoppedBy = 'max-steps';

  outer: while (stoppedBy === 'completed' && epoch < o.epochs) {
    if (aborted()) {
      stoppedBy = 'aborted';
      break;
    }
    rngAtEpochStart = rng.state();
    const order = o.shuffle ? rng.permutation(n) : Uint32Array.from({ length: n }, (_, i) => i);
    if (batch === 0) {
      epochLossSum = 0;
      epochCorrect = 0;
      epochRows = 0;
    }
    for (; batch < batches; ) {
      const start = batch * batchSize;
      const end = Math.min(n, start + batchSize);
      const rows = end - start;
      const x = pool.get('x', rows, train.inputs.cols);
      const t = targetsFor(rows);
      gatherRows(train, order, start, end, x, t);

      await yieldToEventLoop();
      const y = await model.forward(x);
      const grad = pool.get('grad', rows, model.outFeatures);
      const v = o.loss.compute(y, t, grad);
      if (!Number.isFinite(v.loss)) {
        throw new EigenLoraxError(
          `the loss is ${v.loss} at update ${step + 1} (epoch ${epoch + 1}, batch ${batch + 1}); lower the learning rate, clip gradients (clipGradNorm) or check the inputs for NaN`,
          'ERR_NON_FINITE',
        );
      }
      await model.backward(grad);
      let gradNorm: number | null = null;
      if (o.clip !== null) {
        gradNorm = clipGradNorm(params, o.clip);
        if (!Number.isFinite(gradNorm)) {
          throw new EigenLoraxError(`the gradient norm is ${gradNorm} at update ${step + 1} (epoch ${epoch + 1}, batch ${batch + 1})`, 'ERR_NON_FINITE');
        }
      } else if (!params.every((p) => allFinite(p.grad))) {
        throw new EigenLoraxError(`a gradient is not finite at update ${step + 1} (epoch ${epoch + 1}, batch ${batch + 1})`, 'ERR_NON_FINITE');
      }
      const lr = o.schedule.lrAt(step, o.optimizer.baseLr);
      o.optimizer.lr = lr;
      o.optimizer.step(params);
      step++;
      batch++;
      stepsThisRun++;
      samplesThisRun += rows;
      epochLossSum += v.loss * rows;
      epochRows += rows;
      if (v.correct !== null) epochCorrect += v.correct;

      const elapsed = (performance.now() - loopStart) / 1000;
      const samplesPerSecond = elapsed > 0 ? samplesThisRun / elapsed : 0;
      const accuracy = v.correct === null ? null : v.correct / rows;
      await emit({ type: 'step', step, epoch, batch: batch - 1, batches, loss: v.loss, accuracy, lr, gradNorm, samplesPerSecond });
      if (bar !== null) {
        const stepsPerSecond = elapsed > 0 ? stepsThisRun / elapsed : 0;
        // Running means over the epoch so far.
        const running = { loss: epochLossSum / epochRows, accuracy: o.loss.classification ? epochCorrect / epochRows : null };
        const etaSeconds = stepsPerSecond > 0 ? (totalSteps - step) / stepsPerSecond : null;
        bar.update(trainingBarLine({ epoch: epoch + 1, epochs: o.epochs, batch, batches, ...running, samplesPerSecond, etaSeconds }));
      }

      let stop = false;
      if (o.evalEvery !== 'epoch' && step % o.evalEvery === 0) stop = await evaluateValidation();
      if (o.checkpoint !== null && o.checkpoint.everySteps !== null && step % o.checkpoint.everySteps === 0 && !stop) {
        await saveCheckpoint('interval');
      }
      if (stop) {
        stoppedBy = 'early-stopping';
        break outer;
      }
      if (o.maxSteps !== null && step >= o.maxSteps) {
        stoppedBy = 'max-steps';
        break outer;
      }
      if (aborted()) {
        stoppedBy = 'aborted';
        break outer;
      }
    }

    // end of epoch
    const record: EpochRecord = {
      epoch,
      step,
      loss: epochLossSum / Math.max(1, epochRows),
      accuracy: o.loss.classification ? epochCorrect / Math.max(1, epochRows) : null,
    };
    epochHistory.push(record);
    await emit({ type: 'epoch', ...record });
    let stop = false;
    if (validation === null) stop = await recordEval({ loss: record.loss, accuracy: record.accuracy }, 'train');
    else if (o.evalEvery === 'epoch') stop = await evaluateValidation();
    epoch++;
    batch = 0;
    rngAtEpochStart = rng.state();
    if (stop) {
      stoppedBy = 'early-stopping';
      break;
    }
    if (o.checkpoint !== null && epoch % o.checkpoint.everyEpochs === 0 && epoch < o.epochs) await saveCheckpoint('epoch');
    if (aborted()) {
      stoppedBy = 'aborted';
      break;
    }
  }

  bar?.stop();
  await saveCheckpoint(stoppedBy === 'aborted' ? 'abort' : 'end');
  let restoredBest = false;
  if (stoppedBy !== 'aborted' && o.early !== null && o.early.restoreBest && best !== null) {
    const snapshotOfBest: Map<string, Float32Array> = best;
    for (const p of params) {
      const b = snapshotOfBest.get(p.name);
      if (b !== undefined) p.data.set(b);
    }
    restoredBest = true;
  }
  const seconds = (performance.now() - started) / 1000;
  const loopSeconds = (performance.now() - loopStart) / 1000;
  const result: TrainResult = {
    stoppedBy,
    steps: step,
    epochs: epochHistory.length,
    stepsThisRun,
    seconds,
    samplesPerSecond: loopSeconds > 0 ? samplesThisRun / loopSeconds : 0,
    evals,
    epochHistory,
    lastEval: evals.length > 0 ? (evals[evals.length - 1] as EvalRecord) : null,
    best: bestRecord,
    restoredBest,
    checkpoint: lastCheckpoint,
    resumed,
  };
  await emit({ type: 'done', result });
  return result;
}

