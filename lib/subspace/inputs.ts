/**
 * The adapters a subspace is built from or projected: paths (opened here, read module by
 * module, closed at the end), opened adapters (read module by module, left open) or
 * adapters in memory, behind one interface. Also: streamed sha256 of source files, a
 * small concurrency pool, and the per-module seed.
 */
import { createHash } from 'node:crypto';
import { open, stat, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { ioError } from '../io/files.js';
import type { Matrix } from '../matrix.js';
import type { NativeFileFactor } from '../native/ops.js';
import { OpenedAdapter, openAdapter, type FactorBuffers } from '../adapters/open.js';
import type { AdapterFormat, LoraAdapter, LoraModuleInfo, OpenAdapterOptions } from '../adapters/types.js';
import { invalid } from '../validate.js';
import { assignShards, type ShardSpec } from './shard-plan.js';
import type { SourceFile, SubspaceSource } from './types.js';

/** A module's factors as files the native kernels read (see OpenedAdapter.locateModule). */
export type ModuleFiles = { A: NativeFileFactor; B: NativeFileFactor };

/** An adapter given to the subspace functions: a path, an opened adapter or one in memory. */
export type AdapterInput = string | OpenedAdapter | LoraAdapter;

/** The module fields the subspace code uses. */
export type ModuleInfo = Pick<
  LoraModuleInfo,
  'name' | 'rank' | 'alpha' | 'scale' | 'rslora' | 'layout' | 'convKernel' | 'inFeatures' | 'outFeatures' | 'fanInFanOut'
> & {
  /** The factors' stored dtypes (absent for adapters built in memory without them). */
  dtypes?: { A: string; B: string };
};

/**
 * Paths kept open for a whole build; reads of the others open and close them each time,
 * once per module (with 1000 adapters and 256 kept open, reopening was 93% of the build's
 * wall time in bench/build). Node raises its soft descriptor limit to the hard limit at
 * start-up (commonly 4096 or far more on Linux), so 4096 leaves room for everything else.
 */
export const DEFAULT_MAX_OPEN_FILES = 4096;

/** One input adapter, normalised. */
export class InputAdapter {
  readonly index: number;
  name: string;
  readonly kind: 'path' | 'opened' | 'loaded';
  readonly format: AdapterFormat;
  readonly baseModel: string | null;
  /** Absolute path opened, or null. */
  readonly path: string | null;
  /** Files to hash (absolute). */
  readonly files: readonly string[];
  readonly modules: ReadonlyMap<string, ModuleInfo>;
  readonly #read: (name: string, into?: FactorBuffers) => Promise<{ A: Matrix; B: Matrix }>;
  readonly #locate: (name: string) => ModuleFiles | null;

  constructor(fields: {
    index: number;
    name: string;
    kind: 'path' | 'opened' | 'loaded';
    format: AdapterFormat;
    baseModel: string | null;
    path: string | null;
    files: readonly string[];
    modules: ReadonlyMap<string, ModuleInfo>;
    read: (name: string, into?: FactorBuffers) => Promise<{ A: Matrix; B: Matrix }>;
    locate?: (name: string) => ModuleFiles | null;
  }) {
    this.index = fields.index;
    this.name = fields.name;
    this.kind = fields.kind;
    this.format = fields.format;
    this.baseModel = fields.baseModel;
    this.path = fields.path;
    this.files = fields.files;
    this.modules = fields.modules;
    this.#read = fields.read;
    this.#locate = fields.locate ?? (() => null);
  }

  /**
   * Where module `name`'s factors are in this adapter's open file, for the native kernels
   * to read themselves; null where they are read with {@link read} (adapters in memory,
   * files not kept open, dtypes the kernels do not read).
   */
  locate(name: string): ModuleFiles | null {
    return this.modules.has(name) ? this.#locate(name) : null;
  }

  /**
   * Reads one module's factors (checked against the recorded shapes), from a file into
   * `into` when given (sized from the recorded shapes); an adapter in memory returns its own.
   */
  async read(name: string, into?: FactorBuffers): Promise<{ A: Matrix; B: Matrix }> {
    const info = this.modules.get(name);
    if (info === undefined) throw new EigenLoraxError(`internal: adapter ${this.name} has no module ${name}`, 'ERR_INTERNAL');
    const f = await this.#read(name, into);
    if (f.A.rows !== info.rank || f.A.cols !== info.inFeatures || f.B.rows !== info.outFeatures || f.B.cols !== info.rank) {
      throw new EigenLoraxError(
        `${this.path ?? this.name}, module ${JSON.stringify(name)}: the factors read (A ${f.A.rows} x ${f.A.cols}, ` +
          `B ${f.B.rows} x ${f.B.cols}) differ from the header (rank ${info.rank}, ${info.inFeatures} -> ${info.outFeatures}); ` +
          'was the file changed while it was read?',
        'ERR_IO',
      );
    }
    return f;
  }

  source(files: SourceFile[]): SubspaceSource {
    return { name: this.name, path: this.path, format: this.format, baseModel: this.baseModel, files };
  }
}

function infoOf(m: LoraModuleInfo): ModuleInfo {
  return {
    name: m.name,
    rank: m.rank,
    alpha: m.alpha,
    scale: m.scale,
    rslora: m.rslora,
    layout: m.layout,
    ...(m.convKernel ? { convKernel: [...m.convKernel] } : {}),
    inFeatures: m.inFeatures,
    outFeatures: m.outFeatures,
    fanInFanOut: m.fanInFanOut,
    ...(m.dtypes ? { dtypes: { A: m.dtypes.A, B: m.dtypes.B } } : {}),
  };
}

/** The name of an adapter from its path: the folder for a standard weights file name. */
function nameFromPath(p: string): string {
  const base = path.basename(p);
  if (base === 'adapter_model.safetensors' || base === 'pytorch_lora_weights.safetensors') return path.basename(path.dirname(p));
  return base.endsWith('.safetensors') ? base.slice(0, -'.safetensors'.length) : base;
}

/**
 * Keeps up to `capacity` path adapters open for the whole build: the first `capacity`
 * opened stay open; a read of any other opens it, reads and closes it again. (With many
 * files read in the same order module after module, a least-recently-used cache would miss
 * every time; this keeps a fixed share of them open and reopens only the rest.)
 */
class OpenPool {
  readonly #capacity: number;
  readonly #open = new Map<string, OpenedAdapter>();
  readonly #opening = new Map<string, Promise<OpenedAdapter>>();
  readonly #options: OpenAdapterOptions;

  constructor(capacity: number, options: OpenAdapterOptions) {
    this.#capacity = capacity;
    this.#options = options;
  }

  async borrow<T>(where: string, body: (adapter: OpenedAdapter) => Promise<T>): Promise<T> {
    const kept = this.#open.get(where) ?? (await this.#opening.get(where));
    if (kept !== undefined) return body(kept);
    if (this.#open.size + this.#opening.size < this.#capacity) {
      const opening = openAdapter(where, this.#options);
      this.#opening.set(where, opening);
      let adapter: OpenedAdapter;
      try {
        adapter = await opening;
      } finally {
        this.#opening.delete(where);
      }
      this.#open.set(where, adapter);
      return body(adapter);
    }
    const transient = await openAdapter(where, this.#options);
    try {
      return await body(transient);
    } finally {
      await transient.close();
    }
  }

  /** The adapter at `where` when it is kept open (its descriptors stay valid until closeAll). */
  kept(where: string): OpenedAdapter | undefined {
    return this.#open.get(where);
  }

  async closeAll(): Promise<void> {
    await Promise.allSettled([...this.#opening.values()]);
    const open = [...this.#open.values()];
    this.#open.clear();
    await Promise.all(open.map((a) => a.close().catch(() => undefined)));
  }
}

/** The normalised inputs and what to close when done. */
export interface InputSet {
  adapters: InputAdapter[];
  close(): Promise<void>;
}

export interface OpenInputsOptions {
  /** Names for the adapters (unique), instead of the ones derived from their paths. */
  names?: readonly string[];
  /** Options for the paths this opens. */
  open?: OpenAdapterOptions;
  maxOpenFiles?: number;
}

function isLoraAdapter(value: unknown): value is LoraAdapter {
  return typeof value === 'object' && value !== null && (value as LoraAdapter).modules instanceof Map && 'format' in value;
}

/** Normalises `inputs` (paths are opened with bounded concurrency, headers only). */
export async function openInputs(inputs: readonly AdapterInput[], what: string, options: OpenInputsOptions = {}): Promise<InputSet> {
  if (!Array.isArray(inputs)) throw invalid('an array of adapters (paths, opened or loaded adapters)', what, inputs);
  inputs.forEach((input, i) => {
    if (typeof input === 'string') {
      if (input.length === 0) throw invalid('a path (non-empty string)', `${what}[${i}]`, input);
    } else if (!(input instanceof OpenedAdapter) && !isLoraAdapter(input)) {
      throw invalid('a path, an OpenedAdapter or a loaded adapter', `${what}[${i}]`, input);
    }
  });
  if (options.names !== undefined) {
    if (!Array.isArray(options.names) || options.names.length !== inputs.length || !options.names.every((n) => typeof n === 'string' && n.length > 0)) {
      throw invalid(`an array of ${inputs.length} non-empty names`, 'options.names', options.names);
    }
    if (new Set(options.names).size !== options.names.length) throw invalid('unique names', 'options.names', options.names);
  }
  const pool = new OpenPool(options.maxOpenFiles ?? DEFAULT_MAX_OPEN_FILES, options.open ?? {});
  const adapters: InputAdapter[] = new Array(inputs.length);
  try {
    await runPool(
      inputs.map((_, i) => i),
      8,
      async (i) => {
        const input = inputs[i] as AdapterInput;
        if (typeof input === 'string') {
          const where = path.resolve(input);
          const made = await pool.borrow(where, async (opened) => {
            return new InputAdapter({
              index: i,
              name: nameFromPath(opened.source.path),
              kind: 'path',
              format: opened.format,
              baseModel: opened.baseModel,
              path: opened.source.path,
              files: [...opened.source.files],
              modules: new Map([...opened.modules].map(([n, m]) => [n, infoOf(m)])),
              read: (name, into) => pool.borrow(where, (again) => readFrom(again, name, where, into)),
              locate: (name) => pool.kept(where)?.locateModule(name) ?? null,
            });
          });
          adapters[i] = made;
        } else if (input instanceof OpenedAdapter) {
          adapters[i] = new InputAdapter({
            index: i,
            name: nameFromPath(input.source.path),
            kind: 'opened',
            format: input.format,
            baseModel: input.baseModel,
            path: input.source.path,
            files: [...input.source.files],
            modules: new Map([...input.modules].map(([n, m]) => [n, infoOf(m)])),
            read: (name, into) => readFrom(input, name, input.source.path, into),
            locate: (name) => input.locateModule(name),
          });
        } else {
          const modules = new Map<string, ModuleInfo>();
          for (const [n, m] of input.modules) {
            if (typeof m !== 'object' || m === null || typeof m.A !== 'object' || typeof m.B !== 'object') {
              throw invalid('a module with factors A and B', `${what}[${i}].modules[${JSON.stringify(n)}]`, m);
            }
            const info = infoOf({ ...m, name: n, inFeatures: m.A.cols, outFeatures: m.B.rows, rank: m.A.rows });
            if (m.B.cols !== m.A.rows) {
              throw new EigenLoraxError(
                `${what}[${i}].modules[${JSON.stringify(n)}]: A is ${m.A.rows} x ${m.A.cols} but B is ${m.B.rows} x ${m.B.cols}`,
                'ERR_SHAPE_MISMATCH',
              );
            }
            if (typeof m.scale !== 'number' || !Number.isFinite(m.scale)) {
              throw invalid('a finite number', `${what}[${i}].modules[${JSON.stringify(n)}].scale`, m.scale);
            }
            modules.set(n, info);
          }
          const src = input.source;
          adapters[i] = new InputAdapter({
            index: i,
            name: src?.path ? nameFromPath(src.path) : `adapter-${i}`,
            kind: 'loaded',
            format: input.format,
            baseModel: input.baseModel ?? null,
            path: src?.path ?? null,
            files: src ? [...src.files] : [],
            modules,
            read: async (name) => {
              const m = input.modules.get(name)!;
              return { A: m.A, B: m.B };
            },
          });
        }
      },
    );
  } catch (error) {
    await pool.closeAll();
    throw error;
  }
  // Unique names: explicit ones, else derived ones with a #k suffix on repeats.
  if (options.names !== undefined) {
    adapters.forEach((a, i) => (a.name = options.names![i] as string));
  } else {
    const used = new Set<string>();
    for (const a of adapters) {
      let name = a.name;
      for (let k = 2; used.has(name); k++) name = `${a.name}#${k}`;
      used.add(name);
      a.name = name;
    }
  }
  return { adapters, close: () => pool.closeAll() };
}

async function readFrom(opened: OpenedAdapter, name: string, where: string, into?: FactorBuffers): Promise<{ A: Matrix; B: Matrix }> {
  const handle = opened.modules.get(name);
  if (handle === undefined) {
    throw new EigenLoraxError(`${where}: module ${JSON.stringify(name)} is no longer in the file (was it changed?)`, 'ERR_IO');
  }
  return handle.read(into);
}

/**
 * Read buffers kept between files: a stream's fresh 1 MiB chunk per read costs a page fault
 * per 4 KiB, which on virtual machines was two thirds of hashing's time (a 573 MB zoo: 1.4 s
 * wall, 1.9 s CPU with createReadStream; 0.47 s, 0.56 s CPU reading into one buffer).
 */
const hashBuffers: Buffer[] = [];
const HASH_BUFFER_BYTES = 1 << 20;
const KEEP_HASH_BUFFERS = 4;

/** Streamed sha256 of a file. */
export async function sha256File(file: string): Promise<{ sha256: string; bytes: number }> {
  const buffer = hashBuffers.pop() ?? Buffer.allocUnsafeSlow(HASH_BUFFER_BYTES);
  const hash = createHash('sha256');
  let bytes = 0;
  let handle: FileHandle | undefined;
  try {
    handle = await open(file, 'r');
    for (;;) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
      if (bytesRead === 0) break;
      hash.update(buffer.subarray(0, bytesRead)); // consumed here: the buffer is free again
      bytes += bytesRead;
    }
  } catch (cause) {
    throw ioError(cause, file, 'hash');
  } finally {
    await handle?.close().catch(() => undefined);
    if (hashBuffers.length < KEEP_HASH_BUFFERS) hashBuffers.push(buffer);
  }
  return { sha256: hash.digest('hex'), bytes };
}

/**
 * The files whose sha256 shard `share` of a sharded build records, by their index over
 * every adapter's files in order: the files are split between the shards by size, as the
 * modules are (assignShards), so that the sources are hashed once over all the shards, as
 * in the one-machine build. Every shard computes the same split from the same files.
 */
export async function hashShare(adapters: readonly InputAdapter[], share: ShardSpec): Promise<number[]> {
  const files = adapters.flatMap((a) => a.files);
  const sizes = await Promise.all(files.map((f) => stat(f).then((st) => st.size, () => 0)));
  const owner = assignShards(sizes.map((cost, k) => ({ name: String(k), cost })), share.count);
  return files.map((_, k) => k).filter((k) => owner.get(String(k)) === share.index);
}

/**
 * The source records of `adapters`, with every file hashed (two files at a time) unless
 * `hash` is false; with `only`, just those files (indices as hashShare's), the others with
 * bytes and sha256 null. Files of an adapter given in memory that can no longer be read get
 * sha256 null; files of paths and opened adapters must be readable.
 */
export async function describeSources(adapters: readonly InputAdapter[], hash: boolean, only: readonly number[] | null = null): Promise<SubspaceSource[]> {
  const files: SourceFile[][] = adapters.map((a) => a.files.map((f) => ({ path: f, bytes: null, sha256: null })));
  if (hash) {
    const wanted = only === null ? null : new Set(only);
    const jobs = adapters.flatMap((a, i) => a.files.map((_, j) => ({ a, i, j }))).filter((_, k) => wanted === null || wanted.has(k));
    await runPool(jobs, 2, async ({ a, i, j }) => {
      const record = files[i]![j]!;
      try {
        Object.assign(record, await sha256File(record.path));
      } catch (error) {
        if (a.kind !== 'loaded') throw error;
      }
    });
  }
  return adapters.map((a, i) => a.source(files[i]!));
}

/**
 * Runs `body` on every item with at most `limit` running at once. On the first failure no
 * new item starts; the running ones are awaited, then the error is thrown.
 */
export async function runPool<T>(items: readonly T[], limit: number, body: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | null = null;
  const worker = async () => {
    while (failure === null && next < items.length) {
      const i = next++;
      try {
        await body(items[i] as T, i);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failure !== null) throw (failure as { error: unknown }).error;
}

/**
 * The seed module `name` uses when `seed` is the subspace's: FNV-1a (32-bit) of the name
 * added to the seed. Independent of which other modules are built, so filtering modules
 * does not change a module's components. (Its B side uses this seed + 1.)
 */
export function moduleSeed(seed: number, name: string): number {
  let h = 0x811c9dc5;
  const bytes = Buffer.from(name, 'utf8');
  for (const b of bytes) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return seed + h; // seed <= 2^52, so this stays an exact integer
}
