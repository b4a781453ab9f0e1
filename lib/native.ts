/**
 * The only module that loads the native addon, and its types. Everything else imports
 * the typed `native` object from here.
 *
 * The addon is looked up at `build/Release/eigenlorax.node` in the package (what
 * `npm install` builds with cmake-js); EIGENLORAX_ADDON overrides the path (CI points it
 * at the node-gyp build to test that one too).
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { EigenLoraxError } from './errors.js';
import type { Matrix } from './matrix.js';

export type NativeDType = 'f32' | 'f16' | 'bf16' | 'f64';
/** 0 auto, 1 project, 2 rebuild (ProductOrder in native/core/lowrank.h). */
export type NativeOrder = 0 | 1 | 2;
export type OrderName = 'project' | 'rebuild';

export interface NativeLoraArgs {
  A: Matrix;
  B: Matrix;
  scale: number;
  weight: Matrix | null;
  bias: Float32Array | null;
}

export interface NativeEigenLoraArgs {
  componentsA: Matrix;
  alpha: Matrix;
  beta: Matrix;
  componentsB: Matrix;
  scale: number;
  weight: Matrix | null;
  bias: Float32Array | null;
}

export interface NativeBuildInfo {
  version: string;
  eigen: string;
  simd: string;
  openmp: boolean;
  hardwareThreads: number;
  backends: string[];
}

export interface NativeAddon {
  setErrorClass(ctor: new (message: string, code: string) => Error): void;
  setThreads(threads: number): void;
  getThreads(): number;
  buildInfo(): NativeBuildInfo;
  rsvd(args: {
    matrix: Matrix;
    rank: number;
    oversample: number;
    powerIters: number;
    seed: number;
    method: 0 | 1 | 2;
    U: Matrix;
    S: Float32Array;
    V: Matrix;
  }): Promise<{ exact: boolean; sketchSize: number }>;
  orthonormalize(args: { matrix: Matrix; out: Matrix }): Promise<void>;
  completeBasis(args: { basis: Matrix; seed: number; out: Matrix }): Promise<void>;
  loraForward(args: NativeLoraArgs & { x: Matrix; y: Matrix }): Promise<void>;
  loraBackward(args: NativeLoraArgs & { x: Matrix; dy: Matrix; dx: Matrix | null; dA: Matrix; dB: Matrix }): Promise<void>;
  eigenLoraForward(args: NativeEigenLoraArgs & { x: Matrix; y: Matrix; order: NativeOrder }): Promise<OrderName>;
  eigenLoraBackward(
    args: NativeEigenLoraArgs & {
      x: Matrix;
      dy: Matrix;
      dx: Matrix | null;
      dAlpha: Matrix;
      dBeta: Matrix;
      order: NativeOrder;
    },
  ): Promise<OrderName>;
  chooseOrder(args: {
    rows: number;
    dIn: number;
    dOut: number;
    kA: number;
    kB: number;
    rank: number;
    backward: boolean;
    inputGrad: boolean;
  }): OrderName;
  convert(args: { src: ArrayBufferView; from: NativeDType; dst: ArrayBufferView; to: NativeDType }): Promise<void>;
}

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Where the addon is loaded from. */
export const addonPath = process.env.EIGENLORAX_ADDON
  ? path.resolve(process.env.EIGENLORAX_ADDON)
  : path.join(packageRoot, 'build', 'Release', 'eigenlorax.node');

function load(): NativeAddon {
  const require = createRequire(import.meta.url);
  let addon: NativeAddon;
  try {
    addon = require(addonPath) as NativeAddon;
  } catch (cause) {
    const error = new EigenLoraxError(
      `The native addon could not be loaded from ${addonPath} (${(cause as Error).message}). ` +
        'Build it with `npm install` or `npm run build:native` (needs CMake >= 3.15 and a C++17 compiler).',
      'ERR_NATIVE_UNAVAILABLE',
    );
    error.cause = cause;
    throw error;
  }
  addon.setErrorClass(EigenLoraxError);
  return addon;
}

export const native: NativeAddon = load();
