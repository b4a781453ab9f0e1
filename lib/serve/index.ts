/**
 * Serving many adapters in one batch: the EigenLoRA coefficient bank and the plain-LoRA
 * baseline bank; the served model over a bank, its folder, the micro-batcher and the HTTP
 * server (`eigenlorax serve`).
 */
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
} from './bank.js';
export { ServedModel, checkAdapterName, ADAPTER_NAME_PATTERN, type ServedLayer, type ServedAdapter, type ServedForward } from './model.js';
export {
  writeServeFolder,
  loadServedModel,
  coefficientsFromBytes,
  SERVED_MODEL_FORMAT,
  SERVED_MODEL_FORMAT_VERSION,
  SERVED_MODEL_FILE,
  SERVED_BASE_FILE,
  SERVED_SUBSPACE_FOLDER,
  SERVED_ADAPTERS_FOLDER,
  type WriteServeFolderOptions,
} from './folder.js';
export { MicroBatcher, type MicroBatcherOptions, type BatcherStats, type Settled } from './batcher.js';
export {
  createServer,
  startServer,
  DEFAULT_HOST,
  DEFAULT_PORT,
  DEFAULT_MAX_BATCH_ROWS,
  DEFAULT_BATCH_WINDOW_MS,
  DEFAULT_MAX_ROWS_PER_REQUEST,
  DEFAULT_BODY_LIMIT,
  type ServerOptions,
  type StartServerOptions,
  type StartedServer,
} from './server.js';
