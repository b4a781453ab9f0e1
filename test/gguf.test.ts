/**
 * GGUF reader and writer: files built byte by byte (helpers/gguf-fixtures.ts) are read;
 * files written are read back by our reader and by @huggingface/gguf (an independent
 * reader); Q8_0 / Q4_0 blocks built by hand dequantise to the values ggml gives; every
 * malformed header is a typed error, fast.
 */
import test from 'ava';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError, openGguf, writeGguf, type ErrorCode, type GgufValue } from '../lib/index.js';
import { f32Bytes, ggufStart, GgufBuilder, parseWithHuggingFace } from './helpers/gguf-fixtures.js';
import { freshSeed, gaussian, rng } from './helpers/random.js';
import { tempDir } from './helpers/safetensors-fixtures.js';

async function fixture(dir: string, name: string, bytes: Uint8Array): Promise<string> {
  const file = path.join(dir, name);
  await writeFile(file, bytes);
  return file;
}

async function refused(t: import('ava').ExecutionContext, file: string, pattern: RegExp, code: ErrorCode = 'ERR_GGUF_FORMAT') {
  const started = performance.now();
  const error = await t.throwsAsync(openGguf(file), { instanceOf: EigenLoraxError });
  t.is(error?.code, code, error?.message);
  t.regex(error?.message ?? '', pattern);
  t.true(error?.message.includes(file), 'the message names the file');
  t.true(performance.now() - started < 1000, 'refused fast');
}

test('reads a file built byte by byte: metadata of every type, tensors in numpy order, alignment', async (t) => {
  const dir = await tempDir(t);
  const b = ggufStart(2, 14)
    .kvString('general.architecture', 'llama')
    .kvU32('general.alignment', 64);
  b.str('u8').u32(0).bytes(new Uint8Array([200]));
  b.str('i8').u32(1).bytes(new Uint8Array([0xff]));
  b.str('u16').u32(2).bytes(new Uint8Array([0x34, 0x12]));
  b.str('i16').u32(3).bytes(new Uint8Array([0xfe, 0xff]));
  b.str('i32').u32(5).bytes(new Uint8Array([0xfd, 0xff, 0xff, 0xff]));
  b.kvF32('f32', 0.5);
  b.str('bool').u32(7).bytes(new Uint8Array([1]));
  b.str('u64').u32(10).u64(2n ** 60n + 1n);
  b.str('i64').u32(11).u64(2n ** 64n - 5n);
  const f64 = new Uint8Array(8);
  new DataView(f64.buffer).setFloat64(0, Math.PI, true);
  b.str('f64').u32(12).bytes(f64);
  b.str('tokens').u32(9).u32(8).u64(3).str('<s>').str('▁a').str('');
  b.str('nested').u32(9).u32(9).u64(2).u32(4).u64(1).u32(7).u32(0).u64(2).bytes(new Uint8Array([1, 2]));
  b.tensor('w', [2, 3], 0, 0).tensor('h', [4], 1, 64).padTo(64);
  b.bytes(f32Bytes([1, 2, 3, 4, 5, 6])).padTo(64);
  b.bytes(new Uint8Array(new Uint16Array([0x3c00, 0xc000, 0x3800, 0x0000]).buffer));
  const file = await fixture(dir, 'a.gguf', b.build());
  await using reader = await openGguf(file);
  t.is(reader.version, 3);
  t.is(reader.alignment, 64);
  t.is(reader.getString('general.architecture'), 'llama');
  t.is(reader.get('u8'), 200);
  t.is(reader.get('i8'), -1);
  t.is(reader.get('u16'), 0x1234);
  t.is(reader.get('i16'), -2);
  t.is(reader.get('i32'), -3);
  t.is(reader.get('f32'), 0.5);
  t.is(reader.get('bool'), true);
  t.is(reader.get('u64'), 2n ** 60n + 1n);
  t.is(reader.get('i64'), -5n);
  t.is(reader.get('f64'), Math.PI);
  t.deepEqual(reader.get('tokens'), ['<s>', '▁a', '']);
  t.deepEqual(reader.get('nested'), [[7], [1, 2]]);
  t.deepEqual([...reader.tensors.keys()], ['w', 'h']);
  const w = reader.tensors.get('w');
  t.deepEqual(w?.shape, [2, 3]);
  t.deepEqual(w?.ne, [3, 2]);
  t.is(w?.dtype, 'F32');
  t.deepEqual([...(await reader.readFloat32('w')).data], [1, 2, 3, 4, 5, 6]);
  t.deepEqual([...(await reader.readFloat32('h')).data], [1, -2, 0.5, 0]);
  t.deepEqual([...(await reader.readRaw('h')).bytes], [0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38, 0x00, 0x00]);
});

