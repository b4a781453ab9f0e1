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
import { GELU, Linear, ReLU, type Layer } from '../train/layers.js';
import { Sequential } from '../train/model.js';
import { invalid } from '../validate.js';
import { version } from '../version.js';
import { argumentPlace, Count, filePlace, mismatch, Options, parse, said, Type, type Place, type Static } from '../schema.js';
import { checkAdapterName, ServedModel } from './model.js';

export const SERVED_MODEL_FORMAT = 'eigenlorax-served-model';
export const SERVED_MODEL_FORMAT_VERSION = 1;
export const SERVED_MODEL_FILE = 'model.json';
export const SERVED_BASE_FILE = 'base.safetensors';
export const SERVED_SUBSPACE_FOLDER = 'subspace';
export const SERVED_ADAPTERS_FOLDER = 'adapters';

const LayerRecordSchema = Type.Union([
  Type.Object({ kind: Type.Literal('linear'), name: Type.String({ minLength: 1 }), inFeatures: Count(1), outFeatures: Count(1), bias: Type.Boolean() }),
  Type.Object({ kind: Type.Literal('relu') }),
  Type.Object({ kind: Type.Literal('gelu'), approximate: Type.Union([Type.Literal('none'), Type.Literal('tanh')]) }),
]);
type LayerRecord = Static<typeof LayerRecordSchema>;

/** model.json, version 1. */
export const ServedModelRecordSchema = Type.Object({
  format: Type.Literal(SERVED_MODEL_FORMAT),
  formatVersion: Count(),
  library: Type.Optional(Type.Object({ name: Type.String(), version: Type.String() })),
  inFeatures: Count(1),
  outFeatures: Count(1),
  layers: Type.Array(LayerRecordSchema, { minItems: 1, description: 'a non-empty array of layers' }),
  subspaceId: Type.String({ description: 'the subspace id' }),
});
export type ServedModelRecord = Static<typeof ServedModelRecordSchema>;

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
  // model and subspace are checked by ServedModel, each adapter by register.
  const o = parse(Options({ model: Type.Unknown(), subspace: Type.Unknown(), adapters: Type.Optional(Type.Unknown()) }), options, argumentPlace('options'));
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

function layerOf(l: LayerRecord): Layer {
  if (l.kind === 'relu') return new ReLU();
  if (l.kind === 'gelu') return new GELU('', { approximate: l.approximate });
  // Zeros of the recorded shapes; the base weights file fills them (and must match them).
  return new Linear(l.name, { weight: matrix(l.outFeatures, l.inFeatures), bias: l.bias ? new Float32Array(l.outFeatures) : null });
}

async function readRecord(file: string): Promise<ServedModelRecord> {
  const doing = 'read the served model (write one with `eigenlorax demo` or writeServeFolder)';
  let text: string;
  try {
    text = (await readRegularFile(file, doing)).toString('utf8');
  } catch (cause) {
    throw ioError(cause, file, doing);
  }
  const place = filePlace(file, 'ERR_MODEL_FORMAT');
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw mismatch(place, '', 'the served model in JSON', said(`text that is not JSON (${(cause as Error).message})`));
  }
  const record = parse(ServedModelRecordSchema, raw, place);
  if (record.formatVersion !== SERVED_MODEL_FORMAT_VERSION) throw mismatch(place, 'formatVersion', `version ${SERVED_MODEL_FORMAT_VERSION} (the one this eigenlorax reads)`, record.formatVersion);
  return record;
}

/** The base model model.json describes (zeros until its weights are loaded). */
function baseOf(record: ServedModelRecord, place: Place): Sequential {
  let base: Sequential;
  try {
    base = new Sequential(record.layers.map(layerOf));
  } catch (error) {
    if (error instanceof EigenLoraxError) throw mismatch(place, 'layers', 'layers that make a model', said(error.message));
    throw error;
  }
  if (base.inFeatures !== record.inFeatures || base.outFeatures !== record.outFeatures) {
    throw mismatch(place, 'inFeatures', `the widths the layers give (${base.inFeatures} in, ${base.outFeatures} out)`, said(`${record.inFeatures} in, ${record.outFeatures} out`));
  }
  return base;
}

/**
 * Reads a served-model folder written by {@link writeServeFolder}: the layers from
 * model.json, the base weights (every tensor present with its shape), the subspace (its
 * id as model.json records it), and every `adapters/*.safetensors` registered under its
 * file name. Broken model.json or adapter file names: ERR_MODEL_FORMAT; the weights,
 * subspace and coefficients fail as their loaders do.
 */
export async function loadServedModel(folder: string, options: { capacity?: number; pairCacheBytes?: number } = {}): Promise<ServedModel> {
  if (typeof folder !== 'string' || folder.length === 0) throw invalid('a folder path', 'folder', folder);
  const root = path.resolve(folder);
  const file = path.join(root, SERVED_MODEL_FILE);
  const place = filePlace(file, 'ERR_MODEL_FORMAT');
  const record = await readRecord(file);
  const base = baseOf(record, place);
  await base.load(path.join(root, SERVED_BASE_FILE));
  const subspace = await loadSubspace(path.join(root, SERVED_SUBSPACE_FOLDER));
  if (subspace.id !== record.subspaceId) {
    throw mismatch(place, 'subspaceId', `the id of the subspace in ${SERVED_SUBSPACE_FOLDER}/, ${subspace.id.slice(0, 12)}`, said(record.subspaceId.slice(0, 12)));
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
      throw new EigenLoraxError(`${where}: ${(error as Error).message}`, 'ERR_MODEL_FORMAT');
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
