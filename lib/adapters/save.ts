/**
 * Writing adapters: PEFT folders, diffusers `pytorch_lora_weights.safetensors`, kohya
 * `.safetensors` files. Everything is checked before anything is written; files are
 * written to temporary names in the destination folder and renamed.
 */
import { createHash } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { fileError, ioError, kindOf, writeFileAtomic, writeFolderAtomic } from '../io/files.js';
import {
  writeSafetensors,
  type SafetensorsEntry,
  type SafetensorsFloatDType,
  type SafetensorsRawEntry,
} from '../io/safetensors.js';
import { argumentPlace, parse } from '../schema.js';
import { invalid } from '../validate.js';
import { SaveAdapterOptionsSchema } from './options.js';
import { encodeScalar, naturalCompare, product } from './common.js';
import { ggufToHfSource, saveGgufAdapter } from './gguf.js';
import { DIFFUSERS_METADATA_KEY, DIFFUSERS_WEIGHTS_NAME, diffusersComponents } from './diffusers.js';
import { kohyaNameOf } from './names.js';
import { OpenedAdapter, PEFT_CONFIG_DIGEST_KEY } from './open.js';
import { checkInMemory, fromOpened, type SaveExtra, type SaveModule, type SaveSource } from './save-source.js';
import { namesForFormat } from './sd-convert.js';
import { compilePatterns, escapePattern, matchPattern } from './patterns.js';
import { PEFT_CONFIG_NAME, PEFT_PREFIX, PEFT_WEIGHTS_NAME, parseLoraSettings, resolveRankAlpha } from './peft.js';
import {
  type AdapterFormat,
  type LoraAdapter,
  type LoraModuleInfo,
  type SaveAdapterOptions,
  type SavedAdapter,
} from './types.js';

export type { SaveModule, SaveSource } from './save-source.js';

const unsupported = (target: string, message: string) => new EigenLoraxError(`${target}: ${message}`, 'ERR_ADAPTER_UNSUPPORTED');

// ---------------------------------------------------------------------------------------
// Shared pieces of the output

/** The stored shapes of a module's factors. */
function storedShapes(info: LoraModuleInfo): { A: number[]; B: number[] } {
  if (info.layout === 'conv' && info.convKernel) {
    const k = info.convKernel;
    return { A: [info.rank, info.inFeatures / product(k), ...k], B: [info.outFeatures, info.rank, ...k.map(() => 1)] };
  }
  return { A: [info.rank, info.inFeatures], B: [info.outFeatures, info.rank] };
}

function factorDtype(stored: string | undefined, requested: SaveAdapterOptions['dtype']): SafetensorsFloatDType {
  if (requested !== undefined) return requested;
  return stored === 'F16' || stored === 'BF16' || stored === 'F64' || stored === 'F32' ? stored : 'F32';
}

function factorEntries(m: SaveModule, keys: { A: string; B: string }, requested: SaveAdapterOptions['dtype']): SafetensorsEntry[] {
  const shapes = storedShapes(m.info);
  return [
    { name: keys.A, shape: shapes.A, data: m.A, dtype: factorDtype(m.info.dtypes.A, requested) },
    { name: keys.B, shape: shapes.B, data: m.B, dtype: factorDtype(m.info.dtypes.B, requested) },
  ];
}

/** Alpha as kohya/diffusers store it (no rsLoRA there): the alpha giving the same scale. */
function plainAlpha(info: LoraModuleInfo): number {
  return info.rslora ? info.alpha * Math.sqrt(info.rank) : info.alpha;
}

function alphaEntry(key: string, value: number, preferred: string | undefined): SafetensorsRawEntry {
  const encoded =
    (preferred !== undefined ? encodeScalar(value, preferred) : null) ?? encodeScalar(value, 'F32') ?? encodeScalar(value, 'F64');
  if (encoded === null) throw new EigenLoraxError(`internal: cannot encode alpha ${value}`, 'ERR_INTERNAL');
  return { name: key, shape: [], dtype: encoded.dtype, bytes: encoded.bytes };
}

