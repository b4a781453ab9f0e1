/**
 * The fused passes of a Sequential model (lib/train/fused.ts, native/addon/train_model_jobs.cpp)
 * against the per-layer path they replace: the same layer objects run one layer at a time
 * (each layer's own forward/backward, the ReLU as its own layer) must give the same
 * outputs and gradients bit for bit. Fresh seeded inputs (replay with
 * EIGENLORAX_TEST_SEED=<seed>); every bad argument of the native jobs gets a typed error.
 */
import test from 'ava';
import { EigenLoraxError, matrix, orthonormalize, type ErrorCode, type Matrix } from '../lib/index.js';
import { native } from '../lib/native.js';
import { crossEntropyLoss, EigenLoRA, GELU, Linear, LoRA, mseLoss, ReLU, Sequential, type Layer, type Loss, type LossValue, type Targets } from '../lib/train/index.js';
import { freshSeed, randomMatrix } from './helpers/random.js';

/** The per-layer forward and backward (Sequential's path for layers it cannot fuse). */
async function perLayer(layers: readonly Layer[], x: Matrix, dy: Matrix | null): Promise<Matrix> {
  let h = x;
  for (const l of layers) h = await l.forward(h);
  const out = matrix(h.rows, h.cols, h.data.slice());
  if (dy !== null) await perLayerBackward(layers, dy);
  return out;
}

/** The per-layer backward from dy through the layers' last forward. */
async function perLayerBackward(layers: readonly Layer[], dy: Matrix): Promise<void> {
  const trainableBefore: boolean[] = [];
  let any = false;
  for (const l of layers) {
    trainableBefore.push(any);
    if (l.parameters().length > 0) any = true;
  }
  let g: Matrix | null = dy;
  for (let i = layers.length - 1; i >= 0; i--) {
    const l = layers[i] as Layer;
    const inputGrad = trainableBefore[i] as boolean;
    if (!inputGrad && l.parameters().length === 0) break;
    g = await l.backward(g as Matrix, { inputGrad });
    if (!inputGrad) break;
  }
}

/** A training step the per-layer way: forward, the loss, backward; no backward for a loss that is not finite. */
async function perLayerStep(layers: readonly Layer[], x: Matrix, loss: Loss, targets: Targets): Promise<{ value: LossValue; grad: Matrix }> {
  let h = x;
  for (const l of layers) h = await l.forward(h);
  const grad = matrix(h.rows, h.cols);
  const value = loss.compute(h, targets, grad);
  if (Number.isFinite(value.loss)) await perLayerBackward(layers, grad);
  return { value, grad };
}

/** Labels in [0, classes) for the cross-entropy, a target matrix for mse. */
function targetsFor(loss: Loss, rows: number, classes: number, seed: number): Targets {
  if (loss === mseLoss) return randomMatrix(rows, classes, seed);
  const labels = new Uint16Array(rows);
  for (let i = 0; i < rows; i++) labels[i] = (seed + 7 * i) % classes;
  return labels;
}

function grads(model: Sequential): Float32Array[] {
  return model.parameters().map((p) => p.grad.slice());
}

async function orthonormal(rows: number, cols: number, seed: number): Promise<Matrix> {
  return orthonormalize(randomMatrix(rows, cols, seed));
}

type Build = (seed: number) => Promise<Layer[]>;

const widths = [13, 9, 7, 4];

function bases(seed: number, trainable = false): Linear[] {
  return widths.slice(0, -1).map((w, i) => Linear.create(`fc${i + 1}`, w, widths[i + 1] as number, { seed: seed + i, trainable }));
}

function withRelu(layers: Layer[], last = false): Layer[] {
  return layers.flatMap((l, i) => (i + 1 < layers.length || last ? [l, new ReLU()] : [l]));
}

