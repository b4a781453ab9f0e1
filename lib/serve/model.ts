/**
 * A served model: a base network of Linear and activation layers plus an
 * {@link AdapterBank} over one subspace, run as one batched forward pass in which every
 * row names its own adapter (or none: the base model).
 *
 * Each Linear layer that is a module of the subspace runs `AdapterBank.apply` with its
 * weight and bias: one native call computes `x W^T + b` and, for each row, its adapter's
 * `(x V_A) M_i U_B^T`, with the two large products shared by the whole batch. Layers
 * outside the subspace run `linearForward`; activations are the training kernels' loops
 * into buffers of the pass's own (so concurrent passes do not share buffers).
 *
 * Registration and removal are safe while passes run: a pass resolves its rows' adapters
 * once, at its start, and every layer of it must see the same adapters. So `register` and
 * `remove` wait for the passes in flight and hold back the passes that arrive after them
 * (first come, first served), then run at once (they are synchronous and cheap).
 */
import { EigenLoraxError } from '../errors.js';
import { linearForward } from '../lowrank.js';
import { checkMatrix, matrix, type Matrix } from '../matrix.js';
import type { AdapterCoefficients, Subspace } from '../subspace/types.js';
import { geluErfForward, geluTanhForward, reluForward } from '../train/kernels.js';
import { GELU, Linear, ReLU, type GeluApproximation } from '../train/layers.js';
import type { Sequential } from '../train/model.js';
import { integer, invalid, knownKeys, object } from '../validate.js';
import { AdapterBank } from './bank.js';

/** Adapter names: file-safe (they name `adapters/<name>.safetensors`) and URL-safe. */
export const ADAPTER_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9+_.-]{0,127}$/;

/** One layer of a served model. */
export type ServedLayer =
  | { kind: 'linear'; name: string; weight: Matrix; bias: Float32Array | null }
  | { kind: 'relu' }
  | { kind: 'gelu'; approximate: GeluApproximation };

/** A registered adapter. */
export interface ServedAdapter {
  name: string;
  /** Its slot in the bank (stable until it is removed). */
  slot: number;
  /** Rank per subspace module it has coefficients for. */
  ranks: Record<string, number>;
  /** The name of the adapter the coefficients were computed from. */
  source: string;
  /** Its relative Frobenius error on the subspace, as recorded in the coefficients. */
  relativeError: number;
}

export interface ServedForward {
  /** n x outFeatures. */
  output: Matrix;
  /**
   * Rows whose adapter was not registered when the pass started: they ran as the base
   * model and their output is not the adapter's.
   */
  unknownRows: number[];
}

/** Checks an adapter name; ERR_INVALID_ARGUMENT naming `field`. */
export function checkAdapterName(name: unknown, field = 'name'): string {
  if (typeof name !== 'string' || !ADAPTER_NAME_PATTERN.test(name)) {
    throw invalid('an adapter name (1-128 letters, digits, + _ . -, starting with a letter or digit)', field, name);
  }
  return name;
}

function servedLayers(model: Sequential): ServedLayer[] {
  if (typeof model !== 'object' || model === null || !Array.isArray(model.layers)) throw invalid('a Sequential model', 'model', model);
  return model.layers.map((layer, i): ServedLayer => {
    if (layer instanceof Linear) return { kind: 'linear', name: layer.name, weight: layer.weight, bias: layer.bias };
    if (layer instanceof ReLU) return { kind: 'relu' };
    if (layer instanceof GELU) return { kind: 'gelu', approximate: layer.approximate };
    throw invalid('a Linear, ReLU or GELU layer (adapters are served from the subspace, not as layers)', `model.layers[${i}]`, layer.kind);
  });
}

/** Every alpha, beta and scale finite: a NaN would silently poison its adapter's rows. */
function checkFinite(name: string, c: AdapterCoefficients): void {
  for (const [moduleName, m] of c.modules) {
    for (const [key, values] of [['alpha', m.alpha?.data], ['beta', m.beta?.data]] as const) {
      if (!(values instanceof Float32Array)) continue; // shape errors are the bank's to report
      for (let i = 0; i < values.length; i++) {
        if (!Number.isFinite(values[i])) {
          throw new EigenLoraxError(`${name}: coefficients.modules[${JSON.stringify(moduleName)}].${key} holds ${values[i]} at index ${i}`, 'ERR_NON_FINITE');
        }
      }
    }
  }
}

