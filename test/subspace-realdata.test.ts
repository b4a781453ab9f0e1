/**
 * Subspaces of the five c_attn-only GPT-2 adapters in ../shared/realdata (see its README)
 * at K = 16: the in-sample mean relative dW errors of the three stacking modes match the
 * figures in DESIGN §1 (raw 0.202, canonical + scale 0.137, canonical + equal 0.084) and an
 * independent float64 computation written here (own QR and Jacobi SVD of the r x r cores,
 * top components from the eigen-decomposition of the stacks' Gram matrices), within 0.01;
 * the leave-one-out held-out error is about 0.91, and matches the float64 computation too.
 * When the folder is absent a single test says so and passes.
 */
import test from 'ava';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSubspace, leaveOneOut, loadAdapter, meanRelativeError, type BuildSubspaceOptions, type LoraAdapter } from '../lib/index.js';
import * as ref from './helpers/reference.js';

const repoRoot = path.resolve(fileURLToPath(new URL('../..', import.meta.url)));
const realdata = path.resolve(repoRoot, '..', 'shared', 'realdata');

const cAttnOnly = [
  'anirudh-ak__peft-gpt2__emotion6',
  'greulist137__Fine-Tuning-Gen-AI-Model__dair-emotion6',
  'stathopoan__Apply-Lightweight-Fine-Tuning-to-a-Foundation-LLM-Model__dair-emotion6',
  'yzzhome__Lightweight-Fine-Tuning__yelp5',
  'ybriz__generative-ai__imdb',
];
const K = 16;

const modes: Array<{ label: string; options: BuildSubspaceOptions; expected: number }> = [
  { label: 'raw', options: { stacking: 'raw' }, expected: 0.202 },
  { label: 'canonical + scale', options: { stacking: 'canonical', weighting: 'scale' }, expected: 0.137 },
  { label: 'canonical + equal', options: { stacking: 'canonical', weighting: 'equal' }, expected: 0.084 },
];

// ---- the float64 reference -------------------------------------------------------------------

type Mode = 'raw' | 'scale' | 'equal';
const modeOf = (o: BuildSubspaceOptions): Mode => (o.stacking === 'raw' ? 'raw' : (o.weighting as Mode));

interface Factors64 {
  /** d_in x r: A^T. */
  At: ref.Mat64;
  /** d_out x r. */
  B: ref.Mat64;
  scale: number;
}

/** The factors to stack, in f64: as published, or the balanced SVD factors of s B A (optionally weighted). */
function stackedFactors(f: Factors64, mode: Mode): { At: ref.Mat64; B: ref.Mat64 } {
  if (mode === 'raw') return { At: f.At, B: f.B };
  const qb = ref.gramSchmidt(f.B);
  const rb = ref.matmulTN(qb, f.B); // r x r
  const qa = ref.gramSchmidt(f.At);
  const ra = ref.matmulTN(qa, f.At); // r x r
  const core = ref.matmul(rb, ref.transpose(ra));
  for (let i = 0; i < core.data.length; i++) core.data[i]! *= f.scale;
  const svd = ref.jacobiSvd(core);
  let norm2 = 0;
  for (const s of svd.S) norm2 += s * s;
  const weight = mode === 'equal' ? norm2 ** -0.25 : 1;
  const root = Array.from(svd.S, (s) => Math.sqrt(s) * weight);
  const scaleCols = (m: ref.Mat64) => {
    for (let i = 0; i < m.rows; i++) for (let j = 0; j < m.cols; j++) m.data[i * m.cols + j]! *= root[j]!;
    return m;
  };
  return { B: scaleCols(ref.matmul(qb, svd.U)), At: scaleCols(ref.matmul(qa, svd.V)) };
}

/** [m_1 ... m_N] side by side. */
function hstack(blocks: ref.Mat64[]): ref.Mat64 {
  const rows = blocks[0]!.rows;
  const cols = blocks.reduce((n, b) => n + b.cols, 0);
  const out = ref.zeros(rows, cols);
  let at = 0;
  for (const b of blocks) {
    for (let i = 0; i < rows; i++) for (let j = 0; j < b.cols; j++) out.data[i * cols + at + j] = b.data[i * b.cols + j]!;
    at += b.cols;
  }
  return out;
}

/** The top k left singular vectors of M (d x n, n small) from the eigen-decomposition of M^T M. */
function topLeft(m: ref.Mat64, k: number): ref.Mat64 {
  const gram = ref.matmulTN(m, m); // n x n, symmetric PSD: its SVD is its eigen-decomposition
  const { U: w, S: lambda } = ref.jacobiSvd(gram);
  const wk = ref.leftCols(w, k);
  const u = ref.matmul(m, wk);
  for (let i = 0; i < u.rows; i++) for (let j = 0; j < k; j++) u.data[i * k + j]! /= Math.sqrt(lambda[j]!);
  return u;
}

/**
 * ||dW - dW_hat||_F / ||dW||_F with dW_hat = P_B dW P_A (what both stackings reconstruct:
 * U_B beta alpha^T V_A^T = U_B U_B^T (s B A) V_A V_A^T): the projection is orthogonal in
 * the Frobenius inner product, so ||dW - dW_hat||^2 = ||dW||^2 - ||U_B^T dW V_A||^2.
 */
