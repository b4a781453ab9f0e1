/**
 * Projecting an adapter on a subspace, and back: reconstruction as an adapter, export to
 * a PEFT / diffusers / kohya file.
 */
import { EigenLoraxError } from '../errors.js';
import { checkMatrix, checkVector, matrix } from '../matrix.js';
import * as ops from '../native/ops.js';
import { f32LoraModule } from '../adapters/module.js';
import { GgufAdapterOptionsSchema } from '../adapters/options.js';
import { saveAdapter } from '../adapters/save.js';
import type { AdapterFormat, GgufAdapterOptions, LoraAdapter, LoraModule, OpenAdapterOptions, SavedAdapter } from '../adapters/types.js';
import { adapterFormats } from '../adapters/types.js';
import { argumentPlace, Count, OneOf, Options, parse, Type, type SameOptionNames } from '../schema.js';
import { invalid, object } from '../validate.js';
import { adapterCoefficients, moduleCoefficients, projectPairs } from './coefficients.js';
import { describeSources, openInputs, runPool, type AdapterInput, type InputAdapter } from './inputs.js';
import type { AdapterCoefficients, ModuleCoefficients, Subspace, SubspaceModule } from './types.js';

export interface ProjectAdapterOptions {
  /**
   * Modules of the adapter that the subspace does not have: 'error' (default,
   * ERR_SUBSPACE_MISMATCH naming them) or 'skip' (left out and listed in `skipped`).
   */
  missing?: 'error' | 'skip';
  /** The adapter's name in the result (default: its folder or file name, or `adapter`). */
  name?: string;
  /** Hash the adapter's files with sha256 for the record (default true). */
  hashSources?: boolean;
  /** Modules in flight at once (default 2). */
  concurrency?: number;
  /** Options for a path that is opened. */
  open?: OpenAdapterOptions;
}

function checkSubspace(subspace: unknown): Subspace {
  const s = object(subspace, 'subspace') as unknown as Subspace;
  if (!(s.modules instanceof Map) || typeof s.id !== 'string' || typeof s.settings !== 'object') {
    throw invalid('a subspace (from buildSubspace or loadSubspace)', 'subspace', subspace);
  }
  return s;
}

function shapeMismatch(subspace: Subspace, where: string, module: SubspaceModule, got: string): EigenLoraxError {
  return new EigenLoraxError(
    `${where}, module ${JSON.stringify(module.name)}: the adapter's module is ${got} but the subspace's is ` +
      `${module.dIn} -> ${module.dOut} ${module.layout}${module.fanInFanOut ? ' fan_in_fan_out' : ''} (subspace ${subspace.id.slice(0, 12)})`,
    'ERR_SUBSPACE_MISMATCH',
  );
}

/** @internal Projects one normalised input. */
export async function projectInput(
  subspace: Subspace,
  input: InputAdapter,
  options: { missing: 'error' | 'skip'; hashSources: boolean; concurrency: number },
): Promise<AdapterCoefficients> {
  const where = input.path ?? input.name;
  const names = [...input.modules.keys()];
  const skipped = names.filter((n) => !subspace.modules.has(n));
  if (skipped.length > 0 && options.missing === 'error') {
    throw new EigenLoraxError(
      `${where}: ${skipped.length} module${skipped.length === 1 ? '' : 's'} of the adapter ` +
        `${skipped.length === 1 ? 'is' : 'are'} not in the subspace (${skipped.slice(0, 3).map((n) => JSON.stringify(n)).join(', ')}` +
        `${skipped.length > 3 ? ', ...' : ''}); pass missing: 'skip' to project the others`,
      'ERR_SUBSPACE_MISMATCH',
    );
  }
  const present = [...subspace.modules.keys()].filter((n) => input.modules.has(n));
  // Shapes first, before anything is read.
  for (const name of present) {
    const m = subspace.modules.get(name)!;
    const info = input.modules.get(name)!;
    const kernel = (info.convKernel ?? null)?.join('x') ?? null;
    if (
      info.inFeatures !== m.dIn ||
      info.outFeatures !== m.dOut ||
      info.layout !== m.layout ||
      info.fanInFanOut !== m.fanInFanOut ||
      kernel !== (m.convKernel?.join('x') ?? null)
    ) {
      throw shapeMismatch(subspace, where, m, `${info.inFeatures} -> ${info.outFeatures} ${info.layout}${info.fanInFanOut ? ' fan_in_fan_out' : ''}`);
    }
  }
  const sources = describeSources([input], options.hashSources);
  sources.catch(() => undefined);
  const results = new Map<string, ModuleCoefficients>();
  await runPool(present, options.concurrency, async (name) => {
    const m = subspace.modules.get(name)!;
    const info = input.modules.get(name)!;
    const { A, B } = await input.read(name);
    const { alphas, betas, norms, errors } = await projectPairs(m, subspace.settings.stacking, [{ A, B, scale: info.scale }]).catch(
      (error: unknown) => {
        if (error instanceof EigenLoraxError) error.message = `${where}, module ${JSON.stringify(name)}: ${error.message}`;
        throw error;
      },
    );
    results.set(name, moduleCoefficients(info, subspace.settings.stacking, alphas[0]!, betas[0]!, norms[0]!, errors[0]!));
  });
  const ordered = new Map(present.map((n) => [n, results.get(n)!]));
  const [source] = await sources;
  return adapterCoefficients(subspace.id, subspace.settings.stacking, source!, ordered, skipped);
}