/** Shared (forward passes) and exclusive (register/remove) sections, granted in arrival order. */
class Gate {
  #readers = 0;
  #writer = false;
  readonly #queue: Array<{ exclusive: boolean; start: () => void }> = [];

  async shared<T>(work: () => Promise<T>): Promise<T> {
    await this.#acquire(false);
    try {
      return await work();
    } finally {
      this.#readers--;
      this.#grant();
    }
  }

  async exclusive<T>(work: () => T): Promise<T> {
    await this.#acquire(true);
    try {
      return work();
    } finally {
      this.#writer = false;
      this.#grant();
    }
  }

  #acquire(exclusive: boolean): Promise<void> {
    if (this.#queue.length === 0 && !this.#writer && (!exclusive || this.#readers === 0)) {
      if (exclusive) this.#writer = true;
      else this.#readers++;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#queue.push({ exclusive, start: resolve }));
  }

  #grant(): void {
    while (this.#queue.length > 0 && !this.#writer) {
      const head = this.#queue[0]!;
      if (head.exclusive) {
        if (this.#readers > 0) return;
        this.#writer = true;
      } else {
        this.#readers++;
      }
      this.#queue.shift();
      head.start();
    }
  }
}

export class ServedModel {
  readonly layers: readonly ServedLayer[];
  readonly subspace: Subspace;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly #bank: AdapterBank;
  readonly #adapters = new Map<string, ServedAdapter>();
  readonly #gate = new Gate();