test('Q8_0 and Q4_0 dequantise as ggml does; other quantized types are refused naming the type', async (t) => {
  const dir = await tempDir(t);
  // Q8_0 block: f16 d = 0.5 (0x3800), q = -16..15
  const q8 = new Uint8Array(34);
  q8.set([0x00, 0x38]);
  for (let j = 0; j < 32; j++) q8[2 + j] = (j - 16) & 0xff;
  // Q4_0 block: d = 2 (0x4000), byte j holds element j (low) and j+16 (high)
  const q4 = new Uint8Array(18);
  q4.set([0x00, 0x40]);
  for (let j = 0; j < 16; j++) q4[2 + j] = (j & 0x0f) | ((15 - j) << 4);
  const b = ggufStart(3, 0).tensor('q8', [1, 32], 8, 0).tensor('q4', [32], 2, 64).tensor('k', [256], 12, 96).padTo(32);
  b.bytes(q8).padTo(32).bytes(q4).padTo(32).bytes(new Uint8Array(144));
  const file = await fixture(dir, 'q.gguf', b.build());
  await using reader = await openGguf(file);
  const x8 = await reader.readFloat32('q8');
  t.deepEqual([...x8.data], Array.from({ length: 32 }, (_, j) => 0.5 * (j - 16)));
  const x4 = await reader.readFloat32('q4');
  const want4 = [...Array.from({ length: 16 }, (_, j) => 2 * (j - 8)), ...Array.from({ length: 16 }, (_, j) => 2 * (15 - j - 8))];
  t.deepEqual([...x4.data], want4);
  const error = await t.throwsAsync(reader.readFloat32('k'), { instanceOf: EigenLoraxError });
  t.is(error?.code, 'ERR_UNSUPPORTED_DTYPE');
  t.regex(error?.message ?? '', /Q4_K/);
  t.is((await reader.readRaw('k')).bytes.byteLength, 144);
});

test('writeGguf: read back by our reader and by @huggingface/gguf, every value type, F32/F16/BF16/raw tensors, aligned and padded', async (t) => {
  const dir = await tempDir(t);
  const seed = freshSeed();
  t.log(`seed ${seed}`);
  const g = gaussian(rng(seed));
  const w = Float32Array.from({ length: 6 * 5 }, () => g());
  const metadata: Array<[string, GgufValue]> = [
    ['general.architecture', { type: 'STRING', value: 'llama' }],
    ['u8', { type: 'UINT8', value: 255 }],
    ['i8', { type: 'INT8', value: -128 }],
    ['u16', { type: 'UINT16', value: 65535 }],
    ['i16', { type: 'INT16', value: -32768 }],
    ['u32', { type: 'UINT32', value: 4294967295 }],
    ['i32', { type: 'INT32', value: -2147483648 }],
    ['f32', { type: 'FLOAT32', value: 1e-5 }],
    ['b', { type: 'BOOL', value: false }],
    ['u64', { type: 'UINT64', value: 2n ** 64n - 1n }],
    ['i64', { type: 'INT64', value: -(2n ** 63n) }],
    ['f64', { type: 'FLOAT64', value: -Math.E }],
    ['tokens', { type: 'ARRAY', itemType: 'STRING', value: ['<unk>', 'é', '▁x'] }],
    ['scores', { type: 'ARRAY', itemType: 'FLOAT32', value: [0, -1.5, 2] }],
    ['types', { type: 'ARRAY', itemType: 'INT32', value: [2, 1, 6] }],
    ['nested', { type: 'ARRAY', itemType: 'ARRAY', value: [{ type: 'ARRAY', itemType: 'UINT8', value: [1, 2] }] }],
  ];
  const q8 = new Uint8Array(34 * 2).fill(3);
  const file = path.join(dir, 'w.gguf');
  await writeGguf(
    file,
    [
      { name: 'blk.0.attn_q.weight', shape: [6, 5], data: w },
      { name: 'h16', shape: [5], data: Float32Array.from([1, 0.1, -2, 65504, 1e-8]), dtype: 'F16' },
      { name: 'hb', shape: [3], data: () => Float32Array.from([1, 1.0078125, -3]), dtype: 'BF16' },
      { name: 'q', shape: [2, 32], dtype: 'Q8_0', bytes: q8 },
    ],
    { metadata },
  );
  t.deepEqual((await readdir(dir)).sort(), ['w.gguf'], 'no temporary file left');
  const size = (await stat(file)).size;
  t.is(size % 32, 0, 'the file ends aligned');

  await using reader = await openGguf(file);
  for (const [key, value] of metadata) t.deepEqual(reader.metadata.get(key), key === 'f32' ? { type: 'FLOAT32', value: Math.fround(1e-5) } : value, key);
  t.deepEqual([...(await reader.readFloat32('blk.0.attn_q.weight')).data], [...w]);
  t.deepEqual(reader.tensors.get('blk.0.attn_q.weight')?.ne, [5, 6]);
  const h = (await reader.readFloat32('h16')).data;
  t.is(h[0], 1);
  t.is(h[3], 65504);
  t.true(Math.abs((h[1] as number) - 0.1) < 1e-4);
  t.deepEqual([...(await reader.readFloat32('hb')).data], [1, 1.0078125, -3]);
  t.deepEqual([...(await reader.readRaw('q')).bytes], [...q8]);
  for (const info of reader.tensors.values()) t.is((info.offset - reader.dataOffset) % 32, 0, `${info.name} aligned`);

  const hf = await parseWithHuggingFace(file);
  t.is(hf.typedMetadata.version.value, 3);
  t.is(hf.typedMetadata['general.architecture']?.value, 'llama');
  t.deepEqual(hf.typedMetadata.tokens?.value, ['<unk>', 'é', '▁x']);
  t.is(hf.typedMetadata.u64?.value, 2n ** 64n - 1n);
  t.deepEqual(
    hf.tensorInfos.map((i) => [i.name, i.shape.map(Number), i.dtype, Number(i.offset)]),
    [...reader.tensors.values()].map((i) => [i.name, [...i.ne], { F32: 0, F16: 1, BF16: 30, Q8_0: 8 }[i.dtype as string], i.offset - reader.dataOffset]),
  );
  t.is(Number(hf.tensorDataOffset), reader.dataOffset);
});

