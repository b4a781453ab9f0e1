/**
 * Factors the native subspace kernels read from adapter files themselves (NativeFileFactor):
 * the same bits as factors passed in memory for every stored dtype, the job's own
 * descriptor (the caller may close its own at once), and every refusal: bad descriptors,
 * offsets past the end, files truncated or poisoned after they were opened. Seeds are
 * fresh per run and in every message.
 */
import test from 'ava';
import { open, truncate, writeFile, readFile } from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { buildSubspace, loadAdapter, openAdapter, openSafetensors, saveAdapter, sha256File, type LoraAdapter } from '../lib/index.js';
import { matrix, type Matrix } from '../lib/matrix.js';
import * as ops from '../lib/native/ops.js';
import type { NativeFileFactor, NativeModulePair } from '../lib/native/ops.js';
import { tempDir } from './helpers/safetensors-fixtures.js';
import { freshSeed, rng } from './helpers/random.js';
import { memoryAdapter, plantedBases, plantedFactors } from './helpers/subspace-fixtures.js';

const D_IN = 72;
const D_OUT = 56;
const MODULE = 'layers.0.q_proj';
const WEIGHTS = 'adapter_model.safetensors';

function adapters(seed: number, n: number): LoraAdapter[] {
  const planted = plantedBases(D_IN, D_OUT, 5, 5, seed);
  return Array.from({ length: n }, (_, i) => memoryAdapter([{ name: MODULE, ...plantedFactors(planted, 4 + (i % 3), seed + 1000 * i, 0.2), alpha: 8 + i }]));
}

async function written(dir: string, list: LoraAdapter[], dtype: 'BF16' | 'F16' | 'F32'): Promise<string[]> {
  return Promise.all(
    list.map(async (a, i) => {
      const p = path.join(dir, `${dtype}-${i}`);
      await saveAdapter(a, p, { format: 'peft', dtype });
      return p;
    }),
  );
}

const KEYS = { A: `base_model.model.${MODULE}.lora_A.weight`, B: `base_model.model.${MODULE}.lora_B.weight` };

/** The file factors of one written adapter, and the descriptor they name. */
async function fileFactors(folder: string): Promise<{ pair: { A: NativeFileFactor; B: NativeFileFactor }; close: () => Promise<void> }> {
  const file = path.join(folder, WEIGHTS);
  const reader = await openSafetensors(file);
  const handle = await open(file, 'r');
  const factor = (key: string): NativeFileFactor => {
    const info = reader.tensors.get(key)!;
    const [rows, cols] = info.shape as [number, number];
    return { rows, cols, fd: handle.fd, offset: info.offset, dtype: info.dtype.toLowerCase() as NativeFileFactor['dtype'], where: `${file}, tensor ${JSON.stringify(key)}`, checkFinite: true };
  };
  const pair = { A: factor(KEYS.A), B: factor(KEYS.B) };
  await reader.close();
  return { pair, close: () => handle.close() };
}

function buildArgs(pairs: NativeModulePair[]) {
  return {
    adapters: pairs,
    stacking: 'canonical' as const,
    weighting: 'equal' as const,
    center: true,
    oversample: 4,
    powerIters: 1,
    seed: 3,
    componentsA: matrix(D_IN, 3),
    componentsB: matrix(D_OUT, 3),
    singularA: new Float32Array(3),
    singularB: new Float32Array(3),
    meanA: new Float32Array(D_IN),
    meanB: new Float32Array(D_OUT),
  };
}

