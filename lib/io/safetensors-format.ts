/** The safetensors dtypes and limits, shared by the reader and the writer (safetensors-write.ts). */
import os from 'node:os';
import type { DType } from '../dtype.js';
import { EigenLoraxError } from '../errors.js';

// ---------------------------------------------------------------------------------------
// dtypes

/** The element types of the safetensors format that eigenlorax knows. */
export type SafetensorsDType =
  | 'BOOL'
  | 'U8'
  | 'I8'
  | 'F8_E5M2'
  | 'F8_E4M3'
  | 'I16'
  | 'U16'
  | 'F16'
  | 'BF16'
  | 'I32'
  | 'U32'
  | 'F32'
  | 'F64'
  | 'I64'
  | 'U64';

/** The floating-point dtypes that are read as (and written from) f32. */
export type SafetensorsFloatDType = 'F32' | 'F16' | 'BF16' | 'F64';

/**
 * All known dtypes, in the order of the reference crate's `Dtype` enum (increasing
 * alignment); the writer lays tensors out in the reverse of this order.
 */
export const safetensorsDtypes: readonly SafetensorsDType[] = [
  'BOOL',
  'U8',
  'I8',
  'F8_E5M2',
  'F8_E4M3',
  'I16',
  'U16',
  'F16',
  'BF16',
  'I32',
  'U32',
  'F32',
  'F64',
  'I64',
  'U64',
];

/** Bytes per element of each dtype. */
export const safetensorsDtypeBytes: Readonly<Record<SafetensorsDType, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

export const floatDtypes: Readonly<Record<SafetensorsFloatDType, DType>> = { F32: 'f32', F16: 'f16', BF16: 'bf16', F64: 'f64' };

/** True for F32, F16, BF16 and F64: the dtypes `readFloat32` converts. */
export function isSafetensorsFloatDtype(dtype: string): dtype is SafetensorsFloatDType {
  return Object.prototype.hasOwnProperty.call(floatDtypes, dtype);
}

export const dtypeRank = new Map<string, number>(safetensorsDtypes.map((d, i) => [d, i]));

/** The reference crate refuses headers larger than this (100 MB, decimal). */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;

export function assertLittleEndian(): void {
  if (os.endianness() !== 'LE') {
    throw new EigenLoraxError('safetensors I/O needs a little-endian machine (the format and typed arrays disagree otherwise)', 'ERR_INTERNAL');
  }
}

