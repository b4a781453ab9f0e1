/**
 * {@link extractLora}: a LoRA adapter from a full fine-tune, the job of mergekit's
 * `extract_lora` and kohya's `extract_lora_from_models`. Per weight, the truncated SVD of
 * `D = W_tuned - W_base` (the native rsvd) gives balanced factors `B = U S^1/2`,
 * `A = S^1/2 V^T` with alpha = rank (scale 1), so `B A` is the best rank-r approximation
 * of `D` that the sketch finds. Conv weights `[out, in, kh, kw]` are flattened to
 * `out x in*kh*kw` as kohya does; the A factor is stored `[r, in, kh, kw]`.
 *
 * Streamed: both checkpoints are opened by their headers (single files, shard indexes or
 * folders) and read one weight at a time into two reused f32 buffers, so memory is one
 * module's pair of weights plus the small factors already extracted.
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { compilePatterns, matchPattern } from '../adapters/patterns.js';
import { diffusersComponents } from '../adapters/diffusers.js';
import { kohyaNameOf } from '../adapters/names.js';
import { GgufAdapterOptionsSchema } from '../adapters/options.js';
import { saveAdapter } from '../adapters/save.js';
import { adapterFormats, type LoraAdapter, type LoraLayout, type LoraModule } from '../adapters/types.js';
import { EigenLoraxError } from '../errors.js';
import { isSafetensorsFloatDtype, openSafetensors, type SafetensorsReader, type SafetensorsTensorInfo } from '../io/safetensors.js';
import { rsvd } from '../linalg.js';
import { argumentPlace, Count, FunctionOption, OneOf, Options, parse, PathOption, Type, type SameOptionNames } from '../schema.js';
import { invalid } from '../validate.js';
import type { ExtractedModule, ExtractLoraOptions, ExtractReport } from './types.js';

const DEFAULT_MAX_RANK = 128;
/** Elements per step of the JS difference loop, between which the event loop runs. */
const STEP = 1 << 20;

const embeddingName = /(^|\.)(wte|wpe|embed_tokens|embed_in|embed_positions|word_embeddings|position_embeddings|token_type_embeddings|tok_embeddings|token_embedding|position_embedding|shared)$/;

interface Resolved {
  base: string;
  tuned: string;
  out: string;
  rank: number | null;
  threshold: number | null;
  filter: ((name: string) => boolean) | null;
  /** The `modules` patterns with their regular expressions (to report one that selects nothing). */
  patterns: Array<{ pattern: string; matches: (name: string) => boolean }> | null;
  format: NonNullable<ExtractLoraOptions['format']>;
  dtype: ExtractLoraOptions['dtype'];
  namePrefix: string;
  fanInFanOut: boolean;
  baseModel: string | null | undefined;
  gguf: ExtractLoraOptions['gguf'];
  rsvd: { oversample: number; powerIters: number; seed: number };
  onProgress: ExtractLoraOptions['onProgress'];
}

/** The names, types and ranges of ExtractLoraOptions; the rules between them are in checkOptions. */
const ExtractOptionsSchema = Options({
  base: PathOption,
  tuned: PathOption,
  out: PathOption,
  rank: Type.Optional(Count(1)),
  threshold: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1, description: 'a number in (0, 1]' })),
  modules: Type.Optional(
    Type.Union([Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }), FunctionOption], {
      description: 'a non-empty array of module patterns or a function (name) => boolean',
    }),
  ),
  format: Type.Optional(OneOf(adapterFormats)),
  dtype: Type.Optional(OneOf(['F32', 'F16', 'BF16'] as const)),
  namePrefix: Type.Optional(Type.String()),
  fanInFanOut: Type.Optional(Type.Boolean()),
  baseModel: Type.Optional(Type.Union([Type.String(), Type.Null()], { description: 'a string or null' })),
  oversample: Type.Optional(Count(0)),
  powerIters: Type.Optional(Count(0, 1000)),
  seed: Type.Optional(Count(0)),
  onProgress: Type.Optional(FunctionOption),
  gguf: Type.Optional(GgufAdapterOptionsSchema),
});
const extractOptionNames: SameOptionNames<typeof ExtractOptionsSchema, ExtractLoraOptions> = true;
void extractOptionNames;

