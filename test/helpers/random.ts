/** Seeded random inputs for tests: each test draws fresh data from its own seed. */
import { matrix, type Matrix } from '../../lib/index.js';

/** mulberry32: small, fast, seeded; different from the native generator on purpose. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

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
