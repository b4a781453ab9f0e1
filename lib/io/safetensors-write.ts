/**
 * The safetensors writer (see the top of safetensors.ts for the layout it shares with the
 * reference crate). Split from the reader by concern; safetensors.ts re-exports it.
 */
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { fromFloat32 } from '../dtype.js';
import { EigenLoraxError } from '../errors.js';
import { describe, invalid, knownKeys, object, oneOf } from '../validate.js';
import { DATA_DIGEST_KEY, DIGEST_PLACEHOLDER, startDigest, updateDigest } from './digest.js';
import type { Sha256Stream } from './sha256.js';
import { fileError, withAtomicFile, writeFully } from './files.js';
import {
  assertLittleEndian,
  dtypeRank,
  SAFETENSORS_MAX_HEADER_BYTES,
  safetensorsDtypeBytes,
  safetensorsDtypes,
  type SafetensorsDType,
  type SafetensorsFloatDType,
} from './safetensors-format.js';
// ---------------------------------------------------------------------------------------
// Writer

/** Output dtypes for f32 data. */
export type SafetensorsWriteDType = 'F32' | 'F16' | 'BF16';

/**
 * A tensor given as f32 values, written as `dtype` (the entry's, else the options', else
 * F32). `data` may be a function returning the values (sync or async): it is called only
 * when the writer reaches this tensor, so tensors can be produced one at a time.
 */
export interface SafetensorsFloatEntry {
  name: string;
  shape: readonly number[];
  data: Float32Array | (() => Float32Array | Promise<Float32Array>);
  /** Overrides `options.dtype` for this tensor (F64 is lossless from f32). */
  dtype?: SafetensorsFloatDType;
}

/**
 * A tensor given as its stored bytes (any dtype, little-endian, row-major), written
 * unchanged: integer and bool tensors, or float tensors copied without conversion.
 * `bytes` may be any typed array or a function returning one, called when needed.
 */
export interface SafetensorsRawEntry {
  name: string;
  shape: readonly number[];
  dtype: SafetensorsDType;
  bytes: ArrayBufferView | (() => ArrayBufferView | Promise<ArrayBufferView>);
}

export type SafetensorsEntry = SafetensorsFloatEntry | SafetensorsRawEntry;

export interface WriteSafetensorsOptions {
  /** Storage dtype of f32 entries without their own; F16/BF16 round to nearest even. Default F32. */
  dtype?: SafetensorsWriteDType;
  /** `__metadata__`: strings to strings. Omitted from the file when not given. */
  metadata?: Readonly<Record<string, string>>;
  /**
   * Records a content digest (`eigenlorax.data_sha256` in `__metadata__`, see io/digest.ts)
   * that `verifyDigest` checks when the file is read. Default false.
   */
  digest?: boolean;
}

interface PlannedEntry {
  name: string;
  shape: number[];
  dtype: SafetensorsDType;
  /** The dtype's place in the layout order (wider first). */
  rank: number;
  count: number;
  byteLength: number;
  begin: number;
  /** 'float': convert f32 data to dtype; 'raw': write bytes as given. */
  kind: 'float' | 'raw';
  source: SafetensorsFloatEntry['data'] | SafetensorsRawEntry['bytes'];
}

const loneSurrogate = /\p{Cs}/u;
/** Any surrogate: names without one skip the slower test above and sort natively. */
const surrogate = /[\uD800-\uDFFF]/;

/**
 * Orders strings as their UTF-8 bytes compare (code point order), without encoding them: a
 * file of thousands of tensors sorts its names with tens of thousands of comparisons.
 * UTF-16 units already compare in code point order except where a surrogate (part of a
 * code point above U+FFFF) meets a unit above U+DFFF; names are checked for lone
 * surrogates before sorting.
 */
export function compareUtf8(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    if (xs !== ys) return xs ? 1 : -1;
    return x - y;
  }
  return a.length - b.length;
}

/**
 * Plans the layout (the reference crate's order) and validates every entry. Throws
 * ERR_INVALID_ARGUMENT / ERR_SHAPE_MISMATCH naming the file and tensor.
 */
