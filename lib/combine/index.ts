/** Combining adapters into one: exact weighted sums on a subspace, PEFT's cat / svd / linear, TIES and DARE. */
export {
  combineAdapters,
  combineCoefficients,
  type CombineMethod,
  type CombineInput,
  type CombineAdaptersOptions,
  type CombineCoefficientsOptions,
} from './combine.js';
export { DEFAULT_MAX_DENSE_ELEMENTS, type MajoritySignMethod } from './dense.js';
