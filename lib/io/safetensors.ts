/**
 * safetensors reader and writer.
 *
 * Format (https://github.com/huggingface/safetensors): 8 bytes of little-endian u64 `N`,
 * then `N` bytes of UTF-8 JSON (the header), then the data section. The header maps each
 * tensor name to `{ dtype, shape, data_offsets: [begin, end] }` (offsets relative to the
 * start of the data section, row-major, little-endian) and may hold `__metadata__`, a
 * map of strings to strings.
 *
 * Reading: {@link openSafetensors} reads and validates only the header; each tensor is
 * read when asked for, with one positioned read (`FileHandle.read` at its offset) on
 * libuv's thread pool, and converted to f32 by the native, vectorised conversion behind
 * `toFloat32` (also off the event loop; in 4 MiB chunks, reading one while converting the
 * previous, into a caller's `out` buffer when one is given). Nothing in the header is
 * trusted: see {@link openSafetensors} for the checks. The reader is deliberately a little more permissive than the reference
 * implementation in one respect: gaps between tensors and bytes after the last tensor are
 * tolerated (the reference insists the tensors tile the data section exactly); overlaps
 * and offsets outside the data section are not.
 *
 * Writing: {@link writeSafetensors} streams (header first, then one tensor at a time,
 * lazily produced if the entry's data is a function), writes atomically (temporary file in
 * the same folder, fsync, rename), and lays the file out exactly as the reference Rust
 * crate (`safetensors::serialize_to_file`, what `safetensors.torch.save_file` calls) does,
 * so that for the same tensors our bytes are the reference's bytes:
 *  - tensors sorted by dtype, descending in the reference's `Dtype` enum order
 *    (U64, I64, F64, F32, U32, I32, BF16, F16, U16, I16, F8_E4M3, F8_E5M2, I8, U8, BOOL),
 *    then by name (byte-wise on UTF-8, as Rust compares `String`s), packed back to back
 *    from offset 0;
 *  - compact JSON (serde_json's output: no spaces, `__metadata__` first if given, then the
 *    tensors in layout order, each as `{"dtype":..,"shape":[..],"data_offsets":[b,e]}`);
 *  - the header padded with spaces to a multiple of 8 bytes, so the data section starts
 *    8-byte aligned.
 * One difference: the reference keeps `__metadata__` in a Rust `HashMap`, so with two or
 * more metadata keys its key order is arbitrary (not reproducible from run to run); we
 * write metadata keys sorted (UTF-8 byte order). With zero or one metadata key the files
 * are byte-identical.
 */
