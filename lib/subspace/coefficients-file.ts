/**
 * Coefficients files: one safetensors file with `<m>.eigenlora_A.loadings` (`K_A x r`) and
 * `<m>.eigenlora_B.loadings` (`K_B x r`), and their JSON record in `__metadata__`
 * (`eigenlorax.coefficients`, schema in sidecar.ts): the subspace id, stacking, the
 * adapter's source, and per module the rank, scales, lora_alpha, rsLoRA flag, norm and error.
 */
import path from 'node:path';
import { verifyDigest } from '../io/digest.js';
import { fileError, kindOf } from '../io/files.js';
import { writeSafetensors, type SafetensorsEntry, type SafetensorsReader } from '../io/safetensors.js';
import { checkMatrix } from '../matrix.js';
import { filePlace, mismatch, said } from '../schema.js';
import { invalid } from '../validate.js';
import { version as libraryVersion } from '../version.js';
import { adapterCoefficients, relative } from './coefficients.js';
import { checkNoOtherTensors, openTensors, readTensor } from './file-tensors.js';
import { COEFFICIENTS_FORMAT, subspaceKeys } from './identity.js';
import { checkSubspace } from './project.js';
import { COEFFICIENTS_FORMAT_VERSION, parseCoefficientsRecord, type CoefficientsRecord } from './sidecar.js';
import type { AdapterCoefficients, ModuleCoefficients, Subspace } from './types.js';

/** The safetensors `__metadata__` key of a coefficients file's JSON record. */
export const COEFFICIENTS_METADATA_KEY = 'eigenlorax.coefficients';
export { COEFFICIENTS_FORMAT_VERSION };

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

function recordOf(c: AdapterCoefficients): CoefficientsRecord & { library: { name: string; version: string } } {
  const a = c.adapter;
  return {
    format: COEFFICIENTS_FORMAT,
    formatVersion: COEFFICIENTS_FORMAT_VERSION,
    library: { name: 'eigenlorax', version: libraryVersion },
    subspaceId: c.subspaceId,
    stacking: c.stacking,
    adapter: { name: a.name, path: a.path, format: a.format, baseModel: a.baseModel, files: a.files.map((x) => ({ path: x.path, bytes: x.bytes, sha256: x.sha256 })) },
    skipped: [...c.skipped],
    modules: [...c.modules.values()].map((m) => ({
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
    })),
  };
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
  const metadata = { format: COEFFICIENTS_FORMAT, [COEFFICIENTS_METADATA_KEY]: JSON.stringify(recordOf(coefficients)) };
  await writeSafetensors(file, coefficientEntries(coefficients), { metadata, digest: true });
  return { file };
}

/** One adapter's loadings as safetensors entries. */
function coefficientEntries(c: AdapterCoefficients): SafetensorsEntry[] {
  return [...c.modules.values()].flatMap((m) => {
    const k = subspaceKeys(m.name);
    return [
      { name: k.loadingsA, shape: [m.alpha.rows, m.rank], data: m.alpha.data },
      { name: k.loadingsB, shape: [m.beta.rows, m.rank], data: m.beta.data },
    ];
  });
}

/** The `format` of a file that holds the coefficients of several adapters (a shard's). */
export const COEFFICIENTS_BUNDLE_FORMAT = 'eigenlorax-coefficients-bundle';

/** The tensor of adapter `j` of a bundle. */
const bundleTensor = (j: number) => String(j);

/** Floats of one adapter's loadings in a bundle: every module's alpha then beta, in record order. */
const loadingsCount = (modules: ReadonlyArray<{ kA: number; kB: number; rank: number }>) => modules.reduce((n, m) => n + (m.kA + m.kB) * m.rank, 0);

/**
 * Writes the coefficients of several adapters to one safetensors file: adapter j's
 * loadings as one F32 tensor `<j>`, every module's `K_A x r` alpha then `K_B x r` beta in
 * the order its record lists the modules, and the JSON array of the records in
 * `__metadata__["eigenlorax.coefficients"]`; atomic, with a content digest. A shard's
 * folder holds these instead of one file per adapter: each file costs about a millisecond
 * of the event loop to write and again to read, which made a 4-way sharded build plus
 * gather of 256 adapters x 8 modules a third slower than the one-machine build; and one
 * tensor per adapter, not two per module (16,384 in a bundle of a 7B shard), keeps the
 * header small: a bundle took 240 ms to load, mostly parsing and checking its header.
 */
