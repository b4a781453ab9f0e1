/**
 * Opening adapters: format detection, the lazy {@link OpenedAdapter} (headers and config
 * read, factors read module by module when asked), and {@link loadAdapter} (open + read
 * everything + close).
 */
import type { Stats } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { exists, fileError, ioError, recoverInterruptedSwap } from '../io/files.js';
import { openSafetensors, safetensorsDtypeBytes, type RawTensor, type SafetensorsDType, type SafetensorsReader } from '../io/safetensors.js';
import type { NativeFileFactor } from '../native/ops.js';
import type { Matrix } from '../matrix.js';
import { argumentPlace, parse } from '../schema.js';
import { invalid } from '../validate.js';
import { OpenAdapterOptionsSchema } from './options.js';
import { firstNonFinite, naturalCompare, nonFiniteError } from './common.js';
import { DIFFUSERS_WEIGHTS_NAME, parseDiffusersKey, planDiffusers } from './diffusers.js';
import { isKohyaKey, planKohya } from './kohya.js';
import { refuseLycoris } from './lycoris.js';
import { kohyaPrefix } from './names.js';
import { PEFT_CONFIG_NAME, PEFT_PREFIX, PEFT_WEIGHTS_NAME, planPeft, readPeftConfig, type PeftConfigFile } from './peft.js';
import type { AdapterPlan, AdapterTensorReader } from './plan.js';
import { openGgufAdapter } from './gguf.js';
import { isGgufFile } from '../io/gguf.js';
import {
  type AdapterFormat,
  type AdapterSource,
  type LoadAdapterOptions,
  type LoraAdapter,
  type LoraModule,
  type LoraModuleInfo,
  type OpenAdapterOptions,
} from './types.js';

/** Buffers to read a module's factors into: A `rank x inFeatures`, B `outFeatures x rank` elements exactly. */
export interface FactorBuffers {
  A: Float32Array;
  B: Float32Array;
}

/** A module of an opened adapter: everything but the factors, which `read()` fetches. */
export interface AdapterModuleHandle extends Readonly<LoraModuleInfo> {
  /**
   * Reads (and checks) this module's factors, into `into` when given (a caller reading
   * many modules reuses its buffers: fresh arrays cost page faults and collections that
   * take several times the read itself).
   */
  read(into?: FactorBuffers): Promise<{ A: Matrix; B: Matrix }>;
}

/** A non-LoRA tensor of an opened adapter. */
export interface AdapterExtraHandle {
  readonly key: string;
  readonly dtype: SafetensorsDType;
  readonly shape: readonly number[];
  readonly byteLength: number;
  read(): Promise<RawTensor>;
}

/**
 * An adapter whose headers and config have been read and checked, but whose factors have
 * not: read them module by module (`modules.get(name).read()`, or {@link readModule}) to
 * keep memory bounded, or all at once with {@link read}. Close it when done
 * (`await using adapter = await openAdapter(path)` closes it for you).
 */
export class OpenedAdapter {
  readonly format: AdapterFormat;
  readonly baseModel: string | null;
  readonly source: AdapterSource;
  readonly config: Readonly<Record<string, unknown>> | null;
  /** The weights file's safetensors `__metadata__` (GGUF: its scalar metadata as text). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Modules by name, in natural name order. */
  readonly modules: ReadonlyMap<string, AdapterModuleHandle>;
  /** Non-LoRA tensors by key, in natural key order. */
  readonly extras: ReadonlyMap<string, AdapterExtraHandle>;
  /** The weights file (absolute). */
  readonly weightsFile: string;

  readonly #reader: AdapterTensorReader;
  readonly #allowNonFinite: boolean;

