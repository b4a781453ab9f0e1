/**
 * One training run, in named steps: `update` (one batch: forward, loss, backward, checks,
 * optimiser), `endEpoch`, `recordEval`, `saveCheckpoint` and `finish`, over a
 * TrainingState (checkpoint.ts: fresh or resumed). loop.ts checks the options and data and
 * drives it; the run's order of operations is what makes a resumed run bit for bit the
 * uninterrupted one (see loop.ts).
 */
import { EigenLoraxError } from '../errors.js';
import { matrix } from '../matrix.js';
import { gatherRows, type Dataset } from '../data/dataset.js';
import { ProgressBar } from '../progress.js';
import { BufferPool } from './buffers.js';
import { snapshotState, writeCheckpoint, type EpochRecord, type EvalRecord, type RunFingerprint, type TrainingState } from './checkpoint.js';
import { allFinite } from './kernels.js';
import type { Parameter } from './layer.js';
import { isLabels, type Targets } from './losses.js';
import { evaluateWith, type Sequential } from './model.js';
import { clipGradNorm } from './optim.js';
import { trainingBarLine } from './progress.js';
import type { CheckpointEvent, Resolved, StopReason, TrainEvent, TrainResult } from './loop.js';

function newTargets(like: Targets, rows: number): Targets {
  if (isLabels(like)) {
    if (like instanceof Uint8Array) return new Uint8Array(rows);
    if (like instanceof Uint16Array) return new Uint16Array(rows);
    return new Int32Array(rows);
  }
  return matrix(rows, like.cols);
}

type Metrics = { loss: number; accuracy: number | null };

export class TrainingRun {
  readonly #o: Resolved;
  readonly #model: Sequential;
  readonly #train: Dataset;
  readonly #validation: Dataset | null;
  readonly #params: readonly Parameter[];
  /** The parameters' gradients, for the finiteness scan (one native call). */
  readonly #grads: readonly Float32Array[];
  readonly #fingerprint: RunFingerprint;
  readonly #state: TrainingState;
  readonly #batches: number;
  readonly #totalSteps: number;
  readonly #bar: ProgressBar | null;
  readonly #pool = new BufferPool();
  readonly #targets = new Map<number, Targets>();
  #bestRecord: EvalRecord | null = null;
  #lastCheckpoint: string | null = null;
  #stepsThisRun = 0;
  #samplesThisRun = 0;
  #loopStart = performance.now();
  #lastYield = performance.now();

  constructor(
    o: Resolved,
    model: Sequential,
    data: { train: Dataset; validation: Dataset | null },
    params: readonly Parameter[],
    fingerprint: RunFingerprint,
    state: TrainingState,
    shape: { batches: number; totalSteps: number },
  ) {
    this.#o = o;
    this.#model = model;
    this.#train = data.train;
    this.#validation = data.validation;
    this.#params = params;
    this.#grads = params.map((p) => p.grad);
    this.#fingerprint = fingerprint;
    this.#state = state;
    this.#batches = shape.batches;
    this.#totalSteps = shape.totalSteps;
    this.#bar = o.progress === null ? null : o.progress instanceof ProgressBar ? o.progress : new ProgressBar(o.progress, { keep: true });
    for (const r of state.evals) if (this.#better(this.#monitor(r), this.#bestRecord === null ? null : this.#monitor(this.#bestRecord), 0)) this.#bestRecord = r;
  }

  async #emit(event: TrainEvent): Promise<void> {
    if (this.#o.onEvent !== null) await this.#o.onEvent(event);
  }

  #monitor(r: Metrics): number {
    return this.#o.monitor === 'loss' ? r.loss : (r.accuracy ?? Number.NaN);
  }

  #better(value: number, than: number | null, delta: number): boolean {
    return than === null || (this.#o.monitor === 'loss' ? value < than - delta : value > than + delta);
  }

