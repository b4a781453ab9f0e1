/**
 * safetensors reader and writer. Fixtures are built byte by byte in the test
 * (helpers/safetensors-fixtures.ts), independently of the writer; expected layouts follow
 * the reference Rust crate (tensors by descending dtype, then name; compact JSON; header
 * padded with spaces to 8 bytes).
 */
import test, { type ExecutionContext } from 'ava';
import { readdir, readFile, stat, writeFile, mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import {
  EigenLoraxError,
  fromFloat32,
  openSafetensors,
  safetensorsDtypeBytes,
  toFloat32,
  writeSafetensors,
  type ErrorCode,
  type SafetensorsDType,
  type SafetensorsEntry,
} from '../lib/index.js';
import { openSmallSafetensors } from '../lib/io/safetensors-whole.js';
import { createHash } from 'node:crypto';
import { DATA_DIGEST_KEY, digestPreamble, verifyDigest } from '../lib/io/digest.js';
import { freshSeed, gaussian, rng } from './helpers/random.js';
import {
  assemble,
  buildFile,
  concat,
  f32le,
  f64le,
  i32le,
  i64le,
  layout,
  padHeader,
  tempDir,
  u16le,
  u64le,
  u8s,
  utf8,
  writeFixture,
} from './helpers/safetensors-fixtures.js';

// ---------------------------------------------------------------------------------------
// Helpers

function randomF32(count: number, seed: number, scale = 1): Float32Array {
  const g = gaussian(rng(seed));
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = g() * scale;
  return out;
}

function randomBytes(count: number, seed: number): Uint8Array {
  const r = rng(seed);
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.floor(r() * 256);
  return out;
}

const bitsOf = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);
/**
 * Bit-exact comparison of two f32 arrays: -1 when equal, else the first differing index
 * (or -2 for different lengths). Cheaper than deepEqual on millions of elements.
 */
function firstBitDifference(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return -2;
  const x = bitsOf(a);
  const y = bitsOf(b);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return i;
  return -1;
}
const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
/** The f32 value of a bf16 bit pattern (exact: bf16 is the top half of an f32). */
const bf16Value = (bits: number) => new Float32Array(new Uint32Array([bits << 16]).buffer)[0] as number;

async function listing(dir: string): Promise<string[]> {
  return (await readdir(dir)).sort();
}

/** Asserts a typed error with `code` whose message names the file and, if given, the key. */
async function refused(t: ExecutionContext, call: () => Promise<unknown>, code: ErrorCode, file: string, key?: string) {
  const error = await t.throwsAsync(call, { instanceOf: EigenLoraxError });
  if (!error) return;
  t.is((error as EigenLoraxError).code, code, error.message);
  t.true(error.message.includes(file), `message names the file: ${error.message}`);
  if (key !== undefined) t.true(error.message.includes(JSON.stringify(key)), `message names the tensor ${key}: ${error.message}`);
}

// ---------------------------------------------------------------------------------------
// Reading hand-built files

test('a hand-built file with every float dtype, integers, bool and metadata reads back exactly', async (t) => {
  const dir = await tempDir(t);
  const f32 = [1.5, -0.25, 3e-39, -Infinity, 65504, 7];
  const f16Bits = [0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x7c00]; // 1, -2, 0.5, 65504, 2^-24, +Inf
  const bf16Bits = [0x3f80, 0xc000, 0x3eab, 0x4040]; // 1, -2, ~0.333984375, 3
  const f64 = [0.1, -1e300, 2 ** -149, 12345.678];
  const bytes = buildFile(
    [
      // Deliberately not in the reference writer's order: readers must not care.
      { name: 'h', dtype: 'F16', shape: [2, 3], bytes: u16le(f16Bits) },
      { name: 'f', dtype: 'F32', shape: [3, 2], bytes: f32le(f32) },
      { name: 'ids', dtype: 'I64', shape: [3], bytes: i64le([1n, -2n, 2n ** 62n]) },
      { name: 'b', dtype: 'BF16', shape: [4], bytes: u16le(bf16Bits) },
      { name: 'mask', dtype: 'BOOL', shape: [1, 3], bytes: u8s([1, 0, 1]) },
      { name: 'd', dtype: 'F64', shape: [2, 2], bytes: f64le(f64) },
      { name: 'n', dtype: 'I32', shape: [2], bytes: i32le([-7, 2147483647]) },
    ],
    { format: 'pt', note: 'hand-built' },
  );
  const file = await writeFixture(dir, 'hand.safetensors', bytes);
  const reader = await openSafetensors(file);
  t.teardown(() => reader.close());

  t.deepEqual({ ...reader.metadata }, { format: 'pt', note: 'hand-built' });
  t.deepEqual([...reader.tensors.keys()], ['h', 'f', 'ids', 'b', 'mask', 'd', 'n']);
  t.like(reader.tensors.get('ids'), { dtype: 'I64', shape: [3], byteLength: 24, file });
  t.deepEqual(reader.files, [file]);

  const f = await reader.readFloat32('f');
  t.deepEqual(f.shape, [3, 2]);
  t.is(f.dtype, 'F32');
  t.deepEqual([...f.data], [...new Float32Array(f32)]);
  t.is(f.data.buffer.byteLength, f.data.byteLength, 'F32 is read into an array of its own, no larger buffer');
  t.deepEqual([...(await reader.readFloat32('h')).data], [1, -2, 0.5, 65504, 2 ** -24, Infinity]);
  t.deepEqual([...(await reader.readFloat32('b')).data], bf16Bits.map(bf16Value));
  t.deepEqual([...(await reader.readFloat32('d')).data], [...new Float32Array(f64)]);

  const ids = await reader.readRaw('ids');
  t.deepEqual(ids.shape, [3]);
  t.is(ids.dtype, 'I64');
  t.deepEqual([...new BigInt64Array(ids.bytes.buffer)], [1n, -2n, 2n ** 62n]);
  t.deepEqual([...(await reader.readRaw('mask')).bytes], [1, 0, 1]);
  t.deepEqual([...new Int32Array((await reader.readRaw('n')).bytes.buffer)], [-7, 2147483647]);
  // Raw reads work for float tensors too: the stored bytes.
  t.deepEqual([...(await reader.readRaw('b')).bytes], [...u16le(bf16Bits)]);
});

