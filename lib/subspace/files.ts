/**
 * Subspace and coefficients files.
 *
 * A subspace is a folder with
 *  - `subspace.safetensors`: per module `<m>.eigenlora_A.components` (`d_in x K_A`),
 *    `<m>.eigenlora_B.components` (`d_out x K_B`), `<m>.eigenlora_A.singular_values` /
 *    `<m>.eigenlora_B.singular_values` (the principal components' singular values), and
 *    when centred `<m>.eigenlora_A.mean` (`d_in`) / `<m>.eigenlora_B.mean` (`d_out`); all
 *    F32; `__metadata__` holds the format name, version and the subspace id;
 *  - `subspace.json`: the versioned sidecar (format, formatVersion, library version, id,
 *    settings, sources with their sha256, and per module the shapes, K, augmentation,
 *    energies, explained variance, the adapters it was built from and their ranks).
 * Coefficients are one safetensors file with `<m>.eigenlora_A.loadings` (`K_A x r`) and
 * `<m>.eigenlora_B.loadings` (`K_B x r`), and their JSON record in `__metadata__`
 * (`eigenlorax.coefficients`): the subspace id, stacking, the adapter's source, and per
 * module the rank, scales, lora_alpha, rsLoRA flag, norm and error.
 *
 * Writes are atomic (temporary files renamed; a subspace's two files are written to a
 * staging folder swapped in whole, see io/files.ts writeFolderAtomic) and carry a content
 * digest that reads verify (ERR_INTEGRITY, io/digest.ts). Reads validate everything and fail with ERR_SUBSPACE_FORMAT
 * (or ERR_SUBSPACE_MISMATCH for coefficients that belong to another subspace) naming the
 * file and the field or tensor.
 */
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { verifyDigest } from '../io/digest.js';
import { fileError, ioError, kindOf, readRegularFile, recoverInterruptedSwap, writeFileAtomic, writeFolderAtomic } from '../io/files.js';
import { isSafetensorsFloatDtype, openSafetensors, writeSafetensors, type SafetensorsEntry, type SafetensorsReader } from '../io/safetensors.js';
import { checkMatrix, type Matrix } from '../matrix.js';
import { adapterFormats, type LoraLayout } from '../adapters/types.js';
import { version as libraryVersion } from '../version.js';
import { invalid } from '../validate.js';
import { adapterCoefficients, relative } from './coefficients.js';
import {
  COEFFICIENTS_FORMAT,
  SUBSPACE_FORMAT,
  SUBSPACE_FORMAT_VERSION,
  SUBSPACE_SIDECAR_NAME,
  SUBSPACE_TENSORS_NAME,
  sidecarOf,
  subspaceId,
  subspaceKeys,
} from './identity.js';
import { checkSubspace } from './project.js';
import type {
  AdapterCoefficients,
  ModuleCoefficients,
  PerSide,
  SourceFile,
  Subspace,
  SubspaceModule,
  SubspaceSettings,
  SubspaceSource,
} from './types.js';

/** The safetensors `__metadata__` key of a coefficients file's JSON record. */
export const COEFFICIENTS_METADATA_KEY = 'eigenlorax.coefficients';
export const COEFFICIENTS_FORMAT_VERSION = 1;

const formatError = (file: string, message: string, key?: string) => fileError('ERR_SUBSPACE_FORMAT', file, message, key);

// ---------------------------------------------------------------------------------------
// JSON field checks

type Json = Record<string, unknown>;

/** Typed reads of JSON fields; every failure is ERR_SUBSPACE_FORMAT naming file and field. */
class Fields {
  constructor(readonly file: string) {}

  fail(field: string, message: string): EigenLoraxError {
    return new EigenLoraxError(`${this.file}, field ${JSON.stringify(field)}: ${message}`, 'ERR_SUBSPACE_FORMAT');
  }