  /** @internal Use {@link openAdapter}. */
  constructor(plan: AdapterPlan, reader: AdapterTensorReader, source: AdapterSource, weightsFile: string, allowNonFinite: boolean) {
    this.format = plan.format;
    this.baseModel = plan.baseModel;
    this.source = source;
    this.config = plan.config;
    this.metadata = reader.metadata;
    this.weightsFile = weightsFile;
    this.#reader = reader;
    this.#allowNonFinite = allowNonFinite;
    const modules = [...plan.modules].sort((a, b) => naturalCompare(a.name, b.name));
    this.modules = new Map(
      modules.map((info) => {
        const frozen = Object.freeze({
          ...info,
          ...(info.convKernel ? { convKernel: Object.freeze([...info.convKernel]) } : {}),
          shapes: Object.freeze({ A: Object.freeze([...info.shapes.A]), B: Object.freeze([...info.shapes.B]) }),
          keys: Object.freeze({ ...info.keys }),
          dtypes: Object.freeze({ ...info.dtypes }),
          read: (into?: FactorBuffers) => this.#readFactors(info, into),
        });
        return [info.name, frozen as unknown as AdapterModuleHandle];
      }),
    );
    const extras = [...plan.extras].sort(naturalCompare);
    this.extras = new Map(
      extras.map((key) => {
        const info = reader.tensors.get(key)!;
        return [
          key,
          Object.freeze({ key, dtype: info.dtype, shape: info.shape, byteLength: info.byteLength, read: () => reader.readRaw(key) }),
        ];
      }),
    );
  }