test('readers tolerate gaps, trailing bytes, scalars, empty tensors and an empty file', async (t) => {
  const dir = await tempDir(t);
  const header = JSON.stringify({
    s: { dtype: 'F32', shape: [], data_offsets: [0, 4] },
    e: { dtype: 'F16', shape: [0, 5], data_offsets: [4, 4] },
    g: { dtype: 'F32', shape: [2], data_offsets: [12, 20] }, // 8-byte gap before it
  });
  const data = concat(f32le([42]), u8s([9, 9, 9, 9, 9, 9, 9, 9]), f32le([1, 2]), u8s([7, 7, 7])); // 3 trailing bytes
  const file = await writeFixture(dir, 'gaps.safetensors', assemble(utf8(header), data)); // no padding either
  const reader = await openSafetensors(file);
  t.deepEqual(await reader.readFloat32('s'), { dtype: 'F32', shape: [], data: new Float32Array([42]) });
  t.deepEqual(await reader.readFloat32('e'), { dtype: 'F16', shape: [0, 5], data: new Float32Array(0) });
  t.deepEqual([...(await reader.readFloat32('g')).data], [1, 2]);
  await reader.close();

  const empty = await writeFixture(dir, 'empty.safetensors', assemble(padHeader('{}'), new Uint8Array(0)));
  const none = await openSafetensors(empty);
  t.is(none.tensors.size, 0);
  t.deepEqual({ ...none.metadata }, {});
  await none.close();
});

// ---------------------------------------------------------------------------------------
// The writer, byte for byte

test('writer output is byte-identical to the hand-built reference layout (single tensor, forced padding)', async (t) => {
  const dir = await tempDir(t);
  const out = path.join(dir, 'out.safetensors');
  // The reference crate's own serialisation example: "attn.0", F32, [1, 2, 3], values 0..5.
  await writeSafetensors(out, [{ name: 'attn.0', shape: [1, 2, 3], data: new Float32Array([0, 1, 2, 3, 4, 5]) }]);
  const headerText = '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}';
  t.is(utf8(headerText).byteLength % 8, 0, 'this one needs no padding');
  t.deepEqual(new Uint8Array(await readFile(out)), assemble(utf8(headerText), f32le([0, 1, 2, 3, 4, 5])));

  // One character shorter, so 7 spaces of padding are needed.
  await writeSafetensors(out, [{ name: 'attn0', shape: [1, 1, 2, 3], data: new Float32Array([0, 1, 2, 3, 4, 5]) }]);
  const padded = '{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}       ';
  t.is(utf8(padded).byteLength % 8, 0);
  t.deepEqual(new Uint8Array(await readFile(out)), assemble(utf8(padded), f32le([0, 1, 2, 3, 4, 5])));

  // No tensors, one metadata key.
  await writeSafetensors(out, [], { metadata: { framework: 'pt' } });
  t.deepEqual(new Uint8Array(await readFile(out)), assemble(utf8('{"__metadata__":{"framework":"pt"}}     '), new Uint8Array(0)));
  t.deepEqual(await listing(dir), ['out.safetensors'], 'no temporary files left');
});

test('writer orders tensors by descending dtype then name, converts, and pads (mixed dtypes)', async (t) => {
  const dir = await tempDir(t);
  const out = path.join(dir, 'mixed.safetensors');
  const entries: SafetensorsEntry[] = [
    { name: 'mask', shape: [3], dtype: 'BOOL', bytes: u8s([1, 0, 1]) },
    { name: 'b.weight', shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) },
    { name: 'a.weight', shape: [3], data: () => new Float32Array([1, -2, 0.5]), dtype: 'BF16' },
    { name: 'ids', shape: [2], dtype: 'I64', bytes: new BigInt64Array([3n, -4n]) },
    { name: 'half', shape: [2], data: async () => new Float32Array([1, 65504]), dtype: 'F16' },
    { name: 'a.bias', shape: [1], data: new Float32Array([-1]) },
    { name: 'wide', shape: [1], data: new Float32Array([0.1]), dtype: 'F64' },
  ];
  await writeSafetensors(out, entries, { metadata: { z: '1', format: 'pt', 'é': 'x' } });
  const header =
    '{"__metadata__":{"format":"pt","z":"1","é":"x"},' +
    '"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},' +
    '"wide":{"dtype":"F64","shape":[1],"data_offsets":[16,24]},' +
    '"a.bias":{"dtype":"F32","shape":[1],"data_offsets":[24,28]},' +
    '"b.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[28,44]},' +
    '"a.weight":{"dtype":"BF16","shape":[3],"data_offsets":[44,50]},' +
    '"half":{"dtype":"F16","shape":[2],"data_offsets":[50,54]},' +
    '"mask":{"dtype":"BOOL","shape":[3],"data_offsets":[54,57]}}';
  const data = concat(
    i64le([3n, -4n]),
    f64le([Math.fround(0.1)]),
    f32le([-1]),
    f32le([1, 2, 3, 4]),
    u16le([0x3f80, 0xc000, 0x3f00]),
    u16le([0x3c00, 0x7bff]),
    u8s([1, 0, 1]),
  );
  t.deepEqual(new Uint8Array(await readFile(out)), assemble(padHeader(header), data));
});

