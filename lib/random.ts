/**
 * The seeded random generator of eigenlorax (training, data splits): xoshiro128** (Blackman and Vigna),
 * seeded through splitmix32. Its whole state is four 32-bit words, so a checkpoint can
 * store it and a resumed run draws exactly the numbers the uninterrupted run would have.
 */
import { EigenLoraxError } from './errors.js';
import { integer } from './validate.js';

/**
 * mulberry32: a small seeded generator of uniform [0, 1) draws, for streams that need no
 * saved state (DARE's drop masks; test and benchmark data). Not the native generator.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function splitmix32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

export class Random {
  readonly #s = new Uint32Array(4);

  /** A generator seeded with `seed` (an integer >= 0; equal seeds give equal streams). */
  constructor(seed = 0) {
    const next = splitmix32(integer(seed, 'seed', 0));
    for (let i = 0; i < 4; i++) this.#s[i] = next();
    if (this.#s.every((v) => v === 0)) this.#s[0] = 1;
  }

  /** A generator continuing from a saved {@link Random.state}. */
  static fromState(state: readonly number[]): Random {
    const r = new Random(0);
    r.setState(state);
    return r;
  }

  /** The four state words (for checkpoints). */
  state(): number[] {
    return [...this.#s];
  }

  setState(state: readonly number[]): void {
    if (
      !Array.isArray(state) ||
      state.length !== 4 ||
      !state.every((v) => Number.isSafeInteger(v) && v >= 0 && v <= 0xffffffff) ||
      state.every((v) => v === 0)
    ) {
      throw new EigenLoraxError(`random state: expected four 32-bit words, not all zero,, received ${JSON.stringify(state)}`, 'ERR_INVALID_ARGUMENT');
    }
    this.#s.set(state);
  }

  /** A uniform 32-bit unsigned integer. */
  nextUint32(): number {
    const s = this.#s;
    const result = Math.imul(rotl(Math.imul(s[1] as number, 5) >>> 0, 7), 9) >>> 0;
    const t = ((s[1] as number) << 9) >>> 0;
    s[2] = (s[2] as number) ^ (s[0] as number);
    s[3] = (s[3] as number) ^ (s[1] as number);
    s[1] = (s[1] as number) ^ (s[2] as number);
    s[0] = (s[0] as number) ^ (s[3] as number);
    s[2] = (s[2] as number) ^ t;
    s[3] = rotl(s[3] as number, 11);
    return result;
  }

  /** A uniform double in [0, 1) with 53 random bits. */
  float(): number {
    const hi = this.nextUint32() >>> 5;
    const lo = this.nextUint32() >>> 6;
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** A uniform double in [low, high). */
  uniform(low: number, high: number): number {
    return low + (high - low) * this.float();
  }

  /** A standard normal draw (Box-Muller, one of the pair; no hidden cached state). */
  normal(): number {
    const u = 1 - this.float();
    const v = this.float();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  /** A uniform integer in [0, n), without modulo bias. */
  int(n: number): number {
    if (n <= 0 || n > 0x100000000) throw new EigenLoraxError(`random int: n must be in [1, 2^32], received ${n}`, 'ERR_INVALID_ARGUMENT');
    const limit = 0x100000000 - (0x100000000 % n);
    for (;;) {
      const x = this.nextUint32();
      if (x < limit) return x % n;
    }
  }

  /** Shuffles `array` in place (Fisher-Yates) and returns it. */
  shuffle<T extends { length: number; [i: number]: unknown }>(array: T): T {
    for (let i = array.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = array[i];
      array[i] = array[j];
      array[j] = t;
    }
    return array;
  }

  /** A random permutation of 0..n-1. */
  permutation(n: number): Uint32Array {
    const p = new Uint32Array(n);
    for (let i = 0; i < n; i++) p[i] = i;
    return this.shuffle(p);
  }

  /** Fills `out` with uniform draws in [low, high). */
  fillUniform(out: Float32Array, low: number, high: number): Float32Array {
    for (let i = 0; i < out.length; i++) out[i] = this.uniform(low, high);
    return out;
  }

  /** Fills `out` with N(0, std^2) draws. */
  fillNormal(out: Float32Array, std = 1): Float32Array {
    for (let i = 0; i < out.length; i++) out[i] = this.normal() * std;
    return out;
  }
}