  #get(o: Json, key: string, field: string): unknown {
    if (!(key in o)) throw this.fail(field, 'missing');
    return o[key];
  }

  object(o: Json, key: string, field: string): Json {
    const v = this.#get(o, key, field);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw this.fail(field, `expected an object but found ${show(v)}`);
    return v as Json;
  }

  array(o: Json, key: string, field: string): unknown[] {
    const v = this.#get(o, key, field);
    if (!Array.isArray(v)) throw this.fail(field, `expected an array but found ${show(v)}`);
    return v;
  }

  string(o: Json, key: string, field: string): string {
    const v = this.#get(o, key, field);
    if (typeof v !== 'string') throw this.fail(field, `expected a string but found ${show(v)}`);
    return v;
  }

  stringOrNull(o: Json, key: string, field: string): string | null {
    const v = this.#get(o, key, field);
    if (v !== null && typeof v !== 'string') throw this.fail(field, `expected a string or null but found ${show(v)}`);
    return v;
  }

  boolean(o: Json, key: string, field: string): boolean {
    const v = this.#get(o, key, field);
    if (typeof v !== 'boolean') throw this.fail(field, `expected true or false but found ${show(v)}`);
    return v;
  }

  number(o: Json, key: string, field: string, min = -Infinity, max = Infinity): number {
    const v = this.#get(o, key, field);
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
      throw this.fail(field, `expected a number in [${min}, ${max}] but found ${show(v)}`);
    }
    return v;
  }

  integer(o: Json, key: string, field: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
    const v = this.#get(o, key, field);
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
      throw this.fail(field, `expected an integer in [${min}, ${max}] but found ${show(v)}`);
    }
    return v;
  }

  oneOf<T extends string>(o: Json, key: string, field: string, choices: readonly T[]): T {
    const v = this.#get(o, key, field);
    if (typeof v !== 'string' || !choices.includes(v as T)) throw this.fail(field, `expected one of ${choices.join(', ')} but found ${show(v)}`);
    return v as T;
  }

  perSide(o: Json, key: string, field: string, min: number, nullable: boolean): PerSide<number> | null {
    const v = this.#get(o, key, field);
    if (v === null && nullable) return null;
    const s = this.object(o, key, field);
    return { A: this.integer(s, 'A', `${field}.A`, min), B: this.integer(s, 'B', `${field}.B`, min) };
  }
}

function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  const text = JSON.stringify(value);
  if (text === undefined) return typeof value;
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

async function readJson(file: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = (await readRegularFile(file, `read the ${what}`)).toString('utf8');
  } catch (cause) {
    throw ioError(cause, file, `read the ${what}`);
  }
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw formatError(file, `the ${what} is not JSON (${(cause as Error).message})`);
  }
}

function parseSources(f: Fields, list: unknown[], field: string): SubspaceSource[] {
  return list.map((raw, i) => {
    const at = `${field}[${i}]`;
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw f.fail(at, `expected an object but found ${show(raw)}`);
    const o = raw as Json;
    const files = f.array(o, 'files', `${at}.files`).map((rawFile, j): SourceFile => {
      const fat = `${at}.files[${j}]`;
      if (typeof rawFile !== 'object' || rawFile === null || Array.isArray(rawFile)) throw f.fail(fat, `expected an object but found ${show(rawFile)}`);
      const fo = rawFile as Json;
      const sha256 = f.stringOrNull(fo, 'sha256', `${fat}.sha256`);
      if (sha256 !== null && !/^[0-9a-f]{64}$/.test(sha256)) throw f.fail(`${fat}.sha256`, `expected 64 lower-case hex digits but found ${show(sha256)}`);
      const bytes = fo.bytes === null ? null : f.integer(fo, 'bytes', `${fat}.bytes`);
      return { path: f.string(fo, 'path', `${fat}.path`), bytes, sha256 };
    });
    return {
      name: f.string(o, 'name', `${at}.name`),
      path: f.stringOrNull(o, 'path', `${at}.path`),
      format: f.oneOf(o, 'format', `${at}.format`, adapterFormats),
      baseModel: f.stringOrNull(o, 'baseModel', `${at}.baseModel`),
      files,
    };
  });
}

// ---------------------------------------------------------------------------------------
// Subspace

function checkModuleForSave(m: SubspaceModule, name: string): void {
  const where = `subspace.modules[${JSON.stringify(name)}]`;
  checkMatrix(m.componentsA, `${where}.componentsA`, { rows: m.dIn, cols: m.kA });
  checkMatrix(m.componentsB, `${where}.componentsB`, { rows: m.dOut, cols: m.kB });
  if (!(m.singularA instanceof Float32Array) || m.singularA.length !== m.kA - m.augmentA) {
    throw invalid(`a Float32Array of ${m.kA - m.augmentA} values`, `${where}.singularA`, m.singularA);
  }
  if (!(m.singularB instanceof Float32Array) || m.singularB.length !== m.kB - m.augmentB) {
    throw invalid(`a Float32Array of ${m.kB - m.augmentB} values`, `${where}.singularB`, m.singularB);
  }
  if ((m.meanA === null) !== (m.meanB === null)) throw invalid('both means or neither', `${where}.meanB`, m.meanB);
  if (m.meanA !== null && (!(m.meanA instanceof Float32Array) || m.meanA.length !== m.dIn)) throw invalid(`a Float32Array of ${m.dIn} values`, `${where}.meanA`, m.meanA);
  if (m.meanB !== null && (!(m.meanB instanceof Float32Array) || m.meanB.length !== m.dOut)) throw invalid(`a Float32Array of ${m.dOut} values`, `${where}.meanB`, m.meanB);
}

