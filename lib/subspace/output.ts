/**
 * The folder a build writes: the subspace (saveSubspace), every adapter's coefficients in
 * `coefficients/<name>.safetensors`, and for one shard of a sharded build `shard.json`
 * (what gatherShards checks) with the coefficients in bundles (up to 256 adapters, 32 MiB),
 * `coefficients/part-<n>.safetensors` (saveCoefficientsBundle): a shard folder is read by
 * gather alone. The CLI's build and gather both write through here, so a gathered folder
 * is byte-identical to a one-machine build's.
 */
import { mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { ioError, writeFileAtomic } from '../io/files.js';
import { saveCoefficientsBundle } from './coefficients-file.js';
import { saveCoefficients, saveSubspace } from './files.js';
import { runPool } from './inputs.js';
import type { Subspace } from './types.js';

export const COEFFICIENTS_FOLDER = 'coefficients';
export const SHARD_RECORD_NAME = 'shard.json';
export const SHARD_FORMAT = 'eigenlorax-shard';
export const SHARD_FORMAT_VERSION = 4;
/** At most this many adapters (bounds the JSON header) and bytes of loadings per bundle. */
const BUNDLE_ADAPTERS = 256;
const BUNDLE_BYTES = 32 << 20;

/** A file name for an adapter's coefficients, unique (case-insensitively) within `used`. */
export function coefficientsFileName(name: string, used: Set<string>): string {
  const base = name.replace(/[^A-Za-z0-9._#+-]/g, '_').replace(/^\.+/, '_') || 'adapter';
  let candidate = base;
  for (let k = 2; used.has(candidate.toLowerCase()); k++) candidate = `${base}#${k}`;
  used.add(candidate.toLowerCase());
  return `${candidate}.safetensors`;
}

/** shard.json: one shard of a sharded build. */
export interface ShardRecord {
  format: typeof SHARD_FORMAT;
  formatVersion: number;
  index: number;
  count: number;
  /** Every module of the whole build with its shard, in build order. */
  modules: Array<[string, number]>;
  /**
   * The source files whose sha256 this shard recorded (indices over every source's files
   * in order); the others have bytes and sha256 null here. null: the build hashed no file.
   */
  hashed: number[] | null;
  subspaceId: string;
  /**
   * The coefficients bundle of each source, in source order (relative to the folder);
   * consecutive sources share a bundle, in which they are in this order.
   */
  coefficients: Array<{ adapter: string; file: string }>;
}

/** Coefficient files written at once by {@link writeBuildFolder}. */
const COEFFICIENT_WRITES_IN_FLIGHT = 16;

/**
 * Writes `subspace` (from buildSubspace or gatherShards) to `folder`: the subspace files,
 * the coefficients, and shard.json when the build was one shard. Returns the files written.
 */
export async function writeBuildFolder(subspace: Subspace, folder: string): Promise<{ subspace: string[]; coefficients: Array<{ adapter: string; file: string }> }> {
  const out = path.resolve(folder);
  const saved = await saveSubspace(subspace, out);
  const coefficientsFolder = path.join(out, COEFFICIENTS_FOLDER);
  try {
    await mkdir(coefficientsFolder, { recursive: true });
  } catch (cause) {
    throw ioError(cause, coefficientsFolder, 'create the folder');
  }
  const shard = subspace.report?.shard ?? null;
  const coefficients = shard === null ? await writeCoefficientFiles(subspace, coefficientsFolder) : await writeCoefficientBundles(subspace, coefficientsFolder);
  if (shard !== null) {
    const record: ShardRecord = {
      format: SHARD_FORMAT,
      formatVersion: SHARD_FORMAT_VERSION,
      index: shard.index,
      count: shard.count,
      modules: shard.modules,
      hashed: shard.hashed,
      subspaceId: subspace.id,
      coefficients: coefficients.map((c) => ({ adapter: c.adapter, file: path.relative(out, c.file) })),
    };
    await writeFileAtomic(path.join(out, SHARD_RECORD_NAME), `${JSON.stringify(record, null, 2)}\n`);
  } else {
    // A one-machine build written over an old shard folder is no shard.
    await rm(path.join(out, SHARD_RECORD_NAME), { force: true }).catch(() => undefined);
  }
  return { subspace: saved.files, coefficients };
}

/** A shard's coefficients bundle, by name. */
const BUNDLE_NAME = /^part-\d{5}\.safetensors$/;

/** One file per adapter, `<name>.safetensors`. */
async function writeCoefficientFiles(subspace: Subspace, folder: string): Promise<Array<{ adapter: string; file: string }>> {
  // A one-machine build written over a shard's folder: its bundles are not coefficients files.
  const stale = (await readdir(folder)).filter((name) => BUNDLE_NAME.test(name));
  await Promise.all(stale.map((name) => rm(path.join(folder, name), { force: true })));
  const used = new Set<string>();
  const coefficients = subspace.coefficients.map((c) => ({ adapter: c.adapter.name, file: path.join(folder, coefficientsFileName(c.adapter.name, used)) }));
  // Several files at once: each write waits on its fsyncs (about 2 ms a file here), which
  // overlap; hundreds of adapters took most of a build's write time one after the other.
  await runPool(subspace.coefficients, COEFFICIENT_WRITES_IN_FLIGHT, async (c, i) => {
    await saveCoefficients(c, coefficients[i]!.file);
  });
  return coefficients;
}

/**
 * A shard's: bundles in source order, `part-<n>.safetensors`, each of at most
 * BUNDLE_ADAPTERS adapters and about BUNDLE_BYTES of loadings (so that gather reads each
 * in one read: openSmallSafetensors).
 */
async function writeCoefficientBundles(subspace: Subspace, folder: string): Promise<Array<{ adapter: string; file: string }>> {
  const parts: Array<typeof subspace.coefficients> = [];
  let bytes = 0;
  for (const c of subspace.coefficients) {
    const own = [...c.modules.values()].reduce((sum, m) => sum + 4 * (m.alpha.data.length + m.beta.data.length), 0);
    const last = parts[parts.length - 1];
    if (last === undefined || last.length >= BUNDLE_ADAPTERS || bytes + own > BUNDLE_BYTES) {
      parts.push([c]);
      bytes = own;
    } else {
      last.push(c);
      bytes += own;
    }
  }
  const files = parts.map((_, n) => path.join(folder, `part-${String(n).padStart(5, '0')}.safetensors`));
  await runPool(parts, 4, async (part, n) => {
    await saveCoefficientsBundle(part, files[n]!);
  });
  return parts.flatMap((part, n) => part.map((c) => ({ adapter: c.adapter.name, file: files[n]! })));
}
