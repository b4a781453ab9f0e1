/**
 * The native per-element training kernels (native/core/optim.h): Adam, AdamW and SGD over
 * many tensors in one call, ReLU and its gradient mask, the finiteness scan. Each is checked
 * bit for bit against the float64 JavaScript loops below (PyTorch's single-tensor
 * optimisers: f64 arithmetic, f32 storage), which the library ran before, on fresh seeded
 * data over several steps, and every bad-input path is refused with a typed error and
 * nothing written. Replay with EIGENLORAX_TEST_SEED=<seed>.
 */
import test from 'ava';
import { EigenLoraxError } from '../lib/index.js';
import { adamStep, allFinite, reluBackward, reluForward, sgdStep, type AdamHyper, type SgdHyper } from '../lib/train/kernels.js';
import { native } from '../lib/native.js';
import { freshSeed, gaussian, rng } from './helpers/random.js';

// ---- references (the JavaScript loops lib/train ran before the native kernels)

function adamReference(p: Float32Array, g: Float32Array, m: Float32Array, v: Float32Array, h: AdamHyper): void {
  const { lr, beta1, beta2, eps, weightDecay, decoupled, step } = h;
  const stepSize = lr / (1 - beta1 ** step);
  const invBc2Sqrt = 1 / Math.sqrt(1 - beta2 ** step);
  const keep = decoupled ? 1 - lr * weightDecay : 1;
  const l2 = decoupled ? 0 : weightDecay;
  for (let i = 0; i < p.length; i++) {
    const param = p[i] as number;
    const grad = l2 === 0 ? (g[i] as number) : Math.fround((g[i] as number) + l2 * param);
    const mPrev = m[i] as number;
    const mi = Math.fround(mPrev + (grad - mPrev) * (1 - beta1));
    const vi = Math.fround((v[i] as number) * beta2 + (1 - beta2) * grad * grad);
    m[i] = mi;
    v[i] = vi;
    p[i] = (keep === 1 ? param : Math.fround(param * keep)) - (stepSize * mi) / (Math.sqrt(vi) * invBc2Sqrt + eps);
  }
}

function sgdReference(p: Float32Array, g: Float32Array, buf: Float32Array | null, h: SgdHyper): void {
  const { lr, momentum, dampening, nesterov, weightDecay, first } = h;
  for (let i = 0; i < p.length; i++) {
    const param = p[i] as number;
    let d = g[i] as number;
    if (weightDecay !== 0) d = Math.fround(d + weightDecay * param);
    if (buf !== null && momentum !== 0) {
      const b = first ? d : Math.fround((buf[i] as number) * momentum + (1 - dampening) * d);
      buf[i] = b;
      d = nesterov ? Math.fround(d + momentum * b) : b;
    }
    p[i] = param - lr * d;
  }
}

// Odd lengths, so that the vector loops' tails are exercised too.
const LENGTHS = [1, 7, 64, 333, 1025];

function randomArrays(seed: number, scale: number): Float32Array[] {
  const normal = gaussian(rng(seed));
  return LENGTHS.map((n) => Float32Array.from({ length: n }, () => scale * normal()));
}

function sameBits(t: { is: (a: unknown, b: unknown, m?: string) => void; fail: (m: string) => void }, actual: Float32Array[], expected: Float32Array[], what: string): void {
  for (let k = 0; k < expected.length; k++) {
    const a = new Uint32Array((actual[k] as Float32Array).buffer);
    const e = new Uint32Array((expected[k] as Float32Array).buffer);
    for (let i = 0; i < e.length; i++) {
      if (a[i] !== e[i]) {
        t.fail(`${what}: tensor ${k} element ${i} is ${(actual[k] as Float32Array)[i]} but the reference gives ${(expected[k] as Float32Array)[i]}`);
        return;
      }
    }
  }
  t.is(actual.length, expected.length);
}

const adamCases: Array<Omit<AdamHyper, 'step'>> = [
  { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, decoupled: false },
  { lr: 3e-2, beta1: 0.8, beta2: 0.99, eps: 1e-6, weightDecay: 0.1, decoupled: false },
  { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, decoupled: true },
  { lr: 1e-4, beta1: 0.5, beta2: 0.9, eps: 1e-8, weightDecay: 0, decoupled: true },
];