/**
 * Writes `subspace` to the folder `destination` (created if needed): `subspace.json` and
 * `subspace.safetensors` (see the top of this file). Refuses a subspace whose contents no
 * longer match its id (changed after it was built or loaded: its coefficients would no
 * longer belong to it). Atomic: both files are written to a staging folder swapped in whole
 * when both are complete; on any error nothing is left behind.
 */
export async function saveSubspace(subspace: Subspace, destination: string): Promise<{ files: string[] }> {
  const s = checkSubspace(subspace);
  if (typeof destination !== 'string' || destination.length === 0) throw invalid('a folder path (non-empty string)', 'destination', destination);
  for (const [name, m] of s.modules) checkModuleForSave(m, name);
  const id = subspaceId(s);
  if (id !== s.id) {
    throw invalid(
      `a subspace whose contents match its id ${s.id.slice(0, 12)} (it was changed after it was built or loaded; the contents give ${id.slice(0, 12)})`,
      'subspace',
      subspace,
    );
  }
  const folder = path.resolve(destination);
  if ((await kindOf(folder)) === 'file') throw fileError('ERR_INVALID_ARGUMENT', folder, 'a subspace is written to a folder, and this is a file');
  const entries: SafetensorsEntry[] = [];
  for (const m of s.modules.values()) {
    const k = subspaceKeys(m.name);
    entries.push(
      { name: k.componentsA, shape: [m.dIn, m.kA], data: m.componentsA.data },
      { name: k.componentsB, shape: [m.dOut, m.kB], data: m.componentsB.data },
      { name: k.singularA, shape: [m.singularA.length], data: m.singularA },
      { name: k.singularB, shape: [m.singularB.length], data: m.singularB },
    );
    if (m.meanA !== null && m.meanB !== null) {
      entries.push({ name: k.meanA, shape: [m.dIn], data: m.meanA }, { name: k.meanB, shape: [m.dOut], data: m.meanB });
    }
  }
  const sidecar = `${JSON.stringify(sidecarOf(s), null, 2)}\n`;
  const metadata = { format: SUBSPACE_FORMAT, 'eigenlorax.formatVersion': String(s.formatVersion), 'eigenlorax.id': s.id };
  // Both files are swapped in together (a staging folder renamed over the old one).
  const [tensorsFile, sidecarFile] = await writeFolderAtomic(folder, [
    { name: SUBSPACE_TENSORS_NAME, write: (file) => writeSafetensors(file, entries, { metadata, digest: true }) },
    { name: SUBSPACE_SIDECAR_NAME, write: (file) => writeFileAtomic(file, sidecar) },
  ]);
  return { files: [sidecarFile as string, tensorsFile as string] };
}

function parseSettings(f: Fields, o: Json): SubspaceSettings {
  const stacking = f.oneOf(o, 'stacking', 'settings.stacking', ['canonical', 'raw'] as const);
  const weightingRaw = o.weighting;
  let weighting: SubspaceSettings['weighting'];
  if (stacking === 'raw') {
    if (weightingRaw !== null) throw f.fail('settings.weighting', `expected null with raw stacking but found ${show(weightingRaw)}`);
    weighting = null;
  } else {
    weighting = f.oneOf(o, 'weighting', 'settings.weighting', ['equal', 'scale'] as const);
  }
  const components = f.perSide(o, 'components', 'settings.components', 1, true);
  if (!('variance' in o)) throw f.fail('settings.variance', 'missing');
  const variance = o.variance === null ? null : f.number(o, 'variance', 'settings.variance', 0, 1);
  if (variance !== null && !(variance > 0)) throw f.fail('settings.variance', `expected a fraction in (0, 1] but found ${variance}`);
  const maxComponents = f.perSide(o, 'maxComponents', 'settings.maxComponents', 1, true);
  if ((components === null) === (variance === null)) throw f.fail('settings.components', 'expected exactly one of components and variance');
  if ((variance === null) !== (maxComponents === null)) throw f.fail('settings.maxComponents', 'expected a value exactly when variance is set');
  return {
    stacking,
    weighting,
    center: f.boolean(o, 'center', 'settings.center'),
    components,
    variance,
    maxComponents,
    augment: f.perSide(o, 'augment', 'settings.augment', 0, false)!,
    oversample: f.integer(o, 'oversample', 'settings.oversample'),
    powerIters: f.integer(o, 'powerIters', 'settings.powerIters', 0, 1000),
    seed: f.integer(o, 'seed', 'settings.seed', 0, 2 ** 52),
  };
}