function checkOptions(options: unknown): Resolved {
  const o = parse(ExtractOptionsSchema, options, argumentPlace('options'));
  const rank = o.rank ?? null;
  const threshold = o.threshold ?? null;
  if (rank === null && threshold === null) throw invalid('a rank or a threshold (or both: the threshold, capped at the rank)', 'options.rank', undefined);
  let filter: Resolved['filter'] = null;
  let patterns: Resolved['patterns'] = null;
  if (typeof o.modules === 'function') filter = o.modules as (name: string) => boolean;
  else if (Array.isArray(o.modules)) {
    const compiled = compilePatterns(Object.fromEntries((o.modules as string[]).map((p) => [p, true])), 'options.modules', 'pattern');
    patterns = compiled.entries.map((e) => ({ pattern: e.key, matches: (name: string) => matchPattern({ entries: [e] }, name) !== undefined }));
    filter = (name) => matchPattern(compiled, name) !== undefined;
  }
  return {
    base: o.base,
    tuned: o.tuned,
    out: o.out,
    rank,
    threshold,
    filter,
    patterns,
    format: o.format ?? 'peft',
    dtype: o.dtype,
    namePrefix: o.namePrefix ?? '',
    fanInFanOut: o.fanInFanOut === true,
    baseModel: o.baseModel,
    gguf: o.gguf,
    rsvd: { oversample: o.oversample ?? 10, powerIters: o.powerIters ?? 2, seed: o.seed ?? 0 },
    onProgress: o.onProgress as ExtractLoraOptions['onProgress'],
  };
}

interface Job {
  tensor: string;
  name: string;
  info: SafetensorsTensorInfo;
  layout: LoraLayout;
  /** `D` as a matrix: rows x cols (conv flattened). */
  rows: number;
  cols: number;
}

const shapeText = (s: readonly number[]) => `[${s.join(', ')}]`;