test('same input twice gives identical bytes, whatever the entry order and eager or lazy data', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  const make = (lazy: boolean): SafetensorsEntry[] =>
    Array.from({ length: 12 }, (_, i) => {
      const values = randomF32(7 * (i + 1), seed + i);
      return { name: `layer.${i % 4}.w${i}`, shape: [7, i + 1], data: lazy ? async () => values : values };
    });
  const a = path.join(dir, 'a.safetensors');
  const b = path.join(dir, 'b.safetensors');
  await writeSafetensors(a, make(false), { dtype: 'BF16', metadata: { k: 'v' } });
  await writeSafetensors(b, make(true).reverse(), { dtype: 'BF16', metadata: { k: 'v' } });
  t.deepEqual(await readFile(a), await readFile(b), `seed ${seed}`);
});

test('writer: thousands of small tensors and a few over 1 MiB, some from a producer that reuses one buffer, give the reference layout and digest', async (t) => {
  // The writer packs pieces under 1 MiB into one chunk and writes larger ones where they
  // lie; the bytes, their order and the digest must not depend on where chunks end.
  const dir = await tempDir(t);
  const seed = freshSeed();
  const r = rng(seed);
  const shared = new Float32Array(600_000);
  const tensors: Array<{ name: string; values: Float32Array; lazy: boolean }> = [];
  for (let i = 0; i < 3000; i++) {
    const big = r() < 0.002;
    const count = big ? 262_144 + Math.floor(r() * 300_000) : 1 + Math.floor(r() * (r() < 0.05 ? 60_000 : 700));
    tensors.push({ name: `t${String(i).padStart(4, '0')}`, values: randomF32(count, seed + i), lazy: r() < 0.3 });
  }
  tensors.push({ name: 'z.big', values: randomF32(300_000, seed - 1), lazy: true });
  const entries: SafetensorsEntry[] = tensors.map(({ name, values, lazy }) => ({
    name,
    shape: [values.length],
    data: lazy
      ? () => {
          shared.set(values);
          return shared.subarray(0, values.length);
        }
      : values,
  }));
  const out = path.join(dir, 'many.safetensors');
  await writeSafetensors(out, entries, { metadata: { k: 'v' }, digest: true });

  // The reference, built independently: names in order, offsets summed, data concatenated.
  const data = concat(...tensors.map((x) => f32le(x.values)));
  const hash = createHash('sha256').update(digestPreamble({ k: 'v' }, tensors.map((x) => ({ name: x.name, dtype: 'F32', shape: [x.values.length] }))));
  hash.update(data);
  let at = 0;
  const layoutJson = tensors.map((x) => `"${x.name}":{"dtype":"F32","shape":[${x.values.length}],"data_offsets":[${at},${(at += 4 * x.values.length)}]}`);
  const header = `{"__metadata__":{"${DATA_DIGEST_KEY}":"${hash.digest('hex')}","k":"v"},${layoutJson.join(',')}}`;
  const written = new Uint8Array(await readFile(out));
  const expected = assemble(padHeader(header), data);
  t.is(written.byteLength, expected.byteLength, `seed ${seed}`);
  t.true(Buffer.compare(written, expected) === 0, `seed ${seed}: the file differs from the reference layout`);
  const reader = await openSafetensors(out);
  try {
    t.is(await verifyDigest(reader), 'verified');
  } finally {
    await reader.close();
  }
});

// ---------------------------------------------------------------------------------------
// Round trips

test('f32 round trips bit-exactly, NaN payloads, -0, denormals and infinities included', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  const values = randomF32(37 * 53, seed);
  const special = new Uint32Array([0x7fc00001, 0xffa12345, 0x80000000, 0x00000001, 0x7f800000, 0xff800000, 0x7f7fffff]);
  bitsOf(values).set(special, 100);
  const file = path.join(dir, 'f32.safetensors');
  await writeSafetensors(file, [{ name: 'w', shape: [37, 53], data: values }]);
  const reader = await openSafetensors(file);
  const back = await reader.readFloat32('w');
  await reader.close();
  t.deepEqual(back.shape, [37, 53]);
  t.is(firstBitDifference(back.data, values), -1, `seed ${seed}`);
});

for (const dtype of ['F16', 'BF16'] as const) {
  test(`${dtype} round trip: stored as fromFloat32 rounds (nearest even), read back through toFloat32`, async (t) => {
    const dir = await tempDir(t);
    const seed = freshSeed();
    const values = randomF32(4099, seed, dtype === 'F16' ? 100 : 1e6);
    const low = dtype === 'F16' ? 'f16' : 'bf16';
    const stored = await fromFloat32(values, low);
    const expected = await toFloat32(stored, low);
    const file = path.join(dir, `${dtype}.safetensors`);
    await writeSafetensors(file, [{ name: 'x', shape: [4099], data: values }], { dtype });
    const reader = await openSafetensors(file);
    t.is(reader.tensors.get('x')?.dtype, dtype);
    t.deepEqual((await reader.readRaw('x')).bytes, bytesOf(stored), `seed ${seed}`);
    const back = await reader.readFloat32('x');
    t.is(back.dtype, dtype);
    t.is(firstBitDifference(back.data, expected), -1, `seed ${seed}`);
    await reader.close();
  });
}

