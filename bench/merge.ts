/**
 * Merge benchmark: mergeIntoBase on a 1 GiB bf16 checkpoint against copying the file.
 *
 *   npm run bench:merge
 *   node dist/bench/merge.js [--gib X] [--repeats N] [--rank R]
 *   node dist/bench/merge.js --help      the flags
 *
 * 1. Writes a bf16 safetensors file of about 1 GiB (4096 x 4096 tensors, 32 MiB each) and a
 *    PEFT adapter (f32, rank 16) on half of its tensors, to a temporary folder.
 * 2. In the same run, rounds interleaving the contenders, medians reported (warm page cache:
 *    the base was just written and is read again every round):
 *    (a) fs.copyFile (copy_file_range / clone where the file system can), no fsync;
 *    (b) fs.copyFile, then fsync the copy;
 *    (c) a plain loop: 8 MiB positioned reads and writes through one buffer, then fsync;
 *    (d) mergeIntoBase: open and check everything, copy, rewrite the changed tensors
 *        (read bf16 -> f32, W += s B A, f32 -> bf16, write), fsync, rename; the adapter is
 *        read from its folder every time.
 *    (b) and (c) are the like-for-like baselines for (d), which fsyncs too.
 * 3. Where the time of one changed tensor goes (4096 x 4096, rank 16): read + convert,
 *    the update (native in-place `addLowRank`), encode, write.
 * 4. Peak memory of a merge, in a child process, against a child that only loads the
 *    library.
 * Temporary files are removed at the end. Prints tables; never passes or fails on time.
 */
import { spawnSync } from 'node:child_process';
import { constants as fsConstants } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, rm, stat, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Option } from 'commander';
import { mergeIntoBase, openSafetensors, writeSafetensors, type SafetensorsEntry } from '../lib/index.js';
import { native } from '../lib/native.js';
import { addLowRankUpdates, type UpdateTerm } from '../lib/merge/update.js';
import { addUniformNoise, benchCommand, cpuSnapshot, fillGaussian, machineLines, median, now, numberArg, otherLoadLine, peakRss, ratio, sig, table, type Cell } from './common.js';

const SIDE = 4096;
const TENSOR_BYTES = SIDE * SIDE * 2;
const MB = 1e6;
const GB = 1e9;
const COPY_CHUNK = 8 << 20;

function parseOptions(argv: string[]) {
  const options = benchCommand('merge.js', "mergeIntoBase on a bf16 checkpoint against copying the file; where one changed tensor's time goes; peak memory")
    .addOption(new Option('--gib <x>', 'size of the bf16 checkpoint in GiB (4096 x 4096 tensors of 32 MiB, at least 2 of them)').default(1).argParser(numberArg({ above: 0 })))
    .addOption(new Option('--repeats <n>', 'timed rounds of every method (rounded, at least 1); medians reported').default(5).argParser(numberArg({ above: 0 })))
    .addOption(new Option('--rank <r>', 'rank of the adapter on half of the tensors (rounded, at least 1)').default(16).argParser(numberArg({ above: 0 })))
    .parse(argv, { from: 'user' })
    .opts<{ gib: number; repeats: number; rank: number }>();
  options.repeats = Math.max(1, Math.round(options.repeats));
  options.rank = Math.max(1, Math.round(options.rank));
  return options;
}

/** Child mode: merge (or only load the library) and print a JSON line of memory facts. */
async function mergeChild(args: string[]): Promise<void> {
  let seconds = 0;
  if (args.length === 3) {
    const [base, adapter, output] = args as [string, string, string];
    const start = now();
    await mergeIntoBase({ base, adapters: [adapter], output });
    seconds = (now() - start) / 1e3;
  }
  process.stdout.write(`${JSON.stringify({ maxRss: peakRss(), seconds })}\n`);
}

function runChild(args: string[]): { maxRss: number; seconds: number } {
  const self = fileURLToPath(import.meta.url);
  const child = spawnSync(process.execPath, [self, '--merge-child', ...args], { encoding: 'utf8' });
  if (child.status !== 0) throw new Error(`child failed (exit ${child.status}): ${child.stderr}`);
  return JSON.parse(child.stdout.trim().split('\n').pop() ?? '') as { maxRss: number; seconds: number };
}

