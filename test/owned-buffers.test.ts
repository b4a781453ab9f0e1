/**
 * Owned buffers (native/addon/owned_buffers.h): memory the addon owns and jobs read in
 * place instead of copying. Checked: results equal those of ordinary arrays bit for bit
 * (whole buffers and views into part of one), zero-filling, and that the memory outlives
 * what JavaScript does to the buffer while a job reads it (collected, transferred): the
 * job's result is still right. ASan runs these in CI, where a freed block would be caught.
 */
import test from 'ava';
import v8 from 'node:v8';
import vm from 'node:vm';
import { linearForward, ownedMatrix, type Matrix } from '../lib/index.js';
import { native } from '../lib/native.js';
import { freshSeed, randomMatrix } from './helpers/random.js';

function gcFunction(): () => void {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (exposed) return exposed;
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

function owned(m: Matrix): Matrix {
  const o = ownedMatrix(m.rows, m.cols);
  o.data.set(m.data);
  return o;
}

test('ownedMatrix: zero-filled, owned memory from 64 KiB, ordinary below', (t) => {
  const big = ownedMatrix(128, 256);
  t.true(big.data.every((v) => v === 0));
  t.is(big.data.length, 128 * 256);
  t.is(big.data.buffer.byteLength, 128 * 256 * 4);
  const small = ownedMatrix(3, 5);
  t.is(small.data.length, 15);
  t.true(small.data.every((v) => v === 0));
  const zeroed = new Uint8Array(native.ownedBuffer(1 << 20, true));
  t.true(zeroed.every((v) => v === 0));
  for (const [rows, cols] of [[0, 4], [4, 1.5], [-1, 3], [2, Number.NaN]]) {
    const error = t.throws(() => ownedMatrix(rows as number, cols as number));
    t.is((error as { code?: string }).code, 'ERR_INVALID_ARGUMENT', `${rows} x ${cols}`);
  }
});

test('a job reads owned inputs in place: the same bits as ordinary copies, whole buffers and views into one', async (t) => {
  const seed = freshSeed();
  const x = randomMatrix(96, 300, seed);
  const weight = randomMatrix(200, 300, seed + 1);
  const expected = await linearForward(x, { weight });
  const whole = await linearForward(owned(x), { weight: owned(weight) });
  t.true(sameBits(whole.data, expected.data), `seed ${seed}: whole owned buffers`);
  // A view that starts and ends inside one owned buffer.
  const backing = new Float32Array(native.ownedBuffer((weight.data.length + 1000) * 4, true));
  const view = backing.subarray(500, 500 + weight.data.length);
  view.set(weight.data);
  const viewed = await linearForward(x, { weight: { rows: weight.rows, cols: weight.cols, data: view } });
  t.true(sameBits(viewed.data, expected.data), `seed ${seed}: a view into an owned buffer`);
  // The output is still the job's own copy: an owned output gets the same values.
  const out = ownedMatrix(96, 200);
  await linearForward(owned(x), { weight: owned(weight) }, { out });
  t.true(sameBits(out.data, expected.data), `seed ${seed}: owned output`);
});

test('owned inputs stay alive for the job when JavaScript collects or transfers them meanwhile', async (t) => {
  const gc = gcFunction();
  const seed = freshSeed();
  const x = randomMatrix(256, 1024, seed);
  const weight = randomMatrix(512, 1024, seed + 1);
  const expected = await linearForward(x, { weight });

  for (let round = 0; round < 5; round++) {
    // Collected: no reference to the owned arrays is kept after the call starts.
    const collected = linearForward(owned(x), { weight: owned(weight) });
    for (let i = 0; i < 3; i++) gc();
    t.true(sameBits((await collected).data, expected.data), `seed ${seed}: inputs collected while the job ran`);

    // Transferred while the job reads it. Node 20 copies a native-backed buffer on a
    // transfer instead of detaching it, Node 24 refuses (DataCloneError); either way the
    // job's memory must stay, and a copy must not share it.
    const w = owned(weight);
    const transferred = linearForward(x, { weight: w });
    try {
      const moved = structuredClone(w.data.buffer, { transfer: [w.data.buffer as ArrayBuffer] });
      new Float32Array(moved).fill(0);
    } catch (error) {
      t.is((error as Error).name, 'DataCloneError', String(error));
    }
    gc();
    t.true(sameBits((await transferred).data, expected.data), `seed ${seed}: input transferred while the job ran`);
  }
});
