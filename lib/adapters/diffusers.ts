/**
 * diffusers LoRA: `pytorch_lora_weights.safetensors`.
 *
 * Key spellings read, all mapped to one module name `<component>.<module path>`
 * (component `unet`, `text_encoder`, `text_encoder_2`, `text_encoder_3` or `transformer`;
 * keys without one of these first components are U-Net attention processors, the oldest
 * format):
 *  - PEFT style (what diffusers saves today): `unet.<m>.lora_A.weight` / `.lora_B.weight`;
 *  - `unet.<m>.lora.down.weight` / `.lora.up.weight`;
 *  - `<m>.lora_linear_layer.down.weight` / `.up.weight`;
 *  - attention processors: `<block>.attn1.processor.to_q_lora.down.weight` (`to_k_lora`,
 *    `to_v_lora`, `to_out_lora`) is module `<block>.attn1.to_q` (`to_k`, `to_v`,
 *    `to_out.0`); in a text encoder `self_attn.to_q_lora` is `self_attn.q_proj` (`k_proj`,
 *    `v_proj`, `out_proj`), as diffusers' `convert_unet_state_dict_to_peft` and
 *    `DIFFUSERS_OLD_TO_PEFT` map them. A `.processor.` component is dropped everywhere.
 * Alpha: a `<component>.<m>.alpha` scalar when present; else the `lora_adapter_metadata`
 * JSON that diffusers stores in the safetensors metadata (a PEFT LoraConfig per component,
 * keys prefixed `unet.`, `text_encoder.`, ...; rank/alpha patterns honoured); else
 * alpha = rank (scale 1), diffusers' default.
 * DoRA (`lora_magnitude_vector`, `dora_scale`) and LoRA biases are refused; keys without a
 * LoRA part are extras.
 */
import { EigenLoraxError } from '../errors.js';
import type { SafetensorsReader } from '../io/safetensors.js';
import { decodeScalar, describeFactors, fieldError, keyError, scaleOf } from './common.js';
import { parseLoraSettings, resolveRankAlpha, type LoraSettings } from './peft.js';
import type { AdapterPlan } from './plan.js';
import type { LoraModuleInfo } from './types.js';

export const DIFFUSERS_WEIGHTS_NAME = 'pytorch_lora_weights.safetensors';
export const DIFFUSERS_METADATA_KEY = 'lora_adapter_metadata';
export const diffusersComponents: readonly string[] = ['unet', 'text_encoder', 'text_encoder_2', 'text_encoder_3', 'transformer'];

export type DiffusersRole = 'A' | 'B' | 'alpha';

export interface DiffusersKey {
  /** `<component>.<module path>`. */
  name: string;
  component: string;
  /** The module path inside the component. */
  path: string;
  role: DiffusersRole;
}

const oldProcessor = /^(.+)\.to_(q|k|v|out)_lora$/;

function mapOldProcessor(component: string, path: string): string {
  const m = oldProcessor.exec(path);
  if (!m) return path;
  const [, base, which] = m as unknown as [string, string, string];
  if (component.startsWith('text_encoder')) return `${base}.${which}_proj`;
  return which === 'out' ? `${base}.to_out.0` : `${base}.to_${which}`;
}

const unsupportedDora = (key: string) => key.split('.').some((p) => p === 'lora_magnitude_vector' || p === 'dora_scale');

/**
 * Classifies one key: a LoRA factor or alpha of a module, an extra (null), or throws for
 * LoRA-looking keys that are not supported.
 */
export function parseDiffusersKey(file: string, key: string): DiffusersKey | null {
  if (unsupportedDora(key)) throw keyError('ERR_ADAPTER_UNSUPPORTED', file, key, 'DoRA adapters (lora_magnitude_vector / dora_scale) are not supported');
  const first = key.slice(0, key.indexOf('.'));
  const hasComponent = diffusersComponents.includes(first);
  const component = hasComponent ? first : 'unet';
  const rest = (hasComponent ? key.slice(first.length + 1) : key).replace(/\.processor\./g, '.');
  let m: RegExpExecArray | null;
  let path: string | undefined;
  let role: DiffusersRole | undefined;
  if ((m = /^(.+)\.lora_([AB])\.weight$/.exec(rest))) {
    path = m[1];
    role = m[2] as 'A' | 'B';
  } else if ((m = /^(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$/.exec(rest))) {
    path = m[1];
    role = m[2] === 'down' ? 'A' : 'B';
  } else if ((m = /^(.+\.to_(?:q|k|v|out)_lora)\.(down|up)\.weight$/.exec(rest))) {
    path = m[1];
    role = m[2] === 'down' ? 'A' : 'B';
  } else if ((m = /^(.+)\.alpha$/.exec(rest))) {
    path = m[1];
    role = 'alpha';
  }
  if (path === undefined || role === undefined) {
    if (/\.lora_B\.bias$/.test(rest)) throw keyError('ERR_ADAPTER_UNSUPPORTED', file, key, 'LoRA biases (lora_B.bias) are not supported');
    if (rest.split('.').some((p) => p.startsWith('lora') || p.endsWith('_lora'))) {
      throw keyError('ERR_ADAPTER_UNSUPPORTED', file, key, 'unrecognised LoRA tensor key for the diffusers format');
    }
    return null;
  }
  path = path.replace(/\.processor$/, '');
  path = mapOldProcessor(component, path);
  return { name: `${component}.${path}`, component, path, role };
}

/** Per-component LoRA settings from `lora_adapter_metadata`, or null when the file has none. */
function metadataSettings(reader: SafetensorsReader, file: string): { raw: Record<string, unknown> | null; of: (component: string) => LoraSettings | null } {
  const text = reader.metadata[DIFFUSERS_METADATA_KEY];
  if (text === undefined) return { raw: null, of: () => null };
  const where = `${file}, metadata ${JSON.stringify(DIFFUSERS_METADATA_KEY)}`;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw new EigenLoraxError(`${where}: not valid JSON (${(cause as Error).message})`, 'ERR_ADAPTER_CONFIG');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new EigenLoraxError(`${where}: must be a JSON object`, 'ERR_ADAPTER_CONFIG');
  }
  const raw = parsed as Record<string, unknown>;
  const unprefixed = ['r', 'lora_alpha', 'peft_type', 'rank_pattern', 'alpha_pattern', 'target_modules'].some((k) => k in raw);
  if (unprefixed) {
    const settings = parseLoraSettings(raw, where, { requirePeftType: false });
    return { raw, of: () => settings };
  }
  const groups = new Map<string, Record<string, unknown>>();
  for (const [key, value] of Object.entries(raw)) {
    const dot = key.indexOf('.');
    if (dot <= 0) continue;
    const component = key.slice(0, dot);
    const group = groups.get(component) ?? {};
    group[key.slice(dot + 1)] = value;
    groups.set(component, group);
  }
  const parsedGroups = new Map([...groups].map(([c, g]) => [c, parseLoraSettings(g, where, { requirePeftType: false, fieldPrefix: `${c}.` })]));
  return { raw, of: (component) => parsedGroups.get(component) ?? null };
}

