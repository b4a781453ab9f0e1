/**
 * Module lists of real diffusion architectures, generated from their published configs,
 * for naming tests: every LoRA-able module with its (in, out, kernel).
 *  - SDXL U-Net (diffusers UNet2DConditionModel of stabilityai/stable-diffusion-xl-base-1.0):
 *    block_out_channels [320, 640, 1280], layers_per_block 2, transformer_layers_per_block
 *    [1, 2, 10] (mid block 10), down blocks DownBlock2D, CrossAttnDownBlock2D x2, up blocks
 *    CrossAttnUpBlock2D x2, UpBlock2D, cross_attention_dim 2048, linear proj_in/out,
 *    GEGLU feed-forward (inner 4C), time embedding 320 -> 1280, add_embedding 2816 -> 1280.
 *  - SDXL text encoders: CLIP ViT-L (12 layers, 768, MLP 3072) and OpenCLIP bigG
 *    (32 layers, 1280, MLP 5120).
 *  - Flux.1-dev transformer: 19 double blocks, 38 single blocks, hidden 3072, MLP 4x,
 *    in_channels 64, joint_attention_dim 4096, pooled_projection_dim 768.
 * `div` divides every width (not the counts) to keep test files small.
 */
export interface ArchModule {
  /** diffusers name with its component (`unet.down_blocks...`). */
  name: string;
  in: number;
  out: number;
  kernel?: number[];
}

export function sdxlUnetModules(div = 1): ArchModule[] {
  const w = (c: number) => c / div;
  const ch = [320, 640, 1280].map(w);
  const layers = [0, 2, 10];
  const ctx = w(2048);
  const out: ArchModule[] = [];
  const resnet = (p: string, cin: number, cout: number) => {
    out.push({ name: `${p}.conv1`, in: cin, out: cout, kernel: [3, 3] });
    out.push({ name: `${p}.time_emb_proj`, in: w(1280), out: cout });
    out.push({ name: `${p}.conv2`, in: cout, out: cout, kernel: [3, 3] });
    if (cin !== cout) out.push({ name: `${p}.conv_shortcut`, in: cin, out: cout, kernel: [1, 1] });
  };
  const attention = (p: string, c: number, depth: number) => {
    out.push({ name: `${p}.proj_in`, in: c, out: c });
    for (let k = 0; k < depth; k++) {
      const b = `${p}.transformer_blocks.${k}`;
      for (const x of ['to_q', 'to_k', 'to_v', 'to_out.0']) out.push({ name: `${b}.attn1.${x}`, in: c, out: c });
      out.push({ name: `${b}.attn2.to_q`, in: c, out: c });
      out.push({ name: `${b}.attn2.to_k`, in: ctx, out: c });
      out.push({ name: `${b}.attn2.to_v`, in: ctx, out: c });
      out.push({ name: `${b}.attn2.to_out.0`, in: c, out: c });
      out.push({ name: `${b}.ff.net.0.proj`, in: c, out: 8 * c });
      out.push({ name: `${b}.ff.net.2`, in: 4 * c, out: c });
    }
    out.push({ name: `${p}.proj_out`, in: c, out: c });
  };
  out.push({ name: 'unet.conv_in', in: 4, out: ch[0]!, kernel: [3, 3] });
  out.push({ name: 'unet.time_embedding.linear_1', in: ch[0]!, out: w(1280) });
  out.push({ name: 'unet.time_embedding.linear_2', in: w(1280), out: w(1280) });
  out.push({ name: 'unet.add_embedding.linear_1', in: w(2816), out: w(1280) });
  out.push({ name: 'unet.add_embedding.linear_2', in: w(1280), out: w(1280) });
  let cin = ch[0]!;
  for (let i = 0; i < 3; i++) {
    const c = ch[i]!;
    for (let j = 0; j < 2; j++) {
      resnet(`unet.down_blocks.${i}.resnets.${j}`, j === 0 ? cin : c, c);
      if (layers[i]! > 0) attention(`unet.down_blocks.${i}.attentions.${j}`, c, layers[i]!);
    }
    if (i < 2) out.push({ name: `unet.down_blocks.${i}.downsamplers.0.conv`, in: c, out: c, kernel: [3, 3] });
    cin = c;
  }
  resnet('unet.mid_block.resnets.0', ch[2]!, ch[2]!);
  attention('unet.mid_block.attentions.0', ch[2]!, 10);
  resnet('unet.mid_block.resnets.1', ch[2]!, ch[2]!);
  const rev = [...ch].reverse();
  const revLayers = [...layers].reverse();
  let prev = ch[2]!;
  for (let i = 0; i < 3; i++) {
    const c = rev[i]!;
    const skipChannels = [rev[i]!, rev[i]!, rev[Math.min(i + 1, 2)]!];
    for (let j = 0; j < 3; j++) {
      const resIn = (j === 0 ? prev : c) + skipChannels[j]!;
      resnet(`unet.up_blocks.${i}.resnets.${j}`, resIn, c);
      if (revLayers[i]! > 0) attention(`unet.up_blocks.${i}.attentions.${j}`, c, revLayers[i]!);
    }
    if (i < 2) out.push({ name: `unet.up_blocks.${i}.upsamplers.0.conv`, in: c, out: c, kernel: [3, 3] });
    prev = c;
  }
  out.push({ name: 'unet.conv_out', in: ch[0]!, out: 4, kernel: [3, 3] });
  return out;
}

