/**
 * eigenlorax: recycle LoRA adapters into a shared principal subspace (EigenLoRAx).
 * The root export is the core: matrices and kernels, dtypes, safetensors, adapters,
 * subspaces, merge, combine, and the adapter banks. Training, data sets, serving and the
 * demo are subpath exports: 'eigenlorax/train', 'eigenlorax/data', 'eigenlorax/serve',
 * 'eigenlorax/demo' (package.json `exports`).
 */
export { EigenLoraxError, type ErrorCode } from './errors.js';
export { matrix, checkMatrix, type Matrix } from './matrix.js';
export { rsvd, orthonormalize, completeBasis, type RsvdOptions, type SvdResult } from './linalg.js';
export { DeviceMatrix, toDevice, cudaStatus, type CudaStatus, type Device, type DeviceDtype, type Operand } from './cuda.js';
export {
  loraForward,
  loraBackward,
  eigenLoraForward,
  eigenLoraBackward,
  chooseProductOrder,
  linearForward,
  linearBackward,
  addLowRank,
  type LinearGradients,
  type LoraLayer,
  type EigenLoraLayer,
  type LoraGradients,
  type EigenLoraGradients,
  type ProductOrder,
  type OrderQuery,
} from './lowrank.js';
export { eigenBankApply, loraBankApply, mixingMatrix, PairCache, type EigenAdapterBank } from './multiadapter.js';
export { toFloat32, fromFloat32, dtypes, dtypeBytes, type DType } from './dtype.js';
export { buildInfo, setThreads, getThreads, ownedMatrix, type BuildInfo } from './runtime.js';
export { version } from './version.js';
export {
  openSafetensors,
  writeSafetensors,
  SafetensorsReader,
  isSafetensorsFloatDtype,
  safetensorsDtypes,
  safetensorsDtypeBytes,
  SAFETENSORS_MAX_HEADER_BYTES,
  type SafetensorsDType,
  type SafetensorsFloatDType,
  type SafetensorsWriteDType,
  type SafetensorsTensorInfo,
  type Float32Tensor,
  type RawTensor,
  type ReadFloat32Options,
  type ReadRawOptions,
  type SafetensorsEntry,
  type SafetensorsFloatEntry,
  type SafetensorsRawEntry,
  type WriteSafetensorsOptions,
} from './io/safetensors.js';
export { openGguf, isGgufFile, GgufReader, type GgufTensorInfo, type GgufFloat32Tensor, type GgufRawTensor } from './io/gguf.js';
export { writeGguf, type GgufEntry, type GgufFloatEntry, type GgufRawEntry, type WriteGgufOptions } from './io/gguf-write.js';
export {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAX_HEADER_BYTES,
  ggmlTypeCodes,
  ggufValueTypes,
  type GgmlType,
  type GgufValue,
  type GgufArrayValue,
  type GgufValueType,
} from './io/gguf-format.js';
// The adapters barrel is the public list for adapters (lib/adapters/index.ts).
export * from './adapters/index.js';
export {
  buildSubspace,
  projectAdapter,
  reconstructAdapter,
  exportAdapter,
  saveSubspace,
  loadSubspace,
  saveCoefficients,
  loadCoefficients,
  subspaceSavings,
  leaveOneOut,
  meanRelativeError,
  relativeErrorsByModule,
  explainedVarianceCurve,
  moduleSeed,
  sha256File,
  subspaceKeys,
  subspaceId,
  sidecarOf,
  DEFAULT_COMPONENTS,
  DEFAULT_MAX_COMPONENTS,
  SUBSPACE_FORMAT,
  SUBSPACE_FORMAT_VERSION,
  SUBSPACE_SIDECAR_NAME,
  SUBSPACE_TENSORS_NAME,
  COEFFICIENTS_FORMAT,
  COEFFICIENTS_FORMAT_VERSION,
  COEFFICIENTS_METADATA_KEY,
  type AdapterInput,
  type BuildSubspaceOptions,
  type BuildProgress,
  type ProjectAdapterOptions,
  type ExportAdapterOptions,
  type SavingsOptions,
  type SubspaceSavings,
  type ParameterCount,
  type LeaveOneOutOptions,
  type LeaveOneOutResult,
  type SubspaceSidecar,
  type SidecarModule,
  type Stacking,
  type Weighting,
  type PerSide,
  type SourceFile,
  type SubspaceSource,
  type SubspaceSettings,
  type SubspaceModule,
  type SubspaceBuildReport,
  type Subspace,
  type ModuleCoefficients,
  type AdapterCoefficients,
} from './subspace/index.js';
// Subspaces at scale: memory budget, sharded builds and their gathering.
export {
  parseSize,
  defaultMemoryBudget,
  resolveShard,
  writeBuildFolder,
  gatherShards,
  ShardMismatchError,
  type ShardSpec,
  type ShardRecord,
} from './subspace/index.js';
export {
  analyzeAdapters,
  verdictOf,
  ANALYSIS_METHOD,
  DEFAULT_CURVE_COMPONENTS,
  SHARED_HELD_OUT_ERROR,
  PARTLY_SHARED_HELD_OUT_ERROR,
  type AnalyzeOptions,
  type AnalyzeProgress,
  type SubspaceAnalysis,
  type ModuleAnalysis,
  type SideAnalysis,
  type AdapterAnalysis,
  type CurveBand,
} from './subspace/analyze.js';
export { explainedVarianceSvg, writeExplainedVarianceSvg, type ExplainedVarianceSvgOptions } from './subspace/svg.js';
export {
  mergeIntoBase,
  candidateKeys,
  MERGE_KEY_PREFIXES,
  type MergeAdapterInput,
  type MergeAdapterSpec,
  type MergeIntoBaseOptions,
  type MergeReport,
  type MergedAdapterReport,
  type MergedModule,
  type MergedTensor,
} from './merge/index.js';
export {
  combineAdapters,
  combineCoefficients,
  DEFAULT_MAX_DENSE_ELEMENTS,
  type CombineMethod,
  type CombineInput,
  type CombineAdaptersOptions,
  type CombineCoefficientsOptions,
  type MajoritySignMethod,
} from './combine/index.js';
// The banks are the batched kernels over a subspace or plain LoRA adapters, so they stay
// in the core; 'eigenlorax/serve' re-exports them beside the served model and the server.
export {
  AdapterBank,
  LoraBank,
  type BankApplyOptions,
  type RowAdapters,
  type BankMemory,
  type BankModuleMemory,
  type LoraBankAdapter,
  type LoraBankModule,
  type LoraBankMemory,
} from './serve/bank.js';
export { extractLora, type ExtractLoraOptions, type ExtractReport, type ExtractedModule, type ExtractProgress } from './extract/index.js';
