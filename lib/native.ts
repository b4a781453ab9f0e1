/**
 * The only module that loads the native addon, and its types. Everything else imports
 * the typed `native` object from here.
 *
 * Which binary is loaded (EIGENLORAX_ADDON, the source build in build/Release, or a
 * prebuilt one from prebuilds/) is decided in native/loader.ts; CI points EIGENLORAX_ADDON
 * at the node-gyp build to test that one too.
 */
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { EigenLoraxError, type ErrorCode } from './errors.js';
import type { Matrix } from './matrix.js';
import { loadAddon, type BinaryKind, type LoadedAddon } from './native/loader.js';

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

/** One adapter's factors for one module: A is r_i x d_in, B is d_out x r_i, dW = scale B A. */
export interface NativeFactorPair {
  A: Matrix;
  B: Matrix;
  scale: number;
}

/** 0: factors as published (scale ignored); 1: balanced SVD factors of dW (scale inside). */
export type NativeStacking = 0 | 1;
/** 0: every adapter scaled to ||dW||_F = 1 while the basis is built; 1: as they are. */
export type NativeWeighting = 0 | 1;

/** A matrix in GPU memory, as the addon reads it (DeviceMatrix.operand). */
export interface NativeDeviceOperand {
  rows: number;
  cols: number;
  handle: unknown;
}

/** A host matrix or a device matrix: what the cuda* calls accept for their inputs. */
export type NativeOperand = Matrix | NativeDeviceOperand;

export interface NativeCudaDevice {
  index: number;
  name: string;
  /** "9.0" */
  computeCapability: string;
  totalBytes: number;
  /** Free memory of device 0 when the backend is available; 0 otherwise. */
  freeBytes: number;
  multiprocessors: number;
}

export interface NativeCudaStatus {
  /** The plugin file looked for (beside the addon, or $EIGENLORAX_CUDA_PLUGIN). */
  plugin: string;
  pluginLoaded: boolean;
  available: boolean;
  /** Why the backend cannot run; '' when it can. */
  reason: string;
  /** 13000 = CUDA 13.0: the runtime the plugin was built with. */
  runtimeVersion: number;
  /** What the driver supports; 0 without a driver. */
  driverVersion: number;
  cublasVersion: number;
  cublasLibrary: string;
  /** Scratch memory the backend keeps between calls. */
  workspaceBytes: number;
  devices: NativeCudaDevice[];
}

type CudaArgs<T> = { [K in keyof T]: T[K] extends Matrix ? NativeOperand : T[K] extends Matrix | null ? NativeOperand | null : T[K] };

/** An opaque out-of-core module build (createModuleStream). */
export type NativeModuleStream = { readonly __moduleStream: unique symbol };

