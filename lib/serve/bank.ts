/**
 * Registries of adapters for serving many adapters in one batch (DESIGN §1, "Many
 * adapters on one basis").
 *
 * - {@link AdapterBank}: coefficient sets on one subspace. Each adapter is, per module,
 *   the `K_A x K_B` matrix `M_i = s_i alpha_i beta_i^T`, kept in one contiguous
 *   Float32Array per module; `apply` runs {@link eigenBankApply}: the batch shares
 *   `x V_A` and `T U_B^T`, only the tiny middle step is grouped by adapter.
 * - {@link LoraBank}: the plain-LoRA baseline with the same API, through
 *   {@link loraBankApply} (each row gathers its adapter's own `A_i`, `B_i`).
 *
 * Slots. Every adapter gets one slot index, the same in every module, that stays its own
 * until it is removed (`indexOf`, `rows`); `apply` takes adapter names or slot indices.
 * A removed adapter's slot is reused only once every `apply` that started before the
 * removal has finished, so a batch in flight never sees another adapter's numbers;
 * `register` while a batch is in flight only writes slots that batch does not use (or a
 * new, larger buffer when the bank grows: the batch keeps the old one).
 */
import type { LoraAdapter } from '../adapters/types.js';
import type { Device, Operand } from '../cuda.js';
import { EigenLoraxError } from '../errors.js';
import { checkMatrix, checkVector, matrix, type Matrix } from '../matrix.js';
import { eigenBankApply, loraBankApply, mixingMatrix } from '../multiadapter.js';
import type { NativeFactorPair } from '../native/ops.js';
import { checkSubspace } from '../subspace/project.js';
import type { AdapterCoefficients, Subspace, SubspaceModule } from '../subspace/types.js';
import { finiteNumber, integer, invalid, knownKeys, object } from '../validate.js';

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

/** Bytes per module of a bank, in each form the adapters could be held. */
export interface BankModuleMemory {
  name: string;
  dIn: number;
  dOut: number;
  /** Columns of the components used by the bank (K_A, plus 1 on a centred side). */
  kA: number;
  kB: number;
  /** Adapters registered that have this module. */
  adapters: number;
  /** EigenLoRA bank: the mixing matrices of the registered adapters (adapters x K_A x K_B x 4). */
  mixingBytes: number;
  /** The mixing buffer as allocated (capacity x K_A x K_B x 4). */
  mixingAllocatedBytes: number;
  /** The shared components V_A, U_B (held once). */
  componentsBytes: number;
  /** The adapters as coefficients: sum of r_i (K_A + K_B) x 4. */
  coefficientBytes: number;
  /** The adapters as LoRA factors: sum of r_i (d_in + d_out) x 4. */
  loraBytes: number;
}

export interface BankMemory {
  adapters: number;
  /** Slots allocated. */
  capacity: number;
  modules: BankModuleMemory[];
  total: Omit<BankModuleMemory, 'name' | 'dIn' | 'dOut' | 'kA' | 'kB' | 'adapters'>;
}

function unknownAdapter(message: string): EigenLoraxError {
  return new EigenLoraxError(message, 'ERR_UNKNOWN_ADAPTER');
}

function checkName(name: unknown): string {
  if (typeof name !== 'string' || name.length === 0) throw invalid('an adapter name (non-empty string)', 'name', name);
  return name;
}

/**
 * Names, slots, and the deferred reuse of removed slots. Slot `i` is live while an adapter
 * holds it; a removed slot waits in quarantine until no apply that started before the
 * removal is still running.
 */
