/**
 * What both adapter banks share: the options of `apply`, the slots (names, indices, the
 * deferred reuse of removed slots) and the registry methods built on them.
 */
import type { Device, Operand } from '../cuda.js';
import { EigenLoraxError } from '../errors.js';
import type { Matrix } from '../matrix.js';
import { invalid } from '../validate.js';

/** Options of `apply`: the base layer (optional), an output buffer, the backend. */
export interface BankApplyOptions {
  /**
   * W, d_out x d_in (as nn.Linear stores it): the base product x W^T is added. A
   * DeviceMatrix keeps a large base weight on the GPU between calls.
   */
  weight?: Operand;
  /** b, d_out. */
  bias?: Float32Array;
  /** n x d_out, written (not accumulated). */
  out?: Matrix;
  /**
   * Where the batch runs (lib/cuda.ts; default the CPU, or the GPU for a DeviceMatrix
   * weight). On the GPU the bank's components and mixing matrices are copied up with
   * each call (a few MiB per module).
   */
  device?: Device;
}

/** Each row's adapter: a name or null (base only), or slot indices (-1: none). */
export type RowAdapters = ReadonlyArray<string | null> | Int32Array;

/**
 * The batch's own numbering of the adapters it uses: `slots[j]` is the j-th distinct slot in
 * order of first use, `rows[b]` its index j (-1: none, or a slot `keep` refuses). Only those
 * adapters cross to the native side, as a serving system passes them, not the whole bank.
 */
export function compactRows(resolved: Int32Array, keep: (slot: number) => boolean = () => true): { slots: number[]; rows: Int32Array } {
  const local = new Map<number, number>();
  const slots: number[] = [];
  const rows = new Int32Array(resolved.length);
  for (let b = 0; b < resolved.length; b++) {
    const slot = resolved[b]!;
    if (slot < 0 || !keep(slot)) {
      rows[b] = -1;
      continue;
    }
    let index = local.get(slot);
    if (index === undefined) {
      index = slots.length;
      local.set(slot, index);
      slots.push(slot);
    }
    rows[b] = index;
  }
  return { slots, rows };
}

function unknownAdapter(message: string): EigenLoraxError {
  return new EigenLoraxError(message, 'ERR_UNKNOWN_ADAPTER');
}

export function checkName(name: unknown): string {
  if (typeof name !== 'string' || name.length === 0) throw invalid('an adapter name (non-empty string)', 'name', name);
  return name;
}

/**
 * Names, slots, and the deferred reuse of removed slots. Slot `i` is live while an adapter
 * holds it; a removed slot waits in quarantine until no apply that started before the
 * removal is still running.
 */
export class Slots {
  readonly byName = new Map<string, number>();
  /** The adapter name in each slot, or null (free or quarantined). */
  readonly names: Array<string | null> = [];
  private readonly free: number[] = [];
  private readonly quarantine: Array<{ slot: number; epoch: number }> = [];
  private sequence = 0;
  private readonly running = new Set<number>();

  /** Slots ever used: what a batch passes as the adapter count. */
  get highWater(): number {
    return this.names.length;
  }

  take(name: string): number {
    const slot = this.free.length > 0 ? this.free.pop()! : this.names.length;
    if (slot === this.names.length) this.names.push(name);
    else this.names[slot] = name;
    this.byName.set(name, slot);
    return slot;
  }

  release(name: string): number | null {
    const slot = this.byName.get(name);
    if (slot === undefined) return null;
    this.byName.delete(name);
    this.names[slot] = null;
    this.quarantine.push({ slot, epoch: this.sequence });
    this.recycle();
    return slot;
  }

  begin(): number {
    const id = ++this.sequence;
    this.running.add(id);
    return id;
  }

  end(id: number): void {
    this.running.delete(id);
    this.recycle();
  }

  private recycle(): void {
    let oldest = Infinity;
    for (const id of this.running) oldest = Math.min(oldest, id);
    for (let i = this.quarantine.length - 1; i >= 0; i--) {
      const q = this.quarantine[i]!;
      if (q.epoch < oldest) {
        this.free.push(q.slot);
        this.quarantine.splice(i, 1);
      }
    }
    // Lowest slots first: keeps the live range (and so the batches' adapter count) compact.
    this.free.sort((a, b) => b - a);
  }

  /** Each row's slot (-1: none), every named or indexed adapter checked to be registered. */
  resolve(rows: unknown, n: number): Int32Array {
    if (rows instanceof Int32Array) {
      if (rows.length !== n) throw new EigenLoraxError(`rows: expected ${n} entries (one per row of x), received ${rows.length}`, 'ERR_SHAPE_MISMATCH');
      for (let b = 0; b < n; b++) {
        const slot = rows[b]!;
        if (slot === -1) continue;
        if (slot < -1 || slot >= this.names.length || this.names[slot] === null) {
          throw unknownAdapter(`rows[${b}]: slot ${slot} holds no registered adapter`);
        }
      }
      return rows;
    }
    if (!Array.isArray(rows)) throw invalid('an array of adapter names (or null) or an Int32Array of slots', 'rows', rows);
    if (rows.length !== n) throw new EigenLoraxError(`rows: expected ${n} entries (one per row of x), received ${rows.length}`, 'ERR_SHAPE_MISMATCH');
    const out = new Int32Array(n);
    for (let b = 0; b < n; b++) {
      const name: unknown = rows[b];
      if (name === null || name === undefined) {
        out[b] = -1;
        continue;
      }
      if (typeof name !== 'string') throw invalid('an adapter name or null', `rows[${b}]`, name);
      const slot = this.byName.get(name);
      if (slot === undefined) throw unknownAdapter(`rows[${b}]: no adapter named ${JSON.stringify(name)} is registered`);
      out[b] = slot;
    }
    return out;
  }
}

/** Names and slots of a bank: the lookups, `remove`, and the check of a name to register. */
export abstract class AdapterRegistry {
  protected readonly slots = new Slots();

  /** Registered adapter names, in slot order. */
  get names(): string[] {
    return this.slots.names.filter((n): n is string => n !== null);
  }

  get size(): number {
    return this.slots.byName.size;
  }

  /** The module names the bank applies. */
  abstract get moduleNames(): string[];

  has(name: string): boolean {
    return this.slots.byName.has(name);
  }

  /** The adapter's slot (stable until it is removed), or -1. */
  indexOf(name: string): number {
    return this.slots.byName.get(name) ?? -1;
  }

  /** Resolves names (null: none) to slots once, for batches that repeat the same assignment. */
  rows(names: ReadonlyArray<string | null>): Int32Array {
    return this.slots.resolve(names, Array.isArray(names) ? names.length : 0);
  }

  /** Removes an adapter; true if it was registered. Its slot is reused once no earlier batch runs. */
  remove(name: string): boolean {
    const slot = this.slots.release(checkName(name));
    if (slot === null) return false;
    this.clearSlot(slot);
    return true;
  }

  /** Drops what the bank holds for a removed adapter's slot. */
  protected abstract clearSlot(slot: number): void;

  /** Before registering `name`: an error if it is taken, unless `replace` (then the old adapter is removed). */
  protected makeRoom(name: string, replace: unknown): void {
    if (this.slots.byName.has(name)) {
      if (replace !== true) throw new EigenLoraxError(`An adapter named ${JSON.stringify(name)} is already registered (pass replace: true)`, 'ERR_INVALID_ARGUMENT');
      this.remove(name);
    }
  }
}
