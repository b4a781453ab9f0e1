/** What the steps of runDemo share: the checked run, its test sets, row windows, timings. */
import { sliceDataset, type Dataset } from '../data/dataset.js';
import { transformDataset } from '../data/transforms.js';
import type { ProgressBar } from '../progress.js';
import type { DemoSettings, DemoTask } from './settings.js';

export const secondsText = (s: number) => `${s < 1 ? s.toFixed(2) : s.toFixed(1)} s`;

/** Evenly spaced starting rows of `count` windows of `size` rows in `n` rows (windows may overlap). */
export function windowStarts(n: number, size: number, count: number, shift = 0): number[] {
  const room = Math.max(0, n - size);
  return Array.from({ length: count }, (_, i) => Math.floor(((i + shift) % count) * (count > 1 ? room / (count - 1) : 0)));
}

export function takeRows(d: Dataset, start: number, size: number): Dataset {
  const end = Math.min(d.inputs.rows, start + size);
  return sliceDataset(d, Math.max(0, end - size), end);
}
/** The checked options of a run, and what every step uses. */
export interface Run {
  settings: DemoSettings;
  seed: number;
  quick: boolean;
  out: string;
  cacheDir: string;
  /** The demo's cached models and adapters. */
  demoCache: string;
  packageDir: string | undefined;
  log: (line: string) => void;
  signal: AbortSignal | null;
  progress: ProgressBar | false;
  checkAbort: () => void;
}

export const seconds = (from: number) => (performance.now() - from) / 1000;

/** Test images of a task, transformed once. */
export class TestSets {
  readonly #sets = new Map<string, Dataset>();
  constructor(private readonly test: Dataset) {}
  async of(task: DemoTask, size: number): Promise<Dataset> {
    const key = `${task.name}:${size}`;
    let d = this.#sets.get(key);
    if (d === undefined) {
      d = await transformDataset(takeRows(this.test, 0, size), task.transform);
      this.#sets.set(key, d);
    }
    return d;
  }
  clear(): void {
    this.#sets.clear();
  }
}

