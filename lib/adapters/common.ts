/**
 * Helpers shared by the adapter readers and writers: typed errors that name the file and
 * the key or field, factor-shape checks, scalar (alpha) decoding, finiteness checks, and
 * the natural name order modules are listed in.
 */
import { EigenLoraxError, type ErrorCode } from '../errors.js';
import { fileError } from '../io/files.js';
import {
  isSafetensorsFloatDtype,
  type RawTensor,
  type SafetensorsFloatDType,
  type SafetensorsTensorInfo,
} from '../io/safetensors.js';
import type { LoraLayout } from './types.js';

/** An error about a tensor key of `file` (the message names both). */
export function keyError(code: ErrorCode, file: string, key: string, message: string): EigenLoraxError {
  return fileError(code, file, message, key);
}

/** An error about a field of a JSON config (`file, field "r": ...`). */
export function fieldError(code: ErrorCode, file: string, field: string, message: string): EigenLoraxError {
  return new EigenLoraxError(`${file}, field ${JSON.stringify(field)}: ${message}`, code);
}

/** Short rendering of a JSON value for messages. */
export function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  const text = JSON.stringify(value);
  if (text === undefined) return typeof value;
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Natural order: `h.2` before `h.10`. */
export function naturalCompare(a: string, b: string): number {
  const ax = a.split(/(\d+)/);
  const bx = b.split(/(\d+)/);
  for (let i = 0; i < Math.min(ax.length, bx.length); i++) {
    const x = ax[i] as string;
    const y = bx[i] as string;
    if (x === y) continue;
    if (i % 2 === 1) {
      const d = Number(x) - Number(y);
      if (d !== 0) return d;
    }
    return x < y ? -1 : 1;
  }
  return ax.length - bx.length;
}

