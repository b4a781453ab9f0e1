/**
 * Option checks in the one message shape of lib/schema.ts: "<name>: expected X, received
 * Z". Everything public validates here (or with a schema) before the native layer sees
 * it (which checks again).
 */
import { EigenLoraxError } from './errors.js';
import { said, show } from './schema.js';

/** A received value, in words (lib/schema.ts's rendering). */
export const describe = show;

export function invalid(expected: string, name: string, received: unknown): EigenLoraxError {
  return new EigenLoraxError(`${name}: expected ${expected}, received ${describe(received)}`, 'ERR_INVALID_ARGUMENT');
}

export function integer(value: unknown, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `in [${min}, ${max}]`;
    throw invalid(`an integer ${range}`, name, value);
  }
  return value;
}

export function finiteNumber(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) throw invalid('a finite number', name, value);
  return value;
}

/** A scale the kernels apply in float32: finite there too (1e39 is Infinity in float32). */
export function float32Scale(value: unknown, name: string): number {
  if (typeof value !== 'number' || !(Math.abs(value) <= 3.4028234663852886e38)) {
    throw invalid('a number finite in float32 (|x| <= 3.4e38)', name, value);
  }
  return value;
}

export function oneOf<T extends string>(value: unknown, name: string, choices: readonly T[]): T {
  if (typeof value !== 'string' || !choices.includes(value as T)) {
    throw invalid(`one of ${choices.map((c) => `'${c}'`).join(', ')}`, name, value);
  }
  return value as T;
}

export function object(value: unknown, name: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid('an options object', name, value);
  return value as Record<string, unknown>;
}

/** Fails on option names that are not known: a typo should not be silently ignored. */
export function knownKeys(options: Record<string, unknown>, name: string, keys: readonly string[]): void {
  for (const key of Object.keys(options)) {
    if (!keys.includes(key)) throw invalid(`one of the known options (${keys.join(', ')})`, `${name}.${key}`, said(`an unknown option ${JSON.stringify(key)}`));
  }
}