const models: Array<[string, Build]> = [
  ['trainable Linear MLP', async (s) => withRelu(bases(s, true))],
  ['LoRA MLP (B non-zero)', async (s) => withRelu(bases(s).map((b, i) => new LoRA(b.name, { base: b, rank: 3, alpha: 5, A: randomMatrix(3, b.inFeatures, s + 10 + i), B: randomMatrix(b.outFeatures, 3, s + 20 + i) })))],
  ...(['auto', 'project', 'rebuild'] as const).map(
    (order): [string, Build] => [
      `EigenLoRA MLP, order ${order}`,
      async (s) => {
        const layers: Layer[] = [];
        for (const [i, b] of bases(s).entries()) {
          const kA = Math.min(4, b.inFeatures);
          const kB = Math.min(3, b.outFeatures);
          layers.push(
            new EigenLoRA(b.name, {
              base: b,
              componentsA: await orthonormal(b.inFeatures, kA, s + 30 + i),
              componentsB: await orthonormal(b.outFeatures, kB, s + 40 + i),
              rank: 2,
              scale: 1.5,
              init: 'uniform',
              seed: s + i,
              order,
            }),
          );
        }
        return withRelu(layers);
      },
    ],
  ),
  [
    'frozen Linear between adapters, no bias, ReLU last',
    async (s) => {
      const [a, b, c] = bases(s);
      const frozen = new Linear('mid', { weight: (b as Linear).weight });
      const first = new LoRA('fc1', { base: a as Linear, rank: 2, A: randomMatrix(2, 13, s + 1), B: randomMatrix(9, 2, s + 2) });
      const last = Linear.create('fc3', 7, 4, { seed: s + 3, bias: false });
      void c;
      return withRelu([first, frozen, last], true);
    },
  ],
  ['frozen first layer, trainable last', async (s) => withRelu([...bases(s).slice(0, 2), Linear.create('out', 7, 4, { seed: s })])],
];

for (const [name, build] of models) {
  for (const rows of [1, 3, 64]) {
    test(`fused passes equal the per-layer path bit for bit: ${name}, ${rows} rows`, async (t) => {
      const seed = freshSeed();
      const layers = await build(seed);
      const model = new Sequential(layers);
      // With few rows a ReLU can zero every gradient (a last ReLU does for one row about
      // one time in sixteen), and zero gradients test nothing: draw the inputs again then.
      let x: Matrix;
      let dy: Matrix;
      let fusedOut: Float32Array;
      let fusedGrads: Float32Array[];
      let draw = 0;
      do {
        x = randomMatrix(rows, widths[0] as number, seed + 100 + 1000 * draw);
        dy = randomMatrix(rows, model.outFeatures, seed + 101 + 1000 * draw);
        fusedOut = (await model.forward(x)).data.slice();
        await model.backward(dy);
        fusedGrads = grads(model);
        draw++;
      } while (draw < 20 && !fusedGrads.some((g) => g.some((v) => v !== 0)));
      t.true(fusedGrads.length > 0);
      // (Not every tensor need be non-zero: a ReLU may zero one layer's gradient.)
      t.true(fusedGrads.some((g) => g.some((v) => v !== 0)), `seed ${seed}: zero gradients after ${draw} draws test nothing`);
      for (const p of model.parameters()) p.grad.fill(Number.NaN);
      const reference = await perLayer(layers, x, dy);
      t.deepEqual(fusedOut, reference.data, `seed ${seed}`);
      t.deepEqual(fusedGrads, grads(model), `seed ${seed}`);
    });
  }
}

for (const [name, build] of models) {
  for (const loss of [crossEntropyLoss, mseLoss]) {
    test(`a whole training step (one job: forward, ${loss.name}, backward) equals the per-layer path bit for bit: ${name}`, async (t) => {
      const seed = freshSeed();
      const layers = await build(seed);
      const model = new Sequential(layers);
      for (const rows of [1, 64]) {
        const x = randomMatrix(rows, widths[0] as number, seed + 100 + rows);
        const targets = targetsFor(loss, rows, model.outFeatures, seed + rows);
        const grad = matrix(rows, model.outFeatures);
        for (const p of model.parameters()) p.grad.fill(Number.NaN);
        const value = await model.trainStep(x, targets, loss, grad);
        const fusedGrads = grads(model);
        for (const p of model.parameters()) p.grad.fill(Number.NaN);
        const reference = await perLayerStep(layers, x, loss, targets);
        t.deepEqual(value, reference.value, `seed ${seed}, ${rows} rows`);
        t.deepEqual(grad.data, reference.grad.data, `seed ${seed}, ${rows} rows`);
        t.deepEqual(fusedGrads, grads(model), `seed ${seed}, ${rows} rows`);
        t.true(fusedGrads.every((g) => g.every(Number.isFinite)), `seed ${seed}: every gradient written`);
      }
    });
  }
}

