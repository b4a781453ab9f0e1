/**
 * The buffers file reads fill (lib/io/files.ts readBuffer): large ones come from the
 * addon's huge-page allocator as ArrayBuffers that JavaScript owns until it collects them.
 * Checked: sizes, that they hold what a read put there (files of a large tensor, read
 * whole and tensor by tensor, against the values written), and the addon's refusals.
 */
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { readBuffer } from '../lib/io/files.js';
import { openSafetensors, writeSafetensors } from '../lib/io/safetensors.js';
import { openSmallSafetensors } from '../lib/io/safetensors-whole.js';
import { native } from '../lib/native.js';
import { freshSeed, rng } from './helpers/random.js';

test('readBuffer: the size asked, below and above the large-buffer threshold, writable to the last byte', (t) => {
  for (const bytes of [0, 1, (8 << 20) - 1, 8 << 20, (9 << 20) + 3]) {
    const b = readBuffer(bytes);
    t.is(b.byteLength, bytes);
    t.is(b.byteOffset, 0);
    t.is(b.buffer.byteLength, bytes);
    if (bytes > 1) {
      b[0] = 1;
      b[bytes - 1] = 2;
      t.deepEqual([b[0], b[bytes - 1]], [1, 2]);
    }
  }
});

test('ownedBuffer gives ArrayBuffers of the size asked, empty to huge-page sized', (t) => {
  for (const bytes of [0, 100, (9 << 20) + 1]) {
    const b = native.ownedBuffer(bytes, false);
    t.true(b instanceof ArrayBuffer);
    t.is(b.byteLength, bytes);
    new Uint8Array(b).fill(0xab);
    t.true(new Uint8Array(b).every((v) => v === 0xab));
  }
});

test('ownedBuffer refuses what is not a byte count, with ERR_INVALID_ARGUMENT', (t) => {
  for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 60, '8', null, undefined]) {
    const error = t.throws(() => native.ownedBuffer(bad as number, false));
    t.is((error as { code?: string }).code, 'ERR_INVALID_ARGUMENT', String(bad));
  }
});

/** Bit-equal arrays (t.deepEqual walks millions of elements slowly). */
function same(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

test('a tensor over the threshold reads back as written, from a file read whole and tensor by tensor', async (t) => {
  const seed = freshSeed();
  const random = rng(seed);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'eigenlorax-read-buffers-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'large.safetensors');
  const big = Float32Array.from({ length: (9 << 20) / 4 + 5 }, () => random() - 0.5);
  const small = Float32Array.from({ length: 7 }, () => random());
  await writeSafetensors(file, [
    { name: 'big', shape: [big.length], data: big },
    { name: 'small', shape: [7], data: small },
  ]);
  for (const reader of [await openSafetensors(file), await openSmallSafetensors(file, 64 << 20)]) {
    const back = await reader.readFloat32('big');
    t.true(same(back.data, big), `seed ${seed}`);
    const raw = await reader.readRaw('big');
    t.true(same(new Float32Array(raw.bytes.buffer, raw.bytes.byteOffset, big.length), big), `seed ${seed}`);
    t.deepEqual((await reader.readFloat32('small')).data, small, `seed ${seed}`);
    await reader.close();
  }
});
