/**
 * The training loop: small synthetic tasks that must be learned, exact resume from
 * checkpoints (bit-identical parameters and histories), abort, early stopping, events,
 * the progress bar, a responsive event loop, and typed errors for bad inputs.
 */
import test from 'ava';
import { access } from 'node:fs/promises';
import path from 'node:path';
import { matrix, orthonormalize, setThreads } from '../lib/index.js';
import {
  EigenLoRA,
  formatProgress,
  GELU,
  Linear,
  loadCheckpoint,
  LoRA,
  ReLU,
  Sequential,
  trainModel,
  type TrainEvent,
  type TrainOptions,
} from '../lib/train/index.js';
import { type Dataset } from '../lib/data/index.js';
import { bitsEqual, blobs, randomMat, tempDir, xorData } from './helpers/train-fixtures.js';

setThreads(2);

function mlp(seed: number, dims: number[], activation: () => ReLU | GELU = () => new ReLU()): Sequential {
  const layers = [];
  for (let i = 0; i + 1 < dims.length; i++) {
    if (i > 0) layers.push(activation());
    layers.push(Linear.create(`fc${i + 1}`, dims[i] as number, dims[i + 1] as number, { seed: seed + i }));
  }
  return new Sequential(layers);
}

/** A LoRA layer on a frozen random base, GELU, then a trainable head. */
function adapterModel(seed: number): Sequential {
  const base = Linear.create('fc1', 10, 16, { seed, trainable: false });
  return new Sequential([new LoRA('fc1', { base, rank: 4, alpha: 8, seed: seed + 1 }), new GELU(), Linear.create('fc2', 16, 3, { seed: seed + 2 })]);
}

function copyParams(model: Sequential): Map<string, Float32Array> {
  return new Map(model.parameters().map((p) => [p.name, p.data.slice()]));
}

// ---------------------------------------------------------------------------------------
// Learning

test('a small MLP learns XOR-like data to >= 95% validation accuracy', async (t) => {
  const train = xorData(800, 11);
  const validation = xorData(400, 12);
  const model = mlp(3, [2, 16, 16, 2]);
  const result = await trainModel(model, { train, validation }, { epochs: 25, batchSize: 32, optimizer: { type: 'adamw', lr: 0.02 }, seed: 1, progress: false });
  t.is(result.stoppedBy, 'completed');
  t.is(result.steps, 25 * 25);
  t.is(result.epochs, 25);
  t.is(result.evals.length, 25);
  t.log(`accuracy ${result.lastEval?.accuracy}`);
  t.true((result.lastEval?.accuracy as number) >= 0.95, `accuracy ${result.lastEval?.accuracy}`);
  const evaluation = await model.evaluate(validation);
  t.is(evaluation.accuracy, result.lastEval?.accuracy as number);
});

test('LoRA on a frozen random base and EigenLoRA (full components) learn 3 Gaussian blobs to >= 95%', async (t) => {
  const train = blobs(600, 10, 3, 21, 4);
  const validation = blobs(300, 10, 3, 22, 4);
  const lora = adapterModel(5);
  const frozenBefore = (lora.layers[0] as LoRA).weight.data.slice();
  const r1 = await trainModel(lora, { train, validation }, { epochs: 8, batchSize: 32, optimizer: { type: 'adam', lr: 0.01 }, progress: false });
  t.log(`LoRA accuracy ${r1.lastEval?.accuracy}`);
  t.true((r1.lastEval?.accuracy as number) >= 0.95, `LoRA accuracy ${r1.lastEval?.accuracy}`);
  t.true(bitsEqual((lora.layers[0] as LoRA).weight.data, frozenBefore), 'the base weight stays frozen');

  const base = Linear.create('fc1', 10, 3, { seed: 9, trainable: false });
  const eigen = new EigenLoRA('fc1', {
    base,
    componentsA: await orthonormalize(randomMat(10, 10, 1)),
    componentsB: await orthonormalize(randomMat(3, 3, 2)),
    rank: 3,
    scale: 1,
  });
  const r2 = await trainModel(new Sequential([eigen]), { train, validation }, { epochs: 8, batchSize: 32, optimizer: { type: 'adam', lr: 0.05 }, progress: false });
  t.log(`EigenLoRA accuracy ${r2.lastEval?.accuracy}`);
  t.true((r2.lastEval?.accuracy as number) >= 0.95, `EigenLoRA accuracy ${r2.lastEval?.accuracy}`);
});

