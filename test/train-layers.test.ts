/**
 * Training layers and losses against float64 references written from the formulas:
 * forward values, and every gradient (weights, biases, adapters, inputs) against central
 * finite differences of the f64 reference. Every test draws fresh data from its own seed
 * (replay with EIGENLORAX_TEST_SEED=<seed>).
 */
import test from 'ava';
import { EigenLoraxError, matrix, orthonormalize, setThreads, type Matrix } from '../lib/index.js';
import {
  augmentComponents,
  crossEntropyLoss,
  EigenLoRA,
  GELU,
  Linear,
  LoRA,
  mseLoss,
  ReLU,
  Sequential,
  type Layer,
} from '../lib/train/index.js';
import { erf } from '../lib/train/kernels.js';
import { freshSeed } from './helpers/random.js';
import {
  awayFromZero,
  dotLoss,
  f64,
  finiteDifferences,
  gradientError,
  randomF32,
  randomMat,
  refCrossEntropy,
  refEigenLora,
  refErf,
  refGelu,
  refLinear,
  refLora,
  refMatmul,
  refMse,
  refRelu,
  refTranspose,
  sampleIndices,
} from './helpers/train-fixtures.js';

setThreads(2);

const FORWARD_TOL = 2e-5;
/** Analytic (f32) gradients against f64 finite differences, relative to the largest entry. */
const GRAD_TOL = 2e-4;

function forwardError(y: Float32Array, ref: Float64Array): number {
  return gradientError(y, ref);
}

async function orthonormalColumns(rows: number, cols: number, seed: number): Promise<Matrix> {
  return orthonormalize(randomMat(rows, cols, seed));
}

// ---------------------------------------------------------------------------------------
// Linear

for (const n of [1, 3, 9, 70]) {
  test(`Linear (trainable, n = ${n}): forward matches f64; dW, db and dx match finite differences`, async (t) => {
    const seed = freshSeed();
    t.log(`seed ${seed}`);
    const dIn = 13;
    const dOut = 6;
    const layer = Linear.create('fc', dIn, dOut, { seed });
    const x = randomMat(n, dIn, seed + 1);
    const G = randomF32(n * dOut, seed + 2);
    const y = await layer.forward(x);
    const x64 = f64(x.data);
    const W64 = f64(layer.weight.data);
    const b64 = f64(layer.bias as Float32Array);
    t.true(forwardError(y.data, refLinear(x64, n, dIn, W64, dOut, b64)) < FORWARD_TOL);

    const dx = (await layer.backward(matrix(n, dOut, G))) as Matrix;
    const [gW, gB] = layer.parameters();
    t.is(gW?.name, 'fc.weight');
    t.is(gB?.name, 'fc.bias');
    t.deepEqual(gW?.shape, [dOut, dIn]);
    const loss = () => dotLoss(refLinear(x64, n, dIn, W64, dOut, b64), G);
    const check = (values: Float64Array, grad: Float32Array, what: string) => {
      const idx = sampleIndices(values.length, 40, seed + 3);
      const fd = finiteDifferences(loss, values, idx, 1e-3);
      const err = gradientError(idx.map((i) => grad[i] as number), fd);
      t.true(err < GRAD_TOL, `${what}: relative error ${err}`);
    };
    check(W64, gW?.grad as Float32Array, 'dW');
    check(b64, gB?.grad as Float32Array, 'db');
    check(x64, dx.data, 'dx');
  });
}

test('Linear: frozen by default (no parameters; dx = dy W only), inputGrad false returns null', async (t) => {
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const weight = randomMat(4, 5, seed);
  const layer = new Linear('frozen', { weight, bias: null });
  t.false(layer.trainable);
  t.deepEqual(layer.parameters(), []);
  t.deepEqual(
    layer.tensors().map((x) => [x.name, x.shape, x.trainable]),
    [['frozen.weight', [4, 5], false]],
  );
  const x = randomMat(3, 5, seed + 1);
  const dy = randomMat(3, 4, seed + 2);
  const y = await layer.forward(x);
  t.true(forwardError(y.data, refLinear(f64(x.data), 3, 5, f64(weight.data), 4, null)) < FORWARD_TOL);
  const dx = (await layer.backward(dy)) as Matrix;
  t.true(forwardError(dx.data, refMatmul(f64(dy.data), 3, 4, f64(weight.data), 5)) < FORWARD_TOL);
  t.is(await layer.backward(dy, { inputGrad: false }), null);
});

