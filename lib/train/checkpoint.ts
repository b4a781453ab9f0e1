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
import { filePlace, mismatch, said } from '../schema.js';
import { invalid } from '../validate.js';
import { parseLoopState } from './checkpoint-schema.js';
import type { NamedTensor } from './layers.js';
import type { OptimizerKind } from './optim.js';
import type { ScheduleState } from './optim.js';

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
