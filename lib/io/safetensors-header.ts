/**
 * Opening one safetensors file: its header read and validated (nothing in it trusted; see
 * openSafetensors for the checks), a Git LFS pointer recognised, the handle kept open.
 */
import type { FileHandle } from 'node:fs/promises';
import type { EigenLoraxError } from '../errors.js';
import { describe } from '../validate.js';
import { fileError, openRegularFile, readBuffer, readFully } from './files.js';
import { findDuplicateKey } from './json-keys.js';
import { dtypeRank, SAFETENSORS_MAX_HEADER_BYTES, safetensorsDtypeBytes, safetensorsDtypes, type SafetensorsDType } from './safetensors-format.js';

/** The first bytes of a Git LFS pointer file. */
export const LFS_PREFIX = 'version https://git-lfs.github.com/spec/';

/** What the header says about one tensor. */
export interface SafetensorsTensorInfo {
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  /** `product(shape) * bytes per element`. */
  readonly byteLength: number;
  /** Absolute path of the file (shard) that holds it. */
  readonly file: string;
  /** Absolute byte offset of its data in that file. */
  readonly offset: number;
}

/** One opened safetensors file. */
export interface OpenedFile {
  path: string;
  handle: FileHandle | null;
  metadata: Record<string, string>;
  /** The whole file, read at open (a small file: see openFile's `wholeBelow`); else null. */
  bytes: Uint8Array | null;
}

export interface Entry {
  name: string;
  info: SafetensorsTensorInfo;
  source: OpenedFile;
}

export async function closeAll(files: OpenedFile[]): Promise<void> {
  const handles = files.map((f) => f.handle).filter((h): h is FileHandle => h !== null);
  for (const f of files) f.handle = null;
  await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
}

export interface ParsedFile {
  opened: OpenedFile;
  tensors: Array<{ name: string; info: SafetensorsTensorInfo }>;
}

export function toEntryMap(file: ParsedFile): Map<string, Entry> {
  return new Map(file.tensors.map((t) => [t.name, { name: t.name, info: t.info, source: file.opened }]));
}

/**
 * Opens one file and validates its header; the handle stays open on success only. A file
 * of at most `wholeBelow` bytes is read whole, in one read, and its tensors are then read
 * from that copy: for small files (coefficients) the reads of the header and of each
 * tensor, each a trip through libuv's pool, cost more than their bytes.
 */
export async function openFile(file: string, wholeBelow = 0): Promise<ParsedFile> {
  const { handle, size } = await openRegularFile(file);
  try {
    let whole: Uint8Array | null = null;
    if (size <= wholeBelow) {
      whole = readBuffer(size);
      await readFully(handle, whole, 0, file);
    }
    const read = async (length: number, at: number) => {
      if (whole !== null) return whole.subarray(at, at + length);
      const bytes = new Uint8Array(length);
      await readFully(handle, bytes, at, file);
      return bytes;
    };
    const head = await read(Math.min(size, LFS_PREFIX.length), 0);
    if (Buffer.from(head).toString('latin1') === LFS_PREFIX) throw await lfsPointerError(handle, file, size);
    if (size < 8) throw fileError('ERR_SAFETENSORS_FORMAT', file, `the file is ${size} bytes long, shorter than the 8-byte header length`);

    const headerLength64 = Buffer.from(head.buffer, head.byteOffset, 8).readBigUInt64LE(0);
    if (headerLength64 > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
      throw fileError(
        'ERR_SAFETENSORS_FORMAT',
        file,
        `header length ${headerLength64} bytes is over the ${SAFETENSORS_MAX_HEADER_BYTES}-byte limit (not a safetensors file, or a corrupt one)`,
      );
    }
    const headerLength = Number(headerLength64);
    if (8 + headerLength > size) {
      throw fileError(
        'ERR_SAFETENSORS_FORMAT',
        file,
        `header length ${headerLength} bytes runs past the end of the file (${size} bytes; the file is truncated or not safetensors)`,
      );
    }
    const headerBytes = await read(headerLength, 8);
    const dataStart = 8 + headerLength;
    const { metadata, tensors } = parseHeader(file, headerBytes, dataStart, size - dataStart);
    return { opened: { path: file, handle, metadata, bytes: whole }, tensors };
  } catch (error) {
    await handle.close().catch(() => undefined);
    throw error;
  }
}

