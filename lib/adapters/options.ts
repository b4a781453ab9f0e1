/**
 * The options of opening, saving and converting adapters, declared as schemas (the
 * documented interfaces are in types.ts; SameOptionNames keeps the two in step).
 */
import { Count, OneOf, Options, Type, type SameOptionNames } from '../schema.js';
import { adapterFormats, type GgufAdapterOptions, type OpenAdapterOptions, type SaveAdapterOptions } from './types.js';

export const FormatOption = OneOf(adapterFormats);
export const FactorDtypeOption = OneOf(['F32', 'F16', 'BF16'] as const);

/** The `gguf` options of saveAdapter, exportAdapter, convertAdapter and extractLora. */
export const GgufAdapterOptionsSchema = Options({
  architecture: Type.Optional(Type.String({ minLength: 1, description: 'an architecture name' })),
  headCount: Type.Optional(Count(1)),
  headCountKv: Type.Optional(Count(1)),
  base: Type.Optional(Type.String({ minLength: 1, description: 'the path of a GGUF model' })),
});

const openProperties = {
  format: Type.Optional(FormatOption),
  allowNonFinite: Type.Optional(Type.Boolean()),
};
export const OpenAdapterOptionsSchema = Options(openProperties);

const saveProperties = {
  format: FormatOption,
  dtype: Type.Optional(FactorDtypeOption),
  extras: Type.Optional(OneOf(['keep', 'drop'] as const)),
  allowNonFinite: Type.Optional(Type.Boolean()),
  gguf: Type.Optional(GgufAdapterOptionsSchema),
};
export const SaveAdapterOptionsSchema = Options(saveProperties);
export const ConvertAdapterOptionsSchema = Options({ ...saveProperties, from: Type.Optional(FormatOption) });

const names: [
  SameOptionNames<typeof GgufAdapterOptionsSchema, GgufAdapterOptions>,
  SameOptionNames<typeof OpenAdapterOptionsSchema, OpenAdapterOptions>,
  SameOptionNames<typeof SaveAdapterOptionsSchema, SaveAdapterOptions>,
] = [true, true, true];
void names;