test('Linear.create initialises as nn.Linear (U(-1/sqrt(in), 1/sqrt(in))) and is seeded', (t) => {
  const a = Linear.create('a', 100, 30, { seed: 5 });
  const b = Linear.create('b', 100, 30, { seed: 5 });
  const c = Linear.create('c', 100, 30, { seed: 6 });
  t.deepEqual(a.weight.data, b.weight.data);
  t.notDeepEqual(a.weight.data, c.weight.data);
  const bound = 1 / Math.sqrt(100);
  t.true(a.weight.data.every((v) => Math.abs(v) <= bound));
  t.true((a.bias as Float32Array).every((v) => Math.abs(v) <= bound));
  const maxAbs = a.weight.data.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  t.true(maxAbs > 0.9 * bound);
  t.is(Linear.create('d', 3, 2, { bias: false }).bias, null);
});

test('Linear: shape errors are typed (input width, dy shape, backward before forward)', async (t) => {
  const layer = Linear.create('fc', 4, 3);
  await t.throwsAsync(layer.backward(matrix(2, 3)), { instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT' });
  await t.throwsAsync(layer.forward(matrix(2, 5)), { code: 'ERR_SHAPE_MISMATCH' });
  await layer.forward(matrix(2, 4));
  await t.throwsAsync(layer.backward(matrix(2, 4)), { code: 'ERR_SHAPE_MISMATCH' });
  t.throws(() => new Linear('bad', { weight: matrix(3, 4), bias: new Float32Array(4) }), { code: 'ERR_SHAPE_MISMATCH' });
});

// ---------------------------------------------------------------------------------------
// LoRA

test('LoRA: forward matches the dense f64 reference; dA, dB and dx match finite differences', async (t) => {
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const [n, dIn, dOut, r] = [5, 11, 7, 3];
  const base = Linear.create('q', dIn, dOut, { seed, trainable: false });
  const A = randomMat(r, dIn, seed + 1, 0.5);
  const B = randomMat(dOut, r, seed + 2, 0.5);
  const layer = new LoRA('q', { base, rank: r, alpha: 6, A, B });
  t.is(layer.scale, 2);
  const x = randomMat(n, dIn, seed + 3);
  const G = randomF32(n * dOut, seed + 4);
  const [x64, W64, b64, A64, B64] = [x.data, base.weight.data, base.bias as Float32Array, A.data, B.data].map(f64) as Float64Array[];
  const ref = () => refLora(x64 as Float64Array, n, dIn, W64 as Float64Array, dOut, b64 as Float64Array, A64 as Float64Array, B64 as Float64Array, r, 2);
  const y = await layer.forward(x);
  t.true(forwardError(y.data, ref()) < FORWARD_TOL);
  const dx = (await layer.backward(matrix(n, dOut, G))) as Matrix;
  const [pA, pB] = layer.parameters();
  t.deepEqual([pA?.name, pB?.name], ['q.lora_A.weight', 'q.lora_B.weight']);
  const loss = () => dotLoss(ref(), G);
  for (const [values, grad, what] of [
    [A64, pA?.grad, 'dA'],
    [B64, pB?.grad, 'dB'],
    [x64, dx.data, 'dx'],
  ] as Array<[Float64Array, Float32Array, string]>) {
    const idx = sampleIndices(values.length, 40, seed + 5);
    const err = gradientError(
      idx.map((i) => grad[i] as number),
      finiteDifferences(loss, values, idx, 1e-3),
    );
    t.true(err < GRAD_TOL, `${what}: relative error ${err}`);
  }
  // inputGrad false: same adapter gradients, no dx.
  const dA = Float32Array.from(pA?.grad as Float32Array);
  t.is(await layer.backward(matrix(n, dOut, G), { inputGrad: false }), null);
  t.deepEqual(Float32Array.from(pA?.grad as Float32Array), dA);
});

test('LoRA: PEFT initialisation (A Kaiming-uniform, B = 0) starts at the base model; rsLoRA scale', async (t) => {
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const base = Linear.create('v', 20, 9, { seed, trainable: false });
  const layer = new LoRA('v', { base, rank: 4, alpha: 8, seed });
  t.is(layer.scale, 2);
  t.true(layer.B.data.every((v) => v === 0));
  t.true(layer.A.data.every((v) => Math.abs(v) <= 1 / Math.sqrt(20)));
  t.true(layer.A.data.some((v) => v !== 0));
  const x = randomMat(6, 20, seed + 1);
  const y = Float32Array.from((await layer.forward(x)).data);
  const yBase = (await base.forward(x)).data;
  t.deepEqual(y, Float32Array.from(yBase));
  t.is(new LoRA('v', { base, rank: 4, alpha: 8, rslora: true }).scale, 4);
  t.is(layer.weight, base.weight, 'the base weight is shared, not copied');
  t.deepEqual(
    layer.tensors().map((x) => [x.name, x.trainable]),
    [
      ['v.weight', false],
      ['v.bias', false],
      ['v.lora_A.weight', true],
      ['v.lora_B.weight', true],
    ],
  );
  t.throws(() => new LoRA('v', { base, rank: 0 }), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => new LoRA('v', { base, rank: 2, A: matrix(2, 19), B: matrix(9, 2) }), { code: 'ERR_SHAPE_MISMATCH' });
});

// ---------------------------------------------------------------------------------------
// EigenLoRA

for (const order of ['project', 'rebuild'] as const) {
  test(`EigenLoRA (${order}): forward matches f64; d alpha, d beta and dx match finite differences`, async (t) => {
    const seed = freshSeed();
    t.log(`seed ${seed}`);
    const [n, dIn, dOut, kA, kB, r] = [6, 17, 9, 5, 4, 2];
    const base = Linear.create('o', dIn, dOut, { seed, trainable: false });
    const componentsA = await orthonormalColumns(dIn, kA, seed + 1);
    const componentsB = await orthonormalColumns(dOut, kB, seed + 2);
    const layer = new EigenLoRA('o', { base, componentsA, componentsB, rank: r, scale: 1.5, init: 'uniform', seed, order });
    const x = randomMat(n, dIn, seed + 3);
    const G = randomF32(n * dOut, seed + 4);
    const [x64, W64, b64, VA, UB, al, be] = [
      x.data,
      base.weight.data,
      base.bias as Float32Array,
      componentsA.data,
      componentsB.data,
      layer.alpha.data,
      layer.beta.data,
    ].map(f64) as Float64Array[];
    const ref = () =>
      refEigenLora(x64 as Float64Array, n, dIn, W64 as Float64Array, dOut, b64 as Float64Array, VA as Float64Array, kA, al as Float64Array, UB as Float64Array, kB, be as Float64Array, r, 1.5);
    const y = await layer.forward(x);
    t.true(forwardError(y.data, ref()) < FORWARD_TOL);
    const dx = (await layer.backward(matrix(n, dOut, G))) as Matrix;
    const [pAlpha, pBeta] = layer.parameters();
    t.deepEqual([pAlpha?.name, pBeta?.name], ['o.eigenlora_A.loadings', 'o.eigenlora_B.loadings']);
    t.deepEqual([pAlpha?.shape, pBeta?.shape], [
      [kA, r],
      [kB, r],
    ]);
    const loss = () => dotLoss(ref(), G);
    for (const [values, grad, what] of [
      [al, pAlpha?.grad, 'd alpha'],
      [be, pBeta?.grad, 'd beta'],
      [x64, dx.data, 'dx'],
    ] as Array<[Float64Array, Float32Array, string]>) {
      const idx = sampleIndices(values.length, 40, seed + 5);
      const err = gradientError(
        idx.map((i) => grad[i] as number),
        finiteDifferences(loss, values, idx, 1e-3),
      );
      t.true(err < GRAD_TOL, `${what}: relative error ${err}`);
    }
  });
}

test("EigenLoRA initialisations: 'zero-beta' starts at the base, 'uniform' in [-0.5, 0.5), 'project' copies the loadings", async (t) => {
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const base = Linear.create('k', 12, 8, { seed, trainable: false });
  const componentsA = await orthonormalColumns(12, 6, seed + 1);
  const componentsB = await orthonormalColumns(8, 4, seed + 2);
  const common = { base, componentsA, componentsB, rank: 3 };
  const zero = new EigenLoRA('k', { ...common, seed });
  t.true(zero.beta.data.every((v) => v === 0));
  t.true(zero.alpha.data.every((v) => Math.abs(v) <= 1 / Math.sqrt(6)) && zero.alpha.data.some((v) => v !== 0));
  const x = randomMat(4, 12, seed + 3);
  t.deepEqual(Float32Array.from((await zero.forward(x)).data), Float32Array.from((await base.forward(x)).data));
  const uniform = new EigenLoRA('k', { ...common, init: 'uniform', seed });
  t.true([...uniform.alpha.data, ...uniform.beta.data].every((v) => v >= -0.5 && v < 0.5));
  const alpha = randomMat(6, 3, seed + 4);
  const beta = randomMat(4, 3, seed + 5);
  const projected = new EigenLoRA('k', { ...common, init: 'project', loadings: { alpha, beta } });
  t.deepEqual(projected.alpha.data, alpha.data);
  t.not(projected.alpha.data, alpha.data, 'copied');
  t.throws(() => new EigenLoRA('k', { ...common, loadings: { alpha, beta } }), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => new EigenLoRA('k', { ...common, init: 'project', loadings: { alpha: matrix(5, 3), beta } }), { code: 'ERR_SHAPE_MISMATCH' });
  t.throws(() => new EigenLoRA('k', { ...common, componentsA: matrix(11, 6) }), { code: 'ERR_SHAPE_MISMATCH' });
  t.deepEqual(
    zero.tensors().map((x) => x.name),
    ['k.weight', 'k.bias', 'k.eigenlora_A.components', 'k.eigenlora_B.components', 'k.eigenlora_A.loadings', 'k.eigenlora_B.loadings'],
  );
});

test('augmentComponents appends orthonormal directions orthogonal to the components', async (t) => {
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const V = await orthonormalColumns(30, 5, seed);
  const X = await augmentComponents(V, 4, { seed });
  t.is(X.cols, 9);
  for (let i = 0; i < 30; i++) for (let j = 0; j < 5; j++) t.is(X.data[i * 9 + j], V.data[i * 5 + j]);
  const gram = refMatmul(refTranspose(f64(X.data), 30, 9), 9, 30, f64(X.data), 9);
  let defect = 0;
  for (let i = 0; i < 9; i++) for (let j = 0; j < 9; j++) defect = Math.max(defect, Math.abs((gram[i * 9 + j] as number) - (i === j ? 1 : 0)));
  t.true(defect < 1e-5, `orthonormality defect ${defect}`);
  t.deepEqual((await augmentComponents(V, 4, { seed })).data, X.data, 'seeded');
});

// ---------------------------------------------------------------------------------------
// Activations

test('erf is accurate to 2e-7 (known values and the series)', (t) => {
  const known: Array<[number, number]> = [
    [0, 0],
    [0.5, 0.5204998778130465],
    [1, 0.8427007929497149],
    [2, 0.9953222650189527],
    [-1.5, -0.9661051464753108],
    [4, 0.9999999845827421],
  ];
  for (const [x, v] of known) t.true(Math.abs(erf(x) - v) < 2e-7, `erf(${x})`);
  for (let x = -3; x <= 3; x += 0.01) t.true(Math.abs(erf(x) - refErf(x)) < 2e-7, `erf(${x})`);
});

const activations: Array<[string, () => Layer, (x: Float64Array) => Float64Array]> = [
  ['ReLU', () => new ReLU(), refRelu],
  ['GELU (erf)', () => new GELU(), (x) => refGelu(x, 'none')],
  ['GELU (tanh)', () => new GELU('', { approximate: 'tanh' }), (x) => refGelu(x, 'tanh')],
];

for (const [label, make, ref] of activations) {
  test(`${label}: forward matches f64; dx matches finite differences`, async (t) => {
    const seed = freshSeed();
    t.log(`seed ${seed}`);
    const layer = make();
    const x = matrix(7, 11, awayFromZero(randomF32(77, seed, 1.3)));
    for (let i = 0; i < x.data.length; i++) x.data[i] = Math.max(-2.9, Math.min(2.9, x.data[i] as number));
    const G = randomF32(77, seed + 1);
    const x64 = f64(x.data);
    const y = await layer.forward(x);
    t.true(forwardError(y.data, ref(x64)) < 1e-6);
    const dx = (await layer.backward(matrix(7, 11, G))) as Matrix;
    const idx = sampleIndices(77, 77, seed);
    const fd = finiteDifferences(() => dotLoss(ref(x64), G), x64, idx, 1e-5);
    const err = gradientError(
      idx.map((i) => dx.data[i] as number),
      fd,
    );
    t.true(err < GRAD_TOL, `relative error ${err}`);
    t.deepEqual(layer.parameters(), []);
  });
}

// ---------------------------------------------------------------------------------------
// Losses

test('cross-entropy: mean loss and gradient match the f64 reference and finite differences; accuracy count', (t) => {
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const [n, c] = [9, 5];
  const logits = randomMat(n, c, seed, 2);
  const labels = Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) % c);
  const grad = matrix(n, c);
  const { loss, correct } = crossEntropyLoss.compute(logits, labels, grad);
  const l64 = f64(logits.data);
  t.true(Math.abs(loss - refCrossEntropy(l64, n, c, labels)) < 1e-6);
  const idx = sampleIndices(n * c, n * c, seed);
  const fd = finiteDifferences(() => refCrossEntropy(l64, n, c, labels), l64, idx, 1e-5);
  t.true(gradientError(grad.data, fd) < 1e-5);
  let expected = 0;
  for (let i = 0; i < n; i++) {
    const row = [...logits.data.subarray(i * c, (i + 1) * c)];
    if (row.indexOf(Math.max(...row)) === labels[i]) expected++;
  }
  t.is(correct, expected);
  t.true(crossEntropyLoss.classification);
});