export interface NativeAddon {
  /** The addon raises only codes declared in ErrorCode. */
  setErrorClass(ctor: new (message: string, code: ErrorCode) => Error): void;
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
  /** y = x W^T + b. */
  linearForward(args: { x: Matrix; weight: Matrix; bias: Float32Array | null; y: Matrix }): Promise<void>;
  /** dx = dy W, dWeight = dy^T x, dBias = column sums of dy; each output optional. */
  linearBackward(args: {
    x: Matrix;
    dy: Matrix;
    weight: Matrix | null;
    dx: Matrix | null;
    dWeight: Matrix | null;
    dBias: Float32Array | null;
  }): Promise<void>;
  /** target += scale B A (d_out x d_in), or += scale (B A)^T (d_in x d_out) when transposed; in place. */
  addLowRank(args: { target: Matrix; A: Matrix; B: Matrix; scale: number; transposed: boolean }): Promise<void>;
  /**
   * y = x W^T + b + per row b: (x_b V_A) M_rows[b] U_B^T, M_i = mixing[i] (K_A x K_B,
   * row-major, adapter after adapter); rows[b] = -1 for no adapter.
   */
  eigenBankApply(args: {
    x: Matrix;
    componentsA: Matrix;
    componentsB: Matrix;
    mixing: Float32Array;
    count: number;
    rows: Int32Array;
    weight: Matrix | null;
    bias: Float32Array | null;
    y: Matrix;
  }): Promise<void>;
  /** y = x W^T + b + per row b: s_i (x_b A_i^T) B_i^T with i = rows[b] (-1: none); segmented by adapter. */
  loraBankApply(args: {
    x: Matrix;
    adapters: NativeFactorPair[];
    rows: Int32Array;
    weight: Matrix | null;
    bias: Float32Array | null;
    y: Matrix;
  }): Promise<void>;
  // The CUDA backend (native/cuda via native/addon/cuda_jobs.cpp): the same arguments as
  // the CPU calls, where inputs may also be device matrices; outputs stay on the host.
  cudaProbe(): Promise<NativeCudaStatus>;
  cudaUpload(args: { rows: number; cols: number; dtype: 0 | 1 | 2; data: Float32Array | Uint16Array }): Promise<unknown>;
  cudaDownload(args: { matrix: NativeDeviceOperand; out: Float32Array }): Promise<void>;
  cudaDispose(args: { handle: unknown }): void;
  cudaRsvd(args: CudaArgs<Parameters<NativeAddon['rsvd']>[0]> & { U: Matrix; V: Matrix }): Promise<{ exact: boolean; sketchSize: number }>;
  cudaLoraForward(args: CudaArgs<NativeLoraArgs & { x: Matrix }> & { y: Matrix }): Promise<void>;
  cudaLoraBackward(
    args: CudaArgs<NativeLoraArgs & { x: Matrix; dy: Matrix }> & { dx: Matrix | null; dA: Matrix; dB: Matrix },
  ): Promise<void>;
  cudaEigenLoraForward(args: CudaArgs<NativeEigenLoraArgs & { x: Matrix }> & { y: Matrix }): Promise<OrderName>;
  cudaEigenLoraBackward(
    args: CudaArgs<NativeEigenLoraArgs & { x: Matrix; dy: Matrix }> & { dx: Matrix | null; dAlpha: Matrix; dBeta: Matrix },
  ): Promise<OrderName>;
  cudaEigenBankApply(args: {
    x: NativeOperand;
    componentsA: NativeOperand;
    componentsB: NativeOperand;
    /** Flat (as the CPU call), or a device matrix of (count K_A) x K_B. */
    mixing: Float32Array | NativeDeviceOperand;
    count: number;
    rows: Int32Array;
    weight: NativeOperand | null;
    bias: Float32Array | null;
    y: Matrix;
  }): Promise<void>;
  cudaLoraBankApply(args: {
    x: NativeOperand;
    adapters: Array<{ A: NativeOperand; B: NativeOperand; scale: number }>;
    rows: Int32Array;
    weight: NativeOperand | null;
    bias: Float32Array | null;
    y: Matrix;
  }): Promise<void>;
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

  /**
   * Principal components of one module (DESIGN §1). Stacks the adapters' A rows
   * (sum r_i x d_in) and B columns (d_out x sum r_i) as `stacking`/`weighting` say,
   * optionally centres them (the means are written out), and writes the top
   * componentsA.cols / componentsB.cols singular vectors by rsvd. Resolves to the
   * stacked matrices' squared Frobenius norms (after weighting and centring), for
   * explained variance, and each adapter's ||dW_i||_F.
   */
  buildModuleSubspace(args: {
    adapters: NativeFactorPair[];
    stacking: NativeStacking;
    weighting: NativeWeighting;
    center: boolean;
    oversample: number;
    powerIters: number;
    seed: number;
    componentsA: Matrix; // out, d_in x K_A
    componentsB: Matrix; // out, d_out x K_B
    singularA: Float32Array; // out, K_A
    singularB: Float32Array; // out, K_B
    meanA: Float32Array | null; // out when center, d_in
    meanB: Float32Array | null; // out when center, d_out
  }): Promise<{ energyA: number; energyB: number; norms: Float64Array }>;

