/**
 * The served-model folder that `eigenlorax serve` reads (and `eigenlorax demo` writes as
 * `<out>/serve/`):
 *
 *   model.json                 the layers (Linear names and widths, activations) and the subspace id
 *   base.safetensors           the base weights (`fc1.weight`, `fc1.bias`, ...)
 *   subspace/                  the subspace (saveSubspace)
 *   adapters/<name>.safetensors  coefficients (saveCoefficients), served as adapter <name>
 *
 * Adapters can be added by dropping coefficient files into `adapters/` (read at start-up)
 * or, while a server runs, through its HTTP API. Also here: reading coefficients from the
 * bytes of an upload.
 */
import { mkdir, mkdtemp, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { ioError, readRegularFile, writeFileAtomic } from '../io/files.js';
import { matrix } from '../matrix.js';
import { loadCoefficients, loadSubspace, saveCoefficients, saveSubspace } from '../subspace/files.js';
import type { AdapterCoefficients, Subspace } from '../subspace/types.js';
import { GELU, Linear, ReLU, type GeluApproximation, type Layer } from '../train/layers.js';
import { Sequential } from '../train/model.js';
import { invalid, knownKeys, object } from '../validate.js';
import { version } from '../version.js';
import { checkAdapterName, ServedModel } from './model.js';

export const SERVED_MODEL_FORMAT = 'eigenlorax-served-model';
export const SERVED_MODEL_FORMAT_VERSION = 1;
export const SERVED_MODEL_FILE = 'model.json';
export const SERVED_BASE_FILE = 'base.safetensors';
export const SERVED_SUBSPACE_FOLDER = 'subspace';
export const SERVED_ADAPTERS_FOLDER = 'adapters';

type LayerRecord =
  | { kind: 'linear'; name: string; inFeatures: number; outFeatures: number; bias: boolean }
  | { kind: 'relu' }
  | { kind: 'gelu'; approximate: GeluApproximation };

export interface WriteServeFolderOptions {
  /** The base model: Linear, ReLU and GELU layers. */
  model: Sequential;
  subspace: Subspace;
  /** Adapters to serve: name -> coefficients on `subspace`. */
  adapters?: Iterable<readonly [string, AdapterCoefficients]>;
}

/**
 * Writes a served-model folder (created if needed; every file atomically, model.json
 * last). Everything is checked first by building the ServedModel it describes. Coefficient
 * files in `adapters/` that are not among `adapters` are removed (a rewritten folder
 * serves exactly what it was given). Resolves with the files written, relative to `folder`.
 */
export async function writeServeFolder(folder: string, options: WriteServeFolderOptions): Promise<{ folder: string; files: string[] }> {
  if (typeof folder !== 'string' || folder.length === 0) throw invalid('a folder path', 'folder', folder);
  const o = object(options, 'options');
  knownKeys(o, 'options', ['model', 'subspace', 'adapters']);
  const model = o.model as Sequential;
  const check = new ServedModel(model, o.subspace as Subspace);
  const adapters = [...((o.adapters as Iterable<readonly [string, AdapterCoefficients]> | undefined) ?? [])];
  for (const [name, c] of adapters) await check.register(name, c);
  const root = path.resolve(folder);
  const adapterDir = path.join(root, SERVED_ADAPTERS_FOLDER);
  await mkdir(adapterDir, { recursive: true }).catch((cause: unknown) => {
    throw ioError(cause, adapterDir, 'create the folder');
  });
  const files: string[] = [];
  await model.save(path.join(root, SERVED_BASE_FILE));
  files.push(SERVED_BASE_FILE);
  const saved = await saveSubspace(check.subspace, path.join(root, SERVED_SUBSPACE_FOLDER));
  files.push(...saved.files.map((f) => path.relative(root, f)));
  const keep = new Set(adapters.map(([name]) => `${name}.safetensors`));
  for (const entry of await readdir(adapterDir)) {
    if (entry.endsWith('.safetensors') && !keep.has(entry)) await unlink(path.join(adapterDir, entry));
  }
  for (const [name, c] of adapters) {
    await saveCoefficients(c, path.join(adapterDir, `${name}.safetensors`));
    files.push(`${SERVED_ADAPTERS_FOLDER}/${name}.safetensors`);
  }
  const layers: LayerRecord[] = check.layers.map((l) =>
    l.kind === 'linear' ? { kind: 'linear', name: l.name, inFeatures: l.weight.cols, outFeatures: l.weight.rows, bias: l.bias !== null } : l,
  );
  const record = {
    format: SERVED_MODEL_FORMAT,
    formatVersion: SERVED_MODEL_FORMAT_VERSION,
    library: { name: 'eigenlorax', version },
    inFeatures: check.inFeatures,
    outFeatures: check.outFeatures,
    layers,
    subspaceId: check.subspace.id,
  };
  await writeFileAtomic(path.join(root, SERVED_MODEL_FILE), `${JSON.stringify(record, null, 2)}\n`);
  files.push(SERVED_MODEL_FILE);
  return { folder: root, files };
}

function formatError(file: string, field: string, message: string): EigenLoraxError {
  return new EigenLoraxError(`${file}${field === '' ? '' : `, field ${JSON.stringify(field)}`}: ${message}`, 'ERR_MODEL_FORMAT');
}

function positiveInteger(file: string, o: Record<string, unknown>, key: string, field: string): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw formatError(file, field, `expected a positive integer but found ${JSON.stringify(v) ?? 'nothing'}`);
  return v;
}