  /**
   * @internal Where module `name`'s factors are, for the native subspace kernels to read
   * them on their worker (no typed arrays, no conversion on the JS thread); null where
   * they must be read with `read()` (a dtype or a reader the kernels do not read). Valid
   * while the adapter is open.
   */
  locateModule(name: string): { A: NativeFileFactor; B: NativeFileFactor } | null {
    const info = this.modules.get(name);
    if (info === undefined || this.#reader.locate === undefined) return null;
    const factor = (key: string, rows: number, cols: number): NativeFileFactor | null => {
      const at = this.#reader.locate!(key);
      if (at === null || at.byteLength !== rows * cols * safetensorsDtypeBytes[at.dtype]) return null;
      const dtype = at.dtype === 'F32' ? 'f32' : at.dtype === 'F16' ? 'f16' : 'bf16';
      return { rows, cols, fd: at.fd, offset: at.offset, dtype, where: `${at.file}, tensor ${JSON.stringify(key)}`, checkFinite: !this.#allowNonFinite };
    };
    const A = factor(info.keys.A, info.rank, info.inFeatures);
    const B = factor(info.keys.B, info.outFeatures, info.rank);
    return A === null || B === null ? null : { A, B };
  }

  async #readFactors(info: LoraModuleInfo, into?: FactorBuffers): Promise<{ A: Matrix; B: Matrix }> {
    const [a, b] = await Promise.all([
      this.#reader.readFloat32(info.keys.A, into === undefined ? {} : { out: into.A }),
      this.#reader.readFloat32(info.keys.B, into === undefined ? {} : { out: into.B }),
    ]);
    const A: Matrix = { rows: info.rank, cols: info.inFeatures, data: a.data };
    const B: Matrix = { rows: info.outFeatures, cols: info.rank, data: b.data };
    if (!this.#allowNonFinite) {
      for (const [m, key] of [
        [A, info.keys.A],
        [B, info.keys.B],
      ] as const) {
        const at = firstNonFinite(m.data);
        if (at >= 0) throw nonFiniteError(this.weightsFile, key, m.data, at, m.cols);
      }
    }
    return { A, B };
  }

  /**
   * Reads one factor of one module (row-major, `rank x inFeatures` or
   * `outFeatures x rank`), checked for NaN/Inf unless `allowNonFinite` (default: the
   * adapter's own setting). Used to stream a save tensor by tensor.
   */
  async readFactor(name: string, which: 'A' | 'B', { allowNonFinite = this.#allowNonFinite }: { allowNonFinite?: boolean } = {}): Promise<Float32Array> {
    const info = this.#info(name);
    const key = which === 'A' ? info.keys.A : info.keys.B;
    const { data } = await this.#reader.readFloat32(key);
    if (!allowNonFinite) {
      const at = firstNonFinite(data);
      if (at >= 0) throw nonFiniteError(this.weightsFile, key, data, at, which === 'A' ? info.inFeatures : info.rank);
    }
    return data;
  }

  #info(name: string): AdapterModuleHandle {
    const handle = this.modules.get(name);
    if (handle === undefined) {
      throw new EigenLoraxError(`${this.source.path}: no module ${JSON.stringify(name)} (the adapter has ${this.modules.size})`, 'ERR_INVALID_ARGUMENT');
    }
    return handle;
  }

  /** Reads one module (info and factors). */
  async readModule(name: string): Promise<LoraModule> {
    const handle = this.#info(name);
    const { A, B } = await handle.read();
    return toModule(handle, A, B);
  }

  /** Reads every module and extra into a {@link LoraAdapter}. */
  async read(): Promise<LoraAdapter> {
    const modules = new Map<string, LoraModule>();
    for (const name of this.modules.keys()) modules.set(name, await this.readModule(name));
    const extras = new Map<string, RawTensor>();
    for (const [key, extra] of this.extras) extras.set(key, await extra.read());
    return {
      format: this.format,
      baseModel: this.baseModel,
      source: { path: this.source.path, files: [...this.source.files] },
      modules,
      extras,
      config: this.config === null ? null : structuredClone(this.config as Record<string, unknown>),
      metadata: { ...this.metadata },
    };
  }

  async close(): Promise<void> {
    await this.#reader.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function toModule(info: Readonly<LoraModuleInfo>, A: Matrix, B: Matrix): LoraModule {
  return {
    name: info.name,
    A,
    B,
    rank: info.rank,
    alpha: info.alpha,
    scale: info.scale,
    rslora: info.rslora,
    layout: info.layout,
    ...(info.convKernel ? { convKernel: [...info.convKernel] } : {}),
    shapes: { A: [...info.shapes.A], B: [...info.shapes.B] },
    inFeatures: info.inFeatures,
    outFeatures: info.outFeatures,
    fanInFanOut: info.fanInFanOut,
    keys: { ...info.keys },
    dtypes: { ...info.dtypes },
  };
}

// ---------------------------------------------------------------------------------------
// Detection

interface Located {
  format: AdapterFormat | null;
  weightsFile: string;
  configFile: string | null;
}

/** What is at `target` (links followed), after putting back a folder an interrupted swap left aside. */
async function statTarget(target: string): Promise<Stats> {
  try {
    return await stat(target);
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== 'ENOENT') throw ioError(cause, target, 'open the adapter');
  }
  try {
    // A writer killed in the middle of a folder swap leaves the old version aside.
    await recoverInterruptedSwap(target);
    return await stat(target);
  } catch (cause) {
    throw ioError(cause, target, 'open the adapter');
  }
}

/** Finds the weights (and PEFT config) for `target` (a folder or a .safetensors file; `stats` its own). */
async function locate(target: string, stats: Stats, forced: AdapterFormat | undefined): Promise<Located> {
  if (stats.isDirectory()) {
    const configFile = path.join(target, PEFT_CONFIG_NAME);
    if ((forced === undefined || forced === 'peft') && (await exists(configFile))) {
      const weights = path.join(target, PEFT_WEIGHTS_NAME);
      if (!(await exists(weights))) {
        const bin = path.join(target, 'adapter_model.bin');
        if (await exists(bin)) {
          throw fileError('ERR_ADAPTER_UNSUPPORTED', bin, 'pickled (.bin) adapters are not read; convert it to adapter_model.safetensors');
        }
        throw fileError('ERR_NOT_FOUND', target, `the folder has ${PEFT_CONFIG_NAME} but no ${PEFT_WEIGHTS_NAME}`);
      }
      return { format: 'peft', weightsFile: weights, configFile };
    }
    if (forced === 'peft') throw fileError('ERR_NOT_FOUND', target, `the folder has no ${PEFT_CONFIG_NAME}`);
    const diffusers = path.join(target, DIFFUSERS_WEIGHTS_NAME);
    if (await exists(diffusers)) return { format: forced ?? null, weightsFile: diffusers, configFile: null };
    let names: string[];
    try {
      names = (await readdir(target)).filter((n) => n.endsWith('.safetensors')).sort();
    } catch (cause) {
      throw ioError(cause, target, 'list the folder');
    }
    if (names.length === 1) return { format: forced ?? null, weightsFile: path.join(target, names[0] as string), configFile: null };
    if (names.length === 0) {
      throw fileError('ERR_NOT_FOUND', target, `the folder holds no adapter: no ${PEFT_CONFIG_NAME}, no ${DIFFUSERS_WEIGHTS_NAME}, no .safetensors file`);
    }
    throw fileError('ERR_ADAPTER_FORMAT', target, `the folder holds several .safetensors files (${names.join(', ')}); open one of them`);
  }
  const configFile = path.join(path.dirname(target), PEFT_CONFIG_NAME);
  const hasConfig = await exists(configFile);
  if (forced === 'peft') {
    if (!hasConfig) throw fileError('ERR_NOT_FOUND', target, `a PEFT adapter needs ${configFile} next to its weights`);
    return { format: 'peft', weightsFile: target, configFile };
  }
  return { format: forced ?? null, weightsFile: target, configFile: hasConfig ? configFile : null };
}

/**
 * The metadata key in adapter_model.safetensors of a PEFT folder saved by eigenlorax: the
 * sha256 of the adapter_config.json written with it (PEFT's config format stays PEFT's).
 */
export const PEFT_CONFIG_DIGEST_KEY = 'eigenlorax.config_sha256';

/**
 * Refuses a PEFT folder whose weights were saved with another config (a torn pair: files
 * of two saves): the config gives the scales, so mixing them would load silently wrong.
 * Adapters saved by other tools carry no digest and are read as before.
 */
function checkConfigPair(reader: SafetensorsReader, weightsFile: string, config: PeftConfigFile): void {
  const recorded = reader.metadata[PEFT_CONFIG_DIGEST_KEY];
  if (recorded === undefined || recorded === config.sha256) return;
  throw fileError(
    'ERR_ADAPTER_CONFIG',
    config.file,
    `${weightsFile} was saved with a config of sha256 ${recorded.slice(0, 16)}... but this config's sha256 is ` +
      `${config.sha256.slice(0, 16)}...: the folder holds the files of two different saves (an interrupted or mixed copy)`,
  );
}

/** Decides the format of a weights file from its keys. */
function detectFromKeys(reader: SafetensorsReader, weightsFile: string, configFile: string | null): AdapterFormat {
  const keys = [...reader.tensors.keys()];
  if (keys.some((k) => k.startsWith(PEFT_PREFIX))) {
    if (configFile === null) {
      throw fileError('ERR_NOT_FOUND', weightsFile, `the keys are PEFT's (base_model.model.*) but there is no ${PEFT_CONFIG_NAME} next to the file`);
    }
    return 'peft';
  }
  if (keys.some((k) => isKohyaKey(k) || kohyaPrefix(k.split('.')[0] as string) !== null)) return 'kohya';
  for (const key of keys) {
    try {
      if (parseDiffusersKey(weightsFile, key) !== null) return 'diffusers';
    } catch {
      return 'diffusers';
    }
  }
  if (configFile !== null && path.basename(weightsFile) === PEFT_WEIGHTS_NAME) return 'peft';
  refuseLycoris(weightsFile, keys);
  throw fileError(
    'ERR_ADAPTER_FORMAT',
    weightsFile,
    `no LoRA tensors recognised (${keys.length} tensor${keys.length === 1 ? '' : 's'}; expected PEFT lora_A/lora_B, ` +
      'diffusers lora.down/lora.up or kohya lora_down/lora_up keys)',
  );
}

function checkOptions(options: unknown, name: string): Required<Pick<OpenAdapterOptions, 'allowNonFinite'>> & Pick<OpenAdapterOptions, 'format'> {
  const o = parse(OpenAdapterOptionsSchema, options, argumentPlace(name));
  return { format: o.format, allowNonFinite: o.allowNonFinite === true };
}

/**
 * Opens a LoRA adapter, reading only the config and the safetensors header (and, for
 * kohya and diffusers files with alpha tensors, those scalars). `target`:
 *  - a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`), or the
 *    `.safetensors` file inside it;
 *  - a diffusers `pytorch_lora_weights.safetensors` or its folder;
 *  - a kohya `.safetensors` file (or a folder holding exactly one `.safetensors`).
 * The format is detected from the files and keys unless `options.format` says it.
 *
 * Checked now (EigenLoraxError naming the file and key or field): the config
 * (ERR_ADAPTER_CONFIG), every factor paired with its partner and of a float dtype
 * (ERR_ADAPTER_FORMAT), A and B ranks that agree (ERR_SHAPE_MISMATCH), unsupported
 * features (ERR_ADAPTER_UNSUPPORTED). Checked when factors are read: NaN/Inf
 * (ERR_NON_FINITE unless `allowNonFinite`).
 */
export async function openAdapter(target: string, options: OpenAdapterOptions = {}): Promise<OpenedAdapter> {
  if (typeof target !== 'string' || target.length === 0) throw invalid('a path (non-empty string)', 'path', target);
  const { format: forced, allowNonFinite } = checkOptions(options, 'options');
  const where = path.resolve(target);
  const openGguf = async () => {
    const { plan, reader } = await openGgufAdapter(where);
    return new OpenedAdapter(plan, reader, { path: where, files: [...reader.files] }, reader.path, allowNonFinite);
  };
  if (forced === 'gguf') return openGguf();
  const stats = await statTarget(where);
  // Only a file can be GGUF: a folder is not sniffed (each sniff is three trips through libuv's pool).
  if (forced === undefined && stats.isFile() && (await isGgufFile(where))) return openGguf();
  const located = await locate(where, stats, forced);
  let config: PeftConfigFile | null = null;
  if (located.format === 'peft' && located.configFile !== null) config = await readPeftConfig(located.configFile);
  const reader = await openSafetensors(located.weightsFile);
  try {
    const weightsFile = reader.path;
    const format = located.format ?? detectFromKeys(reader, weightsFile, located.configFile);
    let plan: AdapterPlan;
    if (format === 'peft') {
      const configFile = located.configFile as string;
      config ??= await readPeftConfig(configFile);
      checkConfigPair(reader, weightsFile, config);
      plan = planPeft(reader, weightsFile, configFile, config.config);
    } else if (format === 'diffusers') {
      plan = await planDiffusers(reader, weightsFile);
    } else {
      plan = await planKohya(reader, weightsFile);
    }
    if (plan.modules.length === 0) {
      throw fileError('ERR_ADAPTER_FORMAT', weightsFile, `no LoRA modules found for the ${format} format (${reader.tensors.size} tensors)`);
    }
    const source = { path: where, files: [...plan.configFiles, ...reader.files] };
    return new OpenedAdapter(plan, reader, source, weightsFile, allowNonFinite);
  } catch (error) {
    await reader.close();
    throw error;
  }
}

/**
 * Reads a whole adapter into memory: {@link openAdapter}, then every module's factors
 * (checked for NaN/Inf unless `allowNonFinite`) and every extra, then closes the file.
 */
export async function loadAdapter(target: string, options: LoadAdapterOptions = {}): Promise<LoraAdapter> {
  const opened = await openAdapter(target, options);
  try {
    return await opened.read();
  } finally {
    await opened.close();
  }
}

