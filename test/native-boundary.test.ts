/**
 * The one native boundary (lib/native/ops.ts): callNative keeps the caller's stack on
 * errors the addon raises from its thread pool, turns whatever the addon throws into an
 * EigenLoraxError, and enums cross the boundary as strings.
 */
import test from 'ava';
import { EigenLoraxError } from '../lib/errors.js';
import { orthonormalize } from '../lib/linalg.js';
import { matrix } from '../lib/matrix.js';
import { native } from '../lib/native.js';
import { callNative } from '../lib/native/ops.js';
import { freshSeed, randomMatrix } from './helpers/random.js';

async function callerOfOrthonormalize(): Promise<unknown> {
  const seed = freshSeed();
  const m = randomMatrix(64, 8, seed);
  m.data[seed % m.data.length] = Number.NaN;
  return orthonormalize(m);
}

test('a native error carries the stack of the library call that started it', async (t) => {
  const error = await t.throwsAsync(callerOfOrthonormalize(), { instanceOf: EigenLoraxError, code: 'ERR_NON_FINITE' });
  t.regex(error.stack ?? '', /-- called from:[\s\S]*callerOfOrthonormalize/);
});

test('callNative: an error that is not an EigenLoraxError becomes ERR_INTERNAL with it as the cause', async (t) => {
  const cause = new TypeError('not ours');
  const error = await t.throwsAsync(callNative(() => Promise.reject(cause)), { instanceOf: EigenLoraxError, code: 'ERR_INTERNAL' });
  t.is(error.cause, cause);
  t.regex(error.message, /not ours/);
});

test('callNative: a synchronous throw (argument checks) becomes a rejection, the error kept', async (t) => {
  const thrown = new EigenLoraxError('bad', 'ERR_INVALID_ARGUMENT');
  const promise = callNative(() => {
    throw thrown;
  });
  t.true(promise instanceof Promise);
  t.is(await t.throwsAsync(promise), thrown);
});

test('callNative: resolves to what the call resolves to', async (t) => {
  t.is(await callNative(async () => 42), 42);
});

test('enums cross the boundary as strings: a number where a name is expected is refused, naming the choices', async (t) => {
  const x = randomMatrix(4, 6, freshSeed());
  const layer = { componentsA: matrix(6, 2), alpha: matrix(2, 1), beta: matrix(2, 1), componentsB: matrix(3, 2), scale: 1, weight: null, bias: null };
  const cases: Array<[string, () => Promise<unknown>]> = [
    ['order', () => native.eigenLoraForward({ ...layer, x, y: matrix(4, 3), order: 1 as never })],
    ['method', () => native.rsvd({ matrix: x, rank: 1, oversample: 0, powerIters: 0, seed: 0, method: 'fast' as never, U: matrix(4, 1), S: new Float32Array(1), V: matrix(6, 1) })],
    ['dtype', () => native.cudaUpload({ rows: 1, cols: 1, dtype: 0 as never, data: new Float32Array(1) })],
  ];
  for (const [name, call] of cases) {
    const error = await t.throwsAsync(async () => call(), { instanceOf: EigenLoraxError });
    // cudaUpload may refuse first for want of a GPU; every other answer names the choices.
    if (error.code === 'ERR_DEVICE_UNAVAILABLE') continue;
    t.is(error.code, 'ERR_INVALID_ARGUMENT', name);
    t.regex(error.message, new RegExp(`${name}: expected one of '.*'`), name);
  }
  // The names are accepted.
  t.is(await native.eigenLoraForward({ ...layer, x, y: matrix(4, 3), order: 'rebuild' }), 'rebuild');
});
