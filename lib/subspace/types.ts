/**
 * The in-memory model of an EigenLoRAx subspace (DESIGN §1) and of an adapter's
 * coefficients on it.
 *
 * Per module the subspace holds two orthonormal bases: `componentsA` (`V_A`, `d_in x K_A`)
 * spans the adapters' `A` rows, `componentsB` (`U_B`, `d_out x K_B`) the adapters' `B`
 * columns. An adapter's coefficients on a module are `alpha` (`K_A x r`) and `beta`
 * (`K_B x r`), and its reconstruction is
 *
 *     A_hat = alpha^T V_A^T (+ meanA in every row),   B_hat = U_B beta (+ meanB in every column)
 *     dW_hat = scale * B_hat A_hat
 *
 * where `scale` is the coefficients' own `scale`:
 *  - canonical stacking: the factors that are projected are the balanced SVD factors of
 *    `dW = s B A`, which carry the adapter's scale inside, so `scale` is 1 (an exported
 *    adapter has `lora_alpha = r`, no rsLoRA);
 *  - raw stacking: the published factors are projected as they are, so `scale` is the
 *    adapter's own (`lora_alpha / r` or `/ sqrt(r)`), and an exported adapter keeps its
 *    `lora_alpha` and rsLoRA flag.
 * Either way `dW_hat` is in the adapter's own scale and `error` is
 * `||dW - dW_hat||_F`, computed without forming a `d_out x d_in` matrix.
 */
import type { Matrix } from '../matrix.js';
import type { AdapterFormat, LoraLayout } from '../adapters/types.js';

/** How the factors are stacked before the SVD (DESIGN §1). */
export type Stacking = 'canonical' | 'raw';
/** Canonical stacking only: every adapter counts the same (`equal`) or by its `||dW||_F` (`scale`). */
export type Weighting = 'equal' | 'scale';
/** A number for each side. */
export interface PerSide<T> {
  A: T;
  B: T;
}

/** A file an adapter was read from, with its sha256 (null when it could not be hashed). */
export interface SourceFile {
  /** Absolute path. */
  path: string;
  /** Size in bytes when hashed, else null. */
  bytes: number | null;
  /** Lower-case hex sha256 of the whole file, else null (not hashed). */
  sha256: string | null;
}

/** An adapter that went into a subspace (or was projected on one). */
export interface SubspaceSource {
  /** A short unique name: the folder or file name, or `adapter-<i>` for an adapter with no source. */
  name: string;
  /** The path the adapter was opened from (absolute), or null for an adapter built in memory. */
  path: string | null;
  format: AdapterFormat;
  baseModel: string | null;
  /** The files the adapter was read from (config first), hashed unless `hashSources: false`. */
  files: SourceFile[];
}

/** The settings a subspace was built with: everything needed to build it again from the sources. */
export interface SubspaceSettings {
  stacking: Stacking;
  /** null for raw stacking (where weighting does not apply). */
  weighting: Weighting | null;
  center: boolean;
  /** Fixed K per side (before augmentation), or null when K was chosen by `variance`. */
  components: PerSide<number> | null;
  /** The explained-variance threshold, or null when K was fixed. */
  variance: number | null;
  /** The cap on K in variance mode (null when K was fixed). */
  maxComponents: PerSide<number> | null;
  /** Augmentation directions requested per side (fewer where a side has no room). */
  augment: PerSide<number>;
  oversample: number;
  powerIters: number;
  /** The seed; module `m` uses `moduleSeed(seed, m)` (see `moduleSeed`). */
  seed: number;
}

/** One module of a subspace. */
export interface SubspaceModule {
  name: string;
  /** Columns of the adapters' A (flattened `in * kh * kw` for conv LoRA). */
  dIn: number;
  /** Rows of the adapters' B. */
  dOut: number;
  layout: LoraLayout;
  /** Conv LoRA: the kernel of the down-projection; else null. */
  convKernel: number[] | null;
  fanInFanOut: boolean;
  /** Columns of componentsA: principal components, then `augmentA` augmentation directions. */
  kA: number;
  kB: number;
  /** How many of the last columns of componentsA are augmentation (random orthonormal) directions. */
  augmentA: number;
  augmentB: number;
  /** `V_A`, `d_in x kA`, orthonormal columns. */
  componentsA: Matrix;
  /** `U_B`, `d_out x kB`, orthonormal columns. */
  componentsB: Matrix;
  /** Singular values of the stacked A side for the principal components (`kA - augmentA`), descending. */
  singularA: Float32Array;
  singularB: Float32Array;
  /** Squared Frobenius norm of the stacked A side (after weighting and centring). */
  energyA: number;
  energyB: number;
  /** Fraction of `energyA` that the principal components explain (augmentation not counted); 1 when the energy is 0. */
  explainedA: number;
  explainedB: number;
  /** The row mean of the stacked A side (`d_in`) when centred, else null; added back on reconstruction. */
  meanA: Float32Array | null;
  /** The row mean of the stacked B side (`d_out`) when centred, else null. */
  meanB: Float32Array | null;
  /** Names of the sources that have this module (those the basis was built from), in source order. */
  adapters: string[];
  /** Their ranks, in the same order. */
  ranks: number[];
}

