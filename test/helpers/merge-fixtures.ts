/**
 * Base checkpoints for the merge tests (single files and sharded ones, written with
 * writeSafetensors), and float64 references computed here with plain loops: the update
 * `s B A` (or its transpose) entry by entry, units in the last place of each dtype, and
 * byte comparisons that skip the changed tensors.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { openSafetensors, type Matrix } from '../../lib/index.js';
import { randomValues, writeTensors, type FixtureTensor } from './adapter-fixtures.js';

export { tempDir } from './safetensors-fixtures.js';

/** A float tensor of N(0, sd^2) values from `seed`, stored as `dtype`. */
export function floatTensor(key: string, shape: number[], seed: number, dtype: 'F32' | 'F16' | 'BF16' | 'F64' = 'F32', sd = 0.05): FixtureTensor {
  const count = shape.reduce((n, d) => n * d, 1);
  const data = randomValues(count, seed);
  for (let i = 0; i < count; i++) data[i] = (data[i] as number) * (sd / 0.1);
  return { key, shape, data, dtype };
}

/** A raw (non-float) tensor: `bytes` as given. */
export function rawTensor(key: string, shape: number[], dtype: string, bytes: Uint8Array): FixtureTensor {
  return { key, shape, raw: { dtype, bytes } };
}

export interface Shard {
  name: string;
  tensors: FixtureTensor[];
  metadata?: Record<string, string>;
}

/**
 * A sharded checkpoint in `dir`: each shard written with writeSafetensors and an index
 * (`indexName`) as transformers writes it: `{ metadata: { total_size }, weight_map }`.
 */
export async function writeSharded(dir: string, shards: Shard[], indexName = 'model.safetensors.index.json'): Promise<string> {
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (const shard of shards) {
    await writeTensors(path.join(dir, shard.name), shard.tensors, shard.metadata ?? { format: 'pt' });
    for (const t of shard.tensors) {
      weightMap[t.key] = shard.name;
      const count = t.shape.reduce((n, d) => n * d, 1);
      total += t.raw ? t.raw.bytes.byteLength : count * { F32: 4, F16: 2, BF16: 2, F64: 8 }[t.dtype ?? 'F32'];
    }
  }
  const index = path.join(dir, indexName);
  await writeFile(index, `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`);
  return index;
}

export interface StoredTensor {
  dtype: string;
  shape: number[];
  /** Absolute offset and length of its bytes in its file. */
  file: string;
  offset: number;
  byteLength: number;
  /** f32 values (float dtypes only). */
  values: Float32Array | null;
}

/** Every tensor of a checkpoint (file, index or folder) with its values as f32. */
export async function readCheckpoint(target: string): Promise<Map<string, StoredTensor>> {
  const reader = await openSafetensors(target);
  try {
    const out = new Map<string, StoredTensor>();
    for (const [key, info] of reader.tensors) {
      const float = ['F32', 'F16', 'BF16', 'F64'].includes(info.dtype);
      out.set(key, {
        dtype: info.dtype,
        shape: [...info.shape],
        file: info.file,
        offset: info.offset,
        byteLength: info.byteLength,
        values: float ? (await reader.readFloat32(key)).data : null,
      });
    }
    return out;
  } finally {
    await reader.close();
  }
}

/**
 * The update of one module in f64, in the stored weight's orientation, entry by entry:
 * `c * sum_k B[i][k] A[k][j]` (`rows = d_out`), or its transpose (`rows = d_in`).
 */
export function referenceDelta(A: Matrix, B: Matrix, coefficient: number, transposed: boolean): Float64Array {
  const r = A.rows;
  const dIn = A.cols;
  const dOut = B.rows;
  const out = new Float64Array(dIn * dOut);
  for (let i = 0; i < dOut; i++) {
    for (let j = 0; j < dIn; j++) {
      let sum = 0;
      for (let k = 0; k < r; k++) sum += (B.data[i * r + k] as number) * (A.data[k * dIn + j] as number);
      if (transposed) out[j * dOut + i] = coefficient * sum;
      else out[i * dIn + j] = coefficient * sum;
    }
  }
  return out;
}

/** `sum_k |c B[i][k] A[k][j]|` in the same layout: the scale of the rounding errors of the product. */
export function referenceMagnitude(A: Matrix, B: Matrix, coefficient: number, transposed: boolean): Float64Array {
  const abs = (m: Matrix): Matrix => ({ rows: m.rows, cols: m.cols, data: m.data.map(Math.abs) });
  return referenceDelta(abs(A), abs(B), Math.abs(coefficient), transposed);
}

const mantissaBits: Record<string, number> = { F32: 23, BF16: 7, F16: 10 };
const minExponent: Record<string, number> = { F32: -126, BF16: -126, F16: -14 };

/** One unit in the last place of `x` in `dtype` (subnormal spacing below the normal range). */
export function ulp(x: number, dtype: 'F32' | 'BF16' | 'F16'): number {
  const a = Math.abs(x);
  const e = a === 0 ? (minExponent[dtype] as number) : Math.max(Math.floor(Math.log2(a)), minExponent[dtype] as number);
  return 2 ** (e - (mantissaBits[dtype] as number));
}

/**
 * Checks that `a` and `b` (files) are byte-identical except inside `skip` (absolute
 * [offset, length] ranges of `b`'s changed tensors); returns the number of differing
 * bytes outside them (0 when identical) and whether the sizes match.
 */
export async function differingBytesOutside(a: string, b: string, skip: Array<[number, number]>): Promise<{ sameSize: boolean; differing: number }> {
  const [x, y] = await Promise.all([readFile(a), readFile(b)]);
  if (x.byteLength !== y.byteLength) return { sameSize: false, differing: -1 };
  const masked = new Uint8Array(x.byteLength);
  for (const [offset, length] of skip) masked.fill(1, offset, offset + length);
  let differing = 0;
  for (let i = 0; i < x.byteLength; i++) if (masked[i] === 0 && x[i] !== y[i]) differing++;
  return { sameSize: true, differing };
}

/** Files in `dir` whose names look like our temporary files. */
export function temporaryFiles(names: string[]): string[] {
  return names.filter((n) => n.endsWith('.tmp'));
}

/** Logs a one-line summary of a comparison to the test's log. */
export function logStats(t: ExecutionContext, label: string, stats: Record<string, number | string>): void {
  t.log(`${label}: ${Object.entries(stats).map(([k, v]) => `${k} ${typeof v === 'number' ? Number(v.toPrecision(4)) : v}`).join(', ')}`);
}
