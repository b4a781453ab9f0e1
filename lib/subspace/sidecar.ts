/**
 * The JSON records of the subspace files, declared once as schemas: the sidecar
 * (`subspace.json`) and the coefficients record (`__metadata__["eigenlorax.coefficients"]`).
 * The TypeScript types are inferred from them; what a schema cannot say (one field against
 * another, names against the sources) is checked after it, with the same message shape.
 */
import path from 'node:path';
import { mismatch, Nullable, parse, said, Sha256Hex, Count, Type, type Place, type Static } from '../schema.js';
import { COEFFICIENTS_FORMAT, SUBSPACE_FORMAT, SUBSPACE_FORMAT_VERSION } from './identity.js';

const PerSide = (minimum: number) => Type.Object({ A: Count(minimum), B: Count(minimum) });
const Stacking = Type.Union([Type.Literal('canonical'), Type.Literal('raw')]);

export const SourceFileSchema = Type.Object({ path: Type.String(), bytes: Nullable(Count()), sha256: Nullable(Sha256Hex) });

export const SourceSchema = Type.Object({
  name: Type.String(),
  path: Nullable(Type.String()),
  format: Type.Union([Type.Literal('peft'), Type.Literal('diffusers'), Type.Literal('kohya'), Type.Literal('gguf')]),
  baseModel: Nullable(Type.String()),
  files: Type.Array(SourceFileSchema),
});

export const SettingsSchema = Type.Object({
  stacking: Stacking,
  weighting: Nullable(Type.Union([Type.Literal('equal'), Type.Literal('scale')])),
  center: Type.Boolean(),
  components: Nullable(PerSide(1)),
  variance: Nullable(Type.Number({ exclusiveMinimum: 0, maximum: 1, description: 'a fraction in (0, 1]' })),
  maxComponents: Nullable(PerSide(1)),
  augment: PerSide(0),
  oversample: Count(),
  powerIters: Count(0, 1000),
  seed: Count(0, 2 ** 52),
});

export const SidecarModuleSchema = Type.Object({
  name: Type.String(),
  dIn: Count(1),
  dOut: Count(1),
  layout: Type.Union([Type.Literal('linear'), Type.Literal('conv'), Type.Literal('embedding')]),
  convKernel: Nullable(Type.Array(Count(1))),
  fanInFanOut: Type.Boolean(),
  kA: Count(1),
  kB: Count(1),
  augmentA: Count(),
  augmentB: Count(),
  energyA: Type.Number({ minimum: 0 }),
  energyB: Type.Number({ minimum: 0 }),
  explainedA: Type.Number({ minimum: 0, maximum: 1 }),
  explainedB: Type.Number({ minimum: 0, maximum: 1 }),
  centered: Type.Boolean(),
  adapters: Type.Array(Type.String(), { minItems: 1 }),
  ranks: Type.Array(Count(1)),
});

/** The version every format record starts with (checked first: a newer file is told as such). */
const Header = Type.Object({ format: Type.String(), formatVersion: Count() });

/** The sidecar, version 1. */
export const SidecarSchema = Type.Object({
  format: Type.Literal(SUBSPACE_FORMAT),
  formatVersion: Count(),
  library: Type.Object({ name: Type.Literal('eigenlorax'), version: Type.String() }),
  id: Sha256Hex,
  tensors: Type.String(),
  settings: SettingsSchema,
  baseModel: Nullable(Type.String()),
  sources: Type.Array(SourceSchema),
  modules: Type.Array(SidecarModuleSchema, { minItems: 1 }),
});

export type SubspaceSidecar = Static<typeof SidecarSchema>;
export type SidecarModule = Static<typeof SidecarModuleSchema>;

export const CoefficientsModuleSchema = Type.Object({
  name: Type.String(),
  rank: Count(1),
  kA: Count(1),
  kB: Count(1),
  scale: Type.Number(),
  adapterAlpha: Type.Number(),
  rslora: Type.Boolean(),
  adapterScale: Type.Number(),
  norm: Type.Number({ minimum: 0 }),
  error: Type.Number({ minimum: 0 }),
});

export const COEFFICIENTS_FORMAT_VERSION = 1;

/** The JSON record of a coefficients file, version 1. */
export const CoefficientsRecordSchema = Type.Object({
  format: Type.Literal(COEFFICIENTS_FORMAT),
  formatVersion: Count(),
  subspaceId: Sha256Hex,
  stacking: Stacking,
  adapter: SourceSchema,
  skipped: Type.Array(Type.String()),
  modules: Type.Array(CoefficientsModuleSchema),
});

export type CoefficientsRecord = Static<typeof CoefficientsRecordSchema>;

