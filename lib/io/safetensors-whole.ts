/**
 * The library's own safetensors files (coefficients, a shard's coefficients bundles,
 * subspace files), opened to be read at once and entirely: read whole in one read.
 */
import path from 'node:path';
import { invalid } from '../validate.js';
import { assertLittleEndian } from './safetensors-format.js';
import { openFile, toEntryMap } from './safetensors-header.js';
import { SafetensorsReader } from './safetensors.js';

/**
 * Files up to this size are read whole by {@link openSmallSafetensors}: the library's own
 * files that are then read entirely (coefficients, a shard's coefficients bundles, subspace
 * files) cost one read instead of one per header part and tensor, and their digest check
 * reads nothing again (a gather reading 1024 coefficients files: 0.6-0.9 s before).
 */
export const READ_WHOLE_BELOW = 64 << 20;

/**
 * One `.safetensors` file (not a folder or shard index), as {@link openSafetensors} opens
 * it, but read whole in one read when it is at most `wholeBelow` bytes (default 64 MiB):
 * its tensors are then read from that copy, taken at open (later changes to the file are
 * not seen). For the library's own files, which are read at once and entirely.
 */
export async function openSmallSafetensors(file: string, wholeBelow = READ_WHOLE_BELOW): Promise<SafetensorsReader> {
  if (typeof file !== 'string' || file.length === 0) throw invalid('a path (non-empty string)', 'path', file);
  assertLittleEndian();
  const where = path.resolve(file);
  const opened = await openFile(where, wholeBelow);
  return new SafetensorsReader(where, [opened.opened], toEntryMap(opened), null);
}
