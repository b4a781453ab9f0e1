/**
 * Extraction benchmark: extractLora on a model pair of N square modules against the time to
 * read them, and numpy's exact SVD of one module's difference in the same run.
 *
 *   npm run bench:extract
 *   node dist/bench/extract.js [--side 4096] [--modules 32] [--rank 16] [--dtype bf16|f32]
 *                              [--python python3] [--no-peer] [--dir DIR]
 *   node dist/bench/extract.js --help      the flags
 *
 * 1. Writes base.safetensors and tuned.safetensors (N tensors `layers.i.proj.weight`,
 *    side x side, bf16 by default: 32 x 32 MiB = 1 GiB each at 4096) to a scratch folder,
 *    one tensor at a time: base ~ N(0, 0.02^2); tuned = base + a rank-64 update with
 *    singular values 4 / (1 + j) + uniform noise.
 * 2. extractLora (rank R, PEFT output): per module, the time to read both weights and form
 *    the difference, and the time of the rsvd; their medians and ratio.
 * 3. The time to read the same two tensors alone (warm page cache), as stored bytes and as
 *    f32, median over modules.
 * 4. numpy's exact SVD (np.linalg.svd, LAPACK gesdd in float32) of module 0's difference,
 *    in a python3 child whose OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset (its BLAS
 *    threads = eigenlorax's); the captured energy of its top R against ours.
 * The scratch folder is removed at the end (one given with --dir is kept). Prints tables;
 * never passes or fails on time.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Option } from 'commander';
import { addLowRank, extractLora, getThreads, matrix, openSafetensors, writeSafetensors, type SafetensorsEntry } from '../lib/index.js';
import { addUniformNoise, benchCommand, choiceArg, cpuSnapshot, fillGaussian, integerArg, machineLines, median, ms, now, otherLoadLine, ratio, sig, table } from './common.js';

interface Options {
  side: number;
  modules: number;
  rank: number;
  dtype: 'BF16' | 'F32';
  python: string;
  peer: boolean;
  dir: string | null;
}

function parseOptions(argv: string[]): Options {
  return benchCommand('extract.js', "extractLora on a synthetic base/tuned pair: time per module against reading it, and numpy's exact SVD of one module")
    .addOption(new Option('--side <n>', 'side of each square module (side x side)').default(4096).argParser(integerArg()))
    .addOption(new Option('--modules <n>', 'modules (tensors) in each file').default(32).argParser(integerArg()))
    .addOption(new Option('--rank <n>', 'rank R to extract').default(16).argParser(integerArg()))
    .addOption(new Option('--dtype <bf16|f32>', 'dtype of the written weights').default('BF16', 'bf16').argParser(choiceArg(['BF16', 'F32'], true)))
    .addOption(new Option('--python <path>', "interpreter for numpy's exact SVD").default('python3'))
    .option('--no-peer', "skip numpy's exact SVD")
    .addOption(new Option('--dir <dir>', 'scratch folder to write the pair in; kept at the end').default(null, 'a temporary folder, removed at the end'))
    .parse(argv, { from: 'user' })
    .opts<Options>();
}

const PLANTED = 64;

function baseWeight(side: number, i: number): Float32Array {
  const w = new Float32Array(side * side);
  fillGaussian(w, 1000 + i, 0.02);
  return w;
}

async function tunedWeight(side: number, i: number): Promise<Float32Array> {
  const w = baseWeight(side, i);
  const r = Math.min(PLANTED, side);
  const A = matrix(r, side);
  const B = matrix(side, r);
  fillGaussian(A.data, 2000 + i, 1 / Math.sqrt(side));
  fillGaussian(B.data, 3000 + i, 1 / Math.sqrt(side));
  for (let j = 0; j < r; j++) for (let c = 0; c < side; c++) A.data[j * side + c] = (A.data[j * side + c] as number) * (4 / (1 + j));
  await addLowRank({ rows: side, cols: side, data: w }, { A, B });
  addUniformNoise(w, 4000 + i, 1e-4);
  return w;
}

/** numpy's exact SVD of one difference, timed in a child; null and why when python3/numpy is missing. */
function numpySvd(python: string, file: string, side: number, rank: number): { seconds: number; captured: number; info: string } | { why: string } {
  const script = `
import json, sys, time, numpy as np
d = np.fromfile(sys.argv[1], dtype='<f4').reshape(${side}, ${side})
t = time.perf_counter(); s = np.linalg.svd(d, full_matrices=False, compute_uv=True)[1]; t = time.perf_counter() - t
s64 = s.astype(np.float64)
print(json.dumps({"seconds": t, "captured": float((s64[:${rank}]**2).sum() / (s64**2).sum()), "numpy": np.__version__}))
`;
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  for (const name of ['OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS']) env[name] ??= String(getThreads());
  const run = spawnSync(python, ['-c', script, file], { env, encoding: 'utf8', maxBuffer: 1 << 20 });
  if (run.error) return { why: `${python} could not be started (${run.error.message})` };
  if (run.status !== 0) return { why: `${python} failed: ${(run.stderr || '').trim().split('\n').pop()}` };
  const out = JSON.parse(run.stdout.trim().split('\n').pop() as string) as { seconds: number; captured: number; numpy: string };
  return { seconds: out.seconds, captured: out.captured, info: `numpy ${out.numpy}, BLAS threads ${env.OPENBLAS_NUM_THREADS}` };
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  for (const line of machineLines()) console.log(line);
  const dir = o.dir ?? (await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-bench-extract-')));
  const names = Array.from({ length: o.modules }, (_, i) => `layers.${i}.proj.weight`);
  const bytes = o.side * o.side * (o.dtype === 'BF16' ? 2 : 4) * o.modules;
  console.log(`pair        ${o.modules} x ${o.side} x ${o.side} ${o.dtype} (${(bytes / 2 ** 30).toFixed(2)} GiB per file), planted rank ${PLANTED}, extracted rank ${o.rank}`);
  const before = cpuSnapshot();
  try {
    let t = now();
    const entries = (make: (i: number) => Float32Array | Promise<Float32Array>): SafetensorsEntry[] =>
      names.map((name, i) => ({ name, shape: [o.side, o.side], dtype: o.dtype, data: () => make(i) }));
    await writeSafetensors(path.join(dir, 'base.safetensors'), entries((i) => baseWeight(o.side, i)));
    await writeSafetensors(path.join(dir, 'tuned.safetensors'), entries((i) => tunedWeight(o.side, i)));
    console.log(`written     in ${sig((now() - t) / 1000)} s to ${dir}\n`);

    t = now();
    const report = await extractLora({ base: path.join(dir, 'base.safetensors'), tuned: path.join(dir, 'tuned.safetensors'), out: path.join(dir, 'adapter'), rank: o.rank });
    const wall = (now() - t) / 1000;

    // Reading alone, warm cache: stored bytes and f32.
    const rawTimes: number[] = [];
    const f32Times: number[] = [];
    {
      const readers = [await openSafetensors(path.join(dir, 'base.safetensors')), await openSafetensors(path.join(dir, 'tuned.safetensors'))];
      const f32 = [new Float32Array(o.side * o.side), new Float32Array(o.side * o.side)];
      for (const name of names) {
        let s = now();
        await Promise.all(readers.map((r) => r.readRaw(name)));
        rawTimes.push((now() - s) / 1000);
        s = now();
        await Promise.all(readers.map((r, k) => r.readFloat32(name, { out: f32[k] })));
        f32Times.push((now() - s) / 1000);
      }
      for (const r of readers) await r.close();
    }

    const read = median(report.modules.map((m) => m.seconds.read));
    const svd = median(report.modules.map((m) => m.seconds.svd));
    console.log(
      table(
        ['per module (median)', 'ms', 'vs read as f32'],
        [
          ['read both as stored bytes', ms(median(rawTimes)), ratio(median(rawTimes) / median(f32Times))],
          ['read both as f32', ms(median(f32Times)), ratio(1)],
          ['extract: read + difference', ms(read), ratio(read / median(f32Times))],
          [`extract: rsvd rank ${o.rank}`, ms(svd), ratio(svd / median(f32Times))],
          ['extract: whole module', ms(read + svd), ratio((read + svd) / median(f32Times))],
        ],
      ),
    );
    console.log(`\nextractLora ${o.modules} modules in ${sig(wall)} s (${sig(wall / o.modules)} s per module); captured energy: file ${sig(report.total.captured, 5)}, module 0 ${sig(report.modules[0]!.captured, 5)}`);

    if (!o.peer) console.log('numpy       skipped (--no-peer)');
    else {
      // Module 0's difference, as eigenlorax formed it, for numpy.
      const readers = [await openSafetensors(path.join(dir, 'base.safetensors')), await openSafetensors(path.join(dir, 'tuned.safetensors'))];
      const [b, u] = await Promise.all(readers.map((r) => r.readFloat32(names[0]!)));
      for (const r of readers) await r.close();
      const d = u!.data;
      for (let i = 0; i < d.length; i++) d[i] = (d[i] as number) - (b!.data[i] as number);
      const file = path.join(dir, 'diff0.f32');
      await writeFile(file, new Uint8Array(d.buffer));
      const peer = numpySvd(o.python, file, o.side, o.rank);
      if ('why' in peer) console.log(`numpy       not run: ${peer.why}`);
      else {
        const ours = report.modules[0]!;
        console.log(`numpy       ${peer.info}; OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset for it`);
        console.log(
          table(
            ['module 0', 'ms', 'captured energy (top ' + o.rank + ')', 'speed-up of eigenlorax'],
            [
              ['numpy exact SVD (gesdd f32)', ms(peer.seconds), sig(peer.captured, 6), ratio(1)],
              [`eigenlorax rsvd rank ${o.rank}`, ms(ours.seconds.svd), sig(ours.captured, 6), ratio(peer.seconds / ours.seconds.svd)],
              ['eigenlorax read + rsvd', ms(ours.seconds.read + ours.seconds.svd), '', ratio(peer.seconds / (ours.seconds.read + ours.seconds.svd))],
            ],
          ),
        );
      }
    }
    console.log(otherLoadLine(before, cpuSnapshot()));
  } finally {
    if (o.dir === null) await rm(dir, { recursive: true, force: true });
  }
}

await main();
