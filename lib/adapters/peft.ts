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
import { Count, filePlace, mismatch, NOTHING, Nullable, parse, said, Type, type Place, type Static, type TSchema } from '../schema.js';
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

/** A PEFT config field that may be absent or null (PEFT writes null for unset fields). */
const Unset = <T extends TSchema>(schema: T) => Type.Optional(Nullable(schema));

/**
 * The fields of a PEFT `LoraConfig` that eigenlorax reads (others are kept, not checked).
 * `r` and `lora_alpha` default to 8 when absent, as in PEFT.
 */
export const LoraConfigSchema = Type.Object({
  peft_type: Unset(Type.String()),
  r: Type.Optional(Count(1)),
  lora_alpha: Type.Optional(Type.Number()),
  use_rslora: Unset(Type.Boolean()),
  fan_in_fan_out: Unset(Type.Boolean()),
  use_dora: Unset(Type.Boolean()),
  lora_bias: Unset(Type.Boolean()),
  use_qalora: Unset(Type.Boolean()),
  target_parameters: Unset(Type.Array(Type.Unknown(), { description: 'a list of parameter names or null' })),
  init_lora_weights: Unset(Type.Union([Type.Boolean(), Type.String()], { description: 'true, false or a method name' })),
  bias: Unset(Type.Union([Type.Literal('none'), Type.Literal('all'), Type.Literal('lora_only')])),
  base_model_name_or_path: Unset(Type.String()),
  target_modules: Unset(Type.Union([Type.String(), Type.Array(Type.String())], { description: 'a string, a list of strings or null' })),
  modules_to_save: Unset(Type.Array(Type.String())),
  rank_pattern: Unset(Type.Record(Type.String(), Count(1))),
  alpha_pattern: Unset(Type.Record(Type.String(), Type.Number())),
});

export type LoraConfig = Static<typeof LoraConfigSchema>;

/** The config named in messages: `where, field "<prefix><name>"`. */
function configPlace(where: string, fieldPrefix: string): Place {
  return { code: 'ERR_ADAPTER_CONFIG', at: (p) => (p === '' ? where : `${where}, field ${JSON.stringify(`${fieldPrefix}${p}`)}`) };
}

/** Features of a config that eigenlorax refuses rather than misreads (ERR_ADAPTER_UNSUPPORTED). */
function refuseUnsupported(config: LoraConfig, unsupported: (name: string, why: string) => EigenLoraxError): void {
  if (config.use_dora === true) throw unsupported('use_dora', 'DoRA adapters (use_dora: true) are not supported');
  if (config.lora_bias === true) throw unsupported('lora_bias', 'LoRA biases (lora_bias: true) are not supported');
  if (config.use_qalora === true) throw unsupported('use_qalora', 'QA-LoRA adapters (use_qalora: true) are not supported');
  if ((config.target_parameters ?? []).length > 0) throw unsupported('target_parameters', 'LoRA on parameters (target_parameters) is not supported');
  const init = config.init_lora_weights;
  if (typeof init === 'string' && modifiedBaseInits.test(init)) {
    throw unsupported(
      'init_lora_weights',
      `an adapter initialised with ${show(init)} is relative to a modified base model and is not supported ` +
        '(convert it to plain LoRA with PEFT first: path_initial_model_for_weight_conversion)',
    );
  }
}

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
  const place = configPlace(where, fieldPrefix);
  const unsupported = (name: string, why: string) => fieldError('ERR_ADAPTER_UNSUPPORTED', where, `${fieldPrefix}${name}`, why);
  // The type first: another PEFT method is named as such, whatever its other fields.
  const peftType = parse(PeftTypeSchema, raw, place).peft_type;
  if (peftType === undefined || peftType === null) {
    if (requirePeftType) throw mismatch(place, 'peft_type', '"LORA"', NOTHING);
  } else if (peftType !== 'LORA') {
    throw unsupported('peft_type', `peft_type ${show(peftType)} is not supported; only LORA adapters are read`);
  }
  const config = parse(LoraConfigSchema, raw, place);
  refuseUnsupported(config, unsupported);
  const patterns = (name: 'rank_pattern' | 'alpha_pattern') => compilePatterns(config[name] ?? {}, where, `${fieldPrefix}${name}`);
  return {
    r: config.r ?? 8,
    loraAlpha: config.lora_alpha ?? 8,
    useRslora: config.use_rslora === true,
    fanInFanOut: config.fan_in_fan_out === true,
    rankPattern: patterns('rank_pattern'),
    alphaPattern: patterns('alpha_pattern'),
    baseModel: config.base_model_name_or_path ?? null,
  };
}

const PeftTypeSchema = Type.Object({ peft_type: Unset(Type.String({ description: '"LORA"' })) });

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
  const place = filePlace(file, 'ERR_ADAPTER_CONFIG');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw mismatch(place, '', 'the adapter config in JSON', said(`text that is not valid JSON (${(cause as Error).message})`));
  }
  return { file, config: parse(JsonObject, parsed, place), sha256 };
}

const JsonObject = Type.Record(Type.String(), Type.Unknown(), { description: 'a JSON object' });

type Role = 'A' | 'B' | 'embA' | 'embB';

/** Plans a PEFT adapter from its config and weights header. */
export function planPeft(reader: SafetensorsReader, weightsFile: string, configFile: string, config: Record<string, unknown>): AdapterPlan {
  const settings = parseLoraSettings(config, configFile, { requirePeftType: true });
  const found = new Map<string, Partial<Record<Role, string>>>();
  const extras: string[] = [];
  for (const key of reader.tensors.keys()) {
    const rest = key.startsWith(PEFT_PREFIX) ? key.slice(PEFT_PREFIX.length) : key;
    // The LoRA part starts at the first dot-separated segment that starts with lora_
    // (string searches, not split and join: thousands of keys per file).
    const at = rest.startsWith('lora_') ? 0 : rest.indexOf('.lora_') + 1;
    if (at === 0 && !rest.startsWith('lora_')) {
      extras.push(key);
      continue;
    }
    if (`.${rest}.`.includes('.lora_magnitude_vector.')) {
      throw keyError('ERR_ADAPTER_UNSUPPORTED', weightsFile, key, 'DoRA adapters (lora_magnitude_vector) are not supported');
    }
    const tail = rest.slice(at);
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
    const name = rest.slice(0, at - 1);
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