for (const dtype of ['BF16', 'F16', 'F32'] as const) {
  test(`${dtype} factors read by the kernel from the file equal the same factors in memory, bit for bit, with the caller's descriptor closed at once`, async (t) => {
    const seed = freshSeed();
    const dir = await tempDir(t);
    const paths = await written(dir, adapters(seed, 5), dtype);
    const inMemory: NativeModulePair[] = [];
    const fromFiles: NativeModulePair[] = [];
    const closes: Array<() => Promise<void>> = [];
    for (const p of paths) {
      const m = (await loadAdapter(p)).modules.get(MODULE)!;
      inMemory.push({ A: m.A, B: m.B, scale: m.scale });
      const { pair, close } = await fileFactors(p);
      fromFiles.push({ ...pair, scale: m.scale });
      closes.push(close);
    }
    const expected = buildArgs(inMemory);
    const expectedInfo = await ops.buildModuleSubspace(expected);
    // All from files, and every other adapter from a file (the build reads file factors
    // itself, adapter by adapter, next to factors given in memory).
    const gotAll = buildArgs(fromFiles);
    const gotMixed = buildArgs(fromFiles.map((pair, i) => (i % 2 === 0 ? pair : inMemory[i]!)));
    const calls = [ops.buildModuleSubspace(gotAll), ops.buildModuleSubspace(gotMixed)];
    await Promise.all(closes.map((c) => c())); // the job reads its own duplicates
    const infos = await Promise.all(calls);
    for (const [i, got] of [gotAll, gotMixed].entries()) {
      const label = `seed ${seed}, ${i === 0 ? 'all from files' : 'mixed'}`;
      t.deepEqual(infos[i], expectedInfo, label);
      for (const key of ['componentsA', 'componentsB', 'singularA', 'singularB', 'meanA', 'meanB'] as const) {
        const a = got[key];
        const b = expected[key];
        t.deepEqual('data' in a ? a.data : a, 'data' in b ? (b as Matrix).data : b, `${label}: ${key}`);
      }
    }
  });
}

test('file factors: a bad descriptor, dtype, offset past the end or shape are typed errors naming the argument or the tensor', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const [p] = await written(dir, adapters(seed, 1), 'BF16');
  const { pair, close } = await fileFactors(p!);
  t.teardown(close);
  const m = (await loadAdapter(p!)).modules.get(MODULE)!;
  const call = (A: NativeFileFactor) => ops.buildModuleSubspace(buildArgs([{ A, B: pair.B, scale: m.scale }]));
  await t.throwsAsync(call({ ...pair.A, fd: -1 }), { code: 'ERR_INVALID_ARGUMENT', message: /adapters\[0\]\.A\.fd: expected a non-negative integer/ });
  await t.throwsAsync(call({ ...pair.A, fd: 1_000_000 }), { code: 'ERR_INVALID_ARGUMENT', message: /adapters\[0\]\.A\.fd: not an open file descriptor/ });
  await t.throwsAsync(call({ ...pair.A, dtype: 'f64' as never }), { code: 'ERR_INVALID_ARGUMENT', message: /adapters\[0\]\.A\.dtype: expected 'f32', 'f16' or 'bf16'/ });
  await t.throwsAsync(call({ ...pair.A, where: 7 as never }), { code: 'ERR_INVALID_ARGUMENT', message: /adapters\[0\]\.A\.where/ });
  await t.throwsAsync(call({ ...pair.A, offset: 1e9 }), { code: 'ERR_IO', message: /tensor ".*lora_A.*": the file ended at byte 1000000000/ });
  await t.throwsAsync(call({ ...pair.A, rows: pair.A.rows + 1 }), { code: 'ERR_SHAPE_MISMATCH', message: /adapters\[0\]/ });
});

test("Inf in two files: the error names the lower adapter's file, every time (adapters are read in parallel)", async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const paths = await written(dir, adapters(seed, 6), 'BF16');
  for (const i of [2, 4]) {
    const file = path.join(paths[i]!, WEIGHTS);
    const reader = await openSafetensors(file);
    const info = reader.tensors.get(KEYS.A)!;
    await reader.close();
    const poisoned = Buffer.from(await readFile(file));
    poisoned.writeUInt16LE(0x7f80, info.offset + 2 * (seed % (info.shape[0]! * info.shape[1]!))); // bf16 +Inf
    await writeFile(file, poisoned);
  }
  const first = path.join(paths[2]!, WEIGHTS).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  for (let run = 0; run < 4; run++) {
    await t.throwsAsync(buildSubspace(paths, { components: 2, hashSources: false }), {
      code: 'ERR_NON_FINITE',
      message: new RegExp(`${first}, tensor ".*lora_A.weight": the factor holds Infinity`),
    }, `seed ${seed}, run ${run}`);
  }
});