const ProjectOptionsSchema = Options({
  missing: Type.Optional(OneOf(['error', 'skip'] as const)),
  name: Type.Optional(Type.String({ minLength: 1 })),
  hashSources: Type.Optional(Type.Boolean()),
  concurrency: Type.Optional(Count(1, 64)),
  // Checked where the adapter is opened (adapters/open.ts).
  open: Type.Optional(Type.Object({})),
});
const projectOptionNames: SameOptionNames<typeof ProjectOptionsSchema, ProjectAdapterOptions> = true;
void projectOptionNames;

/**
 * The coefficients of `adapter` (a path, an opened or a loaded adapter; in the set the
 * subspace was built from or new) on `subspace`: per module `alpha` (`K_A x r`), `beta`
 * (`K_B x r`), `||dW||_F` and `||dW - dW_hat||_F` (never forming `d_out x d_in`), and the
 * whole adapter's relative error `sqrt(sum err^2 / sum norm^2)`.
 *
 * Modules of the adapter that the subspace lacks are an ERR_SUBSPACE_MISMATCH unless
 * `missing: 'skip'` (then listed in `skipped`); a module of another shape is always one.
 * Modules of the subspace that the adapter lacks are simply not in the result.
 */
export async function projectAdapter(subspace: Subspace, adapter: AdapterInput, options: ProjectAdapterOptions = {}): Promise<AdapterCoefficients> {
  const s = checkSubspace(subspace);
  const o = parse(ProjectOptionsSchema, options, argumentPlace('options'));
  const inputs = await openInputs([adapter], 'adapter', {
    ...(o.name !== undefined ? { names: [o.name] } : {}),
    open: (o.open ?? {}) as OpenAdapterOptions,
  });
  try {
    return await projectInput(s, inputs.adapters[0]!, { missing: o.missing ?? 'error', hashSources: o.hashSources !== false, concurrency: o.concurrency ?? 2 });
  } finally {
    await inputs.close();
  }
}

function checkCoefficients(subspace: Subspace, coefficients: unknown): AdapterCoefficients {
  const c = object(coefficients, 'coefficients') as unknown as AdapterCoefficients;
  if (!(c.modules instanceof Map) || typeof c.subspaceId !== 'string') {
    throw invalid('adapter coefficients (from buildSubspace, projectAdapter or loadCoefficients)', 'coefficients', coefficients);
  }
  if (c.subspaceId !== subspace.id) {
    throw new EigenLoraxError(
      `coefficients of ${c.adapter?.name ?? 'an adapter'} belong to subspace ${c.subspaceId.slice(0, 12)}, not to ${subspace.id.slice(0, 12)}`,
      'ERR_SUBSPACE_MISMATCH',
    );
  }
  if (c.stacking !== subspace.settings.stacking) {
    throw new EigenLoraxError(`coefficients: stacking ${String(c.stacking)} but the subspace's is ${subspace.settings.stacking}`, 'ERR_SUBSPACE_MISMATCH');
  }
  for (const [name, mc] of c.modules) {
    const m = subspace.modules.get(name);
    if (m === undefined) throw new EigenLoraxError(`coefficients: module ${JSON.stringify(name)} is not in the subspace`, 'ERR_SUBSPACE_MISMATCH');
    const where = `coefficients.modules[${JSON.stringify(name)}]`;
    const wrap = (fn: () => void) => {
      try {
        fn();
      } catch (error) {
        if (error instanceof EigenLoraxError && error.code === 'ERR_SHAPE_MISMATCH') {
          throw new EigenLoraxError(`${error.message} (subspace module: K_A ${m.kA}, K_B ${m.kB})`, 'ERR_SUBSPACE_MISMATCH');
        }
        throw error;
      }
    };
    wrap(() => {
      checkMatrix(mc.alpha, `${where}.alpha`, { rows: m.kA, cols: mc.rank });
      checkMatrix(mc.beta, `${where}.beta`, { rows: m.kB, cols: mc.rank });
    });
    if (typeof mc.scale !== 'number' || !Number.isFinite(mc.scale)) throw invalid('a finite number', `${where}.scale`, mc.scale);
  }
  return c;
}