test('cross-entropy is numerically stable for huge logits', (t) => {
  const logits = matrix(2, 3, new Float32Array([1e4, 0, -1e4, 3e4, 3e4 - 2, 0]));
  const grad = matrix(2, 3);
  const { loss } = crossEntropyLoss.compute(logits, new Int32Array([1, 0]), grad);
  // Row 1: 1e4 (log-sum-exp = 1e4); row 2: log(1 + e^-2).
  const expected = (1e4 + Math.log(1 + Math.exp(-2))) / 2;
  t.true(Math.abs(loss - expected) / expected < 1e-7);
  t.true(grad.data.every((v) => Number.isFinite(v)));
  t.true(Math.abs((grad.data[0] as number) - 0.5) < 1e-7 && Math.abs((grad.data[1] as number) + 0.5) < 1e-7);
});

test('cross-entropy: labels out of range or of the wrong count are typed errors', (t) => {
  const logits = matrix(2, 3);
  t.throws(() => crossEntropyLoss.compute(logits, new Uint8Array([0, 3])), { code: 'ERR_INVALID_ARGUMENT', message: /label 3 at row 1 is out of range/ });
  t.throws(() => crossEntropyLoss.compute(logits, new Int32Array([-1, 0])), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => crossEntropyLoss.compute(logits, new Uint8Array([0])), { code: 'ERR_SHAPE_MISMATCH' });
  t.throws(() => crossEntropyLoss.compute(logits, matrix(2, 3)), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => crossEntropyLoss.compute(logits, new Uint8Array([0, 1]), matrix(2, 2)), { code: 'ERR_SHAPE_MISMATCH' });
});