export function product(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

export function scaleOf(alpha: number, rank: number, rslora: boolean): number {
  return rslora ? alpha / Math.sqrt(rank) : alpha / rank;
}

/** What the shapes of a pair of factors say. */
export interface FactorShapes {
  rank: number;
  layout: LoraLayout;
  convKernel?: number[];
  shapes: { A: number[]; B: number[] };
  inFeatures: number;
  outFeatures: number;
  dtypes: { A: SafetensorsFloatDType; B: SafetensorsFloatDType };
}

/**
 * Checks a down/up (A/B) pair from its header entries and derives rank, layout and the
 * flattened sizes. `embedding` marks PEFT `lora_embedding_A/B` (2-D, `r x num` and
 * `dim x r`); otherwise 2-D is linear and 3- to 5-D is conv (`r x in x k...` and
 * `out x r x 1...`).
 */
export function describeFactors(
  file: string,
  aKey: string,
  a: SafetensorsTensorInfo,
  bKey: string,
  b: SafetensorsTensorInfo,
  embedding = false,
): FactorShapes {
  for (const [key, info] of [
    [aKey, a],
    [bKey, b],
  ] as const) {
    if (!isSafetensorsFloatDtype(info.dtype)) {
      throw keyError('ERR_ADAPTER_FORMAT', file, key, `a LoRA factor must be F32, F16, BF16 or F64, not ${info.dtype}`);
    }
    if (info.shape.length < 2 || info.shape.length > 5) {
      throw keyError(
        'ERR_ADAPTER_FORMAT',
        file,
        key,
        `a LoRA factor must have 2 dimensions (linear) or 3 to 5 (conv), not shape [${info.shape.join(', ')}]`,
      );
    }
    if (info.shape.some((d) => d === 0)) {
      throw keyError('ERR_ADAPTER_FORMAT', file, key, `a LoRA factor cannot be empty (shape [${info.shape.join(', ')}])`);
    }
  }
  const aShape = [...a.shape];
  const bShape = [...b.shape];
  if (aShape.length !== bShape.length) {
    throw keyError(
      'ERR_ADAPTER_FORMAT',
      file,
      aKey,
      `shape [${aShape.join(', ')}] and the shape [${bShape.join(', ')}] of its partner ${JSON.stringify(bKey)} ` +
        'have different numbers of dimensions',
    );
  }
  const rankA = aShape[0] as number;
  const rankB = bShape[1] as number;
  if (rankA !== rankB) {
    throw keyError(
      'ERR_SHAPE_MISMATCH',
      file,
      aKey,
      `the down-projection has rank ${rankA} (shape [${aShape.join(', ')}]) but its up-projection ` +
        `${JSON.stringify(bKey)} has rank ${rankB} (shape [${bShape.join(', ')}])`,
    );
  }
  const dtypes = { A: a.dtype as SafetensorsFloatDType, B: b.dtype as SafetensorsFloatDType };
  const shapes = { A: aShape, B: bShape };
  if (aShape.length === 2) {
    return {
      rank: rankA,
      layout: embedding ? 'embedding' : 'linear',
      shapes,
      inFeatures: aShape[1] as number,
      outFeatures: bShape[0] as number,
      dtypes,
    };
  }
  if (embedding) throw keyError('ERR_ADAPTER_FORMAT', file, aKey, `an embedding LoRA factor must be 2-D, not [${aShape.join(', ')}]`);
  const kernel = aShape.slice(2);
  const upKernel = bShape.slice(2);
  if (upKernel.some((d) => d !== 1)) {
    throw keyError(
      'ERR_ADAPTER_UNSUPPORTED',
      file,
      bKey,
      `a conv LoRA up-projection with a kernel other than 1 (shape [${bShape.join(', ')}]) is not supported`,
    );
  }
  return {
    rank: rankA,
    layout: 'conv',
    convKernel: kernel,
    shapes,
    inFeatures: (aShape[1] as number) * product(kernel),
    outFeatures: bShape[0] as number,
    dtypes,
  };
}

/** Decodes a one-element tensor (any numeric dtype) to a number. */
export function decodeScalar(file: string, key: string, raw: RawTensor): number {
  const count = product(raw.shape);
  if (count !== 1) {
    throw keyError('ERR_ADAPTER_FORMAT', file, key, `alpha must be a single number, not a tensor of shape [${raw.shape.join(', ')}]`);
  }
  const view = new DataView(raw.bytes.buffer, raw.bytes.byteOffset, raw.bytes.byteLength);
  switch (raw.dtype) {
    case 'F64':
      return view.getFloat64(0, true);
    case 'F32':
      return view.getFloat32(0, true);
    case 'F16':
      return halfToNumber(view.getUint16(0, true));
    case 'BF16':
      return new Float32Array(new Uint32Array([view.getUint16(0, true) << 16]).buffer)[0] as number;
    case 'I64':
      return Number(view.getBigInt64(0, true));
    case 'U64':
      return Number(view.getBigUint64(0, true));
    case 'I32':
      return view.getInt32(0, true);
    case 'U32':
      return view.getUint32(0, true);
    case 'I16':
      return view.getInt16(0, true);
    case 'U16':
      return view.getUint16(0, true);
    case 'I8':
      return view.getInt8(0);
    case 'U8':
      return view.getUint8(0);
    default:
      throw keyError('ERR_ADAPTER_FORMAT', file, key, `alpha cannot be stored as ${raw.dtype}`);
  }
}

function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : NaN;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** Encodes `value` as a scalar of `dtype`, or returns null when it would not be exact. */
export function encodeScalar(value: number, dtype: string): { dtype: RawTensor['dtype']; bytes: Uint8Array } | null {
  const bytes = new Uint8Array(8);
  const view = new DataView(bytes.buffer);
  const exact = (decoded: number) => Object.is(decoded, value) || decoded === value;
  switch (dtype) {
    case 'F64':
      view.setFloat64(0, value, true);
      return { dtype, bytes: bytes.slice(0, 8) };
    case 'F32':
      view.setFloat32(0, value, true);
      return exact(view.getFloat32(0, true)) ? { dtype, bytes: bytes.slice(0, 4) } : null;
    case 'BF16': {
      view.setFloat32(0, value, true);
      const bits = view.getUint32(0, true);
      if ((bits & 0xffff) !== 0 || !exact(view.getFloat32(0, true))) return null;
      view.setUint16(0, bits >>> 16, true);
      return { dtype, bytes: bytes.slice(0, 2) };
    }
    case 'F16': {
      const h = numberToHalfExact(value);
      if (h === null) return null;
      view.setUint16(0, h, true);
      return { dtype, bytes: bytes.slice(0, 2) };
    }
    case 'I64':
      if (!Number.isSafeInteger(value)) return null;
      view.setBigInt64(0, BigInt(value), true);
      return { dtype, bytes: bytes.slice(0, 8) };
    case 'I32':
      if (!Number.isInteger(value) || value < -(2 ** 31) || value >= 2 ** 31) return null;
      view.setInt32(0, value, true);
      return { dtype, bytes: bytes.slice(0, 4) };
    default:
      return null;
  }
}

/** The f16 bit pattern of `value` when f16 holds it exactly (normal or subnormal), else null. */
function numberToHalfExact(value: number): number | null {
  if (!Number.isFinite(value)) return null;
  if (value === 0) return Object.is(value, -0) ? 0x8000 : 0;
  const sign = value < 0 ? 0x8000 : 0;
  const a = Math.abs(value);
  let exponent = Math.floor(Math.log2(a));
  if (2 ** exponent > a) exponent -= 1;
  if (exponent < -14) {
    const fraction = a / 2 ** -24;
    return Number.isInteger(fraction) && fraction < 1024 ? sign | fraction : null;
  }
  if (exponent > 15) return null;
  const fraction = (a / 2 ** exponent - 1) * 1024;
  if (!Number.isInteger(fraction)) return null;
  return sign | ((exponent + 15) << 10) | fraction;
}

/** Index of the first NaN/Inf in `data`, or -1. */
export function firstNonFinite(data: Float32Array): number {
  for (let i = 0; i < data.length; i++) {
    const v = data[i] as number;
    if (v - v !== 0) return i;
  }
  return -1;
}

export function nonFiniteError(file: string, key: string, data: Float32Array, at: number, cols: number): EigenLoraxError {
  const value = data[at] as number;
  const row = Math.floor(at / cols);
  const col = at % cols;
  return keyError(
    'ERR_NON_FINITE',
    file,
    key,
    `the factor holds ${Number.isNaN(value) ? 'NaN' : String(value)} at [${row}, ${col}] ` +
      '(pass allowNonFinite: true to read it anyway)',
  );
}
