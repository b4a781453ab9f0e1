/**
 * Trained adapters out of a model: LoRA layers (and EigenLoRA layers, rebuilt as LoRA
 * factors) as a PEFT adapter through `saveAdapter`, and EigenLoRA coefficients as a
 * safetensors file with `<module>.eigenlora_A.loadings` / `<module>.eigenlora_B.loadings`
 * (DESIGN §4). Module names are the layers' names.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { saveAdapter } from '../adapters/save.js';
import type { LoraAdapter, LoraModule, SavedAdapter, SaveAdapterOptions } from '../adapters/types.js';
import { EigenLoraxError } from '../errors.js';
import { ioError } from '../io/files.js';
import { verifyDigest } from '../io/digest.js';
import { openSafetensors, writeSafetensors, type SafetensorsEntry } from '../io/safetensors.js';
import { matrix, type Matrix } from '../matrix.js';
import * as ops from '../native/ops.js';
import { invalid, knownKeys, object } from '../validate.js';
import { EigenLoRA, LoRA } from './layers.js';
import type { Sequential } from './model.js';

export const TRAINED_COEFFICIENTS_METADATA_KEY = 'eigenlorax.trained_coefficients';
export const TRAINED_COEFFICIENTS_FORMAT = 'eigenlorax-trained-coefficients';

/** alpha^T V_A^T (r x in) and U_B beta (out x r): an EigenLoRA layer's update as LoRA factors. */
export async function eigenLoraFactors(layer: EigenLoRA): Promise<{ A: Matrix; B: Matrix }> {
  const A = matrix(layer.rank, layer.inFeatures);
  const B = matrix(layer.outFeatures, layer.rank);
  await ops.reconstructFactors({
    componentsA: layer.componentsA,
    componentsB: layer.componentsB,
    meanA: null,
    meanB: null,
    alpha: layer.alpha,
    beta: layer.beta,
    A,
    B,
  });
  return { A, B };
}

function moduleOf(name: string, A: Matrix, B: Matrix, alpha: number, rslora: boolean): LoraModule {
  const rank = A.rows;
  return {
    name,
    rank,
    alpha,
    scale: rslora ? alpha / Math.sqrt(rank) : alpha / rank,
    rslora,
    layout: 'linear',
    shapes: { A: [A.rows, A.cols], B: [B.rows, B.cols] },
    inFeatures: A.cols,
    outFeatures: B.rows,
    fanInFanOut: false,
    keys: { A: '', B: '' },
    dtypes: { A: 'F32', B: 'F32' },
    A,
    B,
  };
}

export interface AdapterFromModelOptions {
  /** `base_model_name_or_path` (default null). */
  baseModel?: string | null;
}

/**
 * The model's adapters as one in-memory PEFT LoraAdapter (copies of the factors): every
 * LoRA layer as is, every EigenLoRA layer rebuilt as A = alpha^T V_A^T, B = U_B beta with
 * lora_alpha = scale x rank (so the scale is kept). ERR_INVALID_ARGUMENT when the model
 * has neither.
 */
export async function adapterFromModel(model: Sequential, options: AdapterFromModelOptions = {}): Promise<LoraAdapter> {
  const o = object(options, 'options');
  knownKeys(o, 'options', ['baseModel']);
  if (o.baseModel !== undefined && o.baseModel !== null && typeof o.baseModel !== 'string') throw invalid('a string or null', 'options.baseModel', o.baseModel);
  const modules = new Map<string, LoraModule>();
  for (const layer of model.layers) {
    if (layer instanceof LoRA) {
      modules.set(layer.name, moduleOf(layer.name, matrix(layer.rank, layer.inFeatures, layer.A.data.slice()), matrix(layer.outFeatures, layer.rank, layer.B.data.slice()), layer.alpha, layer.rslora));
    } else if (layer instanceof EigenLoRA) {
      const { A, B } = await eigenLoraFactors(layer);
      modules.set(layer.name, moduleOf(layer.name, A, B, layer.scale * layer.rank, false));
    }
  }
  if (modules.size === 0) throw invalid('a model with LoRA or EigenLoRA layers', 'model', model);
  return {
    format: 'peft',
    baseModel: (o.baseModel as string | null | undefined) ?? null,
    source: null,
    modules,
    extras: new Map(),
    config: null,
    metadata: {},
  };
}

/**
 * Saves the model's LoRA (and EigenLoRA, rebuilt) layers as a PEFT adapter folder
 * (`adapter_config.json` + `adapter_model.safetensors`, keys
 * `base_model.model.<layer>.lora_A.weight` / `.lora_B.weight`).
 */
export async function saveModelAdapter(
  model: Sequential,
  destination: string,
  options: AdapterFromModelOptions & Omit<SaveAdapterOptions, 'format'> = {},
): Promise<SavedAdapter> {
  const { baseModel, ...save } = object(options, 'options') as AdapterFromModelOptions & Omit<SaveAdapterOptions, 'format'>;
  const adapter = await adapterFromModel(model, baseModel === undefined ? {} : { baseModel });
  return saveAdapter(adapter, destination, { ...save, format: 'peft' });
}

