/** Build facts and the per-environment thread count of the native kernels. */
import * as ops from './native/ops.js';
import { addonPath, addonKind } from './native/ops.js';
import type { Matrix } from './matrix.js';
import { integer } from './validate.js';

export interface BuildInfo {
  /** Package version the addon was built from. */
  version: string;
  /** Vendored Eigen version. */
  eigen: string;
  /** SIMD instruction sets the kernels were compiled for. */
  simd: string;
  openmp: boolean;
  hardwareThreads: number;
  backends: string[];
  addonPath: string;
  /** The addon binary in use (the same file as addonPath). */
  binary: string;
  /** 'source' (built at install, build/Release), 'prebuilt x86-64-v3' / 'prebuilt x86-64-v2' (prebuilds/), or 'EIGENLORAX_ADDON'. */
  binaryKind: string;
}

export function buildInfo(): BuildInfo {
  return { ...ops.buildInfo(), addonPath, binary: addonPath, binaryKind: addonKind };
}

/**
 * Threads used by native calls started from this environment (main thread or a worker
 * thread each have their own setting). Default: the number of processors.
 */
export function setThreads(threads: number): void {
  ops.setThreads(integer(threads, 'threads', 1, 1024));
}

export function getThreads(): number {
  return ops.getThreads();
}

/**
 * A zero-filled matrix that calls read and write in place instead of copying (memory the
 * addon owns, from 64 KiB; an ordinary matrix below that or where the runtime refuses
 * native-backed buffers): for buffers a loop hands to the kernels again and again. Do not
 * touch one while a call that uses it is in flight; a call that fails may have written
 * part of an owned output. Its buffer cannot be transferred to another thread (Node 24
 * refuses, Node 20 copies): post a copy.
 */
export function ownedMatrix(rows: number, cols: number): Matrix {
  return ops.ownedMatrix(integer(rows, 'rows', 1), integer(cols, 'cols', 1));
}
