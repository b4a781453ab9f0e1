/** Combining adapters into one: exact weighted sums on a subspace, PEFT's cat / svd / linear, TIES and DARE. */
export { combineAdapters, type CombineMethod, type CombineInput, type CombineAdaptersOptions } from './combine.js';
export { combineCoefficients, type CombineCoefficientsOptions } from './coefficients.js';
export { DEFAULT_MAX_DENSE_ELEMENTS, type MajoritySignMethod } from './dense.js';
