/** EigenLoRAx subspaces: build, project, reconstruct, save and load, savings, leave-one-out. */
export { buildSubspace, DEFAULT_COMPONENTS, DEFAULT_MAX_COMPONENTS, type BuildSubspaceOptions, type BuildProgress } from './build.js';
export { projectAdapter, reconstructAdapter, exportAdapter, type ProjectAdapterOptions, type ExportAdapterOptions } from './project.js';
export {
  saveSubspace,
  loadSubspace,
  saveCoefficients,
  loadCoefficients,
  COEFFICIENTS_FORMAT_VERSION,
  COEFFICIENTS_METADATA_KEY,
} from './files.js';
export {
  SUBSPACE_FORMAT,
  SUBSPACE_FORMAT_VERSION,
  SUBSPACE_SIDECAR_NAME,
  SUBSPACE_TENSORS_NAME,
  COEFFICIENTS_FORMAT,
  subspaceKeys,
  subspaceId,
  sidecarOf,
  type SubspaceSidecar,
  type SidecarModule,
} from './identity.js';
export { subspaceSavings, type SavingsOptions, type SubspaceSavings, type ParameterCount } from './savings.js';
export { leaveOneOut, type LeaveOneOutOptions, type LeaveOneOutResult } from './heldout.js';
export { meanRelativeError, relativeErrorsByModule } from './coefficients.js';
export { parseSize, defaultMemoryBudget, DEFAULT_BUDGET_FRACTION } from './budget.js';
export { resolveShard, assignShards, type ShardSpec } from './shard-plan.js';
export { writeBuildFolder, coefficientsFileName, SHARD_RECORD_NAME, type ShardRecord } from './output.js';
export { gatherShards, ShardMismatchError } from './shard.js';
export { explainedVarianceCurve } from './spectrum.js';
export { moduleSeed, sha256File, type AdapterInput } from './inputs.js';
export type {
  Stacking,
  Weighting,
  PerSide,
  SourceFile,
  SubspaceSource,
  SubspaceSettings,
  SubspaceModule,
  SubspaceBuildReport,
  Subspace,
  ModuleCoefficients,
  AdapterCoefficients,
} from './types.js';