for (const c of adamCases) {
  test(`native ${c.decoupled ? 'AdamW' : 'Adam'} (lr ${c.lr}, weight decay ${c.weightDecay}) over five tensors, six steps: bit for bit the f64 reference`, (t) => {
    const seed = freshSeed();
    t.log(`seed ${seed}`);
    const p = randomArrays(seed, 1);
    const pRef = p.map((a) => a.slice());
    const m = LENGTHS.map((n) => new Float32Array(n));
    const v = LENGTHS.map((n) => new Float32Array(n));
    const mRef = m.map((a) => a.slice());
    const vRef = v.map((a) => a.slice());
    const flat = p.flatMap((a, k) => [a, new Float32Array(a.length), m[k] as Float32Array, v[k] as Float32Array]);
    for (let step = 1; step <= 6; step++) {
      const g = randomArrays(seed + step, step === 3 ? 1e-20 : 0.5); // step 3: gradients near the subnormal range
      for (let k = 0; k < LENGTHS.length; k++) (flat[4 * k + 1] as Float32Array).set(g[k] as Float32Array);
      adamStep(flat, { ...c, step });
      for (let k = 0; k < LENGTHS.length; k++) adamReference(pRef[k] as Float32Array, g[k] as Float32Array, mRef[k] as Float32Array, vRef[k] as Float32Array, { ...c, step });
      sameBits(t, p, pRef, `parameters after step ${step}`);
      sameBits(t, m, mRef, `exp_avg after step ${step}`);
      sameBits(t, v, vRef, `exp_avg_sq after step ${step}`);
    }
  });
}

const sgdCases: Array<Omit<SgdHyper, 'first'>> = [
  { lr: 0.1, momentum: 0, dampening: 0, nesterov: false, weightDecay: 0 },
  { lr: 0.05, momentum: 0.9, dampening: 0, nesterov: false, weightDecay: 0.01 },
  { lr: 0.05, momentum: 0.9, dampening: 0.3, nesterov: false, weightDecay: 0 },
  { lr: 0.01, momentum: 0.8, dampening: 0, nesterov: true, weightDecay: 0.001 },
];

for (const c of sgdCases) {
  test(`native SGD (momentum ${c.momentum}, dampening ${c.dampening}, nesterov ${c.nesterov}, weight decay ${c.weightDecay}): bit for bit the f64 reference`, (t) => {
    const seed = freshSeed();
    t.log(`seed ${seed}`);
    const p = randomArrays(seed, 1);
    const pRef = p.map((a) => a.slice());
    const buf = c.momentum === 0 ? null : LENGTHS.map((n) => new Float32Array(n));
    const bufRef = buf === null ? null : buf.map((a) => a.slice());
    const flat = p.flatMap((a, k) => [a, new Float32Array(a.length), buf === null ? null : (buf[k] as Float32Array)]);
    for (let step = 1; step <= 5; step++) {
      const g = randomArrays(seed + step, 0.5);
      for (let k = 0; k < LENGTHS.length; k++) (flat[3 * k + 1] as Float32Array).set(g[k] as Float32Array);
      sgdStep(flat, { ...c, first: step === 1 });
      for (let k = 0; k < LENGTHS.length; k++) sgdReference(pRef[k] as Float32Array, g[k] as Float32Array, bufRef === null ? null : (bufRef[k] as Float32Array), { ...c, first: step === 1 });
      sameBits(t, p, pRef, `parameters after step ${step}`);
      if (buf !== null && bufRef !== null) sameBits(t, buf, bufRef, `momentum buffers after step ${step}`);
    }
  });
}

test('native ReLU: max(x, 0) keeping NaN, +0 for -0 and negatives; the mask passes dy where y > 0; in place too', (t) => {
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const normal = gaussian(rng(seed));
  const special = [Number.NaN, -0, 0, Infinity, -Infinity, 3.4e38, -3.4e38, 1e-45, -1e-45];
  const x = Float32Array.from([...special, ...Array.from({ length: 1000 }, () => normal())]);
  const y = new Float32Array(x.length);
  reluForward(x, y);
  for (let i = 0; i < x.length; i++) {
    const v = x[i] as number;
    const want = Number.isNaN(v) ? Number.NaN : v > 0 ? v : 0;
    if (!Object.is(y[i], want)) t.fail(`relu(${v}) gave ${y[i]}, expected ${want}`);
  }
  const dy = Float32Array.from({ length: x.length }, () => normal());
  const dx = new Float32Array(x.length);
  reluBackward(y, dy, dx);
  for (let i = 0; i < x.length; i++) {
    const want = (y[i] as number) > 0 ? (dy[i] as number) : 0;
    if (!Object.is(dx[i], want)) t.fail(`mask at ${i}: ${dx[i]}, expected ${want}`);
  }
  const inPlace = x.slice();
  reluForward(inPlace, inPlace);
  t.deepEqual([...inPlace].map(String), [...y].map(String));
  const dyInPlace = dy.slice();
  reluBackward(y, dyInPlace, dyInPlace);
  t.deepEqual([...dyInPlace], [...dx]);
});

test('native finiteness scan: NaN or Inf anywhere, in any array, is found', (t) => {
  const a = new Float32Array(1031).fill(1);
  const b = new Float32Array(17).fill(-2);
  t.true(allFinite([a, b]));
  t.true(allFinite([]));
  for (const bad of [Number.NaN, Infinity, -Infinity]) {
    for (const at of [0, 16, 1030]) {
      const c = a.slice();
      c[at] = bad;
      t.false(allFinite([b, c]), `${bad} at ${at}`);
    }
  }
});

