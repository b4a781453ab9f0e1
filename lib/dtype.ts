/**
 * Conversions between f32 and the storage dtypes of adapter files (native, vectorised,
 * off the event loop). bf16 and f16 round to nearest even; NaN and Inf are preserved.
 */
import { EigenLoraxError } from './errors.js';
import * as ops from './native/ops.js';
import { invalid, oneOf } from './validate.js';

export type DType = 'f32' | 'f16' | 'bf16' | 'f64';
export const dtypes: readonly DType[] = ['f32', 'f16', 'bf16', 'f64'];
export const dtypeBytes: Readonly<Record<DType, number>> = { f32: 4, f16: 2, bf16: 2, f64: 8 };

/**
 * Decodes `src` (bf16/f16 as 16-bit words, f64, or f32; any typed array or byte view,
 * little-endian, alignment not required) into a new Float32Array.
 */
export async function toFloat32(src: ArrayBufferView, dtype: DType): Promise<Float32Array> {
  const from = oneOf(dtype, 'dtype', dtypes);
  if (!ArrayBuffer.isView(src)) throw invalid('a typed array or DataView', 'src', src);
  if (src.byteLength % dtypeBytes[from] !== 0) {
    throw new EigenLoraxError(`src: ${src.byteLength} bytes is not a whole number of ${from} elements`, 'ERR_SHAPE_MISMATCH');
  }
  const out = new Float32Array(src.byteLength / dtypeBytes[from]);
  if (out.length > 0) await ops.convert({ src: asBytes(src), from, dst: out, to: 'f32' });
  return out;
}

/** Encodes f32 values as `dtype`: Uint16Array for bf16/f16, Float64Array, or a Float32Array copy. */
export async function fromFloat32(src: Float32Array, dtype: 'bf16' | 'f16'): Promise<Uint16Array>;
export async function fromFloat32(src: Float32Array, dtype: 'f64'): Promise<Float64Array>;
export async function fromFloat32(src: Float32Array, dtype: 'f32'): Promise<Float32Array>;
export async function fromFloat32(src: Float32Array, dtype: DType): Promise<Uint16Array | Float32Array | Float64Array>;
export async function fromFloat32(src: Float32Array, dtype: DType): Promise<Uint16Array | Float32Array | Float64Array> {
  const to = oneOf(dtype, 'dtype', dtypes);
  if (!(src instanceof Float32Array)) throw invalid('a Float32Array', 'src', src);
  const out =
    to === 'f64' ? new Float64Array(src.length) : to === 'f32' ? new Float32Array(src.length) : new Uint16Array(src.length);
  if (out.length > 0) await ops.convert({ src, from: 'f32', dst: out, to });
  return out;
}

function asBytes(view: ArrayBufferView): Uint8Array {
  return view instanceof Uint8Array ? view : new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}