/** The most frequent value (ties: the smaller). */
function mode(values: number[]): number {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best = values[0] as number;
  let bestCount = 0;
  for (const [v, c] of counts) if (c > bestCount || (c === bestCount && v < best)) [best, bestCount] = [v, c];
  return best;
}

interface PatternFields {
  r: number;
  lora_alpha: number;
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
}

/**
 * `r`, `lora_alpha` and the patterns that give each (name, rank, alpha) exactly under
 * PEFT's matching: the most common rank and alpha as defaults, the others as patterns of
 * the full module names (verified; escaped and anchored with `^` if a plain name would also
 * match another module).
 */
function patternFields(entries: Array<{ name: string; rank: number; alpha: number }>, where: string): PatternFields {
  const r = mode(entries.map((e) => e.rank));
  const loraAlpha = mode(entries.map((e) => e.alpha));
  for (const exact of [false, true]) {
    const key = (name: string) => (exact ? `^${escapePattern(name)}` : name);
    const rankPattern: Record<string, number> = {};
    const alphaPattern: Record<string, number> = {};
    for (const e of entries) {
      if (e.rank !== r) rankPattern[key(e.name)] = e.rank;
      if (e.alpha !== loraAlpha) alphaPattern[key(e.name)] = e.alpha;
    }
    const fields = { r, lora_alpha: loraAlpha, rank_pattern: rankPattern, alpha_pattern: alphaPattern };
    if (reproduces(fields, entries, where)) return fields;
  }
  throw new EigenLoraxError(`${where}: internal: no rank/alpha patterns reproduce the modules`, 'ERR_INTERNAL');
}

function reproduces(fields: PatternFields, entries: Array<{ name: string; rank: number; alpha: number }>, where: string): boolean {
  const ranks = compilePatterns(fields.rank_pattern, where, 'rank_pattern');
  const alphas = compilePatterns(fields.alpha_pattern, where, 'alpha_pattern');
  return entries.every(
    (e) => (matchPattern(ranks, e.name)?.value ?? fields.r) === e.rank && (matchPattern(alphas, e.name)?.value ?? fields.lora_alpha) === e.alpha,
  );
}

/** True when PEFT's `target_modules` (list: exact or `.`-suffix match; string: full regex match) selects `name`. */
function targeted(target: unknown, name: string): boolean {
  if (typeof target === 'string') {
    try {
      return new RegExp(`^(?:${target})$`).test(name);
    } catch {
      return false;
    }
  }
  if (Array.isArray(target)) return target.some((t) => typeof t === 'string' && (name === t || name.endsWith(`.${t}`)));
  return false;
}

function sortedJson(value: unknown): string {
  const sort = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(sort);
    if (v !== null && typeof v === 'object') {
      return Object.fromEntries(Object.keys(v as object).sort().map((k) => [k, sort((v as Record<string, unknown>)[k])]));
    }
    return v;
  };
  return `${JSON.stringify(sort(value), null, 2)}\n`;
}

/**
 * A LoraConfig dict for `entries` (names relative to the model PEFT wraps), starting from
 * `base` when given and keeping it unchanged where it already gives every module its rank,
 * alpha and rsLoRA flag.
 */
function loraConfigFor(
  entries: Array<{ name: string; info: LoraModuleInfo }>,
  base: Record<string, unknown> | null,
  where: string,
): Record<string, unknown> {
  const useRslora = entries.length > 0 && entries.every((e) => e.info.rslora);
  const wanted = entries.map((e) => ({ name: e.name, rank: e.info.rank, alpha: useRslora ? e.info.alpha : plainAlpha(e.info) }));
  const config: Record<string, unknown> = base === null ? {} : structuredClone(base);
  let keep = base !== null;
  if (keep) {
    try {
      const settings = parseLoraSettings(base, where, { requirePeftType: false });
      keep =
        settings.useRslora === useRslora &&
        wanted.every((w) => {
          const r = resolveRankAlpha(settings, w.name);
          return r.rank === w.rank && r.alpha === w.alpha;
        });
    } catch {
      keep = false;
    }
  }
  if (!keep) {
    Object.assign(config, patternFields(wanted, where), { use_rslora: useRslora });
  }
  if (!entries.every((e) => targeted(config.target_modules, e.name))) {
    config.target_modules = entries.map((e) => e.name).sort(naturalCompare);
  }
  if (!keep) config.use_dora = false;
  config.peft_type = 'LORA';
  return config;
}

