/**
 * Child-process script for detach.test.ts (run with --expose-gc): starts one native call,
 * then, while it is in flight, detaches, transfers, shrinks or frees one of its buffers the
 * way a user could. Prints one JSON line: the call's outcome (a result equal to the one
 * computed beforehand on intact buffers, or a typed error). Run in its own process so that
 * a crash (the bug this guards against: native code touching freed memory) fails a test
 * instead of killing the runner; the sanitizer build (.ci/sanitize.sh) runs it too.
 *
 *   node --expose-gc dist/test/helpers/detach-scenarios.js <scenario>
 */
import { MessageChannel } from 'node:worker_threads';
import { loraForward, matrix, rsvd, toFloat32, type Matrix } from '../../lib/index.js';
import { native } from '../../lib/native.js';
import { gaussian, rng } from './random.js';

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with --expose-gc');

type Outcome = { outcome: 'result'; same: boolean; detail?: string } | { outcome: 'error'; code: string; message: string };

function fill(data: Float32Array, seed: number): Float32Array {
  const g = gaussian(rng(seed));
  for (let i = 0; i < data.length; i++) data[i] = g();
  return data;
}

/** A rows x cols matrix whose data lies in `buffer` (fresh random values). */
function over(buffer: ArrayBuffer, rows: number, cols: number, seed: number): Matrix {
  return matrix(rows, cols, fill(new Float32Array(buffer, 0, rows * cols), seed));
}

function sameArray(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!(Math.abs(a[i]! - b[i]!) <= 1e-4 * Math.max(1, Math.abs(b[i]!)))) return false;
  return true;
}

/** Frees what `buffer` held: transfers it into a clone nobody keeps, then collects it. */
function transferAndCollect(buffer: ArrayBuffer): void {
  structuredClone(buffer, { transfer: [buffer] });
  gc!();
}

/** Transfers `buffer` through a MessagePort; the receiver drops it and collects. */
async function transferThroughPort(buffer: ArrayBuffer): Promise<void> {
  const { port1, port2 } = new MessageChannel();
  const received = new Promise<void>((resolve) => port2.once('message', () => resolve()));
  port1.postMessage(buffer, [buffer]);
  await received;
  port1.close();
  port2.close();
  gc!();
}

async function settle(p: Promise<() => boolean>): Promise<Outcome> {
  try {
    const same = await p;
    return { outcome: 'result', same: same() };
  } catch (e) {
    const err = e as { code?: string; message?: string };
    return { outcome: 'error', code: err.code ?? 'none', message: String(err.message) };
  }
}

// rsvd of a 1500 x 1500 matrix (rank 60, 4 power iterations: long enough that the
// hostile action lands while the kernel reads the input), as in the report.
const n = 1500;
const rsvdOptions = { rank: 60, powerIters: 4, seed: 3 } as const;

async function rsvdWith(buffer: ArrayBuffer, hostile: () => void | Promise<void>): Promise<Outcome> {
  const m = over(buffer, n, n, 11);
  const reference = await rsvd(matrix(n, n, m.data.slice()), rsvdOptions);
  const p = rsvd(m, rsvdOptions).then((r) => () => sameArray(r.S, reference.S) && sameArray(r.U.data, reference.U.data));
  await hostile();
  return settle(p);
}

// loraForward with a base weight, 2048 rows: about a second of work for the out buffer.
async function loraWith(out: Matrix, hostile: () => void | Promise<void>, xBuffer?: ArrayBuffer): Promise<Outcome> {
  const x = xBuffer ? over(xBuffer, 2048, 512, 1) : matrix(2048, 512, fill(new Float32Array(2048 * 512), 1));
  const layer = {
    A: matrix(8, 512, fill(new Float32Array(8 * 512), 2)),
    B: matrix(512, 8, fill(new Float32Array(512 * 8), 3)),
    scale: 2,
    weight: matrix(512, 512, fill(new Float32Array(512 * 512), 4)),
  };
  const reference = await loraForward(matrix(x.rows, x.cols, x.data.slice()), layer);
  const p = loraForward(x, layer, { out }).then((y) => () => sameArray(y.data, reference.data));
  await hostile();
  return settle(p);
}

