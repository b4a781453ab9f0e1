/**
 * Planning a merge before anything is written: every adapter module matched to a base
 * tensor (all misses reported at once), every shape and dtype checked, the updates grouped
 * by base tensor.
 */
import { EigenLoraxError } from '../errors.js';
import type { GgufTensorInfo } from '../io/gguf.js';
import { isSafetensorsFloatDtype, type SafetensorsTensorInfo } from '../io/safetensors.js';
import type { BaseReader } from './gguf.js';
import type { MergeModule, ResolvedAdapter } from './adapters.js';
import type { UpdateTerm } from './update.js';

/** Prefixes tried (added, or the adapter name's first part removed) when the exact key is missing. */
export const MERGE_KEY_PREFIXES: readonly string[] = ['model.', 'transformer.'];

/** One base tensor to change, with its updates. */
export interface PlannedTensor {
  key: string;
  info: SafetensorsTensorInfo | GgufTensorInfo;
  /** Rows and columns of the stored weight as a matrix (`shape[0] x product(rest)`). */
  rows: number;
  cols: number;
  terms: Array<UpdateTerm & { adapter: number; module: MergeModule }>;
}

/**
 * The base keys that an adapter module name may stand for, in order of preference: the
 * exact `<name>.weight` first, then the variants with a common prefix added or the first
 * part of the name removed (`transformer.h.0.attn.c_attn` -> `h.0.attn.c_attn.weight`,
 * `unet.down_blocks...` -> `down_blocks...`).
 */
export function candidateKeys(name: string): { exact: string; others: string[] } {
  const exact = `${name}.weight`;
  const others = new Set<string>();
  const dot = name.indexOf('.');
  if (dot > 0 && dot < name.length - 1) others.add(`${name.slice(dot + 1)}.weight`);
  for (const prefix of MERGE_KEY_PREFIXES) others.add(`${prefix}${name}.weight`);
  others.delete(exact);
  return { exact, others: [...others] };
}

/** Finds the base key of a module: exact, else the one variant that exists; null + what was tried otherwise. */
function matchKey(
  reader: BaseReader,
  name: string,
): { key: string } | { key: null; tried: string[]; ambiguous: string[] } {
  const { exact, others } = candidateKeys(name);
  if (reader.has(exact)) return { key: exact };
  const found = others.filter((k) => reader.has(k));
  if (found.length === 1) return { key: found[0] as string };
  return { key: null, tried: [exact, ...others], ambiguous: found };
}

const shapeText = (shape: readonly number[]) => `[${shape.join(', ')}]`;
const product = (dims: readonly number[]) => dims.reduce((n, d) => n * d, 1);

/**
 * Whether the module's update fits the stored weight, and how: the update is `B A`
 * (`out x in`) for nn.Linear (`[out, in]`, also `[out, in, 1, 1]`) and conv LoRA
 * (`[out, in_c, kh, kw]` with A flattened to `in_c*kh*kw` columns, the same row-major
 * flattening as the weight's); `(B A)^T` for fan_in_fan_out (GPT-2 Conv1D, `[in, out]`)
 * and embeddings (`[num_embeddings, dim]`). Returns null and the expected shape when it
 * does not fit.
 */
function orientation(m: MergeModule, shape: readonly number[]): { transposed: boolean; expected: null } | { transposed: null; expected: string } {
  const dIn = m.A.cols;
  const dOut = m.B.rows;
  if (m.layout === 'embedding' || (m.layout === 'linear' && m.fanInFanOut)) {
    const ok = shape.length === 2 && shape[0] === dIn && shape[1] === dOut;
    const what = m.layout === 'embedding' ? 'an embedding table' : 'a fan_in_fan_out (Conv1D) weight';
    return ok ? { transposed: true, expected: null } : { transposed: null, expected: `${shapeText([dIn, dOut])} (${what}, in x out)` };
  }
  if (m.layout === 'linear') {
    const ok = shape.length >= 2 && shape[0] === dOut && shape[1] === dIn && shape.slice(2).every((d) => d === 1);
    return ok ? { transposed: false, expected: null } : { transposed: null, expected: `${shapeText([dOut, dIn])} (out x in)` };
  }
  // conv
  const kernel = m.convKernel;
  if (kernel !== null) {
    const inChannels = dIn / product(kernel);
    const full = [dOut, inChannels, ...kernel];
    const ok =
      (shape.length === full.length && shape.every((d, i) => d === full[i])) ||
      // a 1x1 conv LoRA on a linear weight (e.g. SD 2 proj_in)
      (kernel.every((d) => d === 1) && shape.length === 2 && shape[0] === dOut && shape[1] === dIn);
    return ok ? { transposed: false, expected: null } : { transposed: null, expected: `${shapeText(full)} (out x in x kernel)` };
  }
  const ok = shape.length >= 2 && shape[0] === dOut && product(shape.slice(1)) === dIn;
  return ok ? { transposed: false, expected: null } : { transposed: null, expected: `[${dOut}, ...] with ${dIn} values per output channel` };
}

