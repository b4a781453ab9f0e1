/**
 * A one-line progress bar for terminals: epoch, bar, batch, running loss and accuracy,
 * samples/s and ETA. Redrawn at most ten times a second; silent when the stream is not a
 * TTY (unless forced).
 */

export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

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

/** The text of one progress line (no control characters). */
export function formatProgress(p: ProgressInfo, width = 20): string {
  const fraction = p.batches > 0 ? Math.min(1, p.batch / p.batches) : 0;
  const filled = Math.round(fraction * width);
  const bar = '█'.repeat(filled) + '░'.repeat(width - filled);
  const parts = [
    `epoch ${p.epoch}/${p.epochs}`,
    `${bar} ${String(Math.floor(fraction * 100)).padStart(3)}%`,
    `${p.batch}/${p.batches}`,
    `loss ${p.loss.toFixed(4)}`,
  ];
  if (p.accuracy !== null) parts.push(`acc ${(p.accuracy * 100).toFixed(1)}%`);
  parts.push(`${Math.round(p.samplesPerSecond).toLocaleString('en-US')} samples/s`);
  parts.push(`ETA ${p.etaSeconds === null ? '--:--' : formatDuration(p.etaSeconds)}`);
  return parts.join('  ');
}

export class ProgressBar {
  readonly #stream: ProgressStream;
  #last = 0;
  #drawn = false;

  constructor(stream: ProgressStream) {
    this.#stream = stream;
  }

  update(info: ProgressInfo, force = false): void {
    const now = Date.now();
    if (!force && now - this.#last < 100) return;
    this.#last = now;
    let text = formatProgress(info);
    const columns = this.#stream.columns;
    if (columns !== undefined && columns > 10 && text.length > columns - 1) text = text.slice(0, columns - 1);
    this.#stream.write(`\r\x1b[2K${text}`);
    this.#drawn = true;
  }

  /** Prints a message on its own line above the bar. */
  log(message: string): void {
    this.#stream.write(`${this.#drawn ? '\r\x1b[2K' : ''}${message}\n`);
    this.#drawn = false;
    this.#last = 0;
  }

  /** Ends the line. */
  finish(): void {
    if (this.#drawn) this.#stream.write('\n');
    this.#drawn = false;
  }
}
