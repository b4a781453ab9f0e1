/**
 * Small dense float64 math for the cores of the combinations (`r x r`, `K_B x K_A`):
 * a thin SVD by one-sided Jacobi rotations. Never used on `d`-sized matrices.
 */

export interface SmallSvd {
  /** m x p, row-major, p = min(m, n); columns for zero singular values are zero. */
  U: Float64Array;
  /** p singular values, descending. */
  S: Float64Array;
  /** n x p, row-major. */
  V: Float64Array;
  p: number;
}

/** Cores larger than this go to the native SVD (f32) instead: Jacobi is O(n^3) per sweep in JS. */
export const SMALL_SVD_LIMIT = 256;

/**
 * Thin SVD of the m x n row-major f64 matrix `a`: a = U diag(S) V^T. One-sided Jacobi
 * (Hestenes) on the columns of a (of a^T when m < n), rotated until every pair is
 * orthogonal to 1e-15; relative accuracy near f64 roundoff for the sizes used here.
 */
export function smallSvd(a: Float64Array, m: number, n: number): SmallSvd {
  if (m < n) {
    const t = new Float64Array(n * m);
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) t[j * m + i] = a[i * n + j]!;
    const s = smallSvd(t, n, m);
    return { U: s.V, S: s.S, V: s.U, p: s.p };
  }
  // Columns of a, stored column after column (contiguous), and V = I.
  const g = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) g[j * m + i] = a[i * n + j]!;
  const v = new Float64Array(n * n);
  for (let j = 0; j < n; j++) v[j * n + j] = 1;
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      const op = p * m;
      for (let q = p + 1; q < n; q++) {
        const oq = q * m;
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        for (let i = 0; i < m; i++) {
          const x = g[op + i]!;
          const y = g[oq + i]!;
          alpha += x * x;
          beta += y * y;
          gamma += x * y;
        }
        if (gamma === 0 || Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < m; i++) {
          const x = g[op + i]!;
          const y = g[oq + i]!;
          g[op + i] = c * x - s * y;
          g[oq + i] = s * x + c * y;
        }
        const vp = p * n;
        const vq = q * n;
        for (let i = 0; i < n; i++) {
          const x = v[vp + i]!;
          const y = v[vq + i]!;
          v[vp + i] = c * x - s * y;
          v[vq + i] = s * x + c * y;
        }
      }
    }
    if (!rotated) break;
  }
  const norms = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    let sum = 0;
    for (let i = 0; i < m; i++) sum += g[j * m + i]! ** 2;
    norms[j] = Math.sqrt(sum);
  }
  const order = Array.from({ length: n }, (_, j) => j).sort((x, y) => norms[y]! - norms[x]!);
  const U = new Float64Array(m * n);
  const V = new Float64Array(n * n);
  const S = new Float64Array(n);
  order.forEach((from, to) => {
    const sigma = norms[from]!;
    S[to] = sigma;
    if (sigma > 0) for (let i = 0; i < m; i++) U[i * n + to] = g[from * m + i]! / sigma;
    for (let i = 0; i < n; i++) V[i * n + to] = v[from * n + i]!;
  });
  return { U, S, V, p: n };
}

/** The number of singular values above `relative` times the largest (0 when all are 0). */
export function numericalRank(S: Float64Array | Float32Array, relative: number): number {
  const top = S[0] ?? 0;
  if (!(top > 0)) return 0;
  let k = 0;
  while (k < S.length && S[k]! > relative * top) k++;
  return k;
}
