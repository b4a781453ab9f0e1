/**
 * gatherShards: the folders of a sharded build (buildSubspace with `shard`, written by
 * writeBuildFolder) joined into one, byte-identical to the one-machine build's folder.
 */
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { readRegularFile } from '../io/files.js';
import { invalid } from '../validate.js';
import { adapterCoefficients } from './coefficients.js';
import { loadCoefficientsBundle } from './coefficients-file.js';
import { loadSubspace } from './files.js';
import { SUBSPACE_FORMAT_VERSION, sidecarOf, subspaceId } from './identity.js';
import { SHARD_FORMAT, SHARD_FORMAT_VERSION, SHARD_RECORD_NAME, writeBuildFolder, type ShardRecord } from './output.js';
import { runPool } from './inputs.js';
import type { AdapterCoefficients, ModuleCoefficients, Subspace, SubspaceModule, SubspaceSource } from './types.js';

/** Coefficients bundles read at once by gatherShards. */
const BUNDLE_READS_IN_FLIGHT = 4;

/** Shards that do not make one build: `shard` is the folder, `field` what differs. */
export class ShardMismatchError extends EigenLoraxError {
  readonly shard: string;
  readonly field: string;
  constructor(shard: string, field: string, detail: string) {
    super(`${shard}: ${field}: ${detail}`, 'ERR_SHARD_MISMATCH');
    this.name = 'ShardMismatchError';
    this.shard = shard;
    this.field = field;
  }
}

interface LoadedShard {
  folder: string;
  record: ShardRecord;
  subspace: Subspace;
}

async function readRecord(folder: string): Promise<ShardRecord> {
  const file = path.join(folder, SHARD_RECORD_NAME);
  let text: string;
  try {
    text = (await readRegularFile(file, 'read')).toString('utf8');
  } catch (cause) {
    // A FIFO, a device or an unreadable file is that file's own typed error.
    if ((cause as EigenLoraxError).code !== 'ERR_NOT_FOUND') throw cause;
    throw new ShardMismatchError(folder, SHARD_RECORD_NAME, 'missing: not the folder of a sharded build (buildSubspace with shard, written by writeBuildFolder)');
  }
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    throw new ShardMismatchError(folder, SHARD_RECORD_NAME, 'not JSON');
  }
  const r = o as Partial<ShardRecord>;
  if (r === null || typeof r !== 'object' || r.format !== SHARD_FORMAT || r.formatVersion !== SHARD_FORMAT_VERSION) {
    throw new ShardMismatchError(folder, 'format', `expected ${SHARD_FORMAT} version ${SHARD_FORMAT_VERSION}`);
  }
  const wellFormed =
    Number.isInteger(r.count) &&
    Number.isInteger(r.index) &&
    r.count! >= 1 &&
    r.index! >= 0 &&
    r.index! < r.count! &&
    Array.isArray(r.modules) &&
    r.modules.every((m) => Array.isArray(m) && typeof m[0] === 'string' && Number.isInteger(m[1]) && m[1] >= 0 && m[1] < r.count!) &&
    (r.hashed === null || (Array.isArray(r.hashed) && r.hashed.every((k) => Number.isInteger(k) && k >= 0))) &&
    typeof r.subspaceId === 'string' &&
    Array.isArray(r.coefficients) &&
    r.coefficients.every((c) => typeof c?.adapter === 'string' && typeof c?.file === 'string');
  if (!wellFormed) throw new ShardMismatchError(folder, SHARD_RECORD_NAME, 'a field is missing or ill-typed');
  return r as ShardRecord;
}

const json = (v: unknown) => JSON.stringify(v);

/** shard.json's coefficients as bundles: each file, the index of its first source, its adapters in order. */
function bundlesOf(record: ShardRecord): Array<{ file: string; first: number; adapters: string[] }> {
  const bundles: Array<{ file: string; first: number; adapters: string[] }> = [];
  record.coefficients.forEach((c, i) => {
    const last = bundles[bundles.length - 1];
    if (last !== undefined && last.file === c.file) last.adapters.push(c.adapter);
    else bundles.push({ file: c.file, first: i, adapters: [c.adapter] });
  });
  return bundles;
}