class Slots {
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
      if (rows.length !== n) throw new EigenLoraxError(`rows: expected ${n} entries (one per row of x) but received ${rows.length}`, 'ERR_SHAPE_MISMATCH');
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
    if (rows.length !== n) throw new EigenLoraxError(`rows: expected ${n} entries (one per row of x) but received ${rows.length}`, 'ERR_SHAPE_MISMATCH');
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

/** What a registered adapter contributes to one module (ranks for the memory report). */
interface EigenEntry {
  ranks: Map<string, number>;
}

/** One module of an AdapterBank: the components it applies and the mixing buffer. */
interface EigenModule {
  name: string;
  dIn: number;
  dOut: number;
  /** V_A, plus the centring mean as a last column when the subspace stores one. */
  componentsA: Matrix;
  componentsB: Matrix;
  kA: number;
  kB: number;
  centredA: boolean;
  centredB: boolean;
  /** capacity x kA x kB. */
  mixing: Float32Array;
}

/** [m | v]: a d x (k + 1) copy of m with v as the last column. */
function appendColumn(m: Matrix, v: Float32Array): Matrix {
  const k = m.cols + 1;
  const out = matrix(m.rows, k);
  for (let i = 0; i < m.rows; i++) {
    out.data.set(m.data.subarray(i * m.cols, (i + 1) * m.cols), i * k);
    out.data[i * k + m.cols] = v[i]!;
  }
  return out;
}

/** [alpha; 1 ... 1]: the loadings with a row of ones (the mean's coefficient in every rank column). */
function appendOnes(m: Matrix): Matrix {
  const out = matrix(m.rows + 1, m.cols);
  out.data.set(m.data);
  out.data.fill(1, m.rows * m.cols);
  return out;
}

/**
 * Coefficient sets of many adapters on one subspace, applied to a batch where each row
 * names its adapter (or none). See the module comment for slots and concurrency.
 *
 * A centred subspace (stored means) is handled exactly: the mean of a side becomes one
 * more column of that side's components, with a loading of 1 in every rank column.
 * An adapter without coefficients for a module contributes nothing there (its rows get
 * the base layer only in that module).
 */
export class AdapterBank {
  readonly subspace: Subspace;
  private readonly slots = new Slots();
  private readonly modules = new Map<string, EigenModule>();
  private readonly entries: Array<EigenEntry | null> = [];
  private capacityValue: number;

  /** `capacity`: slots allocated at first (default 16); the buffers double when full. */
  constructor(subspace: Subspace, options: { capacity?: number } = {}) {
    this.subspace = checkSubspace(subspace);
    const o = object(options, 'options');
    knownKeys(o, 'options', ['capacity']);
    this.capacityValue = integer(o.capacity ?? 16, 'options.capacity', 1);
    for (const [name, m] of this.subspace.modules) this.modules.set(name, this.bankModule(m));
  }

  private bankModule(m: SubspaceModule): EigenModule {
    const componentsA = m.meanA !== null ? appendColumn(m.componentsA, checkVector(m.meanA, `module ${m.name} meanA`, m.dIn)) : m.componentsA;
    const componentsB = m.meanB !== null ? appendColumn(m.componentsB, checkVector(m.meanB, `module ${m.name} meanB`, m.dOut)) : m.componentsB;
    return {
      name: m.name,
      dIn: m.dIn,
      dOut: m.dOut,
      componentsA,
      componentsB,
      kA: componentsA.cols,
      kB: componentsB.cols,
      centredA: m.meanA !== null,
      centredB: m.meanB !== null,
      mixing: new Float32Array(this.capacityValue * componentsA.cols * componentsB.cols),
    };
  }

  /** Registered adapter names, in slot order. */
  get names(): string[] {
    return this.slots.names.filter((n): n is string => n !== null);
  }

  get size(): number {
    return this.slots.byName.size;
  }

  get capacity(): number {
    return this.capacityValue;
  }

  /** The subspace's module names. */
  get moduleNames(): string[] {
    return [...this.modules.keys()];
  }

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

