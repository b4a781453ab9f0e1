/** Seeded random inputs for tests: each test draws fresh data from its own seed. */
import { matrix, type Matrix } from '../../lib/index.js';
import { mulberry32 } from '../../lib/random.js';

/** mulberry32: small, fast, seeded; different from the native generator on purpose. */
export const rng = mulberry32;

/** Standard normal draws (Box-Muller). */
export function gaussian(random: () => number): () => number {
  return () => {
    const u = 1 - random();
    const v = random();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
}

/** A rows x cols matrix of N(0, scale^2) entries. */
export function randomMatrix(rows: number, cols: number, seed: number, scale = 1): Matrix {
  const g = gaussian(rng(seed));
  const m = matrix(rows, cols);
  for (let i = 0; i < m.data.length; i++) m.data[i] = g() * scale;
  return m;
}

/** A random seed per test run, printed by the test on failure so it can be replayed. */
export function freshSeed(): number {
  const fromEnv = process.env.EIGENLORAX_TEST_SEED;
  return fromEnv ? Number(fromEnv) : Math.floor(Math.random() * 2 ** 31);
}
