/**
 * The LoRA-factor side of combineAdapters: inputs resolved to factors, grouped per module,
 * and each module's combination (PEFT's linear and cat, the stacked SVD, the re-factoring
 * of a dense delta).
 */
import { openAdapter, OpenedAdapter } from '../adapters/open.js';
import { f32LoraModule } from '../adapters/module.js';
import { adapterFormats, type AdapterFormat, type LoraLayout, type LoraModule } from '../adapters/types.js';
import { EigenLoraxError } from '../errors.js';
import { orthonormalize, rsvd } from '../linalg.js';
import { addLowRank, linearBackward, linearForward } from '../lowrank.js';
import { matrix, type Matrix } from '../matrix.js';
import { resolveAdapter, type ResolvedAdapter } from '../merge/adapters.js';
import type { MergeAdapterInput } from '../merge/types.js';
import { invalid } from '../validate.js';
import { moduleUnion } from './checks.js';
import { coreSvd } from './coefficients.js';
import { numericalRank, SMALL_SVD_LIMIT } from './small.js';

export interface Term {
  /** Position among the inputs. */
  index: number;
  A: Matrix;
  B: Matrix;
  scale: number;
  weight: number;
}

export interface ModuleGroup {
  name: string;
  dIn: number;
  dOut: number;
  layout: LoraLayout;
  convKernel: number[] | null;
  fanInFanOut: boolean;
  terms: Term[];
}

export interface Resolved {
  label: string;
  format: AdapterFormat | null;
  baseModel: string | null;
  modules: ResolvedAdapter['modules'];
}

export async function resolveInput(input: MergeAdapterInput, i: number): Promise<Resolved> {
  const format = (f: unknown): AdapterFormat | null => ((adapterFormats as readonly unknown[]).includes(f) ? (f as AdapterFormat) : null);
  if (typeof input === 'string') {
    if (input.length === 0) throw invalid('a path (non-empty string)', `adapters[${i}]`, input);
    const opened = await openAdapter(input);
    try {
      const r = await resolveAdapter(opened, 1, i);
      return { label: `adapters[${i}] (${input})`, format: opened.format, baseModel: opened.baseModel, modules: r.modules };
    } finally {
      await opened.close();
    }
  }
  if (input instanceof OpenedAdapter) {
    const r = await resolveAdapter(input, 1, i);
    return { label: r.label, format: input.format, baseModel: input.baseModel, modules: r.modules };
  }
  if (typeof input !== 'object' || input === null || !('modules' in input)) {
    throw invalid('an adapter path, an opened or loaded adapter, or coefficients', `adapters[${i}]`, input);
  }
  const r = await resolveAdapter(input, 1, i);
  const baseModel = typeof input.baseModel === 'string' ? input.baseModel : null;
  return { label: r.label, format: format(input.format), baseModel, modules: r.modules };
}

export function groupModules(resolved: readonly Resolved[], weights: readonly number[], policy: 'same' | 'union'): ModuleGroup[] {
  const union = moduleUnion(
    resolved.map((r) => r.modules.map((m) => m.name)),
    policy,
    resolved.map((r) => r.label),
  );
  const groups: ModuleGroup[] = [];
  for (const [name, has] of union) {
    let group: ModuleGroup | null = null;
    for (const i of has) {
      const m = resolved[i]!.modules.find((x) => x.name === name)!;
      const kernel = m.convKernel?.join('x') ?? null;
      if (group === null) {
        group = { name, dIn: m.A.cols, dOut: m.B.rows, layout: m.layout, convKernel: m.convKernel, fanInFanOut: m.fanInFanOut, terms: [] };
      } else if (
        m.A.cols !== group.dIn ||
        m.B.rows !== group.dOut ||
        m.layout !== group.layout ||
        kernel !== (group.convKernel?.join('x') ?? null) ||
        m.fanInFanOut !== group.fanInFanOut
      ) {
        const first = resolved[group.terms[0]!.index]!.label;
        const describe = (dIn: number, dOut: number, layout: string, k: string | null, f: boolean) =>
          `${dIn} -> ${dOut} ${layout}${k ? ` kernel ${k}` : ''}${f ? ' fan_in_fan_out' : ''}`;
        throw new EigenLoraxError(
          `module ${JSON.stringify(name)}: ${resolved[i]!.label} has ${describe(m.A.cols, m.B.rows, m.layout, kernel, m.fanInFanOut)} but ` +
            `${first} has ${describe(group.dIn, group.dOut, group.layout, group.convKernel?.join('x') ?? null, group.fanInFanOut)}`,
          'ERR_SHAPE_MISMATCH',
        );
      }
      group.terms.push({ index: i, A: m.A, B: m.B, scale: m.scale, weight: weights[i]! });
    }
    groups.push(group!);
  }
  return groups;
}