test('MSE regression: a linear model fits a noisy linear map', async (t) => {
  const inputs = randomMat(400, 5, 31);
  const W = randomMat(2, 5, 32);
  const targets = matrix(400, 2);
  for (let i = 0; i < 400; i++) {
    for (let o = 0; o < 2; o++) {
      let s = 0.5 * o;
      for (let k = 0; k < 5; k++) s += (inputs.data[i * 5 + k] as number) * (W.data[o * 5 + k] as number);
      targets.data[i * 2 + o] = s;
    }
  }
  const model = new Sequential([Linear.create('fc', 5, 2, { seed: 1 })]);
  const result = await trainModel(model, { train: { inputs, targets } }, { loss: 'mse', epochs: 40, batchSize: 40, optimizer: { type: 'sgd', lr: 0.1, momentum: 0.9 }, progress: false });
  t.true((result.lastEval?.loss as number) < 1e-4, `loss ${result.lastEval?.loss}`);
  t.is(result.lastEval?.accuracy, null);
  t.is(result.lastEval?.source, 'train');
});

// ---------------------------------------------------------------------------------------
// Checkpoints, resume, abort

const resumeData = { train: blobs(200, 10, 3, 41), validation: blobs(60, 10, 3, 42) };

function resumeOptions(file: string): TrainOptions {
  return {
    epochs: 3,
    batchSize: 24, // 9 batches per epoch, the last one of 8 rows
    seed: 7,
    optimizer: { type: 'adamw', lr: 0.01 },
    schedule: { type: 'cosine', warmupSteps: 5 },
    clipGradNorm: 1,
    evalEvery: 4,
    earlyStopping: { patience: 100, restoreBest: true },
    checkpoint: { path: file, everySteps: 5 },
    progress: false,
  };
}

test('resuming from a mid-epoch checkpoint (after an abort) continues bit-identically', async (t) => {
  const dir = await tempDir(t);
  const straight = adapterModel(1);
  const a = await trainModel(straight, resumeData, resumeOptions(path.join(dir, 'a.safetensors')));
  t.is(a.stoppedBy, 'completed');
  t.is(a.steps, 27);

  const controller = new AbortController();
  const interrupted = adapterModel(1);
  const events: TrainEvent[] = [];
  const b = await trainModel(interrupted, resumeData, {
    ...resumeOptions(path.join(dir, 'b.safetensors')),
    signal: controller.signal,
    onEvent: (e) => {
      events.push(e);
      if (e.type === 'step' && e.step === 13) controller.abort();
    },
  });
  t.is(b.stoppedBy, 'aborted');
  t.is(b.steps, 13);
  const last = events.filter((e) => e.type === 'checkpoint').pop();
  t.like(last, { type: 'checkpoint', reason: 'abort', step: 13 });

  const resumed = adapterModel(1);
  const c = await trainModel(resumed, resumeData, { ...resumeOptions(path.join(dir, 'b.safetensors')), resume: true });
  t.true(c.resumed);
  t.is(c.stoppedBy, 'completed');
  t.is(c.steps, 27);
  t.is(c.stepsThisRun, 14);
  for (const [name, data] of copyParams(straight)) t.true(bitsEqual(data, copyParams(resumed).get(name) as Float32Array), name);
  t.deepEqual(c.evals, a.evals);
  t.deepEqual(c.epochHistory, a.epochHistory);
  t.deepEqual(c.best, a.best);
  t.true(c.restoredBest && a.restoredBest);
});

test('resuming at an epoch boundary (maxSteps = one epoch) continues bit-identically', async (t) => {
  const dir = await tempDir(t);
  const options = { ...resumeOptions(path.join(dir, 'x.safetensors')), earlyStopping: undefined, schedule: { type: 'plateau' as const, patience: 1 } };
  delete options.earlyStopping;
  const straight = adapterModel(2);
  const a = await trainModel(straight, resumeData, { ...options, checkpoint: { path: path.join(dir, 'a.safetensors') } });
  const first = adapterModel(2);
  const b = await trainModel(first, resumeData, { ...options, maxSteps: 9 });
  t.is(b.stoppedBy, 'max-steps');
  t.is(b.epochs, 0, 'the epoch end has not been processed yet');
  const second = adapterModel(2);
  const c = await trainModel(second, resumeData, { ...options, resume: true });
  t.is(c.steps, 27);
  for (const [name, data] of copyParams(straight)) t.true(bitsEqual(data, copyParams(second).get(name) as Float32Array), name);
  t.deepEqual(c.evals, a.evals);
  // Resuming a finished run does nothing more.
  const again = await trainModel(second, resumeData, { ...options, resume: true });
  t.is(again.stepsThisRun, 0);
  t.is(again.stoppedBy, 'completed');
});

