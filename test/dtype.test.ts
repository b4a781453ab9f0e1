/**
 * dtype conversions (bf16, f16, f64 <-> f32) against references written here with exact
 * float64 arithmetic (round to nearest, ties to even), bit by bit. NaN bit patterns are
 * read and written through Uint32Array views only: a JS number may canonicalise NaN.
 *
 * The native f16 code has two paths, an F16C/SIMD one for runs of 8 elements and a scalar
 * one for the rest, so values are converted both in long arrays and in arrays of fewer
 * than 8 elements.
 */
import test from 'ava';
import { EigenLoraxError, fromFloat32, setThreads, toFloat32, type DType } from '../lib/index.js';
import { freshSeed, rng } from './helpers/random.js';

// Several threads even on a small machine, so arrays above one 65536-element chunk take
// the multi-threaded path.
setThreads(4);

// ---------------------------------------------------------------------------------------
// Bits and references

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** The f32 whose bits are `bits`, as a number (exact; NaN payloads are not kept). */
function f32Of(bits: number): number {
  u32buf[0] = bits >>> 0;
  return f32buf[0]!;
}
function bitsOf(value: number): number {
  f32buf[0] = value;
  return u32buf[0]!;
}

/** A Float32Array holding exactly these bit patterns. */
function f32FromBits(bits: ArrayLike<number>): Float32Array {
  const u = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i]! >>> 0;
  return new Float32Array(u.buffer);
}
function bitsOfArray(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

const hex = (v: number, digits = 8) => `0x${(v >>> 0).toString(16).padStart(digits, '0')}`;

function roundHalfEven(m: number): number {
  const f = Math.floor(m);
  const d = m - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function floorLog2(a: number): number {
  let e = Math.floor(Math.log2(a));
  while (2 ** e > a) e--;
  while (2 ** (e + 1) <= a) e++;
  return e;
}

interface Format {
  mantissaBits: number;
  exponentBits: number;
}
const F16: Format = { mantissaBits: 10, exponentBits: 5 };
const BF16: Format = { mantissaBits: 7, exponentBits: 8 };

/**
 * Nearest value of a binary format to `v` (a double), ties to even, as its bit pattern:
 * computed from the value, not by bit tricks. Returns -1 for NaN (any NaN is right).
 */
function encodeReference(v: number, f: Format): number {
  if (Number.isNaN(v)) return -1;
  const bias = (1 << (f.exponentBits - 1)) - 1;
  const emin = 1 - bias;
  const infBits = ((1 << f.exponentBits) - 1) << f.mantissaBits;
  const sign = v < 0 || Object.is(v, -0) ? 1 << (f.mantissaBits + f.exponentBits) : 0;
  const a = Math.abs(v);
  if (a === Infinity) return sign | infBits;
  if (a < 2 ** emin) return sign | roundHalfEven(a * 2 ** (f.mantissaBits - emin)); // subnormal (or min normal)
  let e = floorLog2(a);
  let q = roundHalfEven(a * 2 ** (f.mantissaBits - e)); // in [2^p, 2^(p+1)]
  if (q === 2 ** (f.mantissaBits + 1)) {
    e++;
    q /= 2;
  }
  if (e > bias) return sign | infBits;
  return sign | ((e + bias) << f.mantissaBits) | (q - 2 ** f.mantissaBits);
}

/** Value of an f16 bit pattern, from the definition. */
function f16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0x1f) return m === 0 ? sign * Infinity : Number.NaN;
  if (e === 0) return sign * m * 2 ** -24;
  return sign * (1024 + m) * 2 ** (e - 25);
}