/** Checks that every shard agrees with the first (sources, settings, split, versions). */
function checkAgreement(shards: LoadedShard[]): void {
  const first = shards[0]!;
  const firstSidecar = sidecarOf(first.subspace);
  for (const s of shards) {
    const sidecar = sidecarOf(s.subspace);
    if (s.record.subspaceId !== s.subspace.id) {
      throw new ShardMismatchError(s.folder, 'subspaceId', `shard.json names ${s.record.subspaceId.slice(0, 12)} but the subspace there is ${s.subspace.id.slice(0, 12)}`);
    }
    if (s.record.count !== first.record.count) {
      throw new ShardMismatchError(s.folder, 'count', `${s.record.count} shards, but ${first.folder} is one of ${first.record.count}`);
    }
    if (sidecar.library.version !== firstSidecar.library.version) {
      throw new ShardMismatchError(s.folder, 'library.version', `${sidecar.library.version}, but ${first.folder} was built by ${firstSidecar.library.version}`);
    }
    if (json(sidecar.settings.seed) !== json(firstSidecar.settings.seed)) {
      throw new ShardMismatchError(s.folder, 'settings.seed', `${sidecar.settings.seed}, but ${first.folder} has ${firstSidecar.settings.seed}`);
    }
    for (const key of Object.keys(sidecar.settings) as Array<keyof typeof sidecar.settings>) {
      if (json(sidecar.settings[key]) !== json(firstSidecar.settings[key])) {
        throw new ShardMismatchError(s.folder, `settings.${key}`, `${json(sidecar.settings[key])}, but ${first.folder} has ${json(firstSidecar.settings[key])}`);
      }
    }
    if (sidecar.sources.length !== firstSidecar.sources.length) {
      throw new ShardMismatchError(s.folder, 'sources', `${sidecar.sources.length} sources, but ${first.folder} has ${firstSidecar.sources.length}`);
    }
    if ((s.record.hashed === null) !== (first.record.hashed === null)) {
      throw new ShardMismatchError(s.folder, 'hashed', `${s.record.hashed === null ? 'built without' : 'built with'} source hashing, but ${first.folder} was not`);
    }
    sidecar.sources.forEach((src, i) => {
      const want = firstSidecar.sources[i]!;
      for (const key of ['name', 'path', 'format', 'baseModel'] as const) {
        if (src[key] !== want[key]) throw new ShardMismatchError(s.folder, `sources[${i}].${key}`, `${json(src[key])}, but ${first.folder} has ${json(want[key])}`);
      }
      if (src.files.length !== want.files.length) throw new ShardMismatchError(s.folder, `sources[${i}].files`, `${src.files.length} files, but ${first.folder} has ${want.files.length}`);
      src.files.forEach((f, j) => {
        if (f.path !== want.files[j]!.path) {
          throw new ShardMismatchError(s.folder, `sources[${i}].files[${j}].path`, `${json(f.path)}, but ${first.folder} has ${json(want.files[j]!.path)}`);
        }
      });
    });
    if (json(s.record.modules) !== json(first.record.modules)) {
      throw new ShardMismatchError(s.folder, 'modules', `the split of modules into shards differs from ${first.folder}'s (other adapters, module filter or shard count?)`);
    }
    const assigned = s.record.modules.filter(([, i]) => i === s.record.index).map(([name]) => name);
    const have = [...s.subspace.modules.keys()];
    if (json(assigned) !== json(have)) {
      const missing = assigned.find((n) => !s.subspace.modules.has(n));
      const extra = have.find((n) => !assigned.includes(n));
      throw new ShardMismatchError(
        s.folder,
        'modules',
        missing !== undefined ? `module ${json(missing)} of shard ${s.record.index} is missing` : `module ${json(extra)} belongs to another shard`,
      );
    }
    if (s.record.coefficients.length !== sidecar.sources.length || s.record.coefficients.some((c, i) => c.adapter !== sidecar.sources[i]!.name)) {
      throw new ShardMismatchError(s.folder, 'coefficients', 'expected one coefficients file per source, in source order');
    }
  }
  const byIndex = new Map<number, string>();
  for (const s of shards) {
    const other = byIndex.get(s.record.index);
    if (other !== undefined) throw new ShardMismatchError(s.folder, 'index', `shard ${s.record.index} is also ${other}`);
    byIndex.set(s.record.index, s.folder);
  }
  for (let i = 0; i < first.record.count; i++) {
    if (!byIndex.has(i)) throw new ShardMismatchError(first.folder, 'index', `shard ${i} of ${first.record.count} is missing from the folders given`);
  }
}

/**
 * The sources of the whole build: each file's bytes and sha256 from the shard that hashed
 * it (every file hashed by exactly one shard, which no other records), or, for a build
 * without hashing, the records every shard must share.
 */
function mergeSources(shards: LoadedShard[]): SubspaceSource[] {
  const all = shards.map((s) => s.subspace.sources);
  const owners = new Map<number, number>();
  shards.forEach((s, si) => {
    for (const k of s.record.hashed ?? []) {
      const other = owners.get(k);
      if (other !== undefined) throw new ShardMismatchError(s.folder, 'hashed', `source file ${k} is also hashed by ${shards[other]!.folder} (were the files' sizes different when the shards ran?)`);
      owners.set(k, si);
    }
  });
  const hashing = shards[0]!.record.hashed !== null;
  const total = all[0]!.reduce((n, source) => n + source.files.length, 0);
  for (const [file, si] of owners) {
    if (file >= total) throw new ShardMismatchError(shards[si]!.folder, 'hashed', `source file ${file} does not exist: the sources have ${total} files`);
  }
  let k = 0;
  return all[0]!.map((source, i) => ({
    ...source,
    files: source.files.map((file, j) => {
      const owner = owners.get(k);
      const at = `sources[${i}].files[${j}]`;
      if (hashing && owner === undefined) throw new ShardMismatchError(shards[0]!.folder, 'hashed', `source file ${k} (${file.path}) was hashed by no shard (were the files' sizes different when the shards ran?)`);
      const merged = owner === undefined ? file : all[owner]![i]!.files[j]!;
      shards.forEach((s, si) => {
        if (si === owner) return;
        const f = all[si]![i]!.files[j]!;
        const expected = hashing ? { bytes: null, sha256: null } : merged;
        for (const key of ['bytes', 'sha256'] as const) {
          if (f[key] !== expected[key]) {
            throw new ShardMismatchError(s.folder, `${at}.${key}`, hashing ? `${json(f[key])}, but the file is another shard's to hash` : `${json(f[key])}, but ${shards[0]!.folder} has ${json(expected[key])}`);
          }
        }
      });
      k++;
      return { path: merged.path, bytes: merged.bytes, sha256: merged.sha256 };
    }),
  }));
}