test('F64 entries (lossless from f32) and raw integer, bool and f8 tensors round trip', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  const raw: SafetensorsDType[] = ['BOOL', 'U8', 'I8', 'F8_E5M2', 'F8_E4M3', 'I16', 'U16', 'I32', 'U32', 'I64', 'U64'];
  const entries: SafetensorsEntry[] = raw.map((dtype, i) => ({
    name: `raw.${dtype}`,
    shape: [3, 5],
    dtype,
    bytes: randomBytes(15 * safetensorsDtypeBytes[dtype], seed + i),
  }));
  const wide = randomF32(30, seed + 99);
  entries.push({ name: 'wide', shape: [5, 6], data: wide, dtype: 'F64' });
  const file = path.join(dir, 'raw.safetensors');
  await writeSafetensors(file, entries);
  const reader = await openSafetensors(file);
  t.teardown(() => reader.close());
  for (const entry of entries) {
    if (!('bytes' in entry)) continue;
    const back = await reader.readRaw(entry.name);
    t.is(back.dtype, entry.dtype);
    t.deepEqual(back.shape, [3, 5]);
    t.deepEqual(back.bytes, entry.bytes as Uint8Array, `${entry.name}, seed ${seed}`);
    await refused(t, () => reader.readFloat32(entry.name), 'ERR_UNSUPPORTED_DTYPE', file, entry.name);
  }
  t.is(reader.tensors.get('wide')?.dtype, 'F64');
  t.is(firstBitDifference((await reader.readFloat32('wide')).data, wide), -1);
});

test('concurrent reads on one reader each get their own values', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  const tensors = Array.from({ length: 8 }, (_, i) => randomF32(1000 + i, seed + i));
  const file = path.join(dir, 'many.safetensors');
  await writeSafetensors(
    file,
    tensors.map((data, i) => ({ name: `t${i}`, shape: [data.length], data })),
    { dtype: 'BF16' },
  );
  const reader = await openSafetensors(file);
  const [first, second] = await Promise.all([
    Promise.all(tensors.map((_, i) => reader.readFloat32(`t${i}`))),
    Promise.all(tensors.map((_, i) => reader.readFloat32(`t${i}`))),
  ]);
  await reader.close();
  for (let i = 0; i < tensors.length; i++) {
    const expected = await toFloat32(await fromFloat32(tensors[i] as Float32Array, 'bf16'), 'bf16');
    t.is(firstBitDifference(first?.[i]?.data as Float32Array, expected), -1);
    t.is(firstBitDifference(second?.[i]?.data as Float32Array, expected), -1);
  }
});

test('tensors larger than one conversion chunk (4 MiB) convert correctly, into new or caller-given arrays', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  // Element counts that leave a ragged last chunk for each dtype.
  const cases = [
    { name: 'bf16', dtype: 'BF16', low: 'bf16', count: 2 * 2 ** 21 + 12345 },
    { name: 'f16', dtype: 'F16', low: 'f16', count: 2 ** 21 + 7 },
    { name: 'f64', dtype: 'F64', low: 'f64', count: 2 ** 19 + 3 },
  ] as const;
  const values = cases.map((c, i) => randomF32(c.count, seed + i, 10));
  const file = path.join(dir, 'big.safetensors');
  await writeSafetensors(
    file,
    cases.map((c, i) => ({ name: c.name, shape: [c.count], data: values[i] as Float32Array, dtype: c.dtype })),
  );
  const reader = await openSafetensors(file);
  t.teardown(() => reader.close());
  const shared = new Float32Array(2 * 2 ** 21 + 12345);
  for (const [i, c] of cases.entries()) {
    const expected = c.low === 'f64' ? (values[i] as Float32Array) : await toFloat32(await fromFloat32(values[i] as Float32Array, c.low), c.low);
    const fresh = await reader.readFloat32(c.name);
    t.is(firstBitDifference(fresh.data, expected), -1, `${c.name}, seed ${seed}`);
    const into = await reader.readFloat32(c.name, { out: shared.subarray(0, c.count) });
    t.is(into.data.buffer, shared.buffer, 'written into the given array');
    t.is(firstBitDifference(into.data, expected), -1, `${c.name} into out, seed ${seed}`);
  }
  const raw = new Uint8Array(reader.tensors.get('f16')?.byteLength ?? 0);
  t.is((await reader.readRaw('f16', { out: raw })).bytes, raw);
  t.true(Buffer.from(raw).equals(bytesOf(await fromFloat32(values[1] as Float32Array, 'f16'))));
  await refused(t, () => reader.readFloat32('f16', { out: new Float32Array(5) }), 'ERR_SHAPE_MISMATCH', file, 'f16');
  await refused(t, () => reader.readRaw('f16', { out: new Uint8Array(5) }), 'ERR_SHAPE_MISMATCH', file, 'f16');
  await t.throwsAsync(() => reader.readFloat32('f16', { out: new Float64Array(2 ** 21 + 7) as never }), { code: 'ERR_INVALID_ARGUMENT' });
});

test('close() lets reads already started finish, then refuses new ones', async (t) => {
  const dir = await tempDir(t);
  const values = randomF32(3 * 2 ** 20, 5);
  const file = path.join(dir, 'close.safetensors');
  await writeSafetensors(file, [{ name: 'w', shape: [values.length], data: values }], { dtype: 'BF16' });
  const reader = await openSafetensors(file);
  const reading = reader.readFloat32('w'); // several chunks, still in flight when close() starts
  await reader.close();
  const { data } = await reading;
  t.is(firstBitDifference(data, await toFloat32(await fromFloat32(values, 'bf16'), 'bf16')), -1);
  await refused(t, () => reader.readFloat32('w'), 'ERR_CLOSED', file, 'w');
  await reader.close();
});

// ---------------------------------------------------------------------------------------
// Laziness: spy on FileHandle.read (serial, so no other test's reads are counted)

