/**
 * Fused LoRA / EigenLoRA layers (DESIGN §1) against float64 dense references that form the
 * full d_out x d_in delta W = s B A, finite-difference gradient checks, the product-order
 * choice, out buffers and shape errors. Every test draws fresh data from its own seed
 * (replay with EIGENLORAX_TEST_SEED=<seed>).
 */
import test, { type ExecutionContext } from 'ava';
import {
  chooseProductOrder,
  eigenLoraBackward,
  eigenLoraForward,
  EigenLoraxError,
  loraBackward,
  linearBackward,
  linearForward,
  loraForward,
  matrix,
  setThreads,
  type EigenLoraLayer,
  type LoraLayer,
  type Matrix,
  type OrderQuery,
} from '../lib/index.js';
import { native } from '../lib/native.js';
import { add, addRow, dot, matmul, relativeError, scale, toDense, transpose, type Dense } from './helpers/dense.js';
import { freshSeed, randomMatrix, rng } from './helpers/random.js';

// A fixed thread count makes the split products run on every machine (an output's columns
// split across threads when it has at least as many columns as rows and 64 or more, its
// rows when it has 32 or more); 3 gives uneven splits.
setThreads(3);

const FORWARD_TOL = 1e-5;
const GRAD_TOL = 1e-3;

/** Seeds for the matrices of one test, derived from its fresh seed. */
function seeds(seed: number): () => number {
  let next = seed;
  return () => (next = (next + 0x9e3779b1) >>> 0);
}

function randomVector(length: number, seed: number): Float32Array {
  return randomMatrix(1, length, seed).data;
}

function nanMatrix(rows: number, cols: number): Matrix {
  return matrix(rows, cols, new Float32Array(rows * cols).fill(Number.NaN));
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return ua.every((v, i) => v === ub[i]);
}

// ---------------------------------------------------------------------------------------
// f64 dense references: form dW = s B A (d_out x d_in), then y = x (W + dW)^T + b.

interface DenseLora {
  A: Dense;
  B: Dense;
  s: number;
  W?: Dense | undefined;
  b?: ArrayLike<number> | undefined;
}

function denseLoraForward(x: Dense, l: DenseLora): Dense {
  const dW = scale(matmul(l.B, l.A), l.s);
  const total = l.W ? add(l.W, dW) : dW;
  const y = matmul(x, transpose(total));
  return l.b ? addRow(y, l.b) : y;
}

interface DenseEigen {
  VA: Dense;
  alpha: Dense;
  beta: Dense;
  UB: Dense;
  s: number;
  W?: Dense | undefined;
  b?: ArrayLike<number> | undefined;
}

/** A = alpha^T V_A^T (r x d_in), B = U_B beta (d_out x r). */
function denseEigenForward(x: Dense, l: DenseEigen): Dense {
  const A = matmul(transpose(l.alpha), transpose(l.VA));
  const B = matmul(l.UB, l.beta);
  return denseLoraForward(x, { A, B, s: l.s, W: l.W, b: l.b });
}

function denseOfLora(l: LoraLayer): DenseLora {
  return { A: toDense(l.A), B: toDense(l.B), s: l.scale ?? 1, W: l.weight && toDense(l.weight), b: l.bias };
}

function denseOfEigen(l: EigenLoraLayer): DenseEigen {
  return {
    VA: toDense(l.componentsA),
    alpha: toDense(l.alpha),
    beta: toDense(l.beta),
    UB: toDense(l.componentsB),
    s: l.scale ?? 1,
    W: l.weight && toDense(l.weight),
    b: l.bias,
  };
}

// ---------------------------------------------------------------------------------------
// Random layers

interface LoraShape {
  n: number;
  dIn: number;
  dOut: number;
  r: number;
}

function randomLora(shape: LoraShape, next: () => number, base: { weight: boolean; bias: boolean }): LoraLayer {
  const { dIn, dOut, r } = shape;
  const layer: LoraLayer = {
    A: randomMatrix(r, dIn, next(), 1 / Math.sqrt(dIn)),
    B: randomMatrix(dOut, r, next(), 1 / Math.sqrt(r)),
    scale: 0.5 + rng(next())(),
  };
  if (base.weight) layer.weight = randomMatrix(dOut, dIn, next(), 1 / Math.sqrt(dIn));
  if (base.bias) layer.bias = randomVector(dOut, next());
  return layer;
}

interface EigenShape extends LoraShape {
  kA: number;
  kB: number;
}

function randomEigen(shape: EigenShape, next: () => number, base: { weight: boolean; bias: boolean }): EigenLoraLayer {
  const { dIn, dOut, r, kA, kB } = shape;
  const layer: EigenLoraLayer = {
    componentsA: randomMatrix(dIn, kA, next(), 1 / Math.sqrt(dIn)),
    alpha: randomMatrix(kA, r, next()),
    beta: randomMatrix(kB, r, next()),
    componentsB: randomMatrix(dOut, kB, next(), 1 / Math.sqrt(kB)),
    scale: 0.5 + rng(next())(),
  };
  if (base.weight) layer.weight = randomMatrix(dOut, dIn, next(), 1 / Math.sqrt(dIn));
  if (base.bias) layer.bias = randomVector(dOut, next());
  return layer;
}

