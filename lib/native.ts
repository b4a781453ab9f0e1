/**
 * The only module that loads the native addon, and its types. Library code calls the
 * addon only through the typed wrappers of native/ops.ts (which keep the caller's stack);
 * the raw `native` object is for them and for tests that probe the boundary itself.
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
/** ProductOrder in native/core/lowrank.h. */
export type NativeOrder = 'auto' | OrderName;
export type OrderName = 'project' | 'rebuild';
/** SvdMethod in native/core/linalg.h. */
export type NativeSvdMethod = 'auto' | 'exact' | 'randomized';
/** What a device matrix stores (cuda::DType in native/cuda/backend.h). */
export type NativeDeviceDType = 'f32' | 'f16' | 'bf16';

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

/**
 * A factor the native call reads from an open file itself, on its worker (f32, f16 or bf16,
 * row-major `rows x cols` at byte `offset`): no typed array, no copy or conversion on the
 * JS thread. `fd` is duplicated when the call starts, so it must be open until then.
 * `where` prefixes errors (`<file>, tensor "<key>"`); with `checkFinite` NaN or Inf is
 * ERR_NON_FINITE naming the element.
 */
export interface NativeFileFactor {
  rows: number;
  cols: number;
  fd: number;
  offset: number;
  dtype: 'f32' | 'f16' | 'bf16';
  where: string;
  checkFinite: boolean;
}

/** One adapter's factors for one module as the subspace kernels take them: in memory or in a file. */
export interface NativeModulePair {
  A: Matrix | NativeFileFactor;
  B: Matrix | NativeFileFactor;
  scale: number;
}

/** raw: factors as published (scale ignored); canonical: balanced SVD factors of dW (scale inside). */
export type NativeStacking = 'raw' | 'canonical';
/** equal: every adapter scaled to ||dW||_F = 1 while the basis is built; scale: as they are. */
export type NativeWeighting = 'equal' | 'scale';
/** One side of one of foldBases' bases: singular values, energy, whether rsvd's exact path gave it. */
export interface NativeSideBasis {
  singular: Float32Array;
  energy: number;
  exact: boolean;
}

/** A matrix in GPU memory, as the addon reads it (DeviceMatrix.operand). */
export interface NativeDeviceOperand {
  rows: number;
  cols: number;
  handle: unknown;
}

/** A host matrix or a device matrix: what the operations accept for their inputs on 'cuda'. */
export type NativeOperand = Matrix | NativeDeviceOperand;
/** Which backend runs an operation: native/core, or the CUDA plugin (default 'cpu'). */
export type NativeDevice = 'cpu' | 'cuda';

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

/**
 * The arguments of an operation that runs on either backend: `device` (default 'cpu'), and
 * on 'cuda' any matrix input may be a device matrix. Outputs stay host matrices.
 */
type OnDevice<In, Out> = {
  [K in keyof In]: In[K] extends Matrix ? NativeOperand : In[K] extends Matrix | null ? NativeOperand | null : In[K];
} & Out & { device?: NativeDevice };

/** An opaque cache of an adapter bank's rank pairs, owning a copy of its components (createPairCache). */
export type NativePairCache = { readonly __pairCache: unique symbol };

/** An opaque SHA-256 stream (sha256Stream). */
export type NativeHashStream = { readonly __hashStream: unique symbol };
/** An opaque out-of-core module build (createModuleStream). */
export type NativeModuleStream = { readonly __moduleStream: unique symbol };