// ---------------------------------------------------------------------------------------
// Formats

interface Output {
  entries: SafetensorsEntry[];
  metadata: Record<string, string>;
  /** PEFT only. */
  config?: Record<string, unknown>;
}

function checkExtras(source: SaveSource, target: AdapterFormat, destination: string, mode: 'keep' | 'drop'): SaveExtra[] {
  if (mode === 'drop' || source.extras.length === 0) return [];
  if (source.format !== target) {
    const keys = source.extras.map((e) => JSON.stringify(e.key));
    throw unsupported(
      destination,
      `the adapter carries ${keys.length} non-LoRA tensor${keys.length === 1 ? '' : 's'} from its ${source.format} file ` +
        `(${keys.slice(0, 3).join(', ')}${keys.length > 3 ? ', ...' : ''}) that a ${target} file cannot hold; ` +
        "pass extras: 'drop' to leave them out",
    );
  }
  return source.extras;
}

function rawEntries(extras: SaveExtra[]): SafetensorsEntry[] {
  return extras.map((e) => ({ name: e.key, shape: e.shape, dtype: e.dtype, bytes: e.bytes }));
}

function peftOutput(source: SaveSource, destination: string, options: Resolved): Output {
  const same = source.format === 'peft';
  const linear = source.modules.filter((m) => m.info.layout === 'linear');
  const fanInFanOut = new Set(linear.map((m) => m.info.fanInFanOut));
  if (fanInFanOut.size > 1) {
    const a = linear.find((m) => m.info.fanInFanOut)?.info.name;
    const b = linear.find((m) => !m.info.fanInFanOut)?.info.name;
    throw unsupported(
      destination,
      `PEFT has one fan_in_fan_out flag per adapter, but module ${JSON.stringify(a)} has fan_in_fan_out true and ${JSON.stringify(b)} false`,
    );
  }
  const entries: SafetensorsEntry[] = [];
  for (const m of source.modules) {
    const embedding = m.info.layout === 'embedding';
    const keys =
      same && m.info.keys.A && m.info.keys.B
        ? { A: m.info.keys.A, B: m.info.keys.B }
        : embedding
          ? { A: `${PEFT_PREFIX}${m.info.name}.lora_embedding_A`, B: `${PEFT_PREFIX}${m.info.name}.lora_embedding_B` }
          : { A: `${PEFT_PREFIX}${m.info.name}.lora_A.weight`, B: `${PEFT_PREFIX}${m.info.name}.lora_B.weight` };
    entries.push(...factorEntries(m, keys, options.dtype));
  }
  entries.push(...rawEntries(checkExtras(source, 'peft', destination, options.extras)));
  const base = same ? source.config : null;
  const config = loraConfigFor(
    source.modules.map((m) => ({ name: m.info.name, info: m.info })),
    base,
    path.join(destination, PEFT_CONFIG_NAME),
  );
  if (linear.length > 0 || base === null) config.fan_in_fan_out = fanInFanOut.has(true);
  config.base_model_name_or_path = source.baseModel;
  if (base === null) {
    Object.assign(config, {
      bias: 'none',
      inference_mode: true,
      init_lora_weights: true,
      lora_dropout: 0,
      modules_to_save: null,
      task_type: null,
    });
  }
  const metadata = same && Object.keys(source.metadata).length > 0 ? source.metadata : { format: 'pt' };
  return { entries, metadata, config };
}

