/** Serving many adapters in one batch: the EigenLoRA coefficient bank and the plain-LoRA baseline bank. */
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