/**
 * Joins the shard folders `folders` (every shard of one sharded build, any order) into
 * the folder `out`, byte-identical to what writeBuildFolder writes for the one-machine
 * build with the same adapters and options. Everything is checked before anything is
 * written: a ShardMismatchError (ERR_SHARD_MISMATCH) names the shard folder and the field
 * that differs (sources, settings, seed, library version, module split, a module missing
 * or repeated, a shard missing or repeated, a source file hashed by no shard or by two).
 * Each shard hashes its share of the source files; the sources written carry every
 * file's sha256 from the shard that hashed it. Returns the joined subspace.
 */
export async function gatherShards(folders: readonly string[], out: string): Promise<Subspace> {
  if (!Array.isArray(folders) || folders.length === 0 || !folders.every((f) => typeof f === 'string' && f.length > 0)) {
    throw invalid('a non-empty array of shard folders', 'folders', folders);
  }
  if (typeof out !== 'string' || out.length === 0) throw invalid('a folder path (non-empty string)', 'out', out);
  // All at once: one shard's hashing (on the compute thread) overlaps another's reading
  // and parsing. The first failure in the order given is reported.
  const loaded = await Promise.allSettled(
    folders.map(async (f) => {
      const folder = path.resolve(f);
      const record = await readRecord(folder);
      return { folder, record, subspace: await loadSubspace(folder) };
    }),
  );
  const failed = loaded.find((r) => r.status === 'rejected');
  if (failed !== undefined) throw failed.reason;
  const shards: LoadedShard[] = loaded.map((r) => (r as PromiseFulfilledResult<LoadedShard>).value);
  checkAgreement(shards);
  shards.sort((a, b) => a.record.index - b.record.index);
  const first = shards[0]!;
  const sources = mergeSources(shards);

  // Modules in the whole build's order, each from its shard.
  const modules = new Map<string, SubspaceModule>();
  for (const [name, index] of first.record.modules) modules.set(name, shards[index]!.subspace.modules.get(name)!);
  const base = first.subspace;
  const subspace: Subspace = {
    formatVersion: SUBSPACE_FORMAT_VERSION,
    id: '',
    libraryVersion: base.libraryVersion,
    settings: base.settings,
    sources,
    baseModel: base.baseModel,
    modules,
    coefficients: [],
    report: null,
  };
  // Hashed while the bundles are read.
  const id = subspaceId(subspace);
  id.catch(() => undefined); // awaited below, unless a bundle fails first

  // Each adapter's coefficients: its modules from every shard, in module order; skipped
  // are the modules no shard built.
  // Each shard's bundles, a few at a time (a bundle holds up to 256 adapters).
  const perShard = shards.map((s) => new Array<AdapterCoefficients>(s.record.coefficients.length));
  const reads = shards.flatMap((s, si) => bundlesOf(s.record).map((b) => ({ s, si, ...b })));
  await runPool(reads, BUNDLE_READS_IN_FLIGHT, async ({ s, si, file, first, adapters }) => {
    const list = await loadCoefficientsBundle(path.join(s.folder, file), s.subspace);
    const names = list.map((c) => c.adapter.name);
    if (json(names) !== json(adapters)) {
      throw new ShardMismatchError(s.folder, 'coefficients', `${file} holds the adapters ${json(names)}, but shard.json lists ${json(adapters)} there`);
    }
    list.forEach((c, j) => (perShard[si]![first + j] = c));
  });
  subspace.id = await id;
  subspace.coefficients = sources.map((source, i) => {
    const merged = new Map<string, ModuleCoefficients>();
    for (const [name, index] of first.record.modules) {
      const m = perShard[index]![i]!.modules.get(name);
      if (m !== undefined) merged.set(name, m);
    }
    const skipped = perShard[0]![i]!.skipped.filter((n) => perShard.every((list) => list[i]!.skipped.includes(n)));
    return adapterCoefficients(subspace.id, subspace.settings.stacking, source, merged, skipped);
  });
  await writeBuildFolder(subspace, out);
  return subspace;
}