test('abort stops after the current update and leaves a loadable checkpoint; an aborted signal stops before the first', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'ckpt', 'run.safetensors');
  const model = adapterModel(3);
  const controller = new AbortController();
  const result = await trainModel(model, resumeData, {
    epochs: 50,
    batchSize: 16,
    checkpoint: { path: file },
    signal: controller.signal,
    progress: false,
    onEvent: (e) => {
      if (e.type === 'step' && e.step === 5) controller.abort();
    },
  });
  t.is(result.stoppedBy, 'aborted');
  t.is(result.stepsThisRun, 5);
  t.is(result.checkpoint, file);
  const ckpt = await loadCheckpoint(file);
  t.is(ckpt.state.step, 5);
  t.is(ckpt.state.epoch, 0);
  t.is(ckpt.state.batch, 5);
  t.deepEqual([...ckpt.parameters.keys()].sort(), ['fc1.lora_A.weight', 'fc1.lora_B.weight', 'fc2.bias', 'fc2.weight']);
  t.deepEqual([...ckpt.optimizer.keys()].sort(), [
    'fc1.lora_A.weight.exp_avg',
    'fc1.lora_A.weight.exp_avg_sq',
    'fc1.lora_B.weight.exp_avg',
    'fc1.lora_B.weight.exp_avg_sq',
    'fc2.bias.exp_avg',
    'fc2.bias.exp_avg_sq',
    'fc2.weight.exp_avg',
    'fc2.weight.exp_avg_sq',
  ]);
  const fresh = adapterModel(3);
  fresh.loadStateDict(ckpt.parameters, { trainableOnly: true });
  for (const [name, data] of copyParams(model)) t.true(bitsEqual(data, copyParams(fresh).get(name) as Float32Array), name);

  const before = copyParams(fresh);
  const stopped = await trainModel(fresh, resumeData, { checkpoint: { path: path.join(dir, 'zero.safetensors') }, signal: AbortSignal.abort(), progress: false });
  t.is(stopped.stoppedBy, 'aborted');
  t.is(stopped.stepsThisRun, 0);
  t.is((await loadCheckpoint(path.join(dir, 'zero.safetensors'))).state.step, 0);
  for (const [name, data] of before) t.true(bitsEqual(data, copyParams(fresh).get(name) as Float32Array), name);
});

test('the event loop stays responsive while training; a timeout signal stops it', async (t) => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const started = Date.now();
  const result = await trainModel(mlp(1, [10, 64, 64, 3]), { train: blobs(2000, 10, 3, 5) }, { epochs: 1000, batchSize: 32, signal: AbortSignal.timeout(300), progress: false });
  clearInterval(timer);
  const elapsed = Date.now() - started;
  t.is(result.stoppedBy, 'aborted');
  t.true(result.stepsThisRun > 0);
  t.true(elapsed < 5000, `stopped after ${elapsed} ms`);
  // A blocked loop would tick at most once, after training, however many steps ran. Each
  // step awaits native jobs, so the timer gets a turn between steps; on a starved machine
  // fewer steps run, so the bound follows the steps rather than the clock.
  const wanted = Math.min(5, result.stepsThisRun - 1);
  t.true(ticks >= wanted, `${ticks} timer ticks in ${elapsed} ms over ${result.stepsThisRun} steps`);
});

