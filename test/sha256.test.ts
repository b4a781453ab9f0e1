/**
 * The native SHA-256 (native/core/sha256.h through lib/io/sha256.ts) against Node's own
 * (OpenSSL), on seeded random inputs split at random into parts and updates: the CPU's SHA
 * extensions here, and the portable code in a child process that turns them off.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Sha256Stream } from '../lib/io/sha256.js';
import { ownedMatrix } from '../lib/index.js';
import * as ops from '../lib/native/ops.js';
import { freshSeed, rng } from './helpers/random.js';

/** The digest of `parts` in one update. */
async function sha256Of(parts: ReadonlyArray<ArrayBufferView | string>): Promise<string> {
  const stream = new Sha256Stream();
  await stream.update(parts);
  return stream.digest();
}

function randomBytes(count: number, r: () => number): Uint8Array {
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.floor(r() * 256);
  return out;
}

/** Lengths around every padding boundary, then larger ones. */
const LENGTHS = [0, 1, 2, 3, 31, 32, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4095, 4096, 65_537, 1_000_003];

/** `data` cut at random into 1-5 updates of 1-4 parts each (some empty). */
function splits(data: Uint8Array, r: () => number): Uint8Array[][] {
  const cuts = [0, data.byteLength];
  const pieces = Math.floor(r() * 12);
  for (let i = 0; i < pieces; i++) cuts.push(Math.floor(r() * (data.byteLength + 1)));
  cuts.sort((a, b) => a - b);
  const parts = cuts.slice(1).map((end, i) => data.subarray(cuts[i], end));
  const updates: Uint8Array[][] = [];
  while (parts.length > 0) updates.push(parts.splice(0, 1 + Math.floor(r() * 4)));
  return updates;
}

test('digests equal OpenSSL for every length around the block and padding boundaries, however split; updates queued without waiting stay in order', async (t) => {
  const seed = freshSeed();
  const r = rng(seed);
  for (const length of LENGTHS) {
    const data = randomBytes(length, r);
    const hash = new Sha256Stream();
    const queued = splits(data, r).map((parts) => hash.update(parts)); // not awaited one by one
    await Promise.all(queued);
    t.is(await hash.digest(), createHash('sha256').update(data).digest('hex'), `seed ${seed}, ${length} bytes`);
  }
  t.is(await sha256Of([]), createHash('sha256').digest('hex'));
});

test('parts are the job\'s own once update returns: changing the buffer at once does not change the digest; views at any offset, typed arrays of any kind, owned memory', async (t) => {
  const seed = freshSeed();
  const r = rng(seed);
  const data = randomBytes(3 << 20, r);
  const expected = createHash('sha256').update(data).digest('hex');
  const hash = new Sha256Stream();
  const scratch = new Uint8Array(1 << 20);
  for (let at = 0; at < data.byteLength; at += scratch.byteLength) {
    scratch.set(data.subarray(at, at + scratch.byteLength));
    const waiting = hash.update([scratch]);
    scratch.fill(0xa5); // reused at once, as the safetensors writer reuses its chunk
    await waiting;
  }
  t.is(await hash.digest(), expected, `seed ${seed}`);

  // A Float32Array view at an odd byte offset's neighbour, a DataView, a Buffer.
  const bytes = randomBytes(4003, r);
  const wide = new Float32Array(bytes.buffer.slice(3, 3 + 4000));
  const parts = [wide, new DataView(bytes.buffer, 0, 3), Buffer.from(bytes.buffer, 4003 - 3, 3)];
  const joined = Buffer.concat(parts.map((p) => new Uint8Array(p.buffer, p.byteOffset, p.byteLength)));
  t.is(await sha256Of(parts), createHash('sha256').update(joined).digest('hex'));

  // Text is hashed as UTF-8, as Node's hash takes it (a lone surrogate as U+FFFD).
  const texts = ['{"metadata":[["é","x"]]}', '', 'ü€😀', 'lone \ud800 surrogate', 'x'.repeat(70_000)];
  const mixed = [texts[0]!, bytes.subarray(0, 9), texts[1]!, texts[2]!, texts[3]!, texts[4]!];
  const reference = createHash('sha256');
  for (const p of mixed) reference.update(p);
  t.is(await sha256Of(mixed), reference.digest('hex'));

  // Owned memory is hashed where it lies.
  const owned = ownedMatrix(300, 70);
  for (let i = 0; i < owned.data.length; i++) owned.data[i] = Math.sin(i * 0.37 + seed);
  const ownedBytes = new Uint8Array(owned.data.buffer, owned.data.byteOffset, owned.data.byteLength);
  t.is(await sha256Of([ownedBytes.subarray(5)]), createHash('sha256').update(ownedBytes.subarray(5)).digest('hex'));
});

