/**
 * buildSubspace benchmark.
 *
 *   npm run bench:build
 *   node dist/bench/build.js [--adapters 1000] [--modules 24] [--dim 1024] [--rank 16]
 *                            [--components 16] [--counts 6,24] [--no-hash] [--no-open-all] [--keep]
 *   node dist/bench/build.js --help      the flags
 *
 * 1. Writes N synthetic PEFT adapters (default 1000), each with M modules (default 24) of
 *    d x d (d = 1024) at rank r (16), factors stored as bf16 (1000 x 24 x 2 x 16 x 1024 x 2 B
 *    = 1.6 GB), into a temporary folder. Factors share structure: every row of A (column of
 *    B) is a random multiple of one of 12 random directions per module, plus noise, so the
 *    stacks have a real principal subspace. (The content does not change the work: the
 *    kernels' cost depends on the shapes only.)
 * 2. Builds a subspace (K = 16, canonical + equal, the defaults of `eigenlorax build`, so the
 *    source files are hashed too unless --no-hash) from those paths in a child process, once
 *    per module count in --counts (default 6 and 24: the `modules` option keeps the first
 *    m modules of the same files), with buildSubspace's default maxOpenFiles (adapters
 *    beyond it are opened again for each module they are read for); when N exceeds that
 *    default, once more at the largest count with every adapter kept open
 *    (maxOpenFiles = N; --no-open-all skips it), to show what the reopening costs. Each
 *    child reports:
 *     - wall time of buildSubspace (opening the N adapters included) and the report's
 *       timings: `nativeMs` (the native kernels: stacking, rsvd, projection), `readMs`
 *       (wall time with reads in flight), `hashMs`;
 *     - the share of time outside the native kernels, 1 - nativeMs / wall, and its parts:
 *       reading (which overlaps the kernels of another module) and the rest (opening,
 *       orchestration, waiting for the hashes: at least wall - native - read);
 *     - peak memory: process.memoryUsage().rss sampled every 20 ms during the build, and
 *       VmHWM from /proc/self/status (the child's high-water mark), minus the RSS before.
 * 3. Prints the table, and the targets: outside-native share at most 30% (24 modules), peak
 *    memory independent of the number of modules (peak at 24 modules within 25% of the peak
 *    at 6). Met or not met, as measured. Temporary files are removed unless --keep.
 * Never passes or fails on time.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Option } from 'commander';
import { buildSubspace, writeSafetensors, type SafetensorsFloatEntry } from '../lib/index.js';
import { DEFAULT_MAX_OPEN_FILES } from '../lib/subspace/inputs.js';
import { benchCommand, cpuSnapshot, integerArg, integerListArg, machineLines, otherLoadLine, peakRss, sig, table, type Cell } from './common.js';
import { mulberry32 } from '../lib/random.js';

const MB = 1e6;
const POOL = 12;

interface Options {
  adapters: number;
  modules: number;
  dim: number;
  rank: number;
  components: number;
  counts: number[];
  hash: boolean;
  /** --keep: the temporary folder stays (unset: removed). */
  keep?: boolean;
  /** Also build with every adapter kept open (maxOpenFiles = N) at the largest module count. */
  openAll: boolean;
}

function parseOptions(argv: string[]): Options {
  const program = benchCommand('build.js', 'buildSubspace on N synthetic PEFT adapters: wall time, time outside the native kernels, peak memory')
    .addOption(new Option('--adapters <n>', 'synthetic PEFT adapters to write').default(1000).argParser(integerArg()))
    .addOption(new Option('--modules <n>', 'modules per adapter').default(24).argParser(integerArg()))
    .addOption(new Option('--dim <n>', 'side d of each d x d module').default(1024).argParser(integerArg()))
    .addOption(new Option('--rank <n>', 'rank r of each adapter').default(16).argParser(integerArg()))
    .addOption(new Option('--components <n>', 'components K of the subspace').default(16).argParser(integerArg()))
    .addOption(new Option('--counts <list>', 'module counts to build with, one child each (the first m modules of the same files)').default([6, 24], '6,24').argParser(integerListArg()))
    .option('--no-hash', 'do not hash the source files (eigenlorax build does)')
    .option('--no-open-all', 'skip the extra build with every adapter kept open (maxOpenFiles = N)')
    .option('--keep', 'keep the temporary folder of adapters')
    .parse(argv, { from: 'user' });
  const o = program.opts<Options>();
  if (!o.counts.every((c) => c <= o.modules)) program.error(`error: option '--counts <list>': expected module counts from 1 to ${o.modules} (--modules)`);
  return o;
}