const isF16NaN = (h: number) => (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
const isBf16NaN = (h: number) => (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
const isF32NaN = (u: number) => (u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0;

/** Converts in arrays of 7 elements (below one SIMD run: the scalar path only). */
async function encodeScalar(src: Float32Array, dtype: 'f16' | 'bf16'): Promise<Uint16Array> {
  const out = new Uint16Array(src.length);
  const parts = [];
  for (let i = 0; i < src.length; i += 7) {
    const begin = i;
    parts.push(fromFloat32(src.subarray(begin, begin + 7), dtype).then((r) => out.set(r, begin)));
  }
  await Promise.all(parts);
  return out;
}
async function decodeScalar(src: Uint16Array, dtype: 'f16' | 'bf16'): Promise<Float32Array> {
  const out = new Float32Array(src.length);
  const parts = [];
  for (let i = 0; i < src.length; i += 7) {
    const begin = i;
    parts.push(toFloat32(src.subarray(begin, begin + 7), dtype).then((r) => out.set(r, begin)));
  }
  await Promise.all(parts);
  return out;
}

const allPatterns = Uint16Array.from({ length: 65536 }, (_, i) => i);

// ---------------------------------------------------------------------------------------
// bf16

test('bf16 -> f32 is exact for every bf16 pattern, and f32 -> bf16 gives the pattern back', async (t) => {
  for (const [path, decoded] of [
    ['vector', await toFloat32(allPatterns, 'bf16')],
    ['scalar', await decodeScalar(allPatterns, 'bf16')],
  ] as const) {
    const bits = bitsOfArray(decoded);
    const bad: string[] = [];
    for (let h = 0; h < 65536; h++) {
      const u = bits[h]!;
      const ok = isBf16NaN(h) ? isF32NaN(u) && u >>> 31 === h >> 15 : u === h << 16 >>> 0;
      if (!ok) bad.push(`${hex(h, 4)} -> ${hex(u)}`);
    }
    t.deepEqual(bad.slice(0, 10), [], `${path}: ${bad.length} bf16 patterns decode wrongly`);
    const back = await fromFloat32(decoded, 'bf16');
    const badBack: string[] = [];
    for (let h = 0; h < 65536; h++) {
      const ok = isBf16NaN(h) ? isBf16NaN(back[h]!) && back[h]! >> 15 === h >> 15 : back[h] === h;
      if (!ok) badBack.push(`${hex(h, 4)} -> ${hex(back[h]!, 4)}`);
    }
    t.deepEqual(badBack.slice(0, 10), [], `${path}: ${badBack.length} patterns do not round-trip`);
  }
});

/** [f32 bits, expected bf16 bits, why] */
const bf16Cases: Array<[number, number, string]> = [
  // Exactly halfway: lower 16 bits 0x8000; the kept bf16 mantissa decides (ties to even).
  [0x3f808000, 0x3f80, 'tie, even mantissa (1 + 2^-8): stays'],
  [0x3f818000, 0x3f82, 'tie, odd mantissa: rounds up to even'],
  [0x3f828000, 0x3f82, 'tie, even mantissa'],
  [0xbf818000, 0xbf82, 'negative tie, odd mantissa'],
  [0xbf808000, 0xbf80, 'negative tie, even mantissa'],
  [0x3fff8000, 0x4000, 'tie, odd all-ones mantissa: carries into the exponent'],
  [0x3f808001, 0x3f81, 'just above a tie'],
  [0x3f817fff, 0x3f81, 'just below a tie'],
  [0x3f80ffff, 0x3f81, 'round up'],
  [0x3f800001, 0x3f80, 'round down'],
  // Overflow near the largest finite bf16 (0x7f7f = 3.3895e38).
  [0x7f7f7fff, 0x7f7f, 'below the tie with 2^128: largest finite'],
  [0x7f7f8000, 0x7f80, 'tie between max (odd) and 2^128: Inf'],
  [0x7f7fffff, 0x7f80, 'f32 max: Inf'],
  [0xff7f8000, 0xff80, 'negative overflow: -Inf'],
  [0x7f7e8000, 0x7f7e, 'tie, even, near max: stays finite'],
  [0x7f800000, 0x7f80, '+Inf'],
  [0xff800000, 0xff80, '-Inf'],
  // Zeros and subnormals.
  [0x00000000, 0x0000, '+0'],
  [0x80000000, 0x8000, '-0'],
  [0x80000001, 0x8000, 'tiny negative: -0'],
  [0x00000001, 0x0000, 'smallest f32 subnormal: 0'],
  [0x00008000, 0x0000, 'subnormal tie, even: 0'],
  [0x00018000, 0x0002, 'subnormal tie, odd: up'],
  [0x00008001, 0x0001, 'subnormal above tie'],
  [0x00010000, 0x0001, 'smallest bf16 subnormal, exact'],
  [0x007fffff, 0x0080, 'largest f32 subnormal: rounds to the smallest normal'],
  [0x807f7fff, 0x807f, 'negative subnormal'],
];

test('f32 -> bf16 rounds to nearest even: ties, overflow, zeros, subnormals, Inf', async (t) => {
  const src = f32FromBits(bf16Cases.map((c) => c[0]));
  const vector = await fromFloat32(src, 'bf16');
  const scalar = await encodeScalar(src, 'bf16');
  bf16Cases.forEach(([u, want, why], i) => {
    const what = `${hex(u)} (${f32Of(u)}) ${why}`;
    t.is(hex(vector[i]!, 4), hex(want, 4), what);
    t.is(hex(scalar[i]!, 4), hex(want, 4), `${what} (alone)`);
    t.is(encodeReference(f32Of(u), BF16), want, `reference: ${what}`); // checks the reference itself
  });
});

test('f32 -> bf16: NaN stays NaN, including signalling NaNs whose top mantissa bits are zero', async (t) => {
  const nans = [0x7f800001, 0xff800001, 0x7f80ffff, 0x7f810000, 0x7f808000, 0x7fc00000, 0xffc00000, 0x7fffffff, 0xffffffff, 0x7fbfffff];
  const src = f32FromBits(nans);
  for (const out of [await fromFloat32(src, 'bf16'), await encodeScalar(src, 'bf16')]) {
    nans.forEach((u, i) => {
      const h = out[i]!;
      t.true(isBf16NaN(h), `${hex(u)} -> ${hex(h, 4)} is not a NaN`);
      t.is(h >> 15, u >>> 31, `${hex(u)}: sign`);
    });
  }
});

test('f32 -> bf16 matches the reference for random f32 values', async (t) => {
  const seed = freshSeed();
  const random = rng(seed);
  const n = 200_003;
  const bits = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const r = Math.floor(random() * 2 ** 32);
    // Half fully random patterns, a quarter ties (lower half 0x8000), a quarter near ties.
    bits[i] = i % 4 < 2 ? r : i % 4 === 2 ? (r & 0xffff0000) | 0x8000 : (r & 0xffff0000) | (0x7ffe + (r & 3));
  }
  const src = new Float32Array(bits.buffer);
  const out = await fromFloat32(src, 'bf16');
  const bad: string[] = [];
  for (let i = 0; i < n; i++) {
    const want = encodeReference(src[i]!, BF16);
    const ok = want === -1 ? isBf16NaN(out[i]!) : out[i] === want;
    if (!ok) bad.push(`${hex(bits[i]!)} -> ${hex(out[i]!, 4)}, want ${hex(want, 4)}`);
  }
  t.deepEqual(bad.slice(0, 10), [], `seed ${seed}: ${bad.length} of ${n} wrong`);
});

// ---------------------------------------------------------------------------------------
// f16

test('f16 -> f32 is exact for all 65536 patterns, on both paths, and round-trips back to f16', async (t) => {
  for (const [path, decoded] of [
    ['vector', await toFloat32(allPatterns, 'f16')],
    ['scalar', await decodeScalar(allPatterns, 'f16')],
  ] as const) {
    const bad: string[] = [];
    for (let h = 0; h < 65536; h++) {
      const want = f16Value(h);
      const ok = Number.isNaN(want) ? Number.isNaN(decoded[h]) : Object.is(decoded[h], want);
      if (!ok) bad.push(`${hex(h, 4)} -> ${decoded[h]}, want ${want}`);
    }
    t.deepEqual(bad.slice(0, 10), [], `${path}: ${bad.length} f16 patterns decode wrongly`);
    for (const [backPath, back] of [
      ['vector', await fromFloat32(decoded, 'f16')],
      ['scalar', await encodeScalar(decoded, 'f16')],
    ] as const) {
      const badBack: string[] = [];
      for (let h = 0; h < 65536; h++) {
        const ok = isF16NaN(h) ? isF16NaN(back[h]!) && back[h]! >> 15 === h >> 15 : back[h] === h;
        if (!ok) badBack.push(`${hex(h, 4)} -> ${hex(back[h]!, 4)}`);
      }
      t.deepEqual(badBack.slice(0, 10), [], `decode ${path}, encode ${backPath}: ${badBack.length} do not round-trip`);
    }
  }
});

// Regression: the scalar path once kept signalling NaNs signalling while the F16C path
// quietened them, so the bits depended on the element's position in the array.
test('f16 -> f32: every NaN decodes to the same quiet NaN (sign and payload kept) on both paths', async (t) => {
  const nans = allPatterns.filter(isF16NaN);
  const vector = bitsOfArray(await toFloat32(nans, 'f16'));
  const scalar = bitsOfArray(await decodeScalar(nans, 'f16'));
  const bad: string[] = [];
  nans.forEach((h, i) => {
    const want = ((h & 0x8000) << 16) | 0x7fc00000 | ((h & 0x3ff) << 13);
    if (vector[i] !== want >>> 0 || scalar[i] !== want >>> 0) {
      bad.push(`${hex(h, 4)} -> vector ${hex(vector[i]!)}, scalar ${hex(scalar[i]!)}, want ${hex(want)}`);
    }
  });
  t.deepEqual(bad.slice(0, 6), [], `${bad.length} of ${nans.length} f16 NaNs`);
});

/** [f32 value, expected f16 bits, why] */
const f16Cases: Array<[number, number, string]> = [
  [65504, 0x7bff, 'max finite'],
  [Math.fround(65519.99), 0x7bff, 'just below the overflow tie'],
  [65520, 0x7c00, 'tie between max (odd) and 2^16: Inf'],
  [65536, 0x7c00, 'overflow'],
  [1e10, 0x7c00, 'overflow'],
  [3.4028234663852886e38, 0x7c00, 'f32 max'],
  [-65520, 0xfc00, 'negative overflow'],
  [-65504, 0xfbff, 'negative max'],
  [Infinity, 0x7c00, '+Inf'],
  [-Infinity, 0xfc00, '-Inf'],
  [0, 0x0000, '+0'],
  [-0, 0x8000, '-0'],
  [1, 0x3c00, 'one'],
  [1 + 2 ** -11, 0x3c00, 'tie, even: down'],
  [1 + 3 * 2 ** -11, 0x3c02, 'tie, odd: up'],
  [1 + 2 ** -11 + 2 ** -23, 0x3c01, 'just above a tie'],
  [2 - 2 ** -11, 0x4000, 'tie at the top of a binade: carries into the exponent'],
  [2049, 0x6800, 'integer tie, even'],
  [2051, 0x6802, 'integer tie, odd'],
  [2 ** -14, 0x0400, 'smallest normal'],
  [2 ** -14 - 2 ** -25, 0x0400, 'subnormal tie 1023.5: up to the smallest normal'],
  [2 ** -14 - 3 * 2 ** -25, 0x03fe, 'subnormal tie 1022.5: down'],
  [2 ** -24, 0x0001, 'smallest subnormal'],
  [2 ** -25, 0x0000, 'tie between 0 and the smallest subnormal: 0'],
  [2 ** -25 + 2 ** -48, 0x0001, 'just above that tie'],
  [-(2 ** -25), 0x8000, 'negative tie: -0'],
  [3 * 2 ** -25, 0x0002, 'subnormal tie 1.5: 2'],
  [5 * 2 ** -25, 0x0002, 'subnormal tie 2.5: 2'],
  [2 ** -26, 0x0000, 'tiny: 0'],
  [Math.fround(1e-8), 0x0000, 'tiny: 0'],
  [Math.fround(4e-8), 0x0001, 'rounds up to the smallest subnormal'],
  [2 ** -149, 0x0000, 'f32 subnormal: 0'],
  [-(2 ** -149), 0x8000, 'negative f32 subnormal: -0'],
  [Math.fround(0.1), 0x2e66, '0.1'],
  [Math.fround(-3.14159), 0xc248, '-pi'],
];

test('f32 -> f16 edge cases: max, 65519.99, 65520 -> Inf, ties, subnormals, tiny values, zeros', async (t) => {
  const src = Float32Array.from(f16Cases.map((c) => c[0]));
  // Repeat the cases so they sit both inside SIMD runs and in the scalar tail.
  const vector = await fromFloat32(Float32Array.from([...src, ...src, ...src]), 'f16');
  const scalar = await encodeScalar(src, 'f16');
  f16Cases.forEach(([v, want, why], i) => {
    t.is(Math.fround(v), v, `case ${v} is an f32 value`);
    const what = `${v} ${why}`;
    for (const k of [0, 1, 2]) t.is(hex(vector[k * src.length + i]!, 4), hex(want, 4), `${what} (copy ${k})`);
    t.is(hex(scalar[i]!, 4), hex(want, 4), `${what} (alone)`);
    t.is(hex(encodeReference(v, F16), 4), hex(want, 4), `reference: ${what}`);
  });
});

test('f32 -> f16: NaN stays NaN (sign kept), including payloads the f16 mantissa cannot hold', async (t) => {
  const nans = [0x7f800001, 0xff800001, 0x7f801fff, 0x7f802000, 0x7fc00000, 0xffc00000, 0x7fffffff, 0x7fa00000];
  const src = f32FromBits([...nans, ...nans]);
  for (const [path, out] of [['vector', await fromFloat32(src, 'f16')], ['scalar', await encodeScalar(src, 'f16')]] as const) {
    src.forEach((_, i) => {
      const u = nans[i % nans.length]!;
      t.true(isF16NaN(out[i]!), `${path}: ${hex(u)} -> ${hex(out[i]!, 4)} is not a NaN`);
      t.is(out[i]! >> 15, u >>> 31, `${path}: ${hex(u)} sign`);
    });
  }
});

test('f32 -> f16 matches the exact reference for random values across the whole range', async (t) => {
  const seed = freshSeed();
  const random = rng(seed);
  const values: number[] = [];
  for (let i = 0; i < 60_000; i++) values.push(f32Of(Math.floor(random() * 2 ** 32))); // any f32
  for (let i = 0; i < 60_000; i++) {
    // Concentrated on the f16 range, subnormals included: |v| in [2^-27, 2^17).
    const v = (1 + random()) * 2 ** Math.floor(-27 + random() * 44);
    values.push(Math.fround(random() < 0.5 ? -v : v));
  }
  for (let i = 0; i < 30_000; i++) {
    // Exactly halfway between two adjacent finite f16 values, and one f32 ulp either side.
    const h = Math.floor(random() * 0x7bff);
    const mid = (f16Value(h) + f16Value(h + 1)) / 2;
    t.is(Math.fround(mid), mid);
    const u = bitsOf(mid);
    const sign = random() < 0.5 ? 0x80000000 : 0;
    for (const d of [0, -1, 1]) if (u + d > 0) values.push(f32Of((sign | (u + d)) >>> 0));
  }
  const src = Float32Array.from(values);
  const vector = await fromFloat32(src, 'f16');
  const scalarSlice = src.subarray(0, 21_000);
  const scalar = await encodeScalar(scalarSlice, 'f16');
  const bad: string[] = [];
  for (let i = 0; i < src.length; i++) {
    const want = encodeReference(src[i]!, F16);
    const check = (got: number, path: string) => {
      const ok = want === -1 ? isF16NaN(got) : got === want;
      if (!ok) bad.push(`${path} ${src[i]} (${hex(bitsOf(src[i]!))}) -> ${hex(got, 4)}, want ${hex(want, 4)}`);
    };
    check(vector[i]!, 'vector');
    if (i < scalar.length) check(scalar[i]!, 'scalar');
  }
  t.deepEqual(bad.slice(0, 10), [], `seed ${seed}: ${bad.length} wrong of ${src.length}`);
});

// ---------------------------------------------------------------------------------------
// f64 and f32

test('f64 -> f32 matches Math.fround for random and edge values', async (t) => {
  const seed = freshSeed();
  const random = rng(seed);
  const edges = [
    Number.NaN, Infinity, -Infinity, 0, -0, 1e300, -1e300, 1e-300, -1e-300, 1e-40, -1e-40, 2 ** -149, 2 ** -150,
    3 * 2 ** -150, 2 ** -150 + 2 ** -200, 2 ** -126, 2 ** -126 - 2 ** -150, 3.4028234663852886e38, 3.4028235677973366e38,
    3.4028235677973362e38, Number.MAX_VALUE, Number.MIN_VALUE, 1 + 2 ** -24, 1 + 3 * 2 ** -24, 0.1, -1 / 3, 16777217,
  ];
  const words = new Uint32Array(2 * 100_000);
  for (let i = 0; i < words.length; i++) words[i] = Math.floor(random() * 2 ** 32);
  const randomDoubles = new Float64Array(words.buffer); // any f64, NaNs included
  const scaled = Array.from({ length: 50_000 }, () => (random() - 0.5) * 2 ** Math.floor(-160 + random() * 300));
  const src = Float64Array.from([...edges, ...randomDoubles, ...scaled]);
  const out = await toFloat32(src, 'f64');
  const bad: string[] = [];
  src.forEach((v, i) => {
    if (!Object.is(out[i], Math.fround(v))) bad.push(`${v} -> ${out[i]}, want ${Math.fround(v)}`);
  });
  t.deepEqual(bad.slice(0, 10), [], `seed ${seed}: ${bad.length} wrong`);
  // And each edge alone.
  for (const v of edges) t.true(Object.is((await toFloat32(Float64Array.of(v), 'f64'))[0], Math.fround(v)), `${v} alone`);
});

test('f32 -> f64 and f32 -> f32 are exact copies', async (t) => {
  const seed = freshSeed();
  const random = rng(seed);
  const bits = Uint32Array.from({ length: 100_001 }, () => Math.floor(random() * 2 ** 32));
  bits.set([0x80000000, 0x00000001, 0x7f800000, 0xff800000, 0x007fffff], 0);
  const src = new Float32Array(bits.buffer);
  const f64 = await fromFloat32(src, 'f64');
  t.true(f64 instanceof Float64Array);
  const bad = [];
  for (let i = 0; i < src.length; i++) if (!Object.is(f64[i], src[i])) bad.push(i);
  t.deepEqual(bad.slice(0, 10), [], `seed ${seed}: f32 -> f64`);
  for (const copy of [await fromFloat32(src, 'f32'), await toFloat32(src, 'f32')]) {
    t.not(copy, src);
    t.not(copy.buffer, src.buffer);
    const cb = bitsOfArray(copy);
    // f32 -> f32 is a byte copy: even NaN payloads are kept.
    t.true(cb.every((u, i) => u === bits[i]), `seed ${seed}: f32 copy differs`);
  }
});

// ---------------------------------------------------------------------------------------
// Input forms and argument errors

test('inputs as typed arrays, unaligned Uint8Array views and DataViews give the same result', async (t) => {
  const seed = freshSeed();
  const random = rng(seed);
  const n = 1001; // long enough for SIMD runs, plus a tail
  const halves = Uint16Array.from({ length: n }, () => Math.floor(random() * 65536));
  const halfBytes = new Uint8Array(halves.buffer);
  const unaligned = new Uint8Array(halfBytes.length + 3);
  unaligned.set(halfBytes, 1);
  const view = unaligned.subarray(1, 1 + halfBytes.length);
  t.is(view.byteOffset, 1);
  for (const dtype of ['f16', 'bf16'] as const) {
    const base = bitsOfArray(await toFloat32(halves, dtype));
    const forms: Array<[string, ArrayBufferView]> = [
      ['Uint8Array at byteOffset 1', view],
      ['DataView at byteOffset 1', new DataView(unaligned.buffer, 1, halfBytes.length)],
      ['DataView', new DataView(halves.buffer)],
      ['Int16Array', new Int16Array(halves.buffer)],
      ['Uint8Array', halfBytes],
    ];
    for (const [name, src] of forms) {
      const got = bitsOfArray(await toFloat32(src, dtype));
      t.is(got.length, n);
      t.true(got.every((u, i) => u === base[i]), `seed ${seed}: ${dtype} from ${name}`);
    }
  }
  // f64 from unaligned bytes.
  const doubles = Float64Array.from({ length: 333 }, () => (random() - 0.5) * 1e6);
  const db = new Uint8Array(doubles.buffer);
  const dUnaligned = new Uint8Array(db.length + 8);
  dUnaligned.set(db, 3);
  const want = Float32Array.from(doubles, Math.fround);
  for (const src of [dUnaligned.subarray(3, 3 + db.length), new DataView(dUnaligned.buffer, 3, db.length)]) {
    t.deepEqual(await toFloat32(src, 'f64'), want, `seed ${seed}: f64 from offset 3`);
  }
});

// Regression: unaligned f32 sources were once refused although lib/dtype.ts promises
// "alignment not required".
test('toFloat32(.., "f32") accepts unaligned byte views and DataViews', async (t) => {
  const values = Float32Array.of(1.5, -2, 3.25, 1e-40, -0);
  const bytes = new Uint8Array(values.byteLength + 4);
  bytes.set(new Uint8Array(values.buffer), 1);
  t.deepEqual(await toFloat32(new DataView(values.buffer), 'f32'), values);
  t.deepEqual(await toFloat32(new Uint8Array(values.buffer), 'f32'), values);
  t.deepEqual(await toFloat32(bytes.subarray(1, 1 + values.byteLength), 'f32'), values);
  t.deepEqual(await toFloat32(new DataView(bytes.buffer, 1, values.byteLength), 'f32'), values);
});

test('byte lengths that are not a whole number of elements are refused with ERR_SHAPE_MISMATCH', async (t) => {
  const cases: Array<[ArrayBufferView, DType]> = [
    [new Uint8Array(3), 'f16'],
    [new Uint8Array(5), 'bf16'],
    [new Uint8Array(12), 'f64'],
    [new Uint8Array(6), 'f32'],
    [new DataView(new ArrayBuffer(9)), 'f16'],
    [new Uint16Array(3), 'f64'],
  ];
  for (const [src, dtype] of cases) {
    await t.throwsAsync(toFloat32(src, dtype), { instanceOf: EigenLoraxError, code: 'ERR_SHAPE_MISMATCH', message: /src/ }, `${src.byteLength} bytes as ${dtype}`);
  }
});

test('unknown dtypes and non-array sources are refused with ERR_INVALID_ARGUMENT', async (t) => {
  const invalid = (message: RegExp) => ({ instanceOf: EigenLoraxError, code: 'ERR_INVALID_ARGUMENT', message });
  for (const dtype of ['f8', 'fp16', 'F16', 'float32', '', undefined, 16]) {
    await t.throwsAsync(toFloat32(new Uint16Array(4), dtype as DType), invalid(/dtype/), `toFloat32 ${String(dtype)}`);
    await t.throwsAsync(fromFloat32(new Float32Array(4), dtype as 'f16'), invalid(/dtype/), `fromFloat32 ${String(dtype)}`);
  }
  await t.throwsAsync(toFloat32([1, 2] as unknown as Uint16Array, 'f16'), invalid(/src/));
  await t.throwsAsync(toFloat32(new ArrayBuffer(4) as unknown as Uint16Array, 'f16'), invalid(/src/));
  await t.throwsAsync(fromFloat32(new Float64Array(4) as unknown as Float32Array, 'f16'), invalid(/src/));
  await t.throwsAsync(fromFloat32(new Uint16Array(4) as unknown as Float32Array, 'bf16'), invalid(/src/));
});

test('empty inputs give empty outputs of the right type', async (t) => {
  t.is((await toFloat32(new Uint16Array(0), 'f16')).length, 0);
  t.is((await toFloat32(new Uint8Array(0), 'f64')).length, 0);
  const h = await fromFloat32(new Float32Array(0), 'bf16');
  t.true(h instanceof Uint16Array);
  t.is(h.length, 0);
  t.true((await fromFloat32(new Float32Array(0), 'f64')) instanceof Float64Array);
});

// ---------------------------------------------------------------------------------------
// Large arrays: the multi-threaded path (65536-element chunks) equals small conversions.

test('3 million elements convert identically to small slices converted one by one', async (t) => {
  const seed = freshSeed();
  const random = rng(seed);
  const n = 3_000_017;
  const words = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    // Mostly values in the f16 range, some arbitrary patterns (NaN, Inf, subnormals).
    words[i] = i % 8 === 0 ? Math.floor(random() * 2 ** 32) : bitsOf((random() - 0.5) * 2 ** Math.floor(-26 + random() * 43));
  }
  const f32 = new Float32Array(words.buffer);
  const halves = Uint16Array.from(words, (w) => w & 0xffff);
  const big = {
    f16: await fromFloat32(f32, 'f16'),
    bf16: await fromFloat32(f32, 'bf16'),
    f64: await fromFloat32(f32, 'f64'),
    fromF16: bitsOfArray(await toFloat32(halves, 'f16')),
    fromBf16: bitsOfArray(await toFloat32(halves, 'bf16')),
  };
  // Slices of uneven lengths at uneven offsets, covering the whole array.
  let mismatches = 0;
  const first: string[] = [];
  const note = (what: string, i: number) => {
    mismatches++;
    if (first.length < 5) first.push(`${what} at ${i}`);
  };
  for (let begin = 0; begin < n; ) {
    const end = Math.min(n, begin + 1 + Math.floor(random() * 60_000));
    const part = f32.subarray(begin, end);
    const [f16, bf16, f64] = await Promise.all([fromFloat32(part, 'f16'), fromFloat32(part, 'bf16'), fromFloat32(part, 'f64')]);
    const [fromF16, fromBf16] = (
      await Promise.all([toFloat32(halves.subarray(begin, end), 'f16'), toFloat32(halves.subarray(begin, end), 'bf16')])
    ).map(bitsOfArray);
    for (let i = 0; i < end - begin; i++) {
      const g = begin + i;
      if (f16[i] !== big.f16[g]) note('f16', g);
      if (bf16[i] !== big.bf16[g]) note('bf16', g);
      if (!Object.is(f64[i], big.f64[g])) note('f64', g);
      if (fromF16![i] !== big.fromF16[g]) note('from f16', g);
      if (fromBf16![i] !== big.fromBf16[g]) note('from bf16', g);
    }
    begin = end;
  }
  t.is(mismatches, 0, `seed ${seed}: ${first.join(', ')}`);
  // Spot-check the big results against the references too.
  const bad: string[] = [];
  for (let k = 0; k < 20_000; k++) {
    const i = Math.floor(random() * n);
    const w16 = encodeReference(f32[i]!, F16), wb16 = encodeReference(f32[i]!, BF16);
    if (w16 === -1 ? !isF16NaN(big.f16[i]!) : big.f16[i] !== w16) bad.push(`f16 at ${i}`);
    if (wb16 === -1 ? !isBf16NaN(big.bf16[i]!) : big.bf16[i] !== wb16) bad.push(`bf16 at ${i}`);
    const h = halves[i]!;
    const v = f16Value(h);
    if (Number.isNaN(v) ? !isF32NaN(big.fromF16[i]!) : big.fromF16[i] !== bitsOf(v)) bad.push(`from f16 at ${i}`);
  }
  t.deepEqual(bad.slice(0, 10), [], `seed ${seed}`);
});