test.serial('the reader reads the header on open and then only the bytes of the tensors asked for', async (t) => {
  const dir = await tempDir(t);
  const mib = 1 << 20;
  const file = path.join(dir, 'lazy.safetensors');
  await writeSafetensors(
    file,
    ['a', 'b', 'c', 'd'].map((name, i) => ({ name, shape: [mib / 4], data: new Float32Array(mib / 4).fill(i) })),
  );
  const size = (await stat(file)).size;

  const probe = await open(file, 'r');
  const proto = Object.getPrototypeOf(probe) as { read: (...args: unknown[]) => Promise<{ bytesRead: number }> };
  await probe.close();
  const original = proto.read;
  const reads: Array<{ position: number; bytes: number }> = [];
  proto.read = async function (this: unknown, ...args: unknown[]) {
    const result = await original.apply(this, args);
    reads.push({ position: Number(args[3]), bytes: result.bytesRead });
    return result;
  };
  t.teardown(() => {
    proto.read = original;
  });

  const reader = await openSafetensors(file);
  const headerBytes = reads.reduce((n, r) => n + r.bytes, 0);
  const info = reader.tensors.get('c');
  const dataStart = reader.tensors.get('a')?.offset ?? 0;
  t.truthy(info);
  t.is(info?.offset, dataStart + 2 * mib);
  t.true(headerBytes <= dataStart + 64, `open read ${headerBytes} bytes: the header (${dataStart - 8} bytes), not the data`);

  reads.length = 0;
  const c = await reader.readFloat32('c');
  t.true(c.data.every((v) => v === 2));
  t.deepEqual(reads, [{ position: info?.offset, bytes: mib }], 'one positioned read of exactly tensor c');
  await reader.close();
  t.true(size > 4 * mib);
});

// ---------------------------------------------------------------------------------------
// Sharded checkpoints

async function writeShards(dir: string): Promise<{ index: string; values: Record<string, number[]> }> {
  const values = { 'model.a': [1, 2, 3], 'model.b': [4, 5], 'model.c': [-1, -2, -3, -4] };
  await writeFixture(
    dir,
    'model-00001-of-00002.safetensors',
    buildFile(
      [
        { name: 'model.a', dtype: 'F32', shape: [3], bytes: f32le(values['model.a']) },
        { name: 'model.b', dtype: 'F32', shape: [2], bytes: f32le(values['model.b']) },
      ],
      { format: 'pt' },
    ),
  );
  await writeFixture(
    dir,
    'model-00002-of-00002.safetensors',
    buildFile([{ name: 'model.c', dtype: 'F64', shape: [2, 2], bytes: f64le(values['model.c']) }], { format: 'pt', shard: '2' }),
  );
  const index = await writeFixture(
    dir,
    'model.safetensors.index.json',
    JSON.stringify({
      metadata: { total_size: 52 },
      weight_map: {
        'model.a': 'model-00001-of-00002.safetensors',
        'model.b': 'model-00001-of-00002.safetensors',
        'model.c': 'model-00002-of-00002.safetensors',
      },
    }),
  );
  return { index, values };
}

test('a sharded checkpoint opens as one reader, from its index or from its folder', async (t) => {
  const dir = await tempDir(t);
  const { index, values } = await writeShards(dir);
  for (const target of [index, dir]) {
    const reader = await openSafetensors(target);
    t.is(reader.path, index);
    t.deepEqual(reader.files, [path.join(dir, 'model-00001-of-00002.safetensors'), path.join(dir, 'model-00002-of-00002.safetensors')]);
    t.deepEqual([...reader.tensors.keys()], ['model.a', 'model.b', 'model.c']);
    t.is(reader.tensors.get('model.c')?.file, path.join(dir, 'model-00002-of-00002.safetensors'));
    for (const [name, expected] of Object.entries(values)) t.deepEqual([...(await reader.readFloat32(name)).data], expected);
    t.deepEqual({ ...reader.metadata }, { format: 'pt', shard: '2' });
    t.deepEqual(reader.indexMetadata, { total_size: 52 });
    await reader[Symbol.asyncDispose]();
    await refused(t, () => reader.readFloat32('model.a'), 'ERR_CLOSED', dir);
  }
});

test('a folder with one .safetensors file and no index opens that file', async (t) => {
  const dir = await tempDir(t);
  const file = await writeFixture(dir, 'adapter_model.safetensors', buildFile([{ name: 'x', dtype: 'F32', shape: [1], bytes: f32le([3]) }]));
  await writeFixture(dir, 'adapter_config.json', '{}');
  const reader = await openSafetensors(dir);
  t.is(reader.path, file);
  t.deepEqual([...(await reader.readFloat32('x')).data], [3]);
  await reader.close();
});

// ---------------------------------------------------------------------------------------
// Bad inputs: each a typed error naming the file (and the tensor, where there is one)

const good = () =>
  layout([
    { name: 'first', dtype: 'F32', shape: [2, 2], bytes: f32le([1, 2, 3, 4]) },
    { name: 'second', dtype: 'BF16', shape: [4], bytes: u16le([0x3f80, 0x3f80, 0x3f80, 0x3f80]) },
  ]);

type Header = Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>;

async function badFile(t: ExecutionContext, bytes: Uint8Array | string): Promise<string> {
  return writeFixture(await tempDir(t), 'bad.safetensors', bytes);
}

test('bad input: truncated file (cut inside the data section)', async (t) => {
  const { header, data } = good();
  const whole = assemble(padHeader(JSON.stringify(header)), data);
  const file = await badFile(t, whole.subarray(0, whole.byteLength - 3));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', file, 'second');
});

test('bad input: file shorter than the 8-byte length field', async (t) => {
  const file = await badFile(t, u8s([1, 2, 3]));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', file);
});