  /**
   * `base`: a Sequential of Linear, ReLU and GELU layers (its weights are referenced, not
   * copied). Every module of `subspace` must be one of its Linear layers, with the same
   * shapes (ERR_SUBSPACE_MISMATCH). `capacity`: adapter slots allocated at first;
   * `pairCacheBytes`: each module's cache of hot adapters' rank pairs (AdapterBank).
   */
  constructor(base: Sequential, subspace: Subspace, options: { capacity?: number; pairCacheBytes?: number } = {}) {
    const o = object(options, 'options');
    knownKeys(o, 'options', ['capacity', 'pairCacheBytes']);
    this.layers = servedLayers(base);
    this.#bank = new AdapterBank(subspace, {
      capacity: integer(o.capacity ?? 16, 'options.capacity', 1),
      ...(o.pairCacheBytes === undefined ? {} : { pairCacheBytes: o.pairCacheBytes as number }),
    });
    this.subspace = this.#bank.subspace;
    this.inFeatures = base.inFeatures;
    this.outFeatures = base.outFeatures;
    const linears = new Map<string, Extract<ServedLayer, { kind: 'linear' }>>();
    for (const l of this.layers) if (l.kind === 'linear') linears.set(l.name, l);
    for (const m of this.subspace.modules.values()) {
      const l = linears.get(m.name);
      if (l === undefined) {
        throw new EigenLoraxError(
          `subspace module ${JSON.stringify(m.name)} is not a Linear layer of the model (its Linear layers: ${[...linears.keys()].join(', ')})`,
          'ERR_SUBSPACE_MISMATCH',
        );
      }
      if (m.layout !== 'linear' || m.dIn !== l.weight.cols || m.dOut !== l.weight.rows) {
        throw new EigenLoraxError(
          `subspace module ${m.name} is a ${m.layout} module ${m.dIn} -> ${m.dOut}, but the model's layer is linear ${l.weight.cols} -> ${l.weight.rows}`,
          'ERR_SUBSPACE_MISMATCH',
        );
      }
    }
  }

  /** Registered adapter names, in slot order. */
  get adapterNames(): string[] {
    return this.#bank.names;
  }

  get adapterCount(): number {
    return this.#adapters.size;
  }

  has(name: string): boolean {
    return this.#adapters.has(name);
  }

  adapter(name: string): ServedAdapter | undefined {
    return this.#adapters.get(name);
  }

  /** The registered adapters, in slot order. */
  adapters(): ServedAdapter[] {
    return this.#bank.names.map((n) => this.#adapters.get(n)!);
  }

  /**
   * Adds an adapter from its coefficients on the subspace (checked: same subspace, shapes,
   * finite values). A taken name is ERR_ADAPTER_EXISTS unless `replace: true`. Waits for
   * the passes in flight.
   */
  async register(name: string, coefficients: AdapterCoefficients, options: { replace?: boolean } = {}): Promise<ServedAdapter> {
    checkAdapterName(name);
    const o = object(options, 'options');
    knownKeys(o, 'options', ['replace']);
    const c = object(coefficients, 'coefficients') as unknown as AdapterCoefficients;
    if (c.modules instanceof Map) checkFinite(name, c);
    return this.#gate.exclusive(() => {
      if (this.#adapters.has(name) && o.replace !== true) {
        throw new EigenLoraxError(`An adapter named ${JSON.stringify(name)} is already registered (replace it to change it)`, 'ERR_ADAPTER_EXISTS');
      }
      const slot = this.#bank.register(name, c, { replace: o.replace === true });
      const ranks: Record<string, number> = {};
      for (const [moduleName, m] of c.modules) ranks[moduleName] = m.alpha.cols;
      const entry: ServedAdapter = { name, slot, ranks, source: c.adapter?.name ?? name, relativeError: c.relativeError };
      this.#adapters.set(name, entry);
      return entry;
    });
  }

  /** Removes an adapter; false when none has that name. Waits for the passes in flight. */
  async remove(name: string): Promise<boolean> {
    if (typeof name !== 'string') throw invalid('an adapter name', 'name', name);
    return this.#gate.exclusive(() => {
      if (!this.#adapters.delete(name)) return false;
      this.#bank.remove(name);
      return true;
    });
  }

  /**
   * The model's output for `x` (n x inFeatures), each row with the adapter `adapters[b]`
   * names (null: the base model). A name that is not registered is ERR_UNKNOWN_ADAPTER.
   */
  async forward(x: Matrix, adapters: ReadonlyArray<string | null>): Promise<Matrix> {
    const { output } = await this.#pass(x, adapters, true);
    return output;
  }

  /**
   * As {@link forward}, but rows naming an adapter that is not registered (when the pass
   * starts) do not fail the batch: they are listed in `unknownRows`, for the caller to
   * answer on their own. What a server uses, where adapters come and go between requests.
   */
  async tryForward(x: Matrix, adapters: ReadonlyArray<string | null>): Promise<ServedForward> {
    return this.#pass(x, adapters, false);
  }

  async #pass(x: Matrix, adapters: ReadonlyArray<string | null>, strict: boolean): Promise<ServedForward> {
    const input = checkMatrix(x, 'x', { cols: this.inFeatures });
    if (!Array.isArray(adapters)) throw invalid('an array of adapter names (or null)', 'adapters', adapters);
    if (adapters.length !== input.rows) {
      throw new EigenLoraxError(`adapters: expected ${input.rows} entries (one per row of x), received ${adapters.length}`, 'ERR_SHAPE_MISMATCH');
    }
    return this.#gate.shared(async () => {
      const slots = new Int32Array(input.rows);
      const unknownRows: number[] = [];
      let adapted = false;
      for (let b = 0; b < input.rows; b++) {
        const name: unknown = adapters[b];
        if (name === null || name === undefined) {
          slots[b] = -1;
          continue;
        }
        if (typeof name !== 'string') throw invalid('an adapter name or null', `adapters[${b}]`, name);
        const slot = this.#bank.indexOf(name);
        if (slot < 0) {
          if (strict) throw new EigenLoraxError(`adapters[${b}]: no adapter named ${JSON.stringify(name)} is registered`, 'ERR_UNKNOWN_ADAPTER');
          unknownRows.push(b);
        } else {
          adapted = true;
        }
        slots[b] = slot;
      }
      let h = input;
      for (const layer of this.layers) h = await this.#layer(layer, h, slots, adapted);
      return { output: h, unknownRows };
    });
  }

  async #layer(layer: ServedLayer, h: Matrix, slots: Int32Array, adapted: boolean): Promise<Matrix> {
    if (layer.kind === 'linear') {
      const base = layer.bias === null ? { weight: layer.weight } : { weight: layer.weight, bias: layer.bias };
      // A batch without adapters skips the bank's shared products.
      if (adapted && this.subspace.modules.has(layer.name)) return this.#bank.apply(layer.name, h, slots, base);
      return linearForward(h, base);
    }
    const y = matrix(h.rows, h.cols);
    if (layer.kind === 'relu') reluForward(h.data, y.data);
    else if (layer.approximate === 'tanh') geluTanhForward(h.data, y.data, new Float32Array(h.data.length));
    else geluErfForward(h.data, y.data, new Float32Array(h.data.length));
    return y;
  }
}
