/**
 * Saving what was trained: state dicts in safetensors with PyTorch's names (and loading a
 * base model's file into an adapter model), LoRA and EigenLoRA layers as a PEFT adapter,
 * and EigenLoRA coefficients as `<module>.eigenlora_A/B.loadings`.
 */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { loadAdapter, matrix, openSafetensors, orthonormalize, setThreads } from '../lib/index.js';
import {
  adapterFromModel,
  eigenLoraModel,
  EigenLoRA,
  GELU,
  Linear,
  loadEigenLoraCoefficients,
  LoRA,
  loraModel,
  ReLU,
  saveEigenLoraCoefficients,
  saveModelAdapter,
  Sequential,
} from '../lib/train/index.js';
import { f64, gradientError, randomMat, refMatmul, refTranspose, tempDir } from './helpers/train-fixtures.js';

setThreads(2);

function baseModel(seed: number): Sequential {
  return new Sequential([Linear.create('fc1', 12, 8, { seed }), new ReLU(), Linear.create('fc2', 8, 4, { seed: seed + 1 })]);
}

async function adapted(seed: number): Promise<Sequential> {
  const base = baseModel(seed);
  const [fc1, , fc2] = base.layers as [Linear, ReLU, Linear];
  fc1.trainable = false;
  fc2.trainable = false;
  const lora = new LoRA('fc1', { base: fc1, rank: 3, alpha: 6, A: randomMat(3, 12, seed + 2), B: randomMat(8, 3, seed + 3) });
  const eigen = new EigenLoRA('fc2', {
    base: fc2,
    componentsA: await orthonormalize(randomMat(8, 5, seed + 4)),
    componentsB: await orthonormalize(randomMat(4, 3, seed + 5)),
    rank: 2,
    scale: 0.5,
    init: 'uniform',
    seed,
  });
  return new Sequential([lora, new GELU(), eigen]);
}

test('state dict: PyTorch names and shapes in safetensors; a base file loads into an adapter model', async (t) => {
  const dir = await tempDir(t);
  const model = baseModel(1);
  const file = path.join(dir, 'nested', 'base.safetensors');
  await model.save(file, { metadata: { note: 'base' } });
  const reader = await openSafetensors(file);
  t.deepEqual(
    [...reader.tensors].map(([k, v]) => [k, v.dtype, [...v.shape]]).sort(),
    [
      ['fc1.bias', 'F32', [8]],
      ['fc1.weight', 'F32', [8, 12]],
      ['fc2.bias', 'F32', [4]],
      ['fc2.weight', 'F32', [4, 8]],
    ],
  );
  t.is(reader.metadata.note, 'base');
  await reader.close();

  const copy = baseModel(99);
  const loaded = await copy.load(file);
  t.deepEqual(loaded.loaded, ['fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']);
  for (const [k, v] of model.stateDict()) t.deepEqual(copy.stateDict().get(k)?.data, v.data);

  const adapter = await adapted(50);
  await t.throwsAsync(adapter.load(file), { code: 'ERR_TENSOR_NOT_FOUND' });
  const partial = await adapter.load(file, { strict: false });
  t.deepEqual(partial.missing, [
    'fc1.lora_A.weight',
    'fc1.lora_B.weight',
    'fc2.eigenlora_A.components',
    'fc2.eigenlora_B.components',
    'fc2.eigenlora_A.loadings',
    'fc2.eigenlora_B.loadings',
  ]);
  t.deepEqual((adapter.layers[0] as LoRA).weight.data, (model.layers[0] as Linear).weight.data);

  const wrong = new Sequential([Linear.create('fc1', 12, 9), new ReLU(), Linear.create('fc2', 9, 4)]);
  await t.throwsAsync(wrong.load(file), { code: 'ERR_SHAPE_MISMATCH', message: /fc1.weight/ });
  t.throws(() => wrong.loadStateDict(model.stateDict()), { code: 'ERR_SHAPE_MISMATCH' });
  t.throws(() => model.loadStateDict(new Map([['fc1.weight', model.stateDict().get('fc1.weight')!]])), { code: 'ERR_TENSOR_NOT_FOUND' });
  const trainable = adapter.stateDict({ trainableOnly: true });
  t.deepEqual([...trainable.keys()], ['fc1.lora_A.weight', 'fc1.lora_B.weight', 'fc2.eigenlora_A.loadings', 'fc2.eigenlora_B.loadings']);
  t.is(adapter.parameterCount({ trainable: true }), 3 * 12 + 8 * 3 + 5 * 2 + 3 * 2);
});