test('bad input: header length past the end of the file', async (t) => {
  const { header, data } = good();
  const text = padHeader(JSON.stringify(header));
  const file = await badFile(t, assemble(text, data, text.byteLength + data.byteLength + 1));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', file);
});

test('bad input: header length over 100 MB', async (t) => {
  const file = await badFile(t, concat(u64le(100_000_001), utf8('{}'.padEnd(64))));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', file);
  const huge = await badFile(t, concat(u64le(2n ** 64n - 1n), utf8('{}')));
  await refused(t, () => openSafetensors(huge), 'ERR_SAFETENSORS_FORMAT', huge);
});

test('bad input: header is not JSON', async (t) => {
  const file = await badFile(t, assemble(padHeader('{"first": {"dtype": "F32",'), new Uint8Array(16)));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', file);
});

test('bad input: offsets overlapping', async (t) => {
  const { header, data } = good();
  (header as Header).second = { dtype: 'F32', shape: [2], data_offsets: [8, 16] }; // inside "first" [0, 16]
  const file = await badFile(t, assemble(padHeader(JSON.stringify(header)), data));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', file, 'second');
  const error = await t.throwsAsync(() => openSafetensors(file));
  t.true(error?.message.includes('"first"'), 'names the other tensor too');
});

test('bad input: offsets out of range', async (t) => {
  const { header, data } = good();
  (header as Header).second = { dtype: 'BF16', shape: [4], data_offsets: [24, 32] }; // data is 24 bytes
  const file = await badFile(t, assemble(padHeader(JSON.stringify(header)), data));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', file, 'second');
});

test('bad input: byte length not matching dtype x shape', async (t) => {
  const { header, data } = good();
  (header as Header).first = { dtype: 'F32', shape: [2, 3], data_offsets: [0, 16] };
  const file = await badFile(t, assemble(padHeader(JSON.stringify(header)), data));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', file, 'first');
});

test('bad input: unknown dtype', async (t) => {
  const { header, data } = good();
  (header as Header).second = { dtype: 'Q4_K', shape: [4], data_offsets: [16, 24] };
  const file = await badFile(t, assemble(padHeader(JSON.stringify(header)), data));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', file, 'second');
});

test('bad input: shape with a negative or fractional dimension', async (t) => {
  const { header, data } = good();
  (header as Header).first = { dtype: 'F32', shape: [-2, -2], data_offsets: [0, 16] };
  const file = await badFile(t, assemble(padHeader(JSON.stringify(header)), data));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', file, 'first');
});

test('bad input: __metadata__ that is not a map of strings', async (t) => {
  const { header, data } = good();
  header.__metadata__ = { total: 5 };
  const file = await badFile(t, assemble(padHeader(JSON.stringify(header)), data));
  await refused(t, () => openSafetensors(file), 'ERR_SAFETENSORS_FORMAT', file);
});

test('bad input: Git LFS pointer instead of the file', async (t) => {
  const pointer =
    'version https://git-lfs.github.com/spec/v1\n' +
    'oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n' +
    'size 12345678\n';
  const file = await badFile(t, pointer);
  await refused(t, () => openSafetensors(file), 'ERR_LFS_POINTER', file);
  const error = await t.throwsAsync(() => openSafetensors(file));
  t.regex(error?.message ?? '', /Git LFS pointer.*size 12345678/);
});

test('bad input: shard index naming a missing file', async (t) => {
  const dir = await tempDir(t);
  const { index } = await writeShards(dir);
  const text = JSON.parse(await readFile(index, 'utf8')) as { weight_map: Record<string, string> };
  text.weight_map['model.d'] = 'model-00003-of-00002.safetensors';
  await writeFile(index, JSON.stringify(text));
  const missing = path.join(dir, 'model-00003-of-00002.safetensors');
  await refused(t, () => openSafetensors(index), 'ERR_NOT_FOUND', index);
  const error = await t.throwsAsync(() => openSafetensors(index));
  t.true(error?.message.includes(missing), `names the shard too: ${error?.message}`);
});

test('bad input: shard index placing a tensor in a shard that lacks it', async (t) => {
  const dir = await tempDir(t);
  const { index } = await writeShards(dir);
  const text = JSON.parse(await readFile(index, 'utf8')) as { weight_map: Record<string, string> };
  text.weight_map['model.c'] = 'model-00001-of-00002.safetensors';
  await writeFile(index, JSON.stringify(text));
  await refused(t, () => openSafetensors(index), 'ERR_SAFETENSORS_FORMAT', index, 'model.c');
});

test('bad input: missing file, missing tensor', async (t) => {
  const dir = await tempDir(t);
  const absent = path.join(dir, 'absent.safetensors');
  await refused(t, () => openSafetensors(absent), 'ERR_NOT_FOUND', absent);
  const file = await writeFixture(dir, 'one.safetensors', buildFile([{ name: 'x', dtype: 'F32', shape: [1], bytes: f32le([1]) }]));
  const reader = await openSafetensors(file);
  await refused(t, () => reader.readFloat32('y'), 'ERR_TENSOR_NOT_FOUND', file, 'y');
  await refused(t, () => reader.readRaw('y'), 'ERR_TENSOR_NOT_FOUND', file, 'y');
  await reader.close();
});

// ---------------------------------------------------------------------------------------
// Writer failures leave nothing behind