function diffusersOutput(source: SaveSource, destination: string, options: Resolved): Output {
  const same = source.format === 'diffusers';
  const components = new Map<string, Array<{ name: string; info: LoraModuleInfo }>>();
  for (const m of source.modules) {
    const { name, layout, fanInFanOut } = m.info;
    const component = diffusersComponents.find((c) => name.startsWith(`${c}.`));
    if (component === undefined) {
      throw unsupported(
        destination,
        `module ${JSON.stringify(name)} does not start with a diffusers pipeline component (${diffusersComponents.join(', ')}), ` +
          'so a diffusers file cannot name it',
      );
    }
    if (layout === 'embedding') throw unsupported(destination, `module ${JSON.stringify(name)} is an embedding LoRA, which diffusers files do not hold`);
    if (fanInFanOut) throw unsupported(destination, `module ${JSON.stringify(name)} has fan_in_fan_out (a Conv1D base), which diffusers models do not have`);
    const list = components.get(component) ?? [];
    list.push({ name: name.slice(component.length + 1), info: m.info });
    components.set(component, list);
  }
  const needsAlpha = source.modules.filter((m) => m.info.rslora || m.info.alpha !== m.info.rank);
  const useAlphaKeys = same && needsAlpha.every((m) => m.info.keys.alpha !== undefined && !m.info.rslora);
  const entries: SafetensorsEntry[] = [];
  for (const m of source.modules) {
    const keys = same && m.info.keys.A && m.info.keys.B ? m.info.keys : { A: `${m.info.name}.lora_A.weight`, B: `${m.info.name}.lora_B.weight` };
    entries.push(...factorEntries(m, keys, options.dtype));
    if (useAlphaKeys && m.info.keys.alpha !== undefined) entries.push(alphaEntry(m.info.keys.alpha, m.info.alpha, m.info.dtypes.alpha));
  }
  entries.push(...rawEntries(checkExtras(source, 'diffusers', destination, options.extras)));
  const metadata: Record<string, string> = same && Object.keys(source.metadata).length > 0 ? { ...source.metadata } : { format: 'pt' };
  delete metadata[DIFFUSERS_METADATA_KEY];
  const hadMetadata = same && source.config !== null;
  if (hadMetadata || (needsAlpha.length > 0 && !useAlphaKeys)) {
    const packed: Record<string, unknown> = {};
    const unprefixedBase = same && source.config !== null && 'r' in source.config ? source.config : null;
    for (const [component, list] of components) {
      let base: Record<string, unknown> | null = unprefixedBase;
      if (base === null && same && source.config !== null) {
        const group = Object.entries(source.config).filter(([k]) => k.startsWith(`${component}.`));
        if (group.length > 0) base = Object.fromEntries(group.map(([k, v]) => [k.slice(component.length + 1), v]));
      }
      const config = loraConfigFor(list, base, `${destination}, metadata ${JSON.stringify(DIFFUSERS_METADATA_KEY)}`);
      config.rank_pattern ??= {};
      config.alpha_pattern ??= {};
      for (const [k, v] of Object.entries(config)) packed[`${component}.${k}`] = v;
    }
    metadata[DIFFUSERS_METADATA_KEY] = sortedJson(packed).trimEnd();
  }
  return { entries, metadata };
}

