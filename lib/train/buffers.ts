/**
 * Reusable work buffers keyed by name and batch size: a training loop runs the same
 * shapes step after step, so layers allocate their outputs once per batch size.
 */
import type { Matrix } from '../matrix.js';
import { ownedMatrix } from '../native/ops.js';

/** At most this many buffers per pool; the oldest is dropped beyond it. */
const MAX_BUFFERS = 32;

export class BufferPool {
  readonly #buffers = new Map<string, Matrix>();

  /** A rows x cols buffer (contents: whatever the last user left). */
  get(name: string, rows: number, cols: number): Matrix {
    const key = `${name}:${rows}x${cols}`;
    let m = this.#buffers.get(key);
    if (m === undefined) {
      if (this.#buffers.size >= MAX_BUFFERS) {
        const oldest = this.#buffers.keys().next().value as string;
        this.#buffers.delete(oldest);
      }
      m = ownedMatrix(rows, cols); // passed to the kernels again and again: read there without a copy
      this.#buffers.set(key, m);
    }
    return m;
  }

  clear(): void {
    this.#buffers.clear();
  }
}
