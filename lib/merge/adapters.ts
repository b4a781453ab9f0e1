/**
 * The adapters of a merge, resolved to their modules' factors in memory (read and checked
 * before anything is written).
 */
import { firstNonFinite } from '../adapters/common.js';
import { openAdapter, OpenedAdapter } from '../adapters/open.js';
import type { LoraAdapter, LoraLayout } from '../adapters/types.js';
import { EigenLoraxError } from '../errors.js';
import { checkMatrix, type Matrix } from '../matrix.js';
import { describe, finiteNumber, invalid, knownKeys, object } from '../validate.js';
import type { MergeAdapterInput, MergeAdapterSpec } from './types.js';

/** One module of a resolved adapter: what a merge needs. */
export interface MergeModule {
  name: string;
  A: Matrix;
  B: Matrix;
  rank: number;
  scale: number;
  layout: LoraLayout;
  convKernel: number[] | null;
  fanInFanOut: boolean;
}

export interface ResolvedAdapter {
  /** `adapters[i]` plus the source, for messages. */
  label: string;
  source: string | null;
  format: string;
  weight: number;
  modules: MergeModule[];
  extras: string[];
}

const layouts: readonly LoraLayout[] = ['linear', 'conv', 'embedding'];

/** Checks one `adapters[i]` entry: a spec `{ adapter, weight? }` or a bare adapter. */
export function checkSpec(value: unknown, i: number): { adapter: MergeAdapterInput; weight: number } {
  const name = `options.adapters[${i}]`;
  if (typeof value === 'string' || value instanceof OpenedAdapter) return { adapter: value, weight: 1 };
  const o = object(value, name);
  if (!('adapter' in o) && 'modules' in o) return { adapter: o as unknown as LoraAdapter, weight: 1 };
  knownKeys(o, name, ['adapter', 'weight']);
  const spec = o as unknown as MergeAdapterSpec;
  const adapter = spec.adapter;
  if (typeof adapter === 'string') {
    if (adapter.length === 0) throw invalid('a path (non-empty string)', `${name}.adapter`, adapter);
  } else if (!(adapter instanceof OpenedAdapter) && (typeof adapter !== 'object' || adapter === null || !('modules' in adapter))) {
    throw invalid('an adapter path, an opened adapter or a loaded adapter ({ modules, ... })', `${name}.adapter`, adapter);
  }
  return { adapter, weight: spec.weight === undefined ? 1 : finiteNumber(spec.weight, `${name}.weight`) };
}

/**
 * Reads an adapter's modules into memory: a path is opened, read and closed; an opened
 * adapter is read (and left open); an adapter in memory is checked (factors of matching
 * shapes, finite values, a known layout, a finite scale).
 */
export async function resolveAdapter(adapter: MergeAdapterInput, weight: number, i: number): Promise<ResolvedAdapter> {
  if (typeof adapter === 'string') {
    const opened = await openAdapter(adapter);
    try {
      return await fromOpened(opened, weight, i);
    } finally {
      await opened.close();
    }
  }
  if (adapter instanceof OpenedAdapter) return fromOpened(adapter, weight, i);
  return fromMemory(adapter, weight, i);
}

async function fromOpened(opened: OpenedAdapter, weight: number, i: number): Promise<ResolvedAdapter> {
  const modules: MergeModule[] = [];
  for (const name of opened.modules.keys()) {
    const m = await opened.readModule(name);
    modules.push({
      name: m.name,
      A: m.A,
      B: m.B,
      rank: m.rank,
      scale: m.scale,
      layout: m.layout,
      convKernel: m.convKernel ? [...m.convKernel] : null,
      fanInFanOut: m.fanInFanOut,
    });
  }
  const source = opened.source.path;
  return {
    label: `adapters[${i}] (${source})`,
    source,
    format: opened.format,
    weight,
    modules,
    extras: [...opened.extras.keys()],
  };
}

function fromMemory(adapter: LoraAdapter, weight: number, i: number): ResolvedAdapter {
  const where = `options.adapters[${i}].adapter`;
  const a = object(adapter, where) as unknown as LoraAdapter;
  if (!(a.modules instanceof Map)) throw invalid('a Map of module names to modules', `${where}.modules`, a.modules);
  if (a.modules.size === 0) throw invalid('an adapter with at least one module', `${where}.modules`, a.modules);
  const source = a.source !== null && typeof a.source === 'object' && typeof a.source.path === 'string' ? a.source.path : null;
  const label = `adapters[${i}]${source === null ? '' : ` (${source})`}`;
  const modules: MergeModule[] = [];
  for (const [key, value] of a.modules) {
    const m = object(value, `${where}.modules[${JSON.stringify(key)}]`) as unknown as Record<string, unknown>;
    const at = `${label} module ${JSON.stringify(key)}`;
    const name = m.name ?? key;
    if (typeof name !== 'string' || name.length === 0) throw invalid('a module name', `${at}.name`, name);
    const A = checkMatrix(m.A, `${at}.A`);
    const B = checkMatrix(m.B, `${at}.B`, { cols: A.rows });
    const layout = m.layout ?? 'linear';
    if (typeof layout !== 'string' || !(layouts as readonly string[]).includes(layout)) {
      throw invalid(`one of ${layouts.join(', ')}`, `${at}.layout`, layout);
    }
    const scale = finiteNumber(m.scale, `${at}.scale`);
    const fanInFanOut = m.fanInFanOut ?? false;
    if (typeof fanInFanOut !== 'boolean') throw invalid('true or false', `${at}.fanInFanOut`, fanInFanOut);
    let convKernel: number[] | null = null;
    if (m.convKernel !== undefined && m.convKernel !== null) {
      const k = m.convKernel;
      if (!Array.isArray(k) || !k.every((d) => Number.isSafeInteger(d) && (d as number) >= 1)) {
        throw invalid('an array of positive integers', `${at}.convKernel`, k);
      }
      const size = (k as number[]).reduce((n, d) => n * d, 1);
      if (A.cols % size !== 0) {
        throw new EigenLoraxError(`${at}: A has ${A.cols} columns, not a multiple of the kernel [${k.join(', ')}]`, 'ERR_SHAPE_MISMATCH');
      }
      convKernel = [...(k as number[])];
    }
    for (const [which, f] of [
      ['A', A],
      ['B', B],
    ] as const) {
      const bad = firstNonFinite(f.data);
      if (bad >= 0) {
        throw new EigenLoraxError(`${at}: ${which} holds ${describe(f.data[bad])} at [${Math.floor(bad / f.cols)}, ${bad % f.cols}]`, 'ERR_NON_FINITE');
      }
    }
    modules.push({ name, A, B, rank: A.rows, scale, layout: layout as LoraLayout, convKernel, fanInFanOut });
  }
  const extras = a.extras instanceof Map ? [...a.extras.keys()].map(String) : [];
  return { label, source, format: typeof a.format === 'string' ? a.format : 'memory', weight, modules, extras };
}
