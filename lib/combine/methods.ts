/**
 * The method names combineAdapters accepts (PEFT's `*_svd` spellings too), in a module of
 * their own so that the command line can list them without loading the kernels.
 */
export const combineMethodNames = [
  'linear',
  'cat',
  'svd',
  'ties',
  'dare_linear',
  'dare_ties',
  'magnitude_prune',
  'ties_svd',
  'dare_linear_svd',
  'dare_ties_svd',
  'magnitude_prune_svd',
] as const;
