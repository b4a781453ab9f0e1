/**
 * Subspaces at scale (issue 11).
 *
 *   npm run bench:scale                        # N = 64, 256, 1024; 2 layers (see below)
 *   node dist/bench/scale.js --adapters 16 --layers 1 --dim 1024      # a quick run
 *   node dist/bench/scale.js --module-only     # only the single-module measurement
 *   node dist/bench/scale.js --help            # the flags
 *
 * 1. One module of the Llama-7B shape (d = 4096 -> 4096, r = 16, N = 256 adapters in
 *    memory, K = 32): wall and process CPU time of the native build and projection (as two
 *    calls, and as the one call buildSubspace makes), their
 *    arithmetic (the rsvd's (2q + 2) passes of 2 R d l flops per side), GFLOP/s, and, as
 *    the reference rate in the same run, rsvd of one 4096 x 4096 matrix at the same K
 *    (GEMM-bound). Flags --dim, --rank, --module-adapters, --components change the shape.
 * 2. For each N in --adapters (default 64,256,1024): a zoo of N PEFT adapters (q/k/v/o_proj
 *    on --layers layers (default 2; 32 is the real model, 8.1 GB at N = 256: pass it on a
 *    machine with the disk), d = --dim, r = --rank, bf16, planted shared structure plus
 *    noise, seeded) in a scratch folder; then: time to read the files (warm: just written),
 *    the GEMM rate in this run (one float32 product of the rsvd's shape through the addon),
 *    build (in memory) and analyzeAdapters (same K, --held-out, default auto) interleaved
 *    --repeats times (default 3, medians): build GFLOP/s against the GEMM rate, analyze as
 *    a multiple of build; build out of core (--memory-budget, default 64MB; skipped with
 *    --skip-out-of-core), a 4-way sharded build + gather (sequential here: total work),
 *    each with time per module, the ratio to
 *    reading, and this process's peak RSS after it (VmHWM: a high-water mark, so later
 *    rows show the largest so far). Byte-identity of the gathered folder is checked.
 * Never passes or fails on time. Scratch files are removed unless --keep; --zoo <dir> takes
 * the first N adapters of a zoo an earlier run kept instead of writing one (writing the
 * 8.1 GB 7B-shaped zoo takes minutes; pass the same --layers, --dim and --rank).
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { InvalidArgumentError, Option } from 'commander';
import { analyzeAdapters, buildSubspace, gatherShards, matrix, rsvd, saveAdapter, writeBuildFolder, type LoraAdapter } from '../lib/index.js';
import { native } from '../lib/native.js';
import { benchCommand, fillGaussian, integerArg, integerListArg, machineLines, peakRss, sig, table, type Cell } from './common.js';

interface Options {
  adapters: number[];
  layers: number;
  dim: number;
  rank: number;
  components: number;
  moduleAdapters: number;
  /** --module-only (unset: the zoos too). */
  moduleOnly?: boolean;
  memoryBudget: string;
  skipOutOfCore?: boolean;
  heldOut: 'auto' | 'leave-one-out' | number;
  keep?: boolean;
  repeats: number;
  /** A zoo written by an earlier run (--keep): its first N adapters are used instead of writing new ones. */
  zoo: string | null;
}

/** --held-out: auto, loo (leave-one-out) or a number of folds k >= 2 (analyzeAdapters also caps it at N). */
function parseHeldOut(text: string): Options['heldOut'] {
  if (text === 'auto') return 'auto';
  if (text === 'loo') return 'leave-one-out';
  const folds = Number(text);
  if (!Number.isSafeInteger(folds) || folds < 2) throw new InvalidArgumentError('expected auto, loo or a number of folds >= 2');
  return folds;
}

function parse(argv: string[]): Options {
  return benchCommand('scale.js', 'subspaces at scale: one Llama-7B-shaped module in memory, then zoos of N bf16 PEFT adapters (build, analyze, out of core, 4 shards + gather)')
    .addOption(new Option('--adapters <list>', 'zoo sizes N, one zoo each').default([64, 256, 1024], '64,256,1024').argParser(integerListArg()))
    .addOption(new Option('--layers <n>', 'layers of q/k/v/o_proj in each zoo adapter (32: the real model)').default(2).argParser(integerArg()))
    .addOption(new Option('--dim <n>', 'side d of every module (d -> d)').default(4096).argParser(integerArg()))
    .addOption(new Option('--rank <n>', 'rank r of every adapter').default(16).argParser(integerArg()))
    .addOption(new Option('--components <n>', 'components K of every build').default(32).argParser(integerArg()))
    .addOption(new Option('--module-adapters <n>', 'adapters in memory for the single-module measurement').default(256).argParser(integerArg()))
    .option('--module-only', 'only the single-module measurement, no zoo')
    .addOption(new Option('--repeats <n>', 'interleaved build and analyze runs per zoo (medians)').default(3).argParser(integerArg()))
    .addOption(new Option('--held-out <auto|loo|k>', "analyze's held-out scheme (auto: leave-one-out up to 20 adapters, else 5-fold)").default('auto').argParser(parseHeldOut))
    .addOption(new Option('--memory-budget <size>', 'memory budget of the out-of-core build').default('64MB'))
    .option('--skip-out-of-core', 'skip the out-of-core build')
    .option('--keep', 'keep the scratch folders (the zoos) instead of removing them')
    .addOption(new Option('--zoo <dir>', 'use the first N adapters of a zoo an earlier run kept (same --layers, --dim, --rank) instead of writing one').default(null, 'write a new zoo'))
    .parse(argv, { from: 'user' })
    .opts<Options>();
}

