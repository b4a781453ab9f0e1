/**
 * Module names as a target file format needs them, for diffusion models:
 *  - to diffusers: kohya names become diffusers names (SD 1.x/2.x and SDXL U-Nets in either
 *    spelling, CLIP text encoders: names.ts); kohya Flux names become diffusers Flux names,
 *    the fused projections split (flux-names.ts);
 *  - to kohya: an SDXL adapter's U-Net modules get sd-scripts' SGM names
 *    (`lora_unet_input_blocks_4_1_...`) and its first text encoder `lora_te1_`; diffusers
 *    Flux modules are fused back into BFL's `qkv` / `linear1`.
 * Splitting a fused LoRA (`B` rows [B_q; B_k; B_v], one `A`): each part keeps `A` and takes
 * its rows of `B`; when `B` is block-diagonal (sd-scripts' `split_qkv`, each part using its
 * own columns of the rank), each part takes only its columns of `B` and rows of `A`, with
 * alpha keeping its scale. Fusing: parts that share `A` (and rank and scale) give one `A`
 * and stacked `B`; others give stacked `A` and a block-diagonal `B`. Both are exact.
 */
import { EigenLoraxError } from '../errors.js';
import { checkMatrix, type Matrix } from '../matrix.js';
import { scaleOf } from './common.js';
import { fluxDiffusersOfKohya, fluxKohyaOfDiffusers, type FluxTarget } from './flux-names.js';
import { diffusersNameOfKohya, kohyaPrefix } from './names.js';
import { OpenedAdapter } from './open.js';
import { sgmPathOfDiffusers } from './sd-names.js';
import type { AdapterFormat, LoraAdapter, LoraModule } from './types.js';

const unsupported = (message: string) => new EigenLoraxError(message, 'ERR_ADAPTER_UNSUPPORTED');

function renamed(m: LoraModule, name: string): LoraModule {
  return { ...m, name, keys: { A: '', B: '' } };
}

function plainAlpha(m: LoraModule): number {
  return m.rslora ? m.alpha * Math.sqrt(m.rank) : m.alpha;
}

function linearModule(template: LoraModule, name: string, A: Matrix, B: Matrix, alpha: number): LoraModule {
  return {
    name,
    A,
    B,
    rank: A.rows,
    alpha,
    scale: scaleOf(alpha, A.rows, false),
    rslora: false,
    layout: 'linear',
    shapes: { A: [A.rows, A.cols], B: [B.rows, B.cols] },
    inFeatures: A.cols,
    outFeatures: B.rows,
    fanInFanOut: false,
    keys: { A: '', B: '' },
    dtypes: { A: template.dtypes.A, B: template.dtypes.B },
  };
}

/** B with its two row halves swapped (an involution). */
function swapHalves(B: Matrix, where: string): Matrix {
  if (B.rows % 2 !== 0) throw unsupported(`${where}: expected an even number of output rows to swap shift and scale, received ${B.rows}`);
  const half = (B.rows / 2) * B.cols;
  const data = new Float32Array(B.data.length);
  data.set(B.data.subarray(half), 0);
  data.set(B.data.subarray(0, half), half);
  return { rows: B.rows, cols: B.cols, data };
}

function rowsOf(m: Matrix, first: number, count: number, columns?: number[]): Matrix {
  const cols = columns ?? [...Array(m.cols).keys()];
  const data = new Float32Array(count * cols.length);
  for (let i = 0; i < count; i++) cols.forEach((c, j) => (data[i * cols.length + j] = m.data[(first + i) * m.cols + c] as number));
  return { rows: count, cols: cols.length, data };
}

function nonZeroColumns(B: Matrix, first: number, count: number): number[] {
  const out: number[] = [];
  for (let c = 0; c < B.cols; c++) {
    for (let i = first; i < first + count; i++) {
      if (B.data[i * B.cols + c] !== 0) {
        out.push(c);
        break;
      }
    }
  }
  return out;
}