/**
 * Reconstructs the adapter that `coefficients` describe on `subspace`: an adapter in the
 * shape {@link loadAdapter} returns (so {@link saveAdapter} writes it), with for every
 * module `A = alpha^T V_A^T (+ meanA)` (`r x d_in`) and `B = U_B beta (+ meanB)`
 * (`d_out x r`), the module's layout, conv kernel and fan_in_fan_out, the adapter's base
 * model and format, and:
 *  - canonical stacking: `lora_alpha = r`, no rsLoRA, scale 1 (the scale is inside the factors);
 *  - raw stacking: the adapter's own `lora_alpha` and rsLoRA flag, so its own scale.
 * No extras (classifier heads are not part of the subspace).
 */
export async function reconstructAdapter(subspace: Subspace, coefficients: AdapterCoefficients, options: { format?: AdapterFormat } = {}): Promise<LoraAdapter> {
  const s = checkSubspace(subspace);
  const c = checkCoefficients(s, coefficients);
  const o = parse(Options({ format: Type.Optional(FormatOption) }), options, argumentPlace('options'));
  const format = o.format ?? c.adapter?.format ?? 'peft';
  const modules = new Map<string, LoraModule>();
  for (const [name, mc] of c.modules) {
    const m = s.modules.get(name)!;
    const r = mc.rank;
    const A = matrix(r, m.dIn);
    const B = matrix(m.dOut, r);
    if (m.meanA !== null) checkVector(m.meanA, `subspace module ${name} meanA`, m.dIn);
    if (m.meanB !== null) checkVector(m.meanB, `subspace module ${name} meanB`, m.dOut);
    await ops.reconstructFactors({
      componentsA: m.componentsA,
      componentsB: m.componentsB,
      meanA: m.meanA,
      meanB: m.meanB,
      alpha: mc.alpha,
      beta: mc.beta,
      A,
      B,
    });
    const canonical = c.stacking === 'canonical';
    const alpha = canonical ? r : mc.adapterAlpha;
    const rslora = canonical ? false : mc.rslora;
    modules.set(name, f32LoraModule({ ...m, name }, A, B, alpha, rslora));
  }
  return {
    format,
    baseModel: c.adapter?.baseModel ?? s.baseModel,
    source: null,
    modules,
    extras: new Map(),
    config: null,
    metadata: {},
  };
}

export interface ExportAdapterOptions {
  /** Output format (default: the adapter's own). */
  format?: AdapterFormat;
  /** Storage dtype of the factors (default F32). */
  dtype?: 'F32' | 'F16' | 'BF16';
  /** GGUF output: the model's architecture / head counts (see saveAdapter). */
  gguf?: GgufAdapterOptions;
}

const FormatOption = OneOf(adapterFormats);
const ExportOptionsSchema = Options({
  format: Type.Optional(FormatOption),
  dtype: Type.Optional(OneOf(['F32', 'F16', 'BF16'] as const)),
  gguf: Type.Optional(GgufAdapterOptionsSchema),
});
const exportOptionNames: SameOptionNames<typeof ExportOptionsSchema, ExportAdapterOptions> = true;
void exportOptionNames;

/**
 * {@link reconstructAdapter}, then {@link saveAdapter} to `destination` (a folder for
 * PEFT, a `.safetensors` file for kohya, either for diffusers). Atomic as saveAdapter is.
 */
export async function exportAdapter(
  subspace: Subspace,
  coefficients: AdapterCoefficients,
  destination: string,
  options: ExportAdapterOptions = {},
): Promise<SavedAdapter> {
  const o = parse(ExportOptionsSchema, options, argumentPlace('options'));
  const adapter = await reconstructAdapter(subspace, coefficients, o.format === undefined ? {} : { format: o.format });
  return saveAdapter(adapter, destination, {
    format: adapter.format,
    ...(o.dtype === undefined ? {} : { dtype: o.dtype }),
    ...(o.gguf === undefined ? {} : { gguf: o.gguf as GgufAdapterOptions }),
  });
}

/** @internal */
export { checkSubspace };