function kohyaOutput(source: SaveSource, destination: string, options: Resolved): Output {
  const same = source.format === 'kohya';
  const hasSecondTextEncoder = source.modules.some((m) => m.info.name.startsWith('text_encoder_2.') || m.info.name.startsWith('lora_te2_'));
  const entries: SafetensorsEntry[] = [];
  for (const m of source.modules) {
    const { name, layout, fanInFanOut } = m.info;
    if (layout === 'embedding') throw unsupported(destination, `module ${JSON.stringify(name)} is an embedding LoRA, which kohya files do not hold`);
    if (fanInFanOut) throw unsupported(destination, `module ${JSON.stringify(name)} has fan_in_fan_out (a Conv1D base), which kohya files cannot express`);
    let keys: { A: string; B: string; alpha: string };
    if (same && m.info.keys.A && m.info.keys.B) {
      const loraName = m.info.keys.A.slice(0, m.info.keys.A.indexOf('.'));
      keys = { A: m.info.keys.A, B: m.info.keys.B, alpha: m.info.keys.alpha ?? `${loraName}.alpha` };
    } else {
      const loraName = kohyaNameOf(name, hasSecondTextEncoder);
      if (loraName === null) {
        throw unsupported(
          destination,
          `module ${JSON.stringify(name)} has no kohya name: kohya files hold Stable Diffusion modules named ` +
            'unet.*, text_encoder.*, text_encoder_2.* or lora_unet_* / lora_te*_*',
        );
      }
      keys = { A: `${loraName}.lora_down.weight`, B: `${loraName}.lora_up.weight`, alpha: `${loraName}.alpha` };
    }
    entries.push(...factorEntries(m, keys, options.dtype));
    entries.push(alphaEntry(keys.alpha, plainAlpha(m.info), same ? m.info.dtypes.alpha : options.dtype));
  }
  entries.push(...rawEntries(checkExtras(source, 'kohya', destination, options.extras)));
  let metadata: Record<string, string>;
  if (same) {
    metadata = { ...source.metadata };
  } else {
    metadata = {
      ss_network_module: 'networks.lora',
      ss_network_dim: String(mode(source.modules.map((m) => m.info.rank))),
      ss_network_alpha: String(mode(source.modules.map((m) => plainAlpha(m.info)))),
      ...(source.baseModel !== null ? { ss_sd_model_name: source.baseModel } : {}),
    };
  }
  return { entries, metadata };
}

// ---------------------------------------------------------------------------------------
// Writing

interface Resolved {
  format: AdapterFormat;
  dtype: SaveAdapterOptions['dtype'];
  extras: 'keep' | 'drop';
  allowNonFinite: boolean;
  gguf: SaveAdapterOptions['gguf'];
}

function checkSaveOptions(options: unknown): Resolved {
  const o = parse(SaveAdapterOptionsSchema, options, argumentPlace('options'));
  return { format: o.format, dtype: o.dtype, extras: o.extras ?? 'keep', allowNonFinite: o.allowNonFinite === true, gguf: o.gguf };
}

/** Creates `folder` (and parents); returns the first folder created, to remove on failure. */
async function makeFolder(folder: string): Promise<string | undefined> {
  try {
    return await mkdir(folder, { recursive: true });
  } catch (cause) {
    throw ioError(cause, folder, 'create the folder');
  }
}

/** Removes a folder this save created (it held nothing before). */
async function removeCreated(created: string | undefined): Promise<void> {
  if (created !== undefined) await rm(created, { recursive: true, force: true }).catch(() => undefined);
}

function checkUniqueKeys(entries: SafetensorsEntry[], destination: string): void {
  const seen = new Set<string>();
  for (const e of entries) {
    if (seen.has(e.name)) {
      throw fileError('ERR_INVALID_ARGUMENT', destination, 'two tensors of the adapter would be written under this key', e.name);
    }
    seen.add(e.name);
  }
}

/**
 * Writes `adapter` (a {@link LoraAdapter} in memory, or an {@link OpenedAdapter}, whose
 * factors are then read one tensor at a time while writing) in `options.format`:
 *  - 'peft': `destination` is a folder (created if needed) that receives
 *    `adapter_config.json` and `adapter_model.safetensors`;
 *  - 'diffusers': `destination` is a `.safetensors` file, or a folder that receives
 *    `pytorch_lora_weights.safetensors`;
 *  - 'kohya': `destination` is a `.safetensors` file.
 * Keys keep their original spelling when the adapter came from the same format. Factors
 * keep their stored dtype unless `options.dtype` is given, so f32 (and f16/bf16) round trips
 * are bit-exact. See the README for what each format can express; what it cannot is
 * refused with ERR_ADAPTER_UNSUPPORTED before anything is written.
 *
 * Atomic: a single file goes to a temporary name in its folder and is renamed when
 * complete; a PEFT folder is written to a staging folder and swapped in whole
 * (`writeFolderAtomic`), its weights recording the config's sha256 (`eigenlorax.config_sha256`
 * in `__metadata__`) so that a torn pair is refused on reading. On any error nothing is
 * left behind and existing files are untouched.
 */
