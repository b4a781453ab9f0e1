/**
 * Flux.1 transformer names: kohya / sd-scripts (`lora_unet_` + the Black Forest Labs
 * module path with `_`: `double_blocks_0_img_attn_qkv`, `single_blocks_3_linear1`) and
 * diffusers (`FluxTransformer2DModel`: `transformer_blocks.0.attn.to_q`,
 * `single_transformer_blocks.3.proj_mlp`), as diffusers' `_convert_sd_scripts_to_ai_toolkit`
 * maps them. BFL fuses what diffusers keeps apart: a double block's `img_attn.qkv` is
 * `attn.to_q | to_k | to_v` stacked by rows (`txt_attn.qkv`: `add_q_proj | add_k_proj |
 * add_v_proj`), a single block's `linear1` is `to_q | to_k | to_v | proj_mlp` (widths
 * H, H, H, 4H for hidden size H, the layer's input width). `final_layer.adaLN_modulation.1`
 * is `norm_out.linear` with its two output halves swapped (shift, scale vs scale, shift).
 */

export interface FluxTarget {
  /** diffusers paths inside the transformer, in row order of the fused weight. */
  paths: string[];
  /** How the fused rows split: thirds (qkv), or H, H, H, rest (single-block linear1). */
  split: 'none' | 'thirds' | 'linear1';
  /** Output halves swapped (final_layer.adaLN_modulation.1). */
  swapHalves: boolean;
}

const doubleBlock: Record<string, string[]> = {
  img_attn_qkv: ['attn.to_q', 'attn.to_k', 'attn.to_v'],
  txt_attn_qkv: ['attn.add_q_proj', 'attn.add_k_proj', 'attn.add_v_proj'],
  img_attn_proj: ['attn.to_out.0'],
  txt_attn_proj: ['attn.to_add_out'],
  img_mlp_0: ['ff.net.0.proj'],
  img_mlp_2: ['ff.net.2'],
  txt_mlp_0: ['ff_context.net.0.proj'],
  txt_mlp_2: ['ff_context.net.2'],
  img_mod_lin: ['norm1.linear'],
  txt_mod_lin: ['norm1_context.linear'],
};

const singleBlock: Record<string, string[]> = {
  linear1: ['attn.to_q', 'attn.to_k', 'attn.to_v', 'proj_mlp'],
  linear2: ['proj_out'],
  modulation_lin: ['norm.linear'],
};

const globals: Record<string, string[]> = {
  img_in: ['x_embedder'],
  txt_in: ['context_embedder'],
  time_in_in_layer: ['time_text_embed.timestep_embedder.linear_1'],
  time_in_out_layer: ['time_text_embed.timestep_embedder.linear_2'],
  vector_in_in_layer: ['time_text_embed.text_embedder.linear_1'],
  vector_in_out_layer: ['time_text_embed.text_embedder.linear_2'],
  guidance_in_in_layer: ['time_text_embed.guidance_embedder.linear_1'],
  guidance_in_out_layer: ['time_text_embed.guidance_embedder.linear_2'],
  final_layer_linear: ['proj_out'],
  final_layer_adaLN_modulation_1: ['norm_out.linear'],
};

function target(key: string, paths: string[], prefix: string): FluxTarget {
  return {
    paths: paths.map((p) => `${prefix}${p}`),
    split: paths.length === 1 ? 'none' : paths.length === 3 ? 'thirds' : 'linear1',
    swapHalves: key === 'final_layer_adaLN_modulation_1',
  };
}

/** The diffusers paths of a kohya Flux name's rest (after `lora_unet_`), or null. */
export function fluxDiffusersOfKohya(rest: string): FluxTarget | null {
  let m = /^double_blocks_(\d+)_(.+)$/.exec(rest);
  if (m) {
    const paths = doubleBlock[m[2] as string];
    return paths ? target(m[2] as string, paths, `transformer_blocks.${Number(m[1])}.`) : null;
  }
  m = /^single_blocks_(\d+)_(.+)$/.exec(rest);
  if (m) {
    const paths = singleBlock[m[2] as string];
    return paths ? target(m[2] as string, paths, `single_transformer_blocks.${Number(m[1])}.`) : null;
  }
  const paths = globals[rest];
  return paths ? target(rest, paths, '') : null;
}

function reverse(table: Record<string, string[]>): Map<string, { key: string; part: number; parts: number }> {
  const out = new Map<string, { key: string; part: number; parts: number }>();
  for (const [key, paths] of Object.entries(table)) paths.forEach((p, part) => out.set(p, { key, part, parts: paths.length }));
  return out;
}
const doubleReverse = reverse(doubleBlock);
const singleReverse = reverse(singleBlock);
const globalReverse = reverse(globals);

/** Where a diffusers Flux path (inside `transformer.`) lives in a kohya file: the name's rest and its row block. */
export function fluxKohyaOfDiffusers(path: string): { rest: string; part: number; parts: number } | null {
  let m = /^transformer_blocks\.(\d+)\.(.+)$/.exec(path);
  if (m) {
    const hit = doubleReverse.get(m[2] as string);
    return hit ? { rest: `double_blocks_${m[1]}_${hit.key}`, part: hit.part, parts: hit.parts } : null;
  }
  m = /^single_transformer_blocks\.(\d+)\.(.+)$/.exec(path);
  if (m) {
    const hit = singleReverse.get(m[2] as string);
    return hit ? { rest: `single_blocks_${m[1]}_${hit.key}`, part: hit.part, parts: hit.parts } : null;
  }
  const hit = globalReverse.get(path);
  return hit ? { rest: hit.key, part: hit.part, parts: hit.parts } : null;
}

/** True for a kohya name of the Flux transformer. */
export function isFluxKohyaName(name: string): boolean {
  return name.startsWith('lora_unet_') && fluxDiffusersOfKohya(name.slice('lora_unet_'.length)) !== null;
}