import { readdir, stat, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import * as ops from '../native/ops.js';
import { describe, invalid, knownKeys, object } from '../validate.js';
import { fileError, ioError, readBuffer, readFully, readRegularFile } from './files.js';
import { assertLittleEndian, dtypeRank, floatDtypes, isSafetensorsFloatDtype, SAFETENSORS_MAX_HEADER_BYTES, safetensorsDtypeBytes, safetensorsDtypes, type SafetensorsDType, type SafetensorsFloatDType } from './safetensors-format.js';
export { assertLittleEndian, dtypeRank, isSafetensorsFloatDtype, SAFETENSORS_MAX_HEADER_BYTES, safetensorsDtypeBytes, safetensorsDtypes, type SafetensorsDType, type SafetensorsFloatDType };
import { readConverted } from './safetensors-convert.js';
import { closeAll, LFS_PREFIX, openFile, toEntryMap, type Entry, type OpenedFile, type ParsedFile, type SafetensorsTensorInfo } from './safetensors-header.js';
export type { SafetensorsTensorInfo };

/** A shard index (`*.safetensors.index.json`) is refused above this size. */
const MAX_INDEX_BYTES = 100_000_000;

// ---------------------------------------------------------------------------------------
// Reader

/** A tensor converted to f32. */
export interface Float32Tensor {
  /** The dtype it was stored as. */
  dtype: SafetensorsFloatDType;
  shape: number[];
  /** Row-major values, `product(shape)` of them, in a buffer of its own. */
  data: Float32Array;
}

/** A tensor's stored bytes, as they are in the file (little-endian). */
export interface RawTensor {
  dtype: SafetensorsDType;
  shape: number[];
  /** `byteLength` bytes in an ArrayBuffer of its own (offset 0, so any typed-array view over it is aligned). */
  bytes: Uint8Array;
}

/** Where a tensor's bytes are in an open file (see {@link SafetensorsReader.locate}). */
export interface TensorLocation {
  /** Absolute path of the file (shard) that holds it. */
  file: string;
  fd: number;
  /** Absolute byte offset of its first byte. */
  offset: number;
  dtype: 'F32' | 'F16' | 'BF16';
  byteLength: number;
}

export interface ReadFloat32Options {
  /** Write into this array (exactly `product(shape)` elements) instead of a new one. */
  out?: Float32Array;
}

export interface ReadRawOptions {
  /** Write into this array (exactly `byteLength` bytes) instead of a new one. */
  out?: Uint8Array;
}

/**
 * An opened safetensors file, or a sharded checkpoint presented as one. Only headers have
 * been read; tensors are read when asked for. Close it when done (`await reader.close()`,
 * or `await using reader = await openSafetensors(path)`).
 *
 * Reads may run concurrently. Errors are EigenLoraxErrors naming the file and tensor.
 */
export class SafetensorsReader {
  /** What was opened: the .safetensors file or the shard index (absolute). */
  readonly path: string;
  /** The safetensors files read from: one, or every shard in name order (absolute). */
  readonly files: readonly string[];
  /**
   * The `__metadata__` strings. For a sharded checkpoint, those of all shards merged (the
   * first shard in name order wins where two disagree; `shardMetadata` has each one).
   */
  readonly metadata: Readonly<Record<string, string>>;
  /** Each shard's own `__metadata__`, by absolute file path. */
  readonly shardMetadata: ReadonlyMap<string, Readonly<Record<string, string>>>;
  /** The shard index's `metadata` object (e.g. `total_size`); null for a single file. */
  readonly indexMetadata: Readonly<Record<string, unknown>> | null;
  /** Every tensor by name, in file order (shard by shard, by offset). */
  readonly tensors: ReadonlyMap<string, SafetensorsTensorInfo>;

  readonly #entries: Map<string, Entry>;
  readonly #opened: OpenedFile[];
  #closed = false;
  readonly #inflight = new Set<Promise<unknown>>();

  /** @internal Use {@link openSafetensors}. */
  constructor(where: string, opened: OpenedFile[], entries: Map<string, Entry>, indexMetadata: Record<string, unknown> | null) {
    this.path = where;
    this.#opened = opened;
    this.#entries = entries;
    this.files = opened.map((f) => f.path);
    const merged = new Map<string, string>();
    for (const file of opened) for (const [k, v] of Object.entries(file.metadata)) if (!merged.has(k)) merged.set(k, v);
    this.metadata = Object.freeze(Object.fromEntries(merged));
    this.shardMetadata = new Map(opened.map((f) => [f.path, Object.freeze({ ...f.metadata })]));
    this.indexMetadata = indexMetadata === null ? null : Object.freeze({ ...indexMetadata });
    this.tensors = new Map([...entries].map(([name, entry]) => [name, entry.info]));
  }

  /**
   * Every tensor's stored bytes in file order, as one view of the copy a reader of one file
   * read whole (openSmallSafetensors) holds, when they lie back to back; else null (the file
   * is read as needed, or has gaps). Not a copy: do not write to it.
   */
  heldData(): Uint8Array | null {
    const bytes = this.#opened.length === 1 ? this.#opened[0]!.bytes : null;
    if (bytes === null) return null;
    let first = -1;
    let end = -1;
    for (const { info } of this.#entries.values()) {
      if (first < 0) first = end = info.offset;
      if (info.offset !== end) return null;
      end = info.offset + info.byteLength;
    }
    return first < 0 ? new Uint8Array(0) : bytes.subarray(first, end);
  }

  /** True when the reader holds a tensor called `name`. */
  has(name: string): boolean {
    return this.#entries.has(name);
  }

  /**
   * Reads tensor `name` and converts it to f32. F32 is read straight into the result (no
   * copy). F16, BF16 and F64 are read in 4 MiB chunks into two reusable buffers and
   * converted by the native, vectorised conversion (the same as `toFloat32`, off the event
   * loop) into the result, reading chunk k+1 while chunk k converts (4 MiB measured best
   * in bench/io.ts: the chunk stays in cache between the read and the conversion); f64
   * rounds to nearest even; NaN and Inf are kept. Other dtypes are refused with
   * ERR_UNSUPPORTED_DTYPE (use {@link readRaw}).
   *
   * `options.out`: a Float32Array of exactly `product(shape)` elements to write into
   * (returned as `data`), so a loop over many tensors can reuse one buffer (`subarray` it
   * to each tensor's size); without it a new array is allocated.
   */
  readFloat32(name: string, options: ReadFloat32Options = {}): Promise<Float32Tensor> {
    const held = this.#heldFloat32(name, options);
    return held !== null ? Promise.resolve(held) : this.#track(this.#readFloat32(name, options));
  }

  /**
   * An f32 tensor of a file held in memory (openSmallSafetensors), answered now: no async
   * read to track (a bundle of 7B-sized coefficients holds 65k small tensors). Without
   * `out`, a view of the held copy when aligned: fresh memory costs a page fault per 4 KiB
   * here, more than the read (a 32 MiB subspace file: 140 ms of copying into new arrays).
   * Writing to such a view changes what later reads of that tensor return, nothing else.
   */
  #heldFloat32(name: string, options: ReadFloat32Options): Float32Tensor | null {
    const entry = this.#entries.get(name);
    if (this.#closed || entry === undefined || entry.info.dtype !== 'F32') return null;
    // Anything but { out } (or nothing) takes the checked path, which names the problem.
    if (typeof options !== 'object' || options === null || Object.keys(options).some((k) => k !== 'out')) return null;
    const held = heldBytes(entry.source, entry.info);
    const out = options.out;
    if (held === null || (out !== undefined && !(out instanceof Float32Array && out.byteLength === held.byteLength))) return null;
    const shape = [...entry.info.shape];
    if (out === undefined && held.byteOffset % 4 === 0) return { dtype: 'F32', shape, data: new Float32Array(held.buffer, held.byteOffset, held.byteLength / 4) };
    const data = out ?? new Float32Array(held.byteLength / 4);
    new Uint8Array(data.buffer, data.byteOffset, data.byteLength).set(held);
    return { dtype: 'F32', shape, data };
  }

  async #readFloat32(name: string, options: ReadFloat32Options): Promise<Float32Tensor> {
    const { info, source } = this.#entry(name);
    const out = readOutOption(options, Float32Array, 'a Float32Array');
    const dtype = info.dtype;
    if (!isSafetensorsFloatDtype(dtype)) {
      throw fileError(
        'ERR_UNSUPPORTED_DTYPE',
        source.path,
        `dtype ${dtype} is not a floating-point type (F32, F16, BF16, F64) and cannot be read as f32; read it with readRaw()`,
        name,
      );
    }
    const count = info.byteLength / safetensorsDtypeBytes[dtype];
    if (out !== undefined && out.length !== count) {
      throw fileError('ERR_SHAPE_MISMATCH', source.path, `options.out has ${out.length} elements but the tensor has ${count}`, name);
    }
    const handle = this.#handle(source, name);
    const shape = [...info.shape];
    const data = out ?? new Float32Array(readBuffer(count * 4).buffer);
    const held = heldBytes(source, info);
    if (held !== null) {
      if (dtype === 'F32') new Uint8Array(data.buffer, data.byteOffset, data.byteLength).set(held);
      else if (count > 0) await ops.convert({ src: held, from: floatDtypes[dtype], dst: data, to: 'f32' });
      return { dtype, shape, data };
    }
    if (dtype === 'F32') {
      await readFully(handle, data, info.offset, source.path, name);
      return { dtype, shape, data };
    }
    await readConverted(handle, info, floatDtypes[dtype], data, source.path, name);
    return { dtype, shape, data };
  }

  /**
   * Where tensor `name`'s bytes are, for a reader that reads them itself (the native
   * subspace kernels): the open descriptor of its file, the byte offset, the dtype. Null
   * for a dtype they do not read (anything but F32, F16, BF16). The descriptor is valid
   * until the reader is closed.
   */
  locate(name: string): TensorLocation | null {
    const { info, source } = this.#entry(name);
    if (info.dtype !== 'F32' && info.dtype !== 'F16' && info.dtype !== 'BF16') return null;
    return { file: source.path, fd: this.#handle(source, name).fd, offset: info.offset, dtype: info.dtype, byteLength: info.byteLength };
  }

  /**
   * Reads tensor `name` as stored (any dtype, little-endian). Without `options.out` the
   * bytes are in a new ArrayBuffer of their own (offset 0, so typed-array views over it are
   * aligned); with it (a Uint8Array of exactly `byteLength` bytes) they are written there.
   */
  readRaw(name: string, options: ReadRawOptions = {}): Promise<RawTensor> {
    return this.#track(this.#readRaw(name, options));
  }

  async #readRaw(name: string, options: ReadRawOptions): Promise<RawTensor> {
    const { info, source } = this.#entry(name);
    const out = readOutOption(options, Uint8Array, 'a Uint8Array');
    if (out !== undefined && out.byteLength !== info.byteLength) {
      throw fileError('ERR_SHAPE_MISMATCH', source.path, `options.out has ${out.byteLength} bytes but the tensor has ${info.byteLength}`, name);
    }
    const handle = this.#handle(source, name);
    const bytes = out ?? readBuffer(info.byteLength);
    const held = heldBytes(source, info);
    if (held !== null) bytes.set(held);
    else await readFully(handle, bytes, info.offset, source.path, name);
    return { dtype: info.dtype, shape: [...info.shape], bytes };
  }

  /** Registers a read so that close() waits for it. */
  #track<T>(promise: Promise<T>): Promise<T> {
    this.#inflight.add(promise);
    const forget = () => this.#inflight.delete(promise);
    promise.then(forget, forget);
    return promise;
  }

  /**
   * Closes every file. Reads already started finish first (close resolves after them);
   * reads started later throw ERR_CLOSED. Calling it again is harmless.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.allSettled([...this.#inflight]);
    await closeAll(this.#opened);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #entry(name: string): Entry {
    if (typeof name !== 'string') throw invalid('a tensor name (string)', 'name', name);
    if (this.#closed) throw fileError('ERR_CLOSED', this.path, 'the reader is closed', name);
    const entry = this.#entries.get(name);
    if (entry === undefined) {
      const n = this.#entries.size;
      throw fileError('ERR_TENSOR_NOT_FOUND', this.path, `no such tensor (the file holds ${n} tensor${n === 1 ? '' : 's'})`, name);
    }
    return entry;
  }

  #handle(source: OpenedFile, name: string): FileHandle {
    if (this.#closed || source.handle === null) throw fileError('ERR_CLOSED', source.path, 'the reader is closed', name);
    return source.handle;
  }
}

/** A tensor's bytes in the copy of a file read whole at open (small files), else null. */
function heldBytes(source: OpenedFile, info: SafetensorsTensorInfo): Uint8Array | null {
  return source.bytes === null ? null : source.bytes.subarray(info.offset, info.offset + info.byteLength);
}