/** Reads a float tensor of exactly `shape`; ERR_SUBSPACE_FORMAT naming file and key otherwise. */
async function readTensor(reader: SafetensorsReader, file: string, key: string, shape: number[], what: string): Promise<Float32Array> {
  const info = reader.tensors.get(key);
  if (info === undefined) throw formatError(file, `missing (${what})`, key);
  if (!isSafetensorsFloatDtype(info.dtype)) throw formatError(file, `dtype ${info.dtype} is not a float type`, key);
  if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
    throw formatError(file, `shape [${info.shape.join(', ')}] but the sidecar says [${shape.join(', ')}] (${what})`, key);
  }
  return (await reader.readFloat32(key)).data;
}

/**
 * Reads a subspace written by {@link saveSubspace}: `target` is its folder, its
 * `subspace.json` or its `subspace.safetensors`. Validates the sidecar (format name and version, every field and its
 * type, K consistent with the augmentation and the settings, module names unique, the
 * adapters named by each module among the sources), every tensor (present, float, of the
 * shape the sidecar gives; no unexpected tensor), the tensors file's id against the
 * sidecar's, and the id against the contents. Failures are ERR_SUBSPACE_FORMAT naming the
 * file and the field or tensor (ERR_NOT_FOUND for a missing file).
 */
