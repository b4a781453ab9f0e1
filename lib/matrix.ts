/**
 * The matrix type that crosses the native boundary: row-major f32, `data.length ===
 * rows * cols`. Native code maps `data` in place (no copy).
 */
import { EigenLoraxError } from './errors.js';
import { describe, invalid } from './validate.js';

export interface Matrix {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float32Array;
}

/** A zero-filled matrix, or one over the given data (not copied). */
export function matrix(rows: number, cols: number, data?: Float32Array): Matrix {
  const m = { rows, cols, data: data ?? new Float32Array(checkedSize(rows, cols, 'matrix')) };
  checkMatrix(m, 'matrix');
  return m;
}

function checkedSize(rows: number, cols: number, name: string): number {
  if (!Number.isSafeInteger(rows) || rows < 1) throw invalid('a positive integer', `${name}.rows`, rows);
  if (!Number.isSafeInteger(cols) || cols < 1) throw invalid('a positive integer', `${name}.cols`, cols);
  return rows * cols;
}

/** Checks that `value` is a Matrix (optionally of a given shape) and returns it. */
export function checkMatrix(value: unknown, name: string, shape?: { rows?: number; cols?: number }): Matrix {
  if (typeof value !== 'object' || value === null) throw invalid('a matrix { rows, cols, data: Float32Array }', name, value);
  const m = value as Partial<Matrix>;
  const size = checkedSize(m.rows as number, m.cols as number, name);
  if (!(m.data instanceof Float32Array)) throw invalid('a Float32Array', `${name}.data`, m.data);
  if (m.data.buffer.byteLength === 0 && size > 0 && isDetached(m.data)) {
    throw new EigenLoraxError(`${name}.data: the typed array's buffer is detached (transferred or freed)`, 'ERR_DETACHED_BUFFER');
  }
  if (m.data.length !== size) {
    throw new EigenLoraxError(
      `${name}: data has ${m.data.length} elements but rows x cols = ${m.rows} x ${m.cols} needs ${size}`,
      'ERR_SHAPE_MISMATCH',
    );
  }
  if (shape && ((shape.rows !== undefined && shape.rows !== m.rows) || (shape.cols !== undefined && shape.cols !== m.cols))) {
    throw new EigenLoraxError(
      `${name}: expected shape ${shape.rows ?? '*'} x ${shape.cols ?? '*'}, received ${m.rows} x ${m.cols}`,
      'ERR_SHAPE_MISMATCH',
    );
  }
  return m as Matrix;
}

function isDetached(array: Float32Array): boolean {
  const buffer = array.buffer as ArrayBuffer & { detached?: boolean };
  if (typeof buffer.detached === 'boolean') return buffer.detached;
  // Node 20 has no ArrayBuffer.prototype.detached; no view can be made on a detached
  // buffer (an empty array is not detached: that is a shape mismatch).
  try {
    new Uint8Array(buffer);
    return false;
  } catch {
    return true;
  }
}

/** Checks a Float32Array vector of the given length. */
export function checkVector(value: unknown, name: string, length: number): Float32Array {
  if (!(value instanceof Float32Array)) throw invalid('a Float32Array', name, value);
  if (value.length !== length) {
    throw new EigenLoraxError(`${name}: expected ${length} elements, received ${describe(value)}`, 'ERR_SHAPE_MISMATCH');
  }
  return value;
}