test('the portable code gives the same digests as the SHA extensions (child process with EIGENLORAX_SHA256_PORTABLE)', async (t) => {
  const seed = freshSeed();
  const source = `
    const { Sha256Stream } = await import(${JSON.stringify(new URL('../lib/io/sha256.js', import.meta.url).href)});
    const ops = await import(${JSON.stringify(new URL('../lib/native/ops.js', import.meta.url).href)});
    const { rng } = await import(${JSON.stringify(new URL('./helpers/random.js', import.meta.url).href)});
    const r = rng(${seed});
    const out = { accelerated: ops.sha256Accelerated(), digests: [] };
    for (const length of ${JSON.stringify(LENGTHS)}) {
      const data = new Uint8Array(length);
      for (let i = 0; i < length; i++) data[i] = Math.floor(r() * 256);
      const h = new Sha256Stream();
      await h.update([data.subarray(0, length >> 1)]);
      await h.update([data.subarray(length >> 1)]);
      out.digests.push(await h.digest());
    }
    console.log(JSON.stringify(out));
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', source], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, EIGENLORAX_SHA256_PORTABLE: '1' },
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  t.is(code, 0, stderr);
  const result = JSON.parse(stdout) as { accelerated: boolean; digests: string[] };
  t.false(result.accelerated, 'the variable turns the SHA extensions off');
  const r = rng(seed);
  const expected = LENGTHS.map((length) => {
    const data = new Uint8Array(length);
    for (let i = 0; i < length; i++) data[i] = Math.floor(r() * 256);
    return createHash('sha256').update(data).digest('hex');
  });
  t.deepEqual(result.digests, expected, `seed ${seed}`);
  if (!ops.sha256Accelerated()) t.log('this CPU has no SHA extensions: both runs used the portable code');
});

test('bad input: an update after the digest, a stream that is not one, a part that is not a typed array', async (t) => {
  const hash = new Sha256Stream();
  await hash.update([new Uint8Array([1, 2, 3])]);
  await hash.digest();
  await hash.update([new Uint8Array([4])]);
  await t.throwsAsync(hash.digest(), { code: 'ERR_INVALID_ARGUMENT', message: /digest was already taken/ });

  const stream = ops.sha256Stream();
  await t.throwsAsync(ops.sha256Update({ stream: {} as typeof stream, parts: [] }), { code: 'ERR_INVALID_ARGUMENT', message: /stream/ });
  // An External of another kind (an out-of-core module build) is refused, not dereferenced.
  const foreign = ops.createModuleStream({
    dIn: 1000, dOut: 1000, totalRank: 100, adapters: 10, kA: 2, kB: 2, stacking: 'raw', weighting: 'equal', center: false, oversample: 2, powerIters: 0, seed: 1,
  }).stream;
  await t.throwsAsync(ops.sha256Update({ stream: foreign as unknown as typeof stream, parts: [] }), { code: 'ERR_INVALID_ARGUMENT', message: /stream/ });
  await t.throwsAsync(ops.sha256Update({ stream, parts: [new Uint8Array(2), [1, 2] as unknown as Uint8Array] }), {
    code: 'ERR_INVALID_ARGUMENT',
    message: /parts\[1\]/,
  });
  await t.throwsAsync(ops.sha256Digest({ stream: 'x' as unknown as typeof stream }), { code: 'ERR_INVALID_ARGUMENT' });
});