/**
 * Matches every module of every adapter to a base tensor and checks it. Throws (before
 * anything is written) ERR_MERGE_TARGET_NOT_FOUND listing every module without a tensor
 * (or with several candidates), else ERR_SHAPE_MISMATCH listing every module whose
 * tensor has another shape, else ERR_UNSUPPORTED_DTYPE for a non-float target.
 */
export function planMerge(
  reader: BaseReader,
  adapters: readonly ResolvedAdapter[],
  globalScale: number,
  sign: 1 | -1,
): PlannedTensor[] {
  const missing: string[] = [];
  const mismatched: string[] = [];
  const wrongDtype: string[] = [];
  const byKey = new Map<string, PlannedTensor>();
  adapters.forEach((adapter, index) => {
    const claimed = new Map<string, string>();
    for (const m of adapter.modules) {
      const match = matchKey(reader, m.name);
      if (match.key === null) {
        const why =
          match.ambiguous.length > 1
            ? `several candidates exist: ${match.ambiguous.join(', ')}`
            : `tried ${match.tried.join(', ')}`;
        missing.push(`${adapter.label}: ${m.name} (${why})`);
        continue;
      }
      const key = match.key;
      const other = claimed.get(key);
      if (other !== undefined) {
        missing.push(`${adapter.label}: ${m.name} (maps to ${key}, which module ${other} of the same adapter already updates)`);
        continue;
      }
      claimed.set(key, m.name);
      const info = reader.tensors.get(key) as SafetensorsTensorInfo | GgufTensorInfo;
      const fit = orientation(m, info.shape);
      if (fit.transposed === null) {
        mismatched.push(
          `${adapter.label}: ${m.name} -> ${key} is ${info.dtype} ${shapeText(info.shape)}, but a ${m.layout}` +
            `${m.layout === 'linear' && m.fanInFanOut ? ' fan_in_fan_out' : ''} LoRA with A ${m.A.rows} x ${m.A.cols} and ` +
            `B ${m.B.rows} x ${m.B.cols} needs ${fit.expected}`,
        );
        continue;
      }
      if (!isSafetensorsFloatDtype(info.dtype)) {
        wrongDtype.push(`${adapter.label}: ${m.name} -> ${key} is ${info.dtype}, not a floating-point weight (F32, F16, BF16, F64)`);
        continue;
      }
      let planned = byKey.get(key);
      if (planned === undefined) {
        const rows = info.shape[0] as number;
        planned = { key, info, rows, cols: product(info.shape.slice(1)), terms: [] };
        byKey.set(key, planned);
      }
      planned.terms.push({
        A: m.A,
        B: m.B,
        coefficient: sign * globalScale * adapter.weight * m.scale,
        transposed: fit.transposed,
        adapter: index,
        module: m,
      });
    }
  });
  const list = (items: string[]) => items.map((s) => `\n  ${s}`).join('');
  if (missing.length > 0) {
    throw new EigenLoraxError(
      `${reader.path}: ${missing.length} adapter module${missing.length === 1 ? ' has' : 's have'} no weight in the base ` +
        `(every module must be found; nothing was written):${list(missing)}`,
      'ERR_MERGE_TARGET_NOT_FOUND',
    );
  }
  if (mismatched.length > 0) {
    throw new EigenLoraxError(
      `${reader.path}: ${mismatched.length} adapter module${mismatched.length === 1 ? ' does' : 's do'} not fit the base ` +
        `weight's shape (nothing was written):${list(mismatched)}`,
      'ERR_SHAPE_MISMATCH',
    );
  }
  if (wrongDtype.length > 0) {
    throw new EigenLoraxError(`${reader.path}: cannot merge into non-float weights (nothing was written):${list(wrongDtype)}`, 'ERR_UNSUPPORTED_DTYPE');
  }
  // Base order: file by file, by offset.
  const order = new Map([...reader.tensors.keys()].map((k, i) => [k, i]));
  return [...byKey.values()].sort((a, b) => (order.get(a.key) as number) - (order.get(b.key) as number));
}
