/**
 * What a save writes, checked before anything is written: an in-memory adapter (every
 * field, shape, scale and value) or an opened one (already checked when it was read).
 */
import { EigenLoraxError } from '../errors.js';
import type { SafetensorsRawEntry } from '../io/safetensors.js';
import { checkMatrix } from '../matrix.js';
import { invalid, object, oneOf } from '../validate.js';
import { firstNonFinite, product, scaleOf } from './common.js';
import type { OpenedAdapter } from './open.js';
import { adapterFormats, type AdapterFormat, type LoraAdapter, type LoraModuleInfo } from './types.js';

/** A module to write: its info (checked) and its factors, given or read on demand. */
export interface SaveModule {
  info: LoraModuleInfo;
  /** Row-major values of A (`rank x inFeatures`) and B (`outFeatures x rank`). */
  A: () => Float32Array | Promise<Float32Array>;
  B: () => Float32Array | Promise<Float32Array>;
}

export interface SaveExtra {
  key: string;
  dtype: SafetensorsRawEntry['dtype'];
  shape: number[];
  bytes: () => Uint8Array | Promise<Uint8Array>;
}

export interface SaveSource {
  format: AdapterFormat;
  baseModel: string | null;
  config: Record<string, unknown> | null;
  metadata: Record<string, string>;
  modules: SaveModule[];
  extras: SaveExtra[];
}

// ---------------------------------------------------------------------------------------
// Checking the input

export function checkInMemory(adapter: LoraAdapter, allowNonFinite: boolean): SaveSource {
  const a = object(adapter, 'adapter');
  const format = oneOf(a.format, 'adapter.format', adapterFormats);
  if (!(adapter.modules instanceof Map)) throw invalid('a Map of modules', 'adapter.modules', adapter.modules);
  if (!(adapter.extras instanceof Map)) throw invalid('a Map of extras', 'adapter.extras', adapter.extras);
  if (adapter.baseModel !== null && adapter.baseModel !== undefined && typeof adapter.baseModel !== 'string') {
    throw invalid('a string or null', 'adapter.baseModel', adapter.baseModel);
  }
  const modules: SaveModule[] = [];
  for (const [name, module] of adapter.modules) {
    const where = `adapter.modules[${JSON.stringify(name)}]`;
    object(module, where);
    if (module.name !== name) throw invalid(`the module's own name ${JSON.stringify(name)}`, `${where}.name`, module.name);
    const A = checkMatrix(module.A, `${where}.A`);
    const B = checkMatrix(module.B, `${where}.B`, { cols: A.rows });
    if (module.rank !== A.rows) {
      throw new EigenLoraxError(`${where}: rank is ${String(module.rank)} but A has ${A.rows} rows`, 'ERR_SHAPE_MISMATCH');
    }
    const layout = oneOf(module.layout, `${where}.layout`, ['linear', 'conv', 'embedding'] as const);
    let convKernel: number[] | undefined;
    if (layout === 'conv') {
      const k = module.convKernel;
      if (!Array.isArray(k) || k.length < 1 || k.length > 3 || !k.every((d) => Number.isSafeInteger(d) && d >= 1)) {
        throw invalid('an array of 1 to 3 positive integers', `${where}.convKernel`, k);
      }
      if (A.cols % product(k) !== 0) {
        throw new EigenLoraxError(`${where}: A has ${A.cols} columns, not a multiple of the kernel size ${product(k)}`, 'ERR_SHAPE_MISMATCH');
      }
      convKernel = [...k];
    }
    if (typeof module.alpha !== 'number' || !Number.isFinite(module.alpha)) throw invalid('a finite number', `${where}.alpha`, module.alpha);
    for (const flag of ['rslora', 'fanInFanOut'] as const) {
      if (typeof module[flag] !== 'boolean') throw invalid('true or false', `${where}.${flag}`, module[flag]);
    }
    // The files store alpha, not the scale: a scale edited without alpha would be lost.
    const scale = scaleOf(module.alpha, A.rows, module.rslora);
    if (module.scale !== undefined && !(Math.abs(module.scale - scale) <= 1e-12 * Math.abs(scale))) {
      throw invalid(
        `the scale that alpha ${module.alpha} and rank ${A.rows} give (${scale}${module.rslora ? ', rsLoRA' : ''}); change alpha to change the scale`,
        `${where}.scale`,
        module.scale,
      );
    }
    if (!allowNonFinite) {
      for (const [m, which] of [
        [A, 'A'],
        [B, 'B'],
      ] as const) {
        const at = firstNonFinite(m.data);
        if (at >= 0) {
          const value = m.data[at] as number;
          throw new EigenLoraxError(
            `${where}.${which}: the factor holds ${Number.isNaN(value) ? 'NaN' : String(value)} at ` +
              `[${Math.floor(at / m.cols)}, ${at % m.cols}] (pass allowNonFinite: true to write it anyway)`,
            'ERR_NON_FINITE',
          );
        }
      }
    }
    const dtypes = module.dtypes ?? { A: 'F32', B: 'F32' };
    modules.push({
      info: {
        name,
        rank: A.rows,
        alpha: module.alpha,
        scale,
        rslora: module.rslora,
        layout,
        ...(convKernel ? { convKernel } : {}),
        shapes: { A: [A.rows, A.cols], B: [B.rows, B.cols] },
        inFeatures: A.cols,
        outFeatures: B.rows,
        fanInFanOut: module.fanInFanOut,
        keys: { ...(module.keys ?? { A: '', B: '' }) },
        dtypes: { ...dtypes },
      },
      A: () => A.data,
      B: () => B.data,
    });
  }
  const extras: SaveExtra[] = [];
  for (const [key, extra] of adapter.extras) {
    const where = `adapter.extras[${JSON.stringify(key)}]`;
    object(extra, where);
    if (!(extra.bytes instanceof Uint8Array)) throw invalid('a Uint8Array', `${where}.bytes`, extra.bytes);
    if (!Array.isArray(extra.shape)) throw invalid('an array', `${where}.shape`, extra.shape);
    extras.push({ key, dtype: extra.dtype, shape: [...extra.shape], bytes: () => extra.bytes });
  }
  return {
    format,
    baseModel: adapter.baseModel ?? null,
    config: adapter.config ?? null,
    metadata: { ...(adapter.metadata ?? {}) },
    modules,
    extras,
  };
}

export function fromOpened(adapter: OpenedAdapter, allowNonFinite: boolean): SaveSource {
  return {
    format: adapter.format,
    baseModel: adapter.baseModel,
    config: adapter.config === null ? null : structuredClone(adapter.config as Record<string, unknown>),
    metadata: { ...adapter.metadata },
    modules: [...adapter.modules.values()].map((handle) => ({
      info: handle,
      A: () => adapter.readFactor(handle.name, 'A', { allowNonFinite }),
      B: () => adapter.readFactor(handle.name, 'B', { allowNonFinite }),
    })),
    extras: [...adapter.extras.values()].map((extra) => ({
      key: extra.key,
      dtype: extra.dtype,
      shape: [...extra.shape],
      bytes: async () => (await extra.read()).bytes,
    })),
  };
}

