/**
 * GGUF writer: version 3, little-endian, laid out as gguf-py's `GGUFWriter` lays it out
 * (header, metadata in the order given, tensor infos in the order given, padding to the
 * alignment, then each tensor's data at the next aligned offset, padded with zeros), so
 * llama.cpp reads what we write. Streamed (one tensor produced and written at a time) and
 * atomic (temporary file in the destination's folder, fsync, rename).
 */
import path from 'node:path';
import { fromFloat32 } from '../dtype.js';
import { EigenLoraxError } from '../errors.js';
import { describe, invalid, knownKeys, object } from '../validate.js';
import { fileError, withAtomicFile, writeFully } from './files.js';
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_MAX_ARRAY_DEPTH,
  GGUF_MAX_DIMS,
  GGUF_VERSION,
  ggmlBlockSizes,
  ggmlByteLength,
  ggmlTypeCodes,
  ggufValueBytes,
  ggufValueTypes,
  isGgmlType,
  type GgmlType,
  type GgufArrayValue,
  type GgufValue,
  type GgufValueType,
} from './gguf-format.js';

/** A tensor given as f32 values, stored as `dtype` (F32 default; F16/BF16 round to nearest even). */
export interface GgufFloatEntry {
  name: string;
  /** numpy order (`[out, in]` for a weight); written reversed, as ggml's `ne`. */
  shape: readonly number[];
  data: Float32Array | (() => Float32Array | Promise<Float32Array>);
  dtype?: 'F32' | 'F16' | 'BF16';
}

/** A tensor given as its stored bytes, of any ggml type (quantized ones included), written unchanged. */
export interface GgufRawEntry {
  name: string;
  shape: readonly number[];
  dtype: GgmlType;
  bytes: ArrayBufferView | (() => ArrayBufferView | Promise<ArrayBufferView>);
}

export type GgufEntry = GgufFloatEntry | GgufRawEntry;

export interface WriteGgufOptions {
  /** Metadata in the order to write; a Map, an array of pairs, or a plain object. */
  metadata?: ReadonlyMap<string, GgufValue> | ReadonlyArray<readonly [string, GgufValue]> | Readonly<Record<string, GgufValue>>;
  /**
   * Tensor data alignment (a power of two; default 32, or `general.alignment` when the
   * metadata has it). A value other than 32 is written as `general.alignment` if absent.
   */
  alignment?: number;
}

/** Encodes values into one growing buffer (a vocabulary is hundreds of thousands of small values). */
class Bytes {
  #buffer = Buffer.alloc(1 << 16);
  length = 0;

