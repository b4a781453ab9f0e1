/**
 * The one progress bar of eigenlorax, for training and for every long command (build,
 * project, analyze, combine, the demo): one line, `label  ████░░░░  42%  5/12  detail`,
 * redrawn by cli-progress at most ten times a second. Nothing is drawn on a stream that is
 * not a terminal unless the caller hands that stream over explicitly (then each redraw is
 * a line of its own, every two seconds).
 */
import cliProgress from 'cli-progress';

/** Where a bar draws: process.stderr, or anything with `write` (tests pass a fake terminal). */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

/** What one redraw shows. */
export interface BarLine {
  label: string;
  value: number;
  total: number;
  /** Fields after the counts, two spaces apart (cut at the right edge). */
  detail?: string[];
  /** A last field shortened from its left to fit the line (a module or file name). */
  item?: string;
}

const BAR_WIDTH = 20;

/** The text of one progress line (no control characters); `columns` bounds `item`. */
export function formatBarLine(line: BarLine, width = BAR_WIDTH, columns = Number.POSITIVE_INFINITY): string {
  const fraction = line.total > 0 ? Math.min(1, Math.max(0, line.value / line.total)) : 1;
  const filled = Math.round(fraction * width);
  const parts = [
    line.label,
    `${'█'.repeat(filled)}${'░'.repeat(width - filled)} ${String(Math.floor(fraction * 100)).padStart(3)}%`,
    `${line.value}/${line.total}`,
    ...(line.detail ?? []),
  ];
  const head = parts.join('  ');
  if (line.item === undefined || line.item.length === 0) return head;
  const room = columns - head.length - 3;
  if (room <= 3) return head;
  const item = line.item.length > room ? `...${line.item.slice(line.item.length - (room - 3))}` : line.item;
  return `${head}  ${item}`;
}

/** SingleBar whose redraw timer never keeps the process alive (a bar left running after an error must not hang the command). */
class Bar extends cliProgress.SingleBar {
  override render(): void {
    super.render();
    (this as unknown as { timer?: { unref?: () => void } | null }).timer?.unref?.();
  }
}

export interface ProgressBarOptions {
  /** Keep the last line when stopped (training) instead of clearing it (default false). */
  keep?: boolean;
}

/**
 * A bar on `stream` (null: draws nothing). Call `update` as work is done, `log` for a line
 * above the bar, and `stop` when finished (also on errors).
 */
export class ProgressBar {
  readonly #stream: ProgressStream | null;
  readonly #keep: boolean;
  #bar: Bar | null = null;

  constructor(stream: ProgressStream | null, options: ProgressBarOptions = {}) {
    this.#stream = stream;
    this.#keep = options.keep === true;
  }

  /** A bar on stderr when it is a terminal and `quiet` is off; otherwise silent. */
  static forTerminal(quiet = false, options?: ProgressBarOptions): ProgressBar {
    return new ProgressBar(!quiet && process.stderr.isTTY === true ? process.stderr : null, options);
  }

  get enabled(): boolean {
    return this.#stream !== null;
  }

  update(line: BarLine): void {
    const stream = this.#stream;
    if (stream === null) return;
    if (this.#bar === null) {
      const tty = stream.isTTY === true;
      this.#bar = new Bar({
        stream: stream as NodeJS.WritableStream,
        format: (_options: unknown, params: cliProgress.Params, payload: { line: BarLine }) => formatBarLine(payload.line, BAR_WIDTH, params.maxWidth - 1),
        fps: 10,
        noTTYOutput: !tty,
        clearOnComplete: !this.#keep,
        forceRedraw: true,
        hideCursor: false,
        gracefulExit: false,
      });
      this.#bar.start(line.total, line.value, { line });
      return;
    }
    this.#bar.setTotal(line.total);
    this.#bar.update(line.value, { line });
  }

  /** Prints `message` on its own line above the bar. */
  log(message: string): void {
    const stream = this.#stream;
    if (stream === null) return;
    stream.write(`${this.#bar !== null && stream.isTTY === true ? '\r\x1b[2K' : ''}${message}\n`);
    if (this.#bar !== null && stream.isTTY === true) this.#bar.render();
  }

  /** Draws the last state and ends the bar (keeps or clears the line); the bar can start again with `update`. */
  stop(): void {
    const bar = this.#bar;
    this.#bar = null;
    bar?.stop();
  }
}
