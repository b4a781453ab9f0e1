/**
 * A summary of an adapter from its headers and config alone (what `eigenlorax inspect`
 * prints): no factor is read, so it is instant on large files.
 */
import { stat } from 'node:fs/promises';
import { naturalCompare } from './common.js';
import { openAdapter, type OpenedAdapter } from './open.js';
import type { AdapterFormat, OpenAdapterOptions } from './types.js';

/** A value and how many modules have it. */
export interface CountedValue {
  value: number | string;
  count: number;
}

export interface AdapterReport {
  path: string;
  format: AdapterFormat;
  baseModel: string | null;
  /** The files the adapter consists of, and their total size in bytes. */
  files: string[];
  fileBytes: number;
  modules: number;
  /** Unique values with counts, ascending. */
  layouts: CountedValue[];
  ranks: CountedValue[];
  alphas: CountedValue[];
  scales: CountedValue[];
  /** Modules with rsLoRA scaling / with fan_in_fan_out. */
  rslora: number;
  fanInFanOut: number;
  /** Storage dtypes of the factors (A and B counted separately). */
  dtypes: CountedValue[];
  /** Elements of all A and B factors. */
  loraParameters: number;
  /** Bytes of all A and B factors as stored. */
  loraBytes: number;
  extras: Array<{ key: string; dtype: string; shape: number[]; bytes: number }>;
  extraBytes: number;
}

function counted(values: Array<number | string>): CountedValue[] {
  const counts = new Map<number | string, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts]
    .map(([value, count]) => ({ value, count }))
    .sort((a, b) =>
      typeof a.value === 'number' && typeof b.value === 'number' ? a.value - b.value : naturalCompare(String(a.value), String(b.value)),
    );
}

/** Summarises an opened adapter (headers and config only). */
export async function summarizeAdapter(adapter: OpenedAdapter): Promise<AdapterReport> {
  const modules = [...adapter.modules.values()];
  let loraParameters = 0;
  let loraBytes = 0;
  const dtypes: string[] = [];
  for (const m of modules) {
    loraParameters += m.rank * (m.inFeatures + m.outFeatures);
    const bytesPer = (d: string) => (d === 'F64' ? 8 : d === 'F32' ? 4 : 2);
    loraBytes += m.rank * m.inFeatures * bytesPer(m.dtypes.A) + m.outFeatures * m.rank * bytesPer(m.dtypes.B);
    dtypes.push(m.dtypes.A, m.dtypes.B);
  }
  const extras = [...adapter.extras.values()].map((e) => ({ key: e.key, dtype: e.dtype, shape: [...e.shape], bytes: e.byteLength }));
  let fileBytes = 0;
  for (const file of adapter.source.files) fileBytes += (await stat(file)).size;
  return {
    path: adapter.source.path,
    format: adapter.format,
    baseModel: adapter.baseModel,
    files: [...adapter.source.files],
    fileBytes,
    modules: modules.length,
    layouts: counted(modules.map((m) => m.layout)),
    ranks: counted(modules.map((m) => m.rank)),
    alphas: counted(modules.map((m) => m.alpha)),
    scales: counted(modules.map((m) => m.scale)),
    rslora: modules.filter((m) => m.rslora).length,
    fanInFanOut: modules.filter((m) => m.fanInFanOut).length,
    dtypes: counted(dtypes),
    loraParameters,
    loraBytes,
    extras,
    extraBytes: extras.reduce((n, e) => n + e.bytes, 0),
  };
}

/** Opens `target`, summarises it and closes it. */
export async function inspectAdapter(target: string, options: Pick<OpenAdapterOptions, 'format'> = {}): Promise<AdapterReport> {
  const adapter = await openAdapter(target, options);
  try {
    return await summarizeAdapter(adapter);
  } finally {
    await adapter.close();
  }
}