/** The `out` option of readFloat32 / readRaw, checked. */
function readOutOption<T extends Float32Array | Uint8Array>(
  options: unknown,
  type: new (...args: never[]) => T,
  expected: string,
): T | undefined {
  const opts = object(options, 'options');
  knownKeys(opts, 'options', ['out']);
  if (opts.out === undefined) return undefined;
  if (!(opts.out instanceof type)) throw invalid(expected, 'options.out', opts.out);
  return opts.out;
}

/**
 * Opens a safetensors file, a sharded checkpoint, or a folder, reading only headers.
 *
 * `target` may be:
 *  - a `.safetensors` file (any name);
 *  - a shard index, `<anything>.safetensors.index.json` (as written by transformers and
 *    diffusers: `{ "metadata": {...}, "weight_map": { tensor: shard file } }`): every shard
 *    named in `weight_map` is opened and the shards are presented as one reader; each
 *    `weight_map` tensor must be in the shard it names, no tensor may be in two shards,
 *    and shard paths may not leave the index's folder;
 *  - a folder: its one `*.safetensors.index.json` if it has exactly one, else its one
 *    `*.safetensors` file if it has exactly one; anything else is an error listing what
 *    was found.
 *
 * Checks on every header, each failure an EigenLoraxError naming the file (and tensor):
 * ERR_LFS_POINTER for a Git LFS pointer file; ERR_SAFETENSORS_FORMAT for a file shorter
 * than 8 bytes, a header length over 100,000,000 bytes or past the end of the file, a
 * header that is not UTF-8 JSON object, `__metadata__` that is not a map of strings, an
 * unknown dtype, a shape that is not an array of non-negative safe integers, data_offsets
 * that are not `[begin, end]` with `begin <= end` inside the data section, a byte length
 * other than `product(shape) * dtype size`, or two tensors that overlap; ERR_NOT_FOUND
 * for a missing file, folder or shard (naming the index too); ERR_IO for other I/O
 * failures.
 *
 * The header JSON is parsed on the calling thread (a 1 MB header, ~10,000 tensors, takes a
 * few milliseconds); everything else is asynchronous.
 */