export async function loadSubspace(target: string): Promise<Subspace> {
  if (typeof target !== 'string' || target.length === 0) throw invalid('a path (non-empty string)', 'path', target);
  let where = path.resolve(target);
  // A writer killed in the middle of a folder swap leaves the old version aside.
  if ((await kindOf(where)) === 'missing') await recoverInterruptedSwap(where);
  if ((await kindOf(where)) === 'folder') where = path.join(where, SUBSPACE_SIDECAR_NAME);
  else if (where.endsWith('.safetensors')) where = path.join(path.dirname(where), SUBSPACE_SIDECAR_NAME);
  const sidecarFile = where;
  const folder = path.dirname(sidecarFile);
  const raw = await readJson(sidecarFile, 'subspace sidecar');
  const f = new Fields(sidecarFile);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw formatError(sidecarFile, `expected a JSON object but found ${show(raw)}`);
  const o = raw as Json;
  const format = f.string(o, 'format', 'format');
  if (format !== SUBSPACE_FORMAT) throw f.fail('format', `expected ${JSON.stringify(SUBSPACE_FORMAT)} but found ${show(format)}`);
  const formatVersion = f.integer(o, 'formatVersion', 'formatVersion', 0);
  if (formatVersion !== SUBSPACE_FORMAT_VERSION) {
    throw f.fail('formatVersion', `version ${formatVersion} is not supported (this eigenlorax ${libraryVersion} reads version ${SUBSPACE_FORMAT_VERSION})`);
  }
  const library = f.object(o, 'library', 'library');
  const builtBy = f.string(library, 'version', 'library.version');
  const id = f.string(o, 'id', 'id');
  if (!/^[0-9a-f]{64}$/.test(id)) throw f.fail('id', `expected 64 lower-case hex digits but found ${show(id)}`);
  const tensorsName = f.string(o, 'tensors', 'tensors');
  if (tensorsName !== path.basename(tensorsName) || tensorsName === '' || tensorsName === '.' || tensorsName === '..') {
    throw f.fail('tensors', `expected a file name in the same folder but found ${show(tensorsName)}`);
  }
  const settings = parseSettings(f, f.object(o, 'settings', 'settings'));
  const baseModel = f.stringOrNull(o, 'baseModel', 'baseModel');
  const sources = parseSources(f, f.array(o, 'sources', 'sources'), 'sources');
  const sourceNames = new Set(sources.map((s) => s.name));
  if (sourceNames.size !== sources.length) throw f.fail('sources', 'two sources have the same name');
  const moduleList = f.array(o, 'modules', 'modules');
  if (moduleList.length === 0) throw f.fail('modules', 'expected at least one module');

  interface Planned {
    name: string;
    dIn: number;
    dOut: number;
    layout: LoraLayout;
    convKernel: number[] | null;
    fanInFanOut: boolean;
    kA: number;
    kB: number;
    augmentA: number;
    augmentB: number;
    energyA: number;
    energyB: number;
    explainedA: number;
    explainedB: number;
    centered: boolean;
    adapters: string[];
    ranks: number[];
  }
  const planned: Planned[] = moduleList.map((rawModule, i) => {
    const at = `modules[${i}]`;
    if (typeof rawModule !== 'object' || rawModule === null || Array.isArray(rawModule)) throw f.fail(at, `expected an object but found ${show(rawModule)}`);
    const m = rawModule as Json;
    const name = f.string(m, 'name', `${at}.name`);
    const dIn = f.integer(m, 'dIn', `${at}.dIn`, 1);
    const dOut = f.integer(m, 'dOut', `${at}.dOut`, 1);
    const layout = f.oneOf(m, 'layout', `${at}.layout`, ['linear', 'conv', 'embedding'] as const);
    let convKernel: number[] | null = null;
    if (m.convKernel !== null) {
      convKernel = f.array(m, 'convKernel', `${at}.convKernel`).map((d, j) => f.integer({ d }, 'd', `${at}.convKernel[${j}]`, 1));
    }
    if ((layout === 'conv') !== (convKernel !== null)) throw f.fail(`${at}.convKernel`, 'expected a kernel exactly for conv modules');
    const kA = f.integer(m, 'kA', `${at}.kA`, 1, dIn);
    const kB = f.integer(m, 'kB', `${at}.kB`, 1, dOut);
    const augmentA = f.integer(m, 'augmentA', `${at}.augmentA`, 0, kA - 1);
    const augmentB = f.integer(m, 'augmentB', `${at}.augmentB`, 0, kB - 1);
    if (settings.components !== null) {
      if (kA - augmentA > settings.components.A) throw f.fail(`${at}.kA`, `${kA - augmentA} principal components, more than settings.components.A = ${settings.components.A}`);
      if (kB - augmentB > settings.components.B) throw f.fail(`${at}.kB`, `${kB - augmentB} principal components, more than settings.components.B = ${settings.components.B}`);
    }
    if (settings.maxComponents !== null) {
      if (kA - augmentA > settings.maxComponents.A) throw f.fail(`${at}.kA`, `more principal components than settings.maxComponents.A`);
      if (kB - augmentB > settings.maxComponents.B) throw f.fail(`${at}.kB`, `more principal components than settings.maxComponents.B`);
    }
    if (augmentA > settings.augment.A) throw f.fail(`${at}.augmentA`, `more than settings.augment.A = ${settings.augment.A}`);
    if (augmentB > settings.augment.B) throw f.fail(`${at}.augmentB`, `more than settings.augment.B = ${settings.augment.B}`);
    const adapters = f.array(m, 'adapters', `${at}.adapters`).map((a, j) => {
      if (typeof a !== 'string' || !sourceNames.has(a)) throw f.fail(`${at}.adapters[${j}]`, `expected the name of a source but found ${show(a)}`);
      return a;
    });
    const ranks = f.array(m, 'ranks', `${at}.ranks`).map((r, j) => f.integer({ r }, 'r', `${at}.ranks[${j}]`, 1));
    if (adapters.length === 0) throw f.fail(`${at}.adapters`, 'expected at least one adapter');
    if (ranks.length !== adapters.length) throw f.fail(`${at}.ranks`, `expected ${adapters.length} ranks (one per adapter) but found ${ranks.length}`);
    const centered = f.boolean(m, 'centered', `${at}.centered`);
    if (centered !== settings.center) throw f.fail(`${at}.centered`, `expected ${settings.center} (settings.center)`);
    return {
      name,
      dIn,
      dOut,
      layout,
      convKernel,
      fanInFanOut: f.boolean(m, 'fanInFanOut', `${at}.fanInFanOut`),
      kA,
      kB,
      augmentA,
      augmentB,
      energyA: f.number(m, 'energyA', `${at}.energyA`, 0),
      energyB: f.number(m, 'energyB', `${at}.energyB`, 0),
      explainedA: f.number(m, 'explainedA', `${at}.explainedA`, 0, 1),
      explainedB: f.number(m, 'explainedB', `${at}.explainedB`, 0, 1),
      centered,
      adapters,
      ranks,
    };
  });
  const seen = new Set<string>();
  for (const p of planned) {
    if (seen.has(p.name)) throw f.fail('modules', `two modules are named ${JSON.stringify(p.name)}`);
    seen.add(p.name);
  }

  const tensorsFile = path.join(folder, tensorsName);
  let reader: SafetensorsReader;
  try {
    reader = await openSafetensors(tensorsFile);
  } catch (error) {
    if (error instanceof EigenLoraxError && error.code === 'ERR_SAFETENSORS_FORMAT') {
      throw new EigenLoraxError(error.message, 'ERR_SUBSPACE_FORMAT');
    }
    throw error;
  }
  try {
    if (reader.metadata.format !== SUBSPACE_FORMAT) {
      throw formatError(tensorsFile, `__metadata__.format is ${show(reader.metadata.format)}, not ${JSON.stringify(SUBSPACE_FORMAT)}`);
    }
    if (reader.metadata['eigenlorax.id'] !== id) {
      throw formatError(
        tensorsFile,
        `it belongs to subspace ${show(reader.metadata['eigenlorax.id'])}, but ${sidecarFile} is subspace ${JSON.stringify(id)} (files from different saves?)`,
      );
    }
    const expected = new Set<string>();
    const modules = new Map<string, SubspaceModule>();
    for (const p of planned) {
      const k = subspaceKeys(p.name);
      const names = [k.componentsA, k.componentsB, k.singularA, k.singularB, ...(p.centered ? [k.meanA, k.meanB] : [])];
      for (const n of names) expected.add(n);
      const componentsA = await readTensor(reader, tensorsFile, k.componentsA, [p.dIn, p.kA], `d_in x K_A of module ${p.name}`);
      const componentsB = await readTensor(reader, tensorsFile, k.componentsB, [p.dOut, p.kB], `d_out x K_B of module ${p.name}`);
      const singularA = await readTensor(reader, tensorsFile, k.singularA, [p.kA - p.augmentA], 'K_A minus augmentation');
      const singularB = await readTensor(reader, tensorsFile, k.singularB, [p.kB - p.augmentB], 'K_B minus augmentation');
      const meanA = p.centered ? await readTensor(reader, tensorsFile, k.meanA, [p.dIn], 'd_in') : null;
      const meanB = p.centered ? await readTensor(reader, tensorsFile, k.meanB, [p.dOut], 'd_out') : null;
      modules.set(p.name, {
        name: p.name,
        dIn: p.dIn,
        dOut: p.dOut,
        layout: p.layout,
        convKernel: p.convKernel,
        fanInFanOut: p.fanInFanOut,
        kA: p.kA,
        kB: p.kB,
        augmentA: p.augmentA,
        augmentB: p.augmentB,
        componentsA: { rows: p.dIn, cols: p.kA, data: componentsA },
        componentsB: { rows: p.dOut, cols: p.kB, data: componentsB },
        singularA,
        singularB,
        energyA: p.energyA,
        energyB: p.energyB,
        explainedA: p.explainedA,
        explainedB: p.explainedB,
        meanA,
        meanB,
        adapters: p.adapters,
        ranks: p.ranks,
      });
    }
    for (const key of reader.tensors.keys()) {
      if (!expected.has(key)) throw formatError(tensorsFile, `unexpected tensor (the sidecar ${sidecarFile} names no such tensor)`, key);
    }
    const subspace: Subspace = {
      formatVersion,
      id,
      libraryVersion: builtBy,
      settings,
      sources,
      baseModel,
      modules,
      coefficients: [],
      report: null,
    };
    // After the structure (reported as such first), before the id: a damaged file is
    // told apart from a sidecar that does not belong.
    await verifyDigest(reader);
    const actual = subspaceId(subspace);
    if (actual !== id) {
      throw formatError(
        sidecarFile,
        `the contents of the sidecar and ${SUBSPACE_TENSORS_NAME} do not match the recorded id ${id.slice(0, 12)} ` +
          `(they give ${actual.slice(0, 12)}): one of the files was changed after it was written`,
      );
    }
    return subspace;
  } finally {
    await reader.close();
  }
}