  /** Room for `n` more bytes; returns the offset to write them at. */
  reserve(n: number): number {
    if (this.length + n > this.#buffer.length) {
      const grown = Buffer.alloc(Math.max(this.#buffer.length * 2, this.length + n));
      this.#buffer.copy(grown, 0, 0, this.length);
      this.#buffer = grown;
    }
    const at = this.length;
    this.length += n;
    return at;
  }

  get buffer(): Buffer {
    return this.#buffer;
  }

  // reserve() first, then this.#buffer: reserving may replace the buffer.
  push(b: Uint8Array): void {
    const at = this.reserve(b.length);
    this.#buffer.set(b, at);
  }

  u32(v: number): void {
    const at = this.reserve(4);
    this.#buffer.writeUInt32LE(v, at);
  }

  u64(v: number | bigint): void {
    const at = this.reserve(8);
    this.#buffer.writeBigUInt64LE(BigInt(v), at);
  }

  string(s: string): void {
    const length = Buffer.byteLength(s, 'utf8');
    this.u64(length);
    const at = this.reserve(length);
    this.#buffer.write(s, at, 'utf8');
  }

  result(): Buffer {
    return this.#buffer.subarray(0, this.length);
  }
}

const loneSurrogate = /\p{Cs}/u;
const integerRanges: Partial<Record<GgufValueType, [number, number]>> = {
  UINT8: [0, 0xff],
  INT8: [-0x80, 0x7f],
  UINT16: [0, 0xffff],
  INT16: [-0x8000, 0x7fff],
  UINT32: [0, 0xffffffff],
  INT32: [-0x80000000, 0x7fffffff],
};

function encodeScalar(out: Bytes, type: GgufValueType, value: unknown, where: string): void {
  if (type === 'STRING') {
    if (typeof value !== 'string' || loneSurrogate.test(value)) throw invalid('a string (well-formed UTF-16)', where, value);
    out.string(value);
    return;
  }
  if (type === 'BOOL') {
    if (typeof value !== 'boolean') throw invalid('true or false', where, value);
    const at = out.reserve(1);
    out.buffer.writeUInt8(value ? 1 : 0, at);
    return;
  }
  const size = ggufValueBytes[type as Exclude<GgufValueType, 'STRING' | 'ARRAY'>];
  if (type === 'UINT64' || type === 'INT64') {
    const v = typeof value === 'number' && Number.isSafeInteger(value) ? BigInt(value) : value;
    if (typeof v !== 'bigint') throw invalid(`a bigint (or a safe integer) for ${type}`, where, value);
    if (type === 'UINT64' ? v < 0n || v >= 1n << 64n : v < -(1n << 63n) || v >= 1n << 63n) throw invalid(`a value in the ${type} range`, where, value);
    const at = out.reserve(size);
    if (type === 'UINT64') out.buffer.writeBigUInt64LE(v, at);
    else out.buffer.writeBigInt64LE(v, at);
    return;
  }
  if (typeof value !== 'number') throw invalid(`a number for ${type}`, where, value);
  if (type !== 'FLOAT32' && type !== 'FLOAT64') {
    const [lo, hi] = integerRanges[type] as [number, number];
    if (!Number.isInteger(value) || value < lo || value > hi) throw invalid(`an integer in [${lo}, ${hi}] for ${type}`, where, value);
  }
  const at = out.reserve(size);
  const b = out.buffer;
  if (type === 'FLOAT32') b.writeFloatLE(value, at);
  else if (type === 'FLOAT64') b.writeDoubleLE(value, at);
  else if (type === 'UINT8') b.writeUInt8(value, at);
  else if (type === 'INT8') b.writeInt8(value, at);
  else if (type === 'UINT16') b.writeUInt16LE(value, at);
  else if (type === 'INT16') b.writeInt16LE(value, at);
  else if (type === 'UINT32') b.writeUInt32LE(value, at);
  else b.writeInt32LE(value, at);
}

function checkType(type: unknown, where: string): GgufValueType {
  if (typeof type !== 'string' || !(ggufValueTypes as readonly string[]).includes(type)) {
    throw invalid(`a GGUF value type (${ggufValueTypes.join(', ')})`, where, type);
  }
  return type as GgufValueType;
}

function encodeValue(out: Bytes, value: GgufValue, where: string, depth = 0): void {
  const v = object(value, where);
  const type = checkType(v.type, `${where}.type`);
  out.u32(ggufValueTypes.indexOf(type));
  if (type !== 'ARRAY') {
    encodeScalar(out, type, v.value, `${where}.value`);
    return;
  }
  encodeArrayBody(out, v as unknown as GgufArrayValue, where, depth);
}

function encodeArrayBody(out: Bytes, array: GgufArrayValue, where: string, depth: number): void {
  if (depth >= GGUF_MAX_ARRAY_DEPTH) throw invalid(`arrays nested at most ${GGUF_MAX_ARRAY_DEPTH} deep`, where, array);
  const itemType = checkType(array.itemType, `${where}.itemType`);
  if (!Array.isArray(array.value)) throw invalid('an array', `${where}.value`, array.value);
  out.u32(ggufValueTypes.indexOf(itemType));
  out.u64(array.value.length);
  array.value.forEach((item, i) => {
    const at = `${where}.value[${i}]`;
    if (itemType === 'ARRAY') {
      const nested = object(item, at) as unknown as GgufArrayValue;
      if (nested.type !== 'ARRAY') throw invalid('an ARRAY value', `${at}.type`, nested.type);
      encodeArrayBody(out, nested, at, depth + 1);
    } else {
      encodeScalar(out, itemType, item, at);
    }
  });
}

interface Planned {
  name: string;
  shape: number[];
  dtype: GgmlType;
  byteLength: number;
  offset: number;
  kind: 'float' | 'raw';
  source: GgufFloatEntry['data'] | GgufRawEntry['bytes'];
}

function metadataEntries(metadata: WriteGgufOptions['metadata']): Array<[string, GgufValue]> {
  if (metadata === undefined) return [];
  if (metadata instanceof Map) return [...metadata.entries()];
  if (Array.isArray(metadata)) {
    return metadata.map((pair, i) => {
      if (!Array.isArray(pair) || pair.length !== 2) throw invalid('a [key, value] pair', `options.metadata[${i}]`, pair);
      return [pair[0], pair[1]] as [string, GgufValue];
    });
  }
  return Object.entries(object(metadata, 'options.metadata') as Record<string, GgufValue>);
}

/** The header bytes and the planned tensors (offsets relative to the data section). */
function plan(file: string, entries: unknown, options: WriteGgufOptions): { header: Buffer; planned: Planned[]; alignment: number } {
  const opts = object(options, 'options');
  knownKeys(opts, 'options', ['metadata', 'alignment']);
  const kv = metadataEntries(options.metadata);
  const keys = new Set<string>();
  for (const [key] of kv) {
    if (typeof key !== 'string' || key.length === 0 || loneSurrogate.test(key)) throw invalid('a metadata key (non-empty string)', 'options.metadata', key);
    if (keys.has(key)) throw fileError('ERR_INVALID_ARGUMENT', file, `metadata key ${JSON.stringify(key)} is given twice`);
    keys.add(key);
  }
  const given = kv.find(([k]) => k === 'general.alignment')?.[1];
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  if (given !== undefined) {
    if (given.type !== 'UINT32' || typeof given.value !== 'number') throw invalid('a UINT32 value', 'options.metadata["general.alignment"]', given);
    alignment = given.value;
  }
  if (opts.alignment !== undefined) {
    if (given !== undefined && given.value !== opts.alignment) {
      throw invalid(`the metadata's general.alignment (${String(given.value)})`, 'options.alignment', opts.alignment);
    }
    alignment = opts.alignment as number;
  }
  if (!Number.isSafeInteger(alignment) || alignment < 1 || alignment > 0x80000000 || (alignment & (alignment - 1)) !== 0) {
    throw invalid('a power of two', 'options.alignment', alignment);
  }
  if (given === undefined && alignment !== GGUF_DEFAULT_ALIGNMENT) kv.push(['general.alignment', { type: 'UINT32', value: alignment }]);

  if (!Array.isArray(entries)) throw invalid('an array of { name, shape, data } or { name, shape, dtype, bytes } entries', 'tensors', entries);
  const planned: Planned[] = [];
  const names = new Set<string>();
  let offset = 0;
  entries.forEach((raw: unknown, i: number) => {
    const e = object(raw, `tensors[${i}]`);
    const name = e.name;
    if (typeof name !== 'string' || name.length === 0 || loneSurrogate.test(name)) throw invalid('a tensor name (non-empty string)', `tensors[${i}].name`, name);
    const bad = (message: string, code: 'ERR_INVALID_ARGUMENT' | 'ERR_SHAPE_MISMATCH' = 'ERR_INVALID_ARGUMENT') => fileError(code, file, message, name);
    if (names.has(name)) throw bad('two tensors have this name');
    names.add(name);
    const shape = e.shape;
    if (!Array.isArray(shape) || shape.length < 1 || shape.length > GGUF_MAX_DIMS || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw bad(`expected shape to be 1 to ${GGUF_MAX_DIMS} non-negative integers, received ${describe(shape)}`);
    }
    const isRaw = 'bytes' in e;
    if (isRaw === 'data' in e) throw bad('a tensor needs exactly one of data (f32 values) or bytes (stored bytes)');
    let dtype: GgmlType;
    if (isRaw) {
      if (!isGgmlType(e.dtype)) throw bad(`expected dtype to be a ggml type (${Object.keys(ggmlTypeCodes).join(', ')}), received ${describe(e.dtype)}`);
      dtype = e.dtype;
      if (!ArrayBuffer.isView(e.bytes) && typeof e.bytes !== 'function') throw bad(`expected bytes to be a typed array or a function returning one, received ${describe(e.bytes)}`);
    } else {
      const d = e.dtype ?? 'F32';
      if (d !== 'F32' && d !== 'F16' && d !== 'BF16') throw bad(`expected dtype F32, F16 or BF16 for f32 data, received ${describe(d)}`);
      dtype = d;
      if (!(e.data instanceof Float32Array) && typeof e.data !== 'function') throw bad(`expected data to be a Float32Array or a function returning one, received ${describe(e.data)}`);
    }
    const dims = shape as number[];
    const count = dims.reduce((n, d) => n * d, 1);
    const [block] = ggmlBlockSizes[dtype];
    const inner = dims[dims.length - 1] as number;
    if (inner % block !== 0) throw bad(`the last dimension ${inner} is not a multiple of the ${dtype} block size ${block}`);
    const byteLength = ggmlByteLength(dtype, count);
    if (!Number.isSafeInteger(byteLength)) throw bad(`shape [${dims.join(', ')}] is too large`);
    const p: Planned = { name, shape: [...dims], dtype, byteLength, offset, kind: isRaw ? 'raw' : 'float', source: (isRaw ? e.bytes : e.data) as Planned['source'] };
    if (typeof p.source !== 'function') checkSource(file, p, p.source);
    planned.push(p);
    offset += Math.ceil(byteLength / alignment) * alignment;
  });

  const out = new Bytes();
  out.u32(GGUF_MAGIC);
  out.u32(GGUF_VERSION);
  out.u64(planned.length);
  out.u64(kv.length);
  for (const [key, value] of kv) {
    out.string(key);
    encodeValue(out, value, `options.metadata[${JSON.stringify(key)}]`);
  }
  for (const p of planned) {
    out.string(p.name);
    out.u32(p.shape.length);
    for (const d of [...p.shape].reverse()) out.u64(d);
    out.u32(ggmlTypeCodes[p.dtype]);
    out.u64(p.offset);
  }
  const header = out.result();
  const padded = Buffer.alloc(Math.ceil(header.length / alignment) * alignment);
  header.copy(padded);
  return { header: padded, planned, alignment };
}

function checkSource(file: string, p: Planned, value: unknown): void {
  if (p.kind === 'float') {
    if (!(value instanceof Float32Array)) throw fileError('ERR_INVALID_ARGUMENT', file, `the data function returned ${describe(value)}, not a Float32Array`, p.name);
    const count = p.shape.reduce((n, d) => n * d, 1);
    if (value.length !== count) throw fileError('ERR_SHAPE_MISMATCH', file, `data has ${value.length} values but shape [${p.shape.join(', ')}] needs ${count}`, p.name);
    return;
  }
  if (!ArrayBuffer.isView(value)) throw fileError('ERR_INVALID_ARGUMENT', file, `the bytes function returned ${describe(value)}, not a typed array`, p.name);
  if (value.byteLength !== p.byteLength) {
    throw fileError('ERR_SHAPE_MISMATCH', file, `bytes has ${value.byteLength} bytes but ${p.dtype} x [${p.shape.join(', ')}] needs ${p.byteLength}`, p.name);
  }
}

async function encode(file: string, p: Planned): Promise<ArrayBufferView> {
  const value = typeof p.source === 'function' ? await p.source() : p.source;
  checkSource(file, p, value);
  if (p.kind === 'raw') return value as ArrayBufferView;
  const data = value as Float32Array;
  if (p.dtype === 'F32') return data;
  if (p.dtype === 'F16') return fromFloat32(data, 'f16');
  if (p.dtype === 'BF16') return fromFloat32(data, 'bf16');
  throw new EigenLoraxError(`internal: float tensor of type ${p.dtype}`, 'ERR_INTERNAL');
}

/**
 * Writes a GGUF file (version 3, little-endian): `options.metadata` in the order given
 * (any value type, arrays and nested arrays included), then `tensors` in the order given,
 * each at an offset aligned to 32 bytes (or `options.alignment`) and zero-padded. f32
 * data is stored as F32, F16 or BF16 (native conversion, round to nearest even); raw bytes
 * of any ggml type are written unchanged. Every entry is checked before anything is
 * written (names unique, 1-4 dimensions, the innermost a multiple of the type's block
 * size, value types and ranges); data functions are called one at a time while writing.
 * Atomic: a temporary file in the destination's folder, fsynced and renamed; on any error
 * it is removed and `destination` is left as it was.
 */
export async function writeGguf(destination: string, tensors: readonly GgufEntry[], options: WriteGgufOptions = {}): Promise<void> {
  if (typeof destination !== 'string' || destination.length === 0) throw invalid('a path (non-empty string)', 'destination', destination);
  const file = path.resolve(destination);
  const { header, planned, alignment } = plan(file, tensors, options);
  await withAtomicFile(file, async (handle) => {
    await writeFully(handle, header, 0, file);
    for (const p of planned) {
      const bytes = await encode(file, p);
      await writeFully(handle, bytes, header.length + p.offset, file);
    }
    // Pad the last tensor too, as gguf-py does, so the file ends aligned.
    const last = planned[planned.length - 1];
    if (last !== undefined) {
      const end = header.length + last.offset + last.byteLength;
      const padded = header.length + last.offset + Math.ceil(last.byteLength / alignment) * alignment;
      if (padded > end) await writeFully(handle, new Uint8Array(padded - end), end, file);
    }
  });
}
