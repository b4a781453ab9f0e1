/** Merging LoRA adapters into base weights (and taking them out again). */
export { mergeIntoBase } from './merge.js';
export { candidateKeys, MERGE_KEY_PREFIXES } from './plan.js';
export type {
  MergeAdapterInput,
  MergeAdapterSpec,
  MergeIntoBaseOptions,
  MergeReport,
  MergedAdapterReport,
  MergedModule,
  MergedTensor,
} from './types.js';