const bases = [
  { weight: true, bias: true },
  { weight: true, bias: false },
  { weight: false, bias: true },
  { weight: false, bias: false },
];

// ---------------------------------------------------------------------------------------
// Forward

test('loraForward matches the f64 dense reference (x (W + s B A)^T + b), with and without W and b', async (t) => {
  const seed = freshSeed();
  const next = seeds(seed);
  const shapes: LoraShape[] = [
    { n: 1, dIn: 200, dOut: 257, r: 4 }, // one row: few-rows path, uneven column split
    { n: 3, dIn: 96, dOut: 390, r: 8 }, // three rows: few-rows path
    { n: 2, dIn: 40, dOut: 30, r: 2 }, // few rows but too few columns to split
    { n: 64, dIn: 72, dOut: 48, r: 6 },
    { n: 5, dIn: 33, dOut: 17, r: 1 },
  ];
  for (const shape of shapes) {
    for (const base of bases) {
      const x = randomMatrix(shape.n, shape.dIn, next());
      const layer = randomLora(shape, next, base);
      const y = await loraForward(x, layer);
      const ref = denseLoraForward(toDense(x), denseOfLora(layer));
      t.is(y.rows, shape.n);
      t.is(y.cols, shape.dOut);
      const err = relativeError(y.data, ref.data);
      t.true(err < FORWARD_TOL, `seed ${seed}, ${JSON.stringify(shape)}, ${JSON.stringify(base)}: rel error ${err}`);
    }
  }
});

test('loraForward: scale defaults to 1, and s = 0 gives the base layer alone', async (t) => {
  const seed = freshSeed();
  const next = seeds(seed);
  const shape = { n: 4, dIn: 20, dOut: 12, r: 3 };
  const x = randomMatrix(shape.n, shape.dIn, next());
  const layer = randomLora(shape, next, { weight: true, bias: true });
  delete layer.scale;
  const y = await loraForward(x, layer);
  const err = relativeError(y.data, denseLoraForward(toDense(x), { ...denseOfLora(layer), s: 1 }).data);
  t.true(err < FORWARD_TOL, `seed ${seed}: rel error ${err}`);
  const base = await loraForward(x, { ...layer, scale: 0 });
  const baseRef = addRow(matmul(toDense(x), transpose(toDense(layer.weight!))), layer.bias!);
  const errBase = relativeError(base.data, baseRef.data);
  t.true(errBase < FORWARD_TOL, `seed ${seed}: base-only rel error ${errBase}`);
});

test('eigenLoraForward matches the dense reference in both orders and auto, with K_A != K_B', async (t) => {
  const seed = freshSeed();
  const next = seeds(seed);
  const shapes: EigenShape[] = [
    { n: 1, dIn: 200, dOut: 260, kA: 12, kB: 7, r: 4 },
    { n: 3, dIn: 150, dOut: 384, kA: 10, kB: 16, r: 5 },
    { n: 64, dIn: 80, dOut: 70, kA: 9, kB: 6, r: 3 },
    { n: 40, dIn: 30, dOut: 50, kA: 3, kB: 8, r: 2 },
  ];
  for (const shape of shapes) {
    for (const base of [bases[0]!, bases[3]!]) {
      const x = randomMatrix(shape.n, shape.dIn, next());
      const layer = randomEigen(shape, next, base);
      const ref = denseEigenForward(toDense(x), denseOfEigen(layer));
      const what = `seed ${seed}, ${JSON.stringify(shape)}, ${JSON.stringify(base)}`;
      const project = await eigenLoraForward(x, layer, { order: 'project' });
      const rebuild = await eigenLoraForward(x, layer, { order: 'rebuild' });
      const auto = await eigenLoraForward(x, layer, { order: 'auto' });
      const implicit = await eigenLoraForward(x, layer);
      for (const [name, y] of [['project', project], ['rebuild', rebuild], ['auto', auto]] as const) {
        t.is(y.rows, shape.n);
        t.is(y.cols, shape.dOut);
        const err = relativeError(y.data, ref.data);
        t.true(err < FORWARD_TOL, `${what}, order ${name}: rel error ${err}`);
      }
      const agree = relativeError(project.data, rebuild.data);
      t.true(agree < FORWARD_TOL, `${what}: project vs rebuild differ by ${agree}`);
      // auto runs exactly the order chooseProductOrder names for these shapes.
      const chosen = chooseProductOrder({ rows: shape.n, dIn: shape.dIn, dOut: shape.dOut, kA: shape.kA, kB: shape.kB, rank: shape.r });
      t.true(bitsEqual(auto.data, (chosen === 'project' ? project : rebuild).data), `${what}: auto != ${chosen}`);
      t.true(bitsEqual(implicit.data, auto.data), `${what}: no order != 'auto'`);
    }
  }
});

// ---------------------------------------------------------------------------------------
// Order of products

