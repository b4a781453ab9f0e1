/**
 * safetensors files built byte by byte from the format's description, independently of
 * lib/io/safetensors.ts: an 8-byte little-endian header length, the header JSON text
 * (padded with spaces when asked), then the data bytes. Values are encoded with DataView
 * in explicit little-endian, so nothing here depends on the platform or the library.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { ExecutionContext } from 'ava';

/** A fresh temporary folder, removed when the test ends. */
export async function tempDir(t: ExecutionContext, prefix = 'eigenlorax-test-'): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

export const utf8 = (text: string) => new Uint8Array(Buffer.from(text, 'utf8'));

function encode(count: number, bytesPer: number, put: (view: DataView, at: number, i: number) => void): Uint8Array {
  const out = new Uint8Array(count * bytesPer);
  const view = new DataView(out.buffer);
  for (let i = 0; i < count; i++) put(view, i * bytesPer, i);
  return out;
}

export const f32le = (values: ArrayLike<number>) => encode(values.length, 4, (v, at, i) => v.setFloat32(at, values[i] as number, true));
export const f64le = (values: ArrayLike<number>) => encode(values.length, 8, (v, at, i) => v.setFloat64(at, values[i] as number, true));
/** 16-bit words (f16 or bf16 bit patterns, i16/u16 values) little-endian. */
export const u16le = (words: ArrayLike<number>) => encode(words.length, 2, (v, at, i) => v.setUint16(at, (words[i] as number) & 0xffff, true));
export const i32le = (values: ArrayLike<number>) => encode(values.length, 4, (v, at, i) => v.setInt32(at, values[i] as number, true));
export const i64le = (values: ArrayLike<bigint>) => encode(values.length, 8, (v, at, i) => v.setBigInt64(at, values[i] as bigint, true));
export const u8s = (values: ArrayLike<number>) => Uint8Array.from(values as ArrayLike<number>);

/** The 8-byte little-endian length field. */
export function u64le(value: bigint | number): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(value), true);
  return out;
}

/** Header text padded with spaces to a multiple of 8 bytes (as the reference writer does). */
export function padHeader(text: string): Uint8Array {
  const bytes = utf8(text);
  const pad = (8 - (bytes.byteLength % 8)) % 8;
  return concat(bytes, utf8(' '.repeat(pad)));
}

/** A whole file: length field (of `header`, unless overridden), header, data. */
export function assemble(header: Uint8Array, data: Uint8Array, lengthField?: bigint | number): Uint8Array {
  return concat(u64le(lengthField ?? header.byteLength), header, data);
}

export interface FixtureTensor {
  name: string;
  dtype: string;
  shape: number[];
  /** The stored bytes. */
  bytes: Uint8Array;
}

/**
 * The header object (`__metadata__` first when given, then the tensors in the order
 * given, packed from offset 0) and the matching data section. Tests may edit the header
 * object to break it before serialising it with JSON.stringify.
 */
export function layout(tensors: FixtureTensor[], metadata?: Record<string, string>): { header: Record<string, unknown>; data: Uint8Array } {
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.byteLength] };
    offset += t.bytes.byteLength;
  }
  return { header, data: concat(...tensors.map((t) => t.bytes)) };
}

/** A complete, valid file holding `tensors` in the order given. */
export function buildFile(tensors: FixtureTensor[], metadata?: Record<string, string>): Uint8Array {
  const { header, data } = layout(tensors, metadata);
  return assemble(padHeader(JSON.stringify(header)), data);
}

export async function writeFixture(dir: string, name: string, bytes: Uint8Array | string): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, bytes);
  return file;
}

/** A safetensors file's bytes from its header text as given (padded with spaces to 8) and its data section. */
export function safetensorsBytes(header: string, data: Uint8Array): Buffer {
  const json = Buffer.from(header, 'utf8');
  const padded = Buffer.alloc(json.length + ((8 - (json.length % 8)) % 8), 0x20);
  json.copy(padded);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(padded.length));
  return Buffer.concat([length, padded, data]);
}

/** A saved PEFT weights file re-laid without eigenlorax.config_sha256 (compact header, padded to 8). */
export async function withoutConfigDigest(file: string): Promise<Buffer> {
  const bytes = await readFile(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.toString('utf8', 8, 8 + n)) as { __metadata__: Record<string, string> };
  delete header.__metadata__['eigenlorax.config_sha256'];
  return safetensorsBytes(JSON.stringify(header), bytes.subarray(8 + n));
}