export async function saveAdapter(adapter: LoraAdapter | OpenedAdapter, destination: string, options: SaveAdapterOptions): Promise<SavedAdapter> {
  if (typeof destination !== 'string' || destination.length === 0) throw invalid('a path (non-empty string)', 'destination', destination);
  const resolved = checkSaveOptions(options);
  // SDXL / Flux modules as the target format names them (split or fused for Flux).
  adapter = await namesForFormat(adapter, resolved.format);
  let source =
    adapter instanceof OpenedAdapter ? fromOpened(adapter, resolved.allowNonFinite) : checkInMemory(adapter, resolved.allowNonFinite);
  if (source.modules.length === 0) throw invalid('an adapter with at least one module', 'adapter.modules', adapter.modules);
  const target = path.resolve(destination);
  const format = resolved.format;
  if (format === 'gguf') return saveGgufAdapter(source, target, resolved);
  // GGUF module names (blk.N.attn_q) become the model's HF names in the other formats.
  if (source.format === 'gguf') source = await ggufToHfSource(source, target, resolved.gguf);

  let folder: string;
  let weightsFile: string;
  if (format === 'peft') {
    folder = path.basename(target) === PEFT_WEIGHTS_NAME ? path.dirname(target) : target;
    if ((await kindOf(folder)) === 'file') throw fileError('ERR_INVALID_ARGUMENT', folder, 'a PEFT adapter is written to a folder, and this is a file');
    weightsFile = path.join(folder, PEFT_WEIGHTS_NAME);
  } else if (format === 'diffusers') {
    const kind = await kindOf(target);
    if (target.endsWith('.safetensors') && kind !== 'folder') {
      weightsFile = target;
      folder = path.dirname(target);
    } else {
      if (kind === 'file') throw fileError('ERR_INVALID_ARGUMENT', target, 'expected a .safetensors file name or a folder');
      folder = target;
      weightsFile = path.join(folder, DIFFUSERS_WEIGHTS_NAME);
    }
  } else {
    if (!target.endsWith('.safetensors') || (await kindOf(target)) === 'folder') {
      throw fileError('ERR_INVALID_ARGUMENT', target, 'a kohya adapter is written to a .safetensors file');
    }
    weightsFile = target;
    folder = path.dirname(target);
  }

  const output =
    format === 'peft'
      ? peftOutput(source, folder, resolved)
      : format === 'diffusers'
        ? diffusersOutput(source, weightsFile, resolved)
        : kohyaOutput(source, weightsFile, resolved);
  checkUniqueKeys(output.entries, weightsFile);

  if (format === 'peft') {
    // The config and weights are swapped in together; the weights record the config's
    // sha256 so that a reader detects a torn pair (files of two saves) in any case.
    const configText = sortedJson(output.config);
    const metadata = { ...output.metadata, [PEFT_CONFIG_DIGEST_KEY]: createHash('sha256').update(configText, 'utf8').digest('hex') };
    const files = await writeFolderAtomic(folder, [
      { name: PEFT_WEIGHTS_NAME, write: (file) => writeSafetensors(file, output.entries, { metadata }) },
      { name: PEFT_CONFIG_NAME, write: (file) => writeFileAtomic(file, configText) },
    ]);
    return { format, files: [files[1] as string, files[0] as string] };
  }
  const created = await makeFolder(folder);
  try {
    await writeSafetensors(weightsFile, output.entries, { metadata: output.metadata });
    return { format, files: [weightsFile] };
  } catch (error) {
    await removeCreated(created);
    throw error;
  }
}

