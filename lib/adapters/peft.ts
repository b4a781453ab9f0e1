/**
 * PEFT LoRA: a folder with `adapter_config.json` and `adapter_model.safetensors`.
 *
 * Keys are `base_model.model.<module>.lora_A.weight` (`r x in`, or `r x in x kh x kw` for
 * conv) and `.lora_B.weight` (`out x r`, `out x r x 1 x 1`), or for embeddings
 * `<module>.lora_embedding_A` (`r x num_embeddings`) and `.lora_embedding_B`
 * (`embedding_dim x r`), as `peft.get_peft_model_state_dict` writes them (the adapter
 * name removed). Keys without a `lora_` component (heads from `modules_to_save`, biases
 * trained with `bias: "all"` / `"lora_only"`, trainable-token deltas) are extras: kept byte
 * for byte and written back, never applied as LoRA.
 *
 * The config's `r`, `lora_alpha`, `use_rslora`, `rank_pattern`, `alpha_pattern` and
 * `fan_in_fan_out` are honoured (patterns matched as PEFT matches them, see patterns.ts);
 * a rank in the config that differs from the tensors' rank is an error, as it is for PEFT.
 * Refused (ERR_ADAPTER_UNSUPPORTED, naming the file and field or key): `peft_type` other
 * than LORA, DoRA (`use_dora` or `lora_magnitude_vector` tensors), `lora_bias`
 * (`lora_B.bias`), QA-LoRA, `target_parameters`, and `init_lora_weights` of PiSSA, OLoRA,
 * CorDA or LoftQ (those adapters are relative to a modified base model).
 */
import { createHash } from 'node:crypto';
import { EigenLoraxError } from '../errors.js';
import { ioError, readRegularFile } from '../io/files.js';
import type { SafetensorsReader } from '../io/safetensors.js';
import { describeFactors, fieldError, keyError, scaleOf, show } from './common.js';
import { compilePatterns, matchPattern, type CompiledPatterns } from './patterns.js';
import type { AdapterPlan } from './plan.js';
import type { LoraModuleInfo } from './types.js';

export const PEFT_CONFIG_NAME = 'adapter_config.json';
export const PEFT_WEIGHTS_NAME = 'adapter_model.safetensors';
export const PEFT_PREFIX = 'base_model.model.';
/** adapter_config.json is refused above this size (it is a few hundred bytes in practice). */
const MAX_CONFIG_BYTES = 16 << 20;

/** The LoRA settings of a PEFT `LoraConfig` (as a JSON object), checked. */
export interface LoraSettings {
  r: number;
  loraAlpha: number;
  useRslora: boolean;
  fanInFanOut: boolean;
  rankPattern: CompiledPatterns<number>;
  alphaPattern: CompiledPatterns<number>;
  baseModel: string | null;
}

const modifiedBaseInits = /^(pissa|olora|corda|loftq)/i;

/**
 * Checks a LoraConfig dict. `where` names it in messages (the config file, or the weights
 * file and metadata key); `fieldPrefix` is prepended to field names (diffusers' packed
 * `unet.r`). `requirePeftType`: PEFT's own configs must say `peft_type`.
 */
