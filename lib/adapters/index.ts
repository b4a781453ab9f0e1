/** LoRA adapters in and out: PEFT, diffusers and kohya files, one in-memory model. */
export { openAdapter, loadAdapter, OpenedAdapter, type AdapterModuleHandle, type AdapterExtraHandle, type FactorBuffers } from './open.js';
export { saveAdapter } from './save.js';
export { convertAdapterNames } from './sd-convert.js';
export { convertAdapter, type ConvertAdapterOptions } from './convert.js';
export {
  ggufLoraArchitectures,
  ggufModuleName,
  hfModuleName,
  type GgufLoraArchitecture,
} from './gguf-names.js';
export { inspectAdapter, summarizeAdapter, type AdapterReport, type CountedValue } from './inspect.js';
export {
  adapterFormats,
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
  type GgufAdapterOptions,
} from './types.js';
