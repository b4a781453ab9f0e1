/**
 * safetensors I/O benchmark.
 *
 *   npm run bench:io
 *   node dist/bench/io.js [--gib X] [--repeats N] [--sparse-gib N]
 *   node dist/bench/io.js --help      the flags
 *
 * 1. Writes a bf16 safetensors file of about 1 GiB (4096 x 4096 tensors, 32 MiB each) to a
 *    temporary folder with writeSafetensors (lazy producers, f32 -> bf16 natively).
 * 2. In the same run, over the same bytes (warm page cache: the file was just written):
 *    (a) plain positioned reads of each tensor's bytes into one reused buffer (the
 *        baseline: what reading the file costs with no parsing or conversion);
 *    (b) openSafetensors + readFloat32 tensor by tensor (bf16 -> f32, a new f32 array each);
 *    (b') the same into one reused `out` array (as a loop over tensors would do);
 *    (c) openSafetensors + readRaw tensor by tensor (no conversion), for reference;
 *    (d) no I/O at all: allocating and first-touching a new f32 array per tensor, which is
 *        what (b) pays on top of (b') (page faults on fresh memory).
 *    Rounds interleave the methods; medians are reported. Target: (b) at least half the
 *    throughput of (a), judged for (b) and (b') on medians; the ratio of best times is
 *    printed too, since on a shared machine (see the load average above the tables) the
 *    medians move from run to run.
 * 3. Opens a multi-gigabyte file (a sparse file: a real header for 8 GiB of bf16 tensors,
 *    data never written) in a child process, lists its tensors, and reports the child's
 *    peak RSS against a child that only loads the library. Target: peak under 200 MB.
 * Temporary files are removed at the end. Prints tables; never passes or fails on time.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Option } from 'commander';
import { openSafetensors, writeSafetensors, type SafetensorsFloatEntry } from '../lib/index.js';
import { addUniformNoise, benchCommand, machineLines, numberArg, peakRss, median, now, ratio, sig, table, type Cell } from './common.js';

const SIDE = 4096;
const TENSOR_BYTES = SIDE * SIDE * 2;
const MB = 1e6;
const GB = 1e9;
const PEAK_TARGET_BYTES = 200 * MB;

function parseOptions(argv: string[]) {
  const options = benchCommand('io.js', 'safetensors I/O: readFloat32 against plain reads of the same bytes; peak memory of a header-only open')
    .addOption(new Option('--gib <x>', 'size of the bf16 file to read, in GiB (4096 x 4096 tensors of 32 MiB)').default(1).argParser(numberArg({ above: 0 })))
    .addOption(new Option('--repeats <n>', 'timed rounds of every method (rounded, at least 1); medians reported').default(9).argParser(numberArg({ above: 0 })))
    .addOption(new Option('--sparse-gib <x>', 'size in GiB of the sparse file whose header a child process opens').default(8).argParser(numberArg({ above: 0 })))
    .parse(argv, { from: 'user' })
    .opts<{ gib: number; repeats: number; sparseGib: number }>();
  options.repeats = Math.max(1, Math.round(options.repeats));
  return options;
}

/** Child mode: open the file header-only, list the tensors, print a JSON line of memory facts. */
async function inspectChild(file: string | null): Promise<void> {
  const rssBefore = process.memoryUsage().rss;
  let tensors = 0;
  let bytes = 0;
  let openMs = 0;
  if (file !== null) {
    const start = now();
    const reader = await openSafetensors(file);
    for (const info of reader.tensors.values()) {
      tensors++;
      bytes += info.byteLength;
    }
    await reader.close();
    openMs = now() - start;
  }
  const rssAfter = process.memoryUsage().rss;
  const maxRss = peakRss();
  process.stdout.write(`${JSON.stringify({ rssBefore, rssAfter, maxRss, tensors, bytes, openMs })}\n`);
}

interface ChildReport {
  rssBefore: number;
  rssAfter: number;
  maxRss: number;
  tensors: number;
  bytes: number;
  openMs: number;
}

function runChild(args: string[]): ChildReport {
  const self = fileURLToPath(import.meta.url);
  const child = spawnSync(process.execPath, [self, ...args], { encoding: 'utf8' });
  if (child.status !== 0) throw new Error(`child ${args.join(' ')} failed (exit ${child.status}): ${child.stderr}`);
  const line = child.stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(line) as ChildReport;
}