export interface NativeAddon {
  /** The addon raises only codes declared in ErrorCode. */
  setErrorClass(ctor: new (message: string, code: ErrorCode) => Error): void;
  setThreads(threads: number): void;
  getThreads(): number;
  buildInfo(): NativeBuildInfo;
  /**
   * `bytes` bytes the addon owns (native/addon/owned_buffers.h), zero-filled when asked:
   * jobs read them without copying; in huge pages when large.
   */
  ownedBuffer(bytes: number, zeroed: boolean): ArrayBuffer;
  rsvd(
    args: OnDevice<
      { matrix: Matrix; rank: number; oversample: number; powerIters: number; seed: number; method: NativeSvdMethod },
      { U: Matrix; S: Float32Array; V: Matrix }
    >,
  ): Promise<{ exact: boolean; sketchSize: number }>;
  orthonormalize(args: { matrix: Matrix; out: Matrix }): Promise<void>;
  completeBasis(args: { basis: Matrix; seed: number; out: Matrix }): Promise<void>;
  loraForward(args: OnDevice<NativeLoraArgs & { x: Matrix }, { y: Matrix }>): Promise<void>;
  loraBackward(args: OnDevice<NativeLoraArgs & { x: Matrix; dy: Matrix }, { dx: Matrix | null; dA: Matrix; dB: Matrix }>): Promise<void>;
  /** Resolves to the order taken; the GPU takes 'project' only ('auto' there is 'project'). */
  eigenLoraForward(args: OnDevice<NativeEigenLoraArgs & { x: Matrix }, { y: Matrix; order: NativeOrder }>): Promise<OrderName>;
  eigenLoraBackward(
    args: OnDevice<NativeEigenLoraArgs & { x: Matrix; dy: Matrix }, { dx: Matrix | null; dAlpha: Matrix; dBeta: Matrix; order: NativeOrder }>,
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
    x: NativeOperand;
    /** Omitted with a pairCache: the cache's own copies are applied. */
    componentsA?: NativeOperand;
    componentsB?: NativeOperand;
    /** 'cpu' only. */
    pairCache?: NativePairCache;
    /** Flat, adapter after adapter, or (on 'cuda') a device matrix of (count K_A) x K_B. */
    mixing: Float32Array | NativeDeviceOperand;
    count: number;
    /** Each adapter's rank (an upper bound), for the CPU's choice of path; else factorised. */
    ranks?: Int32Array;
    rows: Int32Array;
    weight: NativeOperand | null;
    bias: Float32Array | null;
    y: Matrix;
    device?: NativeDevice;
  }): Promise<void>;
  /** A cache of rank pairs of at most `budget` bytes for a bank on these components (copied). */
  createPairCache(args: { componentsA: Matrix; componentsB: Matrix; budget: number }): NativePairCache;
  pairCacheStats(cache: NativePairCache): { pairs: number; bytes: number; budget: number };
  /** y = x W^T + b + per row b: s_i (x_b A_i^T) B_i^T with i = rows[b] (-1: none); segmented by adapter. */
  loraBankApply(args: {
    x: NativeOperand;
    adapters: Array<{ A: NativeOperand; B: NativeOperand; scale: number }>;
    rows: Int32Array;
    weight: NativeOperand | null;
    bias: Float32Array | null;
    y: Matrix;
    device?: NativeDevice;
  }): Promise<void>;
  // CUDA's own calls (native/addon/cuda_jobs.cpp): the probe and device memory.
  cudaProbe(): Promise<NativeCudaStatus>;
  cudaUpload(args: { rows: number; cols: number; dtype: NativeDeviceDType; data: Float32Array | Uint16Array }): Promise<unknown>;
  cudaDownload(args: { matrix: NativeDeviceOperand; out: Float32Array }): Promise<void>;
  cudaDispose(args: { handle: unknown }): void;
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
  sha256Stream(): NativeHashStream;
  /** Queued behind the stream's earlier calls; the parts are the job's own once called. */
  sha256Update(args: { stream: NativeHashStream; parts: ArrayBufferView[] }): Promise<void>;
  /** The lowercase hex digest; the stream is spent afterwards. */
  sha256Digest(args: { stream: NativeHashStream }): Promise<string>;
  /** Whether the CPU's SHA extensions are used. */
  sha256Accelerated(): boolean;

  /**
   * Principal components of one module (DESIGN §1). Stacks the adapters' A rows
   * (sum r_i x d_in) and B columns (d_out x sum r_i) as `stacking`/`weighting` say,
   * optionally centres them (the means are written out), and writes the top
   * componentsA.cols / componentsB.cols singular vectors by rsvd. Resolves to the
   * stacked matrices' squared Frobenius norms (after weighting and centring), for
   * explained variance, and each adapter's ||dW_i||_F.
   */
  buildModuleSubspace(args: {
    adapters: NativeModulePair[];
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
    /**
     * When given, every adapter is also projected on the components (and means) just
     * built: what projectModule writes for them, bit for bit, without canonicalising their
     * factors a second time.
     */
    project?: { alphas: Matrix[]; betas: Matrix[]; norms: Float64Array; errors: Float64Array } | null;
  }): Promise<{ energyA: number; energyB: number; norms: Float64Array }>;

  /**
   * Loadings of adapters on a module's components, in each adapter's own scale:
   * alpha_i = V_A^T (A_i'^T - meanA), beta_i = U_B^T (B_i' - meanB), where (A_i', B_i')
   * are the factors as stacked (`stacking`; canonical factors carry the scale, raw ones
   * do not). Also writes ||dW_i||_F and ||dW_i - dW_i_hat||_F, computed through r x r
   * traces, never forming d_out x d_in.
   */
  projectModule(args: {
    adapters: NativeModulePair[];
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
  moduleStreamAdd(args: { stream: NativeModuleStream; adapters: NativeModulePair[] }): Promise<void>;
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

  /**
   * analyze's bases of one module (native/core/folds.h): the stack of each side formed once;
   * the whole stack's top `curveA`/`curveB` singular values and energy, and for each fold f
   * (adapter i in fold folds[i]) the top components of the stack without fold f (null where
   * no adapter outside f exists). Exact (rsvd, as a build) for small stacks, else a Nystrom
   * approximation warm-started from warmA/warmB (the whole stack's basis).
   */
  foldBases(args: {
    adapters: NativeModulePair[];
    folds: Int32Array;
    foldCount: number;
    stacking: NativeStacking;
    weighting: NativeWeighting;
    oversample: number;
    powerIters: number;
    seed: number;
    componentsA: number;
    componentsB: number;
    curveA: number;
    curveB: number;
    warmA: Matrix | null;
    warmB: Matrix | null;
    /**
     * Also project every adapter on its own fold's basis as it is returned (loadings, norms,
     * errors as projectModule gives them, overlaps as factorOverlaps), from the factors the
     * stacks were formed from: `heldOut[i]`, null where the fold has no basis.
     */
    projectHeldOut?: boolean;
  }): Promise<{
    curveA: NativeSideBasis;
    curveB: NativeSideBasis;
    folds: Array<{ A: NativeSideBasis & { components: Matrix }; B: NativeSideBasis & { components: Matrix } } | null>;
    heldOut?: Array<{ alpha: Matrix; beta: Matrix; norm: number; error: number; overlapA: number; overlapB: number } | null>;
  }>;
  /** Per adapter: ||Q^T P||_F^2 / min(r, K) of span(A_i^T) against basisA and span(B_i) against basisB (1 when r or K >= d). */
  factorOverlaps(args: { adapters: NativeModulePair[]; basisA: Matrix; basisB: Matrix; overlapA: Float64Array; overlapB: Float64Array }): Promise<void>;

  /**
   * Frees what the build and analyze kernels keep from module to module (stacks, factors
   * kept for projecting: hundreds of MiB for 7B-sized modules), on the thread that holds it.
   */
  releaseScratch(args: Record<string, never>): Promise<void>;

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

  // Training (native/addon/train_jobs.cpp): synchronous, in place on the caller's arrays
  // (the arguments are all read before any pointer is taken, so no JavaScript runs while
  // the native loop holds them); cheap per-element work, so no thread hop.
  /** Groups of [param, grad, exp_avg, exp_avg_sq]. */
  trainAdamStep(tensors: readonly Float32Array[], stepSize: number, invBc2Sqrt: number, keep: number, l2: number, beta1: number, beta2: number, eps: number): void;
  /** Groups of [param, grad, momentum_buffer or null]. */
  trainSgdStep(tensors: readonly (Float32Array | null)[], lr: number, momentum: number, oneMinusDamp: number, weightDecay: number, nesterov: boolean, first: boolean): void;
  trainReluForward(x: Float32Array, y: Float32Array): void;
  trainReluBackward(y: Float32Array, dy: Float32Array, dx: Float32Array): void;
  trainAllFinite(arrays: readonly Float32Array[]): boolean;
  /** Mean softmax cross-entropy of logits (rows x classes) against labels (checked: ERR_INVALID_ARGUMENT out of range); grad = (softmax - onehot) / rows. */
  trainSoftmaxCrossEntropy(logits: Float32Array, rows: number, classes: number, labels: Uint8Array | Uint16Array | Int32Array, grad: Float32Array | null): { loss: number; correct: number };
  /** dst's row k = src's row order[start + k] (src: rows of `cols`); ERR_INVALID_ARGUMENT for an index past src's rows. */
  trainGatherRows(src: Float32Array, cols: number, order: Uint32Array, start: number, end: number, dst: Float32Array): void;
  /** Mean squared error over all elements; grad = 2 (output - target) / count. */
  trainMeanSquaredError(output: Float32Array, target: Float32Array, grad: Float32Array | null): number;
  // A sequential model's passes, one job each (native/addon/train_model_jobs.cpp).
  /** Every layer (its ReLU in place on its output) into outputs[i]. */
  trainModelForward(args: { x: Matrix; layers: readonly NativeModelLayer[]; outputs: readonly Matrix[] }): Promise<void>;
  /** Every trainable layer's gradients from dy (dL/d outputs[last]), through the layers after the first trainable one. */
  trainModelBackward(args: { x: Matrix; layers: readonly NativeModelLayer[]; outputs: readonly Matrix[]; dy: Matrix }): Promise<void>;
  /** Forward, the loss (dL/d outputs[last] into grad), backward: one training step's passes; no backward when the loss is not finite. */
  trainModelStep(args: {
    x: Matrix;
    layers: readonly NativeModelLayer[];
    outputs: readonly Matrix[];
    loss: 'cross-entropy' | 'mse';
    targets: Uint8Array | Uint16Array | Int32Array | Matrix;
    grad: Matrix;
  }): Promise<{ loss: number; correct: number | null }>;
}

/** One layer of trainModelForward/Backward; biases (and dBias) as 1 x d_out matrices. Gradients: backward only. */
export type NativeModelLayer = { relu: boolean; weight: Matrix | null; bias: Matrix | null } & (
  | { kind: 'linear'; dWeight?: Matrix | null; dBias?: Matrix | null }
  | { kind: 'lora'; A: Matrix; B: Matrix; scale: number; dA?: Matrix; dB?: Matrix }
  | { kind: 'eigenlora'; componentsA: Matrix; alpha: Matrix; beta: Matrix; componentsB: Matrix; scale: number; order: NativeOrder; dAlpha?: Matrix; dBeta?: Matrix }
);

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