/** GFLOP/s of one float32 product of the rsvd's shape (rows x d times d x l), best of three, through the addon's GEMM. */
async function gemmRate(rows: number, d: number, l: number): Promise<{ gflops: number; seconds: number }> {
  const x = matrix(rows, d);
  fillGaussian(x.data, 21);
  const w = matrix(l, d);
  fillGaussian(w.data, 22);
  const y = matrix(rows, l);
  let best = Infinity;
  for (let rep = 0; rep < 3; rep++) {
    const t0 = performance.now();
    await native.linearForward({ x, weight: w, bias: null, y });
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return { gflops: (2 * rows * d * l) / 1e9 / best, seconds: best };
}

const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

async function timed<T>(body: () => Promise<T>): Promise<{ value: T; wall: number; cpu: number }> {
  const c0 = cpuSeconds();
  const t0 = performance.now();
  const value = await body();
  return { value, wall: (performance.now() - t0) / 1000, cpu: cpuSeconds() - c0 };
}

/** Factors of adapter i: shared directions (12 per side) with random weights, plus noise. */
function factors(d: number, r: number, seed: number, shared: { A: Float32Array; B: Float32Array }) {
  const A = matrix(r, d);
  const B = matrix(d, r);
  fillGaussian(A.data, seed, 0.02);
  fillGaussian(B.data, seed + 1, 0.02);
  const w = new Float32Array(2 * r * 12);
  fillGaussian(w, seed + 2);
  for (let i = 0; i < r; i++) {
    for (let s = 0; s < 12; s++) {
      const a = w[i * 12 + s]!;
      const b = w[r * 12 + i * 12 + s]!;
      for (let j = 0; j < d; j++) {
        A.data[i * d + j]! += a * shared.A[s * d + j]! / Math.sqrt(d);
        B.data[j * r + i]! += b * shared.B[s * d + j]! / Math.sqrt(d);
      }
    }
  }
  return { A, B };
}

/** The median run by wall time. */
const middle = <T extends { wall: number }>(list: T[]) => [...list].sort((x, y) => x.wall - y.wall)[list.length >> 1]!;

async function moduleMeasurement(o: Options): Promise<void> {
  const d = o.dim;
  const n = o.moduleAdapters;
  const shared = { A: new Float32Array(12 * d), B: new Float32Array(12 * d) };
  fillGaussian(shared.A, 11);
  fillGaussian(shared.B, 12);
  const pairs = Array.from({ length: n }, (_, i) => ({ ...factors(d, o.rank, 100 + 3 * i, shared), scale: 2 }));
  const k = o.components;
  const out = () => ({ componentsA: matrix(d, k), componentsB: matrix(d, k), singularA: new Float32Array(k), singularB: new Float32Array(k), meanA: null, meanB: null });
  const runs: Cell[][] = [];
  const R = n * o.rank;
  const l = k + 10;
  const rsvdFlops = 2 * (2 * 2 + 2) * 2 * R * d * l;
  const outputs = () => ({ alphas: pairs.map(() => matrix(k, o.rank)), betas: pairs.map(() => matrix(k, o.rank)), norms: new Float64Array(n), errors: new Float64Array(n) });
  const base = { adapters: pairs, stacking: 'canonical', weighting: 'equal', center: false, oversample: 10, powerIters: 2, seed: 1 } as const;
  for (let rep = 0; rep < 3; rep++) {
    const o1 = out();
    const b = await timed(() => native.buildModuleSubspace({ ...base, ...o1 }));
    const p = await timed(() => native.projectModule({ adapters: pairs, stacking: 'canonical', componentsA: o1.componentsA, componentsB: o1.componentsB, meanA: null, meanB: null, ...outputs() }));
    // What buildSubspace runs: one call that builds and projects (the factors canonicalised once).
    const both = await timed(() => native.buildModuleSubspace({ ...base, ...out(), project: outputs() }));
    runs.push([`${rep + 1}`, sig(b.wall), sig(b.cpu), sig(p.wall), sig(p.cpu), sig(both.wall), sig(both.cpu), sig(rsvdFlops / 1e9 / both.wall)]);
  }
  const m = matrix(d, d);
  fillGaussian(m.data, 5);
  // Warm, like the module runs after the first: the first call pays page faults for its
  // work memory and the copy of the matrix (about 0.2 s here).
  const refRun = () => timed(() => rsvd(m, { rank: k, oversample: 10, powerIters: 2, seed: 1, method: 'randomized' }));
  await refRun();
  const ref = middle([await refRun(), await refRun(), await refRun()]);
  const refFlops = (2 * 2 + 2) * 2 * d * d * l;
  process.stdout.write(`\n## One module: ${d} -> ${d}, r = ${o.rank}, ${n} adapters, K = ${k} (canonical + equal, p = 10, q = 2)\n`);
  process.stdout.write(
    table(['run', 'build s', 'build CPU s', 'project s', 'project CPU s', 'build + project in one call s', 'its CPU s', 'rsvd GFLOP/s of module'], runs),
  );
  process.stdout.write(
    `\nrsvd arithmetic of the module: ${sig(rsvdFlops / 1e9)} GFLOP; reference: rsvd of one ${d} x ${d} matrix at K = ${k}: ` +
      `${sig(ref.wall)} s (warm, median of 3) = ${sig(refFlops / 1e9 / ref.wall)} GFLOP/s (GEMM-bound, same run)\n`,
  );
}

const MODULE_NAMES = ['q_proj', 'k_proj', 'v_proj', 'o_proj'];

async function writeZoo(dir: string, n: number, o: Options): Promise<string[]> {
  const d = o.dim;
  const shared = MODULE_NAMES.flatMap((_, m) => Array.from({ length: o.layers }, (_, l) => {
    const s = { A: new Float32Array(12 * d), B: new Float32Array(12 * d) };
    fillGaussian(s.A, 1000 + 10 * (l * 4 + m));
    fillGaussian(s.B, 1001 + 10 * (l * 4 + m));
    return s;
  }));
  const paths: string[] = [];
  for (let i = 0; i < n; i++) {
    const modules = new Map();
    for (let l = 0; l < o.layers; l++) {
      MODULE_NAMES.forEach((name, m) => {
        const f = factors(d, o.rank, 7919 * i + 31 * (l * 4 + m), shared[m * o.layers + l]!);
        const full = `model.layers.${l}.self_attn.${name}`;
        modules.set(full, {
          name: full, A: f.A, B: f.B, rank: o.rank, alpha: 2 * o.rank, scale: 2, rslora: false, layout: 'linear',
          shapes: { A: [o.rank, d], B: [d, o.rank] }, inFeatures: d, outFeatures: d, fanInFanOut: false, keys: { A: '', B: '' }, dtypes: { A: 'BF16', B: 'BF16' },
        });
      });
    }
    const adapter: LoraAdapter = { format: 'peft', baseModel: 'llama-like', source: null, modules, extras: new Map(), config: null, metadata: {} };
    const p = path.join(dir, `adapter-${String(i).padStart(5, '0')}`);
    await saveAdapter(adapter, p, { format: 'peft', dtype: 'BF16' });
    paths.push(p);
  }
  return paths;
}

/** The first n adapters of a zoo an earlier run kept (its layer count and shapes are the caller's to match). */
async function existingZoo(dir: string, n: number): Promise<string[]> {
  const names = (await readdir(dir)).filter((name) => name.startsWith('adapter-')).sort();
  if (names.length < n) throw new Error(`--zoo ${dir} holds ${names.length} adapters, fewer than ${n}`);
  return names.slice(0, n).map((name) => path.join(dir, name));
}

async function sameFolders(a: string, b: string): Promise<boolean> {
  const list = async (d: string): Promise<string[]> =>
    (await readdir(d, { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).map((e) => path.relative(d, path.join(e.parentPath, e.name))).sort();
  const la = await list(a);
  const lb = await list(b);
  if (la.join('\n') !== lb.join('\n')) return false;
  for (const f of la) if (!(await readFile(path.join(a, f))).equals(await readFile(path.join(b, f)))) return false;
  return true;
}

async function zooMeasurement(o: Options, n: number): Promise<Cell[][]> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-scale-'));
  try {
    const paths = o.zoo === null ? await writeZoo(dir, n, o) : await existingZoo(o.zoo, n);
    const modules = o.layers * 4;
    const read = await timed(async () => {
      for (const p of paths) await readFile(path.join(p, 'adapter_model.safetensors'));
    });
    const opts = { components: o.components, hashSources: false } as const;
    const rows: Cell[][] = [];
    const row = (what: string, t: { wall: number }, extra = '') =>
      rows.push([String(n), what, sig(t.wall), sig(t.wall / modules), sig(t.wall / read.wall), `${sig(peakRss() / 1e6)} MB`, extra]);
    row('read files (warm)', read);
    // The GEMM rate in this run: the rsvd's product shape (N r x d times d x (K + p)), float32, all threads.
    const gemm = await gemmRate(n * o.rank, o.dim, o.components + 10);
    // Build and analyze interleaved, three times each (median): the machine may be shared.
    const builds: Array<{ wall: number; cpu: number; value: Awaited<ReturnType<typeof buildSubspace>> | null }> = [];
    const analyses: Array<{ wall: number; cpu: number }> = [];
    let analysis: Awaited<ReturnType<typeof analyzeAdapters>> | null = null;
    for (let rep = 0; rep < o.repeats; rep++) {
      builds.push(await timed(() => buildSubspace(paths, opts)));
      const a = await timed(() => analyzeAdapters(paths, { components: o.components, heldOut: o.heldOut }));
      analysis = a.value;
      analyses.push({ wall: a.wall, cpu: a.cpu });
    }
    const whole = middle(builds);
    // rsvd arithmetic of the build: per module and side (2q + 2) products of 2 (N r) d (K + p) flops.
    const buildFlops = modules * 2 * (2 * 2 + 2) * 2 * n * o.rank * o.dim * (o.components + 10);
    const rate = buildFlops / 1e9 / whole.wall;
    row('build', whole, `rsvd ${sig(rate)} GFLOP/s = ${sig((100 * rate) / gemm.gflops)}% of GEMM ${sig(gemm.gflops)} GFLOP/s`);
    const analyzed = middle(analyses);
    const folds = analysis!.perAdapter.length > 20 && o.heldOut === 'auto' ? 5 : o.heldOut === 'auto' ? n : o.heldOut;
    row(`analyze (held out: ${folds === n || folds === 'leave-one-out' ? 'leave-one-out' : `${String(folds)}-fold`})`, analyzed, `${sig(analyzed.wall / whole.wall)} x build (medians of ${o.repeats}; process CPU ${sig(analyzed.cpu / whole.cpu)} x); held-out error ${sig(analysis!.heldOutError)}`);
    // The one-machine folder, timed: the sharded run below writes folders too (four shards and
    // the gathered one), so its work is compared with build + write.
    const written = await timed(() => writeBuildFolder(whole.value!, path.join(dir, 'whole')));
    const oneMachine = { wall: whole.wall + written.wall };
    // The sharded run below stands for separate processes: the builds and the analysis above
    // must not stay in its heap (every garbage collection of the gather would walk them).
    for (const b of builds) b.value = null;
    analysis = null;
    row('build + write folder', oneMachine, `write ${sig(written.wall)} s`);
    if (!o.skipOutOfCore) {
      const streamed = await timed(() => buildSubspace(paths, { ...opts, memoryBudget: o.memoryBudget }));
      row(`build, budget ${o.memoryBudget}`, streamed, `${streamed.value.report!.streamedModules!.length} modules streamed`);
    }
    const sharded = await timed(async () => {
      const folders: string[] = [];
      for (let i = 0; i < 4; i++) {
        const s = await buildSubspace(paths, { ...opts, shard: { index: i, count: 4 } });
        folders.push(path.join(dir, `shard-${i}`));
        await writeBuildFolder(s, folders[i]!);
      }
      await gatherShards(folders, path.join(dir, 'gathered'));
    });
    const same = await sameFolders(path.join(dir, 'whole'), path.join(dir, 'gathered'));
    row('4 shards + gather', sharded, `${same ? 'byte-identical' : 'DIFFERS'}; ${sig(sharded.wall / oneMachine.wall)} x build + write`);
    return rows;
  } finally {
    if (!o.keep) await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const o = parse(process.argv.slice(2));
  process.stdout.write(`# bench/scale\n${machineLines().join('\n')}\n`);
  await moduleMeasurement(o);
  if (o.moduleOnly) return;
  process.stdout.write(`\n## Zoo: q/k/v/o_proj on ${o.layers} layers (${o.layers * 4} modules), d = ${o.dim}, r = ${o.rank}, bf16, K = ${o.components}\n`);
  // One table per N, printed as soon as it is measured (a large N takes a while).
  for (const n of o.adapters) process.stdout.write(`\n${table(['N', 'what', 'wall s', 's / module', 'x reading', 'peak RSS so far', 'note'], await zooMeasurement(o, n))}`);
}

await main();