  /**
   * Adds an adapter under `name` from its coefficients on this bank's subspace (checked:
   * same subspace id and stacking, loadings of the subspace's K). Builds each module's
   * mixing matrix `M = scale alpha beta^T` into the adapter's slot. Returns the slot.
   * A name already registered is an error unless `replace: true` (then the old adapter
   * is removed first and the new one gets a fresh slot).
   */
  register(name: string, coefficients: AdapterCoefficients, options: { replace?: boolean } = {}): number {
    checkName(name);
    const o = object(options, 'options');
    knownKeys(o, 'options', ['replace']);
    const c = object(coefficients, 'coefficients') as unknown as AdapterCoefficients;
    if (!(c.modules instanceof Map) || typeof c.subspaceId !== 'string') {
      throw invalid('adapter coefficients (from buildSubspace, projectAdapter or loadCoefficients)', 'coefficients', coefficients);
    }
    if (c.subspaceId !== this.subspace.id) {
      throw new EigenLoraxError(
        `${name}: coefficients of subspace ${c.subspaceId.slice(0, 12)}, not of the bank's ${this.subspace.id.slice(0, 12)}`,
        'ERR_SUBSPACE_MISMATCH',
      );
    }
    if (c.stacking !== this.subspace.settings.stacking) {
      throw new EigenLoraxError(`${name}: stacking ${String(c.stacking)} but the subspace's is ${this.subspace.settings.stacking}`, 'ERR_SUBSPACE_MISMATCH');
    }
    // Check everything before anything is written.
    const ranks = new Map<string, number>();
    for (const [moduleName, mc] of c.modules) {
      const m = this.modules.get(moduleName);
      if (m === undefined) throw new EigenLoraxError(`${name}: module ${JSON.stringify(moduleName)} is not in the subspace`, 'ERR_SUBSPACE_MISMATCH');
      const where = `${name}: coefficients.modules[${JSON.stringify(moduleName)}]`;
      const kA = m.kA - (m.centredA ? 1 : 0);
      const kB = m.kB - (m.centredB ? 1 : 0);
      try {
        const alpha = checkMatrix(mc.alpha, `${where}.alpha`, { rows: kA });
        checkMatrix(mc.beta, `${where}.beta`, { rows: kB, cols: alpha.cols });
        ranks.set(moduleName, alpha.cols);
      } catch (error) {
        if (error instanceof EigenLoraxError && error.code === 'ERR_SHAPE_MISMATCH') {
          throw new EigenLoraxError(`${error.message} (subspace module: K_A ${kA}, K_B ${kB})`, 'ERR_SUBSPACE_MISMATCH');
        }
        throw error;
      }
      finiteNumber(mc.scale, `${where}.scale`);
    }
    if (this.slots.byName.has(name)) {
      if (o.replace !== true) throw new EigenLoraxError(`An adapter named ${JSON.stringify(name)} is already registered (pass replace: true)`, 'ERR_INVALID_ARGUMENT');
      this.remove(name);
    }
    const slot = this.slots.take(name);
    if (slot >= this.capacityValue) this.grow(slot + 1);
    for (const m of this.modules.values()) {
      const size = m.kA * m.kB;
      const target = m.mixing.subarray(slot * size, (slot + 1) * size);
      const mc = c.modules.get(m.name);
      if (mc === undefined) {
        target.fill(0);
        continue;
      }
      const alpha = m.centredA ? appendOnes(mc.alpha) : mc.alpha;
      const beta = m.centredB ? appendOnes(mc.beta) : mc.beta;
      mixingMatrix(alpha, beta, mc.scale, target);
    }
    this.entries[slot] = { ranks };
    return slot;
  }

  private grow(needed: number): void {
    let capacity = this.capacityValue;
    while (capacity < needed) capacity *= 2;
    for (const m of this.modules.values()) {
      // A new buffer: a batch in flight keeps reading the old one.
      const next = new Float32Array(capacity * m.kA * m.kB);
      next.set(m.mixing);
      m.mixing = next;
    }
    this.capacityValue = capacity;
  }

  /** Removes an adapter; true if it was registered. Its slot is reused once no earlier batch runs. */
  remove(name: string): boolean {
    const slot = this.slots.release(checkName(name));
    if (slot === null) return false;
    this.entries[slot] = null;
    return true;
  }

  /**
   * y = x W^T + b + for each row b with an adapter i: (x_b V_A) M_i U_B^T, for one module
   * of the subspace. `rows` names each row's adapter (null: the base only) or gives slot
   * indices (-1: none). Unknown names or empty slots: ERR_UNKNOWN_ADAPTER.
   */
  async apply(moduleName: string, x: Matrix, rows: RowAdapters, options: BankApplyOptions = {}): Promise<Matrix> {
    const m = this.modules.get(moduleName);
    if (m === undefined) {
      throw new EigenLoraxError(`No module ${JSON.stringify(moduleName)} in the bank's subspace (it has ${this.modules.size})`, 'ERR_INVALID_ARGUMENT');
    }
    const xm = checkMatrix(x, 'x', { cols: m.dIn });
    const resolved = this.slots.resolve(rows, xm.rows);
    const count = this.slots.highWater;
    const bank = {
      componentsA: m.componentsA,
      componentsB: m.componentsB,
      mixing: m.mixing.subarray(0, count * m.kA * m.kB),
      count,
    };
    const id = this.slots.begin();
    try {
      return await eigenBankApply(xm, bank, resolved, options);
    } finally {
      this.slots.end(id);
    }
  }