/** Multiply-adds of each order, counted product by product (DESIGN §1). */
function countMultiplyAdds(q: Required<OrderQuery>): { project: number; rebuild: number } {
  const { rows: n, dIn, dOut, kA, kB, rank: r } = q;
  const factors = dIn * kA * r + dOut * kB * r; // V_A alpha, U_B beta
  if (!q.backward) {
    return {
      // x V_A, (.) alpha, (.) beta^T, (.) U_B^T
      project: n * dIn * kA + n * kA * r + n * r * kB + n * kB * dOut,
      // factors, then x A^T, (.) B^T
      rebuild: factors + n * dIn * r + n * r * dOut,
    };
  }
  // project: H = x V_A, Z = H alpha, G = dy U_B, dBeta = G^T Z, dZ = G beta, dAlpha = H^T dZ,
  //          [dx += (dZ alpha^T) V_A^T]
  const project =
    n * dIn * kA + n * kA * r + n * dOut * kB + kB * n * r + n * kB * r + kA * n * r +
    (q.inputGrad ? n * r * kA + n * kA * dIn : 0);
  // rebuild: factors, Z = x A^T, dZ = dy B, x^T dZ, V_A^T (.), dy^T Z, U_B^T (.), [dx += dZ A]
  const rebuild =
    factors + n * dIn * r + n * dOut * r + dIn * n * r + kA * dIn * r + dOut * n * r + kB * dOut * r +
    (q.inputGrad ? n * r * dIn : 0);
  return { project, rebuild };
}

function firstRebuildRow(query: Omit<OrderQuery, 'rows'>, maxRows: number): number {
  for (let rows = 1; rows <= maxRows; rows++) if (chooseProductOrder({ ...query, rows }) === 'rebuild') return rows;
  return Infinity;
}

test('chooseProductOrder: d = 4096, K = 64, r = 16 projects one row and rebuilds for 256 rows', (t) => {
  const shape = { dIn: 4096, dOut: 4096, kA: 64, kB: 64, rank: 16 };
  t.is(chooseProductOrder({ ...shape, rows: 1 }), 'project');
  t.is(chooseProductOrder({ ...shape, rows: 256 }), 'rebuild');
  // DESIGN §1: rebuild wins once n > about K r / (K - r) = 21.3.
  const crossover = firstRebuildRow(shape, 1000);
  const approx = (64 * 16) / (64 - 16);
  t.true(Math.abs(crossover - approx) <= 1.5, `crossover at ${crossover} rows, DESIGN says about ${approx}`);
  // ... and exactly where the multiply-add counts cross.
  let counted = Infinity;
  for (let rows = 1; rows <= 1000 && counted === Infinity; rows++) {
    const c = countMultiplyAdds({ ...shape, rows, backward: false, inputGrad: true });
    if (c.rebuild < c.project) counted = rows;
  }
  t.is(crossover, counted);
  t.is(crossover, 22);
});