export async function openSafetensors(target: string): Promise<SafetensorsReader> {
  if (typeof target !== 'string' || target.length === 0) throw invalid('a path (non-empty string)', 'path', target);
  assertLittleEndian();
  let where = path.resolve(target);
  let stats;
  try {
    stats = await stat(where);
  } catch (cause) {
    throw ioError(cause, where, 'open');
  }
  if (stats.isDirectory()) where = await resolveFolder(where);
  if (where.endsWith('.index.json')) return openSharded(where);
  const file = await openFile(where);
  return new SafetensorsReader(where, [file.opened], toEntryMap(file), null);
}

async function resolveFolder(folder: string): Promise<string> {
  let names: string[];
  try {
    names = (await readdir(folder)).sort();
  } catch (cause) {
    throw ioError(cause, folder, 'list the folder');
  }
  const indexes = names.filter((n) => n.endsWith('.safetensors.index.json'));
  if (indexes.length === 1) return path.join(folder, indexes[0] as string);
  if (indexes.length > 1) {
    throw fileError('ERR_INVALID_ARGUMENT', folder, `the folder holds several shard indexes (${indexes.join(', ')}); open one of them`);
  }
  const files = names.filter((n) => n.endsWith('.safetensors'));
  if (files.length === 1) return path.join(folder, files[0] as string);
  if (files.length === 0) throw fileError('ERR_NOT_FOUND', folder, 'the folder holds no .safetensors file and no *.safetensors.index.json');
  throw fileError(
    'ERR_INVALID_ARGUMENT',
    folder,
    `the folder holds several .safetensors files (${files.join(', ')}) and no shard index; open one of them`,
  );
}