test('writeGguf: a custom alignment is written as general.alignment and honoured', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'a.gguf');
  await writeGguf(file, [{ name: 'a', shape: [3], data: Float32Array.from([1, 2, 3]) }, { name: 'b', shape: [1], data: Float32Array.from([4]) }], { alignment: 128 });
  await using reader = await openGguf(file);
  t.is(reader.alignment, 128);
  t.is(reader.get('general.alignment'), 128);
  t.is(reader.tensors.get('b')!.offset - reader.dataOffset, 128);
  const hf = await parseWithHuggingFace(file);
  t.is(Number(hf.tensorInfos[1]?.offset), 128);
});

test('writeGguf refuses bad input before writing anything', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'x.gguf');
  const cases: Array<[unknown[], object, RegExp]> = [
    [[{ name: 'a', shape: [2], data: new Float32Array(3) }], {}, /needs 2/],
    [[{ name: 'a', shape: [2], data: new Float32Array(2) }, { name: 'a', shape: [2], data: new Float32Array(2) }], {}, /two tensors/],
    [[{ name: 'a', shape: [1, 1, 1, 1, 1], data: new Float32Array(1) }], {}, /1 to 4/],
    [[{ name: 'q', shape: [33], dtype: 'Q8_0', bytes: new Uint8Array(34) }], {}, /block size 32/],
    [[{ name: 'q', shape: [2], dtype: 'Q9', bytes: new Uint8Array(2) }], {}, /ggml type/],
    [[], { metadata: [['k', { type: 'UINT8', value: 256 }]] }, /UINT8/],
    [[], { metadata: [['k', { type: 'STRANGE', value: 1 }]] }, /GGUF value type/],
    [[], { alignment: 24 }, /power of two/],
  ];
  for (const [tensors, options, pattern] of cases) {
    const error = await t.throwsAsync(writeGguf(file, tensors as never, options), { instanceOf: EigenLoraxError });
    t.regex(error?.message ?? '', pattern);
  }
  // A data function that fails mid-write leaves nothing behind.
  await t.throwsAsync(
    writeGguf(file, [
      { name: 'a', shape: [2], data: new Float32Array(2) },
      { name: 'b', shape: [2], data: () => new Float32Array(5) },
    ]),
    { code: 'ERR_SHAPE_MISMATCH' } as never,
  );
  t.deepEqual(await readdir(dir), []);
});