test('LoRA and EigenLoRA layers save as a PEFT adapter named by the layers (EigenLoRA rebuilt as A = alpha^T V_A^T, B = U_B beta)', async (t) => {
  const dir = await tempDir(t);
  const model = await adapted(7);
  const saved = await saveModelAdapter(model, path.join(dir, 'peft'), { baseModel: 'tiny-mlp' });
  t.is(saved.format, 'peft');
  const config = JSON.parse(await readFile(path.join(dir, 'peft', 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
  t.is(config.base_model_name_or_path, 'tiny-mlp');
  t.deepEqual(config.target_modules, ['fc1', 'fc2']);
  const loaded = await loadAdapter(path.join(dir, 'peft'));
  const lora = model.layers[0] as LoRA;
  const fc1 = loaded.modules.get('fc1');
  t.deepEqual(fc1?.A.data, lora.A.data);
  t.deepEqual(fc1?.B.data, lora.B.data);
  t.is(fc1?.scale, 2);
  const eigen = model.layers[2] as EigenLoRA;
  const fc2 = loaded.modules.get('fc2');
  t.is(fc2?.rank, 2);
  t.true(Math.abs((fc2?.scale as number) - 0.5) < 1e-12);
  const A = refTranspose(refMatmul(f64(eigen.componentsA.data), 8, 5, f64(eigen.alpha.data), 2), 8, 2);
  const B = refMatmul(f64(eigen.componentsB.data), 4, 3, f64(eigen.beta.data), 2);
  t.true(gradientError(fc2?.A.data as Float32Array, A) < 1e-6);
  t.true(gradientError(fc2?.B.data as Float32Array, B) < 1e-6);
  await t.throwsAsync(adapterFromModel(baseModel(1)), { code: 'ERR_INVALID_ARGUMENT' });
});

test('EigenLoRA coefficients: <module>.eigenlora_A/B.loadings with a record; read back by name or into a model', async (t) => {
  const dir = await tempDir(t);
  const model = await adapted(8);
  const file = path.join(dir, 'coeffs.safetensors');
  const { modules } = await saveEigenLoraCoefficients(model, file, { extra: { task: 'demo' } });
  t.deepEqual(modules, ['fc2']);
  const reader = await openSafetensors(file);
  t.deepEqual(
    [...reader.tensors].map(([k, v]) => [k, [...v.shape]]).sort(),
    [
      ['fc2.eigenlora_A.loadings', [5, 2]],
      ['fc2.eigenlora_B.loadings', [3, 2]],
    ],
  );
  const record = JSON.parse(reader.metadata['eigenlorax.trained_coefficients'] as string) as Record<string, unknown>;
  t.is(record.task, 'demo');
  t.deepEqual((record.modules as Record<string, unknown>).fc2, { rank: 2, scale: 0.5, kA: 5, kB: 3, inFeatures: 8, outFeatures: 4 });
  await reader.close();
  const back = await loadEigenLoraCoefficients(file);
  const eigen = model.layers[2] as EigenLoRA;
  t.deepEqual(back.get('fc2')?.alpha.data, eigen.alpha.data);
  t.deepEqual(back.get('fc2')?.beta.data, eigen.beta.data);
  t.is(back.get('fc2')?.scale, 0.5);

  const other = await adapted(8);
  const otherEigen = other.layers[2] as EigenLoRA;
  otherEigen.alpha.data.fill(0);
  const result = await other.load(file, { strict: false });
  t.deepEqual(result.loaded, ['fc2.eigenlora_A.loadings', 'fc2.eigenlora_B.loadings']);
  t.deepEqual(otherEigen.alpha.data, eigen.alpha.data);
  await t.throwsAsync(saveEigenLoraCoefficients(baseModel(1), path.join(dir, 'x.safetensors')), { code: 'ERR_INVALID_ARGUMENT' });
  await t.throwsAsync(loadEigenLoraCoefficients(path.join(dir, 'nested', 'none.safetensors')), { code: 'ERR_NOT_FOUND' });
});

test('loraModel / eigenLoraModel adapt a base model without changing it (shared frozen weights, new activations)', async (t) => {
  const base = baseModel(3);
  const before = base.stateDict();
  const lora = loraModel(base, { rank: 2, alpha: 4, seed: 1 });
  t.deepEqual(
    lora.layers.map((l) => [l.kind, l.name]),
    [
      ['lora', 'fc1'],
      ['relu', ''],
      ['lora', 'fc2'],
    ],
  );
  t.is((lora.layers[0] as LoRA).weight, (base.layers[0] as Linear).weight, 'shared, not copied');
  t.not(lora.layers[1], base.layers[1]);
  t.true((base.layers[0] as Linear).trainable, 'the base layer is still trainable');
  t.notDeepEqual((lora.layers[0] as LoRA).A.data.subarray(0, 2), (lora.layers[2] as LoRA).A.data.subarray(0, 2), 'per-layer seeds');
  const x = randomMat(5, 12, 9);
  t.deepEqual(Float32Array.from((await lora.forward(x)).data), Float32Array.from((await base.forward(x)).data), 'B = 0: the base output');
  for (const [k, v] of before) t.is(base.stateDict().get(k)?.data, v.data);

  const only = loraModel(base, { rank: 2, targets: ['fc2'] });
  t.deepEqual(only.layers.map((l) => l.kind), ['linear', 'relu', 'lora']);
  t.deepEqual(only.parameters().map((p) => p.name), ['fc2.lora_A.weight', 'fc2.lora_B.weight']);
  t.throws(() => loraModel(base, { rank: 2, targets: ['fc3'] }), { code: 'ERR_INVALID_ARGUMENT' });

  const componentsA = await orthonormalize(randomMat(8, 4, 2));
  const componentsB = await orthonormalize(randomMat(4, 2, 3));
  const alpha = randomMat(4, 2, 4);
  const beta = randomMat(2, 2, 5);
  const eigen = eigenLoraModel(base, {
    components: { fc2: { componentsA, componentsB } },
    rank: 2,
    scale: 2,
    init: 'project',
    loadings: new Map([['fc2', { alpha, beta }]]),
  });
  t.deepEqual(eigen.layers.map((l) => l.kind), ['linear', 'relu', 'eigenlora']);
  t.deepEqual((eigen.layers[2] as EigenLoRA).beta.data, beta.data);
  t.is(eigen.parameterCount({ trainable: true }), 4 * 2 + 2 * 2);
  t.throws(() => eigenLoraModel(base, { components: { fc9: { componentsA, componentsB } }, rank: 2 }), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => eigenLoraModel(base, { components: { fc1: { componentsA: matrix(11, 2), componentsB } }, rank: 2 }), { code: 'ERR_SHAPE_MISMATCH' });
});