const moduleName = (m: number) => `model.layers.${m}.self_attn.q_proj`;

/** Per module: POOL random unit directions of length d (the shared structure). */
function directionPool(d: number, seed: number): Float32Array {
  const u = mulberry32(seed);
  const pool = new Float32Array(POOL * d);
  for (let p = 0; p < POOL; p++) {
    let norm = 0;
    for (let j = 0; j < d; j++) {
      const v = u() - 0.5;
      pool[p * d + j] = v;
      norm += v * v;
    }
    const s = 1 / Math.sqrt(norm);
    for (let j = 0; j < d; j++) pool[p * d + j]! *= s;
  }
  return pool;
}

/**
 * `rows` vectors of length d: each a random multiple of one pool direction plus uniform
 * noise (about 10% of its norm), laid out as rows (transpose false) or as columns.
 */
function factor(pool: Float32Array, d: number, rows: number, seed: number, columns: boolean): Float32Array {
  const out = new Float32Array(rows * d);
  let s = (seed >>> 0) || 1;
  const next = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
  const noise = (0.1 * Math.sqrt(3)) / Math.sqrt(d); // uniform [-a, a] has RMS a / sqrt(3): about 10% of a unit vector
  for (let i = 0; i < rows; i++) {
    const p = Math.floor(next() * POOL) * d;
    const c = next() * 2 - 1;
    for (let j = 0; j < d; j++) {
      const v = c * pool[p + j]! + noise * (2 * next() - 1);
      out[columns ? j * rows + i : i * d + j] = v;
    }
  }
  return out;
}

async function writeAdapters(dir: string, o: Options): Promise<{ paths: string[]; bytes: number; seconds: number }> {
  const started = performance.now();
  const pools = Array.from({ length: o.modules }, (_, m) => ({ A: directionPool(o.dim, 1000 + m), B: directionPool(o.dim, 2000 + m) }));
  const config = JSON.stringify({
    base_model_name_or_path: 'synthetic-1024',
    bias: 'none',
    fan_in_fan_out: false,
    lora_alpha: 2 * o.rank,
    peft_type: 'LORA',
    r: o.rank,
    target_modules: ['q_proj'],
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: false,
  });
  const paths: string[] = [];
  let bytes = 0;
  for (let i = 0; i < o.adapters; i++) {
    const folder = path.join(dir, `adapter-${String(i).padStart(4, '0')}`);
    await mkdir(folder);
    await writeFile(path.join(folder, 'adapter_config.json'), config);
    const entries: SafetensorsFloatEntry[] = [];
    for (let m = 0; m < o.modules; m++) {
      const pool = pools[m]!;
      const seed = (i * 7919 + m * 104729 + 1) >>> 0;
      entries.push(
        { name: `base_model.model.${moduleName(m)}.lora_A.weight`, shape: [o.rank, o.dim], dtype: 'BF16', data: () => factor(pool.A, o.dim, o.rank, seed, false) },
        { name: `base_model.model.${moduleName(m)}.lora_B.weight`, shape: [o.dim, o.rank], dtype: 'BF16', data: () => factor(pool.B, o.dim, o.rank, seed ^ 0x5bd1e995, true) },
      );
    }
    await writeSafetensors(path.join(folder, 'adapter_model.safetensors'), entries, { metadata: { format: 'pt' } });
    bytes += o.modules * 2 * o.rank * o.dim * 2;
    paths.push(folder);
    if (process.stdout.isTTY && (i + 1) % 100 === 0) process.stdout.write(`  wrote ${i + 1} / ${o.adapters} adapters\r`);
  }
  if (process.stdout.isTTY) process.stdout.write(' '.repeat(40) + '\r');
  return { paths, bytes, seconds: (performance.now() - started) / 1000 };
}