export async function saveCoefficientsBundle(list: readonly AdapterCoefficients[], destination: string): Promise<{ file: string }> {
  if (!Array.isArray(list) || list.length === 0) throw invalid('a non-empty array of adapter coefficients', 'list', list);
  for (const c of list) checkCoefficientsForSave(c);
  if (typeof destination !== 'string' || destination.length === 0) throw invalid('a file path (non-empty string)', 'destination', destination);
  const file = path.resolve(destination);
  const metadata = { format: COEFFICIENTS_BUNDLE_FORMAT, [COEFFICIENTS_METADATA_KEY]: JSON.stringify(list.map(recordOf)) };
  // Each adapter's tensor is assembled when the writer reaches it, in one reused array
  // (the writer copies or writes it before asking for the next).
  let scratch = new Float32Array(0);
  const entries: SafetensorsEntry[] = list.map((c, j) => {
    const modules = [...c.modules.values()];
    const count = modules.reduce((n, m) => n + m.alpha.data.length + m.beta.data.length, 0);
    const data = () => {
      if (scratch.length < count) scratch = new Float32Array(count);
      const flat = scratch.subarray(0, count);
      let at = 0;
      for (const m of modules) {
        flat.set(m.alpha.data, at);
        at += m.alpha.data.length;
        flat.set(m.beta.data, at);
        at += m.beta.data.length;
      }
      return flat;
    };
    return { name: bundleTensor(j), shape: [count], data };
  });
  await writeSafetensors(file, entries, { metadata, digest: true });
  return { file };
}

/** Coefficients made for another subspace, or of other modules or K: ERR_SUBSPACE_MISMATCH. */
function checkBelongs(record: CoefficientsRecord, s: Subspace, file: string): void {
  if (record.subspaceId !== s.id) {
    throw fileError('ERR_SUBSPACE_MISMATCH', file, `the coefficients belong to subspace ${record.subspaceId.slice(0, 12)}, not to ${s.id.slice(0, 12)}`);
  }
  if (record.stacking !== s.settings.stacking) throw fileError('ERR_SUBSPACE_MISMATCH', file, `stacking ${record.stacking} but the subspace's is ${s.settings.stacking}`);
  for (const { name, kA, kB } of record.modules) {
    const sm = s.modules.get(name);
    if (sm === undefined) throw fileError('ERR_SUBSPACE_MISMATCH', file, `module ${JSON.stringify(name)} is not in the subspace`);
    if (sm.kA !== kA || sm.kB !== kB) {
      throw fileError('ERR_SUBSPACE_MISMATCH', file, `module ${JSON.stringify(name)} has K_A ${kA}, K_B ${kB} but the subspace's has K_A ${sm.kA}, K_B ${sm.kB}`);
    }
  }
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
  const reader = await openTensors(where);
  try {
    const { raw, key } = recordJson(reader, where, 'an eigenlorax coefficients file');
    const record = parseCoefficientsRecord(raw, filePlace(`${where}, ${key}`, 'ERR_SUBSPACE_FORMAT'));
    if (s !== undefined) checkBelongs(record, s, where);
    const expected = new Set<string>();
    const coefficients = await readAdapter(record, async (m) => {
      const k = subspaceKeys(m.name);
      expected.add(k.loadingsA).add(k.loadingsB);
      return {
        alpha: await readTensor(reader, where, k.loadingsA, [m.kA, m.rank], `K_A x r of module ${m.name}`),
        beta: await readTensor(reader, where, k.loadingsB, [m.kB, m.rank], `K_B x r of module ${m.name}`),
      };
    });
    checkNoOtherTensors(reader, where, expected, 'the record');
    // Last, so that a broken structure or a wrong subspace is reported as such first.
    await verifyDigest(reader);
    return coefficients;
  } finally {
    await reader.close();
  }
}

