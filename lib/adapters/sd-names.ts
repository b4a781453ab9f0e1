/**
 * U-Net names in the SGM layout (Stability's `sgm` / original LDM code, which sd-scripts
 * uses for SDXL: `input_blocks.4.1.transformer_blocks.0.attn1.to_q`) and the diffusers
 * layout (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`).
 *
 * Both SD 1.x/2.x and SDXL U-Nets have three `input_blocks` per resolution level (two
 * resnet[+attention] layers and a downsampler), so the map is one formula, as in diffusers'
 * `_maybe_map_sgm_blocks_to_diffusers` and the single-file converters:
 *   input_blocks.(3i+j+1).0 = down_blocks.i.resnets.j, .1 = down_blocks.i.attentions.j,
 *   input_blocks.(3i+3).0.op = down_blocks.i.downsamplers.0.conv,
 *   middle_block.0/.2 = mid_block.resnets.0/1, middle_block.1 = mid_block.attentions.0,
 *   output_blocks.(3i+j).0 = up_blocks.i.resnets.j, .1 = up_blocks.i.attentions.j,
 *   output_blocks.(3i+2).(1 or 2).conv = up_blocks.i.upsamplers.0.conv (2 when the level
 *   has attentions), input_blocks.0.0 = conv_in, out.2 = conv_out,
 *   time_embed.0/2 = time_embedding.linear_1/2, label_emb.0.0/0.2 = add_embedding.linear_1/2.
 * Inside a resnet: in_layers.2 = conv1, out_layers.3 = conv2, emb_layers.1 = time_emb_proj,
 * skip_connection = conv_shortcut. Inside an attention the names are the same.
 */

const resnetToSgm: Record<string, string> = { conv1: 'in_layers.2', conv2: 'out_layers.3', time_emb_proj: 'emb_layers.1', conv_shortcut: 'skip_connection' };
const resnetFromSgm: Record<string, string> = Object.fromEntries(Object.entries(resnetToSgm).map(([k, v]) => [v.replace(/\./g, '_'), k]));

/** An attention-block inner path in kohya spelling (`transformer_blocks_0_attn1_to_out_0`) as a dotted path, or null. */
export function attentionInner(rest: string): string | null {
  if (/^(proj_in|proj_out)$/.test(rest)) return rest;
  let m = /^transformer_blocks_(\d+)_(attn1|attn2)_(to_q|to_k|to_v|to_out_0)$/.exec(rest);
  if (m) return `transformer_blocks.${m[1]}.${m[2]}.${m[3] === 'to_out_0' ? 'to_out.0' : m[3]}`;
  m = /^transformer_blocks_(\d+)_ff_net_(0_proj|2)$/.exec(rest);
  if (m) return `transformer_blocks.${m[1]}.ff.net.${m[2] === '0_proj' ? '0.proj' : '2'}`;
  return null;
}

/**
 * The diffusers U-Net path of a kohya SGM name's rest (`input_blocks_4_1_proj_in` ->
 * `down_blocks.1.attentions.0.proj_in`), or null when it is not one.
 */
