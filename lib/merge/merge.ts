/**
 * {@link mergeIntoBase}: `W' = W + sum_i w_i s_i B_i A_i` (DESIGN §1, "Merging") on a base
 * checkpoint, streamed tensor by tensor.
 *
 * Every output file starts as a copy of its base file (`fs.copyFile`: copy-on-write clone
 * where the file system can, else an in-kernel copy), so the header, `__metadata__`, the
 * layout and every untouched tensor stay byte for byte what they were; then each changed
 * tensor is read as f32, updated, converted back to its stored dtype (bf16/f16 round to
 * nearest even, natively) and written over its own bytes at its own offset (the dtype and
 * shape do not change, so neither does the header). The write of one changed tensor
 * overlaps the read and update of the next, and the copy overlaps the first one. Memory: one
 * changed tensor as f32 and in its stored dtype (reused buffers), the reader's two 4 MiB
 * conversion chunks, and the adapters' factors.
 */
import { constants as fsConstants } from 'node:fs';
import { copyFile, mkdir, open, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { EigenLoraxError } from '../errors.js';
import { fileError, ioError, temporaryPathFor, writeFully } from '../io/files.js';
import { baseExtension, openBase, toBaseNames, type BaseReader } from './gguf.js';
import * as ops from '../native/ops.js';
import { argumentPlace, Options, parse, PathOption, Type, type SameOptionNames } from '../schema.js';
import { checkSpec, resolveAdapter, type ResolvedAdapter } from './adapters.js';
import { planMerge, type PlannedTensor } from './plan.js';
import type { MergedTensor, MergeIntoBaseOptions, MergeReport } from './types.js';
import { addLowRankUpdates } from './update.js';

interface OutputFile {
  /** The base file it is copied from (absolute). */
  source: string;
  /** Where it goes (absolute). */
  target: string;
  /** Its name relative to the output folder. */
  relative: string;
}

interface OutputLayout {
  folder: string;
  files: OutputFile[];
  index: OutputFile | null;
}

async function kindOf(p: string): Promise<'file' | 'folder' | 'missing'> {
  try {
    return (await stat(p)).isDirectory() ? 'folder' : 'file';
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
    throw ioError(cause, p, 'look at the output');
  }
}

/** Where each base file goes. */
async function outputLayout(reader: BaseReader, output: string): Promise<OutputLayout> {
  const target = path.resolve(output);
  const kind = await kindOf(target);
  if (reader.indexMetadata !== null) {
    // Sharded: same shard names (relative to the index's folder), same index name unless given.
    let folder = target;
    let indexName = path.basename(reader.path);
    if (target.endsWith('.index.json') && kind !== 'folder') {
      folder = path.dirname(target);
      indexName = path.basename(target);
    } else if (kind === 'file') {
      throw fileError('ERR_INVALID_ARGUMENT', target, 'the base is sharded, so the output is a folder (or the path of the index to write), and this is a file');
    }
    const from = path.dirname(reader.path);
    const files = reader.files.map((source) => {
      const relative = path.relative(from, source);
      return { source, target: path.join(folder, relative), relative };
    });
    return { folder, files, index: { source: reader.path, target: path.join(folder, indexName), relative: indexName } };
  }
  const source = reader.files[0] as string;
  const extension = baseExtension(reader);
  if (target.endsWith(extension) && kind !== 'folder') {
    return { folder: path.dirname(target), files: [{ source, target, relative: path.basename(target) }], index: null };
  }
  if (kind === 'file') throw fileError('ERR_INVALID_ARGUMENT', target, `expected a ${extension} file name or a folder for the output`);
  const name = path.basename(source);
  return { folder: target, files: [{ source, target: path.join(target, name), relative: name }], index: null };
}

/** Refuses an output file that is one of the base's files (the same path, or a link to it). */
async function checkNotBase(layout: OutputLayout): Promise<void> {
  const all = [...layout.files, ...(layout.index ? [layout.index] : [])];
  const sources = await Promise.all(all.map((f) => stat(f.source).catch(() => null)));
  for (const file of all) {
    let out;
    try {
      out = await stat(file.target);
    } catch {
      continue;
    }
    if (sources.some((s) => s !== null && s.dev === out.dev && s.ino === out.ino)) {
      throw fileError('ERR_INVALID_ARGUMENT', file.target, 'the output would overwrite a file of the base; write the merge somewhere else');
    }
  }
}

/** Reused buffers for the changed tensors: f32 values and the stored encoding. */
class TensorBuffers {
  #f32 = new Float32Array(0);
  #u16 = new Uint16Array(0);
  #f64 = new Float64Array(0);

  f32(count: number): Float32Array {
    if (this.#f32.length < count) this.#f32 = new Float32Array(count);
    return this.#f32.subarray(0, count);
  }

  u16(count: number): Uint16Array {
    if (this.#u16.length < count) this.#u16 = new Uint16Array(count);
    return this.#u16.subarray(0, count);
  }

  f64(count: number): Float64Array {
    if (this.#f64.length < count) this.#f64 = new Float64Array(count);
    return this.#f64.subarray(0, count);
  }
}

/** f32 values back to the stored dtype (native, round to nearest even), into a reused buffer. */
async function encode(values: Float32Array, dtype: string, buffers: TensorBuffers): Promise<ArrayBufferView> {
  if (dtype === 'F32') return values;
  let dst: Uint16Array | Float64Array;
  let to: 'bf16' | 'f16' | 'f64';
  if (dtype === 'BF16' || dtype === 'F16') {
    dst = buffers.u16(values.length);
    to = dtype === 'BF16' ? 'bf16' : 'f16';
  } else if (dtype === 'F64') {
    dst = buffers.f64(values.length);
    to = 'f64';
  } else {
    throw new EigenLoraxError(`internal: cannot encode ${dtype}`, 'ERR_INTERNAL');
  }
  if (values.length > 0) await ops.convert({ src: values, from: 'f32', dst, to });
  return dst;
}

/**
 * Writes one output file to `temporary`: a copy of the base file (or shard index), then
 * each changed tensor over its own bytes. Returns the multiply-adds spent and the file's size.
 */
async function writeMergedFile(
  reader: BaseReader,
  file: OutputFile,
  temporary: string,
  tensors: readonly PlannedTensor[],
  buffers: TensorBuffers,
): Promise<{ flops: number; size: number }> {
  let handle: FileHandle;
  try {
    handle = await open(temporary, 'wx');
  } catch (cause) {
    throw ioError(cause, file.target, `create a temporary file in ${path.dirname(file.target)}`);
  }
  let flops = 0;
  // Work in flight, awaited (settled) before the handle closes whatever happens.
  let copying: Promise<void> | null = null;
  let writing: Promise<void> | null = null;
  try {
    // The mode a new file gets here (umask applied): copyFile would give the base's.
    const { mode } = await handle.stat();
    // The copy runs while the first changed tensor is read and updated; writes wait for it.
    copying = copyFile(file.source, temporary, fsConstants.COPYFILE_FICLONE)
      .then(() => handle.chmod(mode & 0o7777))
      .catch((cause: unknown) => {
        throw ioError(cause, file.target, `copy ${file.source}`);
      });
    copying.catch(() => undefined); // handled where it is awaited
    let writingValues = false;
    for (const t of tensors) {
      // Tensor k is written while tensor k+1 is read and updated, unless the write is
      // of the f32 values themselves (an F32 weight), which the next read would overwrite.
      if (writing !== null && writingValues) {
        await writing;
        writing = null;
      }
      const values = buffers.f32(t.rows * t.cols);
      await reader.readFloat32(t.key, { out: values });
      flops += await addLowRankUpdates(values, t.rows, t.cols, t.terms);
      if (writing !== null) {
        await writing; // its bytes are in the encode buffer about to be reused
        writing = null;
      }
      const bytes = await encode(values, t.info.dtype, buffers);
      await copying;
      writingValues = bytes === values;
      writing = writeFully(handle, bytes, t.info.offset, temporary);
      writing.catch(() => undefined); // handled where it is awaited
    }
    if (writing !== null) await writing;
    await copying;
    const { size } = await handle.stat();
    try {
      await handle.sync();
    } catch (cause) {
      throw ioError(cause, file.target, 'finish writing');
    }
    return { flops, size };
  } finally {
    await Promise.allSettled([copying, writing]);
    await handle.close().catch(() => undefined);
  }
}

async function syncFolder(folder: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(folder, 'r');
    await handle.sync();
  } catch {
    // not supported here: the renames are still atomic
  } finally {
    await handle?.close().catch(() => undefined);
  }
}

/** The names, types and ranges of MergeIntoBaseOptions; each adapter entry is checked by checkSpec. */
const MergeOptionsSchema = Options({
  base: PathOption,
  adapters: Type.Array(Type.Unknown(), { minItems: 1, description: 'a non-empty array of adapters' }),
  output: PathOption,
  scale: Type.Optional(Type.Number()),
  unmerge: Type.Optional(Type.Boolean()),
  dtype: Type.Optional(Type.Literal('keep', { description: "'keep' (other output dtypes are not supported yet)" })),
});
const mergeOptionNames: SameOptionNames<typeof MergeOptionsSchema, MergeIntoBaseOptions> = true;
void mergeOptionNames;

function checkOptions(options: unknown) {
  const o = parse(MergeOptionsSchema, options, argumentPlace('options'));
  const specs = o.adapters.map((a, i) => checkSpec(a, i));
  return { base: o.base, output: o.output, specs, scale: o.scale ?? 1, unmerge: o.unmerge === true };
}

/**
 * Merges LoRA adapters into a base checkpoint's weights (or, with `unmerge`, takes them
 * out again) and writes the result next to nothing it read:
 *
 *   W' = W +- scale * sum_i weight_i * s_i * B_i A_i
 *
 * per adapted weight, where `s_i` is each module's own scale (`lora_alpha / r`, rsLoRA,
 * patterns). The update is transposed for `fan_in_fan_out` (GPT-2 Conv1D, stored
 * `in x out`) and for embeddings; conv LoRA (A flattened `r x in*kh*kw`) updates the
 * `out x in x kh x kw` weight with the same flattening. Each changed weight is computed in
 * f32 and stored back in its own dtype (bf16/f16 rounded to nearest even); every other
 * tensor, the header and `__metadata__` are copied byte for byte. A sharded base gives a
 * sharded output: the same shard file names and a byte-identical index.
 *
 * Adapter modules are matched to base tensors by `<module>.weight`; when that key is
 * missing, the names with `model.` or `transformer.` added or the first part of the name
 * removed are tried (`transformer.h.0.attn.c_attn` finds `h.0.attn.c_attn.weight`), and
 * used only when exactly one of them exists.
 *
 * Everything is checked before anything is written: every adapter module must be found
 * (else ERR_MERGE_TARGET_NOT_FOUND listing all that are missing), fit the shape
 * (ERR_SHAPE_MISMATCH listing all that do not) and be a float weight
 * (ERR_UNSUPPORTED_DTYPE). Files are written under temporary names in the output folder
 * and renamed when all are complete; on any error nothing is left behind. Adapters'
 * non-LoRA tensors (classifier heads from `modules_to_save`) are not merged; the report
 * lists them.
 */
export async function mergeIntoBase(options: MergeIntoBaseOptions): Promise<MergeReport> {
  const started = performance.now();
  const { base, output, specs, scale, unmerge } = checkOptions(options);
  const adapters: ResolvedAdapter[] = [];
  for (const [i, spec] of specs.entries()) adapters.push(await resolveAdapter(spec.adapter, spec.weight, i));

  const reader = await openBase(base);
  try {
    const planned = planMerge(reader, toBaseNames(reader, adapters), scale, unmerge ? -1 : 1);
    const layout = await outputLayout(reader, output);
    await checkNotBase(layout);
    const byFile = new Map<string, PlannedTensor[]>();
    for (const t of planned) {
      const list = byFile.get(t.info.file) ?? [];
      list.push(t);
      byFile.set(t.info.file, list);
    }

    let created: string | undefined;
    const folders = [...new Set([...layout.files, ...(layout.index ? [layout.index] : [])].map((f) => path.dirname(f.target)))].sort();
    const staged: Array<{ temporary: string; target: string }> = [];
    let flops = 0;
    let written = 0;
    const buffers = new TensorBuffers();
    try {
      for (const folder of folders) {
        try {
          created ??= await mkdir(folder, { recursive: true });
        } catch (cause) {
          throw ioError(cause, folder, 'create the folder');
        }
      }
      for (const file of layout.files) {
        const temporary = temporaryPathFor(file.target);
        staged.push({ temporary, target: file.target });
        const result = await writeMergedFile(reader, file, temporary, byFile.get(file.source) ?? [], buffers);
        flops += result.flops;
        written += result.size;
      }
      if (layout.index !== null) {
        const temporary = temporaryPathFor(layout.index.target);
        staged.push({ temporary, target: layout.index.target });
        written += (await writeMergedFile(reader, layout.index, temporary, [], buffers)).size;
      }
      try {
        for (const s of staged) await rename(s.temporary, s.target);
      } catch (cause) {
        throw ioError(cause, layout.folder, 'move the merged files into place');
      }
      for (const folder of folders) await syncFolder(folder);
    } catch (error) {
      await Promise.all(staged.map((s) => unlink(s.temporary).catch(() => undefined)));
      if (created !== undefined) await rm(created, { recursive: true, force: true }).catch(() => undefined);
      throw error;
    }

    const relativeOf = new Map(layout.files.map((f) => [f.source, f.relative]));
    const merged: MergedTensor[] = planned.map((t) => ({
      key: t.key,
      dtype: t.info.dtype,
      shape: [...t.info.shape],
      file: relativeOf.get(t.info.file) as string,
      modules: t.terms.map((term) => ({
        adapter: term.adapter,
        module: term.module.name,
        layout: term.module.layout,
        rank: term.module.rank,
        scale: term.module.scale,
        coefficient: term.coefficient,
        transposed: term.transposed,
      })),
    }));
    const files = [...layout.files.map((f) => f.target), ...(layout.index ? [layout.index.target] : [])];
    return {
      base: reader.path,
      output: layout.index?.target ?? (layout.files[0] as OutputFile).target,
      files,
      unmerge,
      scale,
      adapters: adapters.map((a) => ({
        source: a.source,
        format: a.format,
        weight: a.weight,
        modules: a.modules.length,
        extrasSkipped: a.extras,
      })),
      merged,
      tensors: { total: reader.tensors.size, touched: planned.length, copied: reader.tensors.size - planned.length },
      bytes: { written, touched: planned.reduce((n, t) => n + t.info.byteLength, 0), flops },
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await reader.close();
  }
}
