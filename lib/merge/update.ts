/**
 * The numeric core of a merge: `T += sum_i c_i B_i A_i` (or its transpose) on one stored
 * weight `T`, held as f32, row-major `rows x cols`: one native in-place `addLowRank` call
 * per orientation, with the terms concatenated (`A` rows stacked, `B` columns multiplied
 * by their coefficients), so no JavaScript pass over the weight. The sign of `c` flips for
 * an unmerge, which negates the product exactly.
 */
import type { Matrix } from '../matrix.js';
import * as ops from '../native/ops.js';

/** One adapter module's update on a stored weight: `coefficient * B A` (or its transpose). */
export interface UpdateTerm {
  /** `r x d_in` */
  A: Matrix;
  /** `d_out x r` */
  B: Matrix;
  coefficient: number;
  /** The stored weight is `d_in x d_out`: add `(B A)^T`. */
  transposed: boolean;
}
/** `[A_1; ..; A_N]` (`R x d_in`) and `[c_1 B_1 .. c_N B_N]` (`d_out x R`): the terms as one update. */
function stacked(terms: readonly UpdateTerm[]): { A: Matrix; B: Matrix } {
  if (terms.length === 1 && terms[0]?.coefficient === 1) return { A: terms[0].A, B: terms[0].B };
  const rank = terms.reduce((n, t) => n + t.A.rows, 0);
  const first = terms[0] as UpdateTerm;
  const dIn = first.A.cols;
  const dOut = first.B.rows;
  const a = new Float32Array(rank * dIn);
  const b = new Float32Array(dOut * rank);
  let offset = 0;
  for (const term of terms) {
    const r = term.A.rows;
    a.set(term.A.data, offset * dIn);
    const c = term.coefficient;
    const src = term.B.data;
    for (let i = 0; i < dOut; i++) for (let k = 0; k < r; k++) b[i * rank + offset + k] = c * (src[i * r + k] as number);
    offset += r;
  }
  return { A: { rows: rank, cols: dIn, data: a }, B: { rows: dOut, cols: rank, data: b } };
}

/**
 * Adds every term's update to `target` (`rows x cols`, row-major f32), in place. All terms
 * must fit the target's shape (checked by the caller; checked again natively). Returns the
 * multiply-adds spent in products.
 */
export async function addLowRankUpdates(
  target: Float32Array,
  rows: number,
  cols: number,
  terms: readonly UpdateTerm[],
): Promise<number> {
  let flops = 0;
  for (const transposed of [false, true]) {
    const group = terms.filter((t) => t.transposed === transposed && t.coefficient !== 0);
    if (group.length === 0) continue;
    const { A, B } = stacked(group);
    flops += rows * cols * A.rows;
    await ops.addLowRank({ target: { rows, cols, data: target }, A, B, scale: 1, transposed });
  }
  return flops;
}