function parseLayers(file: string, raw: unknown): Layer[] {
  if (!Array.isArray(raw) || raw.length === 0) throw formatError(file, 'layers', 'expected a non-empty array');
  return raw.map((entry: unknown, i): Layer => {
    const at = `layers[${i}]`;
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw formatError(file, at, 'expected an object');
    const l = entry as Record<string, unknown>;
    if (l.kind === 'relu') return new ReLU();
    if (l.kind === 'gelu') {
      if (l.approximate !== 'none' && l.approximate !== 'tanh') throw formatError(file, `${at}.approximate`, "expected 'none' or 'tanh'");
      return new GELU('', { approximate: l.approximate });
    }
    if (l.kind !== 'linear') throw formatError(file, `${at}.kind`, `expected 'linear', 'relu' or 'gelu' but found ${JSON.stringify(l.kind) ?? 'nothing'}`);
    if (typeof l.name !== 'string' || l.name.length === 0) throw formatError(file, `${at}.name`, 'expected a layer name');
    if (typeof l.bias !== 'boolean') throw formatError(file, `${at}.bias`, 'expected true or false');
    const dIn = positiveInteger(file, l, 'inFeatures', `${at}.inFeatures`);
    const dOut = positiveInteger(file, l, 'outFeatures', `${at}.outFeatures`);
    // Zeros of the recorded shapes; the base weights file fills them (and must match them).
    return new Linear(l.name, { weight: matrix(dOut, dIn), bias: l.bias ? new Float32Array(dOut) : null });
  });
}

/**
 * Reads a served-model folder written by {@link writeServeFolder}: the layers from
 * model.json, the base weights (every tensor present with its shape), the subspace (its
 * id as model.json records it), and every `adapters/*.safetensors` registered under its
 * file name. Broken model.json or adapter file names: ERR_MODEL_FORMAT; the weights,
 * subspace and coefficients fail as their loaders do.
 */