test('a training step whose loss is not finite writes no gradient, fused or not; a custom loss takes the separate passes', async (t) => {
  const seed = freshSeed();
  const model = new Sequential(withRelu(bases(seed, true)));
  const x = randomMatrix(3, 13, seed);
  x.data[4] = Number.NaN;
  const custom: Loss = { ...crossEntropyLoss, name: 'custom', classification: true, compute: (y, tg, g) => crossEntropyLoss.compute(y, tg, g), checkTargets: () => undefined };
  for (const loss of [crossEntropyLoss, custom]) {
    for (const p of model.parameters()) p.grad.fill(7);
    const value = await model.trainStep(x, new Uint8Array([0, 1, 2]), loss, matrix(3, 4));
    t.true(Number.isNaN(value.loss), `${loss.name}: ${value.loss}`);
    t.true(model.parameters().every((p) => p.grad.every((v) => v === 7)), `${loss.name}: a gradient was written`);
  }
  // A finite step with the custom loss equals the built-in one.
  const y = randomMatrix(3, 13, seed + 1);
  const labels = new Uint8Array([3, 1, 0]);
  const a = await model.trainStep(y, labels, crossEntropyLoss, matrix(3, 4));
  const ga = grads(model);
  const b = await model.trainStep(y, labels, custom, matrix(3, 4));
  t.deepEqual(a, b);
  t.deepEqual(ga, grads(model));
});

test('fused passes and whole steps equal the per-layer path bit for bit at sizes that run queued and multi-threaded (LoRA, EigenLoRA)', async (t) => {
  const seed = freshSeed();
  const dims = [300, 200, 100, 10];
  const base = dims.slice(0, -1).map((w, i) => Linear.create(`fc${i + 1}`, w, dims[i + 1] as number, { seed: seed + i }));
  const lora = base.map((b, i) => new LoRA(b.name, { base: b, rank: 8, A: randomMatrix(8, b.inFeatures, seed + 10 + i), B: randomMatrix(b.outFeatures, 8, seed + 20 + i, 0.1) }));
  const eigen: Layer[] = [];
  for (const [i, b] of base.entries()) {
    const componentsA = await orthonormal(b.inFeatures, Math.min(40, b.inFeatures), seed + 30 + i);
    const componentsB = await orthonormal(b.outFeatures, Math.min(40, b.outFeatures), seed + 40 + i);
    eigen.push(new EigenLoRA(b.name, { base: b, componentsA, componentsB, rank: 8, init: 'uniform', seed: seed + i }));
  }
  for (const layers of [withRelu(lora), withRelu(eigen)]) {
    const model = new Sequential(layers);
    const x = randomMatrix(128, 300, seed + 100);
    const dy = randomMatrix(128, 10, seed + 101);
    const y = (await model.forward(x)).data.slice();
    await model.backward(dy);
    const g = grads(model);
    const reference = await perLayer(layers, x, dy);
    t.deepEqual(y, reference.data, `seed ${seed}`);
    t.deepEqual(g, grads(model), `seed ${seed}`);
    // The whole step (its backward reusing the forward's products) against the separate passes.
    for (const rows of [128, 20]) {
      const xs = randomMatrix(rows, 300, seed + 200 + rows);
      const labels = targetsFor(crossEntropyLoss, rows, 10, seed + rows);
      const grad = matrix(rows, 10);
      const value = await model.trainStep(xs, labels, crossEntropyLoss, grad);
      const stepGrads = grads(model);
      const separate = await perLayerStep(layers, xs, crossEntropyLoss, labels);
      t.deepEqual(value, separate.value, `seed ${seed}, ${rows} rows`);
      t.deepEqual(grad.data, separate.grad.data, `seed ${seed}, ${rows} rows`);
      t.deepEqual(stepGrads, grads(model), `seed ${seed}, ${rows} rows`);
    }
  }
});