/** One EigenLoRA layer's trained coefficients. */
export interface TrainedCoefficients {
  /** K_A x r. */
  alpha: Matrix;
  /** K_B x r. */
  beta: Matrix;
  rank: number;
  scale: number;
}

interface CoefficientsRecord {
  format: string;
  version: number;
  modules: Record<string, { rank: number; scale: number; kA: number; kB: number; inFeatures: number; outFeatures: number }>;
  [key: string]: unknown;
}

/**
 * Writes every EigenLoRA layer's alpha and beta as `<layer>.eigenlora_A.loadings`
 * (`K_A x r`) and `<layer>.eigenlora_B.loadings` (`K_B x r`), F32, atomically, with a
 * JSON record (`eigenlorax.trained_coefficients` in `__metadata__`: per module rank,
 * scale, K_A, K_B and widths, plus `extra` fields). The keys are the model's own
 * parameter names, so `model.load(file, { strict: false })` reads them back.
 */
export async function saveEigenLoraCoefficients(
  model: Sequential,
  file: string,
  options: { extra?: Record<string, unknown> } = {},
): Promise<{ file: string; modules: string[] }> {
  const o = object(options, 'options');
  knownKeys(o, 'options', ['extra']);
  if (typeof file !== 'string' || file.length === 0) throw invalid('a path', 'file', file);
  const layers = model.layers.filter((l): l is EigenLoRA => l instanceof EigenLoRA);
  if (layers.length === 0) throw invalid('a model with EigenLoRA layers', 'model', model);
  const entries: SafetensorsEntry[] = [];
  const record: CoefficientsRecord = { ...((o.extra as Record<string, unknown>) ?? {}), format: TRAINED_COEFFICIENTS_FORMAT, version: 1, modules: {} };
  for (const l of layers) {
    entries.push({ name: `${l.name}.eigenlora_A.loadings`, shape: [l.alpha.rows, l.rank], data: l.alpha.data });
    entries.push({ name: `${l.name}.eigenlora_B.loadings`, shape: [l.beta.rows, l.rank], data: l.beta.data });
    record.modules[l.name] = { rank: l.rank, scale: l.scale, kA: l.alpha.rows, kB: l.beta.rows, inFeatures: l.inFeatures, outFeatures: l.outFeatures };
  }
  const target = path.resolve(file);
  await mkdir(path.dirname(target), { recursive: true }).catch((cause: unknown) => {
    throw ioError(cause, target, 'create the folder');
  });
  await writeSafetensors(target, entries, { metadata: { [TRAINED_COEFFICIENTS_METADATA_KEY]: JSON.stringify(record) }, digest: true });
  return { file: target, modules: layers.map((l) => l.name) };
}

/** Reads a file written by {@link saveEigenLoraCoefficients}: per module alpha, beta, rank and scale. */
export async function loadEigenLoraCoefficients(file: string): Promise<Map<string, TrainedCoefficients>> {
  const reader = await openSafetensors(file);
  try {
    await verifyDigest(reader);
    const bad = (message: string) => new EigenLoraxError(`${reader.path}: ${message}`, 'ERR_SUBSPACE_FORMAT');
    let record: CoefficientsRecord;
    try {
      record = JSON.parse(reader.metadata[TRAINED_COEFFICIENTS_METADATA_KEY] ?? '') as CoefficientsRecord;
    } catch {
      throw bad(`metadata ${JSON.stringify(TRAINED_COEFFICIENTS_METADATA_KEY)} is missing or not JSON`);
    }
    if (record.format !== TRAINED_COEFFICIENTS_FORMAT || typeof record.modules !== 'object' || record.modules === null) {
      throw bad(`not a trained coefficients file (format ${JSON.stringify(record.format ?? null)})`);
    }
    const out = new Map<string, TrainedCoefficients>();
    for (const [name, m] of Object.entries(record.modules)) {
      const a = await reader.readFloat32(`${name}.eigenlora_A.loadings`);
      const b = await reader.readFloat32(`${name}.eigenlora_B.loadings`);
      if (a.shape.length !== 2 || b.shape.length !== 2 || a.shape[1] !== m.rank || b.shape[1] !== m.rank) {
        throw bad(`module ${JSON.stringify(name)}: loadings of shapes [${a.shape.join(', ')}] and [${b.shape.join(', ')}] do not have rank ${m.rank}`);
      }
      out.set(name, {
        alpha: matrix(a.shape[0] as number, m.rank, a.data),
        beta: matrix(b.shape[0] as number, m.rank, b.data),
        rank: m.rank,
        scale: m.scale,
      });
    }
    return out;
  } finally {
    await reader.close();
  }
}