/** A kohya Flux module as its diffusers modules (split by rows when fused). */
function splitFused(m: LoraModule, target: FluxTarget): LoraModule[] {
  const where = `module ${JSON.stringify(m.name)}`;
  if (m.layout !== 'linear') throw unsupported(`${where}: expected a linear LoRA for a Flux transformer layer, received a ${m.layout} one`);
  const A = checkMatrix(m.A, `${where}.A`);
  let B = checkMatrix(m.B, `${where}.B`, { cols: A.rows });
  if (target.swapHalves) B = swapHalves(B, where);
  const out = B.rows;
  const h = A.cols;
  let dims: number[];
  if (target.split === 'none') dims = [out];
  else if (target.split === 'thirds') {
    if (out % 3 !== 0) throw unsupported(`${where}: expected a fused q/k/v output width divisible by 3, received ${out}`);
    dims = [out / 3, out / 3, out / 3];
  } else {
    if (out <= 3 * h) throw unsupported(`${where}: expected a fused q/k/v/mlp output wider than 3 x ${h}, received ${out}`);
    dims = [h, h, h, out - 3 * h];
  }
  const starts = dims.map((_, i) => dims.slice(0, i).reduce((a, b) => a + b, 0));
  const used = dims.map((d, i) => nonZeroColumns(B, starts[i] as number, d));
  const seen = new Set<number>();
  const disjoint = used.every((cols) => cols.every((c) => !seen.has(c) && seen.add(c)));
  const sparse = dims.length > 1 && disjoint && used.some((cols) => cols.length > 0 && cols.length < A.rows);
  const parts: LoraModule[] = [];
  dims.forEach((d, i) => {
    const cols = used[i] as number[];
    if (cols.length === 0 && dims.length > 1) return; // a part the LoRA does not touch
    const name = `transformer.${target.paths[i]}`;
    if (sparse) {
      parts.push(linearModule(m, name, pickRows(A, cols), rowsOf(B, starts[i] as number, d, cols), m.scale * cols.length));
    } else {
      const part = linearModule(m, name, A, rowsOf(B, starts[i] as number, d), m.alpha);
      parts.push({ ...part, alpha: m.alpha, rslora: m.rslora, scale: m.scale });
    }
  });
  return parts;
}

function pickRows(A: Matrix, rows: number[]): Matrix {
  const data = new Float32Array(rows.length * A.cols);
  rows.forEach((r, i) => data.set(A.data.subarray(r * A.cols, (r + 1) * A.cols), i * A.cols));
  return { rows: rows.length, cols: A.cols, data };
}

const sameBits = (a: Float32Array, b: Float32Array) =>
  a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;

/** diffusers Flux parts (some may be absent) as one kohya module. */
function fuse(name: string, parts: Array<LoraModule | undefined>, split: FluxTarget['split'], swap: boolean): LoraModule {
  const present = parts.filter((p): p is LoraModule => p !== undefined);
  const first = present[0] as LoraModule;
  const where = `module ${JSON.stringify(first.name)}`;
  for (const p of present) {
    if (p.layout !== 'linear' || p.fanInFanOut) throw unsupported(`module ${JSON.stringify(p.name)}: expected a linear LoRA for a Flux transformer layer`);
    if (p.inFeatures !== first.inFeatures) {
      throw new EigenLoraxError(`module ${JSON.stringify(p.name)}: expected ${first.inFeatures} input features like ${JSON.stringify(first.name)} to fuse into ${name}, received ${p.inFeatures}`, 'ERR_SHAPE_MISMATCH');
    }
    checkMatrix(p.A, `module ${JSON.stringify(p.name)}.A`);
    checkMatrix(p.B, `module ${JSON.stringify(p.name)}.B`, { cols: p.A.rows });
  }
  const h = first.inFeatures;
  const dims = parts.map((p, i) => p?.outFeatures ?? (split === 'thirds' ? first.outFeatures : i < 3 ? h : 4 * h));
  const out = dims.reduce((a, b) => a + b, 0);
  const shared = present.every((p) => p.rank === first.rank && p.alpha === first.alpha && p.rslora === first.rslora && sameBits(p.A.data, first.A.data));
  let A: Matrix;
  let B: Matrix;
  let alpha: number;
  let rank: number;
  if (shared) {
    rank = first.rank;
    A = first.A;
    B = { rows: out, cols: rank, data: new Float32Array(out * rank) };
    let row = 0;
    parts.forEach((p, i) => {
      if (p) B.data.set(p.B.data, row * rank);
      row += dims[i] as number;
    });
    alpha = plainAlpha(first);
  } else {
    rank = present.reduce((n, p) => n + p.rank, 0);
    A = { rows: rank, cols: h, data: new Float32Array(rank * h) };
    B = { rows: out, cols: rank, data: new Float32Array(out * rank) };
    const scales = new Set(present.map((p) => p.scale));
    const common = scales.size === 1 ? first.scale : 1;
    let row = 0;
    let col = 0;
    parts.forEach((p, i) => {
      if (p) {
        A.data.set(p.A.data, col * h);
        const factor = p.scale / common;
        for (let r = 0; r < p.outFeatures; r++) {
          for (let c = 0; c < p.rank; c++) B.data[(row + r) * rank + col + c] = (p.B.data[r * p.rank + c] as number) * factor;
        }
        col += p.rank;
      }
      row += dims[i] as number;
    });
    alpha = common * rank;
  }
  if (swap) B = swapHalves(B, where);
  return linearModule(first, name, A, B, alpha);
}

/** True when the diffusers-named modules are an SDXL U-Net / text encoders (not SD 1.x/2.x). */
export function looksLikeSdxl(modules: Iterable<LoraModule | { name: string; inFeatures: number }>): boolean {
  for (const m of modules) {
    if (m.name.startsWith('text_encoder_2.')) return true;
    if (/^unet\.(add_embedding\.|up_blocks\.0\.attentions\.|(down_blocks|mid_block|up_blocks)\..*transformer_blocks\.([1-9]|\d\d+)\.)/.test(m.name)) return true;
    if (/^unet\..*\.attn2\.to_[kv]$/.test(m.name) && m.inFeatures === 2048) return true;
  }
  return false;
}

