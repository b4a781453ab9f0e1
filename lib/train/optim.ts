/**
 * Optimisers with PyTorch's semantics (SGD with momentum and Nesterov, Adam with L2
 * weight decay, AdamW with decoupled weight decay, both with bias correction), learning-rate
 * schedules (constant, cosine with linear warm-up, reduce on plateau), and gradient
 * clipping by global norm.
 *
 * Optimiser state is kept per parameter name, so it can be saved in a checkpoint under
 * PyTorch's names (`<param>.exp_avg`, `<param>.exp_avg_sq`, `<param>.momentum_buffer`)
 * and restored exactly.
 */
import { EigenLoraxError } from '../errors.js';
import { finiteNumber, integer, invalid, knownKeys, object, oneOf } from '../validate.js';
import { adamStep, scaleInPlace, sgdStep, sumOfSquares } from './kernels.js';
import type { Parameter } from './layers.js';

export type OptimizerKind = 'sgd' | 'adam' | 'adamw';

/** Everything an optimiser needs to continue exactly. */
export interface OptimizerState {
  kind: OptimizerKind;
  /** Updates made so far. */
  step: number;
  /** Hyper-parameters (base learning rate included). */
  hyper: Record<string, number | boolean>;
  /** Per-parameter state tensors by `<param>.<name>`. */
  tensors: Map<string, Float32Array>;
}

export abstract class Optimizer {
  abstract readonly kind: OptimizerKind;
  /** The learning rate given at construction. */
  readonly baseLr: number;
  /** The learning rate of the next step (a schedule sets it). */
  lr: number;
  /** Updates made so far. */
  stepCount = 0;

  constructor(lr: number) {
    this.baseLr = finiteNumber(lr, 'options.lr');
    if (!(this.baseLr >= 0)) throw invalid('a learning rate >= 0', 'options.lr', lr);
    this.lr = this.baseLr;
  }

  /** Updates every parameter from its `grad`. */
  abstract step(params: readonly Parameter[]): void;

  /** Hyper-parameters, for checkpoints (and the check that a resumed optimiser is the same). */
  abstract hyper(): Record<string, number | boolean>;

  protected abstract stateTensors(): Map<string, Float32Array>;
  protected abstract setStateTensors(tensors: Map<string, Float32Array>): void;

  state(): OptimizerState {
    return { kind: this.kind, step: this.stepCount, hyper: this.hyper(), tensors: this.stateTensors() };
  }

  /** Restores a {@link state} (copied); ERR_CHECKPOINT_MISMATCH if it is another optimiser's. */
  loadState(state: OptimizerState): void {
    if (state.kind !== this.kind) {
      throw new EigenLoraxError(`the optimiser state is ${state.kind}'s but the optimiser is ${this.kind}`, 'ERR_CHECKPOINT_MISMATCH');
    }
    const mine = this.hyper();
    for (const [k, v] of Object.entries(mine)) {
      if (state.hyper[k] !== v) {
        throw new EigenLoraxError(
          `the optimiser state was made with ${k} = ${String(state.hyper[k])} but this ${this.kind} has ${k} = ${String(v)}`,
          'ERR_CHECKPOINT_MISMATCH',
        );
      }
    }
    this.stepCount = integer(state.step, 'state.step', 0);
    this.setStateTensors(new Map([...state.tensors].map(([k, v]) => [k, v.slice()])));
  }
}

function nonNegative(value: unknown, name: string): number {
  const v = finiteNumber(value, name);
  if (v < 0) throw invalid('a number >= 0', name, value);
  return v;
}

function unitInterval(value: unknown, name: string): number {
  const v = finiteNumber(value, name);
  if (!(v >= 0 && v < 1)) throw invalid('a number in [0, 1)', name, value);
  return v;
}

function stateFor(map: Map<string, Float32Array>, key: string, length: number): Float32Array {
  let s = map.get(key);
  if (s === undefined) {
    s = new Float32Array(length);
    map.set(key, s);
  } else if (s.length !== length) {
    throw new EigenLoraxError(`optimiser state ${JSON.stringify(key)} has ${s.length} values but the parameter has ${length}`, 'ERR_CHECKPOINT_MISMATCH');
  }
  return s;
}

/** The flat argument list of a native optimiser step ([param, grad, state...] per parameter),
 * rebuilt only when the parameters or the state maps change: a loop's steps allocate nothing. */