test('checkpoints that do not fit are refused: other batch size, other frozen base, other optimiser, missing file', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'c.safetensors');
  await trainModel(adapterModel(4), resumeData, { epochs: 1, batchSize: 20, checkpoint: { path: file }, progress: false });
  await t.throwsAsync(trainModel(adapterModel(4), resumeData, { epochs: 2, batchSize: 10, checkpoint: { path: file }, resume: true, progress: false }), {
    code: 'ERR_CHECKPOINT_MISMATCH',
    message: /batchSize/,
  });
  await t.throwsAsync(trainModel(adapterModel(5), resumeData, { epochs: 2, batchSize: 20, checkpoint: { path: file }, resume: true, progress: false }), {
    code: 'ERR_CHECKPOINT_MISMATCH',
    message: /frozen/,
  });
  await t.throwsAsync(
    trainModel(adapterModel(4), resumeData, { epochs: 2, batchSize: 20, optimizer: { type: 'sgd', lr: 0.1 }, checkpoint: { path: file }, resume: true, progress: false }),
    { code: 'ERR_CHECKPOINT_MISMATCH' },
  );
  await t.throwsAsync(trainModel(mlp(1, [10, 3]), resumeData, { epochs: 2, batchSize: 20, resume: file, progress: false }), { code: 'ERR_CHECKPOINT_MISMATCH' });
  await t.throwsAsync(trainModel(adapterModel(4), resumeData, { resume: path.join(dir, 'none.safetensors'), progress: false }), { code: 'ERR_NOT_FOUND' });
  // resume: true without a checkpoint file yet starts fresh.
  const fresh = await trainModel(adapterModel(4), resumeData, { epochs: 1, checkpoint: { path: path.join(dir, 'new.safetensors') }, resume: true, progress: false });
  t.false(fresh.resumed);
  await access(path.join(dir, 'new.safetensors'));
});

// ---------------------------------------------------------------------------------------
// Early stopping, events, progress

test('early stopping stops when the validation loss stops improving and restores the best parameters', async (t) => {
  const train = blobs(300, 10, 3, 51);
  const validation = blobs(150, 10, 3, 52);
  // Labels of the validation set rotated: the better the model fits, the worse it does there.
  const targets = validation.targets as Uint8Array;
  for (let i = 0; i < targets.length; i++) targets[i] = ((targets[i] as number) + 1) % 3;
  const model = mlp(2, [10, 16, 3]);
  const result = await trainModel(model, { train, validation }, { epochs: 40, batchSize: 30, optimizer: { type: 'adam', lr: 0.01 }, earlyStopping: { patience: 2 }, progress: false });
  t.is(result.stoppedBy, 'early-stopping');
  t.true(result.epochs < 40);
  t.true(result.restoredBest);
  const best = result.best;
  t.truthy(best);
  t.is(result.evals.length - result.evals.indexOf(best as never), 3, 'stopped after patience (2) evaluations without improvement');
  const now = await model.evaluate(validation);
  t.is(now.loss, best?.loss as number);
});

test('events arrive in order (step, eval, epoch, checkpoint, done) and the progress bar draws on a terminal only', async (t) => {
  const dir = await tempDir(t);
  const events: TrainEvent[] = [];
  const writes: string[] = [];
  const tty = { isTTY: true, columns: 200, write: (s: string) => writes.push(s) };
  const data = { train: blobs(100, 10, 3, 61), validation: blobs(30, 10, 3, 62) };
  const result = await trainModel(mlp(1, [10, 8, 3]), data, {
    epochs: 2,
    batchSize: 25,
    checkpoint: { path: path.join(dir, 'e.safetensors') },
    progress: tty,
    onEvent: async (e) => {
      await new Promise((resolve) => setImmediate(resolve));
      events.push(e);
    },
  });
  const types = events.map((e) => e.type);
  t.deepEqual(types, ['step', 'step', 'step', 'step', 'epoch', 'eval', 'checkpoint', 'step', 'step', 'step', 'step', 'epoch', 'eval', 'checkpoint', 'done']);
  t.like(events[0], { type: 'step', step: 1, epoch: 0, batch: 0, batches: 4, lr: 1e-3, gradNorm: null });
  t.like(events[6], { reason: 'epoch', step: 4 });
  t.like(events[13], { reason: 'end', step: 8 });
  t.is((events[14] as { result: unknown }).result, result);
  const text = writes.join('');
  t.regex(text, /epoch 2\/2/);
  t.regex(text, /samples\/s/);
  t.regex(text, /ETA/);
  t.regex(text, /validation at update 4/);

  const silent: string[] = [];
  await trainModel(mlp(1, [10, 8, 3]), data, { epochs: 1, progress: { isTTY: false, write: (s: string) => silent.push(s) } as never });
  t.true(silent.length > 0, 'a stream given explicitly is drawn on');
  const line = formatProgress({ epoch: 1, epochs: 3, batch: 5, batches: 10, loss: 0.5, accuracy: 0.75, samplesPerSecond: 12345.6, etaSeconds: 75 }, 10);
  t.is(line, 'epoch 1/3  █████░░░░░  50%  5/10  loss 0.5000  acc 75.0%  12,346 samples/s  ETA 1:15');
});