export function clipModules(component: string, layers: number, width: number, mlp: number): ArchModule[] {
  const out: ArchModule[] = [];
  for (let l = 0; l < layers; l++) {
    const p = `${component}.text_model.encoder.layers.${l}`;
    for (const x of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) out.push({ name: `${p}.self_attn.${x}`, in: width, out: width });
    out.push({ name: `${p}.mlp.fc1`, in: width, out: mlp });
    out.push({ name: `${p}.mlp.fc2`, in: mlp, out: width });
  }
  return out;
}

export const sdxlTextEncoders = (div = 1): ArchModule[] => [
  ...clipModules('text_encoder', 12, 768 / div, 3072 / div),
  ...clipModules('text_encoder_2', 32, 1280 / div, 5120 / div),
];

/** Flux.1-dev LoRA-able modules in kohya (BFL) naming: `lora_unet_...` with (in, out). */
export function fluxKohyaModules(div = 1): Array<{ loraName: string; in: number; out: number }> {
  const h = 3072 / div;
  const out: Array<{ loraName: string; in: number; out: number }> = [];
  for (let i = 0; i < 19; i++) {
    for (const s of ['img', 'txt']) {
      out.push({ loraName: `lora_unet_double_blocks_${i}_${s}_attn_qkv`, in: h, out: 3 * h });
      out.push({ loraName: `lora_unet_double_blocks_${i}_${s}_attn_proj`, in: h, out: h });
      out.push({ loraName: `lora_unet_double_blocks_${i}_${s}_mlp_0`, in: h, out: 4 * h });
      out.push({ loraName: `lora_unet_double_blocks_${i}_${s}_mlp_2`, in: 4 * h, out: h });
      out.push({ loraName: `lora_unet_double_blocks_${i}_${s}_mod_lin`, in: h, out: 6 * h });
    }
  }
  for (let i = 0; i < 38; i++) {
    out.push({ loraName: `lora_unet_single_blocks_${i}_linear1`, in: h, out: 7 * h });
    out.push({ loraName: `lora_unet_single_blocks_${i}_linear2`, in: 5 * h, out: h });
    out.push({ loraName: `lora_unet_single_blocks_${i}_modulation_lin`, in: h, out: 3 * h });
  }
  out.push({ loraName: 'lora_unet_img_in', in: 64 / Math.min(div, 64), out: h });
  out.push({ loraName: 'lora_unet_txt_in', in: 4096 / div, out: h });
  for (const e of ['time_in', 'vector_in', 'guidance_in']) {
    out.push({ loraName: `lora_unet_${e}_in_layer`, in: e === 'vector_in' ? 768 / div : 256 / div, out: h });
    out.push({ loraName: `lora_unet_${e}_out_layer`, in: h, out: h });
  }
  out.push({ loraName: 'lora_unet_final_layer_linear', in: h, out: 64 / Math.min(div, 64) });
  out.push({ loraName: 'lora_unet_final_layer_adaLN_modulation_1', in: h, out: 2 * h });
  return out;
}
