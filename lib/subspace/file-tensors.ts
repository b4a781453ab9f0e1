/**
 * The tensor side of the subspace and coefficients files: opening the safetensors file
 * (its format errors become ERR_SUBSPACE_FORMAT) and reading a tensor of the shape the JSON
 * record gives, in the one message shape (`<file>, tensor "<key>": expected ..., received ...`).
 */
import { EigenLoraxError } from '../errors.js';
import { fileError } from '../io/files.js';
import { isSafetensorsFloatDtype, type SafetensorsReader } from '../io/safetensors.js';
import { openSmallSafetensors } from '../io/safetensors-whole.js';

export const tensorError = (file: string, key: string, expected: string, received: string) =>
  fileError('ERR_SUBSPACE_FORMAT', file, `expected ${expected}, received ${received}`, key);

/** Opens a subspace's or coefficients' safetensors file; a broken one is ERR_SUBSPACE_FORMAT. */
export async function openTensors(file: string): Promise<SafetensorsReader> {
  try {
    return await openSmallSafetensors(file);
  } catch (error) {
    if (error instanceof EigenLoraxError && error.code === 'ERR_SAFETENSORS_FORMAT') throw new EigenLoraxError(error.message, 'ERR_SUBSPACE_FORMAT');
    throw error;
  }
}

/** Reads a float tensor of exactly `shape` (`what` says where the shape comes from). */
export async function readTensor(reader: SafetensorsReader, file: string, key: string, shape: number[], what: string): Promise<Float32Array> {
  const info = reader.tensors.get(key);
  if (info === undefined) throw tensorError(file, key, `a tensor of shape [${shape.join(', ')}] (${what})`, 'nothing');
  if (!isSafetensorsFloatDtype(info.dtype)) throw tensorError(file, key, 'a float dtype', `dtype ${info.dtype}`);
  if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
    throw tensorError(file, key, `shape [${shape.join(', ')}] as the record says (${what})`, `shape [${info.shape.join(', ')}]`);
  }
  return (await reader.readFloat32(key)).data;
}

/** Refuses a tensor the record does not name. */
export function checkNoOtherTensors(reader: SafetensorsReader, file: string, expected: Set<string>, record: string): void {
  for (const key of reader.tensors.keys()) {
    if (!expected.has(key)) throw tensorError(file, key, `only the tensors ${record} names`, 'an unexpected tensor');
  }
}
