/** Build facts and the per-environment thread count of the native kernels. */
import * as ops from './native/ops.js';
import { addonPath, addonKind } from './native/ops.js';
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
