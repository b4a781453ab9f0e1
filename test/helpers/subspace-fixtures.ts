/**
 * Synthetic adapters for the subspace tests: adapters drawn from a planted subspace plus
 * noise (A_i = C_i^T V^T + noise, B_i = U D_i + noise with orthonormal V, U), adapters in
 * memory in the shape loadAdapter returns, and float64 dense references (dW formed
 * explicitly, only for small sizes).
 */
import path from 'node:path';
import { matrix, type LoraAdapter, type LoraModule, type Matrix } from '../../lib/index.js';
import { basePeftConfig, writePeft, type FixtureTensor } from './adapter-fixtures.js';
import { gaussian, rng } from './random.js';
import * as ref from './reference.js';

export interface ModuleSpec {
  name: string;
  A: Matrix;
  B: Matrix;
  alpha?: number;
  rslora?: boolean;
  fanInFanOut?: boolean;
}

/** An adapter in memory, as loadAdapter returns it. */
export function memoryAdapter(modules: ModuleSpec[], options: { format?: 'peft' | 'diffusers' | 'kohya'; baseModel?: string | null } = {}): LoraAdapter {
  const map = new Map<string, LoraModule>();
  for (const m of modules) {
    const r = m.A.rows;
    const alpha = m.alpha ?? r;
    const rslora = m.rslora ?? false;
    map.set(m.name, {
      name: m.name,
      A: m.A,
      B: m.B,
      rank: r,
      alpha,
      scale: rslora ? alpha / Math.sqrt(r) : alpha / r,
      rslora,
      layout: 'linear',
      shapes: { A: [r, m.A.cols], B: [m.B.rows, r] },
      inFeatures: m.A.cols,
      outFeatures: m.B.rows,
      fanInFanOut: m.fanInFanOut ?? false,
      keys: { A: '', B: '' },
      dtypes: { A: 'F32', B: 'F32' },
    });
  }
  return { format: options.format ?? 'peft', baseModel: options.baseModel ?? 'tiny-base', source: null, modules: map, extras: new Map(), config: null, metadata: {} };
}

/** A rows x cols f32 matrix of N(0, scale^2) entries from `seed`. */
export function normal(rows: number, cols: number, seed: number, scale = 1): Matrix {
  const g = gaussian(rng(seed));
  const m = matrix(rows, cols);
  for (let i = 0; i < m.data.length; i++) m.data[i] = g() * scale;
  return m;
}

export interface Planted {
  /** d_in x kA, orthonormal (f64). */
  V: ref.Mat64;
  /** d_out x kB, orthonormal (f64). */
  U: ref.Mat64;
  dIn: number;
  dOut: number;
}

export function plantedBases(dIn: number, dOut: number, kA: number, kB: number, seed: number): Planted {
  return { V: ref.randomOrthonormal(dIn, kA, seed), U: ref.randomOrthonormal(dOut, kB, seed + 7919), dIn, dOut };
}

/**
 * One adapter's factors from the planted bases: A = C^T V^T + noise (r x d_in),
 * B = U D + noise (d_out x r), C and D standard normal, the noise N(0, noise^2) per entry
 * scaled so that `noise` is relative to the factor's RMS entry.
 */
export function plantedFactors(p: Planted, rank: number, seed: number, noise: number): { A: Matrix; B: Matrix } {
  const g = gaussian(rng(seed));
  const kA = p.V.cols;
  const kB = p.U.cols;
  const C = ref.zeros(kA, rank);
  const D = ref.zeros(kB, rank);
  for (let i = 0; i < C.data.length; i++) C.data[i] = g();
  for (let i = 0; i < D.data.length; i++) D.data[i] = g();
  const At = ref.matmul(p.V, C); // d_in x r
  const B = ref.matmul(p.U, D); // d_out x r
  const A = matrix(rank, p.dIn);
  const Bf = matrix(p.dOut, rank);
  // RMS entry of V C is sqrt(kA / d_in); of U D, sqrt(kB / d_out).
  const sa = noise * Math.sqrt(kA / p.dIn);
  const sb = noise * Math.sqrt(kB / p.dOut);
  for (let i = 0; i < rank; i++) for (let j = 0; j < p.dIn; j++) A.data[i * p.dIn + j] = At.data[j * rank + i]! + sa * g();
  for (let i = 0; i < Bf.data.length; i++) Bf.data[i] = B.data[i]! + sb * g();
  return { A, B: Bf };
}

