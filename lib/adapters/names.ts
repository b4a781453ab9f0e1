/**
 * kohya (sd-scripts) module names and diffusers-style module names.
 *
 * sd-scripts names a LoRA module `lora_unet_` / `lora_te_` / `lora_te1_` / `lora_te2_` +
 * the module's path with every `.` replaced by `_`. The path is therefore ambiguous in
 * general (`proj_in` vs `proj.in`), so a diffusers-style name is recovered only by a strict
 * grammar of the standard Stable Diffusion 1.x/2.x U-Net (diffusers `UNet2DConditionModel`
 * naming, which sd-scripts uses for those models) and of the CLIP text encoders; the
 * result must turn back into the same kohya name. A file is renamed only when every one of
 * its modules parses; otherwise all its modules keep their kohya names (Flux, other
 * networks). SDXL files from sd-scripts use SGM names (`input_blocks_4_1_...`); those are
 * recovered too (sd-names.ts), and written back in that spelling for SDXL (sd-convert.ts).
 */
import { diffusersPathOfSgm, sgmPathOfDiffusers } from './sd-names.js';

export type KohyaPrefix = 'lora_unet_' | 'lora_te_' | 'lora_te1_' | 'lora_te2_';

const componentOfPrefix: Record<KohyaPrefix, string> = {
  lora_unet_: 'unet',
  lora_te_: 'text_encoder',
  lora_te1_: 'text_encoder',
  lora_te2_: 'text_encoder_2',
};

const unetRules: Array<[RegExp, (m: RegExpMatchArray) => string | null]> = [
  [/^(down_blocks|up_blocks)_(\d+)_(attentions|resnets)_(\d+)_(.+)$/, (m) => inner(`${m[1]}.${m[2]}.${m[3]}.${m[4]}`, m[3] as string, m[5] as string)],
  [/^mid_block_(attentions|resnets)_(\d+)_(.+)$/, (m) => inner(`mid_block.${m[1]}.${m[2]}`, m[1] as string, m[3] as string)],
  [/^down_blocks_(\d+)_downsamplers_0_conv$/, (m) => `down_blocks.${m[1]}.downsamplers.0.conv`],
  [/^up_blocks_(\d+)_upsamplers_0_conv$/, (m) => `up_blocks.${m[1]}.upsamplers.0.conv`],
  [/^(conv_in|conv_out)$/, (m) => m[1] as string],
  [/^(time_embedding|add_embedding)_(linear_1|linear_2)$/, (m) => `${m[1]}.${m[2]}`],
];

function inner(prefix: string, kind: string, rest: string): string | null {
  if (kind === 'resnets') {
    return /^(conv1|conv2|time_emb_proj|conv_shortcut)$/.test(rest) ? `${prefix}.${rest}` : null;
  }
  if (/^(proj_in|proj_out)$/.test(rest)) return `${prefix}.${rest}`;
  let m = /^transformer_blocks_(\d+)_(attn1|attn2)_(to_q|to_k|to_v|to_out_0)$/.exec(rest);
  if (m) return `${prefix}.transformer_blocks.${m[1]}.${m[2]}.${m[3] === 'to_out_0' ? 'to_out.0' : m[3]}`;
  m = /^transformer_blocks_(\d+)_ff_net_(0_proj|2)$/.exec(rest);
  if (m) return `${prefix}.transformer_blocks.${m[1]}.ff.net.${m[2] === '0_proj' ? '0.proj' : '2'}`;
  return null;
}

function textEncoderPath(rest: string): string | null {
  let m = /^text_model_encoder_layers_(\d+)_self_attn_(q_proj|k_proj|v_proj|out_proj)$/.exec(rest);
  if (m) return `text_model.encoder.layers.${m[1]}.self_attn.${m[2]}`;
  m = /^text_model_encoder_layers_(\d+)_mlp_(fc1|fc2)$/.exec(rest);
  if (m) return `text_model.encoder.layers.${m[1]}.mlp.${m[2]}`;
  return rest === 'text_projection' ? 'text_projection' : null;
}

/** The prefix of a kohya LoRA name, or null. */
export function kohyaPrefix(loraName: string): KohyaPrefix | null {
  for (const p of ['lora_unet_', 'lora_te1_', 'lora_te2_', 'lora_te_'] as const) if (loraName.startsWith(p)) return p;
  return null;
}

/**
 * The diffusers-style name (`unet.down_blocks.0...`, `text_encoder.text_model...`) of a
 * kohya LoRA name, or null when the strict grammar does not recognise it.
 */
export function diffusersNameOfKohya(loraName: string): string | null {
  const prefix = kohyaPrefix(loraName);
  if (prefix === null) return null;
  const rest = loraName.slice(prefix.length);
  let path: string | null = null;
  if (prefix === 'lora_unet_') {
    for (const [regex, build] of unetRules) {
      const m = regex.exec(rest);
      if (m) {
        path = build(m);
        break;
      }
    }
    if (path === null) {
      const sgm = diffusersPathOfSgm(rest);
      // Checked by turning it back: the SGM spelling must be the one we would write.
      const back = sgm === null ? null : sgmPathOfDiffusers(sgm, () => rest.endsWith('_2_conv'));
      return back !== null && back.replace(/\./g, '_') === rest ? `unet.${sgm}` : null;
    }
  } else {
    path = textEncoderPath(rest);
  }
  if (path === null || path.replace(/\./g, '_') !== rest) return null;
  return `${componentOfPrefix[prefix]}.${path}`;
}

/**
 * The kohya name of a module name: kohya names pass through; `unet.X`, `text_encoder.X`
 * and `text_encoder_2.X` become `lora_unet_`, `lora_te_` (or `lora_te1_` when the adapter
 * also has a second text encoder) and `lora_te2_` + X with `.` replaced by `_`. Null for
 * names of other models.
 */
export function kohyaNameOf(name: string, hasSecondTextEncoder: boolean): string | null {
  if (/^lora_[A-Za-z0-9_]+$/.test(name) && kohyaPrefix(name) !== null) return name;
  const dot = name.indexOf('.');
  if (dot <= 0) return null;
  const component = name.slice(0, dot);
  const path = name.slice(dot + 1).replace(/\./g, '_');
  if (component === 'unet') return `lora_unet_${path}`;
  if (component === 'text_encoder') return `${hasSecondTextEncoder ? 'lora_te1_' : 'lora_te_'}${path}`;
  if (component === 'text_encoder_2') return `lora_te2_${path}`;
  return null;
}
