/**
 * kohya (sd-scripts `networks/lora.py`) LoRA: one `.safetensors` file with keys
 * `<lora_name>.lora_down.weight` (`r x in`, conv `r x in x kh x kw`),
 * `<lora_name>.lora_up.weight` (`out x r`, conv `out x r x 1 x 1`) and `<lora_name>.alpha`
 * (a scalar of any numeric dtype), where `<lora_name>` is `lora_unet_`, `lora_te_`,
 * `lora_te1_` or `lora_te2_` + the module path with `.` replaced by `_`.
 *
 * Alpha: missing or 0 means alpha = rank (sd-scripts: `alpha = lora_dim if alpha is None or
 * alpha == 0`); scale = alpha / rank. Module names: see names.ts (diffusers-style when the
 * whole file parses as a standard SD 1.x/2.x U-Net / CLIP, else the kohya names).
 * Base model: the `ss_sd_model_name` metadata when present.
 * Refused, naming the algorithm (lycoris.ts): LyCORIS and other networks sharing the
 * `lora_` prefix (LoHa `hada_*`, LoKr `lokr_*`, IA3 `on_input`, GLoRA, OFT, `lora_mid`,
 * DoRA `dora_scale`, `diff`, ...). Keys that do not start with `lora_` are extras.
 */
import type { SafetensorsReader } from '../io/safetensors.js';
import { decodeScalar, describeFactors, keyError, scaleOf } from './common.js';
import { refuseLycoris } from './lycoris.js';
import { diffusersNameOfKohya, kohyaPrefix } from './names.js';
import type { AdapterPlan } from './plan.js';
import type { LoraModuleInfo } from './types.js';

const kohyaKey = /^(lora_[A-Za-z0-9_]+)\.(lora_down\.weight|lora_up\.weight|alpha)$/;

/** True when `key` is a kohya LoRA factor or alpha. */
export function isKohyaKey(key: string): boolean {
  const m = kohyaKey.exec(key);
  return m !== null && kohyaPrefix(m[1] as string) !== null;
}

export async function planKohya(reader: SafetensorsReader, weightsFile: string): Promise<AdapterPlan> {
  const found = new Map<string, { down?: string; up?: string; alpha?: string }>();
  const extras: string[] = [];
  refuseLycoris(weightsFile, [...reader.tensors.keys()].filter((k) => k.startsWith('lora_') || k.startsWith('lycoris_')));
  for (const key of reader.tensors.keys()) {
    if (!key.startsWith('lora_')) {
      extras.push(key);
      continue;
    }
    const m = kohyaKey.exec(key);
    if (m === null || kohyaPrefix(m[1] as string) === null) {
      const suffix = key.includes('.') ? key.slice(key.indexOf('.') + 1) : '';
      const what = /dora_scale/.test(suffix)
        ? 'DoRA (dora_scale) is not supported'
        : /^(hada_|lokr_|oft_|lora_mid|diff|w_norm|b_norm)/.test(suffix)
          ? `LyCORIS-style tensor ${JSON.stringify(suffix)} is not supported (only plain LoRA: lora_down, lora_up, alpha)`
          : 'unrecognised kohya key (expected lora_unet_* / lora_te*_* with .lora_down.weight, .lora_up.weight or .alpha)';
      throw keyError('ERR_ADAPTER_UNSUPPORTED', weightsFile, key, what);
    }
    const loraName = m[1] as string;
    const role = m[2] === 'alpha' ? 'alpha' : m[2] === 'lora_down.weight' ? 'down' : 'up';
    const entry = found.get(loraName) ?? {};
    entry[role] = key;
    found.set(loraName, entry);
  }

  const recovered = new Map<string, string>();
  for (const loraName of found.keys()) {
    const name = diffusersNameOfKohya(loraName);
    if (name === null) break;
    recovered.set(loraName, name);
  }
  // All or nothing, and never two kohya names onto one module (lora_te_X and lora_te1_X).
  const rename = recovered.size === found.size && new Set(recovered.values()).size === recovered.size;

  const modules: LoraModuleInfo[] = [];
  for (const [loraName, entry] of found) {
    const { down, up, alpha: alphaKey } = entry;
    if (down === undefined || up === undefined) {
      const present = (down ?? up ?? alphaKey) as string;
      const what = down === undefined ? (up === undefined ? 'an alpha without lora_down/lora_up' : 'lora_up without lora_down') : 'lora_down without lora_up';
      throw keyError('ERR_ADAPTER_FORMAT', weightsFile, present, `module ${JSON.stringify(loraName)} has ${what}`);
    }
    const shapes = describeFactors(weightsFile, down, reader.tensors.get(down)!, up, reader.tensors.get(up)!);
    let alpha = shapes.rank;
    let alphaDtype: LoraModuleInfo['dtypes']['alpha'];
    if (alphaKey !== undefined) {
      const raw = await reader.readRaw(alphaKey);
      const value = decodeScalar(weightsFile, alphaKey, raw);
      if (!Number.isFinite(value)) throw keyError('ERR_NON_FINITE', weightsFile, alphaKey, `alpha is ${value}`);
      alphaDtype = raw.dtype;
      if (value !== 0) alpha = value;
    }
    modules.push({
      name: rename ? (recovered.get(loraName) as string) : loraName,
      rank: shapes.rank,
      alpha,
      scale: scaleOf(alpha, shapes.rank, false),
      rslora: false,
      layout: shapes.layout,
      ...(shapes.convKernel ? { convKernel: shapes.convKernel } : {}),
      shapes: shapes.shapes,
      inFeatures: shapes.inFeatures,
      outFeatures: shapes.outFeatures,
      fanInFanOut: false,
      keys: { A: down, B: up, ...(alphaKey !== undefined ? { alpha: alphaKey } : {}) },
      dtypes: { ...shapes.dtypes, ...(alphaDtype !== undefined ? { alpha: alphaDtype } : {}) },
    });
  }
  const baseModel = reader.metadata.ss_sd_model_name ?? null;
  return { format: 'kohya', baseModel: baseModel === '' ? null : baseModel, config: null, configFiles: [], modules, extras };
}