test('chooseProductOrder agrees with the multiply-add counts, forward and backward, for random shapes', (t) => {
  const seed = freshSeed();
  const random = rng(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  let checked = 0;
  for (let trial = 0; trial < 400; trial++) {
    const q: Required<OrderQuery> = {
      rows: int(1, 2000),
      dIn: int(8, 8192),
      dOut: int(8, 8192),
      kA: int(1, 256),
      kB: int(1, 256),
      rank: int(1, 64),
      backward: random() < 0.5,
      inputGrad: random() < 0.5,
    };
    const c = countMultiplyAdds(q);
    if (Math.abs(c.rebuild - c.project) <= 1e-9 * c.project) continue; // a tie: either is fine
    const want = c.rebuild < c.project ? 'rebuild' : 'project';
    // Forward queries go without the backward flags, to check their defaults too.
    const { backward: _backward, inputGrad: _inputGrad, ...forwardOnly } = q;
    const got = q.backward ? chooseProductOrder(q) : chooseProductOrder(forwardOnly);
    t.is(got, want, `seed ${seed}: ${JSON.stringify(q)} counts ${JSON.stringify(c)}`);
    checked++;
  }
  t.true(checked > 300);
  // Backward crossover for the DESIGN shape sits where the counts say too.
  const shape = { dIn: 4096, dOut: 4096, kA: 64, kB: 64, rank: 16, backward: true, inputGrad: true };
  let counted = Infinity;
  for (let rows = 1; rows <= 1000 && counted === Infinity; rows++) {
    const c = countMultiplyAdds({ ...shape, rows });
    if (c.rebuild < c.project) counted = rows;
  }
  t.is(firstRebuildRow(shape, 1000), counted);
});

test('chooseProductOrder refuses bad queries', (t) => {
  const shape = { dIn: 64, dOut: 64, kA: 8, kB: 8, rank: 4 };
  for (const rows of [0, -1, 1.5, Number.NaN]) {
    t.throws(() => chooseProductOrder({ ...shape, rows }), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT' });
  }
  t.throws(() => chooseProductOrder({ ...shape, rows: 4, kA: 0 }), { instanceOf: EigenLoraxError, message: /kA/ });
});

// ---------------------------------------------------------------------------------------
// Gradients by central differences of L = sum(y * G) on the f64 dense forward.

/**
 * Central differences of `loss` w.r.t. entries of `param` (all of them, or `sample` random
 * ones), compared with `analytic` entry by entry: |g - fd| <= tol * max(|fd|, 1e-2 max|fd|).
 */
function checkGradient(
  t: ExecutionContext,
  what: string,
  param: Dense,
  analytic: Matrix | null,
  loss: () => number,
  random: () => number,
  sample = 120,
): void {
  if (!analytic) {
    t.fail(`${what}: no gradient returned`);
    return;
  }
  t.is(analytic.rows, param.rows, `${what}: rows`);
  t.is(analytic.cols, param.cols, `${what}: cols`);
  const size = param.data.length;
  const entries =
    size <= sample ? [...Array(size).keys()] : Array.from({ length: sample }, () => Math.floor(random() * size));
  const fd = entries.map((i) => {
    const keep = param.data[i]!;
    const h = 1e-3 * Math.max(1, Math.abs(keep));
    param.data[i] = keep + h;
    const plus = loss();
    param.data[i] = keep - h;
    const minus = loss();
    param.data[i] = keep;
    return (plus - minus) / (2 * h);
  });
  const maxAbs = Math.max(...fd.map(Math.abs));
  t.true(maxAbs > 0, `${what}: finite differences are all zero`);
  let worst = 0, worstAt = -1;
  entries.forEach((i, k) => {
    const err = Math.abs(analytic.data[i]! - fd[k]!) / Math.max(Math.abs(fd[k]!), 1e-2 * maxAbs);
    if (!(err <= worst)) {
      worst = Number.isNaN(err) ? Infinity : err;
      worstAt = i;
    }
  });
  t.true(worst < GRAD_TOL, `${what}: rel error ${worst} at entry ${worstAt} (analytic ${analytic.data[worstAt]})`);
}

const loraGradShapes: LoraShape[] = [
  { n: 2, dIn: 200, dOut: 24, r: 3 }, // few rows: dx columns split across threads
  { n: 9, dIn: 30, dOut: 20, r: 4 },
  { n: 40, dIn: 70, dOut: 48, r: 5 }, // rows split (h, dh, dB), columns split (dx, dA)
];

for (const [index, shape] of loraGradShapes.entries()) {
  test(`loraBackward dA, dB, dx match central differences (shape ${index}: ${JSON.stringify(shape)})`, async (t) => {
    const seed = freshSeed();
    const next = seeds(seed);
    const random = rng(next());
    const x = randomMatrix(shape.n, shape.dIn, next());
    const layer = randomLora(shape, next, { weight: true, bias: true });
    const G = randomMatrix(shape.n, shape.dOut, next());
    const grads = await loraBackward(x, G, layer);

    const xd = toDense(x), Gd = toDense(G), ld = denseOfLora(layer);
    const loss = () => dot(denseLoraForward(xd, ld), Gd);
    checkGradient(t, `seed ${seed}: dA`, ld.A, grads.dA, loss, random);
    checkGradient(t, `seed ${seed}: dB`, ld.B, grads.dB, loss, random);
    checkGradient(t, `seed ${seed}: dx (includes dy W)`, xd, grads.dx, loss, random);

    // Without an input gradient: dx is null and dA, dB are the same.
    const noDx = await loraBackward(x, G, layer, { inputGrad: false });
    t.is(noDx.dx, null);
    t.true(bitsEqual(noDx.dA.data, grads.dA.data), `seed ${seed}: dA changed with inputGrad: false`);
    t.true(bitsEqual(noDx.dB.data, grads.dB.data), `seed ${seed}: dB changed with inputGrad: false`);
  });
}

test('loraBackward without a base weight: dx is the adapter path alone', async (t) => {
  const seed = freshSeed();
  const next = seeds(seed);
  const random = rng(next());
  const shape = { n: 3, dIn: 260, dOut: 15, r: 2 };
  const x = randomMatrix(shape.n, shape.dIn, next());
  const layer = randomLora(shape, next, { weight: false, bias: true });
  const G = randomMatrix(shape.n, shape.dOut, next());
  const grads = await loraBackward(x, G, layer);
  const xd = toDense(x), Gd = toDense(G), ld = denseOfLora(layer);
  const loss = () => dot(denseLoraForward(xd, ld), Gd);
  checkGradient(t, `seed ${seed}: dx`, xd, grads.dx, loss, random);
  checkGradient(t, `seed ${seed}: dA`, ld.A, grads.dA, loss, random);
});

const eigenGradShapes: EigenShape[] = [
  { n: 2, dIn: 200, dOut: 210, kA: 9, kB: 6, r: 3 }, // few rows
  { n: 12, dIn: 40, dOut: 30, kA: 7, kB: 5, r: 4 },
  { n: 40, dIn: 70, dOut: 48, kA: 9, kB: 6, r: 3 }, // rows split (x V_A, dy U_B), columns split (dx)
];

for (const [index, shape] of eigenGradShapes.entries()) {
  test(`eigenLoraBackward dAlpha, dBeta, dx match central differences in both orders (shape ${index}: ${JSON.stringify(shape)})`, async (t) => {
    const seed = freshSeed();
    const next = seeds(seed);
    const random = rng(next());
    const x = randomMatrix(shape.n, shape.dIn, next());
    const layer = randomEigen(shape, next, { weight: true, bias: true });
    const G = randomMatrix(shape.n, shape.dOut, next());
    const xd = toDense(x), Gd = toDense(G), ld = denseOfEigen(layer);
    const loss = () => dot(denseEigenForward(xd, ld), Gd);
    for (const order of ['project', 'rebuild', 'auto'] as const) {
      const grads = await eigenLoraBackward(x, G, layer, { order });
      const what = `seed ${seed}, order ${order}`;
      checkGradient(t, `${what}: dAlpha`, ld.alpha, grads.dAlpha, loss, random);
      checkGradient(t, `${what}: dBeta`, ld.beta, grads.dBeta, loss, random);
      checkGradient(t, `${what}: dx (includes dy W)`, xd, grads.dx, loss, random, 80);

      const noDx = await eigenLoraBackward(x, G, layer, { order, inputGrad: false });
      t.is(noDx.dx, null);
      if (order !== 'auto') {
        // 'auto' may pick another order once dx is not needed; forced orders must not change.
        t.true(bitsEqual(noDx.dAlpha.data, grads.dAlpha.data), `${what}: dAlpha changed with inputGrad: false`);
        t.true(bitsEqual(noDx.dBeta.data, grads.dBeta.data), `${what}: dBeta changed with inputGrad: false`);
      } else {
        t.true(relativeError(noDx.dAlpha.data, grads.dAlpha.data) < 1e-5, `${what}: dAlpha, inputGrad: false`);
        t.true(relativeError(noDx.dBeta.data, grads.dBeta.data) < 1e-5, `${what}: dBeta, inputGrad: false`);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Out buffers

test('options.out buffers are filled in place and returned (forward and backward)', async (t) => {
  const seed = freshSeed();
  const next = seeds(seed);
  const shape = { n: 5, dIn: 24, dOut: 18, r: 3, kA: 6, kB: 4 };
  const x = randomMatrix(shape.n, shape.dIn, next());
  const dy = randomMatrix(shape.n, shape.dOut, next());

  const lora = randomLora(shape, next, { weight: true, bias: true });
  const y = nanMatrix(shape.n, shape.dOut);
  t.is(await loraForward(x, lora, { out: y }), y);
  t.true(bitsEqual(y.data, (await loraForward(x, lora)).data), `seed ${seed}: loraForward out values`);
  // Without a base layer the kernel starts from zero, not from what the buffer held.
  const loraOnly = randomLora(shape, next, { weight: false, bias: false });
  const y0 = nanMatrix(shape.n, shape.dOut);
  await loraForward(x, loraOnly, { out: y0 });
  t.true(relativeError(y0.data, denseLoraForward(toDense(x), denseOfLora(loraOnly)).data) < FORWARD_TOL, `seed ${seed}`);

  const out = { dx: nanMatrix(shape.n, shape.dIn), dA: nanMatrix(shape.r, shape.dIn), dB: nanMatrix(shape.dOut, shape.r) };
  const g = await loraBackward(x, dy, lora, { out });
  t.is(g.dx, out.dx);
  t.is(g.dA, out.dA);
  t.is(g.dB, out.dB);
  const fresh = await loraBackward(x, dy, lora);
  t.true(bitsEqual(out.dx.data, fresh.dx!.data), `seed ${seed}: dx`);
  t.true(bitsEqual(out.dA.data, fresh.dA.data), `seed ${seed}: dA`);
  t.true(bitsEqual(out.dB.data, fresh.dB.data), `seed ${seed}: dB`);
  // Partial out: only dA given.
  const onlyA = nanMatrix(shape.r, shape.dIn);
  const partial = await loraBackward(x, dy, lora, { out: { dA: onlyA } });
  t.is(partial.dA, onlyA);
  t.true(bitsEqual(onlyA.data, fresh.dA.data), `seed ${seed}: partial dA`);
  // dx without a base weight starts from zero.
  const dx0 = nanMatrix(shape.n, shape.dIn);
  await loraBackward(x, dy, loraOnly, { out: { dx: dx0 } });
  t.false(dx0.data.some(Number.isNaN), `seed ${seed}: dx kept NaN from the buffer`);

  const eigen = randomEigen(shape, next, { weight: true, bias: true });
  for (const order of ['project', 'rebuild'] as const) {
    const ey = nanMatrix(shape.n, shape.dOut);
    t.is(await eigenLoraForward(x, eigen, { out: ey, order }), ey);
    t.true(bitsEqual(ey.data, (await eigenLoraForward(x, eigen, { order })).data), `seed ${seed}: eigen y ${order}`);
    const eout = {
      dx: nanMatrix(shape.n, shape.dIn),
      dAlpha: nanMatrix(shape.kA, shape.r),
      dBeta: nanMatrix(shape.kB, shape.r),
    };
    const eg = await eigenLoraBackward(x, dy, eigen, { out: eout, order });
    t.is(eg.dx, eout.dx);
    t.is(eg.dAlpha, eout.dAlpha);
    t.is(eg.dBeta, eout.dBeta);
    const ef = await eigenLoraBackward(x, dy, eigen, { order });
    t.true(bitsEqual(eout.dx.data, ef.dx!.data), `seed ${seed}: eigen dx ${order}`);
    t.true(bitsEqual(eout.dAlpha.data, ef.dAlpha.data), `seed ${seed}: dAlpha ${order}`);
    t.true(bitsEqual(eout.dBeta.data, ef.dBeta.data), `seed ${seed}: dBeta ${order}`);
  }
});

test('wrong-shaped out buffers are refused with ERR_SHAPE_MISMATCH naming the buffer, before anything is written', async (t) => {
  const seed = freshSeed();
  const next = seeds(seed);
  const shape = { n: 4, dIn: 10, dOut: 8, r: 2, kA: 5, kB: 3 };
  const x = randomMatrix(shape.n, shape.dIn, next());
  const dy = randomMatrix(shape.n, shape.dOut, next());
  const lora = randomLora(shape, next, { weight: true, bias: true });
  const eigen = randomEigen(shape, next, { weight: true, bias: true });
  const shapeError = (name: string) => ({
    instanceOf: EigenLoraxError,
    code: 'ERR_SHAPE_MISMATCH',
    message: new RegExp(name.replace(/\./g, '\\.') + '\\b'),
  });

  await t.throwsAsync(loraForward(x, lora, { out: matrix(shape.n, shape.dOut + 1) }), shapeError('options.out'));
  await t.throwsAsync(loraForward(x, lora, { out: matrix(shape.dOut, shape.n) }), shapeError('options.out'));
  await t.throwsAsync(eigenLoraForward(x, eigen, { out: matrix(shape.n + 1, shape.dOut) }), shapeError('options.out'));

  const good = { dx: nanMatrix(shape.n, shape.dIn), dA: nanMatrix(shape.r, shape.dIn), dB: nanMatrix(shape.dOut, shape.r) };
  await t.throwsAsync(loraBackward(x, dy, lora, { out: { ...good, dA: matrix(shape.dIn, shape.r) } }), shapeError('options.out.dA'));
  await t.throwsAsync(loraBackward(x, dy, lora, { out: { ...good, dB: matrix(shape.r, shape.dOut) } }), shapeError('options.out.dB'));
  await t.throwsAsync(loraBackward(x, dy, lora, { out: { ...good, dx: matrix(shape.n, shape.dOut) } }), shapeError('options.out.dx'));
  t.true(good.dx.data.every(Number.isNaN) && good.dA.data.every(Number.isNaN) && good.dB.data.every(Number.isNaN), `seed ${seed}: written before refusing`);

  const egood = { dx: nanMatrix(shape.n, shape.dIn), dAlpha: nanMatrix(shape.kA, shape.r), dBeta: nanMatrix(shape.kB, shape.r) };
  await t.throwsAsync(eigenLoraBackward(x, dy, eigen, { out: { ...egood, dAlpha: matrix(shape.kB, shape.r) } }), shapeError('options.out.dAlpha'));
  await t.throwsAsync(eigenLoraBackward(x, dy, eigen, { out: { ...egood, dBeta: matrix(shape.kB, shape.r + 1) } }), shapeError('options.out.dBeta'));
  await t.throwsAsync(eigenLoraBackward(x, dy, eigen, { out: { ...egood, dx: matrix(shape.n + 1, shape.dIn) } }), shapeError('options.out.dx'));
  // A buffer whose data does not hold rows x cols values.
  await t.throwsAsync(loraForward(x, lora, { out: { rows: shape.n, cols: shape.dOut, data: new Float32Array(shape.n * shape.dOut - 1) } }), shapeError('options.out'));
  t.true(egood.dx.data.every(Number.isNaN) && egood.dAlpha.data.every(Number.isNaN) && egood.dBeta.data.every(Number.isNaN), `seed ${seed}: written before refusing`);
});

test('an out buffer sharing memory with an input is refused', async (t) => {
  const seed = freshSeed();
  const next = seeds(seed);
  const shape = { n: 4, dIn: 8, dOut: 8, r: 2 };
  const x = randomMatrix(shape.n, shape.dIn, next());
  const lora = randomLora(shape, next, { weight: true, bias: false });
  const copy = Float32Array.from(x.data);
  await t.throwsAsync(loraForward(x, lora, { out: x }), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT', message: /share memory/ });
  t.true(bitsEqual(x.data, copy), `seed ${seed}: x was modified`);
});

// ---------------------------------------------------------------------------------------
// Shape and argument errors

test('loraForward / loraBackward: each mismatched argument gives ERR_SHAPE_MISMATCH naming it', async (t) => {
  const seed = freshSeed();
  const next = seeds(seed);
  const s = { n: 3, dIn: 7, dOut: 5, r: 2 };
  const x = randomMatrix(s.n, s.dIn, next());
  const dy = randomMatrix(s.n, s.dOut, next());
  const layer = randomLora(s, next, { weight: true, bias: true });
  const y = nanMatrix(s.n, s.dOut);
  const cases: Array<[string, LoraLayer, RegExp, Matrix?]> = [
    ['A cols != d_in', { ...layer, A: matrix(s.r, s.dIn + 1) }, /layer\.A\b/],
    ['A transposed', { ...layer, A: matrix(s.dIn, s.r) }, /layer\.A\b/],
    ['B cols != rank', { ...layer, B: matrix(s.dOut, s.r + 1) }, /layer\.B\b/],
    ['weight transposed', { ...layer, weight: matrix(s.dIn, s.dOut) }, /layer\.weight\b/],
    ['weight wrong d_out', { ...layer, weight: matrix(s.dOut + 1, s.dIn) }, /layer\.weight\b/],
    ['bias too long', { ...layer, bias: new Float32Array(s.dOut + 1) }, /layer\.bias\b/],
    ['bias too short', { ...layer, bias: new Float32Array(s.dOut - 1) }, /layer\.bias\b/],
    ['A data short', { ...layer, A: { rows: s.r, cols: s.dIn, data: new Float32Array(s.r * s.dIn - 1) } }, /layer\.A\b/],
    ['x data short', layer, /^x\b/, { rows: s.n, cols: s.dIn, data: new Float32Array(s.n * s.dIn + 1) }],
  ];
  for (const [what, bad, message, badX] of cases) {
    const error = { instanceOf: EigenLoraxError, code: 'ERR_SHAPE_MISMATCH', message };
    await t.throwsAsync(loraForward(badX ?? x, bad, { out: y }), error, `seed ${seed}: forward, ${what}`);
    await t.throwsAsync(loraBackward(badX ?? x, dy, bad), error, `seed ${seed}: backward, ${what}`);
  }
  t.true(y.data.every(Number.isNaN), 'out buffer written before refusing');
  for (const badDy of [matrix(s.n, s.dOut + 1), matrix(s.n + 1, s.dOut), matrix(s.dOut, s.n)]) {
    await t.throwsAsync(loraBackward(x, badDy, layer), { instanceOf: EigenLoraxError, code: 'ERR_SHAPE_MISMATCH', message: /^dy\b/ });
  }
  // Not a matrix / not f32 at all: ERR_INVALID_ARGUMENT, still naming the argument.
  const invalid = (message: RegExp) => ({ instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT', message });
  await t.throwsAsync(loraForward(x, { ...layer, bias: new Float64Array(s.dOut) as unknown as Float32Array }), invalid(/layer\.bias/));
  await t.throwsAsync(loraForward(x, { ...layer, A: { rows: s.r, cols: s.dIn, data: new Float64Array(s.r * s.dIn) } as unknown as Matrix }), invalid(/layer\.A\.data/));
  await t.throwsAsync(loraForward(x, { ...layer, A: { rows: 0, cols: s.dIn, data: new Float32Array(0) } }), invalid(/layer\.A\.rows/));
  await t.throwsAsync(loraForward(x, { ...layer, scale: Number.NaN }), invalid(/layer\.scale/));
  await t.throwsAsync(loraForward(x, { ...layer, rank: 2 } as unknown as LoraLayer), invalid(/layer\.rank/));
});

test('eigenLoraForward / eigenLoraBackward: each mismatched argument gives ERR_SHAPE_MISMATCH naming it', async (t) => {
  const seed = freshSeed();
  const next = seeds(seed);
  const s = { n: 3, dIn: 9, dOut: 6, kA: 4, kB: 3, r: 2 };
  const x = randomMatrix(s.n, s.dIn, next());
  const dy = randomMatrix(s.n, s.dOut, next());
  const layer = randomEigen(s, next, { weight: true, bias: true });
  const y = nanMatrix(s.n, s.dOut);
  const cases: Array<[string, EigenLoraLayer, RegExp]> = [
    ['componentsA rows != d_in', { ...layer, componentsA: matrix(s.dIn + 1, s.kA) }, /layer\.componentsA\b/],
    ['componentsA transposed', { ...layer, componentsA: matrix(s.kA, s.dIn) }, /layer\.componentsA\b/],
    ['componentsA data short', { ...layer, componentsA: { rows: s.dIn, cols: s.kA, data: new Float32Array(s.dIn * s.kA - 1) } }, /layer\.componentsA\b/],
    ['alpha rows != K_A', { ...layer, alpha: matrix(s.kA + 1, s.r) }, /layer\.alpha\b/],
    ['beta rows != K_B', { ...layer, beta: matrix(s.kB + 1, s.r) }, /layer\.beta\b/],
    ['beta cols != rank', { ...layer, beta: matrix(s.kB, s.r + 1) }, /layer\.beta\b/],
    // componentsB fixes d_out and K_B; a componentsB with other K_B disagrees with beta.
    ['componentsB cols != K_B', { ...layer, componentsB: matrix(s.dOut, s.kB + 1) }, /layer\.(componentsB|beta)\b/],
    ['componentsB data short', { ...layer, componentsB: { rows: s.dOut, cols: s.kB, data: new Float32Array(s.dOut * s.kB + 2) } }, /layer\.componentsB\b/],
    ['weight transposed', { ...layer, weight: matrix(s.dIn, s.dOut) }, /layer\.weight\b/],
    ['bias wrong length', { ...layer, bias: new Float32Array(s.dIn) }, /layer\.bias\b/],
  ];
  for (const [what, bad, message] of cases) {
    const error = { instanceOf: EigenLoraxError, code: 'ERR_SHAPE_MISMATCH', message };
    for (const order of ['project', 'rebuild', 'auto'] as const) {
      await t.throwsAsync(eigenLoraForward(x, bad, { out: y, order }), error, `seed ${seed}: forward ${order}, ${what}`);
      await t.throwsAsync(eigenLoraBackward(x, dy, bad, { order }), error, `seed ${seed}: backward ${order}, ${what}`);
    }
  }
  t.true(y.data.every(Number.isNaN), 'out buffer written before refusing');
  // componentsB rows set d_out: W, b and dy must follow it.
  const wider = { ...layer, componentsB: matrix(s.dOut + 1, s.kB) };
  await t.throwsAsync(eigenLoraForward(x, wider), { instanceOf: EigenLoraxError, code: 'ERR_SHAPE_MISMATCH', message: /layer\.weight\b/ });
  await t.throwsAsync(eigenLoraBackward(x, matrix(s.n, s.dOut + 1), layer), { instanceOf: EigenLoraxError, code: 'ERR_SHAPE_MISMATCH', message: /^dy\b/ });
  await t.throwsAsync(eigenLoraForward(x, layer, { order: 'fastest' as 'auto' }), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT', message: /options\.order/ });
});

test('the native layer re-checks shapes before touching memory', async (t) => {
  const seed = freshSeed();
  const next = seeds(seed);
  const s = { n: 3, dIn: 7, dOut: 5, r: 2 };
  const x = randomMatrix(s.n, s.dIn, next());
  const good = { A: randomMatrix(s.r, s.dIn, next()), B: randomMatrix(s.dOut, s.r, next()), scale: 1, weight: null, bias: null };
  const y = nanMatrix(s.n, s.dOut);
  const shape = (message: RegExp) => ({ instanceOf: EigenLoraxError, code: 'ERR_SHAPE_MISMATCH', message });
  await t.throwsAsync(async () => native.loraForward({ ...good, A: matrix(s.r, s.dIn + 3), x, y }), shape(/\bA\b/));
  await t.throwsAsync(async () => native.loraForward({ ...good, B: matrix(s.dOut, s.r + 1), x, y }), shape(/\bB\b/));
  await t.throwsAsync(async () => native.loraForward({ ...good, weight: matrix(s.dIn, s.dOut), x, y }), shape(/weight/));
  await t.throwsAsync(async () => native.loraForward({ ...good, bias: new Float32Array(s.dOut + 4), x, y }), shape(/bias/));
  await t.throwsAsync(async () => native.loraForward({ ...good, x, y: matrix(s.n, s.dOut + 1) }), shape(/\by\b/));
  const eigen = {
    componentsA: matrix(s.dIn, 4),
    alpha: matrix(4, s.r),
    beta: matrix(3, s.r),
    componentsB: matrix(s.dOut, 3),
    scale: 1,
    weight: null,
    bias: null,
  };
  await t.throwsAsync(async () => native.eigenLoraForward({ ...eigen, componentsA: matrix(s.dIn + 1, 4), x, y, order: 'project' }), shape(/componentsA/));
  await t.throwsAsync(async () => native.eigenLoraForward({ ...eigen, alpha: matrix(5, s.r), x, y, order: 'rebuild' }), shape(/alpha/));
  await t.throwsAsync(async () => native.eigenLoraForward({ ...eigen, beta: matrix(3, s.r + 1), x, y, order: 'project' }), shape(/beta/));
  t.true(y.data.every(Number.isNaN), `seed ${seed}: y written before refusing`);
});

test('linear layers give the same bits whatever the alignment of their buffers (so training is reproducible)', async (t) => {
  const seed = freshSeed();
  const n = 37, dIn = 45, dOut = 70;
  const x = randomMatrix(n, dIn, seed);
  const weight = randomMatrix(dOut, dIn, seed + 1);
  const bias = randomMatrix(1, dOut, seed + 2).data;
  const dy = randomMatrix(n, dOut, seed + 3);
  // The same numbers at every offset of 4 to 60 bytes into a larger buffer.
  const at = (m: Matrix, offset: number): Matrix => {
    const data = new Float32Array(m.data.length + 16).subarray(offset, offset + m.data.length);
    data.set(m.data);
    return matrix(m.rows, m.cols, data);
  };
  const results: string[] = [];
  for (let offset = 0; offset < 16; offset++) {
    const y = await linearForward(at(x, offset), { weight: at(weight, offset), bias });
    const g = await linearBackward(at(x, offset), at(dy, offset), { weight: at(weight, offset) }, { weightGrad: true, biasGrad: true });
    results.push([y.data, g.dx!.data, g.dWeight!.data, g.dBias!].map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64')).join('|'));
  }
  t.true(results.every((r) => r === results[0]), `seed ${seed}: results differ by alignment at offsets ${results.map((r, i) => (r === results[0] ? '' : i)).filter(String).join(', ')}`);
});
