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
import { stat, type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import * as ops from '../native/ops.js';
import { invalid, knownKeys, object } from '../validate.js';
import { fileError, ioError, openRegularFile, readFully } from './files.js';
import { formatError, parseHeader, type ParsedHeader } from './gguf-header.js';
import {
  GGUF_MAX_HEADER_BYTES,
  dequantize,
  isGgufFloatType,
  type GgmlType,
  type GgufArrayValue,
  type GgufFloatType,
  type GgufValue,
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
      await ops.convert({ src: bytes, from: type === 'F16' ? 'f16' : type === 'BF16' ? 'bf16' : 'f64', dst: data, to: 'f32' });
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

export async function isGgufFile(file: string): Promise<boolean> {
  let handle: FileHandle | undefined;
  try {
    // Non-blocking and regular files only: a FIFO here must not hang the sniffing.
    handle = (await openRegularFile(file, 'read')).handle;
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
  try {
    if ((await stat(file)).isDirectory()) throw fileError('ERR_INVALID_ARGUMENT', file, 'expected a .gguf file, not a folder');
  } catch (cause) {
    throw ioError(cause, file, 'open');
  }
  const { handle, size } = await openRegularFile(file, 'open');
  try {
    const header = await parseHeader(handle, file, size);
    return new GgufReader(file, handle, header);
  } catch (error) {
    await handle.close().catch(() => undefined);
    throw error;
  }
}