export function parseLoraSettings(
  raw: unknown,
  where: string,
  { requirePeftType, fieldPrefix = '' }: { requirePeftType: boolean; fieldPrefix?: string },
): LoraSettings {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new EigenLoraxError(`${where}: the LoRA config must be a JSON object, not ${show(raw)}`, 'ERR_ADAPTER_CONFIG');
  }
  const config = raw as Record<string, unknown>;
  const f = (name: string) => `${fieldPrefix}${name}`;
  const bad = (name: string, expected: string) =>
    fieldError('ERR_ADAPTER_CONFIG', where, f(name), `expected ${expected} but found ${show(config[name])}`);
  const unsupported = (name: string, why: string) => fieldError('ERR_ADAPTER_UNSUPPORTED', where, f(name), why);
  const has = (name: string) => config[name] !== undefined && config[name] !== null;
  const bool = (name: string): boolean => {
    if (!has(name)) return false;
    if (typeof config[name] !== 'boolean') throw bad(name, 'true or false');
    return config[name] as boolean;
  };

  const peftType = config.peft_type;
  if (peftType === undefined || peftType === null) {
    if (requirePeftType) throw bad('peft_type', '"LORA"');
  } else if (typeof peftType !== 'string') {
    throw bad('peft_type', '"LORA"');
  } else if (peftType !== 'LORA') {
    throw unsupported('peft_type', `peft_type ${show(peftType)} is not supported; only LORA adapters are read`);
  }

  let r = 8;
  if (config.r !== undefined) {
    if (!Number.isSafeInteger(config.r) || (config.r as number) < 1) throw bad('r', 'a positive integer');
    r = config.r as number;
  }
  let loraAlpha = 8;
  if (config.lora_alpha !== undefined) {
    if (typeof config.lora_alpha !== 'number' || !Number.isFinite(config.lora_alpha)) throw bad('lora_alpha', 'a finite number');
    loraAlpha = config.lora_alpha;
  }
  const useRslora = bool('use_rslora');
  const fanInFanOut = bool('fan_in_fan_out');
  if (bool('use_dora')) throw unsupported('use_dora', 'DoRA adapters (use_dora: true) are not supported');
  if (bool('lora_bias')) throw unsupported('lora_bias', 'LoRA biases (lora_bias: true) are not supported');
  if (bool('use_qalora')) throw unsupported('use_qalora', 'QA-LoRA adapters (use_qalora: true) are not supported');
  if (has('target_parameters')) {
    if (!Array.isArray(config.target_parameters)) throw bad('target_parameters', 'a list of parameter names or null');
    if (config.target_parameters.length > 0) {
      throw unsupported('target_parameters', 'LoRA on parameters (target_parameters) is not supported');
    }
  }
  if (has('init_lora_weights')) {
    const init = config.init_lora_weights;
    if (typeof init !== 'boolean' && typeof init !== 'string') throw bad('init_lora_weights', 'true, false or a method name');
    if (typeof init === 'string' && modifiedBaseInits.test(init)) {
      throw unsupported(
        'init_lora_weights',
        `an adapter initialised with ${show(init)} is relative to a modified base model and is not supported ` +
          '(convert it to plain LoRA with PEFT first: path_initial_model_for_weight_conversion)',
      );
    }
  }
  if (has('bias') && !['none', 'all', 'lora_only'].includes(config.bias as string)) throw bad('bias', '"none", "all" or "lora_only"');
  if (has('base_model_name_or_path') && typeof config.base_model_name_or_path !== 'string') {
    throw bad('base_model_name_or_path', 'a string or null');
  }
  if (has('target_modules')) {
    const t = config.target_modules;
    if (typeof t !== 'string' && !(Array.isArray(t) && t.every((x) => typeof x === 'string'))) {
      throw bad('target_modules', 'a string, a list of strings or null');
    }
  }
  if (has('modules_to_save')) {
    const m = config.modules_to_save;
    if (!(Array.isArray(m) && m.every((x) => typeof x === 'string'))) throw bad('modules_to_save', 'a list of strings or null');
  }

  const pattern = (name: string, integer: boolean): CompiledPatterns<number> => {
    const value = config[name];
    if (value === undefined || value === null) return { entries: [] };
    if (typeof value !== 'object' || Array.isArray(value)) throw bad(name, 'an object mapping module patterns to numbers');
    for (const [key, v] of Object.entries(value)) {
      const ok = integer ? Number.isSafeInteger(v) && (v as number) >= 1 : typeof v === 'number' && Number.isFinite(v);
      if (!ok) {
        throw fieldError('ERR_ADAPTER_CONFIG', where, `${f(name)}.${key}`, `expected ${integer ? 'a positive integer' : 'a finite number'} but found ${show(v)}`);
      }
    }
    return compilePatterns(value as Record<string, number>, where, f(name));
  };

  return {
    r,
    loraAlpha,
    useRslora,
    fanInFanOut,
    rankPattern: pattern('rank_pattern', true),
    alphaPattern: pattern('alpha_pattern', false),
    baseModel: has('base_model_name_or_path') ? (config.base_model_name_or_path as string) : null,
  };
}

/** The rank and alpha the settings give a module (PEFT's resolution). */
export function resolveRankAlpha(settings: LoraSettings, moduleName: string): { rank: number; alpha: number; rankFrom: string; alphaFrom: string } {
  const rank = matchPattern(settings.rankPattern, moduleName);
  const alpha = matchPattern(settings.alphaPattern, moduleName);
  return {
    rank: rank?.value ?? settings.r,
    alpha: alpha?.value ?? settings.loraAlpha,
    rankFrom: rank === undefined ? 'r' : `rank_pattern.${rank.key}`,
    alphaFrom: alpha === undefined ? 'lora_alpha' : `alpha_pattern.${alpha.key}`,
  };
}

/** An adapter_config.json read: the parsed object and the sha256 of its bytes. */
export interface PeftConfigFile {
  file: string;
  config: Record<string, unknown>;
  sha256: string;
}

/** Reads and parses adapter_config.json (ERR_ADAPTER_CONFIG when it is not a JSON object). */
export async function readPeftConfig(file: string): Promise<PeftConfigFile> {
  let text: string;
  let sha256: string;
  try {
    const tooLong = (size: number) => new EigenLoraxError(`${file}: the config is ${size} bytes, over the ${MAX_CONFIG_BYTES}-byte limit`, 'ERR_ADAPTER_CONFIG');
    const bytes = await readRegularFile(file, 'read the adapter config', { maxBytes: MAX_CONFIG_BYTES, tooLong });
    text = bytes.toString('utf8');
    sha256 = createHash('sha256').update(bytes).digest('hex');
  } catch (cause) {
    throw ioError(cause, file, 'read the adapter config');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw new EigenLoraxError(`${file}: the adapter config is not valid JSON (${(cause as Error).message})`, 'ERR_ADAPTER_CONFIG');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new EigenLoraxError(`${file}: the adapter config must be a JSON object, not ${show(parsed)}`, 'ERR_ADAPTER_CONFIG');
  }
  return { file, config: parsed as Record<string, unknown>, sha256 };
}