/**
 * Reads a file written by {@link saveCoefficientsBundle}: the adapters' coefficients in
 * their order there, each checked as {@link loadCoefficients} checks one (the record at
 * index j and the tensor `<j>`, which must hold exactly the loadings the record sizes),
 * all against `subspace`. The loadings are views of the file's copy.
 */
export async function loadCoefficientsBundle(file: string, subspace: Subspace): Promise<AdapterCoefficients[]> {
  if (typeof file !== 'string' || file.length === 0) throw invalid('a path (non-empty string)', 'path', file);
  const s = checkSubspace(subspace);
  const where = path.resolve(file);
  const reader = await openTensors(where);
  try {
    const { raw, key } = recordJson(reader, where, 'a bundle of eigenlorax coefficients');
    if (reader.metadata.format !== COEFFICIENTS_BUNDLE_FORMAT || !Array.isArray(raw)) {
      throw fileError('ERR_SUBSPACE_FORMAT', where, `expected ${key} to hold an array of records in a file of format ${COEFFICIENTS_BUNDLE_FORMAT}`);
    }
    const records = raw.map((r, j) => parseCoefficientsRecord(r, filePlace(`${where}, ${key}[${j}]`, 'ERR_SUBSPACE_FORMAT')));
    for (const record of records) checkBelongs(record, s, where);
    const expected = new Set<string>();
    const list: AdapterCoefficients[] = [];
    for (const [j, record] of records.entries()) {
      const key = bundleTensor(j);
      expected.add(key);
      const flat = await readTensor(reader, where, key, [loadingsCount(record.modules)], `the loadings of the ${record.modules.length} modules record ${j} lists`);
      let at = 0;
      const slice = (count: number) => flat.subarray(at, (at += count));
      list.push(await readAdapter(record, (m) => ({ alpha: slice(m.kA * m.rank), beta: slice(m.kB * m.rank) })));
    }
    checkNoOtherTensors(reader, where, expected, 'the records');
    await verifyDigest(reader);
    return list;
  } finally {
    await reader.close();
  }
}

/** The JSON of `__metadata__["eigenlorax.coefficients"]`, parsed (not yet checked). */
function recordJson(reader: SafetensorsReader, where: string, what: string): { raw: unknown; key: string } {
  const key = `__metadata__[${JSON.stringify(COEFFICIENTS_METADATA_KEY)}]`;
  const text = reader.metadata[COEFFICIENTS_METADATA_KEY];
  if (text === undefined) throw fileError('ERR_SUBSPACE_FORMAT', where, `no ${key}: not ${what}`);
  try {
    return { raw: JSON.parse(text), key };
  } catch (cause) {
    throw mismatch(filePlace(`${where}, ${key}`, 'ERR_SUBSPACE_FORMAT'), '', 'JSON', said(`text that is not JSON (${(cause as Error).message})`));
  }
}

/** One adapter's coefficients from its record, each module's loadings given by `loadings` (in record order). */
async function readAdapter(
  record: CoefficientsRecord,
  loadings: (m: CoefficientsRecord['modules'][number]) => { alpha: Float32Array; beta: Float32Array } | Promise<{ alpha: Float32Array; beta: Float32Array }>,
): Promise<AdapterCoefficients> {
  const modules = new Map<string, ModuleCoefficients>();
  for (const m of record.modules) {
    const got = loadings(m);
    const { alpha, beta } = got instanceof Promise ? await got : got;
    const { name, rank, scale, adapterAlpha, rslora, adapterScale, norm, error } = m;
    modules.set(name, {
      name,
      rank,
      alpha: { rows: m.kA, cols: rank, data: alpha },
      beta: { rows: m.kB, cols: rank, data: beta },
      scale,
      adapterAlpha,
      rslora,
      adapterScale,
      norm,
      error,
      relativeError: relative(error, norm),
    });
  }
  return adapterCoefficients(record.subspaceId, record.stacking, record.adapter, modules, record.skipped);
}
