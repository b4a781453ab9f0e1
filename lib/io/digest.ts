/**
 * Content digests of eigenlorax's own safetensors files (coefficients, subspaces,
 * training checkpoints and exports): `__metadata__["eigenlorax.data_sha256"]` is the
 * sha256 of the header's meaning (the other metadata, sorted, and every tensor's name,
 * dtype and shape in file order) followed by every tensor's stored bytes in file order.
 * A changed byte anywhere in the data, or a header edit that still parses, no longer
 * matches: ERR_INTEGRITY naming the file.
 *
 * Files without the key (written before digests, or by other tools) are read as before,
 * unchecked: refusing them would strand every existing file, and the digest guards against
 * corruption and torn copies, not against a forger (who could recompute it).
 */
import { fileError } from './files.js';
import type { SafetensorsReader } from './safetensors.js';
import { Sha256Stream } from './sha256.js';

/** The `__metadata__` key holding the content digest. */
export const DATA_DIGEST_KEY = 'eigenlorax.data_sha256';

/**
 * Data is hashed in slices of this many bytes: a slice not in owned memory is copied for
 * the hashing thread, and at most a few slices are in flight.
 */
const SLICE = 8 << 20;

/** The digest placeholder the writer fills in once the data is written (same length). */
export const DIGEST_PLACEHOLDER = '0'.repeat(64);

/**
 * The header's meaning, hashed (as UTF-8) before the data: the metadata other than the
 * digest, sorted; the tensors in file order.
 */
export function digestPreamble(
  metadata: Readonly<Record<string, string>>,
  tensors: ReadonlyArray<{ name: string; dtype: string; shape: readonly number[] }>,
): string {
  const meta = Object.entries(metadata)
    .filter(([k]) => k !== DATA_DIGEST_KEY)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const layout = tensors.map((t) => [t.name, t.dtype, [...t.shape]]);
  return JSON.stringify({ metadata: meta, tensors: layout });
}

/** Starts a digest (hashed off the event loop, see sha256.ts) with the header's meaning. */
export function startDigest(
  metadata: Readonly<Record<string, string>>,
  tensors: ReadonlyArray<{ name: string; dtype: string; shape: readonly number[] }>,
): Sha256Stream {
  const hash = new Sha256Stream();
  void hash.update([digestPreamble(metadata, tensors)]);
  return hash;
}

/** Queues `bytes` to `hash` in slices, waiting while too many are in flight. */
export async function updateDigest(hash: Sha256Stream, bytes: ArrayBufferView): Promise<void> {
  const view = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = 0; at < view.byteLength; at += SLICE) await hash.update([view.subarray(at, Math.min(view.byteLength, at + SLICE))]);
}

/**
 * Verifies the digest of a single-file reader: 'verified', or 'absent' for a file without
 * one; a mismatch (or a malformed digest) is ERR_INTEGRITY naming the file. Reads every
 * tensor once, one at a time, through the reader's own handle (the file verified is the
 * file read), or hashes the copy a reader of a file read whole holds.
 */
export async function verifyDigest(reader: SafetensorsReader): Promise<'verified' | 'absent'> {
  const recorded = reader.metadata[DATA_DIGEST_KEY];
  const file = reader.files[0] ?? reader.path;
  if (recorded === undefined) return 'absent';
  if (!/^[0-9a-f]{64}$/.test(recorded)) throw fileError('ERR_INTEGRITY', file, `${DATA_DIGEST_KEY} is not 64 hex digits but ${JSON.stringify(recorded.slice(0, 80))}`);
  const tensors = [...reader.tensors].map(([name, info]) => ({ name, dtype: info.dtype, shape: info.shape }));
  const hash = startDigest(reader.metadata, tensors);
  // A file read whole: its tensors' bytes in one pass, not a copy of each tensor.
  const held = reader.heldData();
  if (held !== null) await updateDigest(hash, held);
  else for (const t of tensors) await updateDigest(hash, (await reader.readRaw(t.name)).bytes);
  const actual = await hash.digest();
  if (actual !== recorded) {
    throw fileError(
      'ERR_INTEGRITY',
      file,
      `the contents do not match the digest recorded when the file was written (${DATA_DIGEST_KEY} ${recorded.slice(0, 16)}..., ` +
        `contents ${actual.slice(0, 16)}...): the file was changed or damaged after it was written`,
    );
  }
  return 'verified';
}