function plan(file: string, entries: unknown, options: WriteSafetensorsOptions): { planned: PlannedEntry[]; header: Buffer } {
  if (!Array.isArray(entries)) throw invalid('an array of { name, shape, data } or { name, shape, dtype, bytes } entries', 'entries', entries);
  const defaultDtype: SafetensorsFloatDType = options.dtype ?? 'F32';
  const seen = new Set<string>();
  const planned: PlannedEntry[] = [];
  let anySurrogate = false;
  entries.forEach((raw: unknown, i: number) => {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalid('an entry object', `entries[${i}]`, raw);
    const entry = raw as Record<string, unknown>;
    const name = entry.name;
    if (typeof name !== 'string') throw invalid('a tensor name (string)', `entries[${i}].name`, name);
    const argError = (message: string, code: 'ERR_INVALID_ARGUMENT' | 'ERR_SHAPE_MISMATCH' = 'ERR_INVALID_ARGUMENT') =>
      fileError(code, file, message, name);
    if (name === '__metadata__') throw argError('the name __metadata__ is reserved by the format for the metadata map');
    if (surrogate.test(name)) {
      anySurrogate = true;
      if (loneSurrogate.test(name)) throw argError('the name holds a lone UTF-16 surrogate, which UTF-8 cannot encode');
    }
    if (seen.has(name)) throw argError('two entries have this name');
    seen.add(name);
    const shape = entry.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw argError(`expected shape to be an array of non-negative integers, received ${describe(shape)}`);
    }
    const isRaw = 'bytes' in entry;
    if (isRaw === 'data' in entry) throw argError('an entry needs exactly one of data (f32 values) or bytes (stored bytes)');
    let dtype: SafetensorsDType;
    if (isRaw) {
      dtype = oneOf(entry.dtype, `entries[${i}].dtype (tensor ${JSON.stringify(name)} of ${file})`, safetensorsDtypes);
      const bytes = entry.bytes;
      if (!ArrayBuffer.isView(bytes) && typeof bytes !== 'function') {
        throw argError(`expected bytes to be a typed array or a function returning one, received ${describe(bytes)}`);
      }
    } else {
      dtype =
        entry.dtype === undefined
          ? defaultDtype
          : oneOf(entry.dtype, `entries[${i}].dtype (tensor ${JSON.stringify(name)} of ${file})`, ['F32', 'F16', 'BF16', 'F64'] as const);
      const data = entry.data;
      if (!(data instanceof Float32Array) && typeof data !== 'function') {
        throw argError(`expected data to be a Float32Array or a function returning one, received ${describe(data)}`);
      }
    }
    let count = 1;
    for (const d of shape as number[]) count *= d;
    const byteLength = count * safetensorsDtypeBytes[dtype];
    if (!Number.isSafeInteger(byteLength)) throw argError(`shape [${(shape as number[]).join(', ')}] is too large`);
    const p: PlannedEntry = {
      name,
      shape: [...(shape as number[])],
      dtype,
      rank: dtypeRank.get(dtype) as number,
      count,
      byteLength,
      begin: 0,
      kind: isRaw ? 'raw' : 'float',
      source: (isRaw ? entry.bytes : entry.data) as PlannedEntry['source'],
    };
    if (typeof p.source !== 'function') checkSourceLength(file, p, p.source);
    planned.push(p);
  });

  // Without surrogates, UTF-16 order (the engine's own comparison) is UTF-8 order.
  const byName = anySurrogate ? compareUtf8 : (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  planned.sort((a, b) => b.rank - a.rank || byName(a.name, b.name));
  let offset = 0;
  const parts: string[] = [];
  if (options.metadata !== undefined) {
    const keys = Object.keys(options.metadata).sort(compareUtf8);
    parts.push(`"__metadata__":{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(options.metadata?.[k])}`).join(',')}}`);
  }
  for (const p of planned) {
    p.begin = offset;
    offset += p.byteLength;
    if (!Number.isSafeInteger(offset)) throw fileError('ERR_INVALID_ARGUMENT', file, 'the tensors add up to more than 2^53 bytes', p.name);
    parts.push(`${JSON.stringify(p.name)}:{"dtype":"${p.dtype}","shape":[${p.shape.join(',')}],"data_offsets":[${p.begin},${offset}]}`);
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const padded = json.length + ((8 - (json.length % 8)) % 8);
  if (padded > SAFETENSORS_MAX_HEADER_BYTES) {
    throw fileError(
      'ERR_INVALID_ARGUMENT',
      file,
      `the header would be ${padded} bytes, over the ${SAFETENSORS_MAX_HEADER_BYTES}-byte limit of safetensors readers`,
    );
  }
  const header = Buffer.alloc(8 + padded, 0x20);
  header.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(header, 8);
  return { planned, header };
}

function checkSourceLength(file: string, p: PlannedEntry, value: unknown): void {
  if (p.kind === 'float') {
    if (!(value instanceof Float32Array)) {
      throw fileError('ERR_INVALID_ARGUMENT', file, `the data function returned ${describe(value)}, not a Float32Array`, p.name);
    }
    if (value.length !== p.count) {
      throw fileError('ERR_SHAPE_MISMATCH', file, `data has ${value.length} values but shape [${p.shape.join(', ')}] needs ${p.count}`, p.name);
    }
  } else {
    if (!ArrayBuffer.isView(value)) {
      throw fileError('ERR_INVALID_ARGUMENT', file, `the bytes function returned ${describe(value)}, not a typed array`, p.name);
    }
    if (value.byteLength !== p.byteLength) {
      throw fileError(
        'ERR_SHAPE_MISMATCH',
        file,
        `bytes has ${value.byteLength} bytes but ${p.dtype} x [${p.shape.join(', ')}] needs ${p.byteLength}`,
        p.name,
      );
    }
  }
}

/** Pieces under this size are packed into one write (see PackedWrites). */
const PACK_BELOW = 1 << 20;

/**
 * The data section written in file order: pieces under 1 MiB are copied into one 1 MiB
 * chunk, written (and hashed) when it fills, so a file of thousands of small tensors (a
 * shard's coefficients bundle holds 16,384) takes a few writes and a few hash updates, not
 * one trip through libuv's pool and one hash call per tensor; larger pieces are hashed and
 * written from where they lie. Copying also lets a lazy entry's producer reuse its buffer.
 */
class PackedWrites {
  readonly #chunk = Buffer.allocUnsafe(PACK_BELOW);
  #start: number;
  #bytes = 0;
  constructor(
    private readonly handle: FileHandle,
    private readonly file: string,
    private readonly hash: Sha256Stream | null,
    at: number,
  ) {
    this.#start = at;
  }

  /** Appends `data` at the next offset: null when it was only copied, else a promise to await. */
  write(data: ArrayBufferView): Promise<void> | null {
    const view = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (this.#bytes + view.byteLength > PACK_BELOW) return this.#writeThrough(view);
    this.#chunk.set(view, this.#bytes);
    this.#bytes += view.byteLength;
    return null;
  }

  async #writeThrough(view: Uint8Array): Promise<void> {
    await this.flush();
    if (view.byteLength < PACK_BELOW) {
      this.#chunk.set(view, 0);
      this.#bytes = view.byteLength;
      return;
    }
    if (this.hash !== null) await updateDigest(this.hash, view);
    await writeFully(this.handle, view, this.#start, this.file);
    this.#start += view.byteLength;
  }

  async flush(): Promise<void> {
    if (this.#bytes === 0) return;
    const piece = this.#chunk.subarray(0, this.#bytes);
    // The hashing thread takes its own copy now: the chunk is free again after the write.
    if (this.hash !== null) await this.hash.update([piece]);
    await writeFully(this.handle, piece, this.#start, this.file);
    this.#start += this.#bytes;
    this.#bytes = 0;
  }
}

/**
 * The stored bytes of one planned entry, from its value: F32 and raw bytes as they are,
 * other dtypes converted natively (a promise).
 */
function encode(file: string, p: PlannedEntry, value: unknown): ArrayBufferView | Promise<ArrayBufferView> {
  checkSourceLength(file, p, value);
  if (p.kind === 'raw') return value as ArrayBufferView;
  const data = value as Float32Array;
  switch (p.dtype) {
    case 'F32':
      return data;
    case 'F16':
      return fromFloat32(data, 'f16');
    case 'BF16':
      return fromFloat32(data, 'bf16');
    case 'F64':
      return fromFloat32(data, 'f64');
    default:
      throw new EigenLoraxError(`internal: float entry with dtype ${p.dtype}`, 'ERR_INTERNAL');
  }
}

/**
 * Writes a safetensors file, streamed and atomic.
 *
 * Every entry is checked first (names unique and not `__metadata__`, shapes, dtypes, the
 * length of data given directly); the header is computed from shapes and dtypes alone
 * and written first; then each tensor in layout order: its data function (if any) is
 * called, its length checked, f32 values converted natively to F16/BF16 (round to
 * nearest even) or F64, and the bytes written. At most one tensor is held at a time.
 * The layout is the reference crate's (see the top of this file), so the output is
 * deterministic and, for the same tensors and at most one metadata key, byte-identical
 * to `safetensors.torch.save_file`.
 *
 * The file is written to a temporary file next to `destination`, fsynced and renamed; on
 * any error (bad entry, a data function that throws or returns the wrong length, I/O) the
 * temporary file is removed, `destination` is left as it was, and the error is thrown:
 * EigenLoraxError (ERR_INVALID_ARGUMENT, ERR_SHAPE_MISMATCH naming the file and tensor,
 * ERR_NOT_FOUND for a missing folder, ERR_IO), or the data function's own error.
 */
export async function writeSafetensors(
  destination: string,
  entries: readonly SafetensorsEntry[],
  options: WriteSafetensorsOptions = {},
): Promise<void> {
  if (typeof destination !== 'string' || destination.length === 0) throw invalid('a path (non-empty string)', 'destination', destination);
  assertLittleEndian();
  const opts = object(options, 'options');
  knownKeys(opts, 'options', ['dtype', 'metadata', 'digest']);
  if (opts.digest !== undefined && typeof opts.digest !== 'boolean') throw invalid('true or false', 'options.digest', opts.digest);
  if (opts.dtype !== undefined) oneOf(opts.dtype, 'options.dtype', ['F32', 'F16', 'BF16'] as const);
  if (opts.metadata !== undefined) {
    const metadata = object(opts.metadata, 'options.metadata');
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== 'string') throw invalid('a string', `options.metadata[${JSON.stringify(key)}]`, value);
      if (loneSurrogate.test(key) || loneSurrogate.test(value)) {
        throw invalid('well-formed UTF-16 text', `options.metadata[${JSON.stringify(key)}]`, value);
      }
    }
  }
  const file = path.resolve(destination);
  const metadata = options.digest === true ? { ...options.metadata, [DATA_DIGEST_KEY]: DIGEST_PLACEHOLDER } : options.metadata;
  const { planned, header } = plan(file, entries, { ...options, metadata });
  // The digest covers the data, which is produced after the header is written: the header
  // holds a placeholder of the digest's length, overwritten in place at the end.
  const hash = options.digest === true ? startDigest(metadata ?? {}, planned) : null;
  await withAtomicFile(file, async (handle) => {
    await writeFully(handle, header, 0, file);
    const writes = new PackedWrites(handle, file, hash, header.byteLength);
    for (const p of planned) {
      // Lazy entries are produced here, one at a time; values given directly take no await.
      const value = typeof p.source === 'function' ? await p.source() : p.source;
      const encoded = encode(file, p, value);
      const writing = writes.write(encoded instanceof Promise ? await encoded : encoded);
      if (writing !== null) await writing;
    }
    await writes.flush();
    if (hash !== null) {
      const at = header.indexOf(`${JSON.stringify(DATA_DIGEST_KEY)}:"${DIGEST_PLACEHOLDER}"`) + DATA_DIGEST_KEY.length + 4;
      await writeFully(handle, Buffer.from(await hash.digest(), 'latin1'), at, file);
    }
  });
}
