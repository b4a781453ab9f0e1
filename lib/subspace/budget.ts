/**
 * Memory budgets for buildSubspace: sizes as bytes or with a unit ('512MB', '4GB',
 * '1.5GiB'), the default budget, and what a module needs in memory.
 */
import os from 'node:os';
import { invalid } from '../validate.js';

const UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** The fraction of the memory available at the start of a build that the default budget takes. */
export const DEFAULT_BUDGET_FRACTION = 0.5;

/**
 * Bytes from a size: a non-negative integer of bytes, or a string of a number and an
 * optional unit, B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024),
 * case-insensitive: `'512MB'`, `'4 GB'`, `'1.5GiB'`. Throws ERR_INVALID_ARGUMENT naming `name`.
 */
export function parseSize(value: unknown, name = 'size'): number {
  if (typeof value === 'number') {
    if (Number.isSafeInteger(value) && value > 0) return value;
    throw invalid('a positive whole number of bytes, or a size such as "512MB" or "4GB"', name, value);
  }
  if (typeof value === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(value);
    const unit = m ? UNITS[(m[2] || 'b').toLowerCase()] : undefined;
    if (m && unit !== undefined) {
      const bytes = Math.floor(Number(m[1]) * unit);
      if (bytes > 0 && Number.isSafeInteger(bytes)) return bytes;
    }
  }
  throw invalid('a size in bytes such as 1048576, "512MB", "4GB" or "1.5GiB" (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)', name, value);
}

/** The default memory budget: half of the memory the system has available now. */
export function defaultMemoryBudget(): number {
  return Math.max(1, Math.floor(os.freemem() * DEFAULT_BUDGET_FRACTION));
}

/**
 * Bytes one module takes when built in memory, at most 16 per factor entry (f32 each): the
 * factors as read in JavaScript (none for files the native call reads itself), the native
 * call's own copy of them, the stacks it forms (both sides) and the canonical factors it
 * keeps for projecting the adapters in the same call.
 */
export function inMemoryModuleBytes(totalRank: number, dIn: number, dOut: number): number {
  return 16 * totalRank * (dIn + dOut);
}

/**
 * Adapters per chunk of a streamed module: the chunk being computed (its factors and the
 * native stack of them) and the next one being read fit in `budget`; at least one.
 */
export function streamChunkAdapters(budget: number, maxRank: number, dIn: number, dOut: number): number {
  return Math.max(1, Math.floor(budget / (12 * maxRank * (dIn + dOut))));
}