test('writer: mismatched data length is refused, no file written, no temporary file left', async (t) => {
  const dir = await tempDir(t);
  const out = path.join(dir, 'out.safetensors');
  await refused(
    t,
    () => writeSafetensors(out, [{ name: 'w', shape: [2, 3], data: new Float32Array(5) }]),
    'ERR_SHAPE_MISMATCH',
    out,
    'w',
  );
  t.deepEqual(await listing(dir), []);

  // Discovered mid-way: the first tensors are already written when the lazy one lies.
  await refused(
    t,
    () =>
      writeSafetensors(out, [
        { name: 'a', shape: [4], data: new Float32Array(4) },
        { name: 'b', shape: [4], data: () => new Float32Array(3) },
        { name: 'c', shape: [2], dtype: 'I32', bytes: new Int32Array(2) },
      ]),
    'ERR_SHAPE_MISMATCH',
    out,
    'b',
  );
  t.deepEqual(await listing(dir), []);

  await refused(t, () => writeSafetensors(out, [{ name: 'r', shape: [3], dtype: 'I64', bytes: new Uint8Array(23) }]), 'ERR_SHAPE_MISMATCH', out, 'r');
  t.deepEqual(await listing(dir), []);
});

test('writer: a throwing producer leaves an existing destination untouched and no temporary file', async (t) => {
  const dir = await tempDir(t);
  const out = path.join(dir, 'out.safetensors');
  await writeSafetensors(out, [{ name: 'old', shape: [1], data: new Float32Array([1]) }]);
  const before = await readFile(out);
  const boom = new Error('producer failed');
  const thrown = await t.throwsAsync(() =>
    writeSafetensors(out, [
      { name: 'a', shape: [1], data: new Float32Array([2]) },
      {
        name: 'b',
        shape: [1],
        data: async () => {
          throw boom;
        },
      },
    ]),
  );
  t.is(thrown, boom, "the producer's own error");
  t.deepEqual(await readFile(out), before);
  t.deepEqual(await listing(dir), ['out.safetensors']);
});

test('writer: producers are called one at a time, in layout order', async (t) => {
  const dir = await tempDir(t);
  let active = 0;
  let most = 0;
  const order: string[] = [];
  const entries = ['c', 'a', 'b'].map((name) => ({
    name,
    shape: [64],
    data: async () => {
      active++;
      most = Math.max(most, active);
      order.push(name);
      await new Promise((resolve) => setTimeout(resolve, 5));
      active--;
      return new Float32Array(64);
    },
  }));
  await writeSafetensors(path.join(dir, 'lazy.safetensors'), entries, { dtype: 'F16' });
  t.is(most, 1);
  t.deepEqual(order, ['a', 'b', 'c']);
});

test('writer: bad entries and options are refused before anything is written', async (t) => {
  const dir = await tempDir(t);
  const out = path.join(dir, 'out.safetensors');
  const x = new Float32Array(2);
  const cases: Array<[string, () => Promise<void>, ErrorCode]> = [
    ['duplicate names', () => writeSafetensors(out, [{ name: 'a', shape: [2], data: x }, { name: 'a', shape: [2], data: x }]), 'ERR_INVALID_ARGUMENT'],
    ['reserved name', () => writeSafetensors(out, [{ name: '__metadata__', shape: [2], data: x }]), 'ERR_INVALID_ARGUMENT'],
    ['negative dimension', () => writeSafetensors(out, [{ name: 'a', shape: [-2], data: x }]), 'ERR_INVALID_ARGUMENT'],
    ['unknown raw dtype', () => writeSafetensors(out, [{ name: 'a', shape: [2], dtype: 'Q8' as SafetensorsDType, bytes: new Uint8Array(2) }]), 'ERR_INVALID_ARGUMENT'],
    ['unknown output dtype', () => writeSafetensors(out, [{ name: 'a', shape: [2], data: x }], { dtype: 'I8' as 'F32' }), 'ERR_INVALID_ARGUMENT'],
    ['non-string metadata', () => writeSafetensors(out, [], { metadata: { a: 1 as unknown as string } }), 'ERR_INVALID_ARGUMENT'],
    ['unknown option', () => writeSafetensors(out, [], { dtypes: 'F16' } as never), 'ERR_INVALID_ARGUMENT'],
    ['missing folder', () => writeSafetensors(path.join(dir, 'nope', 'out.safetensors'), []), 'ERR_NOT_FOUND'],
  ];
  for (const [title, call, code] of cases) {
    const error = await t.throwsAsync(call, { instanceOf: EigenLoraxError }, title);
    t.is((error as EigenLoraxError | undefined)?.code, code, title);
  }
  t.deepEqual(await listing(dir), []);
  await mkdir(path.join(dir, 'sub'));
  await writeSafetensors(path.join(dir, 'sub', 'ok.safetensors'), []);
  t.deepEqual(await listing(path.join(dir, 'sub')), ['ok.safetensors']);
});