function expectError(t: { throws: (fn: () => unknown, e: object) => unknown; is: (a: unknown, b: unknown) => void }, fn: () => unknown, code: string, message: RegExp): void {
  const error = t.throws(fn, { instanceOf: EigenLoraxError, message }) as EigenLoraxError;
  t.is(error.code, code);
}

test('native optimiser steps refuse bad arguments with typed errors and write nothing', (t) => {
  const p = Float32Array.from([1, 2, 3]);
  const short = new Float32Array(2);
  const ok = () => [p, new Float32Array(3), new Float32Array(3), new Float32Array(3)];
  const h: AdamHyper = { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, decoupled: true, step: 1 };
  expectError(t, () => adamStep([p, new Float32Array(3), new Float32Array(3), short], h), 'ERR_SHAPE_MISMATCH', /tensors\[3\]: the state of tensor 0 has 2 values but its parameter has 3/);
  expectError(t, () => adamStep([...ok(), p], h), 'ERR_INVALID_ARGUMENT', /groups of 4 arrays, received 5/);
  expectError(t, () => adamStep([p, new Float64Array(3) as unknown as Float32Array, p, p], h), 'ERR_INVALID_ARGUMENT', /tensors\[1\]: expected a Float32Array/);
  expectError(t, () => adamStep(ok(), { ...h, lr: Number.NaN }), 'ERR_INVALID_ARGUMENT', /stepSize: expected a finite number/);
  expectError(t, () => sgdStep([p, short, null], { lr: 0.1, momentum: 0, dampening: 0, nesterov: false, weightDecay: 0, first: true }), 'ERR_SHAPE_MISMATCH', /grad of tensor 0/);
  const kernels = native as unknown as Record<string, (...args: unknown[]) => unknown>;
  expectError(t, () => kernels.trainSgdStep?.([p, p, null], 0.1, 0, 1, 0, 'no', true), 'ERR_INVALID_ARGUMENT', /nesterov: expected true or false/);
  expectError(t, () => kernels.trainAdamStep?.('not a list', 1, 1, 1, 0, 0.9, 0.999, 1e-8), 'ERR_INVALID_ARGUMENT', /array of Float32Array/);
  expectError(t, () => reluForward(p, short), 'ERR_SHAPE_MISMATCH', /y has 2 values but x has 3/);
  expectError(t, () => reluBackward(p, p, short), 'ERR_SHAPE_MISMATCH', /dx has 2 values/);
  t.deepEqual([...p], [1, 2, 3]);

  // A getter that detaches an array read before it: the detached array has no elements,
  // which the length check refuses, before anything is written.
  const g = new Float32Array(3);
  const m = new Float32Array(3);
  const moving = new Float32Array(3);
  const list = [p, g, m, moving];
  Object.defineProperty(list, 3, {
    get() {
      structuredClone(g.buffer, { transfer: [g.buffer] });
      return moving;
    },
  });
  expectError(t, () => adamStep(list, h), 'ERR_SHAPE_MISMATCH', /grad of tensor 0 has 0 values/);
  t.deepEqual([...p], [1, 2, 3]);
});

test('trainGatherRows refuses indices past the rows, ranges past the order and buffers that do not fit', (t) => {
  const src = new Float32Array(12); // 4 rows of 3
  const dst = new Float32Array(6);
  const refuses = (f: () => void, code: string, message: RegExp) => {
    const e = t.throws(f) as Error & { code: string };
    t.is(e.code, code, e.message);
    t.regex(e.message, message);
  };
  t.notThrows(() => native.trainGatherRows(src, 3, new Uint32Array([3, 0]), 0, 2, dst));
  refuses(() => native.trainGatherRows(src, 3, new Uint32Array([1, 4]), 0, 2, dst), 'ERR_INVALID_ARGUMENT', /order\[1\]: row 4 of a matrix of 4 rows/);
  refuses(() => native.trainGatherRows(src, 3, new Uint32Array([1]), 0, 2, dst), 'ERR_INVALID_ARGUMENT', /start <= end <= order.length \(1\)/);
  refuses(() => native.trainGatherRows(src, 5, new Uint32Array([1, 2]), 0, 2, dst), 'ERR_SHAPE_MISMATCH', /src: 12 values are not rows of 5/);
  refuses(() => native.trainGatherRows(src, 3, new Uint32Array([1, 2]), 0, 1, dst), 'ERR_SHAPE_MISMATCH', /dst: 6 values for 1 x 3/);
  refuses(() => native.trainGatherRows(src, 3, [1, 2] as unknown as Uint32Array, 0, 2, dst), 'ERR_INVALID_ARGUMENT', /order: expected a Uint32Array/);
});
