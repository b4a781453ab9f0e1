/**
 * Adapter models from a base model: the same layers with every (or some) Linear layer
 * replaced by a LoRA or EigenLoRA layer over a frozen copy of it. The base model is left
 * as it is: the new layers share its weight arrays (not copied) and the activations are new
 * instances, so both models can be used side by side.
 */
import { type Matrix } from '../matrix.js';
import { integer, invalid, knownKeys, object } from '../validate.js';
import { EigenLoRA, GELU, Linear, LoRA, ReLU, type EigenLoRAInit, type Layer } from './layers.js';
import type { ProductOrder } from '../lowrank.js';
import { Sequential } from './model.js';

/**
 * A new model in which each Linear layer `l` of `base` becomes `adapt(frozen copy of l, i)`
 * (or stays a frozen Linear when `adapt` returns null). Activation layers are re-created.
 */
export function adaptModel(base: Sequential, adapt: (layer: Linear, index: number) => Layer | null | undefined): Sequential {
  if (!(base instanceof Sequential)) throw invalid('a Sequential model', 'base', base);
  if (typeof adapt !== 'function') throw invalid('a function', 'adapt', adapt);
  const layers = base.layers.map((layer, index) => {
    if (layer instanceof Linear) {
      const frozen = new Linear(layer.name, { weight: layer.weight, bias: layer.bias });
      return adapt(frozen, index) ?? frozen;
    }
    if (layer instanceof ReLU) return new ReLU(layer.name);
    if (layer instanceof GELU) return new GELU(layer.name, { approximate: layer.approximate });
    throw invalid('Linear, ReLU and GELU layers (to adapt)', `base.layers[${index}]`, layer.kind);
  });
  return new Sequential(layers);
}

function targetsOf(value: unknown, base: Sequential, name: string): Set<string> {
  const linear = base.layers.filter((l) => l instanceof Linear).map((l) => l.name);
  if (value === undefined) return new Set(linear);
  if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) throw invalid('an array of layer names', name, value);
  for (const v of value) if (!linear.includes(v)) throw invalid(`names of Linear layers (${linear.join(', ')})`, name, v);
  return new Set(value as string[]);
}

export interface LoraModelOptions {
  rank: number;
  /** lora_alpha (default: rank). */
  alpha?: number;
  rslora?: boolean;
  /** Seed of the A initialisations; layer i uses seed + i (default 0). */
  seed?: number;
  /** Layers to adapt (default: every Linear layer). */
  targets?: string[];
}

/** `base` with LoRA (PEFT initialisation) on its Linear layers. */
export function loraModel(base: Sequential, options: LoraModelOptions): Sequential {
  const o = object(options, 'options');
  knownKeys(o, 'options', ['rank', 'alpha', 'rslora', 'seed', 'targets']);
  const targets = targetsOf(o.targets, base, 'options.targets');
  const seed = integer(o.seed ?? 0, 'options.seed', 0);
  return adaptModel(base, (layer, i) =>
    targets.has(layer.name)
      ? new LoRA(layer.name, {
          base: layer,
          rank: o.rank as number,
          ...(o.alpha === undefined ? {} : { alpha: o.alpha as number }),
          ...(o.rslora === undefined ? {} : { rslora: o.rslora as boolean }),
          seed: seed + i,
        })
      : null,
  );
}

/** Components of one module: V_A (`in x K_A`) and U_B (`out x K_B`), augmented directions included. */
export interface ModuleComponents {
  componentsA: Matrix;
  componentsB: Matrix;
}

export interface EigenLoraModelOptions {
  /** Components by layer name; layers without an entry stay frozen Linear layers. */
  components: ReadonlyMap<string, ModuleComponents> | Readonly<Record<string, ModuleComponents>>;
  rank: number;
  /** s (default 1). */
  scale?: number;
  /** Default 'zero-beta'; 'project' takes `loadings`. */
  init?: EigenLoRAInit;
  /** Initial alpha, beta by layer name (with init 'project'). */
  loadings?: ReadonlyMap<string, { alpha: Matrix; beta: Matrix }> | Readonly<Record<string, { alpha: Matrix; beta: Matrix }>>;
  /** Layer i uses seed + i (default 0). */
  seed?: number;
  order?: ProductOrder;
}

function lookup<T>(source: ReadonlyMap<string, T> | Readonly<Record<string, T>> | undefined, key: string): T | undefined {
  if (source === undefined) return undefined;
  if (source instanceof Map) return source.get(key);
  return Object.prototype.hasOwnProperty.call(source, key) ? (source as Record<string, T>)[key] : undefined;
}

/** `base` with EigenLoRA layers on the Linear layers that `components` names. */
export function eigenLoraModel(base: Sequential, options: EigenLoraModelOptions): Sequential {
  const o = object(options, 'options');
  knownKeys(o, 'options', ['components', 'rank', 'scale', 'init', 'loadings', 'seed', 'order']);
  const components = o.components as EigenLoraModelOptions['components'];
  if (typeof components !== 'object' || components === null) throw invalid('a Map or object of components by layer name', 'options.components', components);
  const names = components instanceof Map ? [...components.keys()] : Object.keys(components);
  const linear = new Set(base.layers.filter((l) => l instanceof Linear).map((l) => l.name));
  for (const n of names) if (!linear.has(n)) throw invalid(`names of Linear layers (${[...linear].join(', ')})`, 'options.components', n);
  const seed = integer(o.seed ?? 0, 'options.seed', 0);
  const loadings = o.loadings as EigenLoraModelOptions['loadings'];
  return adaptModel(base, (layer, i) => {
    const c = lookup(components, layer.name);
    if (c === undefined) return null;
    const l = lookup(loadings, layer.name);
    return new EigenLoRA(layer.name, {
      base: layer,
      componentsA: c.componentsA,
      componentsB: c.componentsB,
      rank: o.rank as number,
      ...(o.scale === undefined ? {} : { scale: o.scale as number }),
      ...(o.init === undefined ? {} : { init: o.init as EigenLoRAInit }),
      ...(l === undefined ? {} : { loadings: l }),
      ...(o.order === undefined ? {} : { order: o.order as ProductOrder }),
      seed: seed + i,
    });
  });
}