class TensorGroups<T> {
  #params: readonly Parameter[] | null = null;
  #arrays: Float32Array[] = [];
  #list: T[] = [];

  /** The list for `params`; `build` makes it when the cached one does not fit. */
  get(params: readonly Parameter[], build: () => T[]): T[] {
    const a = this.#arrays;
    if (params !== this.#params || 2 * params.length !== a.length || params.some((p, i) => p.data !== a[2 * i] || p.grad !== a[2 * i + 1])) {
      this.#list = build();
      this.#params = params;
      this.#arrays = params.flatMap((p) => [p.data, p.grad]);
    }
    return this.#list;
  }

  /** Forget the list (the state tensors were replaced). */
  reset(): void {
    this.#params = null;
  }
}

export interface SgdOptions {
  lr: number;
  /** Default 0. */
  momentum?: number;
  /** Default 0. */
  dampening?: number;
  /** Nesterov momentum (default false; needs momentum > 0 and dampening 0). */
  nesterov?: boolean;
  /** L2 penalty added to the gradient (default 0). */
  weightDecay?: number;
}

/** torch.optim.SGD. */
export class SGD extends Optimizer {
  readonly kind = 'sgd' as const;
  readonly momentum: number;
  readonly dampening: number;
  readonly nesterov: boolean;
  readonly weightDecay: number;
  #buffers = new Map<string, Float32Array>();
  readonly #groups = new TensorGroups<Float32Array | null>();

  constructor(options: SgdOptions) {
    const o = object(options, 'options');
    knownKeys(o, 'options', ['lr', 'momentum', 'dampening', 'nesterov', 'weightDecay']);
    super(o.lr as number);
    this.momentum = nonNegative(o.momentum ?? 0, 'options.momentum');
    this.dampening = nonNegative(o.dampening ?? 0, 'options.dampening');
    if (o.nesterov !== undefined && typeof o.nesterov !== 'boolean') throw invalid('true or false', 'options.nesterov', o.nesterov);
    this.nesterov = o.nesterov === true;
    if (this.nesterov && (this.momentum <= 0 || this.dampening !== 0)) {
      throw invalid('momentum > 0 and dampening 0 for Nesterov momentum', 'options.nesterov', true);
    }
    this.weightDecay = nonNegative(o.weightDecay ?? 0, 'options.weightDecay');
  }