// ---------------------------------------------------------------------------------------
// Coefficients

function checkCoefficientsForSave(c: AdapterCoefficients): void {
  if (typeof c !== 'object' || c === null || !(c.modules instanceof Map) || typeof c.subspaceId !== 'string') {
    throw invalid('adapter coefficients (from buildSubspace, projectAdapter or loadCoefficients)', 'coefficients', c);
  }
  for (const [name, m] of c.modules) {
    const where = `coefficients.modules[${JSON.stringify(name)}]`;
    checkMatrix(m.alpha, `${where}.alpha`, { cols: m.rank });
    checkMatrix(m.beta, `${where}.beta`, { cols: m.rank });
    for (const key of ['scale', 'adapterAlpha', 'adapterScale', 'norm', 'error'] as const) {
      if (typeof m[key] !== 'number' || !Number.isFinite(m[key])) throw invalid('a finite number', `${where}.${key}`, m[key]);
    }
  }
}

/**
 * Writes `coefficients` to the safetensors file `destination`: `<m>.eigenlora_A.loadings`
 * (`K_A x r`) and `<m>.eigenlora_B.loadings` (`K_B x r`), F32, and the JSON record in
 * `__metadata__["eigenlorax.coefficients"]`. Atomic.
 */
export async function saveCoefficients(coefficients: AdapterCoefficients, destination: string): Promise<{ file: string }> {
  checkCoefficientsForSave(coefficients);
  if (typeof destination !== 'string' || destination.length === 0) throw invalid('a file path (non-empty string)', 'destination', destination);
  const file = path.resolve(destination);
  if ((await kindOf(file)) === 'folder') throw fileError('ERR_INVALID_ARGUMENT', file, 'coefficients are written to a .safetensors file, and this is a folder');
  const entries: SafetensorsEntry[] = [];
  const modules: Json[] = [];
  for (const m of coefficients.modules.values()) {
    const k = subspaceKeys(m.name);
    entries.push({ name: k.loadingsA, shape: [m.alpha.rows, m.rank], data: m.alpha.data }, { name: k.loadingsB, shape: [m.beta.rows, m.rank], data: m.beta.data });
    modules.push({
      name: m.name,
      rank: m.rank,
      kA: m.alpha.rows,
      kB: m.beta.rows,
      scale: m.scale,
      adapterAlpha: m.adapterAlpha,
      rslora: m.rslora,
      adapterScale: m.adapterScale,
      norm: m.norm,
      error: m.error,
    });
  }
  const a = coefficients.adapter;
  const record = {
    format: COEFFICIENTS_FORMAT,
    formatVersion: COEFFICIENTS_FORMAT_VERSION,
    library: { name: 'eigenlorax', version: libraryVersion },
    subspaceId: coefficients.subspaceId,
    stacking: coefficients.stacking,
    adapter: {
      name: a.name,
      path: a.path,
      format: a.format,
      baseModel: a.baseModel,
      files: a.files.map((x) => ({ path: x.path, bytes: x.bytes, sha256: x.sha256 })),
    },
    skipped: [...coefficients.skipped],
    modules,
  };
  await writeSafetensors(file, entries, { metadata: { format: COEFFICIENTS_FORMAT, [COEFFICIENTS_METADATA_KEY]: JSON.stringify(record) }, digest: true });
  return { file };
}

