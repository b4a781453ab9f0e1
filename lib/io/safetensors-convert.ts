/**
 * Reading a stored F16, BF16 or F64 tensor into f32: in chunks of 4 MiB into two buffers
 * shared by every reader, converted by the native, vectorised conversion (off the event
 * loop), the read of chunk k+1 overlapping the conversion of chunk k.
 */
import type { FileHandle } from 'node:fs/promises';
import { dtypeBytes, type DType } from '../dtype.js';
import * as ops from '../native/ops.js';
import { readFully } from './files.js';
import type { SafetensorsTensorInfo } from './safetensors-header.js';

/** Bytes of stored data read per chunk when converting to f32 (a multiple of 8). */
const CONVERT_CHUNK_BYTES = 4 << 20;

/**
 * Chunk buffers for conversions, shared by every reader: one pool per reader held 8 MiB
 * per open file, and a build over hundreds of adapters kept gigabytes of external memory
 * that V8 counts towards its collections (256 adapters: 2 GiB, most of the time spent
 * marking). At most as many as reads in flight are kept.
 */
const chunkBuffers: Buffer[] = [];
const MAX_POOLED_CHUNK_BUFFERS = 16;

function takeChunkBuffer(): Buffer {
  return chunkBuffers.pop() ?? Buffer.allocUnsafeSlow(CONVERT_CHUNK_BYTES);
}

function giveBackChunkBuffer(buffer: Buffer): void {
  if (chunkBuffers.length < MAX_POOLED_CHUNK_BUFFERS) chunkBuffers.push(buffer);
}

/** Chunked read + native conversion, the read of chunk k+1 overlapping the conversion of chunk k. */
export async function readConverted(handle: FileHandle, info: SafetensorsTensorInfo, from: DType, out: Float32Array, file: string, name: string) {
  if (out.length === 0) return;
  const elementBytes = dtypeBytes[from];
  const chunkElements = Math.floor(CONVERT_CHUNK_BYTES / elementBytes);
  const chunks = Math.ceil(out.length / chunkElements);
  const buffers = [takeChunkBuffer(), chunks > 1 ? takeChunkBuffer() : null];
  const read = (k: number): Promise<Uint8Array> => {
    const first = k * chunkElements;
    const length = (Math.min(out.length, first + chunkElements) - first) * elementBytes;
    const bytes = (buffers[k % 2] as Buffer).subarray(0, length);
    return readFully(handle, bytes, info.offset + first * elementBytes, file, name).then(() => bytes);
  };
  const convert = (k: number, bytes: Uint8Array): Promise<void> => {
    const first = k * chunkElements;
    const dst = out.subarray(first, first + bytes.byteLength / elementBytes);
    return ops.convert({ src: bytes, from, dst, to: 'f32' });
  };
  try {
    let current = await read(0);
    for (let k = 0; k < chunks; k++) {
      // allSettled: when one side fails, the other still finishes before we return, so
      // nothing writes into `out` or the chunk buffers afterwards.
      const [next, converted] = await Promise.allSettled([k + 1 < chunks ? read(k + 1) : null, convert(k, current)]);
      if (converted.status === 'rejected') throw converted.reason;
      if (next.status === 'rejected') throw next.reason;
      current = next.value as Uint8Array;
    }
  } finally {
    for (const b of buffers) if (b !== null) giveBackChunkBuffer(b);
  }
}