/** Writes the header of `count` bf16 4096 x 4096 tensors, then extends the file sparsely. */
async function writeSparse(file: string, count: number): Promise<number> {
  const parts: string[] = [];
  const names = Array.from({ length: count }, (_, i) => `model.layers.${String(i).padStart(4, '0')}.weight`).sort();
  names.forEach((name, i) => {
    parts.push(`${JSON.stringify(name)}:{"dtype":"BF16","shape":[${SIDE},${SIDE}],"data_offsets":[${i * TENSOR_BYTES},${(i + 1) * TENSOR_BYTES}]}`);
  });
  let json = `{"__metadata__":{"format":"pt"},${parts.join(',')}}`;
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const header = Buffer.alloc(8 + Buffer.byteLength(json));
  header.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  header.write(json, 8, 'utf8');
  const handle = await open(file, 'w');
  try {
    await handle.write(header, 0, header.byteLength, 0);
    const total = header.byteLength + count * TENSOR_BYTES;
    await handle.truncate(total);
    return total;
  } finally {
    await handle.close();
  }
}

async function main(): Promise<void> {
  // Child modes (runChild, step 3), read here before the flags are parsed.
  const childAt = process.argv.indexOf('--inspect-child');
  if (childAt >= 0) {
    await inspectChild(process.argv[childAt + 1] ?? null);
    return;
  }
  if (process.argv.includes('--inspect-child-baseline')) {
    await inspectChild(null);
    return;
  }
  const options = parseOptions(process.argv.slice(2));
  console.log('safetensors I/O benchmark');
  for (const line of machineLines()) console.log(`  ${line}`);

  const dir = await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-bench-io-'));
  const cleanup = () => rm(dir, { recursive: true, force: true });
  process.once('SIGINT', () => {
    void cleanup().finally(() => process.exit(130));
  });
  try {
    // ---- 1. write ------------------------------------------------------------------------
    const count = Math.max(1, Math.round((options.gib * 2 ** 30) / TENSOR_BYTES));
    const file = path.join(dir, 'bench.safetensors');
    const values = new Float32Array(SIDE * SIDE);
    addUniformNoise(values, 1, 0.05);
    const entries: SafetensorsFloatEntry[] = Array.from({ length: count }, (_, i) => ({
      name: `model.layers.${String(i).padStart(3, '0')}.weight`,
      shape: [SIDE, SIDE],
      data: () => values, // produced lazily; the same values each time are fine for I/O
    }));
    const writeStart = now();
    await writeSafetensors(file, entries, { dtype: 'BF16', metadata: { format: 'pt' } });
    const writeSeconds = (now() - writeStart) / 1e3;
    const dataBytes = count * TENSOR_BYTES;
    console.log(
      `\nfile        ${count} tensors of bf16 ${SIDE} x ${SIDE} (${sig(TENSOR_BYTES / 2 ** 20)} MiB each), ` +
        `${sig(dataBytes / 2 ** 30)} GiB of data, in ${dir}`,
    );
    console.log(`write       ${sig(writeSeconds)} s with writeSafetensors (f32 -> bf16, lazy producers, fsync): ${sig(dataBytes / GB / writeSeconds)} GB/s`);

    // ---- 2. read -------------------------------------------------------------------------
    const layout = await (async () => {
      const reader = await openSafetensors(file);
      const list = [...reader.tensors.entries()].map(([name, info]) => ({ name, offset: info.offset, bytes: info.byteLength }));
      await reader.close();
      return list;
    })();
    const scratch = Buffer.allocUnsafeSlow(TENSOR_BYTES);

    const plain = async () => {
      const handle = await open(file, 'r');
      try {
        for (const t of layout) {
          let done = 0;
          while (done < t.bytes) {
            const { bytesRead } = await handle.read(scratch, done, t.bytes - done, t.offset + done);
            if (bytesRead === 0) throw new Error('unexpected end of file');
            done += bytesRead;
          }
        }
      } finally {
        await handle.close();
      }
    };
    let checksum = 0;
    const oursFloat = async () => {
      const reader = await openSafetensors(file);
      try {
        for (const t of layout) {
          const { data } = await reader.readFloat32(t.name);
          checksum += data[data.length - 1] as number;
        }
      } finally {
        await reader.close();
      }
    };
    const reused = new Float32Array(SIDE * SIDE);
    const oursFloatInto = async () => {
      const reader = await openSafetensors(file);
      try {
        for (const t of layout) {
          const { data } = await reader.readFloat32(t.name, { out: reused.subarray(0, t.bytes / 2) });
          checksum += data[data.length - 1] as number;
        }
      } finally {
        await reader.close();
      }
    };
    const oursRaw = async () => {
      const reader = await openSafetensors(file);
      try {
        for (const t of layout) {
          const { bytes } = await reader.readRaw(t.name);
          checksum += bytes[bytes.length - 1] as number;
        }
      } finally {
        await reader.close();
      }
    };
    const touchFresh = async () => {
      for (const t of layout) {
        const fresh = new Float32Array(t.bytes / 2);
        fresh.fill(1); // first touch: the page faults a new array costs, whoever fills it
        checksum += fresh[fresh.length - 1] as number;
      }
    };
    const methods: Array<[string, () => Promise<void>]> = [
      ['(a) plain positioned reads, reused buffer (baseline)', plain],
      ['(b) openSafetensors + readFloat32, new f32 array per tensor', oursFloat],
      ['(b\') openSafetensors + readFloat32 into a reused `out` array', oursFloatInto],
      ['(c) openSafetensors + readRaw, new byte array per tensor', oursRaw],
      ['(d) no I/O: allocate + first-touch a new f32 array per tensor', touchFresh],
    ];
    const times = methods.map(() => [] as number[]);
    for (const [, run] of methods) await run(); // warm-up: page cache, code paths
    for (let round = 0; round < options.repeats; round++) {
      for (let m = 0; m < methods.length; m++) {
        const start = now();
        await (methods[m] as [string, () => Promise<void>])[1]();
        (times[m] as number[]).push((now() - start) / 1e3);
      }
    }
    const medians = times.map(median);
    const baseline = dataBytes / GB / (medians[0] as number);
    const rows: Cell[][] = methods.map(([label], m) => {
      const seconds = medians[m] as number;
      const throughput = dataBytes / GB / seconds;
      return [label, sig(seconds * 1e3), sig(Math.min(...(times[m] as number[])) * 1e3), sig(throughput), m === 0 ? '1.00x' : ratio(throughput / baseline)];
    });
    console.log(`\nreading ${sig(dataBytes / GB)} GB, warm page cache, median of ${options.repeats} rounds (checksum ${sig(checksum)})`);
    console.log(table(['method', 'median ms', 'best ms', 'GB/s', 'vs plain'], rows));
    for (const [m, label] of [
      [1, 'new array per tensor'],
      [2, 'reused out array'],
    ] as const) {
      const r = (medians[0] as number) / (medians[m] as number);
      const best = Math.min(...(times[0] as number[])) / Math.min(...(times[m] as number[]));
      console.log(
        `target: readFloat32 (bf16 -> f32, ${label}) at least 0.5x plain-read throughput: ` +
          `${ratio(r)} of medians (${ratio(best)} of bests) -> ${r >= 0.5 ? 'met' : 'NOT met'}`,
      );
    }

    // ---- 3. header-only open of a multi-gigabyte file --------------------------------------
    const sparseCount = Math.max(1, Math.round((options.sparseGib * 2 ** 30) / TENSOR_BYTES));
    const sparse = path.join(dir, 'sparse.safetensors');
    const sparseSize = await writeSparse(sparse, sparseCount);
    const base = runChild(['--inspect-child-baseline']);
    const child = runChild(['--inspect-child', sparse]);
    console.log(
      `\nheader-only open (inspect) of a ${sig(sparseSize / 2 ** 30)} GiB file (sparse: real header, ${child.tensors} tensors, ` +
        `data never written) in a child process`,
    );
    console.log(
      table(
        ['child', 'open+list ms', 'rss before MB', 'rss after MB', 'peak rss (VmHWM) MB'],
        [
          ['loads eigenlorax only (baseline)', '-', sig(base.rssBefore / MB), sig(base.rssAfter / MB), sig(base.maxRss / MB)],
          ['opens and lists the file', sig(child.openMs), sig(child.rssBefore / MB), sig(child.rssAfter / MB), sig(child.maxRss / MB)],
        ],
      ),
    );
    const growth = child.maxRss - base.maxRss;
    console.log(`listed ${child.tensors} tensors, ${sig(child.bytes / GB)} GB of data; peak RSS growth over the baseline child ${sig(growth / MB)} MB`);
    console.log(`target: peak RSS of the inspecting process under 200 MB: ${sig(child.maxRss / MB)} MB -> ${child.maxRss < PEAK_TARGET_BYTES ? 'met' : 'NOT met'}`);
  } finally {
    await cleanup();
  }
}

await main();
