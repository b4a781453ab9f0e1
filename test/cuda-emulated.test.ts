/**
 * The CUDA backend's host code without a GPU: native/cuda/emulation puts a stand-in CUDA
 * runtime on host memory, the kernels as loops and a reference (column-major) cuBLAS under
 * the unchanged backend. Runs the C++ parity check (native/cuda/check.cpp) against it, and
 * the library's GPU path through the emulated plugin. Built beside the cmake-js addon
 * (CMake option EIGENLORAX_CUDA_EMULATION, on with EIGENLORAX_DEV, as a checkout's `npm install`
 * builds); skipped, saying why, elsewhere.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  buildInfo,
  cudaStatus,
  DeviceMatrix,
  eigenBankApply,
  eigenLoraBackward,
  eigenLoraForward,
  loraBackward,
  loraBankApply,
  loraForward,
  matrix,
  rsvd,
  toDevice,
  type DeviceDtype,
  type Matrix,
} from '../lib/index.js';
import { fromFloat32, toFloat32 } from '../lib/dtype.js';
import { relativeError } from './helpers/dense.js';
import { freshSeed, randomMatrix } from './helpers/random.js';

const run = promisify(execFile);
const seed = freshSeed();
const buildDir = path.dirname(path.dirname(buildInfo().addonPath));
const checkProgram = path.join(buildDir, 'eigenlorax_cuda_check_emulated');
const cublas = path.join(buildDir, 'libcublas_emulated.so');
const plugin = path.join(buildDir, 'eigenlorax_cuda_emulated.so');
const notBuilt = (file: string) => `skipped: ${file} was not built (a node-gyp build, or EIGENLORAX_CUDA_EMULATION=OFF)`;

const runCheck = (env: Record<string, string>) =>
  run(checkProgram, ['--seed', String(seed)], { env: { ...process.env, ...env }, maxBuffer: 64 << 20 }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }),
  );

if (existsSync(checkProgram) && existsSync(cublas)) {
  test(`eigenlorax_cuda_check_emulated: every parity check passes (seed ${seed})`, async (t) => {
    const result = await runCheck({ EIGENLORAX_CUBLAS: cublas });
    const failing = result.stdout.split('\n').filter((l) => l.startsWith('FAIL'));
    t.is(result.code, 0, [...failing, result.stderr].join('\n'));
    t.regex(result.stdout, /^device 0 +Emulated GPU \(host memory\), compute 9\.0/m);
    t.regex(result.stdout, /^summary: all \d+ checks passed/m);
    // The emulation says on stderr whatever it refused (a stray copy, a bad launch, a host
    // pointer given to cuBLAS), even where the backend then recovered.
    t.is(result.stderr, '');
  });

  test('eigenlorax_cuda_check_emulated: SKIP with exit 77 and the reason without a device or cuBLAS', async (t) => {
    const noDevice = await runCheck({ EIGENLORAX_CUBLAS: cublas, EIGENLORAX_EMULATED_DEVICES: '0' });
    t.is(noDevice.code, 77, noDevice.stdout);
    t.regex(noDevice.stdout, /^SKIP: no CUDA device found/);
    const noCublas = await runCheck({ EIGENLORAX_CUBLAS: path.join(buildDir, 'no-such-libcublas.so') });
    t.is(noCublas.code, 77, noCublas.stdout);
    t.regex(noCublas.stdout, /^SKIP: .*cuBLAS could not be loaded \(.*no-such-libcublas\.so/);
  });
} else {
  test('eigenlorax_cuda_check_emulated: skipped', (t) => {
    t.log(notBuilt(checkProgram));
    t.pass();
  });
}

if (existsSync(plugin) && existsSync(cublas)) {
  // Read when the addon first loads the plugin, which nothing in this process has done yet.
  process.env.EIGENLORAX_CUDA_PLUGIN = plugin;
  process.env.EIGENLORAX_CUBLAS = cublas;

  test('the emulated plugin is a usable CUDA device', async (t) => {
    const status = await cudaStatus();
    t.true(status.available, status.reason);
    t.is(status.plugin, plugin);
    t.is(status.cublasLibrary, cublas);
    t.is(status.devices[0]?.name, 'Emulated GPU (host memory)');
  });

  // Every GPU job of the addon (native/addon/cuda_jobs.cpp), with host operands and device
  // matrices in each storage dtype, many in flight at once, against the CPU backend on the
  // values the device holds.
  test(`every GPU operation through the addon matches the CPU (seed ${seed})`, async (t) => {
    const rounded = async (m: Matrix, dtype: DeviceDtype) =>
      dtype === 'f32' ? m : matrix(m.rows, m.cols, await toFloat32(await fromFloat32(m.data, dtype), dtype));
    const results: Array<Promise<[string, number]>> = [];
    const compare = (what: string, gpu: Promise<Float32Array>, cpu: Promise<Float32Array>) =>
      results.push(Promise.all([gpu, cpu]).then(([g, c]): [string, number] => [what, relativeError(g, c)]));
    const data = (m: Promise<Matrix>) => m.then((r) => r.data);
    const onDevice: DeviceMatrix[] = [];
    const place = async (m: Matrix, dtype: DeviceDtype) => {
      const d = await toDevice(m, { dtype });
      onDevice.push(d);
      return d;
    };
    for (const [i, dtype] of (['f32', 'f16', 'bf16'] as const).entries()) {
      const n = 33 + 20 * i, dIn = 70, dOut = 53, r = 3 + i, kA = 12, kB = 9, count = 4, s = seed + 100 * i;
      const x = randomMatrix(n, dIn, s);
      const dy = randomMatrix(n, dOut, s + 1);
      const host = {
        A: randomMatrix(r, dIn, s + 2, 0.2),
        B: randomMatrix(dOut, r, s + 3, 0.2),
        weight: randomMatrix(dOut, dIn, s + 4, 0.1),
        componentsA: randomMatrix(dIn, kA, s + 5, 0.2),
        componentsB: randomMatrix(dOut, kB, s + 6, 0.2),
      };
      const bias = randomMatrix(1, dOut, s + 7).data;
      const alpha = randomMatrix(kA, r, s + 8);
      const beta = randomMatrix(kB, r, s + 9);
      const gpu = {
        A: await place(host.A, dtype),
        B: await place(host.B, dtype),
        weight: await place(host.weight, dtype),
        componentsA: await place(host.componentsA, dtype),
        componentsB: await place(host.componentsB, dtype),
      };
      const cpu = {
        A: await rounded(host.A, dtype),
        B: await rounded(host.B, dtype),
        weight: await rounded(host.weight, dtype),
        componentsA: await rounded(host.componentsA, dtype),
        componentsB: await rounded(host.componentsB, dtype),
      };
      compare(`toHost ${dtype}`, data(gpu.componentsA.toHost()), Promise.resolve(cpu.componentsA.data));
      const lora = { A: gpu.A, B: gpu.B, weight: gpu.weight, bias, scale: 0.7 };
      const loraCpu = { A: cpu.A, B: cpu.B, weight: cpu.weight, bias, scale: 0.7 };
      compare(`loraForward ${dtype}`, data(loraForward(x, lora)), data(loraForward(x, loraCpu)));
      const loraGrads = [loraBackward(x, dy, lora), loraBackward(x, dy, loraCpu)] as const;
      for (const key of ['dx', 'dA', 'dB'] as const) {
        compare(`loraBackward ${key} ${dtype}`, loraGrads[0].then((g) => g[key]!.data), loraGrads[1].then((g) => g[key]!.data));
      }
      const eigen = { componentsA: gpu.componentsA, alpha, beta, componentsB: gpu.componentsB, weight: gpu.weight, bias, scale: 1.3 };
      const eigenCpu = { ...eigen, componentsA: cpu.componentsA, componentsB: cpu.componentsB, weight: cpu.weight };
      compare(`eigenLoraForward ${dtype}`, data(eigenLoraForward(x, eigen)), data(eigenLoraForward(x, eigenCpu)));
      const eigenGrads = [eigenLoraBackward(x, dy, eigen), eigenLoraBackward(x, dy, eigenCpu)] as const;
      for (const key of ['dx', 'dAlpha', 'dBeta'] as const) {
        compare(`eigenLoraBackward ${key} ${dtype}`, eigenGrads[0].then((g) => g[key]!.data), eigenGrads[1].then((g) => g[key]!.data));
      }
      const rows = Int32Array.from({ length: n }, (_, b) => (b % (count + 1)) - 1);
      const mixing = randomMatrix(count * kA, kB, s + 10);
      const bank = { componentsA: gpu.componentsA, componentsB: gpu.componentsB, mixing: mixing.data, count };
      const bankCpu = { ...bank, componentsA: cpu.componentsA, componentsB: cpu.componentsB };
      compare(`eigenBankApply ${dtype}`, data(eigenBankApply(x, bank, rows, { weight: gpu.weight, bias })), data(eigenBankApply(x, bankCpu, rows, { weight: cpu.weight, bias })));
      const adapters = Array.from({ length: count }, (_, a) => ({ A: randomMatrix(1 + a, dIn, s + 20 + a, 0.2), B: randomMatrix(dOut, 1 + a, s + 30 + a, 0.2), scale: 0.3 + a / 10 }));
      compare(`loraBankApply ${dtype}`, data(loraBankApply(x, adapters, rows, { weight: gpu.weight, bias })), data(loraBankApply(x, adapters, rows, { weight: cpu.weight, bias })));
      // Singular values: well determined even where a random matrix has close ones.
      const a = randomMatrix(150, 120, s + 11);
      const options = { rank: 5, oversample: 5, method: 'randomized' as const, seed: i };
      compare(`rsvd ${dtype}`, rsvd(await place(a, dtype), options).then((g) => g.S), rsvd(await rounded(a, dtype), options).then((g) => g.S));
    }
    // f32 products in another order: a few 1e-7 times sqrt(depth).
    for (const [what, error] of await Promise.all(results)) t.true(error < 2e-5, `${what}: ${error}`);
    for (const d of onDevice) d.dispose();
  });
} else {
  test('the emulated plugin: skipped', (t) => {
    t.log(notBuilt(plugin));
    t.pass();
  });
}