test('builds from paths and opened adapters: NaN in a file is ERR_NON_FINITE naming the file, tensor and element; a file truncated after opening is ERR_IO; a closed adapter is ERR_CLOSED', async (t) => {
  const seed = freshSeed();
  const dir = await tempDir(t);
  const paths = await written(dir, adapters(seed, 4), 'BF16');
  const file = path.join(paths[2]!, WEIGHTS);
  const reader = await openSafetensors(file);
  const info = reader.tensors.get(KEYS.B)!;
  await reader.close();
  const [row, col] = [seed % D_OUT, seed % info.shape[1]!];
  const bytes = await readFile(file);
  const poisoned = Buffer.from(bytes);
  poisoned.writeUInt16LE(0x7fc0, info.offset + 2 * (row * info.shape[1]! + col)); // bf16 NaN
  await writeFile(file, poisoned);
  await t.throwsAsync(buildSubspace(paths, { components: 2, hashSources: false }), {
    code: 'ERR_NON_FINITE',
    message: new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}, tensor ".*lora_B.weight": the factor holds NaN at \\[${row}, ${col}\\] \\(pass allowNonFinite`),
  }, `seed ${seed}`);
  // Opened with allowNonFinite: the reader lets it through, the build's own check does not.
  const lenient = await Promise.all(paths.map((p) => openAdapter(p, { allowNonFinite: true })));
  t.teardown(() => Promise.all(lenient.map((a) => a.close())));
  await t.throwsAsync(buildSubspace(lenient, { components: 2, hashSources: false }), { code: 'ERR_NON_FINITE', message: /factors contain NaN or Inf/ });
  await writeFile(file, bytes);

  const opened = await Promise.all(paths.map((p) => openAdapter(p)));
  t.teardown(() => Promise.all(opened.map((a) => a.close())));
  await truncate(file, info.offset + 4);
  await t.throwsAsync(buildSubspace(opened, { components: 2, hashSources: false }), { code: 'ERR_IO', message: /the file ended at byte .* \(was it changed or truncated after it was opened\?\)/ });
  await opened[1]!.close();
  await t.throwsAsync(buildSubspace(opened, { components: 2, hashSources: false }), { code: 'ERR_CLOSED' });
});

test('sha256File: equals crypto over the whole file for sizes around its read buffer, many at once (its buffers are reused); a missing file is ERR_NOT_FOUND, a folder ERR_IO, both naming it', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  const random = rng(seed);
  const MiB = 1 << 20;
  const sizes = [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + Math.floor(random() * MiB)];
  const files = await Promise.all(
    sizes.map(async (size, i) => {
      const bytes = Buffer.alloc(size);
      for (let j = 0; j < size; j += 4096) bytes[j] = Math.floor(random() * 256);
      if (size > 0) bytes[size - 1] = Math.floor(random() * 256);
      const file = path.join(dir, `f${i}.bin`);
      await writeFile(file, bytes);
      return { file, bytes };
    }),
  );
  const results = await Promise.all(files.map(({ file }) => sha256File(file)));
  results.forEach((result, i) => {
    const { bytes } = files[i]!;
    t.deepEqual(result, { sha256: createHash('sha256').update(bytes).digest('hex'), bytes: bytes.length }, `size ${sizes[i]} (seed ${seed})`);
  });
  const missing = path.join(dir, 'missing.bin');
  const notFound = await t.throwsAsync(sha256File(missing));
  t.is((notFound as { code?: string }).code, 'ERR_NOT_FOUND');
  t.true(notFound!.message.includes(missing));
  const folder = await t.throwsAsync(sha256File(dir));
  t.is((folder as { code?: string }).code, 'ERR_IO');
  t.true(folder!.message.includes(dir));
  // The buffers are still good after the failures.
  t.is((await sha256File(files[5]!.file)).sha256, results[5]!.sha256);
});