async function syncFile(file: string): Promise<void> {
  const handle = await open(file, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** A plain copy: positioned reads and writes of COPY_CHUNK bytes through one buffer, then fsync. */
async function readWriteCopy(from: string, to: string, buffer: Buffer): Promise<void> {
  const src = await open(from, 'r');
  const dst = await open(to, 'wx');
  try {
    let position = 0;
    for (;;) {
      const { bytesRead } = await src.read(buffer, 0, buffer.byteLength, position);
      if (bytesRead === 0) break;
      let written = 0;
      while (written < bytesRead) {
        const { bytesWritten } = await dst.write(buffer, written, bytesRead - written, position + written);
        written += bytesWritten;
      }
      position += bytesRead;
    }
    await dst.sync();
  } finally {
    await Promise.all([src.close(), dst.close()]);
  }
}

async function main(): Promise<void> {
  // Child mode (runChild, step 4): positional arguments after --merge-child, read here before the flags are parsed.
  const childAt = process.argv.indexOf('--merge-child');
  if (childAt >= 0) {
    await mergeChild(process.argv.slice(childAt + 1));
    return;
  }
  const options = parseOptions(process.argv.slice(2));
  console.log('merge benchmark');
  for (const line of machineLines()) console.log(`  ${line}`);
  const cpuBefore = cpuSnapshot();

  const dir = await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-bench-merge-'));
  const cleanup = () => rm(dir, { recursive: true, force: true });
  process.once('SIGINT', () => {
    void cleanup().finally(() => process.exit(130));
  });
  try {
    // ---- 1. base and adapter --------------------------------------------------------------
    const count = Math.max(2, Math.round((options.gib * 2 ** 30) / TENSOR_BYTES));
    const base = path.join(dir, 'model.safetensors');
    const values = new Float32Array(SIDE * SIDE);
    const names = Array.from({ length: count }, (_, i) => `model.layers.${String(i).padStart(3, '0')}.proj`);
    const entries: SafetensorsEntry[] = names.map((name, i) => ({
      name: `${name}.weight`,
      shape: [SIDE, SIDE],
      data: () => {
        values.fill(0);
        addUniformNoise(values, i + 1, 0.05);
        return values;
      },
    }));
    let start = now();
    await writeSafetensors(base, entries, { dtype: 'BF16', metadata: { format: 'pt' } });
    const fileBytes = (await stat(base)).size;
    console.log(
      `\nbase        ${count} tensors of bf16 ${SIDE} x ${SIDE} (${sig(TENSOR_BYTES / 2 ** 20)} MiB each), ${sig(fileBytes / GB)} GB, ` +
        `written in ${sig((now() - start) / 1e3)} s, in ${dir}`,
    );

    const r = options.rank;
    const adapted = names.filter((_, i) => i % 2 === 0);
    const adapterDir = path.join(dir, 'adapter');
    await mkdir(adapterDir);
    const factor = (rows: number, cols: number, seed: number) => {
      const m = new Float32Array(rows * cols);
      fillGaussian(m, seed, 0.02);
      return m;
    };
    await writeSafetensors(
      path.join(adapterDir, 'adapter_model.safetensors'),
      adapted.flatMap((name, i) => [
        { name: `base_model.model.${name}.lora_A.weight`, shape: [r, SIDE], data: factor(r, SIDE, 1000 + i) },
        { name: `base_model.model.${name}.lora_B.weight`, shape: [SIDE, r], data: factor(SIDE, r, 2000 + i) },
      ]),
    );
    await writeFile(
      path.join(adapterDir, 'adapter_config.json'),
      JSON.stringify({ peft_type: 'LORA', r, lora_alpha: 2 * r, target_modules: ['proj'], fan_in_fan_out: false, use_rslora: false, base_model_name_or_path: 'synthetic' }),
    );
    console.log(`adapter     PEFT, ${adapted.length} of ${count} tensors, rank ${r}, f32 factors (${sig((adapted.length * 2 * r * SIDE * 4) / MB)} MB)`);

    // ---- 2. merge vs copy -----------------------------------------------------------------
    const buffer = Buffer.allocUnsafeSlow(COPY_CHUNK);
    let serial = 0;
    const fresh = () => path.join(dir, `out-${serial++}.safetensors`);
    const methods: Array<[string, (to: string) => Promise<void>]> = [
      ['(a) fs.copyFile, no fsync', (to) => copyFile(base, to, fsConstants.COPYFILE_FICLONE)],
      ['(b) fs.copyFile + fsync', async (to) => {
        await copyFile(base, to, fsConstants.COPYFILE_FICLONE);
        await syncFile(to);
      }],
      ['(c) read + write loop (8 MiB) + fsync', (to) => readWriteCopy(base, to, buffer)],
      [`(d) mergeIntoBase (${adapted.length} tensors changed, r ${r})`, async (to) => {
        await mergeIntoBase({ base, adapters: [adapterDir], output: to });
      }],
    ];
    const times = methods.map(() => [] as number[]);
    for (const [, run] of methods) {
      const to = fresh();
      await run(to); // warm-up
      await unlink(to);
    }
    for (let round = 0; round < options.repeats; round++) {
      for (let m = 0; m < methods.length; m++) {
        const to = fresh();
        start = now();
        await (methods[m] as [string, (to: string) => Promise<void>])[1](to);
        (times[m] as number[]).push((now() - start) / 1e3);
        await unlink(to);
      }
    }
    const medians = times.map(median);
    const at = (m: number) => medians[m] as number;
    const rows: Cell[][] = methods.map(([label], m) => [
      label,
      sig(at(m)),
      sig(Math.min(...(times[m] as number[]))),
      sig(fileBytes / GB / at(m)),
      ratio(at(0) / at(m)),
      ratio(at(1) / at(m)),
    ]);
    console.log(`\n${sig(fileBytes / GB)} GB written per run, warm page cache for the source, median of ${options.repeats} rounds`);
    console.log(table(['method', 'median s', 'best s', 'GB/s', 'vs (a)', 'vs (b)'], rows));
    console.log(
      `merge throughput ${sig(fileBytes / GB / at(3))} GB/s of checkpoint: ${ratio(at(3) / at(1))} the time of copyFile + fsync, ` +
        `${ratio(at(3) / at(2))} the time of the read + write loop + fsync, ${ratio(at(3) / at(0))} the time of a bare copyFile`,
    );

    // ---- 3. one changed tensor ------------------------------------------------------------
    const reader = await openSafetensors(base);
    const key = `${adapted[0] as string}.weight`;
    const w = new Float32Array(SIDE * SIDE);
    const terms: UpdateTerm[] = [
      {
        A: { rows: r, cols: SIDE, data: factor(r, SIDE, 1) },
        B: { rows: SIDE, cols: r, data: factor(SIDE, r, 2) },
        coefficient: 2,
        transposed: false,
      },
    ];
    const encoded = new Uint16Array(SIDE * SIDE);
    const target = path.join(dir, 'one.bin');
    const handle = await open(target, 'w');
    const steps: Array<[string, () => Promise<unknown>]> = [
      ['read 32 MiB bf16 + convert to f32 (readFloat32 into a reused array)', () => reader.readFloat32(key, { out: w })],
      ['update W += s B A: native addLowRank in place', () => addLowRankUpdates(w, SIDE, SIDE, terms)],
      ['encode f32 -> bf16 into a reused array (native, round to nearest even)', () => native.convert({ src: w, from: 'f32', dst: encoded, to: 'bf16' })],
      ['write 32 MiB at its offset (page cache)', () => handle.write(new Uint8Array(w.buffer, 0, TENSOR_BYTES), 0, TENSOR_BYTES, 0)],
    ];
    const stepTimes = steps.map(() => [] as number[]);
    for (let round = 0; round < 2 + 3 * options.repeats; round++) {
      for (let s = 0; s < steps.length; s++) {
        start = now();
        await (steps[s] as [string, () => Promise<unknown>])[1]();
        if (round >= 2) (stepTimes[s] as number[]).push((now() - start) / 1e3);
      }
    }
    await handle.close();
    await reader.close();
    const flops = 2 * SIDE * SIDE * r;
    console.log(`\none changed tensor (${SIDE} x ${SIDE} bf16, rank ${r}; ${sig(flops / 1e9)} GFLOP in the product), median of ${stepTimes[0]?.length} runs`);
    console.log(
      table(
        ['step', 'median ms', 'GB/s of f32'],
        steps.map(([label], s) => [label, sig(median(stepTimes[s] as number[]) * 1e3), sig((SIDE * SIDE * 4) / GB / median(stepTimes[s] as number[]))]),
      ),
    );

    // ---- 4. peak memory -------------------------------------------------------------------
    const childOut = path.join(dir, 'child');
    const baseline = runChild([]);
    const child = runChild([base, adapterDir, childOut]);
    await rm(childOut, { recursive: true, force: true });
    console.log(`\npeak memory of a merge in a child process (VmHWM)`);
    console.log(
      table(
        ['child', 'seconds', 'peak rss MB'],
        [
          ['loads eigenlorax only (baseline)', '-', sig(baseline.maxRss / MB)],
          ['mergeIntoBase of the 1 GB checkpoint', sig(child.seconds), sig(child.maxRss / MB)],
        ],
      ),
    );
    console.log(
      `growth over the baseline ${sig((child.maxRss - baseline.maxRss) / MB)} MB; one tensor is ${sig((SIDE * SIDE * 4) / MB)} MB as f32 ` +
        `+ ${sig(TENSOR_BYTES / MB)} MB as bf16, the adapter ${sig((adapted.length * 2 * r * SIDE * 4) / MB)} MB`,
    );
  } finally {
    await cleanup();
    console.log(`\n${otherLoadLine(cpuBefore, cpuSnapshot())}`);
    console.log(`load average ${os.loadavg().map((v) => v.toFixed(2)).join(' ')} (1/5/15 min) at the end`);
  }
}

await main();
