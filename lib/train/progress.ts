/**
 * What the training bar shows: epoch, bar, batch, running loss and accuracy, samples/s and
 * ETA, drawn by the one progress bar of eigenlorax (lib/progress.ts).
 */
import { formatBarLine, type BarLine } from '../progress.js';

export type { ProgressStream } from '../progress.js';

export interface ProgressInfo {
  epoch: number;
  epochs: number;
  batch: number;
  batches: number;
  loss: number;
  accuracy: number | null;
  samplesPerSecond: number;
  /** Seconds left for the whole run, or null when unknown. */
  etaSeconds: number | null;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const mm = String(m).padStart(h > 0 ? 2 : 1, '0');
  return `${h > 0 ? `${h}:` : ''}${mm}:${String(sec).padStart(2, '0')}`;
}

/** The bar's fields for one training step. */
export function trainingBarLine(p: ProgressInfo): BarLine {
  const detail = [`loss ${p.loss.toFixed(4)}`];
  if (p.accuracy !== null) detail.push(`acc ${(p.accuracy * 100).toFixed(1)}%`);
  detail.push(`${Math.round(p.samplesPerSecond).toLocaleString('en-US')} samples/s`);
  detail.push(`ETA ${p.etaSeconds === null ? '--:--' : formatDuration(p.etaSeconds)}`);
  return { label: `epoch ${p.epoch}/${p.epochs}`, value: p.batch, total: p.batches, detail };
}

/** The text of one progress line (no control characters). */
export function formatProgress(p: ProgressInfo, width = 20): string {
  return formatBarLine(trainingBarLine(p), width);
}
