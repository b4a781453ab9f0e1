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
 * Coefficients files: coefficients-file.ts. The JSON records' schemas: sidecar.ts.
 *
 * Writes are atomic (temporary files renamed; a subspace's two files are written to a
 * staging folder swapped in whole, see io/files.ts writeFolderAtomic) and carry a content
 * digest that reads verify (ERR_INTEGRITY, io/digest.ts). Reads validate everything and fail with ERR_SUBSPACE_FORMAT
 * (or ERR_SUBSPACE_MISMATCH for coefficients that belong to another subspace) naming the
 * file and the field or tensor.
 */
import path from 'node:path';
import { verifyDigest } from '../io/digest.js';
import { fileError, ioError, kindOf, readRegularFile, recoverInterruptedSwap, writeFileAtomic, writeFolderAtomic } from '../io/files.js';
import { writeSafetensors, type SafetensorsEntry, type SafetensorsReader } from '../io/safetensors.js';
import { checkMatrix } from '../matrix.js';
import { filePlace, mismatch, said, show, type Place } from '../schema.js';
import { version as libraryVersion } from '../version.js';
import { invalid } from '../validate.js';
import { checkNoOtherTensors, openTensors, readTensor } from './file-tensors.js';
import { SUBSPACE_FORMAT, SUBSPACE_SIDECAR_NAME, SUBSPACE_TENSORS_NAME, sidecarOf, subspaceId, subspaceKeys } from './identity.js';
import { checkSubspace } from './project.js';
import { parseSidecar, type SidecarModule, type SubspaceSidecar } from './sidecar.js';
import type { Subspace, SubspaceModule } from './types.js';

export { COEFFICIENTS_FORMAT_VERSION, COEFFICIENTS_METADATA_KEY, loadCoefficients, saveCoefficients } from './coefficients-file.js';

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
  // Hashed while the files are written; checked before they are swapped in.
  const idChecked = subspaceId(s).then((id) => {
    if (id !== s.id) {
      throw invalid(
        `a subspace whose contents match its id ${s.id.slice(0, 12)} (it was changed after it was built or loaded; the contents give ${id.slice(0, 12)})`,
        'subspace',
        subspace,
      );
    }
  });
  idChecked.catch(() => undefined); // awaited below, unless something fails first
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
    {
      name: SUBSPACE_TENSORS_NAME,
      write: async (file) => {
        await writeSafetensors(file, entries, { metadata, digest: true });
        await idChecked;
      },
    },
    { name: SUBSPACE_SIDECAR_NAME, write: (file) => writeFileAtomic(file, sidecar) },
  ]);
  return { files: [sidecarFile as string, tensorsFile as string] };
}

/** The sidecar a load target names: a folder, its `subspace.json` or its `subspace.safetensors`. */
async function sidecarPath(target: string): Promise<string> {
  const where = path.resolve(target);
  // A writer killed in the middle of a folder swap leaves the old version aside.
  if ((await kindOf(where)) === 'missing') await recoverInterruptedSwap(where);
  if ((await kindOf(where)) === 'folder') return path.join(where, SUBSPACE_SIDECAR_NAME);
  if (where.endsWith('.safetensors')) return path.join(path.dirname(where), SUBSPACE_SIDECAR_NAME);
  return where;
}

async function readSidecar(file: string): Promise<SubspaceSidecar> {
  let text: string;
  try {
    text = (await readRegularFile(file, 'read the subspace sidecar')).toString('utf8');
  } catch (cause) {
    throw ioError(cause, file, 'read the subspace sidecar');
  }
  const place = filePlace(file, 'ERR_SUBSPACE_FORMAT');
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw mismatch(place, '', 'the subspace sidecar in JSON', said(`text that is not JSON (${(cause as Error).message})`));
  }
  return parseSidecar(raw, place, libraryVersion);
}

/** The tensors file belongs to this sidecar: its format and id in `__metadata__`. */
function checkTensorsHeader(reader: SafetensorsReader, file: string, sidecar: SubspaceSidecar, sidecarFile: string): void {
  const place: Place = { code: 'ERR_SUBSPACE_FORMAT', at: (p) => `${file}, __metadata__.${p}` };
  if (reader.metadata.format !== SUBSPACE_FORMAT) throw mismatch(place, 'format', JSON.stringify(SUBSPACE_FORMAT), reader.metadata.format);
  const id = reader.metadata['eigenlorax.id'];
  if (id !== sidecar.id) {
    throw mismatch(place, 'eigenlorax.id', `the id of ${sidecarFile}, ${JSON.stringify(sidecar.id)}`, said(`${show(id)} (files from different saves?)`));
  }
}