test('a Linear layer made trainable (or frozen) between steps: the fused backward follows', async (t) => {
  const seed = freshSeed();
  const [a, b] = [Linear.create('a', 6, 5, { seed, trainable: false }), Linear.create('b', 5, 3, { seed: seed + 1 })];
  const layers = [a, new ReLU(), b];
  const model = new Sequential(layers);
  const x = randomMatrix(4, 6, seed + 2);
  const dy = randomMatrix(4, 3, seed + 3);
  for (const trainable of [false, true, false]) {
    a.trainable = trainable;
    await model.forward(x);
    await model.backward(dy);
    const fused = grads(model);
    t.is(fused.length, trainable ? 4 : 2);
    await perLayer(layers, x, dy);
    t.deepEqual(fused, grads(model), `seed ${seed}`);
  }
});

test('models the job cannot run take the per-layer path (GELU, a ReLU first, two ReLUs)', async (t) => {
  const seed = freshSeed();
  for (const layers of [
    [Linear.create('a', 5, 4, { seed }), new GELU(), Linear.create('b', 4, 2, { seed: seed + 1 })],
    [new ReLU(), Linear.create('a', 5, 2, { seed })],
    [Linear.create('a', 5, 4, { seed }), new ReLU(), new ReLU(), Linear.create('b', 4, 2, { seed: seed + 1 })],
  ]) {
    const model = new Sequential(layers);
    const x = randomMatrix(3, 5, seed + 2);
    const dy = randomMatrix(3, 2, seed + 3);
    const y = (await model.forward(x)).data.slice();
    await model.backward(dy);
    const g = grads(model);
    const reference = await perLayer(layers, x, dy);
    t.deepEqual(y, reference.data);
    t.deepEqual(g, grads(model));
  }
});

test('fused backward: before any forward, and with dy of the wrong shape', async (t) => {
  const model = new Sequential([Linear.create('a', 5, 4), new ReLU(), Linear.create('b', 4, 2)]);
  const e = await t.throwsAsync(model.backward(matrix(3, 2)), { instanceOf: EigenLoraxError });
  t.regex(e?.message ?? '', /before forward/);
  await model.forward(randomMatrix(3, 5, freshSeed()));
  const s = await t.throwsAsync(model.backward(matrix(3, 3)), { instanceOf: EigenLoraxError });
  t.is(s?.code, 'ERR_SHAPE_MISMATCH');
  t.regex(s?.message ?? '', /dy is 3 x 3/);
});

// ---- the native jobs' own checks

function linearLayer(dIn: number, dOut: number, relu = false) {
  return { kind: 'linear' as const, relu, weight: randomMatrix(dOut, dIn, 1), bias: randomMatrix(1, dOut, 2) };
}

async function nativeError(t: import('ava').ExecutionContext, call: () => Promise<unknown>, code: ErrorCode, message: RegExp): Promise<void> {
  const e = (await t.throwsAsync(async () => call())) as EigenLoraxError;
  t.true(e instanceof EigenLoraxError, String(e));
  t.is(e.code, code, e.message);
  t.regex(e.message, message);
}