  /** Bytes of the adapters per module in each form, and in total. */
  memory(): BankMemory {
    const modules: BankModuleMemory[] = [];
    for (const m of this.modules.values()) {
      let adapters = 0;
      let rankSum = 0;
      for (const entry of this.entries) {
        const r = entry?.ranks.get(m.name);
        if (r === undefined) continue;
        adapters++;
        rankSum += r;
      }
      const kA = m.kA - (m.centredA ? 1 : 0);
      const kB = m.kB - (m.centredB ? 1 : 0);
      modules.push({
        name: m.name,
        dIn: m.dIn,
        dOut: m.dOut,
        kA: m.kA,
        kB: m.kB,
        adapters,
        mixingBytes: this.size * m.kA * m.kB * 4,
        mixingAllocatedBytes: m.mixing.byteLength,
        componentsBytes: (m.componentsA.data.byteLength + m.componentsB.data.byteLength),
        coefficientBytes: rankSum * (kA + kB) * 4,
        loraBytes: rankSum * (m.dIn + m.dOut) * 4,
      });
    }
    const sum = (key: keyof BankMemory['total']) => modules.reduce((n, m) => n + m[key], 0);
    return {
      adapters: this.size,
      capacity: this.capacityValue,
      modules,
      total: {
        mixingBytes: sum('mixingBytes'),
        mixingAllocatedBytes: sum('mixingAllocatedBytes'),
        componentsBytes: sum('componentsBytes'),
        coefficientBytes: sum('coefficientBytes'),
        loraBytes: sum('loraBytes'),
      },
    };
  }
}

/** One module of a LoRA adapter for the LoraBank: A (r x d_in), B (d_out x r), scale. */
export interface LoraBankModule {
  A: Matrix;
  B: Matrix;
  scale: number;
}

/** What LoraBank.register takes: an adapter as loadAdapter returns it, or just its modules' factors. */
export type LoraBankAdapter = LoraAdapter | { modules: ReadonlyMap<string, LoraBankModule> };

export interface LoraBankMemory {
  adapters: number;
  modules: Array<{ name: string; dIn: number; dOut: number; adapters: number; loraBytes: number }>;
  total: { loraBytes: number };
}

/**
 * The plain-LoRA baseline registry: each adapter's own factors per module, applied with
 * {@link loraBankApply} (rows gathered per adapter, as Punica and S-LoRA do). Same API as
 * {@link AdapterBank}; register loaded adapters, or `reconstructAdapter(subspace, c)` to
 * compare with an AdapterBank on the same coefficients. The factors are referenced, not
 * copied (a batch in flight keeps the ones it started with). Each call passes only the
 * adapters its rows use. Module shapes are fixed by the first adapter that has the module.
 */
export class LoraBank {
  private readonly slots = new Slots();
  private readonly adapters: Array<Map<string, NativeFactorPair> | null> = [];
  private readonly dims = new Map<string, { dIn: number; dOut: number }>();

  get names(): string[] {
    return this.slots.names.filter((n): n is string => n !== null);
  }

  get size(): number {
    return this.slots.byName.size;
  }

  get moduleNames(): string[] {
    return [...this.dims.keys()];
  }

  has(name: string): boolean {
    return this.slots.byName.has(name);
  }

  indexOf(name: string): number {
    return this.slots.byName.get(name) ?? -1;
  }

  rows(names: ReadonlyArray<string | null>): Int32Array {
    return this.slots.resolve(names, Array.isArray(names) ? names.length : 0);
  }