/** The weights to extract, checked against the tuned checkpoint's headers before any read. */
function plan(base: SafetensorsReader, tuned: SafetensorsReader, r: Resolved): { jobs: Job[]; skipped: ExtractReport['skipped'] } {
  const jobs: Job[] = [];
  const skipped: ExtractReport['skipped'] = [];
  const missing: string[] = [];
  const mismatched: string[] = [];
  const usedPatterns = new Set<string>();
  for (const [tensor, info] of base.tensors) {
    if (!tensor.endsWith('.weight')) continue;
    const path = tensor.slice(0, -'.weight'.length);
    if (r.filter !== null && !r.filter(path)) continue;
    for (const p of r.patterns ?? []) if (p.matches(path)) usedPatterns.add(p.pattern);
    if (!isSafetensorsFloatDtype(info.dtype)) {
      skipped.push({ tensor, why: `dtype ${info.dtype} is not a float type` });
      continue;
    }
    if (info.shape.length < 2 || info.shape.length > 5) {
      skipped.push({ tensor, why: `${info.shape.length}-D (biases and norms are not low-rank updates)` });
      continue;
    }
    const embedding = info.shape.length === 2 && embeddingName.test(path);
    if (embedding && r.patterns === null && r.filter === null) {
      skipped.push({ tensor, why: 'an embedding table (select it with modules to extract it as an embedding LoRA)' });
      continue;
    }
    const other = tuned.tensors.get(tensor);
    if (other === undefined) {
      missing.push(tensor);
      continue;
    }
    if (other.shape.length !== info.shape.length || other.shape.some((d, i) => d !== info.shape[i])) {
      mismatched.push(`${tensor}: base ${info.dtype} ${shapeText(info.shape)}, tuned ${other.dtype} ${shapeText(other.shape)}`);
      continue;
    }
    if (!isSafetensorsFloatDtype(other.dtype)) {
      mismatched.push(`${tensor}: tuned dtype ${other.dtype} is not a float type`);
      continue;
    }
    const rows = info.shape[0] as number;
    const cols = info.shape.slice(1).reduce((n, d) => n * d, 1);
    if (rows === 0 || cols === 0) {
      skipped.push({ tensor, why: 'empty' });
      continue;
    }
    const layout: LoraLayout = info.shape.length > 2 ? 'conv' : embedding ? 'embedding' : 'linear';
    jobs.push({ tensor, name: `${r.namePrefix}${path}`, info, layout, rows, cols });
  }
  const list = (items: string[]) => items.slice(0, 20).map((s) => `\n  ${s}`).join('') + (items.length > 20 ? `\n  ... and ${items.length - 20} more` : '');
  if (missing.length > 0) {
    throw new EigenLoraxError(
      `${tuned.path}: ${missing.length} weight${missing.length === 1 ? '' : 's'} of the base ${missing.length === 1 ? 'is' : 'are'} not in the tuned checkpoint (filter them out with modules):${list(missing)}`,
      'ERR_TENSOR_NOT_FOUND',
    );
  }
  if (mismatched.length > 0) {
    throw new EigenLoraxError(
      `${tuned.path}: expected the tuned weights to have the base's shapes, but ${mismatched.length} differ${mismatched.length === 1 ? 's' : ''} (filter them out with modules):${list(mismatched)}`,
      'ERR_SHAPE_MISMATCH',
    );
  }
  // Names the output format cannot hold are refused now, not after every SVD.
  const unnamed = jobs.filter((j) =>
    r.format === 'kohya'
      ? kohyaNameOf(j.name, false) === null
      : r.format === 'diffusers' && !diffusersComponents.some((c) => j.name.startsWith(`${c}.`)),
  );
  if (unnamed.length > 0) {
    throw new EigenLoraxError(
      `${r.out}: a ${r.format} file cannot name module ${JSON.stringify(unnamed[0]!.name)}` +
        `${unnamed.length > 1 ? ` (and ${unnamed.length - 1} more)` : ''}; give namePrefix (e.g. 'unet.' or 'transformer.') or another format`,
      'ERR_ADAPTER_UNSUPPORTED',
    );
  }
  if (r.patterns !== null) {
    const unused = r.patterns.map((p) => p.pattern).filter((p) => !usedPatterns.has(p));
    if (unused.length > 0) {
      throw invalid(`module patterns that each select a weight of ${base.path}`, 'options.modules', unused.length === 1 ? unused[0] : unused);
    }
  }
  return { jobs, skipped };
}

/** `tuned -= base` in place, returning `||D||_F^2` in f64; yields to the event loop between steps. */
async function differenceInPlace(tuned: Float32Array, base: Float32Array): Promise<number> {
  let sum = 0;
  for (let start = 0; start < tuned.length; start += STEP) {
    const end = Math.min(tuned.length, start + STEP);
    for (let i = start; i < end; i++) {
      const d = (tuned[i] as number) - (base[i] as number);
      tuned[i] = d;
      sum += d * d;
    }
    if (end < tuned.length) await yieldToLoop();
  }
  return sum;
}