test('trainModelForward refuses bad layers, shapes and outputs, naming them', async (t) => {
  const x = randomMatrix(2, 5, 3);
  const ok = () => ({ x, layers: [linearLayer(5, 4, true), linearLayer(4, 3)], outputs: [matrix(2, 4), matrix(2, 3)] });
  await t.notThrowsAsync(native.trainModelForward(ok()));
  const bad = (edit: (a: ReturnType<typeof ok>) => unknown) => () => {
    const a = ok();
    return native.trainModelForward(edit(a) as never);
  };
  await nativeError(t, bad((a) => ({ ...a, layers: [] })), 'ERR_INVALID_ARGUMENT', /layers: expected at least one layer/);
  await nativeError(t, bad((a) => ({ ...a, outputs: [a.outputs[0]] })), 'ERR_SHAPE_MISMATCH', /outputs: expected one matrix per layer \(2\), received 1/);
  await nativeError(t, bad((a) => ({ ...a, layers: [{ ...a.layers[0], kind: 'conv' }, a.layers[1]] })), 'ERR_INVALID_ARGUMENT', /layers\[0\]\.kind: expected one of 'linear'/);
  await nativeError(t, bad((a) => ({ ...a, layers: [{ ...a.layers[0], relu: 1 }, a.layers[1]] })), 'ERR_INVALID_ARGUMENT', /layers\[0\]\.relu: expected true or false/);
  await nativeError(t, bad((a) => ({ ...a, layers: [{ ...a.layers[0], weight: null }, a.layers[1]] })), 'ERR_INVALID_ARGUMENT', /layers\[0\]\.weight: expected a matrix/);
  await nativeError(t, bad((a) => ({ ...a, layers: [a.layers[0], linearLayer(3, 3)] })), 'ERR_SHAPE_MISMATCH', /layers\[1\]: takes 3 features but its input \(outputs\[0\]\) has 4/);
  await nativeError(t, bad((a) => ({ ...a, outputs: [a.outputs[0], matrix(2, 4)] })), 'ERR_SHAPE_MISMATCH', /layers\[1\]: outputs\[1\]: expected shape 2 x 3/);
  await nativeError(t, bad((a) => ({ ...a, layers: [{ ...a.layers[0], bias: matrix(1, 3) }, a.layers[1]] })), 'ERR_SHAPE_MISMATCH', /layers\[0\]\.bias: expected shape 1 x 4/);
  await nativeError(t, bad((a) => ({ ...a, outputs: [a.outputs[0], a.outputs[0]] })), 'ERR_INVALID_ARGUMENT', /share memory/);
  const lora = { kind: 'lora', relu: false, weight: randomMatrix(3, 4, 4), bias: null, A: matrix(2, 4), B: matrix(3, 3), scale: 1 };
  await nativeError(t, bad((a) => ({ ...a, layers: [a.layers[0], lora] })), 'ERR_SHAPE_MISMATCH', /layers\[1\]: B: expected shape 3 x 2/);
  await nativeError(t, bad((a) => ({ ...a, layers: [a.layers[0], { ...lora, B: matrix(3, 2), scale: 1e39 }] })), 'ERR_INVALID_ARGUMENT', /layers\[1\]\.scale/);
  const eigen = { kind: 'eigenlora', relu: false, weight: null, bias: null, componentsA: matrix(4, 2), alpha: matrix(2, 1), beta: matrix(2, 1), componentsB: matrix(3, 2), scale: 1, order: 'sideways' };
  await nativeError(t, bad((a) => ({ ...a, layers: [a.layers[0], eigen] })), 'ERR_INVALID_ARGUMENT', /layers\[1\]\.order: expected one of 'auto', 'project', 'rebuild'/);
  await nativeError(t, bad((a) => ({ ...a, layers: [a.layers[0], { ...eigen, order: 'auto', alpha: matrix(3, 1) }] })), 'ERR_SHAPE_MISMATCH', /layers\[1\]: alpha: expected shape 2 x 1/);
  const detached = randomMatrix(2, 5, 5);
  structuredClone(detached.data.buffer, { transfer: [detached.data.buffer as ArrayBuffer] });
  await nativeError(t, bad((a) => ({ ...a, x: detached })), 'ERR_DETACHED_BUFFER', /x\.data: the typed array's buffer is detached/);
});

test('trainModelBackward refuses missing gradients, a bad dy and gradients of the wrong shape', async (t) => {
  const x = randomMatrix(2, 5, 3);
  const outputs = [matrix(2, 4), matrix(2, 3)];
  const layers = [linearLayer(5, 4, true), { ...linearLayer(4, 3), dWeight: matrix(3, 4), dBias: matrix(1, 3) }];
  await native.trainModelForward({ x, layers, outputs });
  const ok = () => ({ x, layers: layers.map((l) => ({ ...l })), outputs, dy: randomMatrix(2, 3, 6) });
  await t.notThrowsAsync(native.trainModelBackward(ok()));
  const bad = (edit: (a: ReturnType<typeof ok>) => unknown) => () => native.trainModelBackward(edit(ok()) as never);
  await nativeError(t, bad((a) => ({ ...a, layers: [a.layers[0], linearLayer(4, 3)] })), 'ERR_INVALID_ARGUMENT', /layers: expected at least one layer with gradients/);
  await nativeError(t, bad((a) => ({ ...a, dy: matrix(2, 4) })), 'ERR_SHAPE_MISMATCH', /layers\[1\]: dy: expected shape 2 x 3/);
  await nativeError(t, bad((a) => ({ ...a, layers: [a.layers[0], { ...a.layers[1], dWeight: matrix(4, 3) }] })), 'ERR_SHAPE_MISMATCH', /layers\[1\]: dWeight: expected shape 3 x 4/);
  await nativeError(t, bad((a) => ({ ...a, layers: [a.layers[0], { ...a.layers[1], dBias: matrix(1, 4) }] })), 'ERR_SHAPE_MISMATCH', /layers\[1\]\.dBias: expected shape 1 x 3/);
  await nativeError(t, bad((a) => ({ ...a, outputs: [matrix(2, 4)] })), 'ERR_SHAPE_MISMATCH', /outputs: expected one matrix per layer/);
  const lora = { kind: 'lora', relu: false, weight: layers[1]?.weight, bias: null, A: matrix(2, 4), B: matrix(3, 2), scale: 1, dA: matrix(2, 4) };
  await nativeError(t, bad((a) => ({ ...a, layers: [a.layers[0], lora] })), 'ERR_INVALID_ARGUMENT', /layers\[1\]\.dB: expected a matrix/);
});

test('trainModelStep refuses a bad loss, targets that do not fit, a bad grad and a model without gradients', async (t) => {
  const x = randomMatrix(2, 5, 3);
  const layers = [linearLayer(5, 4, true), { ...linearLayer(4, 3), dWeight: matrix(3, 4), dBias: matrix(1, 3) }];
  const ok = () => ({ x, layers: layers.map((l) => ({ ...l })), outputs: [matrix(2, 4), matrix(2, 3)], loss: 'cross-entropy', targets: new Uint8Array([2, 0]) as unknown, grad: matrix(2, 3) });
  const value = await native.trainModelStep(ok() as never);
  t.true(Number.isFinite(value.loss) && (value.correct === 0 || value.correct === 1 || value.correct === 2));
  const bad = (edit: (a: ReturnType<typeof ok>) => unknown) => () => native.trainModelStep(edit(ok()) as never);
  await nativeError(t, bad((a) => ({ ...a, loss: 'hinge' })), 'ERR_INVALID_ARGUMENT', /loss: expected one of 'cross-entropy', 'mse'/);
  await nativeError(t, bad((a) => ({ ...a, targets: new Uint8Array([2, 3]) })), 'ERR_INVALID_ARGUMENT', /targets: label 3 at row 1 is out of range: the model has 3 outputs/);
  await nativeError(t, bad((a) => ({ ...a, targets: new Int32Array([-1, 0]) })), 'ERR_INVALID_ARGUMENT', /targets: label -1 at row 0/);
  await nativeError(t, bad((a) => ({ ...a, targets: new Uint16Array([1]) })), 'ERR_SHAPE_MISMATCH', /targets: 1 labels for 2 rows/);
  await nativeError(t, bad((a) => ({ ...a, targets: new Float32Array([1, 0]) })), 'ERR_INVALID_ARGUMENT', /targets: expected class labels/);
  await nativeError(t, bad((a) => ({ ...a, loss: 'mse', targets: new Uint8Array([1, 0]) })), 'ERR_INVALID_ARGUMENT', /targets/);
  await nativeError(t, bad((a) => ({ ...a, loss: 'mse', targets: matrix(2, 4) })), 'ERR_SHAPE_MISMATCH', /targets: expected shape 2 x 3/);
  await nativeError(t, bad((a) => ({ ...a, grad: matrix(2, 4) })), 'ERR_SHAPE_MISMATCH', /dy: expected shape 2 x 3/);
  await nativeError(t, bad((a) => ({ ...a, grad: a.outputs[1] })), 'ERR_INVALID_ARGUMENT', /share memory/);
  await nativeError(t, bad((a) => ({ ...a, layers: [a.layers[0], linearLayer(4, 3)] })), 'ERR_INVALID_ARGUMENT', /layers: expected at least one layer with gradients/);
  const mse = await native.trainModelStep({ ...ok(), loss: 'mse', targets: randomMatrix(2, 3, 9) } as never);
  t.is(mse.correct, null);
});

test('the synchronous losses refuse arrays that do not fit and labels out of range', (t) => {
  const logits = randomMatrix(2, 3, 4).data;
  const call = (f: () => unknown, code: ErrorCode, message: RegExp) => {
    const e = t.throws(f) as EigenLoraxError;
    t.is(e.code, code, e.message);
    t.regex(e.message, message);
  };
  call(() => native.trainSoftmaxCrossEntropy(logits, 2, 4, new Uint8Array([0, 1]), null), 'ERR_SHAPE_MISMATCH', /logits: 6 values for 2 x 4/);
  call(() => native.trainSoftmaxCrossEntropy(logits, 2, 3, new Uint8Array([0, 3]), null), 'ERR_INVALID_ARGUMENT', /labels: label 3 at row 1/);
  call(() => native.trainSoftmaxCrossEntropy(logits, 2, 3, new Uint8Array([0]), null), 'ERR_SHAPE_MISMATCH', /labels: 1 labels for 2 rows/);
  call(() => native.trainSoftmaxCrossEntropy(logits, 2, 3, new Float32Array(2) as never, null), 'ERR_INVALID_ARGUMENT', /labels: expected class labels/);
  call(() => native.trainSoftmaxCrossEntropy(logits, 2, 3, new Uint8Array([0, 1]), new Float32Array(5)), 'ERR_SHAPE_MISMATCH', /grad: 5 values/);
  call(() => native.trainSoftmaxCrossEntropy(logits, 1.5, 3, new Uint8Array([0, 1]), null), 'ERR_INVALID_ARGUMENT', /rows and classes/);
  call(() => native.trainMeanSquaredError(logits, new Float32Array(5), null), 'ERR_SHAPE_MISMATCH', /target has 5 values but output has 6/);
  call(() => native.trainMeanSquaredError(logits, logits, new Float32Array(2)), 'ERR_SHAPE_MISMATCH', /grad has 2 values/);
});

test('an output detached while the job runs is refused; an input detached meanwhile does not change the result', async (t) => {
  // Large enough to be queued (not run inline), so JavaScript runs while it works.
  const seed = freshSeed();
  const x = randomMatrix(64, 300, seed);
  const layers = [linearLayer(300, 200, true), linearLayer(200, 10)];
  const expected = [matrix(64, 200), matrix(64, 10)];
  await native.trainModelForward({ x, layers, outputs: expected });
  const outputs = [matrix(64, 200), matrix(64, 10)];
  const running = native.trainModelForward({ x, layers, outputs });
  structuredClone(outputs[1]?.data.buffer, { transfer: [outputs[1]?.data.buffer as ArrayBuffer] });
  const e = (await t.throwsAsync(running)) as EigenLoraxError;
  t.is(e.code, 'ERR_DETACHED_BUFFER');
  t.regex(e.message, /outputs\[1\]/);
  const again = [matrix(64, 200), matrix(64, 10)];
  const copy = matrix(64, 300, x.data.slice());
  const second = native.trainModelForward({ x: copy, layers, outputs: again });
  structuredClone(copy.data.buffer, { transfer: [copy.data.buffer as ArrayBuffer] });
  await second;
  t.deepEqual(again[1]?.data, expected[1]?.data);
});