/** Format name, then version, so that another format or a newer file is named as such. */
function checkHeader(raw: unknown, place: Place, format: string, version: number, reader: string): void {
  const header = parse(Header, raw, place);
  if (header.format !== format) throw mismatch(place, 'format', JSON.stringify(format), header.format);
  if (header.formatVersion !== version) throw mismatch(place, 'formatVersion', `version ${version} (the one ${reader} reads)`, header.formatVersion);
}

/** A coefficients record, validated. */
export function parseCoefficientsRecord(raw: unknown, place: Place): CoefficientsRecord {
  checkHeader(raw, place, COEFFICIENTS_FORMAT, COEFFICIENTS_FORMAT_VERSION, 'this eigenlorax');
  const record = parse(CoefficientsRecordSchema, raw, place);
  const names = new Set<string>();
  record.modules.forEach((m, i) => {
    if (names.has(m.name)) throw mismatch(place, `modules[${i}].name`, 'a name no other module has', m.name);
    names.add(m.name);
  });
  return record;
}

/**
 * A sidecar, validated: the schema, then K against the augmentation and the settings,
 * module names unique, each module's adapters among the sources.
 */
export function parseSidecar(raw: unknown, place: Place, libraryVersion: string): SubspaceSidecar {
  checkHeader(raw, place, SUBSPACE_FORMAT, SUBSPACE_FORMAT_VERSION, `eigenlorax ${libraryVersion}`);
  const sidecar = parse(SidecarSchema, raw, place);
  const t = sidecar.tensors;
  if (t !== path.basename(t) || t === '' || t === '.' || t === '..') throw mismatch(place, 'tensors', 'a file name in the same folder', t);
  checkSettings(sidecar.settings, place);
  const sourceNames = new Set(sidecar.sources.map((s) => s.name));
  if (sourceNames.size !== sidecar.sources.length) throw mismatch(place, 'sources', 'sources of distinct names', said('two sources of the same name'));
  const seen = new Set<string>();
  sidecar.modules.forEach((m, i) => {
    checkModule(m, `modules[${i}]`, sidecar.settings, sourceNames, place);
    if (seen.has(m.name)) throw mismatch(place, `modules[${i}].name`, 'a name no other module has', m.name);
    seen.add(m.name);
  });
  return sidecar;
}

function checkSettings(s: SubspaceSidecar['settings'], place: Place): void {
  if ((s.stacking === 'raw') !== (s.weighting === null)) {
    throw mismatch(place, 'settings.weighting', s.stacking === 'raw' ? 'null with raw stacking' : 'one of "equal", "scale" with canonical stacking', s.weighting);
  }
  if ((s.components === null) === (s.variance === null)) throw mismatch(place, 'settings.components', 'exactly one of components and variance', s.components);
  if ((s.variance === null) !== (s.maxComponents === null)) throw mismatch(place, 'settings.maxComponents', 'a value exactly when variance is set', s.maxComponents);
}

function checkModule(m: SidecarModule, at: string, settings: SubspaceSidecar['settings'], sources: Set<string>, place: Place): void {
  if ((m.layout === 'conv') !== (m.convKernel !== null)) throw mismatch(place, `${at}.convKernel`, `a kernel exactly for conv modules (layout ${m.layout})`, m.convKernel);
  for (const side of ['A', 'B'] as const) {
    const k = m[`k${side}`];
    const augment = m[`augment${side}`];
    const dim = side === 'A' ? m.dIn : m.dOut;
    if (k > dim) throw mismatch(place, `${at}.k${side}`, `at most ${side === 'A' ? 'dIn' : 'dOut'} = ${dim}`, k);
    if (augment > k - 1) throw mismatch(place, `${at}.augment${side}`, `less than k${side} = ${k}`, augment);
    const principal = k - augment;
    for (const limit of ['components', 'maxComponents'] as const) {
      const cap = settings[limit]?.[side];
      if (cap !== undefined && principal > cap) throw mismatch(place, `${at}.k${side}`, `at most settings.${limit}.${side} = ${cap} principal components`, said(`${principal}`));
    }
    if (augment > settings.augment[side]) throw mismatch(place, `${at}.augment${side}`, `at most settings.augment.${side} = ${settings.augment[side]}`, augment);
  }
  m.adapters.forEach((a, j) => {
    if (!sources.has(a)) throw mismatch(place, `${at}.adapters[${j}]`, 'the name of a source', a);
  });
  if (m.ranks.length !== m.adapters.length) throw mismatch(place, `${at}.ranks`, `${m.adapters.length} ranks (one per adapter)`, said(`${m.ranks.length}`));
  if (m.centered !== settings.center) throw mismatch(place, `${at}.centered`, `${settings.center} (settings.center)`, m.centered);
}