/** Reusable f32 buffers, grown to the largest weight. */
class Buffers {
  #a = new Float32Array(0);
  #b = new Float32Array(0);
  take(count: number): [Float32Array, Float32Array] {
    if (this.#a.length < count) {
      this.#a = new Float32Array(count);
      this.#b = new Float32Array(count);
    }
    return [this.#a.subarray(0, count), this.#b.subarray(0, count)];
  }
}

/** Keeps the first k singular triplets whose energy reaches `threshold` of `total` (all k when it is never reached). */
function rankFor(S: Float32Array, total: number, threshold: number | null): number {
  if (threshold === null) return S.length;
  let sum = 0;
  for (let k = 0; k < S.length; k++) {
    sum += (S[k] as number) ** 2;
    if (sum >= threshold * total) return k + 1;
  }
  return S.length;
}

async function extractOne(job: Job, base: SafetensorsReader, tuned: SafetensorsReader, buffers: Buffers, r: Resolved, index: number) {
  const t0 = performance.now();
  const [wb, wt] = buffers.take(job.rows * job.cols);
  await Promise.all([base.readFloat32(job.tensor, { out: wb }), tuned.readFloat32(job.tensor, { out: wt })]);
  const energy = await differenceInPlace(wt, wb);
  if (!Number.isFinite(energy)) {
    const i = wt.findIndex((v) => !Number.isFinite(v));
    throw new EigenLoraxError(
      `${tuned.path}, tensor ${JSON.stringify(job.tensor)}: W_tuned - W_base holds ${wt[i]} at flat index ${i} (a non-finite weight in either checkpoint)`,
      'ERR_NON_FINITE',
    );
  }
  const t1 = performance.now();
  if (energy === 0) return { energy, module: null, read: (t1 - t0) / 1000, svd: 0 };
  const cap = Math.min(r.rank ?? DEFAULT_MAX_RANK, job.rows, job.cols);
  const svd = await rsvd({ rows: job.rows, cols: job.cols, data: wt }, { rank: cap, ...r.rsvd, seed: r.rsvd.seed + index });
  const k = rankFor(svd.S, energy, r.threshold);
  // Balanced factors: left side U S^1/2 (rows x k), right side S^1/2 V^T (k x cols).
  const left = new Float32Array(job.rows * k);
  const right = new Float32Array(k * job.cols);
  let kept = 0;
  for (let j = 0; j < k; j++) {
    const s = svd.S[j] as number;
    kept += s * s;
    const root = Math.sqrt(s);
    for (let i = 0; i < job.rows; i++) left[i * k + j] = (svd.U.data[i * cap + j] as number) * root;
    for (let c = 0; c < job.cols; c++) right[j * job.cols + c] = (svd.V.data[c * cap + j] as number) * root;
  }
  const t2 = performance.now();
  // B A = D for linear and conv; B A = D^T for embeddings and fan_in_fan_out (both stored in x out).
  const transposed = job.layout === 'embedding' || (job.layout === 'linear' && r.fanInFanOut);
  let A = { rows: k, cols: job.cols, data: right };
  let B = { rows: job.rows, cols: k, data: left };
  if (transposed) {
    const a = new Float32Array(k * job.rows);
    for (let i = 0; i < job.rows; i++) for (let j = 0; j < k; j++) a[j * job.rows + i] = left[i * k + j] as number;
    const b = new Float32Array(job.cols * k);
    for (let j = 0; j < k; j++) for (let c = 0; c < job.cols; c++) b[c * k + j] = right[j * job.cols + c] as number;
    A = { rows: k, cols: job.rows, data: a };
    B = { rows: job.cols, cols: k, data: b };
  }
  const stored = job.info.dtype === 'F16' || job.info.dtype === 'BF16' ? job.info.dtype : 'F32';
  const module: LoraModule = {
    name: job.name,
    A,
    B,
    rank: k,
    alpha: k,
    scale: 1,
    rslora: false,
    layout: job.layout,
    ...(job.layout === 'conv' ? { convKernel: job.info.shape.slice(2) } : {}),
    shapes: job.layout === 'conv'
      ? { A: [k, job.info.shape[1] as number, ...job.info.shape.slice(2)], B: [job.rows, k, ...job.info.shape.slice(2).map(() => 1)] }
      : { A: [A.rows, A.cols], B: [B.rows, B.cols] },
    inFeatures: A.cols,
    outFeatures: B.rows,
    fanInFanOut: job.layout === 'linear' && r.fanInFanOut,
    keys: { A: '', B: '' },
    dtypes: { A: stored, B: stored },
  };
  return { energy, module, kept: Math.min(kept, energy), read: (t1 - t0) / 1000, svd: (t2 - t1) / 1000 };
}

/**
 * Extracts a LoRA adapter from a base and a fine-tuned checkpoint and writes it with
 * `saveAdapter` (`options.format`, default PEFT). Every `.weight` of the base with 2 to 5
 * dimensions (linear and conv; embedding tables only when `modules` selects them) that the
 * filter keeps is extracted; weights equal in both checkpoints are listed as unchanged and
 * left out. Returns, per module and for the file, the captured fraction of
 * `||W_tuned - W_base||_F^2`.
 *
 * Errors (typed, before anything is written): ERR_TENSOR_NOT_FOUND listing the selected
 * base weights that the tuned checkpoint lacks; ERR_SHAPE_MISMATCH naming each weight whose
 * shapes differ; ERR_NOTHING_TO_EXTRACT when every selected weight is unchanged (or none is
 * selected); ERR_NON_FINITE for a NaN/Inf difference; ERR_INVALID_ARGUMENT for bad options
 * or a pattern that selects nothing.
 */
export async function extractLora(options: ExtractLoraOptions): Promise<ExtractReport> {
  const r = checkOptions(options);
  const started = performance.now();
  const base = await openSafetensors(r.base);
  try {
    const tuned = await openSafetensors(r.tuned);
    try {
      const { jobs, skipped } = plan(base, tuned, r);
      const buffers = new Buffers();
      const modules = new Map<string, LoraModule>();
      const extracted: ExtractedModule[] = [];
      const unchanged: string[] = [];
      let totalEnergy = 0;
      let totalKept = 0;
      for (const [index, job] of jobs.entries()) {
        const one = await extractOne(job, base, tuned, buffers, r, index);
        if (one.module === null) unchanged.push(job.tensor);
        else {
          modules.set(job.name, one.module);
          totalEnergy += one.energy;
          totalKept += one.kept as number;
          const captured = (one.kept as number) / one.energy;
          extracted.push({
            name: job.name,
            tensor: job.tensor,
            shape: [...job.info.shape],
            layout: job.layout,
            rank: one.module.rank,
            norm: Math.sqrt(one.energy),
            captured,
            relativeError: Math.sqrt(Math.max(0, 1 - captured)),
            seconds: { read: one.read, svd: one.svd },
          });
        }
        r.onProgress?.({ module: job.name, done: index + 1, total: jobs.length });
      }
      if (modules.size === 0) {
        throw new EigenLoraxError(
          jobs.length === 0
            ? `${base.path}: nothing to extract: no weight of the base was selected (${skipped.length} skipped${r.patterns ? `; modules ${JSON.stringify(r.patterns.map((p) => p.pattern))}` : ''})`
            : `${tuned.path}: nothing to extract: the ${jobs.length} selected weight${jobs.length === 1 ? ' is' : 's are'} identical in ${base.path}`,
          'ERR_NOTHING_TO_EXTRACT',
        );
      }
      const adapter: LoraAdapter = {
        format: r.format,
        baseModel: r.baseModel === undefined ? base.path : r.baseModel,
        source: null,
        modules,
        extras: new Map(),
        config: null,
        metadata: {},
      };
      const saved = await saveAdapter(adapter, r.out, { format: r.format, ...(r.dtype ? { dtype: r.dtype } : {}), ...(r.gguf ? { gguf: r.gguf } : {}) });
      const captured = totalKept / totalEnergy;
      return {
        base: base.path,
        tuned: tuned.path,
        format: r.format,
        files: saved.files,
        modules: extracted,
        unchanged,
        skipped,
        total: { norm: Math.sqrt(totalEnergy), captured, relativeError: Math.sqrt(Math.max(0, 1 - captured)) },
        seconds: (performance.now() - started) / 1000,
      };
    } finally {
      await tuned.close();
    }
  } finally {
    await base.close();
  }
}