export async function loadServedModel(folder: string, options: { capacity?: number } = {}): Promise<ServedModel> {
  if (typeof folder !== 'string' || folder.length === 0) throw invalid('a folder path', 'folder', folder);
  const root = path.resolve(folder);
  const file = path.join(root, SERVED_MODEL_FILE);
  let text: string;
  try {
    text = (await readRegularFile(file, 'read the served model (write one with `eigenlorax demo` or writeServeFolder)')).toString('utf8');
  } catch (cause) {
    throw ioError(cause, file, 'read the served model (write one with `eigenlorax demo` or writeServeFolder)');
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw formatError(file, '', `not JSON (${(cause as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw formatError(file, '', 'expected a JSON object');
  const o = raw as Record<string, unknown>;
  if (o.format !== SERVED_MODEL_FORMAT) throw formatError(file, 'format', `expected ${JSON.stringify(SERVED_MODEL_FORMAT)}`);
  if (o.formatVersion !== SERVED_MODEL_FORMAT_VERSION) {
    throw formatError(file, 'formatVersion', `version ${JSON.stringify(o.formatVersion)} is not supported (this eigenlorax reads version ${SERVED_MODEL_FORMAT_VERSION})`);
  }
  if (typeof o.subspaceId !== 'string') throw formatError(file, 'subspaceId', 'expected the subspace id');
  let base: Sequential;
  try {
    base = new Sequential(parseLayers(file, o.layers));
  } catch (error) {
    if (error instanceof EigenLoraxError && error.code !== 'ERR_MODEL_FORMAT') throw formatError(file, 'layers', error.message);
    throw error;
  }
  if (base.inFeatures !== positiveInteger(file, o, 'inFeatures', 'inFeatures') || base.outFeatures !== positiveInteger(file, o, 'outFeatures', 'outFeatures')) {
    throw formatError(file, 'inFeatures', `the layers take ${base.inFeatures} and give ${base.outFeatures} features, not ${String(o.inFeatures)} and ${String(o.outFeatures)}`);
  }
  await base.load(path.join(root, SERVED_BASE_FILE));
  const subspace = await loadSubspace(path.join(root, SERVED_SUBSPACE_FOLDER));
  if (subspace.id !== o.subspaceId) {
    throw formatError(file, 'subspaceId', `${o.subspaceId.slice(0, 12)}, but ${SERVED_SUBSPACE_FOLDER}/ holds subspace ${subspace.id.slice(0, 12)}`);
  }
  const model = new ServedModel(base, subspace, options);
  const adapterDir = path.join(root, SERVED_ADAPTERS_FOLDER);
  let entries: string[] = [];
  try {
    entries = (await readdir(adapterDir)).filter((e) => e.endsWith('.safetensors')).sort();
  } catch (cause) {
    const error = ioError(cause, adapterDir, 'list the adapters');
    if (error.code !== 'ERR_NOT_FOUND') throw error;
  }
  for (const entry of entries) {
    const name = entry.slice(0, -'.safetensors'.length);
    const where = path.join(adapterDir, entry);
    try {
      checkAdapterName(name, 'the adapter name');
    } catch (error) {
      throw formatError(where, '', (error as Error).message);
    }
    await model.register(name, await loadCoefficients(where, subspace));
  }
  return model;
}

/**
 * Coefficients from the bytes of a coefficients file (what saveCoefficients writes), with
 * every check of loadCoefficients against `subspace`. The bytes go to a private temporary
 * file, removed afterwards; error messages name `label` instead of it.
 */
export async function coefficientsFromBytes(bytes: Uint8Array, subspace: Subspace, label = 'the uploaded file'): Promise<AdapterCoefficients> {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength === 0) throw invalid('the bytes of a coefficients file', label, bytes);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-upload-')).catch((cause: unknown) => {
    throw ioError(cause, os.tmpdir(), 'create a temporary folder');
  });
  const file = path.join(dir, 'coefficients.safetensors');
  try {
    await writeFile(file, bytes).catch((cause: unknown) => {
      throw ioError(cause, file, 'write');
    });
    return await loadCoefficients(file, subspace);
  } catch (error) {
    if (error instanceof EigenLoraxError) throw new EigenLoraxError(error.message.split(file).join(label), error.code);
    throw error;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The folder `eigenlorax serve` opens when given none: where `eigenlorax demo` writes its
 * served model with its default --out (`eigenlorax-demo`; test/serve.test.ts checks the
 * two agree). Kept here so that serving does not load the demo.
 */
export const DEFAULT_SERVE_FOLDER = path.join('eigenlorax-demo', 'serve');
