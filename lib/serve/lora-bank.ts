/** The plain-LoRA baseline bank: each adapter's own factors, rows gathered per adapter. */
import type { LoraAdapter } from '../adapters/types.js';
import { EigenLoraxError } from '../errors.js';
import { checkMatrix, type Matrix } from '../matrix.js';
import { loraBankApply } from '../multiadapter.js';
import type { NativeFactorPair } from '../native/ops.js';
import { finiteNumber, invalid, knownKeys, object } from '../validate.js';
import { AdapterRegistry, checkName, compactRows, type BankApplyOptions, type RowAdapters } from './registry.js';

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
export class LoraBank extends AdapterRegistry {
  private readonly adapters: Array<Map<string, NativeFactorPair> | null> = [];
  private readonly dims = new Map<string, { dIn: number; dOut: number }>();

  get moduleNames(): string[] {
    return [...this.dims.keys()];
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
    this.makeRoom(name, o.replace);
    for (const [moduleName, d] of seen) if (!this.dims.has(moduleName)) this.dims.set(moduleName, d);
    const slot = this.slots.take(name);
    this.adapters[slot] = pairs;
    return slot;
  }

  protected clearSlot(slot: number): void {
    this.adapters[slot] = null;
  }

  /** y = x W^T + b + for each row b with an adapter i: s_i (x_b A_i^T) B_i^T. */
  async apply(moduleName: string, x: Matrix, rows: RowAdapters, options: BankApplyOptions = {}): Promise<Matrix> {
    const d = this.dims.get(moduleName);
    if (d === undefined) throw new EigenLoraxError(`No registered adapter has a module ${JSON.stringify(moduleName)}`, 'ERR_INVALID_ARGUMENT');
    const xm = checkMatrix(x, 'x', { cols: d.dIn });
    const resolved = this.slots.resolve(rows, xm.rows);
    const { slots, rows: compact } = compactRows(resolved, (slot) => this.adapters[slot]?.has(moduleName) === true);
    const adapters = slots.map((slot) => this.adapters[slot]!.get(moduleName)!);
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
