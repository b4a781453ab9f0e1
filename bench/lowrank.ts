/**
 * EigenLoRA layer benchmark: builds and runs the C++ benchmark of the core
 * (bench/native/lowrank_bench.cpp: base product, our fused layer, the reference
 * formulation), then times the same layer through the Node addon to show what the
 * asynchronous call adds.
 *
 *   npm run bench:lowrank
 *   node dist/bench/lowrank.js [--rounds-scale X] [--skip-build]
 *   node dist/bench/lowrank.js --help      the flags
 *
 * Prints tables; never passes or fails on time.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Option } from 'commander';
import { eigenLoraForward, matrix, type EigenLoraLayer, type Matrix } from '../lib/index.js';
import { benchCommand, cpuSnapshot, fillGaussian, machineLines, median, ms, now, numberArg, otherLoadLine, table, type Cell } from './common.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const TARGET = 'eigenlorax_bench_lowrank';
const D_IN = 4096;
const D_OUT = 4096;
const K = 64;
const RANK = 16;
/** Tokens and timed calls (back to back, like the C++ benchmark's bursts). */
const CASES: Array<[number, number]> = [
  [1, 300],
  [16, 100],
  [256, 15],
];

interface NativeResult {
  n: number;
  order: string;
  base: number;
  ours: number;
  oursAdapter: number;
  ref: number;
  refAdapter: number;
}

function parseOptions(argv: string[]) {
  const flags = benchCommand('lowrank.js', 'the EigenLoRA layer: the C++ benchmark of the core (built first), then the same layer through the Node addon')
    .addOption(new Option('--rounds-scale <x>', 'multiplies the timed calls of every case (passed to the C++ benchmark too)').default(1).argParser(numberArg({ above: 0 })))
    .option('--skip-build', `run build/${TARGET} as it is, without building it first`)
    .parse(argv, { from: 'user' })
    .opts<{ roundsScale: number; skipBuild?: boolean }>();
  return { roundsScale: flags.roundsScale, build: flags.skipBuild !== true };
}

/**
 * The headers of the running Node, as .ci/build-gyp.sh finds them: npm's nodedir when set
 * (npm run exports it), else this node binary's prefix when it holds include/node/node.h.
 * Without one, cmake-js run outside npm downloads headers, which fails offline.
 */
function nodeHeadersDir(env: NodeJS.ProcessEnv = process.env, execPath = process.execPath): string | undefined {
  const configured = env.npm_config_nodedir;
  if (configured) return configured;
  const prefix = path.resolve(path.dirname(execPath), '..');
  return existsSync(path.join(prefix, 'include', 'node', 'node.h')) ? prefix : undefined;
}

/** cmake-js configures build/ when needed (as `npm install` does), then builds only the benchmark target. */
function buildNative(): string {
  const cmakeJs = path.join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js');
  const args = [cmakeJs, 'build', '--target', TARGET];
  // cmake-js reads the headers' folder only from npm's environment (no flag for it).
  const nodedir = nodeHeadersDir();
  const env = nodedir ? { ...process.env, npm_config_nodedir: nodedir } : process.env;
  process.stderr.write(
    `  building: ${nodedir ? `npm_config_nodedir=${nodedir} ` : ''}node ${path.relative(root, cmakeJs)} build --target ${TARGET}\n`,
  );
  if (!nodedir) process.stderr.write('  no Node headers beside this node and no npm nodedir: cmake-js may try to download them\n');
  const built = spawnSync(process.execPath, args, { cwd: root, env, stdio: ['ignore', process.stderr, process.stderr] });
  if (built.status !== 0) throw new Error(`building ${TARGET} failed (exit code ${built.status})`);
  const binary = path.join(root, 'build', TARGET);
  if (!existsSync(binary)) throw new Error(`${binary} not found after the build`);
  return binary;
}

function layerOf(dIn: number, dOut: number, k: number, rank: number, seed: number): EigenLoraLayer & { weight: Matrix } {
  const make = (rows: number, cols: number, s: number, scale: number) => {
    const m = matrix(rows, cols);
    fillGaussian(m.data, s, scale);
    return m;
  };
  return {
    componentsA: make(dIn, k, seed + 1, 1 / Math.sqrt(dIn)),
    alpha: make(k, rank, seed + 2, 1),
    beta: make(k, rank, seed + 3, 1),
    componentsB: make(dOut, k, seed + 4, 1 / Math.sqrt(dOut)),
    scale: 1,
    weight: make(dOut, dIn, seed + 5, 1 / Math.sqrt(dIn)),
  };
}

/** Median seconds of `rounds` awaited calls after one warm-up call. */
async function timeCalls(rounds: number, call: () => Promise<unknown>): Promise<number> {
  await call();
  const times: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = now();
    await call();
    times.push((now() - t0) / 1e3);
  }
  return median(times);
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const binary = options.build ? buildNative() : path.join(root, 'build', TARGET);
  const jsonPath = path.join(os.tmpdir(), `eigenlorax-bench-lowrank-${process.pid}.json`);

  const before = cpuSnapshot();
  const run = spawnSync(binary, ['--json', jsonPath, '--rounds-scale', String(options.roundsScale)], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (run.status !== 0) throw new Error(`${binary} failed (exit code ${run.status})`);
  const nativeResults = (JSON.parse(readFileSync(jsonPath, 'utf8')) as { results: NativeResult[] }).results;
  rmSync(jsonPath, { force: true });

  console.log('\n# The same layer through the Node addon (eigenLoraForward with weight, order auto)');
  console.log(machineLines().join('\n'));
  console.log('timing      median of awaited calls after one warm-up, output buffer reused (options.out)\n');

  const layer = layerOf(D_IN, D_OUT, K, RANK, 100);
  const rows: Cell[][] = [];
  for (const [n, calls] of CASES) {
    const x = matrix(n, D_IN);
    fillGaussian(x.data, 200 + n);
    const out = matrix(n, D_OUT);
    const r = Math.max(3, Math.round(calls * options.roundsScale));
    const node = await timeCalls(r, () => eigenLoraForward(x, layer, { out }));
    const native = nativeResults.find((result) => result.n === n);
    const core = native?.ours ?? Number.NaN;
    rows.push([n, r, ms(core), ms(node), ms(node - core), `${((100 * (node - core)) / core).toFixed(1)}%`]);
  }
  console.log(table(['n', 'calls', 'C++ core', 'Node addon', 'difference', 'difference %'], rows));

  // A layer so small that the call is all overhead: argument checks, the worker queue,
  // the promise. Shows the fixed cost of one asynchronous call.
  const tiny = layerOf(16, 16, 4, 2, 300);
  const tinyX = matrix(1, 16);
  fillGaussian(tinyX.data, 301);
  const tinyOut = matrix(1, 16);
  const tinyTime = await timeCalls(2000, () => eigenLoraForward(tinyX, tiny, { out: tinyOut }));
  console.log(`\nfixed cost of one async call (16 x 16 layer, K = 4, r = 2, n = 1, 2000 calls): ${(tinyTime * 1e6).toFixed(1)} us median`);
  console.log(`\n${otherLoadLine(before, cpuSnapshot())}`);
  console.log('C++ core = "ours" of the whole-layer table above (another process, seconds earlier), so a difference of a few');
  console.log('percent is run-to-run noise; the fixed-cost line measures the async call itself (posted to the');
  console.log("addon's one compute thread, settled back on the JS thread).");
}

await main();