/** One module's tensors, of the shapes its sidecar entry gives; `expected` collects their names. */
async function readModule(reader: SafetensorsReader, file: string, p: SidecarModule, expected: Set<string>): Promise<SubspaceModule> {
  const k = subspaceKeys(p.name);
  for (const n of [k.componentsA, k.componentsB, k.singularA, k.singularB, ...(p.centered ? [k.meanA, k.meanB] : [])]) expected.add(n);
  const read = (key: string, shape: number[], what: string) => readTensor(reader, file, key, shape, what);
  const componentsA = await read(k.componentsA, [p.dIn, p.kA], `d_in x K_A of module ${p.name}`);
  const componentsB = await read(k.componentsB, [p.dOut, p.kB], `d_out x K_B of module ${p.name}`);
  const singularA = await read(k.singularA, [p.kA - p.augmentA], 'K_A minus augmentation');
  const singularB = await read(k.singularB, [p.kB - p.augmentB], 'K_B minus augmentation');
  const meanA = p.centered ? await read(k.meanA, [p.dIn], 'd_in') : null;
  const meanB = p.centered ? await read(k.meanB, [p.dOut], 'd_out') : null;
  const { centered: _centered, ...fields } = p;
  return {
    ...fields,
    componentsA: { rows: p.dIn, cols: p.kA, data: componentsA },
    componentsB: { rows: p.dOut, cols: p.kB, data: componentsB },
    singularA,
    singularB,
    meanA,
    meanB,
  };
}

/** The id recorded in the sidecar against the one the contents give. */
async function checkIdentity(subspace: Subspace, sidecarFile: string): Promise<void> {
  const actual = await subspaceId(subspace);
  if (actual !== subspace.id) {
    throw mismatch(
      filePlace(sidecarFile, 'ERR_SUBSPACE_FORMAT'),
      'id',
      `the id the contents of the sidecar and ${SUBSPACE_TENSORS_NAME} give, ${actual.slice(0, 12)}`,
      said(`${subspace.id.slice(0, 12)}: the contents do not match the recorded id (one of the files was changed after it was written)`),
    );
  }
}

/**
 * Reads a subspace written by {@link saveSubspace}: `target` is its folder, its
 * `subspace.json` or its `subspace.safetensors`. Validates the sidecar (sidecar.ts: format
 * name and version, every field and its type, K consistent with the augmentation and the
 * settings, module names unique, the adapters named by each module among the sources),
 * every tensor (present, float, of the shape the sidecar gives; no unexpected tensor), the
 * tensors file's id against the sidecar's, and the id against the contents. Failures are
 * ERR_SUBSPACE_FORMAT naming the file and the field or tensor (ERR_NOT_FOUND for a missing
 * file).
 */
export async function loadSubspace(target: string): Promise<Subspace> {
  if (typeof target !== 'string' || target.length === 0) throw invalid('a path (non-empty string)', 'path', target);
  const sidecarFile = await sidecarPath(target);
  const sidecar = await readSidecar(sidecarFile);
  const tensorsFile = path.join(path.dirname(sidecarFile), sidecar.tensors);
  const reader = await openTensors(tensorsFile);
  try {
    checkTensorsHeader(reader, tensorsFile, sidecar, sidecarFile);
    const expected = new Set<string>();
    const modules = new Map<string, SubspaceModule>();
    for (const p of sidecar.modules) modules.set(p.name, await readModule(reader, tensorsFile, p, expected));
    checkNoOtherTensors(reader, tensorsFile, expected, `the sidecar ${sidecarFile}`);
    const { formatVersion, id, settings, sources, baseModel } = sidecar;
    const subspace: Subspace = { formatVersion, id, libraryVersion: sidecar.library.version, settings, sources, baseModel, modules, coefficients: [], report: null };
    // After the structure (reported as such first), before the id: a damaged file is
    // told apart from a sidecar that does not belong.
    await verifyDigest(reader);
    await checkIdentity(subspace, sidecarFile);
    return subspace;
  } finally {
    await reader.close();
  }
}
