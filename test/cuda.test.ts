/**
 * The CUDA backend through the library: device selection and its errors on every machine;
 * backend parity (each operation on the GPU against the CPU backend, per storage dtype),
 * finite-difference gradients on the GPU and device-matrix lifetimes where a GPU is
 * available (skipped, saying why, elsewhere). native/cuda/check.cpp tests the same kernels
 * without Node.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  AdapterBank,
  buildInfo,
  buildSubspace,
  cudaStatus,
  LoraBank,
  reconstructAdapter,
  DeviceMatrix,
  eigenBankApply,
  eigenLoraBackward,
  eigenLoraForward,
  EigenLoraxError,
  loraBackward,
  loraBankApply,
  loraForward,
  matrix,
  mixingMatrix,
  rsvd,
  toDevice,
  type Matrix,
} from '../lib/index.js';
import { fromFloat32, toFloat32 } from '../lib/dtype.js';
import { eigenlorax } from './helpers/cli.js';
import { relativeError } from './helpers/dense.js';
import { freshSeed, randomMatrix, rng } from './helpers/random.js';
import { memoryAdapter, plantedBases, plantedFactors } from './helpers/subspace-fixtures.js';

const run = promisify(execFile);
const status = await cudaStatus();
const seed = freshSeed();

// ---- everywhere

test('cudaStatus says whether the GPU backend can run, and why not', (t) => {
  t.is(typeof status.available, 'boolean');
  t.is(typeof status.plugin, 'string');
  if (status.available) {
    t.is(status.reason, '');
    t.true(status.devices.length > 0);
    t.true(status.cublasVersion > 0);
  } else {
    t.true(status.reason.length > 10, status.reason);
  }
});

test('eigenlorax devices lists the CPU and the GPU (or why not)', async (t) => {
  const { stdout } = await eigenlorax(['devices']);
  t.regex(stdout, /^cpu +available/m);
  if (status.available) t.regex(stdout, /^cuda:0 +available/m);
  else t.true(stdout.includes(`cuda    unavailable: ${status.reason}`), stdout);
  const json = JSON.parse((await eigenlorax(['devices', '--json'])).stdout) as { cuda: { available: boolean } };
  t.is(json.cuda.available, status.available);
});

// The C++ parity executable, built beside the cmake-js addon when nvcc is found.
const checkProgram = path.join(path.dirname(path.dirname(buildInfo().addonPath)), 'eigenlorax_cuda_check');
if (existsSync(checkProgram)) {
  test('eigenlorax_cuda_check (C++ parity tests): passes on a GPU, says SKIP with exit 77 elsewhere', async (t) => {
    const result = await run(checkProgram, ['--seed', String(seed)], { maxBuffer: 64 << 20 }).then(
      ({ stdout }) => ({ code: 0, stdout }),
      (e: { code?: number; stdout?: string }) => ({ code: e.code ?? -1, stdout: e.stdout ?? '' }),
    );
    if (status.available) {
      t.is(result.code, 0, result.stdout.split('\n').filter((l) => l.startsWith('FAIL')).join('\n'));
    } else {
      t.is(result.code, 77, result.stdout);
      t.regex(result.stdout, /^SKIP: /);
    }
  });
} else {
  test('eigenlorax_cuda_check: skipped', (t) => {
    t.log(`skipped: ${checkProgram} was not built (no nvcc when the addon was built, or a node-gyp build)`);
    t.pass();
  });
}

test('device option: unknown values are refused by name', async (t) => {
  const x = randomMatrix(3, 4, seed);
  const layer = { A: randomMatrix(2, 4, seed + 1), B: randomMatrix(5, 2, seed + 2) };
  const e = await t.throwsAsync(loraForward(x, layer, { device: 'gpu' as never }), { instanceOf: EigenLoraxError });
  t.is(e?.code, 'ERR_INVALID_ARGUMENT');
  t.regex(e?.message ?? '', /options\.device/);
  await t.throwsAsync(rsvd(x, { rank: 2, device: 'tpu' as never }), { code: 'ERR_INVALID_ARGUMENT' });
});

test("device: 'auto' and 'cpu' give the CPU result where no GPU is usable; 'cpu' is the default", async (t) => {
  const x = randomMatrix(6, 8, seed);
  const layer = { A: randomMatrix(3, 8, seed + 1), B: randomMatrix(5, 3, seed + 2), scale: 0.5 };
  const cpu = await loraForward(x, layer);
  const explicit = await loraForward(x, layer, { device: 'cpu' });
  t.deepEqual(explicit.data, cpu.data);
  if (!status.available) {
    const auto = await loraForward(x, layer, { device: 'auto' });
    t.deepEqual(auto.data, cpu.data);
  }
});

if (!status.available) {
  test(`device: 'cuda' without a usable GPU rejects with ERR_DEVICE_UNAVAILABLE and the reason`, async (t) => {
    const x = randomMatrix(6, 8, seed);
    const check = (e: unknown) => {
      const err = e as EigenLoraxError;
      t.true(err instanceof EigenLoraxError);
      t.is(err.code, 'ERR_DEVICE_UNAVAILABLE');
      t.true(err.message.includes(status.reason), err.message);
    };
    for (const call of [
      () => rsvd(x, { rank: 2, device: 'cuda' }),
      () => loraForward(x, { A: randomMatrix(2, 8, 1), B: randomMatrix(4, 2, 2) }, { device: 'cuda' }),
      () => toDevice(x),
      () => toDevice(x, { dtype: 'bf16' }),
    ]) {
      check(await call().then(() => null, (e: unknown) => e));
    }
  });
}

// ---- on a GPU

if (!status.available) {
  test('GPU parity, gradients and device memory: skipped', (t) => {
    t.log(`skipped: the CUDA backend cannot run here: ${status.reason}`);
    t.pass();
  });
} else {
  // f32 products in another order: relative errors of a few 1e-7 times sqrt(depth).
  const f32 = 2e-5;

  const upload = async (m: Matrix, dtype: 'f32' | 'f16' | 'bf16') => toDevice(m, { dtype });
  // The values a dtype stores, back in f32: the CPU reference for device data in that dtype.
  const rounded = async (m: Matrix, dtype: 'f32' | 'f16' | 'bf16'): Promise<Matrix> =>
    dtype === 'f32' ? m : matrix(m.rows, m.cols, await toFloat32(await fromFloat32(m.data, dtype), dtype));

  test(`toDevice / toHost round trip per dtype, dispose (seed ${seed})`, async (t) => {
    const m = randomMatrix(37, 19, seed);
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      const d = await upload(m, dtype);
      t.true(d instanceof DeviceMatrix);
      t.is(d.bytes, 37 * 19 * (dtype === 'f32' ? 4 : 2));
      t.deepEqual((await d.toHost()).data, (await rounded(m, dtype)).data, dtype);
      d.dispose();
      t.true(d.disposed);
      d.dispose();
      await t.throwsAsync(d.toHost(), { code: 'ERR_INVALID_ARGUMENT' });
    }
  });

  test(`a device matrix disposed of while an operation is queued stays alive for it (seed ${seed})`, async (t) => {
    const x = randomMatrix(64, 128, seed);
    const layer = { A: randomMatrix(8, 128, seed + 1), B: randomMatrix(96, 8, seed + 2), scale: 0.25 };
    const A = await toDevice(layer.A);
    const pending = loraForward(x, { ...layer, A }, { device: 'cuda' });
    A.dispose();
    const y = await pending;
    t.true(relativeError(y.data, (await loraForward(x, layer)).data) < f32);
    await t.throwsAsync(loraForward(x, { ...layer, A }), { code: 'ERR_INVALID_ARGUMENT', message: /disposed/ });
  });

  test(`a device matrix with device: 'cpu' is refused (seed ${seed})`, async (t) => {
    const x = await toDevice(randomMatrix(4, 4, seed));
    await t.throwsAsync(rsvd(x, { rank: 2, device: 'cpu' }), { code: 'ERR_INVALID_ARGUMENT', message: /toHost/ });
    x.dispose();
  });

  // A matrix with decaying singular values: the randomized path's result is well defined.
  const decaying = (rows: number, cols: number, s: number) => {
    const u = randomMatrix(rows, 40, s);
    const v = randomMatrix(40, cols, s + 1);
    for (let j = 0; j < 40; j++) for (let i = 0; i < rows; i++) u.data[i * 40 + j]! *= 0.8 ** j;
    const out = matrix(rows, cols);
    for (let i = 0; i < rows; i++) {
      for (let k = 0; k < 40; k++) {
        const a = u.data[i * 40 + k]!;
        for (let j = 0; j < cols; j++) out.data[i * cols + j]! += a * v.data[k * cols + j]!;
      }
    }
    return out;
  };

  for (const dtype of ['host', 'f32', 'bf16'] as const) {
    test(`rsvd on the GPU (${dtype}) matches the CPU backend (seed ${seed})`, async (t) => {
      const a = decaying(300, 500, seed);
      const reference = dtype === 'bf16' ? await rounded(a, 'bf16') : a;
      const input = dtype === 'host' ? a : await upload(a, dtype);
      const options = { rank: 10, oversample: 10, powerIters: 2, seed: seed % 1000 };
      const gpu = await rsvd(input, { ...options, device: 'cuda' });
      const cpu = await rsvd(reference, options);
      t.false(gpu.exact);
      t.true(relativeError(gpu.S, cpu.S) < 1e-4, `S: ${relativeError(gpu.S, cpu.S)}`);
      // Same test matrix, sign-normalised: the leading vectors agree to rounding.
      t.true(relativeError(gpu.U.data.subarray(0, 300 * 5), cpu.U.data.subarray(0, 300 * 5)) < 1e-3);
      if (input instanceof DeviceMatrix) input.dispose();
    });
  }

  test(`rsvd on the GPU: the exact path, and NaN refused (seed ${seed})`, async (t) => {
    // min(rows, cols) = 20 <= 2 (k + p) = 28: the exact path.
    const a = randomMatrix(20, 200, seed);
    const gpu = await rsvd(a, { rank: 4, device: 'cuda' });
    t.true(gpu.exact);
    t.true(relativeError(gpu.S, (await rsvd(a, { rank: 4 })).S) < 1e-5);
    const bad = decaying(300, 400, seed);
    bad.data[1234] = Number.NaN;
    await t.throwsAsync(rsvd(bad, { rank: 10, device: 'cuda' }), { code: 'ERR_NON_FINITE' });
  });

  for (const dtype of ['host', 'f32', 'f16', 'bf16'] as const) {
    test(`LoRA and EigenLoRA forward/backward on the GPU (${dtype} weights) match the CPU (seed ${seed})`, async (t) => {
      const n = 33, dIn = 70, dOut = 50, r = 6, kA = 12, kB = 9;
      const x = randomMatrix(n, dIn, seed);
      const dy = randomMatrix(n, dOut, seed + 1);
      const host = {
        A: randomMatrix(r, dIn, seed + 2, 0.1),
        B: randomMatrix(dOut, r, seed + 3, 0.1),
        weight: randomMatrix(dOut, dIn, seed + 4, 0.1),
        componentsA: randomMatrix(dIn, kA, seed + 5, 0.1),
        componentsB: randomMatrix(dOut, kB, seed + 6, 0.1),
      };
      const bias = randomMatrix(1, dOut, seed + 7).data;
      const alpha = randomMatrix(kA, r, seed + 8);
      const beta = randomMatrix(kB, r, seed + 9);
      const place = async (m: Matrix) => (dtype === 'host' ? m : upload(m, dtype));
      const ref = async (m: Matrix) => (dtype === 'host' ? m : rounded(m, dtype));
      const gpu = { A: await place(host.A), B: await place(host.B), weight: await place(host.weight), componentsA: await place(host.componentsA), componentsB: await place(host.componentsB) };
      const cpu = { A: await ref(host.A), B: await ref(host.B), weight: await ref(host.weight), componentsA: await ref(host.componentsA), componentsB: await ref(host.componentsB) };
      const close = (a: Matrix | null, b: Matrix | null, what: string) => {
        const e = relativeError(a!.data, b!.data);
        t.true(e < f32, `${what}: ${e}`);
      };
      for (const withBase of [true, false]) {
        const base = withBase ? { weight: cpu.weight, bias } : {};
        const gpuBase = withBase ? { weight: gpu.weight, bias } : {};
        const lora = { A: cpu.A, B: cpu.B, scale: 0.7, ...base };
        const loraGpu = { A: gpu.A, B: gpu.B, scale: 0.7, ...gpuBase };
        close(await loraForward(x, loraGpu, { device: 'cuda' }), await loraForward(x, lora), 'lora y');
        const g = await loraBackward(x, dy, loraGpu, { device: 'cuda' });
        const c = await loraBackward(x, dy, lora);
        close(g.dx, c.dx, 'lora dx');
        close(g.dA, c.dA, 'lora dA');
        close(g.dB, c.dB, 'lora dB');
        const eig = { componentsA: cpu.componentsA, alpha, beta, componentsB: cpu.componentsB, scale: 1.3, ...base };
        const eigGpu = { componentsA: gpu.componentsA, alpha, beta, componentsB: gpu.componentsB, scale: 1.3, ...gpuBase };
        close(await eigenLoraForward(x, eigGpu, { device: 'cuda' }), await eigenLoraForward(x, eig), 'eigenlora y');
        const ge = await eigenLoraBackward(x, dy, eigGpu, { device: 'cuda' });
        const ce = await eigenLoraBackward(x, dy, eig);
        close(ge.dx, ce.dx, 'eigenlora dx');
        close(ge.dAlpha, ce.dAlpha, 'dAlpha');
        close(ge.dBeta, ce.dBeta, 'dBeta');
        const noDx = await eigenLoraBackward(x, dy, eigGpu, { device: 'cuda', inputGrad: false });
        t.is(noDx.dx, null);
        close(noDx.dAlpha, ce.dAlpha, 'dAlpha without dx');
      }
      await t.throwsAsync(eigenLoraForward(x, { componentsA: gpu.componentsA, alpha, beta, componentsB: gpu.componentsB }, { device: 'cuda', order: 'rebuild' }), {
        code: 'ERR_INVALID_ARGUMENT',
      });
      for (const m of Object.values(gpu)) if (m instanceof DeviceMatrix) m.dispose();
    });
  }

  test(`finite differences of the GPU backward passes (seed ${seed})`, async (t) => {
    const n = 5, dIn = 7, dOut = 6, r = 3, kA = 4, kB = 5;
    const x = randomMatrix(n, dIn, seed);
    const dy = randomMatrix(n, dOut, seed + 1);
    const layer = { componentsA: randomMatrix(dIn, kA, seed + 2), alpha: randomMatrix(kA, r, seed + 3), beta: randomMatrix(kB, r, seed + 4), componentsB: randomMatrix(dOut, kB, seed + 5), scale: 0.9 };
    // L = sum(dy .* y): its gradient is what backward returns for this dy.
    const loss = async (l: typeof layer, input = x) => {
      const y = await eigenLoraForward(input, l, { device: 'cuda' });
      let s = 0;
      for (let i = 0; i < y.data.length; i++) s += dy.data[i]! * y.data[i]!;
      return s;
    };
    const grads = await eigenLoraBackward(x, dy, layer, { device: 'cuda' });
    const h = 1e-2;
    for (const [name, param, grad] of [['alpha', layer.alpha, grads.dAlpha], ['beta', layer.beta, grads.dBeta], ['x', x, grads.dx!]] as const) {
      for (const i of [0, Math.floor(param.data.length / 2), param.data.length - 1]) {
        const keep = param.data[i]!;
        param.data[i] = keep + h;
        const up = await loss(layer);
        param.data[i] = keep - h;
        const down = await loss(layer);
        param.data[i] = keep;
        const numeric = (up - down) / (2 * h);
        t.true(Math.abs(numeric - grad.data[i]!) <= 2e-3 * (1 + Math.abs(numeric)), `${name}[${i}]: ${numeric} vs ${grad.data[i]}`);
      }
    }
  });

  test(`batched multi-adapter apply on the GPU matches the CPU, host and device banks (seed ${seed})`, async (t) => {
    const n = 40, dIn = 64, dOut = 48, kA = 16, kB = 12, count = 7;
    const random = rng(seed);
    const x = randomMatrix(n, dIn, seed);
    const componentsA = randomMatrix(dIn, kA, seed + 1, 0.2);
    const componentsB = randomMatrix(dOut, kB, seed + 2, 0.2);
    const weight = randomMatrix(dOut, dIn, seed + 3, 0.1);
    const bias = randomMatrix(1, dOut, seed + 4).data;
    const mixing = new Float32Array(count * kA * kB);
    for (let i = 0; i < count; i++) mixingMatrix(randomMatrix(kA, 4, seed + 10 + i), randomMatrix(kB, 4, seed + 30 + i), 0.5, mixing.subarray(i * kA * kB, (i + 1) * kA * kB));
    const rows = Int32Array.from({ length: n }, () => Math.floor(random() * (count + 1)) - 1);
    const bank = { componentsA, componentsB, mixing, count };
    const cpu = await eigenBankApply(x, bank, rows, { weight, bias });
    const hostGpu = await eigenBankApply(x, bank, rows, { weight, bias, device: 'cuda' });
    t.true(relativeError(hostGpu.data, cpu.data) < f32);
    const deviceBank = { componentsA: await toDevice(componentsA), componentsB: await toDevice(componentsB), mixing: await toDevice(matrix(count * kA, kB, mixing)), count };
    const onDevice = await eigenBankApply(await toDevice(x), deviceBank, rows, { weight: await toDevice(weight), bias });
    t.true(relativeError(onDevice.data, cpu.data) < f32);

    const adapters = Array.from({ length: count }, (_, i) => ({ A: randomMatrix(2 + (i % 4), dIn, seed + 50 + i, 0.2), B: randomMatrix(dOut, 2 + (i % 4), seed + 70 + i, 0.2), scale: 0.3 + i / 10 }));
    const loraCpu = await loraBankApply(x, adapters, rows, { weight, bias });
    const loraGpu = await loraBankApply(x, adapters, rows, { weight, bias, device: 'cuda' });
    t.true(relativeError(loraGpu.data, loraCpu.data) < f32);
    const bad = Int32Array.from(rows);
    bad[3] = count;
    await t.throwsAsync(eigenBankApply(x, bank, bad, { device: 'cuda' }), { instanceOf: EigenLoraxError });
  });

  test(`AdapterBank and LoraBank with device: 'cuda' give the CPU result, with a base weight kept on the GPU (seed ${seed})`, async (t) => {
    const dIn = 24, dOut = 18, module = 'layers.0.q_proj';
    const bases = plantedBases(dIn, dOut, 4, 4, seed);
    const adapters = Array.from({ length: 4 }, (_, i) => memoryAdapter([{ name: module, ...plantedFactors(bases, 2 + (i % 2), seed + 31 * i, 0.05), alpha: 2 + i }]));
    const subspace = await buildSubspace(adapters, { components: 4, seed: 1, hashSources: false });
    const eigen = new AdapterBank(subspace);
    const lora = new LoraBank();
    for (const [i, c] of subspace.coefficients.entries()) {
      eigen.register(`a${i}`, c);
      lora.register(`a${i}`, await reconstructAdapter(subspace, c));
    }
    const x = randomMatrix(21, dIn, seed + 1);
    const rows = Array.from({ length: 21 }, (_, b) => (b % 5 === 4 ? null : `a${b % 4}`));
    const weight = randomMatrix(dOut, dIn, seed + 2, 0.2);
    const bias = randomMatrix(1, dOut, seed + 3).data;
    const onGpu = await toDevice(weight);
    for (const bank of [eigen, lora]) {
      const cpu = await bank.apply(module, x, rows, { weight, bias });
      const gpu = await bank.apply(module, x, rows, { weight, bias, device: 'cuda' });
      const resident = await bank.apply(module, x, rows, { weight: onGpu, bias });
      t.true(relativeError(gpu.data, cpu.data) < f32, `${bank.constructor.name}: ${relativeError(gpu.data, cpu.data)}`);
      t.true(relativeError(resident.data, cpu.data) < f32, `${bank.constructor.name} (resident weight)`);
    }
    onGpu.dispose();
  });

  test(`bad shapes with device operands are refused before any work (seed ${seed})`, async (t) => {
    const x = await toDevice(randomMatrix(4, 10, seed));
    const A = await toDevice(randomMatrix(3, 9, seed + 1));
    await t.throwsAsync(loraForward(x, { A, B: randomMatrix(5, 3, seed + 2) }), { code: 'ERR_SHAPE_MISMATCH', message: /layer\.A/ });
    x.dispose();
    A.dispose();
  });
}
