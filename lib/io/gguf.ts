/**
 * GGUF reader (llama.cpp's model and adapter format, version 3, little-endian).
 *
 * Layout (gguf-py/gguf/gguf_writer.py, ggml/src/gguf.cpp): magic "GGUF", u32 version,
 * u64 tensor count, u64 metadata count; the metadata (key: u64 length + UTF-8 bytes,
 * u32 value type, value; strings are u64 length + bytes; arrays u32 item type + u64 count
 * + items); one info per tensor (name, u32 n_dims, u64 ne[n_dims] in ggml order, i.e.
 * numpy's shape reversed, u32 ggml type, u64 offset into the data section); padding to
 * `general.alignment` (default 32); the data section, each tensor at an aligned offset.
 *
 * {@link openGguf} reads only the header, through a 1 MiB window of positioned reads (so
 * a vocabulary of 150,000 strings is not one read per string), and trusts nothing in it:
 * every count, length, dimension and offset is checked against the file size before it
 * sizes anything. Tensors are read when asked for, one positioned read each.
 */
import { open, stat, type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { EigenLoraxError, withCallerStack } from '../errors.js';
import { native } from '../native.js';
import { invalid, knownKeys, object } from '../validate.js';
import { fileError, ioError, readFully } from './files.js';
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_MAX_ARRAY_DEPTH,
  GGUF_MAX_DIMS,
  GGUF_MAX_HEADER_BYTES,
  dequantize,
  ggmlBlockSizes,
  ggmlByteLength,
  ggmlTypeOfCode,
  ggufValueBytes,
  ggufValueTypes,
  isGgufFloatType,
  type GgmlType,
  type GgufArrayValue,
  type GgufFloatType,
  type GgufValue,
  type GgufValueType,
} from './gguf-format.js';

/** What the header says about one tensor. */
export interface GgufTensorInfo {
  readonly name: string;
  /** The ggml type, named as in gguf-py (`F32`, `Q8_0`, ...); the `dtype` a merge keeps. */
  readonly dtype: GgmlType;
  /** numpy / PyTorch order (ggml's `ne` reversed): a `[out, in]` weight has `ne = [in, out]`. */
  readonly shape: readonly number[];
  /** ggml order, as stored. */
  readonly ne: readonly number[];
  readonly byteLength: number;
  /** Absolute path of the file. */
  readonly file: string;
  /** Absolute byte offset of the data in the file. */
  readonly offset: number;
}

export interface GgufFloat32Tensor {
  dtype: GgufFloatType;
  shape: number[];
  data: Float32Array;
}

export interface GgufRawTensor {
  dtype: GgmlType;
  shape: number[];
  bytes: Uint8Array;
}

/** A format error about `file` (and tensor or key). */
function formatError(file: string, message: string, key?: string): EigenLoraxError {
  return fileError('ERR_GGUF_FORMAT', file, message, key);
}

/**
 * An opened GGUF file: header read and checked, tensors read on demand. Close it when done
 * (`await using reader = await openGguf(path)` does it). Reads may run concurrently.
 */
export class GgufReader {
  readonly path: string;
  /** The one file read (absolute); a list so that merge code treats it like a safetensors reader. */
  readonly files: readonly string[];
  readonly version: number;
  readonly alignment: number;
  /** Absolute offset of the data section. */
  readonly dataOffset: number;
  /** Metadata in file order. */
  readonly metadata: ReadonlyMap<string, GgufValue>;
  /** Tensors by name, in file order. */
  readonly tensors: ReadonlyMap<string, GgufTensorInfo>;
  /** A GGUF file is never sharded here. */
  readonly indexMetadata = null;

  #handle: FileHandle | null;
  readonly #inflight = new Set<Promise<unknown>>();