export async function planDiffusers(reader: SafetensorsReader, weightsFile: string): Promise<AdapterPlan> {
  const found = new Map<string, { component: string; path: string } & Partial<Record<DiffusersRole, string>>>();
  const extras: string[] = [];
  for (const key of reader.tensors.keys()) {
    const parsed = parseDiffusersKey(weightsFile, key);
    if (parsed === null) {
      extras.push(key);
      continue;
    }
    const entry = found.get(parsed.name) ?? { component: parsed.component, path: parsed.path };
    const previous = entry[parsed.role];
    if (previous !== undefined) {
      throw keyError(
        'ERR_ADAPTER_FORMAT',
        weightsFile,
        key,
        `module ${JSON.stringify(parsed.name)} already has this ` +
          `${parsed.role === 'alpha' ? 'alpha' : `factor (${parsed.role})`} under key ${JSON.stringify(previous)}`,
      );
    }
    entry[parsed.role] = key;
    found.set(parsed.name, entry);
  }
  const meta = metadataSettings(reader, weightsFile);
  const modules: LoraModuleInfo[] = [];
  for (const [name, entry] of found) {
    const { A: aKey, B: bKey, alpha: alphaKey } = entry;
    if (aKey === undefined || bKey === undefined) {
      const present = (aKey ?? bKey ?? alphaKey) as string;
      const what =
        aKey === undefined
          ? bKey === undefined
            ? 'an alpha without factors'
            : 'an up-projection (B) without its down-projection (A)'
          : 'a down-projection (A) without its up-projection (B)';
      throw keyError('ERR_ADAPTER_FORMAT', weightsFile, present, `module ${JSON.stringify(name)} has ${what}`);
    }
    const shapes = describeFactors(weightsFile, aKey, reader.tensors.get(aKey)!, bKey, reader.tensors.get(bKey)!);
    let alpha = shapes.rank;
    let rslora = false;
    let alphaDtype: LoraModuleInfo['dtypes']['alpha'];
    const settings = meta.of(entry.component);
    if (settings !== null) {
      const resolved = resolveRankAlpha(settings, entry.path);
      if (resolved.rank !== shapes.rank) {
        throw fieldError(
          'ERR_ADAPTER_CONFIG',
          `${weightsFile}, metadata ${JSON.stringify(DIFFUSERS_METADATA_KEY)}`,
          `${entry.component}.${resolved.rankFrom}`,
          `gives module ${JSON.stringify(name)} rank ${resolved.rank}, but its factors (${JSON.stringify(aKey)}) have rank ${shapes.rank}`,
        );
      }
      alpha = resolved.alpha;
      rslora = settings.useRslora;
    }
    if (alphaKey !== undefined) {
      const raw = await reader.readRaw(alphaKey);
      alpha = decodeScalar(weightsFile, alphaKey, raw);
      alphaDtype = raw.dtype;
      if (!Number.isFinite(alpha)) throw keyError('ERR_NON_FINITE', weightsFile, alphaKey, `alpha is ${alpha}`);
    }
    modules.push({
      name,
      rank: shapes.rank,
      alpha,
      scale: scaleOf(alpha, shapes.rank, rslora),
      rslora,
      layout: shapes.layout,
      ...(shapes.convKernel ? { convKernel: shapes.convKernel } : {}),
      shapes: shapes.shapes,
      inFeatures: shapes.inFeatures,
      outFeatures: shapes.outFeatures,
      fanInFanOut: false,
      keys: { A: aKey, B: bKey, ...(alphaKey !== undefined ? { alpha: alphaKey } : {}) },
      dtypes: { ...shapes.dtypes, ...(alphaDtype !== undefined ? { alpha: alphaDtype } : {}) },
    });
  }
  return { format: 'diffusers', baseModel: null, config: meta.raw, configFiles: [], modules, extras };
}