test('openSmallSafetensors: a file under its limit (1 MiB here), read whole at open, gives what openSafetensors reads (every float dtype as f32, raw bytes, metadata) and keeps that copy; a larger file is read as it is then', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  const g = gaussian(rng(seed));
  const values = (n: number) => Float32Array.from({ length: n }, g);
  const file = path.join(dir, 'small.safetensors');
  const entries: SafetensorsEntry[] = [
    { name: 'f32', shape: [3, 5], data: values(15) },
    { name: 'f16', shape: [7], data: values(7), dtype: 'F16' },
    { name: 'bf16', shape: [2, 3], data: values(6), dtype: 'BF16' },
    { name: 'f64', shape: [4], data: values(4), dtype: 'F64' },
    { name: 'i32', shape: [2], dtype: 'I32', bytes: new Int32Array([-7, 2147483647]) },
    { name: 'empty', shape: [0, 3], data: new Float32Array(0) },
  ];
  await writeSafetensors(file, entries, { metadata: { note: `seed ${seed}` }, digest: true });
  const readAll = async (open: (f: string) => Promise<Awaited<ReturnType<typeof openSafetensors>>>, f: string) => {
    const reader = await open(f);
    try {
      const floats = await Promise.all(['f32', 'f16', 'bf16', 'f64', 'empty'].map((n) => reader.readFloat32(n)));
      const raws = await Promise.all([...reader.tensors.keys()].map((n) => reader.readRaw(n)));
      return { metadata: reader.metadata, floats, raws, digest: await verifyDigest(reader) };
    } finally {
      await reader.close();
    }
  };
  const small = (f: string) => openSmallSafetensors(f, 1 << 20);
  const whole = await readAll(small, file);
  t.deepEqual(whole, await readAll(openSafetensors, file), `seed ${seed}`);
  t.is(whole.digest, 'verified');
  t.deepEqual(whole.floats[0]!.data, (entries[0] as { data: Float32Array }).data);

  // The copy is taken at open: a change afterwards is not seen (openSafetensors would see it).
  const reader = await small(file);
  const before = (await reader.readFloat32('f32')).data;
  const handle = await open(file, 'r+');
  const at = reader.tensors.get('f32')!.offset;
  await handle.write(new Uint8Array(60).fill(0x7f), 0, 60, at);
  await handle.close();
  t.deepEqual((await reader.readFloat32('f32')).data, before);
  await reader.close();
  await t.throwsAsync(reader.readFloat32('f32'), { code: 'ERR_CLOSED' });

  // Over 1 MiB: read from the file when asked, as openSafetensors does.
  const big = path.join(dir, 'big.safetensors');
  await writeSafetensors(big, [{ name: 'x', shape: [1 << 18], data: values(1 << 18) }, { name: 'y', shape: [4], data: values(4) }]);
  const bigReader = await small(big);
  const y = bigReader.tensors.get('y')!;
  const h = await open(big, 'r+');
  await h.write(f32le([1, 2, 3, 4]), 0, 16, y.offset);
  await h.close();
  t.deepEqual([...(await bigReader.readFloat32('y')).data], [1, 2, 3, 4]);
  await bigReader.close();

  // Not a file: the same typed errors as openSafetensors.
  await t.throwsAsync(small(path.join(dir, 'missing.safetensors')), { code: 'ERR_NOT_FOUND' });
  await t.throwsAsync(small(dir), { code: 'ERR_IO' });
});

// A file read whole hashes its tensors' bytes as one span (heldData) when they lie back to
// back, and tensor by tensor when the file has gaps: bytes between tensors are not part of
// the digest, bytes of a tensor are.
test('verifyDigest over a file read whole: one span when the tensors are back to back, tensor by tensor around gaps; a changed tensor byte is ERR_INTEGRITY either way', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  const g = gaussian(rng(seed));
  const a = f32le(Float32Array.from({ length: 6 }, g));
  const b = f32le(Float32Array.from({ length: 4 }, g));
  const write = async (name: string, gap: number) => {
    const tensors = [
      { name: 'a', dtype: 'F32', shape: [2, 3] },
      { name: 'b', dtype: 'F32', shape: [4] },
    ];
    const hash = createHash('sha256').update(digestPreamble({}, tensors));
    hash.update(a);
    hash.update(b);
    const header = {
      __metadata__: { [DATA_DIGEST_KEY]: hash.digest('hex') },
      a: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] },
      b: { dtype: 'F32', shape: [4], data_offsets: [24 + gap, 40 + gap] },
    };
    const headerBytes = padHeader(JSON.stringify(header));
    const file = await writeFixture(dir, name, assemble(headerBytes, concat(a, new Uint8Array(gap).fill(9), b)));
    return { file, dataStart: 8 + headerBytes.byteLength };
  };
  const flip = async (file: string, at: number) => {
    const h = await open(file, 'r+');
    const one = new Uint8Array(1);
    await h.read(one, 0, 1, at);
    one[0] = one[0]! ^ 0x20;
    await h.write(one, 0, 1, at);
    await h.close();
  };
  const verify = async (file: string) => {
    const reader = await openSmallSafetensors(file, 1 << 20);
    try {
      return { held: reader.heldData(), result: await verifyDigest(reader) };
    } finally {
      await reader.close();
    }
  };
  const packed = await write('packed.safetensors', 0);
  const ok = await verify(packed.file);
  t.is(ok.result, 'verified', `seed ${seed}`);
  t.deepEqual(ok.held, concat(a, b));
  await flip(packed.file, packed.dataStart + 30);
  await t.throwsAsync(verify(packed.file), { code: 'ERR_INTEGRITY' });

  const gapped = await write('gapped.safetensors', 4);
  const fine = await verify(gapped.file);
  t.is(fine.held, null);
  t.is(fine.result, 'verified');
  await flip(gapped.file, gapped.dataStart + 25); // in the gap: not part of the digest
  t.is((await verify(gapped.file)).result, 'verified');
  await flip(gapped.file, gapped.dataStart + 30); // in tensor b
  await t.throwsAsync(verify(gapped.file), { code: 'ERR_INTEGRITY' });

  // f32 tensors of a file read whole are views of its copy: each its own bytes.
  const reader = await openSmallSafetensors((await write('views.safetensors', 0)).file, 1 << 20);
  const first = (await reader.readFloat32('a')).data;
  first.fill(0);
  t.deepEqual((await reader.readFloat32('b')).data, new Float32Array(b.buffer, b.byteOffset, 4));
  await t.throwsAsync(reader.readFloat32('b', { nope: 1 } as never), { code: 'ERR_INVALID_ARGUMENT' });
  await t.throwsAsync(reader.readFloat32('b', { out: new Float32Array(3) }), { code: 'ERR_SHAPE_MISMATCH' });
  await reader.close();
  await t.throwsAsync(reader.readFloat32('b'), { code: 'ERR_CLOSED' });
});
