/**
 * LoRA adapters in llama.cpp's GGUF layout (what convert_lora_to_gguf.py writes and
 * llama.cpp's `llama_adapter_lora_init` reads):
 *  - metadata `general.type = "adapter"`, `adapter.type = "lora"`, `general.architecture`
 *    (must equal the model's), `adapter.lora.alpha` (f32);
 *  - per adapted weight `<name>.weight`, tensors `<name>.weight.lora_a` (numpy `[r, in]`,
 *    ggml `ne = [in, r]`) and `<name>.weight.lora_b` (numpy `[out, r]`): PEFT's A and B.
 * llama.cpp applies `scale x alpha / r` with `r` read from each `lora_b` and one alpha for
 * the whole file; a file without alpha (or alpha 0) gets no `alpha / r` factor at all.
 *
 * Reading: module names stay GGUF's (`blk.0.attn_q`), the names a GGUF base model has, so a
 * GGUF LoRA merges into a GGUF model as is; alpha is the file's (a missing or zero alpha
 * reads as alpha = r, scale 1, as llama.cpp applies it).
 *
 * Writing: HF module names are mapped (gguf-names.ts); one alpha is chosen for the file,
 * the most common `scale x r` of the modules, and every module whose own scale differs
 * (PEFT `rank_pattern` / `alpha_pattern`, rsLoRA) gets the ratio folded into its `B`, so
 * llama.cpp applies exactly each module's `scale B A`. (convert_lora_to_gguf.py writes
 * `lora_alpha` alone and ignores the patterns and rsLoRA, which changes those modules'
 * scale.) Written always: `adapter.lora.alpha`. Not expressible, refused with
 * ERR_ADAPTER_UNSUPPORTED: conv and embedding LoRA, non-LoRA extras.
 */
import { mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { fileError, ioError } from '../io/files.js';
import { writeGguf } from '../io/gguf-write.js';
import { openGguf, plainValue, type GgufReader } from '../io/gguf.js';
import { isGgufFloatType, type GgufValue } from '../io/gguf-format.js';
import type { GgufEntry } from '../io/gguf-write.js';
import type { SafetensorsFloatDType } from '../io/safetensors.js';
import { argumentPlace, parse } from '../schema.js';
import { GgufAdapterOptionsSchema } from './options.js';
import { naturalCompare } from './common.js';
import {
  familyOfGgufArchitecture,
  ggufArchitectureName,
  ggufLoraArchitectures,
  ggufModuleName,
  hfModuleName,
  isGgufModuleName,
  permutedHeads,
  permuteRows,
  type GgufLoraArchitecture,
} from './gguf-names.js';
import type { AdapterPlan, AdapterTensorReader } from './plan.js';
import type { SaveModule, SaveSource } from './save.js';
import type { GgufAdapterOptions, LoraModuleInfo, SavedAdapter } from './types.js';

export const GGUF_EXTENSION = '.gguf';

// ---------------------------------------------------------------------------------------
// Reading

function plainMetadata(reader: GgufReader): { config: Record<string, unknown>; metadata: Record<string, string> } {
  const config: Record<string, unknown> = {};
  const metadata: Record<string, string> = {};
  const toPlain = (v: unknown): unknown =>
    typeof v === 'bigint' ? (Number.isSafeInteger(Number(v)) ? Number(v) : v.toString()) : Array.isArray(v) ? v.map(toPlain) : v;
  for (const [key, value] of reader.metadata) {
    config[key] = toPlain(plainValue(value));
    if (value.type !== 'ARRAY') metadata[key] = String(value.value);
  }
  return { config, metadata };
}

const floatDtype = (type: string): SafetensorsFloatDType => (type === 'F16' || type === 'BF16' || type === 'F64' ? type : 'F32');

/**
 * Opens a GGUF LoRA adapter: checks the metadata and pairs every `.lora_a` with its
 * `.lora_b`. ERR_ADAPTER_FORMAT: not an adapter (a GGUF model), no `general.architecture`,
 * a tensor that is not a LoRA factor, a factor without its partner, of other than 2
 * dimensions or a type that is not read as f32, ranks that disagree (ERR_SHAPE_MISMATCH).
 * ERR_ADAPTER_UNSUPPORTED: `adapter.type` other than lora, an embedding LoRA
 * (`token_embd`), layer-norm tensors (mergekit's), which llama.cpp ignores.
 */
export async function openGgufAdapter(file: string): Promise<{ plan: AdapterPlan; reader: AdapterTensorReader }> {
  const reader = await openGguf(file);
  try {
    const plan = planGgufAdapter(reader);
    const { metadata } = plainMetadata(reader);
    const view: AdapterTensorReader = {
      path: reader.path,
      files: reader.files,
      metadata,
      tensors: new Map(),
      readFloat32: (key, options) => reader.readFloat32(key, options),
      readRaw: (key) => Promise.reject(fileError('ERR_TENSOR_NOT_FOUND', reader.path, 'a GGUF adapter has no extras', key)),
      close: () => reader.close(),
    };
    return { plan, reader: view };
  } catch (error) {
    await reader.close();
    throw error;
  }
}

function planGgufAdapter(reader: GgufReader): AdapterPlan {
  const file = reader.path;
  const type = reader.getString('general.type');
  if (type !== 'adapter') {
    throw fileError(
      'ERR_ADAPTER_FORMAT',
      file,
      `general.type is ${type === undefined ? 'missing' : JSON.stringify(type)}, not "adapter": ` +
        `this is a GGUF ${type === undefined || type === 'model' ? 'model' : 'file'}, not a LoRA adapter`,
    );
  }
  const adapterType = reader.getString('adapter.type');
  if (adapterType !== 'lora') {
    throw fileError('ERR_ADAPTER_UNSUPPORTED', file, `adapter.type is ${adapterType === undefined ? 'missing' : JSON.stringify(adapterType)}; only LoRA ("lora") adapters are read`);
  }
  const architecture = reader.getString('general.architecture');
  if (architecture === undefined) throw fileError('ERR_ADAPTER_FORMAT', file, 'general.architecture is missing (llama.cpp refuses such an adapter)');
  const fileAlpha = reader.getNumber('adapter.lora.alpha') ?? 0;

  const pairs = new Map<string, { a?: string; b?: string }>();
  for (const name of reader.tensors.keys()) {
    const m = /^(.*)\.lora_([ab])$/.exec(name);
    if (m === null) {
      if (/_norm\.weight$/.test(name)) {
        throw fileError('ERR_ADAPTER_UNSUPPORTED', file, 'a layer-norm tensor in a LoRA adapter (as mergekit writes them) is not read; llama.cpp ignores it too', name);
      }
      throw fileError('ERR_ADAPTER_FORMAT', file, 'not a LoRA factor (expected a name ending in .lora_a or .lora_b)', name);
    }
    const pair = pairs.get(m[1] as string) ?? {};
    pair[m[2] as 'a' | 'b'] = name;
    pairs.set(m[1] as string, pair);
  }
  const modules: LoraModuleInfo[] = [];
  for (const [base, pair] of pairs) {
    if (pair.a === undefined || pair.b === undefined) {
      const have = (pair.a ?? pair.b) as string;
      throw fileError('ERR_ADAPTER_FORMAT', file, `the LoRA factor has no partner ${JSON.stringify(`${base}.lora_${pair.a === undefined ? 'a' : 'b'}`)}`, have);
    }
    const a = reader.tensors.get(pair.a)!;
    const b = reader.tensors.get(pair.b)!;
    for (const t of [a, b]) {
      if (t.shape.length !== 2 || t.shape.some((d) => d === 0)) {
        throw fileError('ERR_ADAPTER_FORMAT', file, `a LoRA factor must be a non-empty 2-D tensor, not shape [${t.shape.join(', ')}]`, t.name);
      }
      if (!isGgufFloatType(t.dtype)) throw fileError('ERR_ADAPTER_FORMAT', file, `a LoRA factor of ggml type ${t.dtype} is not read (F32, F16, BF16, F64, Q8_0, Q4_0 are)`, t.name);
    }
    const name = base.endsWith('.weight') ? base.slice(0, -'.weight'.length) : base;
    if (name === 'token_embd') throw fileError('ERR_ADAPTER_UNSUPPORTED', file, 'embedding LoRA (token_embd) is not read from GGUF', pair.a);
    const rank = b.shape[1] as number;
    if (a.shape[0] !== rank) {
      throw fileError('ERR_SHAPE_MISMATCH', file, `lora_a has rank ${a.shape[0]} (shape [${a.shape.join(', ')}]) but lora_b has rank ${rank} (shape [${b.shape.join(', ')}])`, pair.a);
    }
    const alpha = fileAlpha === 0 ? rank : fileAlpha;
    modules.push({
      name,
      rank,
      alpha,
      scale: alpha / rank,
      rslora: false,
      layout: 'linear',
      shapes: { A: [...a.shape], B: [...b.shape] },
      inFeatures: a.shape[1] as number,
      outFeatures: b.shape[0] as number,
      fanInFanOut: false,
      keys: { A: pair.a, B: pair.b },
      dtypes: { A: floatDtype(a.dtype), B: floatDtype(b.dtype) },
    });
  }
  return { format: 'gguf', baseModel: reader.getString('general.base_model.0.name') ?? null, config: plainMetadata(reader).config, configFiles: [], modules, extras: [] };
}

// ---------------------------------------------------------------------------------------
// The model an adapter is for

interface ModelInfo {
  /** `general.architecture` to write. */
  architecture: string;
  /** The name family, when the architecture has one. */
  family: GgufLoraArchitecture | null;
  headCount?: number;
  headCountKv?: number;
}

/** Checks `options.gguf`. */
export function checkGgufOptions(value: unknown, name = 'options.gguf'): GgufAdapterOptions | undefined {
  return value === undefined ? undefined : parse(GgufAdapterOptionsSchema, value, argumentPlace(name));
}

/** Architecture and head counts from the options, a GGUF base model, or the adapter's own GGUF metadata. */
async function modelInfo(options: GgufAdapterOptions | undefined, source: SaveSource): Promise<Partial<ModelInfo>> {
  const info: Partial<ModelInfo> = {};
  if (source.format === 'gguf' && typeof source.config?.['general.architecture'] === 'string') {
    info.architecture = source.config['general.architecture'] as string;
  }
  if (options?.base !== undefined) {
    const base = await openGguf(options.base);
    try {
      const arch = base.getString('general.architecture');
      if (arch === undefined) throw fileError('ERR_GGUF_FORMAT', base.path, 'the base model has no general.architecture');
      info.architecture = arch;
      info.headCount = base.getNumber(`${arch}.attention.head_count`);
      info.headCountKv = base.getNumber(`${arch}.attention.head_count_kv`) ?? info.headCount;
    } finally {
      await base.close();
    }
  }
  if (options?.architecture !== undefined) info.architecture = options.architecture;
  if (options?.headCount !== undefined) info.headCount = options.headCount;
  if (options?.headCountKv !== undefined) info.headCountKv = options.headCountKv;
  info.headCountKv ??= info.headCount;
  return info;
}

function familyOf(architecture: string): GgufLoraArchitecture | null {
  return (ggufLoraArchitectures as readonly string[]).includes(architecture) ? (architecture as GgufLoraArchitecture) : familyOfGgufArchitecture(architecture);
}

const unsupported = (where: string, message: string) => new EigenLoraxError(`${where}: ${message}`, 'ERR_ADAPTER_UNSUPPORTED');
const listed = (items: string[]) => items.map((s) => `\n  ${s}`).join('');

// ---------------------------------------------------------------------------------------
// Writing

/** The alpha for the file: the most common `scale x r` (f32), never 0 (llama.cpp reads 0 as "no alpha"). */
function fileAlphaOf(modules: SaveModule[]): number {
  const counts = new Map<number, number>();
  for (const m of modules) {
    const e = Math.fround(m.info.scale * m.info.rank);
    if (e !== 0 && Number.isFinite(e)) counts.set(e, (counts.get(e) ?? 0) + 1);
  }
  let best = 0;
  let bestCount = 0;
  for (const [v, c] of counts) if (c > bestCount || (c === bestCount && v < best)) [best, bestCount] = [v, c];
  return best === 0 ? Math.fround(modules[0]?.info.rank ?? 1) : best;
}

/**
 * The tensors and metadata of a GGUF LoRA file for `source`. Throws before anything is
 * written: ERR_ADAPTER_UNSUPPORTED for an unknown architecture, modules without a GGUF
 * name (all listed), conv / embedding LoRA; ERR_INVALID_ARGUMENT for missing head counts.
 */
export async function ggufAdapterOutput(
  source: SaveSource,
  destination: string,
  options: { dtype: 'F32' | 'F16' | 'BF16' | undefined; gguf: GgufAdapterOptions | undefined },
): Promise<{ entries: GgufEntry[]; metadata: Array<[string, GgufValue]> }> {
  const info = await modelInfo(options.gguf, source);
  const allGguf = source.modules.every((m) => isGgufModuleName(m.info.name));
  if (info.architecture === undefined && !allGguf && source.modules.every((m) => ggufModuleName('gpt2', m.info.name) !== null)) info.architecture = 'gpt2';
  if (info.architecture === undefined) {
    throw unsupported(
      destination,
      `a GGUF adapter names the model's architecture, and it is not known here: pass gguf.architecture (${ggufLoraArchitectures.join(', ')}) or gguf.base (a GGUF model)`,
    );
  }
  const family = familyOf(info.architecture);
  if (family === null && !allGguf) {
    throw unsupported(destination, `architecture ${JSON.stringify(info.architecture)} has no HF-to-GGUF name mapping here (known: ${ggufLoraArchitectures.join(', ')}); its modules need GGUF names already`);
  }
  const missing: string[] = [];
  const named: Array<{ m: SaveModule; gguf: string; heads: number | null }> = [];
  for (const m of source.modules) {
    const { name, layout } = m.info;
    if (layout !== 'linear') {
      missing.push(`${name}: a ${layout} LoRA, which a GGUF adapter cannot hold`);
      continue;
    }
    const gguf = family === null ? name : ggufModuleName(family, name);
    if (gguf === null) {
      missing.push(`${name}: no GGUF name for a ${info.architecture} module`);
      continue;
    }
    // Names already in GGUF spelling come from GGUF, where the rows are already permuted.
    const heads = family === null || isGgufModuleName(name) ? null : permutedHeads(family, gguf, info);
    named.push({ m, gguf, heads });
  }
  if (missing.length > 0) {
    throw unsupported(destination, `${missing.length} module${missing.length === 1 ? '' : 's'} cannot be written to GGUF:${listed(missing)}`);
  }
  const needHeads = named.filter((n) => n.heads !== null && Number.isNaN(n.heads)).map((n) => n.m.info.name);
  if (needHeads.length > 0) {
    throw new EigenLoraxError(
      `${destination}: Llama/Mistral q_proj and k_proj rows are permuted in GGUF by attention head, so the head counts are needed ` +
        `(pass gguf.headCount and gguf.headCountKv, or gguf.base, a GGUF model) for:${listed(needHeads.slice(0, 4))}${needHeads.length > 4 ? '\n  ...' : ''}`,
      'ERR_INVALID_ARGUMENT',
    );
  }
  const seen = new Map<string, string>();
  for (const n of named) {
    const other = seen.get(n.gguf);
    if (other !== undefined) throw unsupported(destination, `modules ${JSON.stringify(other)} and ${JSON.stringify(n.m.info.name)} both map to GGUF ${n.gguf}`);
    seen.set(n.gguf, n.m.info.name);
  }
  named.sort((x, y) => naturalCompare(x.gguf, y.gguf));

  const alpha = fileAlphaOf(named.map((n) => n.m));
  const dtypeOf = (stored: string | undefined): 'F32' | 'F16' | 'BF16' =>
    options.dtype ?? (stored === 'F16' || stored === 'BF16' ? stored : 'F32');
  const entries: GgufEntry[] = [];
  for (const { m, gguf, heads } of named) {
    const { rank, inFeatures, outFeatures, scale } = m.info;
    // llama.cpp applies alpha / r: whatever else this module's scale is goes into B.
    const fold = (scale * rank) / alpha;
    entries.push({ name: `${gguf}.weight.lora_a`, shape: [rank, inFeatures], data: m.A, dtype: dtypeOf(m.info.dtypes.A) });
    entries.push({
      name: `${gguf}.weight.lora_b`,
      shape: [outFeatures, rank],
      dtype: dtypeOf(m.info.dtypes.B),
      data: async () => {
        const stored = await m.B();
        let B = heads === null ? stored : permuteRows(stored, outFeatures, rank, heads, false, `${destination}, module ${JSON.stringify(m.info.name)}`);
        if (fold !== 1) {
          if (B === stored) B = Float32Array.from(B);
          for (let i = 0; i < B.length; i++) B[i] = (B[i] as number) * fold;
        }
        return B;
      },
    });
  }
  const metadata: Array<[string, GgufValue]> = [
    ['general.architecture', { type: 'STRING', value: family === null ? info.architecture : ggufArchitectureName[family] }],
    ['general.type', { type: 'STRING', value: 'adapter' }],
    ['adapter.type', { type: 'STRING', value: 'lora' }],
    ['adapter.lora.alpha', { type: 'FLOAT32', value: alpha }],
  ];
  if (source.baseModel !== null && source.baseModel.length > 0) metadata.push(['general.base_model.0.name', { type: 'STRING', value: source.baseModel }]);
  return { entries, metadata };
}

/**
 * A GGUF adapter's modules under HF names (for saving as PEFT, diffusers or kohya): names
 * mapped back, Llama/Mistral q/k rows unpermuted (head counts needed), GPT-2 modules marked
 * fan_in_fan_out (HF's Conv1D). ERR_ADAPTER_UNSUPPORTED for an unknown architecture or
 * module (all listed).
 */
export async function ggufToHfSource(source: SaveSource, destination: string, options: GgufAdapterOptions | undefined): Promise<SaveSource> {
  // An adapter rebuilt from a subspace may be marked gguf but carry HF names already.
  if (!source.modules.some((m) => isGgufModuleName(m.info.name))) return source;
  const info = await modelInfo(options, source);
  const family = info.architecture === undefined ? null : familyOf(info.architecture);
  if (family === null) {
    throw unsupported(
      destination,
      `GGUF architecture ${JSON.stringify(info.architecture ?? '(none)')} has no GGUF-to-HF name mapping here (known: ${ggufLoraArchitectures.join(', ')})`,
    );
  }
  const missing: string[] = [];
  const modules: SaveModule[] = [];
  for (const m of source.modules) {
    const hf = hfModuleName(family, m.info.name);
    if (hf === null) {
      missing.push(m.info.name);
      continue;
    }
    const heads = permutedHeads(family, m.info.name, info);
    if (heads !== null && Number.isNaN(heads)) {
      throw new EigenLoraxError(
        `${destination}: module ${JSON.stringify(m.info.name)}: Llama/Mistral q/k rows are permuted in GGUF by attention head; pass gguf.headCount and gguf.headCountKv (or gguf.base) to undo it`,
        'ERR_INVALID_ARGUMENT',
      );
    }
    const where = `${destination}, module ${JSON.stringify(m.info.name)}`;
    modules.push({
      info: { ...m.info, name: hf, fanInFanOut: family === 'gpt2', keys: { A: '', B: '' } },
      A: m.A,
      B: heads === null ? m.B : async () => permuteRows(await m.B(), m.info.outFeatures, m.info.rank, heads, true, where),
    });
  }
  if (missing.length > 0) throw unsupported(destination, `${missing.length} GGUF module${missing.length === 1 ? ' has' : 's have'} no HF name for ${family}:${listed(missing)}`);
  return { ...source, modules, config: null, metadata: {} };
}

/**
 * saveAdapter's GGUF branch: one `.gguf` file, checked in full (ggufAdapterOutput) before
 * anything is written, written atomically; a folder it had to create is removed on failure.
 */
export async function saveGgufAdapter(
  source: SaveSource,
  target: string,
  options: { dtype: 'F32' | 'F16' | 'BF16' | undefined; gguf: GgufAdapterOptions | undefined; extras: 'keep' | 'drop' },
): Promise<SavedAdapter> {
  const isFolder = await stat(target).then((s) => s.isDirectory(), () => false);
  if (!target.endsWith(GGUF_EXTENSION) || isFolder) throw fileError('ERR_INVALID_ARGUMENT', target, 'a GGUF adapter is written to a .gguf file');
  if (options.extras === 'keep' && source.extras.length > 0) {
    const keys = source.extras.map((e) => JSON.stringify(e.key));
    throw unsupported(
      target,
      `the adapter carries ${keys.length} non-LoRA tensor${keys.length === 1 ? '' : 's'} (${keys.slice(0, 3).join(', ')}${keys.length > 3 ? ', ...' : ''}) ` +
        "that a GGUF adapter cannot hold; pass extras: 'drop' to leave them out",
    );
  }
  const { entries, metadata } = await ggufAdapterOutput(source, target, options);
  let created: string | undefined;
  try {
    created = await mkdir(path.dirname(target), { recursive: true });
  } catch (cause) {
    throw ioError(cause, path.dirname(target), 'create the folder');
  }
  try {
    await writeGguf(target, entries, { metadata });
  } catch (error) {
    if (created !== undefined) await rm(created, { recursive: true, force: true }).catch(() => undefined);
    throw error;
  }
  return { format: 'gguf', files: [target] };
}