function needsConversion(names: string[], modules: Iterable<{ name: string; inFeatures: number }>, target: AdapterFormat): boolean {
  if (target === 'diffusers') return names.some((n) => kohyaPrefix(n) !== null);
  if (target === 'kohya') {
    return names.some((n) => n.startsWith('transformer.') && fluxKohyaOfDiffusers(n.slice('transformer.'.length)) !== null) || looksLikeSdxl(modules);
  }
  return false;
}

function add(out: Map<string, LoraModule>, m: LoraModule, from: string): void {
  if (out.has(m.name)) throw unsupported(`module ${JSON.stringify(from)} and another module both become ${JSON.stringify(m.name)}; they cannot be told apart in the target format`);
  out.set(m.name, m);
}

function toDiffusers(adapter: LoraAdapter): Map<string, LoraModule> {
  const out = new Map<string, LoraModule>();
  for (const m of adapter.modules.values()) {
    if (kohyaPrefix(m.name) === null) add(out, m, m.name);
    else {
      const flux = m.name.startsWith('lora_unet_') ? fluxDiffusersOfKohya(m.name.slice('lora_unet_'.length)) : null;
      if (flux) for (const part of splitFused(m, flux)) add(out, part, m.name);
      else {
        const name = diffusersNameOfKohya(m.name);
        add(out, name === null ? m : renamed(m, name), m.name);
      }
    }
  }
  return out;
}

function toKohya(adapter: LoraAdapter): Map<string, LoraModule> {
  const out = new Map<string, LoraModule>();
  const sdxl = looksLikeSdxl(adapter.modules.values());
  const groups = new Map<string, { parts: Array<LoraModule | undefined>; target: FluxTarget }>();
  for (const m of adapter.modules.values()) {
    const flux = m.name.startsWith('transformer.') ? fluxKohyaOfDiffusers(m.name.slice('transformer.'.length)) : null;
    if (flux) {
      const group = groups.get(flux.rest) ?? { parts: Array<LoraModule | undefined>(flux.parts).fill(undefined), target: fluxDiffusersOfKohya(flux.rest) as FluxTarget };
      group.parts[flux.part] = m;
      groups.set(flux.rest, group);
      continue;
    }
    let name = m.name;
    // A module read from a kohya file keeps its own key (saveAdapter reuses it).
    const ownKey = adapter.format === 'kohya' && typeof m.keys?.A === 'string' && m.keys.A.length > 0;
    if (ownKey) {
      add(out, m, m.name);
      continue;
    }
    if (sdxl && name.startsWith('unet.')) {
      // SDXL up levels 0 and 1 have attentions, so their upsamplers are `.2.conv`.
      const sgm = sgmPathOfDiffusers(name.slice('unet.'.length), (level) => level < 2);
      if (sgm !== null) name = `lora_unet_${sgm.replace(/\./g, '_')}`;
    } else if (sdxl && name.startsWith('text_encoder.')) {
      name = `lora_te1_${name.slice('text_encoder.'.length).replace(/\./g, '_')}`;
    }
    add(out, name === m.name ? m : renamed(m, name), m.name);
  }
  for (const [rest, group] of groups) {
    add(out, fuse(`lora_unet_${rest}`, group.parts, group.target.split, group.target.swapHalves), rest);
  }
  return out;
}

/**
 * `adapter` with its module names (and, for Flux, its fused or split modules) as
 * `target` files spell them; the adapter itself when nothing changes. Used by
 * `saveAdapter`; public so that adapters from kohya and diffusers files can be brought to
 * one naming before a subspace is built from them.
 */
export function convertAdapterNames(adapter: LoraAdapter, target: AdapterFormat): LoraAdapter {
  const names = [...adapter.modules.keys()];
  if (!needsConversion(names, adapter.modules.values(), target)) return adapter;
  const modules = target === 'diffusers' ? toDiffusers(adapter) : toKohya(adapter);
  return { ...adapter, modules };
}

/** For saveAdapter: converts when the target format names the modules otherwise (reading an opened adapter into memory then). */
export async function namesForFormat(adapter: LoraAdapter | OpenedAdapter, target: AdapterFormat): Promise<LoraAdapter | OpenedAdapter> {
  if (adapter instanceof OpenedAdapter) {
    if (adapter.format === target || !needsConversion([...adapter.modules.keys()], adapter.modules.values(), target)) return adapter;
    return convertAdapterNames(await adapter.read(), target);
  }
  // Also when the adapter says it is of the target format: one rebuilt from a subspace
  // (reconstructAdapter) has no keys to reuse and needs the names.
  if (typeof adapter !== 'object' || adapter === null || !(adapter.modules instanceof Map)) return adapter;
  // Malformed modules are left to saveAdapter's own checks, which name what is wrong.
  for (const [name, m] of adapter.modules) {
    if (typeof name !== 'string' || typeof m !== 'object' || m === null || m.name !== name) return adapter;
  }
  return convertAdapterNames(adapter, target);
}
