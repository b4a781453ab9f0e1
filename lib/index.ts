/** eigenlorax: recycle LoRA adapters into a shared principal subspace (EigenLoRAx). */
export { EigenLoraxError, type ErrorCode } from './errors.js';
export { matrix, checkMatrix, type Matrix } from './matrix.js';
export { rsvd, orthonormalize, completeBasis, type RsvdOptions, type SvdResult } from './linalg.js';
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
export { eigenBankApply, loraBankApply, mixingMatrix, type EigenAdapterBank } from './multiadapter.js';
export { toFloat32, fromFloat32, dtypes, dtypeBytes, type DType } from './dtype.js';
export { buildInfo, setThreads, getThreads, type BuildInfo } from './runtime.js';
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
export {
  openAdapter,
  loadAdapter,
  saveAdapter,
  inspectAdapter,
  summarizeAdapter,
  OpenedAdapter,
  adapterFormats,
  type AdapterModuleHandle,
  type AdapterExtraHandle,
  type AdapterReport,
  type CountedValue,
  type AdapterFormat,
  type AdapterSource,
  type AdapterExtra,
  type LoraAdapter,
  type LoraLayout,
  type LoraModule,
  type LoraModuleInfo,
  type OpenAdapterOptions,
  type LoadAdapterOptions,
  type SaveAdapterOptions,
  type SavedAdapter,
} from './adapters/index.js';