/**
 * Reads coefficients written by {@link saveCoefficients}. Validates the JSON record (format,
 * version, every field) and every tensor (present, float, `K x r` as recorded; nothing
 * unexpected): ERR_SUBSPACE_FORMAT naming the file and field or tensor. With `subspace`,
 * also that they belong to it (same id and stacking; every module in it with its K_A and
 * K_B): ERR_SUBSPACE_MISMATCH otherwise.
 */
export async function loadCoefficients(file: string, subspace?: Subspace): Promise<AdapterCoefficients> {
  if (typeof file !== 'string' || file.length === 0) throw invalid('a path (non-empty string)', 'path', file);
  const s = subspace === undefined ? undefined : checkSubspace(subspace);
  const where = path.resolve(file);
  let reader: SafetensorsReader;
  try {
    reader = await openSafetensors(where);
  } catch (error) {
    if (error instanceof EigenLoraxError && error.code === 'ERR_SAFETENSORS_FORMAT') throw new EigenLoraxError(error.message, 'ERR_SUBSPACE_FORMAT');
    throw error;
  }
  try {
    const text = reader.metadata[COEFFICIENTS_METADATA_KEY];
    if (text === undefined) throw formatError(where, `no ${JSON.stringify(COEFFICIENTS_METADATA_KEY)} in __metadata__: not an eigenlorax coefficients file`);
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (cause) {
      throw formatError(where, `__metadata__[${JSON.stringify(COEFFICIENTS_METADATA_KEY)}] is not JSON (${(cause as Error).message})`);
    }
    const f = new Fields(`${where}, __metadata__[${JSON.stringify(COEFFICIENTS_METADATA_KEY)}]`);
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw f.fail('', `expected a JSON object but found ${show(raw)}`);
    const o = raw as Json;
    const format = f.string(o, 'format', 'format');
    if (format !== COEFFICIENTS_FORMAT) throw f.fail('format', `expected ${JSON.stringify(COEFFICIENTS_FORMAT)} but found ${show(format)}`);
    const formatVersion = f.integer(o, 'formatVersion', 'formatVersion', 0);
    if (formatVersion !== COEFFICIENTS_FORMAT_VERSION) {
      throw f.fail('formatVersion', `version ${formatVersion} is not supported (this eigenlorax reads version ${COEFFICIENTS_FORMAT_VERSION})`);
    }
    const subspaceIdValue = f.string(o, 'subspaceId', 'subspaceId');
    if (!/^[0-9a-f]{64}$/.test(subspaceIdValue)) throw f.fail('subspaceId', `expected 64 lower-case hex digits but found ${show(subspaceIdValue)}`);
    const stacking = f.oneOf(o, 'stacking', 'stacking', ['canonical', 'raw'] as const);
    const [adapter] = parseSources(f, [f.object(o, 'adapter', 'adapter')], 'adapter');
    const skipped = f.array(o, 'skipped', 'skipped').map((n, i) => {
      if (typeof n !== 'string') throw f.fail(`skipped[${i}]`, `expected a module name but found ${show(n)}`);
      return n;
    });
    if (s !== undefined) {
      if (subspaceIdValue !== s.id) {
        throw fileError('ERR_SUBSPACE_MISMATCH', where, `the coefficients belong to subspace ${subspaceIdValue.slice(0, 12)}, not to ${s.id.slice(0, 12)}`);
      }
      if (stacking !== s.settings.stacking) {
        throw fileError('ERR_SUBSPACE_MISMATCH', where, `stacking ${stacking} but the subspace's is ${s.settings.stacking}`);
      }
    }
    const expected = new Set<string>();
    const modules = new Map<string, ModuleCoefficients>();
    const list = f.array(o, 'modules', 'modules');
    for (let i = 0; i < list.length; i++) {
      const at = `modules[${i}]`;
      const rawModule = list[i];
      if (typeof rawModule !== 'object' || rawModule === null || Array.isArray(rawModule)) throw f.fail(at, `expected an object but found ${show(rawModule)}`);
      const m = rawModule as Json;
      const name = f.string(m, 'name', `${at}.name`);
      if (modules.has(name)) throw f.fail(`${at}.name`, `two modules are named ${JSON.stringify(name)}`);
      const rank = f.integer(m, 'rank', `${at}.rank`, 1);
      const kA = f.integer(m, 'kA', `${at}.kA`, 1);
      const kB = f.integer(m, 'kB', `${at}.kB`, 1);
      if (s !== undefined) {
        const sm = s.modules.get(name);
        if (sm === undefined) throw fileError('ERR_SUBSPACE_MISMATCH', where, `module ${JSON.stringify(name)} is not in the subspace`);
        if (sm.kA !== kA || sm.kB !== kB) {
          throw fileError('ERR_SUBSPACE_MISMATCH', where, `module ${JSON.stringify(name)} has K_A ${kA}, K_B ${kB} but the subspace's has K_A ${sm.kA}, K_B ${sm.kB}`);
        }
      }
      const k = subspaceKeys(name);
      expected.add(k.loadingsA);
      expected.add(k.loadingsB);
      const alpha = await readTensor(reader, where, k.loadingsA, [kA, rank], `K_A x r of module ${name}`);
      const beta = await readTensor(reader, where, k.loadingsB, [kB, rank], `K_B x r of module ${name}`);
      const norm = f.number(m, 'norm', `${at}.norm`, 0);
      const error = f.number(m, 'error', `${at}.error`, 0);
      const alphaMatrix: Matrix = { rows: kA, cols: rank, data: alpha };
      const betaMatrix: Matrix = { rows: kB, cols: rank, data: beta };
      modules.set(name, {
        name,
        rank,
        alpha: alphaMatrix,
        beta: betaMatrix,
        scale: f.number(m, 'scale', `${at}.scale`),
        adapterAlpha: f.number(m, 'adapterAlpha', `${at}.adapterAlpha`),
        rslora: f.boolean(m, 'rslora', `${at}.rslora`),
        adapterScale: f.number(m, 'adapterScale', `${at}.adapterScale`),
        norm,
        error,
        relativeError: relative(error, norm),
      });
    }
    for (const key of reader.tensors.keys()) {
      if (!expected.has(key)) throw formatError(where, 'unexpected tensor (the record names no such module)', key);
    }
    // Last, so that a broken structure or a wrong subspace is reported as such first.
    await verifyDigest(reader);
    return adapterCoefficients(subspaceIdValue, stacking, adapter!, modules, skipped);
  } finally {
    await reader.close();
  }
}