/** dW = s B A in f64 (d_out x d_in). */
export function denseDelta(A: Matrix, B: Matrix, scale: number): ref.Mat64 {
  const dw = ref.matmul(B, A);
  for (let i = 0; i < dw.data.length; i++) dw.data[i]! *= scale;
  return dw;
}

export function frobenius(a: ref.Mat64): number {
  return ref.frobenius(a);
}

/** ||a - b||_F in f64. */
export function distance(a: ref.Mat64, b: ref.Mat64): number {
  return ref.frobeniusDistance(a, b);
}

/** A random well-conditioned invertible r x r matrix (f64) and its inverse: Q1 diag(spread) Q2. */
export function invertible(r: number, seed: number, spread = 10): { G: ref.Mat64; inverse: ref.Mat64 } {
  const q1 = ref.randomOrthonormal(r, r, seed);
  const q2 = ref.randomOrthonormal(r, r, seed + 1);
  const d = Float64Array.from({ length: r }, (_, i) => spread ** (1 - (2 * i) / Math.max(1, r - 1)));
  const G = ref.zeros(r, r);
  const inverse = ref.zeros(r, r);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < r; j++) {
      let g = 0;
      let h = 0;
      for (let k = 0; k < r; k++) {
        g += q1.data[i * r + k]! * d[k]! * q2.data[j * r + k]!; // Q1 D Q2^T
        h += q2.data[i * r + k]! * (1 / d[k]!) * q1.data[j * r + k]!; // Q2 D^-1 Q1^T
      }
      G.data[i * r + j] = g;
      inverse.data[i * r + j] = h;
    }
  }
  return { G, inverse };
}

/** (B G, G^-1 A) rounded to f32. */
export function regauge(A: Matrix, B: Matrix, g: { G: ref.Mat64; inverse: ref.Mat64 }): { A: Matrix; B: Matrix } {
  return { A: ref.toF32(ref.matmul(g.inverse, A)), B: ref.toF32(ref.matmul(B, g.G)) };
}

/** Max |Q^T Q - I|. */
export function orthonormalityDefect(q: Matrix): number {
  return ref.orthonormalityDefect(q);
}

/** The PEFT folders of {@link writePlantedPeft}: modules, sizes and config. */
export interface PlantedPeftSpec {
  modules: readonly string[];
  /** d_in = d_out of every module. */
  d: number;
  rank: number;
  /** The planted subspace's dimension per side. */
  planted: number;
  noise: number;
  alpha: number;
  targetModules: string[];
  baseModel: string;
}

/** `count` PEFT folders `<dir>/task-<i>` (square modules), factors from one planted subspace per module and side. */
export async function writePlantedPeft(dir: string, count: number, seed: number, s: PlantedPeftSpec): Promise<string[]> {
  const bases = s.modules.map((_, m) => plantedBases(s.d, s.d, s.planted, s.planted, seed + 100 * m));
  const paths: string[] = [];
  for (let i = 0; i < count; i++) {
    const tensors: FixtureTensor[] = [];
    s.modules.forEach((name, m) => {
      const { A, B } = plantedFactors(bases[m]!, s.rank, seed + 7 * i + 100 * m + 1, s.noise);
      tensors.push(
        { key: `base_model.model.${name}.lora_A.weight`, shape: [s.rank, s.d], data: A.data },
        { key: `base_model.model.${name}.lora_B.weight`, shape: [s.d, s.rank], data: B.data },
      );
    });
    const folder = path.join(dir, `task-${i}`);
    await writePeft(folder, tensors, { ...basePeftConfig(), r: s.rank, lora_alpha: s.alpha, target_modules: s.targetModules, base_model_name_or_path: s.baseModel });
    paths.push(folder);
  }
  return paths;
}