export async function lfsPointerError(handle: FileHandle, file: string, size: number): Promise<EigenLoraxError> {
  const text = new Uint8Array(Math.min(size, 1024));
  await readFully(handle, text, 0, file);
  const lines = Buffer.from(text).toString('utf8').split('\n');
  const oid = lines.find((l) => l.startsWith('oid '))?.slice(4);
  const bytes = lines.find((l) => l.startsWith('size '))?.slice(5);
  const details = [oid === undefined ? '' : `oid ${oid}`, bytes === undefined ? '' : `size ${bytes} bytes`].filter(Boolean).join(', ');
  return fileError(
    'ERR_LFS_POINTER',
    file,
    `this is a Git LFS pointer file${details ? ` (${details})` : ''}, not the safetensors file itself; ` +
      'fetch the real file (e.g. `git lfs pull`) and try again',
  );
}

/** Validates a header; returns the metadata and the tensors sorted by offset. */
export function parseHeader(
  file: string,
  headerBytes: Uint8Array,
  dataStart: number,
  dataLength: number,
): { metadata: Record<string, string>; tensors: Array<{ name: string; info: SafetensorsTensorInfo }> } {
  const bad = (message: string, key?: string) => fileError('ERR_SAFETENSORS_FORMAT', file, message, key);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(headerBytes);
  } catch {
    throw bad('the header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (cause) {
    throw bad(`the header is not valid JSON (${(cause as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw bad(`the header is not a JSON object but ${describe(header)}`);
  }
  const duplicate = findDuplicateKey(text);
  if (duplicate !== undefined) throw bad(`the header lists the key twice${duplicate.path ? ` in ${duplicate.path}` : ''} (JSON.parse would keep only the last)`, duplicate.key);

  let metadata: Record<string, string> = {};
  const tensors: Array<{ name: string; info: SafetensorsTensorInfo }> = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(value, (message) => bad(message));
      continue;
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw bad(`the header entry is not an object with dtype, shape and data_offsets but ${describe(value)}`, name);
    }
    const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
    if (typeof dtype !== 'string' || !dtypeRank.has(dtype)) {
      throw bad(`unknown dtype ${describe(dtype)} (known: ${safetensorsDtypes.join(', ')})`, name);
    }
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw bad(`shape must be an array of non-negative integers, not ${JSON.stringify(shape) ?? 'undefined'}`, name);
    }
    const dims = shape as number[];
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && (o as number) >= 0)
    ) {
      throw bad(`data_offsets must be [begin, end], two non-negative integers, not ${JSON.stringify(offsets) ?? 'undefined'}`, name);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end) throw bad(`data_offsets [${begin}, ${end}] end before they begin`, name);
    if (end > dataLength) {
      throw bad(
        `data_offsets [${begin}, ${end}] run past the end of the data section (${dataLength} bytes; the file is truncated or corrupt)`,
        name,
      );
    }
    const size = safetensorsDtypeBytes[dtype as SafetensorsDType];
    let count = 1;
    for (const d of dims) {
      count *= d;
      if (!Number.isSafeInteger(count * size)) throw bad(`shape [${dims.join(', ')}] is too large`, name);
    }
    if (end - begin !== count * size) {
      throw bad(
        `data_offsets [${begin}, ${end}] span ${end - begin} bytes but ${dtype} x [${dims.join(', ')}] needs ${count * size}`,
        name,
      );
    }
    tensors.push({
      name,
      info: Object.freeze({
        dtype: dtype as SafetensorsDType,
        // JSON.parse made the array: nothing else holds it.
        shape: Object.freeze(dims),
        byteLength: end - begin,
        file,
        offset: dataStart + begin,
      }),
    });
  }
  // By data offset (a tensor's begin is its offset - dataStart).
  tensors.sort((a, b) => a.info.offset - b.info.offset || a.info.byteLength - b.info.byteLength);
  const span = (t: SafetensorsTensorInfo) => `[${t.offset - dataStart}, ${t.offset - dataStart + t.byteLength}]`;
  for (let i = 1; i < tensors.length; i++) {
    const previous = tensors[i - 1]!;
    const current = tensors[i]!;
    if (current.info.offset < previous.info.offset + previous.info.byteLength) {
      throw bad(`data_offsets ${span(current.info)} overlap those of tensor ${JSON.stringify(previous.name)} ${span(previous.info)}`, current.name);
    }
  }
  return { metadata, tensors };
}

export function parseMetadata(value: unknown, bad: (message: string) => EigenLoraxError): Record<string, string> {
  if (value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw bad(`__metadata__ must be an object of strings, not ${describe(value)}`);
  for (const [key, v] of Object.entries(value)) {
    if (typeof v !== 'string') throw bad(`__metadata__[${JSON.stringify(key)}] must be a string, not ${describe(v)}`);
  }
  return Object.fromEntries(Object.entries(value as Record<string, string>));
}