  /** @internal Use {@link openGguf}. */
  constructor(file: string, handle: FileHandle, header: ParsedHeader) {
    this.path = file;
    this.files = [file];
    this.#handle = handle;
    this.version = header.version;
    this.alignment = header.alignment;
    this.dataOffset = header.dataOffset;
    this.metadata = header.metadata;
    this.tensors = header.tensors;
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  /** A metadata value without its type (numbers, bigints, strings, booleans, arrays of them), or undefined. */
  get(key: string): unknown {
    const v = this.metadata.get(key);
    return v === undefined ? undefined : plainValue(v);
  }

  /** A string metadata value, or undefined when absent; ERR_GGUF_FORMAT when of another type. */
  getString(key: string): string | undefined {
    const v = this.metadata.get(key);
    if (v === undefined) return undefined;
    if (v.type !== 'STRING') throw formatError(this.path, `metadata ${JSON.stringify(key)} should be a STRING but is ${v.type}`);
    return v.value;
  }

  /** A numeric (integer or float) metadata value as a number, or undefined; ERR_GGUF_FORMAT otherwise. */
  getNumber(key: string): number | undefined {
    const v = this.metadata.get(key);
    if (v === undefined) return undefined;
    if (v.type === 'UINT64' || v.type === 'INT64') return Number(v.value);
    if (typeof v.value !== 'number') throw formatError(this.path, `metadata ${JSON.stringify(key)} should be a number but is ${v.type}`);
    return v.value;
  }

  /**
   * Reads tensor `name` as f32: F32 as stored, F16/BF16/F64 converted natively (off the
   * event loop), Q8_0 and Q4_0 dequantised as ggml does. Other types: ERR_UNSUPPORTED_DTYPE
   * naming the type (read them with {@link readRaw}). `options.out`: an array of exactly
   * `product(shape)` elements to fill instead of a new one.
   */
  readFloat32(name: string, options: { out?: Float32Array } = {}): Promise<GgufFloat32Tensor> {
    return this.#track(this.#readFloat32(name, options));
  }

  async #readFloat32(name: string, options: { out?: Float32Array }): Promise<GgufFloat32Tensor> {
    const info = this.#info(name);
    const opts = object(options, 'options');
    knownKeys(opts, 'options', ['out']);
    if (opts.out !== undefined && !(opts.out instanceof Float32Array)) throw invalid('a Float32Array', 'options.out', opts.out);
    const type = info.dtype;
    if (!isGgufFloatType(type)) {
      throw fileError(
        'ERR_UNSUPPORTED_DTYPE',
        this.path,
        `ggml type ${type} is not read as f32 (F32, F16, BF16, F64, Q8_0 and Q4_0 are); read it with readRaw()`,
        name,
      );
    }
    const count = info.shape.reduce((n, d) => n * d, 1);
    const out = opts.out as Float32Array | undefined;
    if (out !== undefined && out.length !== count) {
      throw fileError('ERR_SHAPE_MISMATCH', this.path, `options.out has ${out.length} elements but the tensor has ${count}`, name);
    }
    const data = out ?? new Float32Array(count);
    const shape = [...info.shape];
    if (type === 'F32') {
      await readFully(this.#open(name), data, info.offset, this.path, name);
      return { dtype: type, shape, data };
    }
    const bytes = new Uint8Array(info.byteLength);
    await readFully(this.#open(name), bytes, info.offset, this.path, name);
    if (type === 'Q8_0' || type === 'Q4_0') {
      dequantize(type, bytes, data);
    } else if (count > 0) {
      // Native, vectorised, off the event loop, straight into the result.
      const callSite = new Error();
      await withCallerStack(native.convert({ src: bytes, from: type === 'F16' ? 'f16' : type === 'BF16' ? 'bf16' : 'f64', dst: data, to: 'f32' }), callSite);
    }
    return { dtype: type, shape, data };
  }

  /** Reads tensor `name` as stored, into a buffer of its own (or `options.out`, of exactly `byteLength` bytes). */
  readRaw(name: string, options: { out?: Uint8Array } = {}): Promise<GgufRawTensor> {
    return this.#track(this.#readRaw(name, options));
  }

  async #readRaw(name: string, options: { out?: Uint8Array }): Promise<GgufRawTensor> {
    const info = this.#info(name);
    const opts = object(options, 'options');
    knownKeys(opts, 'options', ['out']);
    if (opts.out !== undefined && !(opts.out instanceof Uint8Array)) throw invalid('a Uint8Array', 'options.out', opts.out);
    const out = opts.out as Uint8Array | undefined;
    if (out !== undefined && out.byteLength !== info.byteLength) {
      throw fileError('ERR_SHAPE_MISMATCH', this.path, `options.out has ${out.byteLength} bytes but the tensor has ${info.byteLength}`, name);
    }
    const bytes = out ?? new Uint8Array(info.byteLength);
    await readFully(this.#open(name), bytes, info.offset, this.path, name);
    return { dtype: info.dtype, shape: [...info.shape], bytes };
  }

  #info(name: string): GgufTensorInfo {
    if (typeof name !== 'string') throw invalid('a tensor name (string)', 'name', name);
    if (this.#handle === null) throw fileError('ERR_CLOSED', this.path, 'the reader is closed', name);
    const info = this.tensors.get(name);
    if (info === undefined) {
      throw fileError('ERR_TENSOR_NOT_FOUND', this.path, `no such tensor (the file holds ${this.tensors.size})`, name);
    }
    return info;
  }

  #open(name: string): FileHandle {
    if (this.#handle === null) throw fileError('ERR_CLOSED', this.path, 'the reader is closed', name);
    return this.#handle;
  }

  #track<T>(promise: Promise<T>): Promise<T> {
    this.#inflight.add(promise);
    const forget = () => this.#inflight.delete(promise);
    promise.then(forget, forget);
    return promise;
  }

  /** Closes the file after reads already started; later reads throw ERR_CLOSED. Safe to call twice. */
  async close(): Promise<void> {
    const handle = this.#handle;
    if (handle === null) return;
    this.#handle = null;
    await Promise.allSettled([...this.#inflight]);
    await handle.close().catch(() => undefined);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** A metadata value without type tags. */
export function plainValue(v: GgufValue | GgufArrayValue): unknown {
  if (v.type !== 'ARRAY') return v.value;
  return v.value.map((item) => (typeof item === 'object' ? plainValue(item) : item));
}

// ---------------------------------------------------------------------------------------
// Header parsing

interface ParsedHeader {
  version: number;
  alignment: number;
  dataOffset: number;
  metadata: Map<string, GgufValue>;
  tensors: Map<string, GgufTensorInfo>;
}

const WINDOW_BYTES = 1 << 20;

/** A forward-only cursor over the header, reading the file through a window. */
class HeaderCursor {
  position = 0;
  #window = new Uint8Array(0);
  #view = new DataView(this.#window.buffer);
  #text = Buffer.from(this.#window.buffer);
  #start = 0;
  readonly #decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

  constructor(
    readonly handle: FileHandle,
    readonly file: string,
    readonly size: number,
  ) {}

  /** Bytes left in the file after the cursor. */
  get remaining(): number {
    return this.size - this.position;
  }

  /** Makes `n` bytes at the cursor available; refuses what would run past the file or the header limit. */
  async need(n: number, what: string): Promise<void> {
    if (this.position + n > this.size) {
      throw formatError(this.file, `${what} runs past the end of the file at byte ${this.position} (needs ${n} bytes, ${this.remaining} left; truncated?)`);
    }
    if (this.position + n > GGUF_MAX_HEADER_BYTES) {
      throw formatError(this.file, `the header is larger than the ${GGUF_MAX_HEADER_BYTES}-byte limit (at ${what})`);
    }
    const end = this.#start + this.#window.byteLength;
    if (this.position >= this.#start && this.position + n <= end) return;
    const length = Math.min(Math.max(n, WINDOW_BYTES), this.size - this.position);
    const window = new Uint8Array(length);
    await readFully(this.handle, window, this.position, this.file);
    this.#window = window;
    this.#view = new DataView(window.buffer);
    this.#text = Buffer.from(window.buffer);
    this.#start = this.position;
  }

  /** True when `n` bytes at the cursor are in the window (and inside the header limit): read them without awaiting. */
  has(n: number): boolean {
    return this.position >= this.#start && this.position + n <= this.#start + this.#window.byteLength && this.position + n <= GGUF_MAX_HEADER_BYTES;
  }

  /** The u64 at the cursor, without moving (the caller made 8 bytes available). */
  peekSize(what: string): number {
    const v = this.#view.getBigUint64(this.position - this.#start, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw formatError(this.file, `${what} is ${v}, larger than any file`);
    return Number(v);
  }

  #at(n: number): number {
    const at = this.position - this.#start;
    this.position += n;
    return at;
  }

  async u32(what: string): Promise<number> {
    await this.need(4, what);
    return this.#view.getUint32(this.#at(4), true);
  }

  /** A u64 that must fit a safe integer (counts, lengths, dims, offsets). */
  async size64(what: string): Promise<number> {
    await this.need(8, what);
    const v = this.#view.getBigUint64(this.#at(8), true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw formatError(this.file, `${what} is ${v}, larger than any file`);
    return Number(v);
  }

  async string(what: string, strict: boolean): Promise<string> {
    const length = await this.size64(`the length of ${what}`);
    await this.need(length, what);
    return this.#decode(length, strict, what);
  }

  /** A string whose length and bytes are in the window. */
  stringNow(strict: boolean, what: string): string {
    const length = this.peekSize(`the length of ${what}`);
    this.#at(8);
    return this.#decode(length, strict, what);
  }

  #decode(length: number, strict: boolean, what: string): string {
    const at = this.#at(length);
    // Buffer's decoder (invalid sequences become U+FFFD, as TextDecoder's) is ~3x faster on short strings.
    if (!strict) return this.#text.toString('utf8', at, at + length);
    const bytes = this.#window.subarray(at, at + length);
    try {
      return this.#decoder.decode(bytes);
    } catch {
      throw formatError(this.file, `${what} is not valid UTF-8`);
    }
  }

  async scalar(type: GgufValueType, what: string): Promise<number | bigint | boolean | string> {
    if (type === 'STRING') return this.string(what, false);
    if (type === 'ARRAY') throw new EigenLoraxError('internal: scalar(ARRAY)', 'ERR_INTERNAL');
    await this.need(ggufValueBytes[type], what);
    return this.scalarNow(type, what);
  }

  /** A fixed-size value that is in the window. */
  scalarNow(type: Exclude<GgufValueType, 'STRING' | 'ARRAY'>, what: string): number | bigint | boolean {
    const at = this.#at(ggufValueBytes[type]);
    const v = this.#view;
    switch (type) {
      case 'UINT8':
        return v.getUint8(at);
      case 'INT8':
        return v.getInt8(at);
      case 'UINT16':
        return v.getUint16(at, true);
      case 'INT16':
        return v.getInt16(at, true);
      case 'UINT32':
        return v.getUint32(at, true);
      case 'INT32':
        return v.getInt32(at, true);
      case 'FLOAT32':
        return v.getFloat32(at, true);
      case 'FLOAT64':
        return v.getFloat64(at, true);
      case 'UINT64':
        return v.getBigUint64(at, true);
      case 'INT64':
        return v.getBigInt64(at, true);
      case 'BOOL': {
        const b = v.getUint8(at);
        if (b > 1) throw formatError(this.file, `${what} is a BOOL of value ${b} (expected 0 or 1)`);
        return b === 1;
      }
    }
  }

  async valueType(what: string): Promise<GgufValueType> {
    const code = await this.u32(`the type of ${what}`);
    const type = ggufValueTypes[code];
    if (type === undefined) throw formatError(this.file, `${what} has unknown value type ${code} (known: 0-${ggufValueTypes.length - 1})`);
    return type;
  }

  async value(type: GgufValueType, what: string, depth = 0): Promise<GgufValue> {
    if (type !== 'ARRAY') return { type, value: await this.scalar(type, what) } as GgufValue;
    if (depth >= GGUF_MAX_ARRAY_DEPTH) throw formatError(this.file, `${what} nests arrays deeper than ${GGUF_MAX_ARRAY_DEPTH}`);
    const itemType = await this.valueType(`the items of ${what}`);
    const count = await this.size64(`the item count of ${what}`);
    // Each item takes at least one byte (strings and arrays at least 8 and 12).
    const least = itemType === 'STRING' ? 8 : itemType === 'ARRAY' ? 12 : ggufValueBytes[itemType];
    if (count * least > this.remaining) {
      throw formatError(this.file, `${what} claims ${count} items of type ${itemType}, more than the ${this.remaining} bytes left in the file hold`);
    }
    const items: GgufArrayValue['value'] = new Array(count);
    const fixed = itemType === 'STRING' || itemType === 'ARRAY' ? 0 : ggufValueBytes[itemType];
    for (let i = 0; i < count; i++) {
      // Items already in the window are read without an await (a 150,000-string vocabulary
      // would otherwise cost 300,000 microtask turns).
      if (fixed > 0 && this.has(fixed)) {
        items[i] = this.scalarNow(itemType as Exclude<GgufValueType, 'STRING' | 'ARRAY'>, `${what}[${i}]`);
      } else if (itemType === 'STRING' && this.has(8) && this.has(8 + this.peekSize(`the length of ${what}[${i}]`))) {
        items[i] = this.stringNow(false, `${what}[${i}]`);
      } else {
        items[i] = itemType === 'ARRAY' ? ((await this.value('ARRAY', `${what}[${i}]`, depth + 1)) as GgufArrayValue) : await this.scalar(itemType, `${what}[${i}]`);
      }
    }
    return { type: 'ARRAY', itemType, value: items };
  }
}

async function parseHeader(handle: FileHandle, file: string, size: number): Promise<ParsedHeader> {
  const c = new HeaderCursor(handle, file, size);
  if (size < 24) {
    throw formatError(file, `the file is ${size} bytes long, shorter than a GGUF header (24 bytes: magic, version, two counts)`);
  }
  const magic = await c.u32('the magic');
  if (magic !== GGUF_MAGIC) {
    const text = Buffer.from(new Uint32Array([magic]).buffer).toString('latin1');
    throw formatError(file, `not a GGUF file: it starts with ${JSON.stringify(text)} where "GGUF" was expected`);
  }
  const version = await c.u32('the version');
  if (version !== 2 && version !== 3) {
    const swapped = ((version & 0xff) << 24) | ((version & 0xff00) << 8) | ((version >>> 8) & 0xff00) | (version >>> 24);
    if (swapped === 2 || swapped === 3) throw formatError(file, `this is a big-endian GGUF file (version ${swapped} byte-swapped); only little-endian files are read`);
    throw formatError(file, `GGUF version ${version} is not supported (versions 2 and 3 are read)`);
  }
  const tensorCount = await c.size64('the tensor count');
  const kvCount = await c.size64('the metadata count');
  // A metadata entry takes at least 13 bytes (key length, type, one byte of value); a tensor info 24.
  if (kvCount * 13 > c.remaining) throw formatError(file, `the header claims ${kvCount} metadata entries, more than the file (${size} bytes) can hold`);
  if (tensorCount * 24 > c.remaining) throw formatError(file, `the header claims ${tensorCount} tensors, more than the file (${size} bytes) can hold`);

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = await c.string(`the key of metadata entry ${i}`, true);
    if (metadata.has(key)) throw formatError(file, `metadata key ${JSON.stringify(key)} appears twice`);
    const type = await c.valueType(`metadata ${JSON.stringify(key)}`);
    metadata.set(key, await c.value(type, `metadata ${JSON.stringify(key)}`));
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const align = metadata.get('general.alignment');
  if (align !== undefined) {
    if (align.type !== 'UINT32') throw formatError(file, `general.alignment must be a UINT32, not ${align.type}`);
    if (align.value === 0 || (align.value & (align.value - 1)) !== 0) {
      throw formatError(file, `general.alignment is ${align.value}, not a power of two`);
    }
    alignment = align.value;
  }

  const raw: Array<{ name: string; type: GgmlType; ne: number[]; shape: number[]; relative: number; byteLength: number }> = [];
  const names = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = await c.string(`the name of tensor ${i}`, true);
    const bad = (message: string) => formatError(file, message, name);
    if (names.has(name)) throw bad('two tensors have this name');
    names.add(name);
    const nDims = await c.u32(`the dimension count of tensor ${JSON.stringify(name)}`);
    if (nDims < 1 || nDims > GGUF_MAX_DIMS) throw bad(`${nDims} dimensions (ggml tensors have 1 to ${GGUF_MAX_DIMS})`);
    const ne: number[] = [];
    let count = 1;
    for (let d = 0; d < nDims; d++) {
      const n = await c.size64(`dimension ${d} of tensor ${JSON.stringify(name)}`);
      ne.push(n);
      count *= n;
      if (!Number.isSafeInteger(count) || count > size * 8) throw bad(`ne [${ne.join(', ')}...] has more elements than the file can hold`);
    }
    const code = await c.u32(`the type of tensor ${JSON.stringify(name)}`);
    const type = ggmlTypeOfCode.get(code);
    if (type === undefined) throw bad(`unknown ggml type ${code}`);
    const [block] = ggmlBlockSizes[type];
    if ((ne[0] as number) % block !== 0) throw bad(`its first dimension ${ne[0]} is not a multiple of the ${type} block size ${block}`);
    const relative = await c.size64(`the offset of tensor ${JSON.stringify(name)}`);
    if (relative % alignment !== 0) throw bad(`data offset ${relative} is not a multiple of the alignment ${alignment}`);
    raw.push({ name, type, ne, shape: [...ne].reverse(), relative, byteLength: ggmlByteLength(type, count) });
  }
  const dataOffset = Math.ceil(c.position / alignment) * alignment;
  if (dataOffset > size && raw.length > 0) throw formatError(file, `the data section would start at byte ${dataOffset}, past the end of the file (${size} bytes)`);
  const dataLength = Math.max(0, size - dataOffset);
  for (const t of raw) {
    if (t.relative + t.byteLength > dataLength) {
      throw formatError(
        file,
        `data [${t.relative}, ${t.relative + t.byteLength}) runs past the end of the data section (${dataLength} bytes; the file is truncated or corrupt)`,
        t.name,
      );
    }
  }
  const sorted = [...raw].sort((a, b) => a.relative - b.relative || a.byteLength - b.byteLength);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1] as (typeof sorted)[number];
    const cur = sorted[i] as (typeof sorted)[number];
    if (cur.relative < prev.relative + prev.byteLength && cur.byteLength > 0) {
      throw formatError(
        file,
        `data [${cur.relative}, ${cur.relative + cur.byteLength}) overlaps that of tensor ${JSON.stringify(prev.name)} [${prev.relative}, ${prev.relative + prev.byteLength})`,
        cur.name,
      );
    }
  }
  const tensors = new Map<string, GgufTensorInfo>(
    raw.map((t) => [
      t.name,
      Object.freeze({
        name: t.name,
        dtype: t.type,
        shape: Object.freeze(t.shape),
        ne: Object.freeze(t.ne),
        byteLength: t.byteLength,
        file,
        offset: dataOffset + t.relative,
      }),
    ]),
  );
  return { version, alignment, dataOffset, metadata, tensors };
}

/** True when `file` starts with the GGUF magic (false for a missing or short file). */
export async function isGgufFile(file: string): Promise<boolean> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(file, 'r');
    const head = new Uint8Array(4);
    const { bytesRead } = await handle.read(head, 0, 4, 0);
    return bytesRead === 4 && Buffer.from(head).toString('latin1') === 'GGUF';
  } catch {
    return false;
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

/**
 * Opens a GGUF file and reads its header. Each failure is an EigenLoraxError naming the
 * file (and tensor or key): ERR_GGUF_FORMAT for a wrong magic, an unsupported version or a
 * big-endian file, a count, string or array length that the file cannot hold, a header
 * over {@link GGUF_MAX_HEADER_BYTES}, an unknown value or ggml type, a key or tensor name
 * that is not UTF-8 or appears twice, 0 or more than 4 dimensions, a first dimension that
 * is not a multiple of the type's block size, a `general.alignment` that is not a UINT32
 * power of two, an offset that is not aligned, tensor data outside the file or overlapping
 * another tensor's; ERR_NOT_FOUND / ERR_IO for the file system.
 */
export async function openGguf(target: string): Promise<GgufReader> {
  if (typeof target !== 'string' || target.length === 0) throw invalid('a path (non-empty string)', 'path', target);
  if (os.endianness() !== 'LE') throw new EigenLoraxError('GGUF I/O needs a little-endian machine', 'ERR_INTERNAL');
  const file = path.resolve(target);
  let handle: FileHandle;
  try {
    if ((await stat(file)).isDirectory()) throw fileError('ERR_INVALID_ARGUMENT', file, 'expected a .gguf file, not a folder');
    handle = await open(file, 'r');
  } catch (cause) {
    throw ioError(cause, file, 'open');
  }
  try {
    let size: number;
    try {
      size = (await handle.stat()).size;
    } catch (cause) {
      throw ioError(cause, file, 'stat');
    }
    const header = await parseHeader(handle, file, size);
    return new GgufReader(file, handle, header);
  } catch (error) {
    await handle.close().catch(() => undefined);
    throw error;
  }
}