type Role = 'A' | 'B' | 'embA' | 'embB';

/** Plans a PEFT adapter from its config and weights header. */
export function planPeft(reader: SafetensorsReader, weightsFile: string, configFile: string, config: Record<string, unknown>): AdapterPlan {
  const settings = parseLoraSettings(config, configFile, { requirePeftType: true });
  const found = new Map<string, Partial<Record<Role, string>>>();
  const extras: string[] = [];
  for (const key of reader.tensors.keys()) {
    const rest = key.startsWith(PEFT_PREFIX) ? key.slice(PEFT_PREFIX.length) : key;
    const parts = rest.split('.');
    const at = parts.findIndex((p) => p.startsWith('lora_'));
    if (at < 0) {
      extras.push(key);
      continue;
    }
    if (parts.includes('lora_magnitude_vector')) {
      throw keyError('ERR_ADAPTER_UNSUPPORTED', weightsFile, key, 'DoRA adapters (lora_magnitude_vector) are not supported');
    }
    const tail = parts.slice(at).join('.');
    const role: Role | undefined = (
      { 'lora_A.weight': 'A', 'lora_B.weight': 'B', lora_embedding_A: 'embA', lora_embedding_B: 'embB' } as Record<string, Role>
    )[tail];
    if (role === undefined) {
      if (tail === 'lora_B.bias') throw keyError('ERR_ADAPTER_UNSUPPORTED', weightsFile, key, 'LoRA biases (lora_bias) are not supported');
      throw keyError(
        'ERR_ADAPTER_UNSUPPORTED',
        weightsFile,
        key,
        `unrecognised LoRA tensor ${JSON.stringify(tail)} (expected lora_A.weight, lora_B.weight, lora_embedding_A or lora_embedding_B)`,
      );
    }
    if (at === 0) throw keyError('ERR_ADAPTER_FORMAT', weightsFile, key, 'the key names no module before its LoRA part');
    const name = parts.slice(0, at).join('.');
    const entry = found.get(name) ?? {};
    if (entry[role] !== undefined) {
      throw keyError('ERR_ADAPTER_FORMAT', weightsFile, key, `module ${JSON.stringify(name)} already has this factor under key ${JSON.stringify(entry[role])}`);
    }
    entry[role] = key;
    found.set(name, entry);
  }

  const modules: LoraModuleInfo[] = [];
  for (const [name, entry] of found) {
    const embedding = entry.embA !== undefined || entry.embB !== undefined;
    if (embedding && (entry.A !== undefined || entry.B !== undefined)) {
      throw keyError('ERR_ADAPTER_FORMAT', weightsFile, (entry.A ?? entry.B) as string, `module ${JSON.stringify(name)} mixes lora_A/B and lora_embedding_A/B`);
    }
    const aKey = embedding ? entry.embA : entry.A;
    const bKey = embedding ? entry.embB : entry.B;
    const [aName, bName] = embedding ? ['lora_embedding_A', 'lora_embedding_B'] : ['lora_A', 'lora_B'];
    if (aKey === undefined || bKey === undefined) {
      const present = (aKey ?? bKey) as string;
      const missing = aKey === undefined ? aName : bName;
      const message = `${aKey === undefined ? bName : aName} has no matching ${missing} for module ${JSON.stringify(name)}`;
      throw keyError('ERR_ADAPTER_FORMAT', weightsFile, present, message);
    }
    const shapes = describeFactors(weightsFile, aKey, reader.tensors.get(aKey)!, bKey, reader.tensors.get(bKey)!, embedding);
    const resolved = resolveRankAlpha(settings, name);
    if (resolved.rank !== shapes.rank) {
      throw fieldError(
        'ERR_ADAPTER_CONFIG',
        configFile,
        resolved.rankFrom,
        `the config gives module ${JSON.stringify(name)} rank ${resolved.rank}, but its factors in ${weightsFile} ` +
          `(${JSON.stringify(aKey)}) have rank ${shapes.rank}`,
      );
    }
    modules.push({
      name,
      rank: shapes.rank,
      alpha: resolved.alpha,
      scale: scaleOf(resolved.alpha, shapes.rank, settings.useRslora),
      rslora: settings.useRslora,
      layout: shapes.layout,
      ...(shapes.convKernel ? { convKernel: shapes.convKernel } : {}),
      shapes: shapes.shapes,
      inFeatures: shapes.inFeatures,
      outFeatures: shapes.outFeatures,
      fanInFanOut: shapes.layout === 'linear' ? settings.fanInFanOut : false,
      keys: { A: aKey, B: bKey },
      dtypes: shapes.dtypes,
    });
  }
  return { format: 'peft', baseModel: settings.baseModel, config, configFiles: [configFile], modules, extras };
}