async function openSharded(indexPath: string): Promise<SafetensorsReader> {
  const bad = (message: string, key?: string) => fileError('ERR_SAFETENSORS_FORMAT', indexPath, message, key);
  let text: string;
  try {
    const tooLong = (size: number) => bad(`the shard index is ${size} bytes, over the ${MAX_INDEX_BYTES}-byte limit`);
    const bytes = await readRegularFile(indexPath, 'read the shard index', { maxBytes: MAX_INDEX_BYTES, tooLong });
    if (bytes.toString('latin1', 0, LFS_PREFIX.length) === LFS_PREFIX) {
      throw fileError(
        'ERR_LFS_POINTER',
        indexPath,
        'this is a Git LFS pointer file, not the shard index itself; fetch the real file (e.g. `git lfs pull`)',
      );
    }
    text = bytes.toString('utf8');
  } catch (cause) {
    throw ioError(cause, indexPath, 'read the shard index');
  }
  let index: unknown;
  try {
    index = JSON.parse(text);
  } catch (cause) {
    throw bad(`the shard index is not valid JSON (${(cause as Error).message})`);
  }
  if (typeof index !== 'object' || index === null || Array.isArray(index)) throw bad(`the shard index is not a JSON object but ${describe(index)}`);
  const { weight_map: weightMap, metadata } = index as Record<string, unknown>;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw bad(`weight_map must be an object mapping tensor names to shard files, not ${describe(weightMap)}`);
  }
  if (metadata !== undefined && metadata !== null && (typeof metadata !== 'object' || Array.isArray(metadata))) {
    throw bad(`metadata must be an object, not ${describe(metadata)}`);
  }
  const folder = path.dirname(indexPath);
  const shardOf = new Map<string, string>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard.length === 0) throw bad(`weight_map names ${describe(shard)} as the shard, not a file name`, name);
    const resolved = path.resolve(folder, shard);
    const relative = path.relative(folder, resolved);
    if (relative.startsWith('..') || path.isAbsolute(relative)) throw bad(`shard ${JSON.stringify(shard)} is outside the index's folder`, name);
    shardOf.set(name, resolved);
  }
  const shardPaths = [...new Set(shardOf.values())].sort();

  for (const shard of shardPaths) {
    try {
      await stat(shard);
    } catch (cause) {
      const error = ioError(cause, indexPath, `open shard ${shard} named in its weight_map`);
      const key = [...shardOf].find(([, s]) => s === shard)?.[0];
      if (error.code === 'ERR_NOT_FOUND') {
        const missing = fileError(
          'ERR_NOT_FOUND',
          indexPath,
          `the shard index names shard ${shard}${key === undefined ? '' : ` (for tensor ${JSON.stringify(key)})`}, ` +
            'which does not exist',
        );
        missing.cause = cause;
        throw missing;
      }
      throw error;
    }
  }

  const parsed: ParsedFile[] = [];
  try {
    for (const shard of shardPaths) parsed.push(await openFile(shard));
    const entries = new Map<string, Entry>();
    for (const file of parsed) {
      for (const t of file.tensors) {
        const other = entries.get(t.name);
        if (other !== undefined) {
          throw bad(`the tensor is in two shards, ${other.source.path} and ${file.opened.path}`, t.name);
        }
        entries.set(t.name, { name: t.name, info: t.info, source: file.opened });
      }
    }
    for (const [name, shard] of shardOf) {
      if (entries.get(name)?.source.path !== shard) {
        throw bad(`weight_map puts the tensor in shard ${shard}, which does not hold it`, name);
      }
    }
    return new SafetensorsReader(
      indexPath,
      parsed.map((p) => p.opened),
      entries,
      (metadata ?? {}) as Record<string, unknown>,
    );
  } catch (error) {
    await closeAll(parsed.map((p) => p.opened));
    throw error;
  }
}

export * from './safetensors-write.js';