// bf16 -> f32 of 16 M values.
async function toFloat32With(words: Uint16Array, hostile: () => void | Promise<void>): Promise<Outcome> {
  const random = rng(5);
  for (let i = 0; i < words.length; i++) words[i] = 0x3f80 + Math.floor(random() * 256);
  const reference = await toFloat32(words.slice(), 'bf16');
  const p = toFloat32(words, 'bf16').then((r) => () => sameArray(r, reference));
  await hostile();
  return settle(p);
}

/** A resizable ArrayBuffer (ES2024; the TypeScript lib here is ES2023). */
interface Resizable extends ArrayBuffer {
  resize(byteLength: number): void;
}
function resizable(byteLength: number): Resizable {
  const Ctor = ArrayBuffer as unknown as new (length: number, options: { maxByteLength: number }) => Resizable;
  return new Ctor(byteLength, { maxByteLength: byteLength });
}

const bytes = n * n * 4;
const scenarios: Record<string, () => Promise<Outcome>> = {
  // The report's first reproduction: a resizable buffer shrunk to nothing.
  'rsvd input resized to 0': () => {
    const ab = resizable(bytes);
    return rsvdWith(ab, () => ab.resize(0));
  },
  'rsvd input transferred and collected': () => {
    const ab = new ArrayBuffer(bytes);
    return rsvdWith(ab, () => transferAndCollect(ab));
  },
  'rsvd input sent through a MessagePort': () => {
    const ab = new ArrayBuffer(bytes);
    return rsvdWith(ab, () => transferThroughPort(ab));
  },
  'rsvd output U transferred and collected': async () => {
    // Outputs the caller passes to the addon directly.
    const a = matrix(n, n, fill(new Float32Array(n * n), 7));
    const U = matrix(n, 60);
    const V = matrix(n, 60);
    const S = new Float32Array(60);
    const p = native
      .rsvd({ matrix: a, rank: 60, oversample: 10, powerIters: 4, seed: 0, method: 'auto', U, S, V })
      .then(() => () => true);
    transferAndCollect(U.data.buffer as ArrayBuffer);
    return settle(p);
  },
  'loraForward out transferred and collected': () => {
    const out = matrix(2048, 512);
    return loraWith(out, () => transferAndCollect(out.data.buffer as ArrayBuffer));
  },
  'loraForward out resized to 0': () => {
    const ab = resizable(2048 * 512 * 4);
    const out = matrix(2048, 512, new Float32Array(ab, 0, 2048 * 512));
    return loraWith(out, () => ab.resize(0));
  },
  'loraForward out resized to 0 and back': () => {
    // Same length again when the job ends: the result lands in the buffer as if nothing happened.
    const ab = resizable(2048 * 512 * 4);
    const out = matrix(2048, 512, new Float32Array(ab, 0, 2048 * 512));
    return loraWith(out, () => {
      ab.resize(0);
      ab.resize(2048 * 512 * 4);
    });
  },
  'loraForward input x transferred and collected': () => {
    const ab = new ArrayBuffer(2048 * 512 * 4);
    return loraWith(matrix(2048, 512), () => transferAndCollect(ab), ab);
  },
  'toFloat32 input transferred and collected': () => {
    const words = new Uint16Array(1 << 24);
    return toFloat32With(words, () => transferAndCollect(words.buffer as ArrayBuffer));
  },
  'toFloat32 input resized to 0': () => {
    const ab = resizable(2 << 24);
    return toFloat32With(new Uint16Array(ab, 0, 1 << 24), () => ab.resize(0));
  },
  'toFloat32 of a SharedArrayBuffer': () => toFloat32With(new Uint16Array(new SharedArrayBuffer(2 << 20)), () => {}),
};

const name = process.argv[2] ?? '';
if (name === '--list') {
  console.log(JSON.stringify(Object.keys(scenarios)));
} else {
  const run = scenarios[name];
  if (!run) throw new Error(`unknown scenario ${name}`);
  console.log(JSON.stringify(await run()));
}