/** Per-module and per-side notes from a build. */
export interface SubspaceBuildReport {
  /** Modules that only some adapters have: which have it and which do not. */
  partialModules: Array<{ module: string; adapters: string[]; missing: string[] }>;
  /** Where fewer components were taken than asked (K is at most min(d, sum of ranks)). */
  clamped: Array<{ module: string; side: 'A' | 'B'; requested: number; used: number }>;
  /** Variance mode: module sides where the cap was reached before the threshold. */
  belowThreshold: Array<{ module: string; side: 'A' | 'B'; components: number; explained: number }>;
  /** Where fewer augmentation directions fit than asked (K + P is at most d). */
  augmentClamped: Array<{ module: string; side: 'A' | 'B'; requested: number; used: number }>;
  /** Mean over modules of the mean over adapters of `||dW - dW_hat||_F / ||dW||_F`, in-sample. */
  inSampleError: number;
  /**
   * Milliseconds: the whole build; wall time while factors were being read (any module);
   * wall time while a native kernel (build, basis completion, projection) was running or
   * queued behind another (kernels run one at a time, so this is the compute thread's busy
   * time); hashing the source files (in the background).
   */
  timings: { totalMs: number; readMs: number; nativeMs: number; hashMs: number };
  /**
   * Storage like with like: the adapters' factors of the built modules in their stored
   * dtypes against the basis and coefficients as the subspace files write them (F32).
   */
  storage?: import('./savings.js').StoredSavings;
  /** Modules built out of core (their stacks would have passed `memoryBudget`). */
  streamedModules?: string[];
  /**
   * For a sharded build: this shard, the shard of every module of the whole build (in build
   * order), and the source files this shard hashed (indices over every source's files in
   * order; null when the build hashes none).
   */
  shard?: { index: number; count: number; modules: Array<[string, number]>; hashed: number[] | null } | null;
}

/** A subspace: the components of every module, the settings, the sources. */
export interface Subspace {
  /** Version of the file format this subspace is saved in. */
  formatVersion: number;
  /** sha256 (hex) of the sidecar fields and the tensors: changes whenever anything does. */
  id: string;
  /** eigenlorax version that built it. */
  libraryVersion: string;
  settings: SubspaceSettings;
  /** The adapters it was built from, in the order given. */
  sources: SubspaceSource[];
  /** The base model every source names, when they agree; else null. */
  baseModel: string | null;
  /** Modules by name, in natural name order. */
  modules: Map<string, SubspaceModule>;
  /**
   * The coefficients of every source, in source order (the in-sample projection), from
   * `buildSubspace`; empty for a subspace read by `loadSubspace`.
   */
  coefficients: AdapterCoefficients[];
  /** What the build noticed; null for a subspace read by `loadSubspace`. */
  report: SubspaceBuildReport | null;
}

/** One module's coefficients. */
export interface ModuleCoefficients {
  name: string;
  /** Columns of alpha and beta: the adapter's rank. */
  rank: number;
  /** `K_A x r`. */
  alpha: Matrix;
  /** `K_B x r`. */
  beta: Matrix;
  /** The factor of the reconstruction `dW_hat = scale B_hat A_hat`: 1 (canonical) or the adapter's scale (raw). */
  scale: number;
  /** The adapter's own lora_alpha, rsLoRA flag and scale for this module. */
  adapterAlpha: number;
  rslora: boolean;
  adapterScale: number;
  /** `||dW||_F` (in the adapter's own scale). */
  norm: number;
  /** `||dW - dW_hat||_F`. */
  error: number;
  /** `error / norm` (0 when both are 0). */
  relativeError: number;
}

/** An adapter's coefficients on a subspace. */
export interface AdapterCoefficients {
  /** The `id` of the subspace they belong to. */
  subspaceId: string;
  stacking: Stacking;
  /** The adapter they were computed from. */
  adapter: SubspaceSource;
  /** Modules by name, in the subspace's order. */
  modules: Map<string, ModuleCoefficients>;
  /** Modules of the adapter that the subspace does not have (left out with `missing: 'skip'`, or outside the build's `modules` filter). */
  skipped: string[];
  /** `sqrt(sum norm^2)` over the modules. */
  norm: number;
  /** `sqrt(sum error^2)`. */
  error: number;
  /** `error / norm`: the whole adapter's relative Frobenius error. */
  relativeError: number;
}
