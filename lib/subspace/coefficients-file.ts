/**
 * Coefficients files: one safetensors file with `<m>.eigenlora_A.loadings` (`K_A x r`) and
 * `<m>.eigenlora_B.loadings` (`K_B x r`), and their JSON record in `__metadata__`
 * (`eigenlorax.coefficients`, schema in sidecar.ts): the subspace id, stacking, the
 * adapter's source, and per module the rank, scales, lora_alpha, rsLoRA flag, norm and error.
 */
import path from 'node:path';
import { verifyDigest } from '../io/digest.js';
import { fileError, kindOf } from '../io/files.js';
import { writeSafetensors, type SafetensorsEntry } from '../io/safetensors.js';
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
  const entries: SafetensorsEntry[] = [];
  for (const m of coefficients.modules.values()) {
    const k = subspaceKeys(m.name);
    entries.push({ name: k.loadingsA, shape: [m.alpha.rows, m.rank], data: m.alpha.data }, { name: k.loadingsB, shape: [m.beta.rows, m.rank], data: m.beta.data });
  }
  const metadata = { format: COEFFICIENTS_FORMAT, [COEFFICIENTS_METADATA_KEY]: JSON.stringify(recordOf(coefficients)) };
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
    const key = `__metadata__[${JSON.stringify(COEFFICIENTS_METADATA_KEY)}]`;
    const text = reader.metadata[COEFFICIENTS_METADATA_KEY];
    if (text === undefined) throw fileError('ERR_SUBSPACE_FORMAT', where, `no ${key}: not an eigenlorax coefficients file`);
    const place = filePlace(`${where}, ${key}`, 'ERR_SUBSPACE_FORMAT');
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (cause) {
      throw mismatch(place, '', 'JSON', said(`text that is not JSON (${(cause as Error).message})`));
    }
    const record = parseCoefficientsRecord(raw, place);
    if (s !== undefined) checkBelongs(record, s, where);
    const expected = new Set<string>();
    const modules = new Map<string, ModuleCoefficients>();
    for (const m of record.modules) {
      const k = subspaceKeys(m.name);
      expected.add(k.loadingsA).add(k.loadingsB);
      const alpha = await readTensor(reader, where, k.loadingsA, [m.kA, m.rank], `K_A x r of module ${m.name}`);
      const beta = await readTensor(reader, where, k.loadingsB, [m.kB, m.rank], `K_B x r of module ${m.name}`);
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
    checkNoOtherTensors(reader, where, expected, 'the record');
    // Last, so that a broken structure or a wrong subspace is reported as such first.
    await verifyDigest(reader);
    return adapterCoefficients(record.subspaceId, record.stacking, record.adapter, modules, record.skipped);
  } finally {
    await reader.close();
  }
}