/** The combined module: scale 1 (`lora_alpha = r`, no rsLoRA), the weights being inside the factors. */
export function outputModule(g: ModuleGroup, A: Matrix, B: Matrix): LoraModule {
  return f32LoraModule(g, A, B, A.rows, false);
}

/** PEFT `linear`: A = sum sqrt(w s) A_i, B = sum sqrt(w s) B_i (equal ranks, w s >= 0). */
export function peftLinear(g: ModuleGroup, labels: readonly string[]): { A: Matrix; B: Matrix } {
  const r = g.terms[0]!.A.rows;
  for (const t of g.terms) {
    if (t.A.rows !== r) {
      throw new EigenLoraxError(
        `module ${JSON.stringify(g.name)}: PEFT's linear combination needs equal ranks, but ${labels[t.index]} has rank ${t.A.rows} ` +
          `and ${labels[g.terms[0]!.index]} rank ${r}; use cat or svd (or coefficients on a subspace for the exact weighted sum)`,
        'ERR_SHAPE_MISMATCH',
      );
    }
    if (t.weight * t.scale < 0) {
      throw new EigenLoraxError(
        `module ${JSON.stringify(g.name)}: PEFT's linear combination takes sqrt(weight x scale) of each adapter, but ${labels[t.index]} ` +
          `has weight x scale = ${t.weight * t.scale} < 0; use cat or svd for negative weights`,
        'ERR_INVALID_ARGUMENT',
      );
    }
  }
  const A = new Float64Array(r * g.dIn);
  const B = new Float64Array(g.dOut * r);
  for (const t of g.terms) {
    const c = Math.sqrt(t.weight * t.scale);
    for (let e = 0; e < A.length; e++) A[e]! += c * t.A.data[e]!;
    for (let e = 0; e < B.length; e++) B[e]! += c * t.B.data[e]!;
  }
  return { A: matrix(r, g.dIn, Float32Array.from(A)), B: matrix(g.dOut, r, Float32Array.from(B)) };
}

/** PEFT `cat`: A = [w_1 s_1 A_1; ...] (sum r x d_in), B = [B_1 ...] (d_out x sum r). */
export function concatenate(g: ModuleGroup, weighted: 'A' | 'B'): { A: Matrix; B: Matrix } {
  const total = g.terms.reduce((n, t) => n + t.A.rows, 0);
  const A = matrix(total, g.dIn);
  const B = matrix(g.dOut, total);
  let offset = 0;
  for (const t of g.terms) {
    const r = t.A.rows;
    const c = t.weight * t.scale;
    const cA = weighted === 'A' ? c : 1;
    const cB = weighted === 'B' ? c : 1;
    const a = A.data.subarray(offset * g.dIn, (offset + r) * g.dIn);
    for (let e = 0; e < a.length; e++) a[e] = cA * t.A.data[e]!;
    for (let i = 0; i < g.dOut; i++) {
      for (let j = 0; j < r; j++) B.data[i * total + offset + j] = cB * t.B.data[i * r + j]!;
    }
    offset += r;
  }
  return { A, B };
}

/** x^T y for row-major x (n x p) and y (n x q), natively: linearBackward's dWeight = dy^T x. */
async function innerProducts(x: Matrix, y: Matrix): Promise<Matrix> {
  const { dWeight } = await linearBackward(y, x, {}, { inputGrad: false, weightGrad: true });
  return dWeight!;
}

/**
 * The best rank-`keep` approximation of sum_i w_i s_i B_i A_i (keep = a number, or the
 * numerical rank above `tolerance` when keep is null) from the stacked factors:
 * B_cat = [w_i s_i B_i] = Q_B R_B, A_cat^T = [A_i^T] = Q_A R_A, core R_B R_A^T = P S Q^T,
 * so the sum is (Q_B P) S (Q_A Q)^T. Never forms d_out x d_in unless the stacked rank
 * exceeds d_in or d_out (then the sum is at most that small, and is formed).
 */
