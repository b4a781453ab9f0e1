/**
 * Training checkpoints: one safetensors file (written atomically) with
 *  - `model.<param>`: the trainable parameters (F32, bit for bit);
 *  - `optimizer.<param>.<state>`: the optimiser's per-parameter state (`exp_avg`,
 *    `exp_avg_sq`, `momentum_buffer`);
 *  - `best.<param>`: the best parameters so far, when early stopping restores them;
 *  - `__metadata__`: `format` = `eigenlorax-checkpoint`, `format_version`, and
 *    `eigenlorax.checkpoint`, a JSON record of everything else the loop needs to continue
 *    exactly: step, epoch, batch, the shuffling generator's state, the optimiser's step and
 *    hyper-parameters, the schedule and early-stopping state, the running epoch sums, the
 *    history, and a fingerprint of the run (batch size, seed, data size, frozen tensors).
 */
import { createHash } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { fileError, ioError } from '../io/files.js';
import { verifyDigest } from '../io/digest.js';
import { openSafetensors, writeSafetensors, type SafetensorsEntry } from '../io/safetensors.js';
import { Random } from '../random.js';
import { filePlace, mismatch, said } from '../schema.js';
import { invalid } from '../validate.js';
import { parseLoopState } from './checkpoint-schema.js';
import type { NamedTensor, Parameter } from './layer.js';
import type { LrSchedule, Optimizer, OptimizerKind, ScheduleState } from './optim.js';

export const CHECKPOINT_FORMAT = 'eigenlorax-checkpoint';
export const CHECKPOINT_FORMAT_VERSION = 1;
export const CHECKPOINT_METADATA_KEY = 'eigenlorax.checkpoint';

/** One evaluation of the run. */
export interface EvalRecord {
  step: number;
  epoch: number;
  /** 'validation' when a validation set was given, else 'train' (the epoch's running means). */
  source: 'validation' | 'train';
  loss: number;
  accuracy: number | null;
}

/** One finished epoch: the mean training loss and accuracy over its batches. */
export interface EpochRecord {
  epoch: number;
  step: number;
  loss: number;
  accuracy: number | null;
}

/** What the training loop stores besides tensors. */
export interface LoopState {
  /** Updates made. */
  step: number;
  /** The current epoch (0-based). */
  epoch: number;
  /** The next batch of the current epoch. */
  batch: number;
  /** The shuffling generator's state at the start of the current epoch (before its shuffle). */
  rng: number[];
  epochLossSum: number;
  epochCorrect: number;
  epochRows: number;
  optimizer: { kind: OptimizerKind; step: number; hyper: Record<string, number | boolean> };
  schedule: ScheduleState;
  early: { best: number | null; bestStep: number; bad: number; stopped: boolean } | null;
  evals: EvalRecord[];
  epochs: EpochRecord[];
  fingerprint: RunFingerprint;
}

/** The settings a resumed run must share with the checkpointed one to continue exactly. */
export interface RunFingerprint {
  batchSize: number;
  seed: number;
  shuffle: boolean;
  dropLast: boolean;
  trainRows: number;
  loss: string;
  /** name -> shape of the trainable parameters. */
  parameters: Record<string, number[]>;
  /** sha256 of the frozen tensors (names, shapes and bytes). */
  frozen: string;
}

export interface Checkpoint {
  file: string;
  state: LoopState;
  /** Trainable parameters by name. */
  parameters: Map<string, { shape: number[]; data: Float32Array }>;
  /** Optimiser state tensors by `<param>.<state>`. */
  optimizer: Map<string, Float32Array>;
  /** Best parameters (early stopping with restoreBest), by name. */
  best: Map<string, Float32Array>;
}