export function diffusersPathOfSgm(rest: string): string | null {
  let m: RegExpExecArray | null;
  if (rest === 'input_blocks_0_0') return 'conv_in';
  if (rest === 'out_2') return 'conv_out';
  if ((m = /^time_embed_(0|2)$/.exec(rest))) return `time_embedding.linear_${m[1] === '0' ? 1 : 2}`;
  if ((m = /^label_emb_0_(0|2)$/.exec(rest))) return `add_embedding.linear_${m[1] === '0' ? 1 : 2}`;
  if ((m = /^input_blocks_(\d+)_0_op$/.exec(rest))) {
    const n = Number(m[1]);
    return n >= 3 && n % 3 === 0 ? `down_blocks.${n / 3 - 1}.downsamplers.0.conv` : null;
  }
  if ((m = /^input_blocks_(\d+)_(0|1)_(.+)$/.exec(rest))) {
    const n = Number(m[1]);
    if (n < 1 || n % 3 === 0) return null;
    const where = `down_blocks.${Math.floor((n - 1) / 3)}`;
    const j = (n - 1) % 3;
    return m[2] === '0' ? resnet(`${where}.resnets.${j}`, m[3] as string) : attention(`${where}.attentions.${j}`, m[3] as string);
  }
  if ((m = /^middle_block_(0|1|2)_(.+)$/.exec(rest))) {
    return m[1] === '1' ? attention('mid_block.attentions.0', m[2] as string) : resnet(`mid_block.resnets.${m[1] === '0' ? 0 : 1}`, m[2] as string);
  }
  if ((m = /^output_blocks_(\d+)_(0|1|2)_(.+)$/.exec(rest))) {
    const n = Number(m[1]);
    const where = `up_blocks.${Math.floor(n / 3)}`;
    const inner = m[3] as string;
    if (m[2] !== '0' && inner === 'conv') return n % 3 === 2 ? `${where}.upsamplers.0.conv` : null;
    if (m[2] === '0') return resnet(`${where}.resnets.${n % 3}`, inner);
    return m[2] === '1' ? attention(`${where}.attentions.${n % 3}`, inner) : null;
  }
  return null;
}

function resnet(prefix: string, rest: string): string | null {
  const name = resnetFromSgm[rest];
  return name === undefined ? null : `${prefix}.${name}`;
}

function attention(prefix: string, rest: string): string | null {
  const inner = attentionInner(rest);
  return inner === null ? null : `${prefix}.${inner}`;
}

/**
 * The SGM path of a diffusers U-Net path (`down_blocks.1.attentions.0.proj_in` ->
 * `input_blocks.4.1.proj_in`), or null. `upHasAttention(i)` says whether up level i has
 * attentions (its upsampler is then `.2.conv`, else `.1.conv`).
 */
export function sgmPathOfDiffusers(path: string, upHasAttention: (level: number) => boolean): string | null {
  let m: RegExpExecArray | null;
  if (path === 'conv_in') return 'input_blocks.0.0';
  if (path === 'conv_out') return 'out.2';
  if ((m = /^time_embedding\.linear_(1|2)$/.exec(path))) return `time_embed.${m[1] === '1' ? 0 : 2}`;
  if ((m = /^add_embedding\.linear_(1|2)$/.exec(path))) return `label_emb.0.${m[1] === '1' ? 0 : 2}`;
  if ((m = /^down_blocks\.(\d+)\.downsamplers\.0\.conv$/.exec(path))) return `input_blocks.${3 * Number(m[1]) + 3}.0.op`;
  if ((m = /^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$/.exec(path))) {
    const n = 3 * Number(m[1]) + Number(m[3]) + 1;
    return inner(`input_blocks.${n}`, m[2] as string, m[4] as string);
  }
  if ((m = /^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$/.exec(path))) {
    const n = m[1] === 'attentions' ? 1 : m[2] === '0' ? 0 : 2;
    if ((m[1] === 'attentions' && m[2] !== '0') || Number(m[2]) > 1) return null;
    return inner('', m[1] as string, m[3] as string, n);
  }
  if ((m = /^up_blocks\.(\d+)\.upsamplers\.0\.conv$/.exec(path))) {
    const i = Number(m[1]);
    return `output_blocks.${3 * i + 2}.${upHasAttention(i) ? 2 : 1}.conv`;
  }
  if ((m = /^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$/.exec(path))) {
    return inner(`output_blocks.${3 * Number(m[1]) + Number(m[3])}`, m[2] as string, m[4] as string);
  }
  return null;
}

function inner(block: string, kind: string, rest: string, middle?: number): string | null {
  const head = middle === undefined ? `${block}.${kind === 'resnets' ? 0 : 1}` : `middle_block.${middle}`;
  if (kind === 'resnets') {
    const sgm = resnetToSgm[rest];
    return sgm === undefined ? null : `${head}.${sgm}`;
  }
  return attentionInner(rest.replace(/\./g, '_')) === rest ? `${head}.${rest}` : null;
}