export async function stackedSvd(
  g: ModuleGroup,
  keep: number | null,
  factors: 'balanced' | 'singular',
  tolerance: number,
  maxDenseElements: number,
): Promise<{ A: Matrix; B: Matrix }> {
  const R = g.terms.reduce((n, t) => n + t.A.rows, 0);
  let QB: Matrix | null = null;
  let QA: Matrix | null = null;
  let svd: { U: Float64Array; S: Float64Array; V: Float64Array; p: number };
  if (R <= g.dOut && R <= g.dIn) {
    const { A: Acat, B: Bcat } = concatenate(g, 'B'); // B_cat = [w s B_i], A_cat = [A_i]
    const AcatT = matrix(g.dIn, R);
    for (let t = 0; t < R; t++) for (let j = 0; j < g.dIn; j++) AcatT.data[j * R + t] = Acat.data[t * g.dIn + j]!;
    QB = await orthonormalize(Bcat);
    QA = await orthonormalize(AcatT);
    const RB = await innerProducts(QB, Bcat); // R x R
    const RA = await innerProducts(QA, AcatT); // R x R
    let core: Float64Array;
    if (R <= SMALL_SVD_LIMIT) {
      core = new Float64Array(R * R);
      for (let i = 0; i < R; i++) {
        for (let j = 0; j < R; j++) {
          let sum = 0;
          for (let t = 0; t < R; t++) sum += RB.data[i * R + t]! * RA.data[j * R + t]!;
          core[i * R + j] = sum;
        }
      }
    } else {
      core = Float64Array.from((await linearForward(RB, { weight: RA })).data);
    }
    svd = await coreSvd(core, R, R, keep ?? R);
  } else {
    // The stacked rank exceeds a side: form the sum (natively), as PEFT does.
    if (g.dOut * g.dIn > maxDenseElements) {
      throw new EigenLoraxError(
        `module ${JSON.stringify(g.name)}: the stacked rank ${R} exceeds d_in or d_out, so the ${g.dOut} x ${g.dIn} sum is formed, ` +
          `more than maxDenseElements = ${maxDenseElements} entries; raise maxDenseElements or use cat`,
        'ERR_INVALID_ARGUMENT',
      );
    }
    const dense = matrix(g.dOut, g.dIn);
    for (const t of g.terms) await addLowRank(dense, { A: t.A, B: t.B, scale: t.weight * t.scale });
    svd = await coreSvd(Float64Array.from(dense.data), g.dOut, g.dIn, keep ?? Math.min(g.dOut, g.dIn));
  }
  const k = Math.max(1, Math.min(svd.p, keep ?? numericalRank(svd.S, tolerance)));
  const left = matrix(QB ? R : g.dOut, k);
  const right = matrix(QA ? R : g.dIn, k);
  for (let j = 0; j < k; j++) {
    const sigma = svd.S[j]!;
    const l = factors === 'balanced' ? Math.sqrt(sigma) : sigma;
    const r = factors === 'balanced' ? Math.sqrt(sigma) : 1;
    for (let i = 0; i < left.rows; i++) left.data[i * k + j] = svd.U[i * svd.p + j]! * l;
    for (let i = 0; i < right.rows; i++) right.data[i * k + j] = svd.V[i * svd.p + j]! * r;
  }
  // B = Q_B left (d_out x k); A = right^T Q_A^T (k x d_in).
  const leftT = transpose(left);
  const rightT = transpose(right);
  const B = QB ? await linearForward(QB, { weight: leftT }) : left;
  const A = QA ? await linearForward(rightT, { weight: QA }) : rightT;
  return { A, B };
}

function transpose(m: Matrix): Matrix {
  const t = matrix(m.cols, m.rows);
  for (let i = 0; i < m.rows; i++) for (let j = 0; j < m.cols; j++) t.data[j * m.rows + i] = m.data[i * m.cols + j]!;
  return t;
}

/** rsvd of a combined delta to rank k: B = U S, A = V^T (PEFT's convention). */
export async function refactor(delta: Matrix, k: number, seed: number, oversample: number | undefined, powerIters: number | undefined): Promise<{ A: Matrix; B: Matrix }> {
  const { U, S, V } = await rsvd(delta, {
    rank: k,
    seed,
    ...(oversample === undefined ? {} : { oversample }),
    ...(powerIters === undefined ? {} : { powerIters }),
  });
  for (let i = 0; i < U.rows; i++) for (let j = 0; j < k; j++) U.data[i * k + j] = U.data[i * k + j]! * S[j]!;
  return { A: transpose(V), B: U };
}