/** sha256 over the frozen tensors' names, shapes and bytes. */
export function frozenDigest(tensors: readonly NamedTensor[]): string {
  const hash = createHash('sha256');
  for (const t of tensors) {
    if (t.trainable) continue;
    hash.update(`${t.name}:${t.shape.join('x')};`);
    hash.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  return hash.digest('hex');
}

/** Writes a checkpoint atomically (the folder is created). */
export async function writeCheckpoint(
  file: string,
  state: LoopState,
  parameters: ReadonlyArray<{ name: string; shape: readonly number[]; data: Float32Array }>,
  optimizer: ReadonlyMap<string, Float32Array>,
  best: ReadonlyMap<string, Float32Array> | null,
): Promise<void> {
  const entries: SafetensorsEntry[] = [];
  const shapes = new Map(parameters.map((p) => [p.name, p.shape]));
  for (const p of parameters) entries.push({ name: `model.${p.name}`, shape: [...p.shape], data: p.data });
  for (const [key, data] of optimizer) entries.push({ name: `optimizer.${key}`, shape: [data.length], data });
  if (best !== null) {
    for (const [name, data] of best) entries.push({ name: `best.${name}`, shape: [...(shapes.get(name) ?? [data.length])], data });
  }
  const target = path.resolve(file);
  await mkdir(path.dirname(target), { recursive: true }).catch((cause: unknown) => {
    throw ioError(cause, target, 'create the folder');
  });
  await writeSafetensors(target, entries, {
    metadata: {
      format: CHECKPOINT_FORMAT,
      format_version: String(CHECKPOINT_FORMAT_VERSION),
      [CHECKPOINT_METADATA_KEY]: JSON.stringify(state),
    },
    digest: true,
  });
}

/**
 * Reads a checkpoint written by the training loop. ERR_CHECKPOINT_FORMAT when the file
 * is not one (or of another format version), ERR_NOT_FOUND when it does not exist.
 */
export async function loadCheckpoint(file: string): Promise<Checkpoint> {
  if (typeof file !== 'string' || file.length === 0) throw invalid('a path', 'file', file);
  const reader = await openSafetensors(file);
  try {
    await verifyDigest(reader);
    const where = reader.path;
    const bad = (message: string, key?: string) => fileError('ERR_CHECKPOINT_FORMAT', where, message, key);
    const meta = reader.metadata;
    if (meta.format !== CHECKPOINT_FORMAT) throw bad(`not an eigenlorax checkpoint (metadata format is ${JSON.stringify(meta.format ?? null)})`);
    if (meta.format_version !== String(CHECKPOINT_FORMAT_VERSION)) {
      throw bad(`checkpoint format version ${JSON.stringify(meta.format_version ?? null)} is not supported (this library reads ${CHECKPOINT_FORMAT_VERSION})`);
    }
    const place = filePlace(`${where}, __metadata__[${JSON.stringify(CHECKPOINT_METADATA_KEY)}]`, 'ERR_CHECKPOINT_FORMAT');
    let raw: unknown;
    try {
      raw = JSON.parse(meta[CHECKPOINT_METADATA_KEY] ?? '');
    } catch {
      throw mismatch(place, '', 'the loop state in JSON', said(meta[CHECKPOINT_METADATA_KEY] === undefined ? 'nothing' : 'text that is not JSON'));
    }
    const state = parseLoopState(raw, place);
    const parameters = new Map<string, { shape: number[]; data: Float32Array }>();
    const optimizer = new Map<string, Float32Array>();
    const best = new Map<string, Float32Array>();
    for (const [key, info] of reader.tensors) {
      if (info.dtype !== 'F32') throw bad(`dtype ${info.dtype}, expected F32`, key);
      const data = (await reader.readFloat32(key)).data;
      if (key.startsWith('model.')) parameters.set(key.slice(6), { shape: [...info.shape], data });
      else if (key.startsWith('optimizer.')) optimizer.set(key.slice(10), data);
      else if (key.startsWith('best.')) best.set(key.slice(5), data);
      else throw bad('unexpected tensor (expected model.*, optimizer.* or best.*)', key);
    }
    for (const name of Object.keys(state.fingerprint.parameters)) {
      if (!parameters.has(name)) throw bad(`the parameter ${JSON.stringify(name)} of the loop state has no tensor model.${name}`);
    }
    return { file: where, state, parameters, optimizer, best };
  } finally {
    await reader.close();
  }
}

export function checkpointMismatch(file: string, message: string): EigenLoraxError {
  return fileError('ERR_CHECKPOINT_MISMATCH', file, message);
}

// ---------------------------------------------------------------------------------------
// The state a run carries from update to update

export type EarlyState = NonNullable<LoopState['early']>;

/**
 * Everything of a training run that changes from update to update (besides the
 * parameters and the optimiser, which hold their own): where it is, the shuffling
 * generator, the running sums of the epoch, the histories, early stopping and the best
 * parameters. Fresh (freshState) or from a checkpoint (resumeState); saved by snapshotState.
 */
export interface TrainingState {
  step: number;
  epoch: number;
  /** The next batch of the current epoch. */
  batch: number;
  rng: Random;
  /** The generator's state at the start of the current epoch (what a checkpoint stores). */
  rngAtEpochStart: number[];
  epochLossSum: number;
  epochCorrect: number;
  epochRows: number;
  evals: EvalRecord[];
  epochHistory: EpochRecord[];
  early: EarlyState | null;
  /** The best parameters so far (early stopping with restoreBest). */
  best: Map<string, Float32Array> | null;
  resumed: boolean;
}

export function freshState(seed: number, earlyStopping: boolean): TrainingState {
  const rng = new Random(seed);
  return {
    step: 0,
    epoch: 0,
    batch: 0,
    rng,
    rngAtEpochStart: rng.state(),
    epochLossSum: 0,
    epochCorrect: 0,
    epochRows: 0,
    evals: [],
    epochHistory: [],
    early: earlyStopping ? { best: null, bestStep: -1, bad: 0, stopped: false } : null,
    best: null,
    resumed: false,
  };
}

/** What a run needs to continue from a checkpoint: its settings, parameters, optimiser and schedule. */
export interface ResumeTarget {
  fingerprint: RunFingerprint;
  params: readonly Parameter[];
  optimizer: Optimizer;
  schedule: LrSchedule;
  earlyStopping: boolean;
}

/**
 * Continues a run from the checkpoint `file`: checks that it fits the run (same
 * fingerprint, parameters, frozen tensors, schedule type, early stopping), then loads the
 * optimiser and schedule state and the parameters, and returns the loop state. Nothing is
 * changed when a check fails (ERR_CHECKPOINT_MISMATCH).
 */
export async function resumeState(file: string, target: ResumeTarget): Promise<TrainingState> {
  const { fingerprint, params, optimizer, schedule, earlyStopping } = target;
  const ckpt = await loadCheckpoint(file);
  const s = ckpt.state;
  const f = s.fingerprint;
  for (const key of ['batchSize', 'seed', 'shuffle', 'dropLast', 'trainRows', 'loss'] as const) {
    if (f[key] !== fingerprint[key]) {
      throw checkpointMismatch(ckpt.file, `the checkpoint was made with ${key} = ${JSON.stringify(f[key])} but this run has ${JSON.stringify(fingerprint[key])}; an exact resume needs the same`);
    }
  }
  const missing = Object.keys(fingerprint.parameters).find((k) => !(k in f.parameters));
  const extra = Object.keys(f.parameters).find((k) => !(k in fingerprint.parameters));
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
  if (s.schedule.type !== schedule.type) {
    throw checkpointMismatch(ckpt.file, `the checkpoint's schedule is ${String(s.schedule.type)} but this run's is ${schedule.type}`);
  }
  if ((s.early === null) === earlyStopping) {
    throw checkpointMismatch(ckpt.file, `the checkpoint was made ${s.early === null ? 'without' : 'with'} early stopping and this run is ${earlyStopping ? 'with' : 'without'}`);
  }
  // These two check before they change anything.
  optimizer.loadState({ kind: s.optimizer.kind, step: s.optimizer.step, hyper: s.optimizer.hyper, tensors: ckpt.optimizer });
  schedule.loadState(s.schedule);
  for (const p of params) p.data.set((ckpt.parameters.get(p.name) as { data: Float32Array }).data);
  const rng = Random.fromState(s.rng);
  return {
    step: s.step,
    epoch: s.epoch,
    batch: s.batch,
    rng,
    rngAtEpochStart: rng.state(),
    epochLossSum: s.epochLossSum,
    epochCorrect: s.epochCorrect,
    epochRows: s.epochRows,
    evals: s.evals,
    epochHistory: s.epochs,
    early: s.early === null ? null : { ...s.early },
    best: ckpt.best.size > 0 ? ckpt.best : null,
    resumed: true,
  };
}

/** The loop state a checkpoint stores for `state`. */
export function snapshotState(state: TrainingState, optimizer: Optimizer, schedule: LrSchedule, fingerprint: RunFingerprint): LoopState {
  return {
    step: state.step,
    epoch: state.epoch,
    batch: state.batch,
    rng: state.rngAtEpochStart,
    epochLossSum: state.epochLossSum,
    epochCorrect: state.epochCorrect,
    epochRows: state.epochRows,
    optimizer: { kind: optimizer.kind, step: optimizer.stepCount, hyper: optimizer.hyper() },
    schedule: schedule.state(),
    early: state.early === null ? null : { ...state.early },
    evals: state.evals,
    epochs: state.epochHistory,
    fingerprint,
  };
}
