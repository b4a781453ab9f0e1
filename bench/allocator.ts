/**
 * The process allocator tuning the addon applies at load (native/core/large_buffers.h,
 * tuneProcessAllocator; README "Core API"): training the demo's 784-256-256-10 MLP with
 * LoRA r = 8 for one epoch, each run in a fresh process, tuned against
 * EIGENLORAX_MALLOC_TUNING=0 (glibc's defaults), interleaved, the order alternating from
 * run to run. Prints samples/s and the minor page faults per update of each run, the
 * medians and their ratio. A fresh process matters: glibc's mmap threshold grows by itself
 * once a large block is freed, so a process that happened to free one (as bench/train's
 * hand-off probe does) runs near the tuned rate either way.
 *
 *   npm run bench:allocator
 *   node dist/bench/allocator.js [--runs 5] [--batches 100] [--threads N]
 *   node dist/bench/allocator.js --help
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Option } from 'commander';
import { matrix, setThreads } from '../lib/index.js';
import { Linear, loraModel, ReLU, Sequential, trainModel } from '../lib/train/index.js';
import { mulberry32 } from '../lib/random.js';
import { benchCommand, integerArg, machineLines, median, sig, table } from './common.js';

interface Options {
  runs: number;
  batches: number;
  threads: number;
}

interface ChildResult {
  samplesPerSecond: number;
  faultsPerUpdate: number;
}

const WIDTHS = [784, 256, 256, 10];
const BATCH = 128;

/** One epoch in this process (the child): the model and data seeded, as bench/train's. */
async function child(batches: number, threads: number): Promise<void> {
  if (threads > 0) setThreads(threads);
  const layers = [];
  for (let i = 0; i + 1 < WIDTHS.length; i++) {
    if (i > 0) layers.push(new ReLU());
    layers.push(Linear.create(`fc${i + 1}`, WIDTHS[i] as number, WIDTHS[i + 1] as number, { seed: i + 1, trainable: false }));
  }
  const model = loraModel(new Sequential(layers), { rank: 8, seed: 1 });
  const rows = BATCH * batches;
  const u = mulberry32(7);
  const inputs = matrix(rows, WIDTHS[0] as number);
  for (let i = 0; i < inputs.data.length; i++) inputs.data[i] = u();
  const targets = new Uint8Array(rows);
  for (let i = 0; i < rows; i++) targets[i] = Math.floor(u() * 10);
  const before = process.resourceUsage().minorPageFault;
  const result = await trainModel(model, { train: { inputs, targets, classes: 10 } }, { optimizer: { type: 'adamw', lr: 1e-4 }, batchSize: BATCH, epochs: 1, progress: false });
  const faults = process.resourceUsage().minorPageFault - before;
  const out: ChildResult = { samplesPerSecond: result.samplesPerSecond, faultsPerUpdate: faults / result.stepsThisRun };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

function runChild(o: Options, tuned: boolean): ChildResult {
  const env = { ...process.env };
  if (tuned) delete env.EIGENLORAX_MALLOC_TUNING;
  else env.EIGENLORAX_MALLOC_TUNING = '0';
  const text = execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--child', String(o.batches), String(o.threads)], { env, encoding: 'utf8' });
  return JSON.parse(text.trim().split('\n').pop() as string) as ChildResult;
}

function parse(argv: string[]): Options {
  return benchCommand('allocator.js', "LoRA training of the demo MLP in fresh processes: the addon's allocator tuning against glibc's defaults")
    .addOption(new Option('--runs <n>', 'fresh processes per side').default(5).argParser(integerArg()))
    .addOption(new Option('--batches <n>', 'updates of 128 rows in the epoch').default(100).argParser(integerArg()))
    .addOption(new Option('--threads <n>', 'kernel threads (setThreads); 0: the library default, all cores').default(0).argParser(integerArg(0)))
    .parse(argv, { from: 'user' })
    .opts<Options>();
}

async function main(): Promise<void> {
  // The child mode takes positional arguments from the parent, before commander runs.
  const at = process.argv.indexOf('--child');
  if (at >= 0) {
    await child(Number(process.argv[at + 1]), Number(process.argv[at + 2]));
    return;
  }
  const o = parse(process.argv.slice(2));
  process.stdout.write(`# bench/allocator\n${machineLines().join('\n')}\n`);
  process.stdout.write(`settings    LoRA r=8 on 784-256-256-10, batch ${BATCH}, ${o.batches} updates per process, ${o.runs} processes per side\n\n`);
  const tuned: ChildResult[] = [];
  const plain: ChildResult[] = [];
  const rows = [];
  for (let run = 0; run < o.runs; run++) {
    // Alternate which side goes first: a slow phase of a shared machine hits both.
    const first = run % 2 === 0;
    const a = runChild(o, first);
    const b = runChild(o, !first);
    const [t, p] = first ? [a, b] : [b, a];
    tuned.push(t);
    plain.push(p);
    rows.push([String(run + 1), sig(t.samplesPerSecond), sig(t.faultsPerUpdate), sig(p.samplesPerSecond), sig(p.faultsPerUpdate), sig(t.samplesPerSecond / p.samplesPerSecond)]);
  }
  const mt = median(tuned.map((r) => r.samplesPerSecond));
  const mp = median(plain.map((r) => r.samplesPerSecond));
  rows.push(['median', sig(mt), sig(median(tuned.map((r) => r.faultsPerUpdate))), sig(mp), sig(median(plain.map((r) => r.faultsPerUpdate))), sig(mt / mp)]);
  process.stdout.write(table(['run', 'tuned samples/s', 'faults/update', 'glibc default samples/s', 'faults/update', 'tuned / default'], rows));
}

await main();