  /** Adds an adapter's factors under `name` (checked: shapes, finite scales). Returns its slot. */
  register(name: string, adapter: LoraBankAdapter, options: { replace?: boolean } = {}): number {
    checkName(name);
    const o = object(options, 'options');
    knownKeys(o, 'options', ['replace']);
    const a = object(adapter, 'adapter') as unknown as LoraBankAdapter;
    if (!(a.modules instanceof Map)) throw invalid('an adapter with a Map of modules', 'adapter.modules', a.modules);
    const pairs = new Map<string, NativeFactorPair>();
    const seen = new Map<string, { dIn: number; dOut: number }>();
    for (const [moduleName, module] of a.modules as ReadonlyMap<string, LoraBankModule>) {
      const where = `${name}: adapter.modules[${JSON.stringify(moduleName)}]`;
      object(module, where);
      const A = checkMatrix(module.A, `${where}.A`);
      const B = checkMatrix(module.B, `${where}.B`, { cols: A.rows });
      const scale = finiteNumber(module.scale, `${where}.scale`);
      const known = this.dims.get(moduleName) ?? seen.get(moduleName);
      if (known && (known.dIn !== A.cols || known.dOut !== B.rows)) {
        throw new EigenLoraxError(
          `${where}: ${A.cols} -> ${B.rows}, but the bank's module is ${known.dIn} -> ${known.dOut}`,
          'ERR_SHAPE_MISMATCH',
        );
      }
      seen.set(moduleName, { dIn: A.cols, dOut: B.rows });
      pairs.set(moduleName, { A, B, scale });
    }
    if (this.slots.byName.has(name)) {
      if (o.replace !== true) throw new EigenLoraxError(`An adapter named ${JSON.stringify(name)} is already registered (pass replace: true)`, 'ERR_INVALID_ARGUMENT');
      this.remove(name);
    }
    for (const [moduleName, d] of seen) if (!this.dims.has(moduleName)) this.dims.set(moduleName, d);
    const slot = this.slots.take(name);
    this.adapters[slot] = pairs;
    return slot;
  }

  remove(name: string): boolean {
    const slot = this.slots.release(checkName(name));
    if (slot === null) return false;
    this.adapters[slot] = null;
    return true;
  }

  /** y = x W^T + b + for each row b with an adapter i: s_i (x_b A_i^T) B_i^T. */
  async apply(moduleName: string, x: Matrix, rows: RowAdapters, options: BankApplyOptions = {}): Promise<Matrix> {
    const d = this.dims.get(moduleName);
    if (d === undefined) throw new EigenLoraxError(`No registered adapter has a module ${JSON.stringify(moduleName)}`, 'ERR_INVALID_ARGUMENT');
    const xm = checkMatrix(x, 'x', { cols: d.dIn });
    const resolved = this.slots.resolve(rows, xm.rows);
    // Only the adapters this batch uses cross to the native side (as a serving system
    // would pass them), numbered in order of first use; rows without the module get none.
    const local = new Map<number, number>();
    const adapters: NativeFactorPair[] = [];
    const compact = new Int32Array(xm.rows);
    for (let b = 0; b < xm.rows; b++) {
      const slot = resolved[b]!;
      const pair = slot < 0 ? undefined : this.adapters[slot]?.get(moduleName);
      if (pair === undefined) {
        compact[b] = -1;
        continue;
      }
      let index = local.get(slot);
      if (index === undefined) {
        index = adapters.length;
        local.set(slot, index);
        adapters.push(pair);
      }
      compact[b] = index;
    }
    const id = this.slots.begin();
    try {
      return await loraBankApply(xm, adapters, compact, { ...options, dOut: d.dOut });
    } finally {
      this.slots.end(id);
    }
  }

  memory(): LoraBankMemory {
    const modules = [...this.dims].map(([name, d]) => {
      let adapters = 0;
      let bytes = 0;
      for (const a of this.adapters) {
        const p = a?.get(name);
        if (p === undefined) continue;
        adapters++;
        bytes += p.A.data.byteLength + p.B.data.byteLength;
      }
      return { name, dIn: d.dIn, dOut: d.dOut, adapters, loraBytes: bytes };
    });
    return { adapters: this.size, modules, total: { loraBytes: modules.reduce((n, m) => n + m.loraBytes, 0) } };
  }
}
