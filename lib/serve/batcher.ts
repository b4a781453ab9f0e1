/**
 * A micro-batcher: requests that arrive together run as one batch.
 *
 * Each `submit(item, rows)` joins a queue. The queue is flushed as one batch when it holds
 * `maxBatchRows` rows or more, or `batchWindowMs` after the first request that is waiting
 * arrived (0: on the next turn of the event loop). One batch runs at a time: while it runs,
 * the next one accumulates, so under load batches fill up by themselves and the window
 * only matters when the server is idle. A request is never split; a batch takes requests
 * in arrival order up to `maxBatchRows` rows (at least one request, however large).
 *
 * `run` answers every item of a batch on its own (`Settled`), so one bad request fails
 * alone; if `run` itself throws, every request of that batch fails with its error.
 */
import { EigenLoraxError } from '../errors.js';
import { finiteNumber, integer, invalid, knownKeys, object } from '../validate.js';

export type Settled<R> = { ok: true; value: R } | { ok: false; error: unknown };

export interface MicroBatcherOptions<T, R> {
  /** Runs one batch; resolves with one outcome per item, in order. */
  run: (items: readonly T[]) => Promise<ReadonlyArray<Settled<R>>>;
  /** Flush as soon as this many rows wait (default 64); 1 runs every request alone. */
  maxBatchRows?: number;
  /** Milliseconds the first waiting request waits for company (default 1). */
  batchWindowMs?: number;
}

export interface BatcherStats {
  batches: number;
  /** Requests run in batches (answered either way). */
  items: number;
  rows: number;
  /** The largest batch, in rows. */
  maxBatchRows: number;
  /** Requests and rows waiting now. */
  queuedItems: number;
  queuedRows: number;
  running: boolean;
}

interface Waiting<T, R> {
  item: T;
  rows: number;
  resolve: (value: R) => void;
  reject: (error: unknown) => void;
}

export class MicroBatcher<T, R> {
  readonly maxBatchRows: number;
  readonly batchWindowMs: number;
  readonly #run: MicroBatcherOptions<T, R>['run'];
  readonly #queue: Array<Waiting<T, R>> = [];
  #queuedRows = 0;
  #timer: { cancel: () => void } | null = null;
  /** The window of the requests now waiting has passed: flush when the running batch ends. */
  #due = false;
  #running = false;
  #closing = false;
  readonly #idle: Array<() => void> = [];
  #batches = 0;
  #items = 0;
  #rows = 0;
  #largest = 0;

  constructor(options: MicroBatcherOptions<T, R>) {
    const o = object(options, 'options');
    knownKeys(o, 'options', ['run', 'maxBatchRows', 'batchWindowMs']);
    if (typeof o.run !== 'function') throw invalid('a function', 'options.run', o.run);
    this.#run = o.run as MicroBatcherOptions<T, R>['run'];
    this.maxBatchRows = integer(o.maxBatchRows ?? 64, 'options.maxBatchRows', 1);
    this.batchWindowMs = finiteNumber(o.batchWindowMs ?? 1, 'options.batchWindowMs');
    if (this.batchWindowMs < 0) throw invalid('a number of milliseconds >= 0', 'options.batchWindowMs', this.batchWindowMs);
  }

  /** Queues `item` (of `rows` rows); resolves with its own outcome of the batch it runs in. */
  submit(item: T, rows: number): Promise<R> {
    integer(rows, 'rows', 1);
    if (this.#closing) return Promise.reject(new EigenLoraxError('the batcher is closed: the server is shutting down', 'ERR_CLOSED'));
    return new Promise<R>((resolve, reject) => {
      this.#queue.push({ item, rows, resolve, reject });
      this.#queuedRows += rows;
      this.#schedule();
    });
  }

  stats(): BatcherStats {
    return {
      batches: this.#batches,
      items: this.#items,
      rows: this.#rows,
      maxBatchRows: this.#largest,
      queuedItems: this.#queue.length,
      queuedRows: this.#queuedRows,
      running: this.#running,
    };
  }

  /**
   * Refuses new requests (ERR_CLOSED), runs the waiting ones without waiting for their
   * window, and resolves when the last batch has been answered.
   */
  close(): Promise<void> {
    this.#closing = true;
    this.#schedule();
    return this.#whenIdle();
  }

  #whenIdle(): Promise<void> {
    if (!this.#running && this.#queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #schedule(): void {
    if (this.#queue.length === 0) return;
    if (!(this.#due || this.#closing || this.#queuedRows >= this.maxBatchRows)) {
      this.#timer ??= this.#startTimer();
      return;
    }
    // The batch in flight schedules again when it ends.
    if (this.#running) return;
    this.#timer?.cancel();
    this.#timer = null;
    this.#flush();
  }

  #startTimer(): { cancel: () => void } {
    const fire = () => {
      this.#timer = null;
      this.#due = true;
      this.#schedule();
    };
    if (this.batchWindowMs === 0) {
      const handle = setImmediate(fire);
      return { cancel: () => clearImmediate(handle) };
    }
    const handle = setTimeout(fire, this.batchWindowMs);
    return { cancel: () => clearTimeout(handle) };
  }

  #flush(): void {
    let rows = 0;
    let count = 0;
    while (count < this.#queue.length && (count === 0 || rows + this.#queue[count]!.rows <= this.maxBatchRows)) rows += this.#queue[count++]!.rows;
    const batch = this.#queue.splice(0, count);
    this.#queuedRows -= rows;
    // What is left waited at least as long as this batch: it goes next.
    this.#due = this.#queue.length > 0;
    this.#running = true;
    this.#batches++;
    this.#items += batch.length;
    this.#rows += rows;
    this.#largest = Math.max(this.#largest, rows);
    void this.#execute(batch).finally(() => {
      this.#running = false;
      this.#schedule();
      if (!this.#running && this.#queue.length === 0) for (const resolve of this.#idle.splice(0)) resolve();
    });
  }

  async #execute(batch: Array<Waiting<T, R>>): Promise<void> {
    let outcomes: ReadonlyArray<Settled<R>>;
    try {
      outcomes = await this.#run(batch.map((w) => w.item));
      if (!Array.isArray(outcomes) || outcomes.length !== batch.length) {
        throw new EigenLoraxError(`the batch runner answered ${Array.isArray(outcomes) ? outcomes.length : 'no'} outcomes for ${batch.length} requests`, 'ERR_INTERNAL');
      }
    } catch (error) {
      for (const w of batch) w.reject(error);
      return;
    }
    batch.forEach((w, i) => {
      const outcome = outcomes[i]!;
      if (outcome.ok) w.resolve(outcome.value);
      else w.reject(outcome.error);
    });
  }
}
