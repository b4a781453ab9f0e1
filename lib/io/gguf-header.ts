/**
 * The GGUF header parser behind openGguf: a forward-only cursor over a 1 MiB window of
 * positioned reads, and every count, length, dimension and offset checked against the file
 * size before it sizes anything (see openGguf for the list).
 */
import type { FileHandle } from 'node:fs/promises';
import { EigenLoraxError } from '../errors.js';
import { fileError, readFully } from './files.js';
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_MAX_ARRAY_DEPTH,
  GGUF_MAX_DIMS,
  GGUF_MAX_HEADER_BYTES,
  ggmlBlockSizes,
  ggmlByteLength,
  ggmlTypeOfCode,
  ggufValueBytes,
  ggufValueTypes,
  type GgmlType,
  type GgufArrayValue,
  type GgufValue,
  type GgufValueType,
} from './gguf-format.js';
import type { GgufTensorInfo } from './gguf.js';

/** A format error about `file` (and tensor or key). */
export function formatError(file: string, message: string, key?: string): EigenLoraxError {
  return fileError('ERR_GGUF_FORMAT', file, message, key);
}

// ---------------------------------------------------------------------------------------
// Header parsing

export interface ParsedHeader {
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

export async function parseHeader(handle: FileHandle, file: string, size: number): Promise<ParsedHeader> {
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
