/**
 * GGUF constants and element types, as llama.cpp's gguf-py defines them
 * (gguf-py/gguf/constants.py: GGUF_MAGIC, GGUFValueType, GGMLQuantizationType,
 * GGML_QUANT_SIZES), and the dequantisation of the two simple block formats (Q8_0, Q4_0,
 * ggml-quants.c `dequantize_row_q8_0` / `_q4_0`).
 */
import { EigenLoraxError } from '../errors.js';

/** "GGUF" read as a little-endian u32. */
export const GGUF_MAGIC = 0x46554747;
/** The version written; 2 and 3 are read (they differ only in big-endian support). */
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
/**
 * Headers (everything before the tensor data) larger than this are refused: real models'
 * headers, vocabularies included, are a few MB.
 */
export const GGUF_MAX_HEADER_BYTES = 256 << 20;
/** ggml tensors have at most 4 dimensions (GGML_MAX_DIMS). */
export const GGUF_MAX_DIMS = 4;
/** Arrays nested deeper than this are refused (llama.cpp reads no nested arrays at all). */
export const GGUF_MAX_ARRAY_DEPTH = 8;

/** Metadata value types, by their code in the file. */
export const ggufValueTypes = [
  'UINT8',
  'INT8',
  'UINT16',
  'INT16',
  'UINT32',
  'INT32',
  'FLOAT32',
  'BOOL',
  'STRING',
  'ARRAY',
  'UINT64',
  'INT64',
  'FLOAT64',
] as const;
export type GgufValueType = (typeof ggufValueTypes)[number];
export type GgufScalarType = Exclude<GgufValueType, 'ARRAY'>;

/** Bytes of each fixed-size value type (STRING and ARRAY vary). */
export const ggufValueBytes: Readonly<Record<Exclude<GgufScalarType, 'STRING'>, number>> = {
  UINT8: 1,
  INT8: 1,
  UINT16: 2,
  INT16: 2,
  UINT32: 4,
  INT32: 4,
  FLOAT32: 4,
  BOOL: 1,
  UINT64: 8,
  INT64: 8,
  FLOAT64: 8,
};

/**
 * One metadata value. Integers up to 32 bits and floats are numbers, 64-bit integers are
 * bigints (exact), BOOL a boolean, STRING a string; an ARRAY holds `itemType` values
 * (arrays of arrays nest).
 */
export type GgufValue =
  | { type: Exclude<GgufScalarType, 'STRING' | 'BOOL' | 'UINT64' | 'INT64'>; value: number }
  | { type: 'UINT64' | 'INT64'; value: bigint }
  | { type: 'BOOL'; value: boolean }
  | { type: 'STRING'; value: string }
  | GgufArrayValue;

export interface GgufArrayValue {
  type: 'ARRAY';
  itemType: GgufValueType;
  /** numbers, bigints, booleans, strings, or (itemType ARRAY) nested array values. */
  value: Array<number | bigint | boolean | string | GgufArrayValue>;
}

/** ggml tensor types, by code (gaps are codes that ggml removed). */
export const ggmlTypeCodes = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ2_XXS: 16,
  IQ2_XS: 17,
  IQ3_XXS: 18,
  IQ1_S: 19,
  IQ4_NL: 20,
  IQ3_S: 21,
  IQ2_S: 22,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  IQ1_M: 29,
  BF16: 30,
  TQ1_0: 34,
  TQ2_0: 35,
  MXFP4: 39,
  NVFP4: 40,
  Q1_0: 41,
  Q2_0: 42,
} as const;
export type GgmlType = keyof typeof ggmlTypeCodes;