  step(params: readonly Parameter[]): void {
    const hyper = { lr: this.lr, momentum: this.momentum, dampening: this.dampening, nesterov: this.nesterov, weightDecay: this.weightDecay };
    if (this.momentum === 0) {
      sgdStep(this.#groups.get(params, () => params.flatMap((p) => [p.data, p.grad, null])), { ...hyper, first: false });
    } else {
      // The buffers of parameters seen for the first time start as the gradient (PyTorch).
      const fresh = params.filter((p) => !this.#buffers.has(`${p.name}.momentum_buffer`));
      const groups = (list: readonly Parameter[]) => list.flatMap((p) => [p.data, p.grad, stateFor(this.#buffers, `${p.name}.momentum_buffer`, p.data.length)]);
      if (fresh.length === 0) sgdStep(this.#groups.get(params, () => groups(params)), { ...hyper, first: false });
      else {
        const seen = params.filter((p) => !fresh.includes(p));
        if (seen.length > 0) sgdStep(groups(seen), { ...hyper, first: false });
        sgdStep(groups(fresh), { ...hyper, first: true });
        this.#groups.reset();
      }
    }
    this.stepCount++;
  }

  hyper(): Record<string, number | boolean> {
    return { lr: this.baseLr, momentum: this.momentum, dampening: this.dampening, nesterov: this.nesterov, weightDecay: this.weightDecay };
  }

  protected stateTensors(): Map<string, Float32Array> {
    return new Map(this.#buffers);
  }

  protected setStateTensors(tensors: Map<string, Float32Array>): void {
    this.#buffers = tensors;
    this.#groups.reset();
  }
}

export interface AdamOptions {
  /** Default 1e-3. */
  lr?: number;
  /** [beta1, beta2], default [0.9, 0.999]. */
  betas?: [number, number];
  /** Default 1e-8. */
  eps?: number;
  /** Adam: L2 penalty added to the gradient (default 0). AdamW: decoupled decay (default 0.01). */
  weightDecay?: number;
}

abstract class AdamBase extends Optimizer {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  #moments = new Map<string, Float32Array>();
  readonly #groups = new TensorGroups<Float32Array>();
  protected abstract readonly decoupled: boolean;

  constructor(options: AdamOptions, defaultDecay: number) {
    const o = object(options, 'options');
    knownKeys(o, 'options', ['lr', 'betas', 'eps', 'weightDecay']);
    super((o.lr ?? 1e-3) as number);
    const betas = o.betas ?? [0.9, 0.999];
    if (!Array.isArray(betas) || betas.length !== 2) throw invalid('[beta1, beta2]', 'options.betas', betas);
    this.beta1 = unitInterval(betas[0], 'options.betas[0]');
    this.beta2 = unitInterval(betas[1], 'options.betas[1]');
    this.eps = nonNegative(o.eps ?? 1e-8, 'options.eps');
    this.weightDecay = nonNegative(o.weightDecay ?? defaultDecay, 'options.weightDecay');
  }

  step(params: readonly Parameter[]): void {
    const step = this.stepCount + 1;
    const tensors = this.#groups.get(params, () =>
      params.flatMap((p) => [p.data, p.grad, stateFor(this.#moments, `${p.name}.exp_avg`, p.data.length), stateFor(this.#moments, `${p.name}.exp_avg_sq`, p.data.length)]),
    );
    adamStep(tensors, { lr: this.lr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, weightDecay: this.weightDecay, decoupled: this.decoupled, step });
    this.stepCount = step;
  }

  hyper(): Record<string, number | boolean> {
    return { lr: this.baseLr, beta1: this.beta1, beta2: this.beta2, eps: this.eps, weightDecay: this.weightDecay };
  }

  protected stateTensors(): Map<string, Float32Array> {
    return new Map(this.#moments);
  }

  protected setStateTensors(tensors: Map<string, Float32Array>): void {
    this.#moments = tensors;
    this.#groups.reset();
  }
}

/** torch.optim.Adam (weight decay as an L2 term in the gradient). */
export class Adam extends AdamBase {
  readonly kind = 'adam' as const;
  protected readonly decoupled = false;
  constructor(options: AdamOptions = {}) {
    super(options, 0);
  }
}

/** torch.optim.AdamW (decoupled weight decay, default 0.01). */
export class AdamW extends AdamBase {
  readonly kind = 'adamw' as const;
  protected readonly decoupled = true;
  constructor(options: AdamOptions = {}) {
    super(options, 0.01);
  }
}

export type OptimizerSpec =
  | ({ type: 'sgd' } & SgdOptions)
  | ({ type: 'adam' } & AdamOptions)
  | ({ type: 'adamw' } & AdamOptions);

/** An optimiser from `{ type, ...options }`, or the given optimiser itself. */
export function createOptimizer(spec: OptimizerSpec | Optimizer): Optimizer {
  if (spec instanceof Optimizer) return spec;
  const o = object(spec, 'optimizer');
  const type = oneOf(o.type, 'optimizer.type', ['sgd', 'adam', 'adamw'] as const);
  const { type: _type, ...rest } = o;
  void _type;
  if (type === 'sgd') return new SGD(rest as unknown as SgdOptions);
  if (type === 'adam') return new Adam(rest as AdamOptions);
  return new AdamW(rest as AdamOptions);
}

// ---------------------------------------------------------------------------------------
// Gradient clipping

/**
 * Scales all gradients so that their global L2 norm is at most `maxNorm`
 * (torch.nn.utils.clip_grad_norm_: factor maxNorm / (norm + 1e-6) when below 1). Returns
 * the norm before clipping. A non-finite norm leaves the gradients unchanged.
 */
export function clipGradNorm(params: readonly Parameter[], maxNorm: number): number {
  const max = finiteNumber(maxNorm, 'maxNorm');
  if (!(max > 0)) throw invalid('a number > 0', 'maxNorm', maxNorm);
  const norm = gradNorm(params);
  const coef = max / (norm + 1e-6);
  if (Number.isFinite(norm) && coef < 1) for (const p of params) scaleInPlace(p.grad, coef);
  return norm;
}

/** The global L2 norm of all gradients. */
export function gradNorm(params: readonly Parameter[]): number {
  let total = 0;
  for (const p of params) total += sumOfSquares(p.grad);
  return Math.sqrt(total);
}

// ---------------------------------------------------------------------------------------
// Learning-rate schedules

export interface ScheduleState {
  type: string;
  [key: string]: unknown;
}

export interface LrSchedule {
  readonly type: 'constant' | 'cosine' | 'plateau';
  /** The learning rate of update number `step` (0-based: updates made before it). */
  lrAt(step: number, baseLr: number): number;
  /** Called with each evaluation's metric (plateau schedules react; others ignore it). */
  observe(metric: number): void;
  state(): ScheduleState;
  loadState(state: ScheduleState): void;
}

export class ConstantSchedule implements LrSchedule {
  readonly type = 'constant' as const;
  lrAt(_step: number, baseLr: number): number {
    return baseLr;
  }
  observe(): void {}
  state(): ScheduleState {
    return { type: this.type };
  }
  loadState(): void {}
}

export interface CosineOptions {
  /** Linear warm-up from 0 over this many updates (default 0). */
  warmupSteps?: number;
  /** Updates until the learning rate reaches `minLr` (default: the run's total updates). */
  totalSteps?: number;
  /** Floor of the decay (default 0). */
  minLr?: number;
}

/**
 * Linear warm-up then half-cosine decay, as transformers' `get_cosine_schedule_with_warmup`:
 * lr(t) = base t / warmup for t < warmup, then
 * minLr + (base - minLr) (1 + cos(pi (t - warmup) / (total - warmup))) / 2, and minLr from
 * `total` on.
 */
export class CosineSchedule implements LrSchedule {
  readonly type = 'cosine' as const;
  readonly warmupSteps: number;
  totalSteps: number | null;
  readonly minLr: number;

  constructor(options: CosineOptions = {}) {
    const o = object(options, 'schedule');
    knownKeys(o, 'schedule', ['warmupSteps', 'totalSteps', 'minLr']);
    this.warmupSteps = integer(o.warmupSteps ?? 0, 'schedule.warmupSteps', 0);
    this.totalSteps = o.totalSteps === undefined ? null : integer(o.totalSteps, 'schedule.totalSteps', 1);
    this.minLr = nonNegative(o.minLr ?? 0, 'schedule.minLr');
  }

  lrAt(step: number, baseLr: number): number {
    if (step < this.warmupSteps) return (baseLr * step) / Math.max(1, this.warmupSteps);
    const total = this.totalSteps;
    if (total === null) throw new EigenLoraxError('cosine schedule: totalSteps is not set', 'ERR_INVALID_ARGUMENT');
    const progress = (step - this.warmupSteps) / Math.max(1, total - this.warmupSteps);
    const factor = Math.max(0, 0.5 * (1 + Math.cos(Math.PI * Math.min(1, progress))));
    return this.minLr + (baseLr - this.minLr) * factor;
  }

  observe(): void {}

  state(): ScheduleState {
    return { type: this.type, warmupSteps: this.warmupSteps, totalSteps: this.totalSteps, minLr: this.minLr };
  }

  loadState(state: ScheduleState): void {
    if (state.warmupSteps !== this.warmupSteps || state.minLr !== this.minLr || (this.totalSteps !== null && state.totalSteps !== this.totalSteps)) {
      throw new EigenLoraxError(`the cosine schedule in the checkpoint (${JSON.stringify(state)}) differs from this one`, 'ERR_CHECKPOINT_MISMATCH');
    }
    this.totalSteps = state.totalSteps as number;
  }
}

export interface PlateauOptions {
  /** 'min' (default) for a loss, 'max' for an accuracy. */
  mode?: 'min' | 'max';
  /** Multiplier of the learning rate on a plateau (default 0.1). */
  factor?: number;
  /** Evaluations without improvement tolerated (default 10). */
  patience?: number;
  /** Relative improvement that counts (default 1e-4). */
  threshold?: number;
  thresholdMode?: 'rel' | 'abs';
  /** Evaluations to wait after a reduction (default 0). */
  cooldown?: number;
  /** Floor (default 0). */
  minLr?: number;
}

/** torch.optim.lr_scheduler.ReduceLROnPlateau, stepped with each evaluation's metric. */
export class ReduceOnPlateau implements LrSchedule {
  readonly type = 'plateau' as const;
  readonly mode: 'min' | 'max';
  readonly factor: number;
  readonly patience: number;
  readonly threshold: number;
  readonly thresholdMode: 'rel' | 'abs';
  readonly cooldown: number;
  readonly minLr: number;
  /** Product of the reductions so far. */
  scale = 1;
  best: number;
  badEvals = 0;
  cooldownLeft = 0;
  /** Learning rate last returned (the reduction applies to it, as PyTorch). */
  #current: number | null = null;

  constructor(options: PlateauOptions = {}) {
    const o = object(options, 'schedule');
    knownKeys(o, 'schedule', ['mode', 'factor', 'patience', 'threshold', 'thresholdMode', 'cooldown', 'minLr']);
    this.mode = oneOf(o.mode ?? 'min', 'schedule.mode', ['min', 'max'] as const);
    this.factor = finiteNumber(o.factor ?? 0.1, 'schedule.factor');
    if (!(this.factor > 0 && this.factor < 1)) throw invalid('a number in (0, 1)', 'schedule.factor', o.factor);
    this.patience = integer(o.patience ?? 10, 'schedule.patience', 0);
    this.threshold = nonNegative(o.threshold ?? 1e-4, 'schedule.threshold');
    this.thresholdMode = oneOf(o.thresholdMode ?? 'rel', 'schedule.thresholdMode', ['rel', 'abs'] as const);
    this.cooldown = integer(o.cooldown ?? 0, 'schedule.cooldown', 0);
    this.minLr = nonNegative(o.minLr ?? 0, 'schedule.minLr');
    this.best = this.mode === 'min' ? Infinity : -Infinity;
  }

  lrAt(_step: number, baseLr: number): number {
    const lr = Math.max(baseLr * this.scale, this.minLr);
    this.#current = lr;
    return lr;
  }

  #better(a: number): boolean {
    const b = this.best;
    if (this.mode === 'min') return this.thresholdMode === 'rel' ? a < b * (1 - this.threshold) : a < b - this.threshold;
    return this.thresholdMode === 'rel' ? a > b * (1 + this.threshold) : a > b + this.threshold;
  }

  observe(metric: number): void {
    if (this.#better(metric)) {
      this.best = metric;
      this.badEvals = 0;
    } else {
      this.badEvals++;
    }
    if (this.cooldownLeft > 0) {
      this.cooldownLeft--;
      this.badEvals = 0;
    }
    if (this.badEvals > this.patience) {
      const current = this.#current;
      // Reduce only while it still changes the learning rate (PyTorch's eps test).
      if (current === null || current - Math.max(current * this.factor, this.minLr) > 1e-8) this.scale *= this.factor;
      this.cooldownLeft = this.cooldown;
      this.badEvals = 0;
    }
  }

  state(): ScheduleState {
    return { type: this.type, scale: this.scale, best: this.best, badEvals: this.badEvals, cooldownLeft: this.cooldownLeft, current: this.#current };
  }

  loadState(state: ScheduleState): void {
    if (state.type !== this.type) throw new EigenLoraxError(`the checkpoint's schedule is ${String(state.type)}, not plateau`, 'ERR_CHECKPOINT_MISMATCH');
    this.scale = state.scale as number;
    this.best = state.best === null ? (this.mode === 'min' ? Infinity : -Infinity) : (state.best as number);
    this.badEvals = state.badEvals as number;
    this.cooldownLeft = state.cooldownLeft as number;
    this.#current = (state.current as number | null) ?? null;
  }
}

export type ScheduleSpec =
  | 'constant'
  | { type: 'constant' }
  | ({ type: 'cosine' } & CosineOptions)
  | ({ type: 'plateau' } & PlateauOptions);

export function createSchedule(spec: ScheduleSpec | LrSchedule | undefined): LrSchedule {
  if (spec === undefined || spec === 'constant') return new ConstantSchedule();
  if (typeof (spec as LrSchedule).lrAt === 'function') return spec as LrSchedule;
  const o = object(spec, 'schedule');
  const type = oneOf(o.type, 'schedule.type', ['constant', 'cosine', 'plateau'] as const);
  const { type: _type, ...rest } = o;
  void _type;
  if (type === 'constant') return new ConstantSchedule();
  if (type === 'cosine') return new CosineSchedule(rest as CosineOptions);
  return new ReduceOnPlateau(rest as PlateauOptions);
}
