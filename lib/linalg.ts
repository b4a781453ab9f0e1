/**
 * Randomized SVD, orthonormalisation and basis completion (native, off the event loop).
 */
import { checkOperand, onDevice, nativeOperand, type Device, type Operand } from './cuda.js';
import { checkMatrix, matrix, type Matrix } from './matrix.js';
import * as ops from './native/ops.js';
import { withScratch } from './native/scratch.js';
import { argumentPlace, Count, OneOf, Options, parse, Type, type SameOptionNames } from './schema.js';
import { integer } from './validate.js';

export interface RsvdOptions {
  /** k: singular triplets to return, 1 <= k <= min(rows, cols). */
  rank: number;
  /** p: extra sketch columns (default 10). */
  oversample?: number;
  /** q: power iterations, each re-orthonormalised at both half steps (default 2). */
  powerIters?: number;
  /** Seed of the Gaussian test matrix (default 0): equal seeds give equal results. */
  seed?: number;
  /** 'auto' (default) takes the exact SVD when min(rows, cols) <= 2 (k + p). */
  method?: 'auto' | 'exact' | 'randomized';
  /**
   * Where it runs (lib/cuda.ts): on the GPU the same test matrix is drawn from the seed,
   * so both backends agree to rounding. Default: the GPU for a DeviceMatrix, else the CPU.
   */
  device?: Device;
}

export interface SvdResult {
  /** rows x k, orthonormal columns. */
  U: Matrix;
  /** k singular values, descending. */
  S: Float32Array;
  /** cols x k, orthonormal columns: matrix ~= U diag(S) V^T. */
  V: Matrix;
  /** Whether the exact path was taken. */
  exact: boolean;
}

const RsvdOptionsSchema = Options({
  rank: Count(1),
  oversample: Type.Optional(Count(0)),
  powerIters: Type.Optional(Count(0, 1000)),
  seed: Type.Optional(Count(0)),
  method: Type.Optional(OneOf(['auto', 'exact', 'randomized'] as const)),
  // Checked by onDevice (lib/cuda.ts).
  device: Type.Optional(Type.Unknown()),
});
const rsvdOptionNames: SameOptionNames<typeof RsvdOptionsSchema, RsvdOptions> = true;
void rsvdOptionNames;
const SeedOptions = Options({ seed: Type.Optional(Count(0)) });

/**
 * Truncated SVD by the randomized range finder of Halko, Martinsson and Tropp (2011).
 * Each column of U has its largest-magnitude entry positive (V follows).
 */
export async function rsvd(input: Operand, options: RsvdOptions): Promise<SvdResult> {
  const m = checkOperand(input, 'matrix');
  const o = parse(RsvdOptionsSchema, options, argumentPlace('options'));
  const rank = integer(o.rank, 'options.rank', 1, Math.min(m.rows, m.cols));
  const { oversample = 10, powerIters = 2, seed = 0, method = 'auto' } = o;
  const U = matrix(m.rows, rank);
  const V = matrix(m.cols, rank);
  const S = new Float32Array(rank);
  const args = { rank, oversample, powerIters, seed, method, U, S, V };
  const info = await withScratch(() =>
    onDevice(o.device as Device | undefined, [m], (device) => ops.rsvd(device, { ...args, matrix: nativeOperand(m, 'matrix') })),
  );
  return { U, S, V, exact: info.exact };
}

/** The Q factor of the thin QR of `input` (rows >= cols), with diag(R) >= 0 (CholeskyQR2 in float64 where well-conditioned, Householder otherwise). */
export async function orthonormalize(input: Matrix): Promise<Matrix> {
  const m = checkMatrix(input, 'matrix');
  const out = matrix(m.rows, m.cols);
  await ops.orthonormalize({ matrix: m, out });
  return out;
}

/**
 * `extra` random orthonormal directions orthogonal to the columns of `basis` (which
 * must be orthonormal): the augmentation step of EigenLoRAx. Seeded.
 */
export async function completeBasis(basis: Matrix, extra: number, options: { seed?: number } = {}): Promise<Matrix> {
  const b = checkMatrix(basis, 'basis');
  const seed = parse(SeedOptions, options, argumentPlace('options')).seed ?? 0;
  const count = integer(extra, 'extra', 1, b.rows - b.cols);
  const out = matrix(b.rows, count);
  await ops.completeBasis({ basis: b, seed, out });
  return out;
}
