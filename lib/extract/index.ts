/** LoRA extraction from full fine-tunes. */
export { extractLora } from './extract.js';
export type { ExtractLoraOptions, ExtractReport, ExtractedModule, ExtractProgress } from './types.js';