function relativeError(f: Factors64, uB: ref.Mat64, vA: ref.Mat64): number {
  const btb = ref.matmulTN(f.B, f.B);
  const ata = ref.matmulTN(f.At, f.At);
  let norm2 = 0;
  for (let i = 0; i < btb.rows; i++) for (let j = 0; j < btb.cols; j++) norm2 += btb.data[i * btb.cols + j]! * ata.data[j * ata.cols + i]!;
  norm2 *= f.scale * f.scale;
  const core = ref.matmul(ref.matmulTN(uB, f.B), ref.matmulTN(f.At, vA)); // K x K
  let kept = 0;
  for (const x of core.data) kept += x * x;
  kept *= f.scale * f.scale;
  return Math.sqrt(Math.max(0, norm2 - kept) / norm2);
}

/** Mean over modules of the mean over `heldOut` adapters of the relative error on a basis from `basis` adapters. */
function reference64(factors: Map<string, Factors64[]>, mode: Mode, basis: number[], heldOut: number[]): number {
  let sum = 0;
  for (const list of factors.values()) {
    const stacked = basis.map((i) => stackedFactors(list[i]!, mode));
    const vA = topLeft(hstack(stacked.map((s) => s.At)), K);
    const uB = topLeft(hstack(stacked.map((s) => s.B)), K);
    let moduleSum = 0;
    for (const i of heldOut) moduleSum += relativeError(list[i]!, uB, vA);
    sum += moduleSum / heldOut.length;
  }
  return sum / factors.size;
}

function factors64(adapters: LoraAdapter[]): Map<string, Factors64[]> {
  const out = new Map<string, Factors64[]>();
  for (const name of adapters[0]!.modules.keys()) {
    out.set(
      name,
      adapters.map((a) => {
        const m = a.modules.get(name)!;
        return { At: ref.transpose(m.A), B: ref.toF64(m.B), scale: m.scale };
      }),
    );
  }
  return out;
}

// ---- tests --------------------------------------------------------------------------------------

if (!existsSync(realdata)) {
  test('subspaces of real adapters: skipped', (t) => {
    t.log(`${realdata} does not exist: the real-adapter subspace tests are skipped (they need ../shared/realdata, see DESIGN.md §5)`);
    t.pass();
  });
} else {
  const paths = cAttnOnly.map((n) => path.join(realdata, 'gpt2', n));
  const loaded = Promise.all(paths.map((p) => loadAdapter(p)));
  const all = [0, 1, 2, 3, 4];

  test('five GPT-2 c_attn adapters at K = 16: in-sample errors of raw, canonical + scale, canonical + equal match DESIGN §1 and a float64 reference', async (t) => {
    const adapters = await loaded;
    t.deepEqual(adapters.map((a) => a.modules.size), [12, 12, 12, 12, 12]);
    const f64 = factors64(adapters);
    for (const { label, options, expected } of modes) {
      const started = performance.now();
      const subspace = await buildSubspace(paths, { ...options, components: K });
      const wall = performance.now() - started;
      const measured = meanRelativeError(subspace.coefficients);
      const reference = reference64(f64, modeOf(options), all, all);
      t.log(`${label}: in-sample ${measured.toFixed(4)} (float64 reference ${reference.toFixed(4)}, DESIGN ${expected}), build ${wall.toFixed(0)} ms`);
      t.is(subspace.report!.inSampleError, measured);
      t.true(Math.abs(measured - expected) <= 0.01, `${label}: ${measured} vs ${expected}`);
      t.true(Math.abs(measured - reference) <= 0.01, `${label}: ${measured} vs float64 ${reference}`);
      t.true(Math.abs(reference - expected) <= 0.01, `${label}: float64 ${reference} vs DESIGN ${expected}`);
      for (const m of subspace.modules.values()) {
        t.deepEqual([m.dIn, m.dOut, m.kA, m.kB, m.fanInFanOut], [768, 2304, K, K, true]);
      }
      t.true(subspace.sources.every((s) => s.files.every((f) => f.sha256 !== null && /^[0-9a-f]{64}$/.test(f.sha256))));
    }
  });

  test('five GPT-2 c_attn adapters: leave-one-out held-out error about 0.91 (canonical + equal, K = 16), matching the float64 reference', async (t) => {
    const adapters = await loaded;
    const f64 = factors64(adapters);
    const started = performance.now();
    const result = await leaveOneOut(paths, { components: K });
    const wall = performance.now() - started;
    let reference = 0;
    for (const i of all) reference += reference64(f64, 'equal', all.filter((j) => j !== i), [i]);
    reference /= all.length;
    // Mean over modules of the mean over adapters = mean over adapters of the mean over modules here (every adapter has every module).
    t.log(
      `held-out: ${result.heldOutError.toFixed(4)} (float64 reference ${reference.toFixed(4)}); per adapter ` +
        `${result.adapters.map((a) => a.coefficients!.relativeError.toFixed(3)).join(', ')}; ${wall.toFixed(0)} ms`,
    );
    t.true(Math.abs(result.heldOutError - 0.91) <= 0.03, `held-out ${result.heldOutError}`);
    t.true(Math.abs(result.heldOutError - reference) <= 0.01, `held-out ${result.heldOutError} vs float64 ${reference}`);
  });
}
