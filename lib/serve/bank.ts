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
 *
 * Hot adapters. A batch with few distinct adapters runs through their rank-r pairs; each
 * module keeps the pairs recent batches used in a {@link PairCache} (`pairCacheBytes` per
 * module, default 16 MiB: about 30 adapters of rank 16 at d = 4096; 0: none), made at the first
 * apply that may run on the CPU, with its own copy of the module's components.
 */
import { EigenLoraxError } from '../errors.js';
import { checkMatrix, checkVector, matrix, type Matrix } from '../matrix.js';
import { DeviceMatrix } from '../cuda.js';
import { eigenBankApply, mixingMatrix, PairCache } from '../multiadapter.js';
import { checkSubspace } from '../subspace/project.js';
import type { AdapterCoefficients, Subspace, SubspaceModule } from '../subspace/types.js';
import { finiteNumber, integer, invalid, knownKeys, object } from '../validate.js';
import { AdapterRegistry, checkName, compactRows, type BankApplyOptions, type RowAdapters } from './registry.js';

export { LoraBank, type LoraBankAdapter, type LoraBankModule, type LoraBankMemory } from './lora-bank.js';
export type { BankApplyOptions, RowAdapters } from './registry.js';

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
  /** The pair cache: its pairs now, and its copy of the components (0 before it is made). */
  pairCacheBytes: number;
  pairCacheComponentsBytes: number;
}

export interface BankMemory {
  adapters: number;
  /** Slots allocated. */
  capacity: number;
  modules: BankModuleMemory[];
  total: Omit<BankModuleMemory, 'name' | 'dIn' | 'dOut' | 'kA' | 'kB' | 'adapters'>;
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
  /** Each slot's rank here (0: none), for the native choice of path. */
  ranks: Int32Array;
  pairCache: PairCache | null;
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
export class AdapterBank extends AdapterRegistry {
  readonly subspace: Subspace;
  private readonly modules = new Map<string, EigenModule>();
  private readonly entries: Array<EigenEntry | null> = [];
  private capacityValue: number;
  private readonly pairCacheBytes: number;

  /**
   * `capacity`: slots allocated at first (default 16); the buffers double when full.
   * `pairCacheBytes`: each module's pair cache (see the module comment; default 16 MiB).
   */
  constructor(subspace: Subspace, options: { capacity?: number; pairCacheBytes?: number } = {}) {
    super();
    this.subspace = checkSubspace(subspace);
    const o = object(options, 'options');
    knownKeys(o, 'options', ['capacity', 'pairCacheBytes']);
    this.capacityValue = integer(o.capacity ?? 16, 'options.capacity', 1);
    this.pairCacheBytes = integer(o.pairCacheBytes ?? 16 * 2 ** 20, 'options.pairCacheBytes', 0);
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
      ranks: new Int32Array(this.capacityValue),
      pairCache: null,
    };
  }

  get capacity(): number {
    return this.capacityValue;
  }

  /** The subspace's module names. */
  get moduleNames(): string[] {
    return [...this.modules.keys()];
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
    this.makeRoom(name, o.replace);
    const slot = this.slots.take(name);
    if (slot >= this.capacityValue) this.grow(slot + 1);
    for (const m of this.modules.values()) {
      const size = m.kA * m.kB;
      const target = m.mixing.subarray(slot * size, (slot + 1) * size);
      const mc = c.modules.get(m.name);
      m.ranks[slot] = mc?.alpha.cols ?? 0;
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
      const ranks = new Int32Array(capacity);
      ranks.set(m.ranks);
      m.ranks = ranks;
    }
    this.capacityValue = capacity;
  }

  protected clearSlot(slot: number): void {
    this.entries[slot] = null;
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
    // The native side copies the mixing it is given with every call: a batch that uses few
    // of the bank's adapters passes only theirs (16 KiB each at K = 64, not 16 MiB for 1024
    // adapters). Gathering them here runs at about a quarter of the native copy's rate, so
    // a batch using a quarter of the bank or more passes the whole buffer.
    const resolved = this.slots.resolve(rows, xm.rows);
    const count = this.slots.highWater;
    const { slots, rows: compact } = compactRows(resolved);
    const size = m.kA * m.kB;
    const pairCache = this.pairCacheOf(m, options);
    let bank = { componentsA: m.componentsA, componentsB: m.componentsB, mixing: m.mixing.subarray(0, count * size), ranks: m.ranks.subarray(0, count), count, pairCache };
    if (4 * slots.length < count) {
      const mixing = new Float32Array(slots.length * size);
      slots.forEach((slot, j) => mixing.set(m.mixing.subarray(slot * size, (slot + 1) * size), j * size));
      bank = { ...bank, mixing, ranks: Int32Array.from(slots, (slot) => m.ranks[slot]!), count: slots.length };
    }
    const id = this.slots.begin();
    try {
      return await eigenBankApply(xm, bank, bank.count === count ? resolved : compact, options);
    } finally {
      this.slots.end(id);
    }
  }

  /** The module's pair cache, made now for an apply that may run on the CPU. */
  private pairCacheOf(m: EigenModule, options: BankApplyOptions): PairCache | undefined {
    if (this.pairCacheBytes === 0) return undefined;
    const o = object(options, 'options') as BankApplyOptions;
    if (m.pairCache === null && o.device !== 'cuda' && !(o.weight instanceof DeviceMatrix)) {
      m.pairCache = new PairCache(m.componentsA, m.componentsB, { budget: this.pairCacheBytes });
    }
    return m.pairCache ?? undefined;
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
        pairCacheBytes: m.pairCache?.stats().bytes ?? 0,
        pairCacheComponentsBytes: m.pairCache?.stats().componentsBytes ?? 0,
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
        pairCacheBytes: sum('pairCacheBytes'),
        pairCacheComponentsBytes: sum('pairCacheComponentsBytes'),
      },
    };
  }
}