  /**
   * Loadings of adapters on a module's components, in each adapter's own scale:
   * alpha_i = V_A^T (A_i'^T - meanA), beta_i = U_B^T (B_i' - meanB), where (A_i', B_i')
   * are the factors as stacked (`stacking`; canonical factors carry the scale, raw ones
   * do not). Also writes ||dW_i||_F and ||dW_i - dW_i_hat||_F, computed through r x r
   * traces, never forming d_out x d_in.
   */
  projectModule(args: {
    adapters: NativeFactorPair[];
    stacking: NativeStacking;
    componentsA: Matrix;
    componentsB: Matrix;
    meanA: Float32Array | null;
    meanB: Float32Array | null;
    alphas: Matrix[]; // out, K_A x r_i each
    betas: Matrix[]; // out, K_B x r_i each
    norms: Float64Array; // out, ||dW_i||_F
    errors: Float64Array; // out, ||dW_i - dW_i_hat||_F
  }): Promise<void>;

  /**
   * Out-of-core module build (native/core/subspace_stream.h): the same result as
   * buildModuleSubspace within float32 rounding, with the adapters given in chunks, all of
   * them once per pass (`passes` passes, same order each time). Refused where
   * buildModuleSubspace would take the exact SVD (small stacks).
   */
  createModuleStream(args: {
    dIn: number;
    dOut: number;
    totalRank: number;
    adapters: number;
    kA: number;
    kB: number;
    stacking: NativeStacking;
    weighting: NativeWeighting;
    center: boolean;
    oversample: number;
    powerIters: number;
    seed: number;
  }): { stream: NativeModuleStream; passes: number };
  moduleStreamAdd(args: { stream: NativeModuleStream; adapters: NativeFactorPair[] }): Promise<void>;
  /** Resolves to true after the last pass. */
  moduleStreamEndPass(args: { stream: NativeModuleStream }): Promise<boolean>;
  moduleStreamFinish(args: {
    stream: NativeModuleStream;
    componentsA: Matrix;
    componentsB: Matrix;
    singularA: Float32Array;
    singularB: Float32Array;
    meanA: Float32Array | null;
    meanB: Float32Array | null;
  }): Promise<{ energyA: number; energyB: number; norms: Float64Array }>;

  /** A = alpha^T V_A^T (+ meanA per row), B = U_B beta (+ meanB per column). */
  reconstructFactors(args: {
    componentsA: Matrix;
    componentsB: Matrix;
    meanA: Float32Array | null;
    meanB: Float32Array | null;
    alpha: Matrix; // K_A x r
    beta: Matrix; // K_B x r
    A: Matrix; // out, r x d_in
    B: Matrix; // out, d_out x r
  }): Promise<void>;
}

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

function load(): LoadedAddon<NativeAddon> {
  let loaded: LoadedAddon<NativeAddon>;
  try {
    loaded = loadAddon<NativeAddon>(packageRoot, import.meta.url);
  } catch (cause) {
    const error = new EigenLoraxError(
      `The native addon could not be loaded (${(cause as Error).message}). ` +
        'Build it with `npm rebuild eigenlorax --build-from-source` in a project, or `npm run build:native` in a checkout ' +
        '(needs CMake >= 3.15 and a C++17 compiler).',
      'ERR_NATIVE_UNAVAILABLE',
    );
    error.cause = cause;
    throw error;
  }
  loaded.addon.setErrorClass(EigenLoraxError);
  return loaded;
}

const loaded = load();
export const native: NativeAddon = loaded.addon;
/** Where the addon was loaded from. */
export const addonPath: string = loaded.path;
/** Which binary that is: 'source' (build/Release), 'prebuilt x86-64-v3' (prebuilds/), or 'EIGENLORAX_ADDON'. */
export const addonKind: BinaryKind = loaded.kind;