const QK_K = 256;
/** [elements per block, bytes per block] (GGML_QUANT_SIZES). */
export const ggmlBlockSizes: Readonly<Record<GgmlType, readonly [number, number]>> = {
  F32: [1, 4],
  F16: [1, 2],
  Q4_0: [32, 2 + 16],
  Q4_1: [32, 2 + 2 + 16],
  Q5_0: [32, 2 + 4 + 16],
  Q5_1: [32, 2 + 2 + 4 + 16],
  Q8_0: [32, 2 + 32],
  Q8_1: [32, 4 + 4 + 32],
  Q2_K: [256, 2 + 2 + QK_K / 16 + QK_K / 4],
  Q3_K: [256, 2 + QK_K / 4 + QK_K / 8 + 12],
  Q4_K: [256, 2 + 2 + QK_K / 2 + 12],
  Q5_K: [256, 2 + 2 + QK_K / 2 + QK_K / 8 + 12],
  Q6_K: [256, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16],
  Q8_K: [256, 4 + QK_K + QK_K / 8],
  IQ2_XXS: [256, 2 + QK_K / 4],
  IQ2_XS: [256, 2 + QK_K / 4 + QK_K / 32],
  IQ3_XXS: [256, 2 + QK_K / 4 + QK_K / 8],
  IQ1_S: [256, 2 + QK_K / 8 + QK_K / 16],
  IQ4_NL: [32, 2 + 16],
  IQ3_S: [256, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4],
  IQ2_S: [256, 2 + QK_K / 4 + QK_K / 16],
  IQ4_XS: [256, 2 + 2 + QK_K / 2 + QK_K / 64],
  I8: [1, 1],
  I16: [1, 2],
  I32: [1, 4],
  I64: [1, 8],
  F64: [1, 8],
  IQ1_M: [256, QK_K / 8 + QK_K / 16 + QK_K / 32],
  BF16: [1, 2],
  TQ1_0: [256, 2 + 4 * 13],
  TQ2_0: [256, 2 + 64],
  MXFP4: [32, 1 + 16],
  NVFP4: [64, 4 + 32],
  Q1_0: [128, 2 + 16],
  Q2_0: [64, 2 + 16],
};

export const ggmlTypeOfCode: ReadonlyMap<number, GgmlType> = new Map(
  (Object.entries(ggmlTypeCodes) as Array<[GgmlType, number]>).map(([name, code]) => [code, name]),
);

export function isGgmlType(value: unknown): value is GgmlType {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(ggmlTypeCodes, value);
}

/** The types `readFloat32` returns as f32: plain floats, and the block formats dequantised here. */
export type GgufFloatType = 'F32' | 'F16' | 'BF16' | 'F64' | 'Q8_0' | 'Q4_0';
export const ggufFloatTypes: readonly GgufFloatType[] = ['F32', 'F16', 'BF16', 'F64', 'Q8_0', 'Q4_0'];
export function isGgufFloatType(type: string): type is GgufFloatType {
  return (ggufFloatTypes as readonly string[]).includes(type);
}

/** Bytes of `count` elements of `type` (count a multiple of the block size, checked by the caller). */
export function ggmlByteLength(type: GgmlType, count: number): number {
  const [block, bytes] = ggmlBlockSizes[type];
  return (count / block) * bytes;
}

/** f16 bits to a number (exact). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : NaN;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/**
 * Dequantises Q8_0 (blocks of 32: f16 scale `d`, 32 int8 `q`; `x = d q`) or Q4_0 (blocks
 * of 32: f16 `d`, 16 bytes whose low nibbles are elements 0-15 and high nibbles 16-31;
 * `x = d (q - 8)`) into `out`, exactly as ggml does (the product rounded to f32).
 */
export function dequantize(type: 'Q8_0' | 'Q4_0', bytes: Uint8Array, out: Float32Array): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const blocks = out.length / 32;
  if (type === 'Q8_0') {
    for (let b = 0; b < blocks; b++) {
      const at = b * 34;
      const d = halfToFloat(view.getUint16(at, true));
      for (let j = 0; j < 32; j++) out[b * 32 + j] = d * view.getInt8(at + 2 + j);
    }
    return;
  }
  if (type !== 'Q4_0') throw new EigenLoraxError(`internal: cannot dequantise ${String(type)}`, 'ERR_INTERNAL');
  for (let b = 0; b < blocks; b++) {
    const at = b * 18;
    const d = halfToFloat(view.getUint16(at, true));
    for (let j = 0; j < 16; j++) {
      const q = bytes[at + 2 + j] as number;
      out[b * 32 + j] = d * ((q & 0x0f) - 8);
      out[b * 32 + j + 16] = d * ((q >> 4) - 8);
    }
  }
}