  #aborted(): boolean {
    return this.#o.signal !== null && this.#o.signal.aborted;
  }

  /**
   * Small native calls settle at once (they run inline, DESIGN §3), so a loop of them never
   * reaches the timers phase by itself: give the event loop a turn every few ms.
   */
  async #yieldToEventLoop(): Promise<void> {
    const now = performance.now();
    if (now - this.#lastYield < 4) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.#lastYield = performance.now();
  }

  #targetsFor(rows: number): Targets {
    let t = this.#targets.get(rows);
    if (t === undefined) {
      t = newTargets(this.#train.targets, rows);
      this.#targets.set(rows, t);
    }
    return t;
  }

  async saveCheckpoint(reason: CheckpointEvent['reason']): Promise<void> {
    const c = this.#o.checkpoint;
    if (c === null) return;
    const s = this.#state;
    await writeCheckpoint(c.path, snapshotState(s, this.#o.optimizer, this.#o.schedule, this.#fingerprint), this.#params, this.#o.optimizer.state().tensors, s.best);
    this.#lastCheckpoint = c.path;
    await this.#emit({ type: 'checkpoint', step: s.step, epoch: s.epoch, path: c.path, reason });
  }

  /** Records an evaluation; returns true when early stopping says stop. */
  async recordEval(r: Metrics, source: EvalRecord['source']): Promise<boolean> {
    const s = this.#state;
    const o = this.#o;
    const record: EvalRecord = { step: s.step, epoch: s.epoch, source, loss: r.loss, accuracy: r.accuracy };
    s.evals.push(record);
    const value = this.#monitor(record);
    const improved = this.#bestRecord === null || this.#better(value, this.#monitor(this.#bestRecord), 0);
    if (improved) this.#bestRecord = record;
    o.schedule.observe(value);
    let stop = false;
    if (s.early !== null && o.early !== null) {
      if (this.#better(value, s.early.best, o.early.minDelta)) {
        s.early.best = value;
        s.early.bestStep = s.step;
        s.early.bad = 0;
        if (o.early.restoreBest) s.best = new Map(this.#params.map((p) => [p.name, p.data.slice()]));
      } else {
        s.early.bad++;
        if (s.early.bad >= o.early.patience) {
          s.early.stopped = true;
          stop = true;
        }
      }
    }
    this.#bar?.log(
      `${source === 'validation' ? `validation at update ${s.step}` : 'training'} (epoch ${s.epoch + 1}): loss ${r.loss.toFixed(4)}${r.accuracy === null ? '' : `, accuracy ${(r.accuracy * 100).toFixed(2)}%`}${improved ? ' *' : ''}`,
    );
    await this.#emit({ type: 'eval', ...record, improved });
    return stop;
  }

  async #evaluateValidation(): Promise<boolean> {
    if (this.#validation === null) return false;
    const r = await evaluateWith(this.#model, this.#validation, this.#o.loss, this.#o.evalBatchSize);
    return this.recordEval(r, 'validation');
  }

  #nonFinite(what: string, hint = ''): EigenLoraxError {
    const s = this.#state;
    return new EigenLoraxError(`${what} at update ${s.step + 1} (epoch ${s.epoch + 1}, batch ${s.batch + 1})${hint}`, 'ERR_NON_FINITE');
  }

  /** One update on the batch at `start..end` of `order`: forward, loss, backward, checks, optimiser step. */
  async update(order: Uint32Array, start: number, end: number): Promise<StopReason | null> {
    const s = this.#state;
    const o = this.#o;
    const rows = end - start;
    const x = this.#pool.get('x', rows, this.#train.inputs.cols);
    const t = this.#targetsFor(rows);
    gatherRows(this.#train, order, start, end, x, t);

    await this.#yieldToEventLoop();
    const grad = this.#pool.get('grad', rows, this.#model.outFeatures);
    const v = await this.#model.trainStep(x, t, o.loss, grad);
    if (!Number.isFinite(v.loss)) {
      throw this.#nonFinite(`the loss is ${v.loss}`, '; lower the learning rate, clip gradients (clipGradNorm) or check the inputs for NaN');
    }
    let gradNorm: number | null = null;
    if (o.clip !== null) {
      gradNorm = clipGradNorm(this.#params, o.clip);
      if (!Number.isFinite(gradNorm)) throw this.#nonFinite(`the gradient norm is ${gradNorm}`);
    } else if (!allFinite(this.#grads)) {
      throw this.#nonFinite('a gradient is not finite');
    }
    const lr = o.schedule.lrAt(s.step, o.optimizer.baseLr);
    o.optimizer.lr = lr;
    o.optimizer.step(this.#params);
    s.step++;
    s.batch++;
    this.#stepsThisRun++;
    this.#samplesThisRun += rows;
    s.epochLossSum += v.loss * rows;
    s.epochRows += rows;
    if (v.correct !== null) s.epochCorrect += v.correct;

    const elapsed = (performance.now() - this.#loopStart) / 1000;
    const samplesPerSecond = elapsed > 0 ? this.#samplesThisRun / elapsed : 0;
    const accuracy = v.correct === null ? null : v.correct / rows;
    await this.#emit({ type: 'step', step: s.step, epoch: s.epoch, batch: s.batch - 1, batches: this.#batches, loss: v.loss, accuracy, lr, gradNorm, samplesPerSecond });
    if (this.#bar !== null) {
      const stepsPerSecond = elapsed > 0 ? this.#stepsThisRun / elapsed : 0;
      // Running means over the epoch so far.
      const running = { loss: s.epochLossSum / s.epochRows, accuracy: o.loss.classification ? s.epochCorrect / s.epochRows : null };
      const etaSeconds = stepsPerSecond > 0 ? (this.#totalSteps - s.step) / stepsPerSecond : null;
      this.#bar.update(trainingBarLine({ epoch: s.epoch + 1, epochs: o.epochs, batch: s.batch, batches: this.#batches, ...running, samplesPerSecond, etaSeconds }));
    }
    return this.#afterUpdate();
  }

  /** Evaluation and checkpoint intervals, then the reasons to stop after an update. */
  async #afterUpdate(): Promise<StopReason | null> {
    const s = this.#state;
    const o = this.#o;
    let stop = false;
    if (o.evalEvery !== 'epoch' && s.step % o.evalEvery === 0) stop = await this.#evaluateValidation();
    if (o.checkpoint !== null && o.checkpoint.everySteps !== null && s.step % o.checkpoint.everySteps === 0 && !stop) await this.saveCheckpoint('interval');
    if (stop) return 'early-stopping';
    if (o.maxSteps !== null && s.step >= o.maxSteps) return 'max-steps';
    if (this.#aborted()) return 'aborted';
    return null;
  }

  /** The rest of the current epoch (from `state.batch`); the reason to stop, or null to go on. */
  async epoch(): Promise<StopReason | null> {
    const s = this.#state;
    const o = this.#o;
    if (this.#aborted()) return 'aborted';
    s.rngAtEpochStart = s.rng.state();
    const n = this.#train.inputs.rows;
    const order = o.shuffle ? s.rng.permutation(n) : Uint32Array.from({ length: n }, (_, i) => i);
    if (s.batch === 0) {
      s.epochLossSum = 0;
      s.epochCorrect = 0;
      s.epochRows = 0;
    }
    while (s.batch < this.#batches) {
      const start = s.batch * o.batchSize;
      const stop = await this.update(order, start, Math.min(n, start + o.batchSize));
      if (stop !== null) return stop;
    }
    return this.#endEpoch();
  }

  /** Records the finished epoch, evaluates, checkpoints; the reason to stop, or null. */
  async #endEpoch(): Promise<StopReason | null> {
    const s = this.#state;
    const o = this.#o;
    const record: EpochRecord = {
      epoch: s.epoch,
      step: s.step,
      loss: s.epochLossSum / Math.max(1, s.epochRows),
      accuracy: o.loss.classification ? s.epochCorrect / Math.max(1, s.epochRows) : null,
    };
    s.epochHistory.push(record);
    await this.#emit({ type: 'epoch', ...record });
    let stop = false;
    if (this.#validation === null) stop = await this.recordEval({ loss: record.loss, accuracy: record.accuracy }, 'train');
    else if (o.evalEvery === 'epoch') stop = await this.#evaluateValidation();
    s.epoch++;
    s.batch = 0;
    s.rngAtEpochStart = s.rng.state();
    if (stop) return 'early-stopping';
    if (o.checkpoint !== null && s.epoch % o.checkpoint.everyEpochs === 0 && s.epoch < o.epochs) await this.saveCheckpoint('epoch');
    if (this.#aborted()) return 'aborted';
    return null;
  }

  /** Every epoch left, then `finish`. */
  async run(started: number): Promise<TrainResult> {
    const s = this.#state;
    const o = this.#o;
    this.#loopStart = performance.now();
    let stoppedBy: StopReason = 'completed';
    if (s.early !== null && s.early.stopped) stoppedBy = 'early-stopping';
    else if (o.maxSteps !== null && s.step >= o.maxSteps) stoppedBy = 'max-steps';
    while (stoppedBy === 'completed' && s.epoch < o.epochs) stoppedBy = (await this.epoch()) ?? 'completed';
    return this.#finish(stoppedBy, started);
  }

  /** The last checkpoint, the best parameters put back, the result and the 'done' event. */
  async #finish(stoppedBy: StopReason, started: number): Promise<TrainResult> {
    const s = this.#state;
    const o = this.#o;
    this.#bar?.stop();
    await this.saveCheckpoint(stoppedBy === 'aborted' ? 'abort' : 'end');
    let restoredBest = false;
    const best = s.best;
    if (stoppedBy !== 'aborted' && o.early !== null && o.early.restoreBest && best !== null) {
      for (const p of this.#params) {
        const b = best.get(p.name);
        if (b !== undefined) p.data.set(b);
      }
      restoredBest = true;
    }
    const loopSeconds = (performance.now() - this.#loopStart) / 1000;
    const result: TrainResult = {
      stoppedBy,
      steps: s.step,
      epochs: s.epochHistory.length,
      stepsThisRun: this.#stepsThisRun,
      seconds: (performance.now() - started) / 1000,
      samplesPerSecond: loopSeconds > 0 ? this.#samplesThisRun / loopSeconds : 0,
      evals: s.evals,
      epochHistory: s.epochHistory,
      lastEval: s.evals.length > 0 ? (s.evals[s.evals.length - 1] as EvalRecord) : null,
      best: this.#bestRecord,
      restoredBest,
      checkpoint: this.#lastCheckpoint,
      resumed: s.resumed,
    };
    await this.#emit({ type: 'done', result });
    return result;
  }
}