// ---------------------------------------------------------------------------------------
// Bad inputs

test('bad inputs are typed errors before any update: label out of range, shape mismatch, bad options', async (t) => {
  const model = mlp(1, [10, 3]);
  const before = copyParams(model);
  const data = blobs(50, 10, 3, 71);
  const bad: Dataset = { inputs: data.inputs, targets: Uint8Array.from(data.targets as Uint8Array) };
  (bad.targets as Uint8Array)[17] = 3;
  await t.throwsAsync(trainModel(model, { train: bad }, { progress: false }), { code: 'ERR_INVALID_ARGUMENT', message: /label 3 at row 17 is out of range/ });
  await t.throwsAsync(trainModel(model, { train: data, validation: bad }, { progress: false }), { code: 'ERR_INVALID_ARGUMENT', message: /data.validation/ });
  await t.throwsAsync(trainModel(model, { train: blobs(50, 9, 3, 1) }, { progress: false }), { code: 'ERR_SHAPE_MISMATCH' });
  await t.throwsAsync(trainModel(model, { train: { inputs: data.inputs, targets: new Uint8Array(49) } }, { progress: false }), { code: 'ERR_SHAPE_MISMATCH' });
  await t.throwsAsync(trainModel(model, { train: { inputs: data.inputs, targets: matrix(50, 3) } }, { progress: false }), { code: 'ERR_INVALID_ARGUMENT' });
  await t.throwsAsync(trainModel(model, { train: { inputs: data.inputs, targets: matrix(50, 2) } }, { loss: 'mse', progress: false }), { code: 'ERR_SHAPE_MISMATCH' });
  await t.throwsAsync(trainModel(model, { train: data }, { batchSize: 0 }), { code: 'ERR_INVALID_ARGUMENT' });
  await t.throwsAsync(trainModel(model, { train: data }, { epoch: 3 } as never), { code: 'ERR_INVALID_ARGUMENT' });
  await t.throwsAsync(trainModel(model, { train: data }, { clipGradNorm: -1 }), { code: 'ERR_INVALID_ARGUMENT' });
  await t.throwsAsync(trainModel(model, { train: data }, { resume: true }), { code: 'ERR_INVALID_ARGUMENT' });
  await t.throwsAsync(trainModel(new Sequential([new Linear('frozen', { weight: matrix(3, 10) })]), { train: data }), { code: 'ERR_INVALID_ARGUMENT' });
  const other = mlp(2, [10, 3]);
  const running = trainModel(other, { train: data }, { epochs: 3, progress: false });
  await t.throwsAsync(trainModel(other, { train: data }, { progress: false }), { code: 'ERR_INVALID_ARGUMENT', message: /already being trained/ });
  t.is((await running).stoppedBy, 'completed');
  for (const [name, data0] of before) t.true(bitsEqual(data0, copyParams(model).get(name) as Float32Array), `${name} unchanged`);
});

test('a NaN loss stops training with ERR_NON_FINITE naming the update', async (t) => {
  const data = blobs(64, 10, 3, 81);
  const inputs = matrix(64, 10, data.inputs.data.slice());
  inputs.data[5 * 10 + 3] = Number.NaN;
  await t.throwsAsync(trainModel(mlp(1, [10, 3]), { train: { inputs, targets: data.targets } }, { batchSize: 64, progress: false }), {
    code: 'ERR_NON_FINITE',
    message: /loss is NaN at update 1 \(epoch 1, batch 1\)/,
  });
  // Overflowing weights give a non-finite loss too.
  const huge = mlp(1, [10, 3]);
  (huge.layers[0] as Linear).weight.data.fill(3e38);
  await t.throwsAsync(trainModel(huge, { train: data }, { progress: false }), { code: 'ERR_NON_FINITE' });
});