interface ChildReport {
  modules: number;
  maxOpenFiles: number;
  wallMs: number;
  totalMs: number;
  readMs: number;
  nativeMs: number;
  hashMs: number;
  rssBefore: number;
  rssPeakSampled: number;
  vmHwm: number;
  inSampleError: number;
  explainedA: number;
}

/** Child mode: build from the adapters listed in `listFile`, keeping the first `modules` modules. */
async function child(listFile: string, modules: number, components: number, hash: boolean, maxOpenFiles: number): Promise<void> {
  const paths = JSON.parse(readFileSync(listFile, 'utf8')) as string[];
  const names = Array.from({ length: modules }, (_, m) => moduleName(m));
  const rssBefore = process.memoryUsage().rss;
  let peak = rssBefore;
  const sampler = setInterval(() => {
    peak = Math.max(peak, process.memoryUsage().rss);
  }, 20);
  const started = performance.now();
  const subspace = await buildSubspace(paths, { components, modules: names, hashSources: hash, maxOpenFiles });
  const wallMs = performance.now() - started;
  clearInterval(sampler);
  peak = Math.max(peak, process.memoryUsage().rss);
  const r = subspace.report!;
  const explained = [...subspace.modules.values()].map((m) => m.explainedA);
  const report: ChildReport = {
    modules: subspace.modules.size,
    maxOpenFiles,
    wallMs,
    totalMs: r.timings.totalMs,
    readMs: r.timings.readMs,
    nativeMs: r.timings.nativeMs,
    hashMs: r.timings.hashMs,
    rssBefore,
    rssPeakSampled: peak,
    vmHwm: peakRss(),
    inSampleError: r.inSampleError,
    explainedA: explained.reduce((a, b) => a + b, 0) / explained.length,
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

function runChild(listFile: string, modules: number, o: Options, maxOpenFiles: number): ChildReport {
  const self = fileURLToPath(import.meta.url);
  const args = ['--child', listFile, String(modules), String(o.components), o.hash ? 'hash' : 'no-hash', String(maxOpenFiles)];
  const result = spawnSync(process.execPath, [self, ...args], { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (result.status !== 0) throw new Error(`child ${args.join(' ')} failed (exit ${result.status}): ${result.stderr}`);
  return JSON.parse(result.stdout.trim().split('\n').pop() ?? '') as ChildReport;
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
const mb = (x: number) => sig(x / MB, 3);

async function main(): Promise<void> {
  // Child mode (runChild): positional arguments after --child, read here before the flags are parsed.
  const at = process.argv.indexOf('--child');
  if (at >= 0) {
    const [listFile, modules, components, hash, maxOpenFiles] = process.argv.slice(at + 1);
    await child(listFile!, Number(modules), Number(components), hash === 'hash', Number(maxOpenFiles));
    return;
  }
  const o = parseOptions(process.argv.slice(2));
  console.log('bench/build: buildSubspace on synthetic PEFT adapters\n');
  for (const line of machineLines()) console.log(line);
  const gb = (o.adapters * o.modules * 2 * o.rank * o.dim * 2) / 1e9;
  console.log(
    `\nadapters    ${o.adapters} PEFT folders, ${o.modules} modules of ${o.dim} x ${o.dim}, rank ${o.rank}, bf16 factors (${gb.toFixed(2)} GB); ` +
      `K = ${o.components}, canonical + equal, sources ${o.hash ? 'hashed (sha256, as eigenlorax build does)' : 'not hashed'}`,
  );
  const dir = await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-bench-build-'));
  const before = cpuSnapshot();
  try {
    const written = await writeAdapters(dir, o);
    console.log(`written     ${(written.bytes / 1e9).toFixed(2)} GB of factors in ${written.seconds.toFixed(1)} s (${dir})`);
    const listFile = path.join(dir, 'adapters.json');
    await writeFile(listFile, JSON.stringify(written.paths));
    const reports: ChildReport[] = [];
    const runs = o.counts.map((count) => ({ count, maxOpenFiles: DEFAULT_MAX_OPEN_FILES }));
    if (o.openAll && o.adapters > DEFAULT_MAX_OPEN_FILES) runs.push({ count: Math.max(...o.counts), maxOpenFiles: o.adapters });
    for (const { count, maxOpenFiles } of runs) {
      if (process.stdout.isTTY) process.stdout.write(`  building with ${count} modules ...\r`);
      reports.push(runChild(listFile, count, o, maxOpenFiles));
    }
    if (process.stdout.isTTY) process.stdout.write(' '.repeat(40) + '\r');
    const rows: Cell[][] = reports.map((r) => {
      const outside = 1 - r.nativeMs / r.wallMs;
      return [
        r.modules,
        r.maxOpenFiles,
        sig(r.wallMs / 1000, 3),
        sig(r.nativeMs / 1000, 3),
        pct(outside),
        pct(r.readMs / r.wallMs),
        pct(Math.max(0, r.wallMs - r.nativeMs - r.readMs) / r.wallMs),
        sig(r.hashMs / 1000, 3),
        mb(r.rssPeakSampled - r.rssBefore),
        mb(r.vmHwm),
        mb(r.rssBefore),
        sig(r.inSampleError, 3),
      ];
    });
    console.log('');
    console.log(
      table(
        ['modules', 'files kept open', 'wall s', 'native s', 'outside native', 'reading', 'other (>=)', 'hash s', 'peak RSS - before (MB)', 'VmHWM (MB)', 'RSS before (MB)', 'in-sample err'],
        rows,
      ),
    );
    console.log(
      '\nwall: buildSubspace from the paths (opening the adapters included); native: the kernels (stacking, rsvd, projection), which run one at a time;\n' +
        'reading: wall time with factor reads in flight (they overlap the kernels of another module); other: time with neither, at least wall - native - reading\n' +
        '(opening files, orchestration, waiting for the hashes); peak RSS sampled every 20 ms during the build; VmHWM: the child process high-water mark.',
    );
    const defaults = reports.filter((r) => r.maxOpenFiles === DEFAULT_MAX_OPEN_FILES);
    const main = defaults.find((r) => r.modules === Math.max(...o.counts))!;
    const least = defaults.find((r) => r.modules === Math.min(...o.counts))!;
    const share = 1 - main.nativeMs / main.wallMs;
    console.log(`\ntarget      time outside the native kernels at most 30% (${main.modules} modules): ${pct(share)}: ${share <= 0.3 ? 'met' : 'NOT met'}`);
    const openAll = reports.find((r) => r.maxOpenFiles !== DEFAULT_MAX_OPEN_FILES);
    if (openAll !== undefined) {
      const s = 1 - openAll.nativeMs / openAll.wallMs;
      console.log(
        `            with every adapter kept open (maxOpenFiles ${openAll.maxOpenFiles}, instead of the default ${DEFAULT_MAX_OPEN_FILES}): ${pct(s)}: ${s <= 0.3 ? 'met' : 'NOT met'}`,
      );
    }
    if (least !== main) {
      const growth = (main.rssPeakSampled - main.rssBefore) / (least.rssPeakSampled - least.rssBefore);
      const hwmGrowth = main.vmHwm / least.vmHwm;
      console.log(
        `target      peak memory independent of the number of modules: peak RSS above start ${mb(least.rssPeakSampled - least.rssBefore)} MB at ${least.modules} modules, ` +
          `${mb(main.rssPeakSampled - main.rssBefore)} MB at ${main.modules} (x${growth.toFixed(2)}); VmHWM x${hwmGrowth.toFixed(2)}: ` +
          `${growth <= 1.25 && hwmGrowth <= 1.25 ? 'met' : 'NOT met'} (within 25%)`,
      );
    }
  } finally {
    if (o.keep) console.log(`kept        ${dir}`);
    else await rm(dir, { recursive: true, force: true });
    console.log(otherLoadLine(before, cpuSnapshot()));
    console.log(`load        ${os.loadavg().map((v) => v.toFixed(2)).join(' ')} (1/5/15 min) at the end`);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