test('MSE: mean over all elements; gradient matches finite differences', (t) => {
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const y = randomMat(6, 4, seed);
  const target = randomMat(6, 4, seed + 1);
  const grad = matrix(6, 4);
  const { loss, correct } = mseLoss.compute(y, target, grad);
  t.is(correct, null);
  const y64 = f64(y.data);
  t.true(Math.abs(loss - refMse(y64, target.data)) < 1e-6);
  const idx = sampleIndices(24, 24, seed);
  t.true(gradientError(grad.data, finiteDifferences(() => refMse(y64, target.data), y64, idx, 1e-5)) < 1e-5);
  t.throws(() => mseLoss.compute(y, matrix(6, 3)), { code: 'ERR_SHAPE_MISMATCH' });
  t.throws(() => mseLoss.compute(y, new Uint8Array(6)), { code: 'ERR_INVALID_ARGUMENT' });
});

// ---------------------------------------------------------------------------------------
// A whole model

test('Sequential: gradients of every trainable tensor through Linear, GELU, LoRA, ReLU, EigenLoRA and cross-entropy match finite differences', async (t) => {
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const n = 8;
  const fc1 = Linear.create('fc1', 6, 10, { seed });
  const base2 = Linear.create('fc2', 10, 7, { seed: seed + 1, trainable: false });
  const fc2 = new LoRA('fc2', { base: base2, rank: 2, alpha: 4, A: randomMat(2, 10, seed + 2, 0.4), B: randomMat(7, 2, seed + 3, 0.4) });
  const base3 = Linear.create('fc3', 7, 4, { seed: seed + 4, trainable: false });
  const fc3 = new EigenLoRA('fc3', {
    base: base3,
    componentsA: await orthonormalColumns(7, 3, seed + 5),
    componentsB: await orthonormalColumns(4, 3, seed + 6),
    rank: 2,
    scale: 1.5,
    init: 'uniform',
    seed,
  });
  const model = new Sequential([fc1, new GELU(), fc2, new ReLU(), fc3]);
  t.deepEqual(
    model.parameters().map((p) => p.name),
    ['fc1.weight', 'fc1.bias', 'fc2.lora_A.weight', 'fc2.lora_B.weight', 'fc3.eigenlora_A.loadings', 'fc3.eigenlora_B.loadings'],
  );
  t.is(model.parameterCount({ trainable: true }), 6 * 10 + 10 + 2 * 10 + 7 * 2 + 3 * 2 + 3 * 2);
  const x = randomMat(n, 6, seed + 7);
  const labels = Uint8Array.from({ length: n }, (_, i) => i % 4);
  const out = await model.forward(x);
  const grad = matrix(n, 4);
  crossEntropyLoss.compute(out, labels, grad);
  await model.backward(grad);

  const v = Object.fromEntries(model.tensors().map((tt) => [tt.name, f64(tt.data)])) as Record<string, Float64Array>;
  const x64 = f64(x.data);
  const loss = () => {
    let h = refLinear(x64, n, 6, v['fc1.weight'] as Float64Array, 10, v['fc1.bias'] as Float64Array);
    h = refGelu(h, 'none');
    h = refLora(h, n, 10, v['fc2.weight'] as Float64Array, 7, v['fc2.bias'] as Float64Array, v['fc2.lora_A.weight'] as Float64Array, v['fc2.lora_B.weight'] as Float64Array, 2, 2);
    h = refRelu(h);
    h = refEigenLora(
      h,
      n,
      7,
      v['fc3.weight'] as Float64Array,
      4,
      v['fc3.bias'] as Float64Array,
      v['fc3.eigenlora_A.components'] as Float64Array,
      3,
      v['fc3.eigenlora_A.loadings'] as Float64Array,
      v['fc3.eigenlora_B.components'] as Float64Array,
      3,
      v['fc3.eigenlora_B.loadings'] as Float64Array,
      2,
      1.5,
    );
    return refCrossEntropy(h, n, 4, labels);
  };
  for (const p of model.parameters()) {
    const values = v[p.name] as Float64Array;
    const sampled = sampleIndices(values.length, 25, seed + 8);
    // Where a ReLU input lies within the step of zero the loss has a kink there, and a
    // central difference across it is no derivative: such entries are those whose
    // differences at two steps disagree; they are left out (a few at most).
    const fine = finiteDifferences(loss, values, sampled, 1e-5);
    const finer = finiteDifferences(loss, values, sampled, 1e-6);
    const scale = Math.max(...fine.map(Math.abs), 1e-12);
    const smooth = sampled.map((_, k) => k).filter((k) => Math.abs((fine[k] as number) - (finer[k] as number)) <= 1e-4 * scale);
    t.true(smooth.length >= sampled.length - 3, `${p.name}: ${sampled.length - smooth.length} of ${sampled.length} entries at a kink`);
    const err = gradientError(
      smooth.map((k) => p.grad[sampled[k] as number] as number),
      smooth.map((k) => fine[k] as number),
    );
    t.true(err < 1e-3, `${p.name}: relative error ${err}`);
  }
});

test('Sequential: shapes are checked when it is built and at forward; names must be unique', async (t) => {
  const a = Linear.create('a', 4, 3);
  t.throws(() => new Sequential([a, new ReLU(), Linear.create('b', 5, 2)]), { code: 'ERR_SHAPE_MISMATCH' });
  t.throws(() => new Sequential([a, Linear.create('a', 3, 2)]), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => new Sequential([]), { code: 'ERR_INVALID_ARGUMENT' });
  const model = new Sequential([a, new ReLU(), Linear.create('b', 3, 2)]);
  t.is(model.inFeatures, 4);
  t.is(model.outFeatures, 2);
  await t.throwsAsync(model.forward(matrix(2, 5)), { code: 'ERR_SHAPE_MISMATCH' });
  const predicted = await model.predict(randomMat(5, 4, 1), { batchSize: 2 });
  t.is(predicted.rows, 5);
  const single = await model.forward(randomMat(5, 4, 1));
  t.deepEqual(predicted.data, Float32Array.from(single.data));
});