test('malformed files are typed errors naming the file, fast', async (t) => {
  const dir = await tempDir(t);
  const good = ggufStart(1, 1).kvString('general.architecture', 'llama').tensor('w', [2, 2], 0, 0).padTo(32).bytes(f32Bytes([1, 2, 3, 4])).build();
  const cases: Array<[string, Uint8Array, RegExp]> = [
    ['short', good.subarray(0, 10), /shorter than a GGUF header/],
    ['magic', Uint8Array.from([...new TextEncoder().encode('GGML'), ...good.subarray(4)]), /not a GGUF file/],
    ['version', ggufStart(0, 0, 1).build(), /version 1 is not supported/],
    ['big-endian', new GgufBuilder().bytes(new TextEncoder().encode('GGUF')).bytes(Uint8Array.from([0, 0, 0, 3])).u64(0).u64(0).build(), /big-endian/],
    ['truncated data', good.subarray(0, good.byteLength - 4), /past the end of the data section/],
    ['truncated header', good.subarray(0, 50), /runs past the end of the file/],
    ['huge kv count', ggufStart(0, 2 ** 40).build(), /metadata entries, more than the file/],
    ['huge tensor count', ggufStart(2 ** 40, 0).build(), /tensors, more than the file/],
    ['u64 over 2^53', new GgufBuilder().bytes(new TextEncoder().encode('GGUF')).u32(3).u64(2n ** 63n).u64(0).bytes(new Uint8Array(8)).build(), /larger than any file/],
    ['huge string', ggufStart(0, 1).u64(2n ** 50n).bytes(new Uint8Array(16)).build(), /runs past the end of the file/],
    ['huge array', ggufStart(0, 1).str('a').u32(9).u32(4).u64(2n ** 40n).bytes(new Uint8Array(16)).build(), /claims \d+ items/],
    ['unknown value type', ggufStart(0, 1).str('a').u32(13).u32(0).build(), /unknown value type 13/],
    ['bad bool', ggufStart(0, 1).str('a').u32(7).bytes(Uint8Array.from([2])).build(), /BOOL of value 2/],
    ['duplicate key', ggufStart(0, 2).kvU32('a', 1).kvU32('a', 2).build(), /appears twice/],
    ['bad utf-8 key', ggufStart(0, 1).u64(2).bytes(Uint8Array.from([0xc3, 0x28])).u32(4).u32(0).build(), /not valid UTF-8/],
    ['alignment type', ggufStart(0, 1).str('general.alignment').u32(5).u32(32).build(), /must be a UINT32/],
    ['alignment value', ggufStart(0, 1).kvU32('general.alignment', 48).build(), /not a power of two/],
    ['dims', ggufStart(1, 0).str('w').u32(5).u64(1).u64(1).u64(1).u64(1).u64(1).u32(0).u64(0).padTo(32).build(), /5 dimensions/],
    ['zero dims', ggufStart(1, 0).str('w').u32(0).u32(0).u64(0).padTo(32).build(), /0 dimensions/],
    ['unknown ggml type', ggufStart(1, 0).tensor('w', [4], 4, 0).padTo(32).bytes(new Uint8Array(32)).build(), /unknown ggml type 4/],
    ['block size', ggufStart(1, 0).tensor('w', [33], 8, 0).padTo(32).bytes(new Uint8Array(64)).build(), /block size 32/],
    ['misaligned', ggufStart(1, 0).tensor('w', [1], 0, 4).padTo(32).bytes(new Uint8Array(32)).build(), /not a multiple of the alignment/],
    ['overlap', ggufStart(2, 0).tensor('a', [16], 0, 0).tensor('b', [8], 0, 32).padTo(32).bytes(new Uint8Array(64)).build(), /overlaps that of tensor "a"/],
    ['duplicate tensor', ggufStart(2, 0).tensor('a', [1], 0, 0).tensor('a', [1], 0, 32).padTo(32).bytes(new Uint8Array(64)).build(), /two tensors have this name/],
    ['huge dims', ggufStart(1, 0).tensor('a', [2 ** 26, 2 ** 26], 0, 0).padTo(32).build(), /more elements than the file/],
    ['huge offset', ggufStart(1, 0).tensor('a', [1], 0, 2 ** 40).padTo(32).bytes(new Uint8Array(32)).build(), /past the end of the data section/],
  ];
  for (const [name, bytes, pattern] of cases) {
    const file = await fixture(dir, `${name.replace(/\W/g, '_')}.gguf`, bytes);
    await refused(t, file, pattern);
  }
  await refused(t, path.join(dir, 'missing.gguf'), /no such file/, 'ERR_NOT_FOUND');
  // the well-formed file itself opens
  const ok = await openGguf(await fixture(dir, 'good.gguf', good));
  t.deepEqual([...(await ok.readFloat32('w')).data], [1, 2, 3, 4]);
  await ok.close();
  await t.throwsAsync(ok.readFloat32('w'), { code: 'ERR_CLOSED' } as never);
  t.true((await readFile(path.join(dir, 'good.gguf'))).byteLength > 0);
});
